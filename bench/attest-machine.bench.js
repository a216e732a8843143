// Whole-machine attestation (issue 22) of the machine the benchmark runs on, against
// the APT sources it installs from (bookworm, bookworm-updates, bookworm-security,
// through the configured mirror), with `dpkg --verify` and `debsums -a` (MD5 from the
// local database) as peers in the same run. Skips loudly without a dpkg database, the
// Debian keyring or the archive. The file digest cache lives in
// .cache/attest-machine-bench/: the first run (empty cache) is the cold figure; delete
// it to measure cold again.
import { existsSync, readFileSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { hasTool, fmtNs, timeRunsCpu } from './_lib.js';

const KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';
const LINES = [
  'deb http://deb.debian.org/debian bookworm main',
  'deb http://deb.debian.org/debian bookworm-updates main',
  'deb http://deb.debian.org/debian-security bookworm-security main',
];

// Machine-wide received bytes (every interface but lo): an upper bound on what the cold run fetched.
function rxBytes() {
  let n = 0;
  for (const l of readFileSync('/proc/net/dev', 'utf8').split('\n').slice(2)) {
    const [name, rest] = l.split(':');
    if (!rest || name.trim() === 'lo') continue;
    n += Number(rest.trim().split(/\s+/)[0]);
  }
  return n;
}

// Runs a peer; a non-zero exit (files found changed) is its answer, not a failure.
function peer(cmd, args) {
  return new Promise((resolve) => execFile(cmd, args, { maxBuffer: 64 << 20 }, (err, stdout, stderr) => resolve({ code: err?.code ?? 0, out: String(stdout) + String(stderr) })));
}

export async function run({ quick, log }) {
  const title = 'Whole-machine attestation (this machine against its APT sources)';
  if (!existsSync('/var/lib/dpkg/status') || !existsSync(KEYRING)) {
    log('SKIPPED: no dpkg database or no Debian keyring here');
    return { title, sections: [], notes: ['SKIPPED: no dpkg database or /usr/share/keyrings/debian-archive-keyring.gpg on this machine'] };
  }
  const dist = new URL('../dist/', import.meta.url);
  const [{ init, openSource, readKeyring, attestInstalled }, { AttestService, SourceSet, collectInstalled }, { createVerifier }] = await Promise.all([
    import(new URL('attest/index.js', dist).href),
    import(new URL('attest/service/index.js', dist).href),
    import(new URL('attest/service/verifier.js', dist).href),
  ]);
  await init();
  const ring = await readKeyring(readFileSync(KEYRING));
  const sources = new SourceSet(LINES.map((l) => openSource(l, { keyring: ring })));
  try {
    await sources.refreshAll({ requireAll: true });
  } catch (e) {
    sources.close();
    log(`SKIPPED: the Debian archive is not reachable (${e.message})`);
    return { title, sections: [], notes: [`SKIPPED: the Debian archive is not reachable (${e.message})`] };
  }
  const cacheDir = new URL('../.cache/attest-machine-bench/', import.meta.url).pathname;
  const cold = !existsSync(cacheDir);
  mkdirSync(cacheDir, { recursive: true });
  const verifier = await createVerifier();
  const svc = new AttestService({ sources, verifier, workers: 0, installed: { cacheDir, maxDownloads: 6 } });
  const url = await svc.listen(0);
  const jwks = await verifier.jwks();
  const notes = [];
  try {
    // Evidence once (what the client hashes), then the service's part, then the peers.
    log('hashing the installed files…');
    // The first collection fills a digest cache (a file per run, so every run measures a cold one).
    const digestCache = join(tmpdir(), `vmkit-bench-digests-${process.pid}.json`);
    const c = await timeRunsCpu(1, async () => {
      globalThis.__ev = await collectInstalled({ root: '/', digestCache });
    });
    log('hashing again with the digest cache filled…');
    const cc = await timeRunsCpu(quick ? 1 : 3, async () => {
      await collectInstalled({ root: '/', digestCache });
    });
    rmSync(digestCache, { force: true });
    const ev = globalThis.__ev;
    const files = ev.packages.reduce((n, p) => n + p.files.length, 0);
    let result;
    const rx0 = rxBytes();
    log(cold ? 'cold: empty cache, fetching every package…' : 'warm: cache filled');
    const first = await timeRunsCpu(1, async () => {
      result = await attestInstalled({ serviceUrl: url, installed: ev, jwks });
    });
    const rx = rxBytes() - rx0;
    const reps = quick ? 1 : 3;
    const rows = [];
    if (cold) rows.push({ name: 'vmkit: appraisal, cold (empty cache; fetch + hash every .deb)', ...first, extra: `${svc.files.counts.fetched} .debs, ≤ ${(rx / 2 ** 20).toFixed(0)} MiB received` });
    const warm = await timeRunsCpu(reps, async () => {
      result = await attestInstalled({ serviceUrl: url, installed: ev, jwks });
    });
    rows.push({ name: 'vmkit: appraisal, warm (cache filled)', ...warm, extra: `${ev.packages.length} packages, ${files} files` });
    rows.push({ name: 'vmkit: hashing the files (client, SHA-256, a worker thread per core)', ...c, extra: '' });
    rows.push({ name: 'vmkit: collecting with the digest cache filled (lstat per file, changed files hashed)', ...cc, extra: '--digest-cache' });
    rows.push({ name: 'vmkit: whole machine, warm (hashing + appraisal)', ns: c.ns + warm.ns, cpuNs: c.cpuNs + warm.cpuNs, extra: '' });
    rows.push({ name: 'vmkit: whole machine, warm, digest cache filled', ns: cc.ns + warm.ns, cpuNs: cc.cpuNs + warm.cpuNs, extra: 'goal < 10 s' });
    let dpkgOut = '';
    if (hasTool('dpkg')) {
      const d = await timeRunsCpu(reps, async () => {
        dpkgOut = (await peer('dpkg', ['--verify'])).out;
      });
      rows.push({ name: 'dpkg --verify (MD5 from the local database)', ...d, extra: '' });
    }
    let debsumsOut = '';
    if (quick) notes.push('--quick: debsums -a (minutes: 7× dpkg --verify in full runs) was not run');
    else if (hasTool('debsums')) {
      const d = await timeRunsCpu(reps, async () => {
        debsumsOut = (await peer('debsums', ['-a', '-s'])).out;
      });
      rows.push({ name: 'debsums -a -s (MD5 from the local database)', ...d, extra: '' });
    } else notes.push('debsums not installed: that peer was not run');
    const cat = result.categories;
    const covered = cat.affirmed + cat['digest-mismatch'] + cat['modified-conffile'] + cat.missing + cat['not-in-package'] + cat['not-fetched'];
    const table = ['| task | wall (median) | CPU | notes |', '|---|---:|---:|---|', ...rows.map((r) => `| ${r.name} | ${fmtNs(r.ns)} | ${fmtNs(r.cpuNs)} | ${r.extra ?? ''} |`)].join('\n');
    const changed = result.items.filter((i) => i.kind === 'file' && (i.reason === 'digest-mismatch' || i.reason === 'modified-conffile' || i.reason === 'missing')).map((i) => i.path).sort();
    const dpkgChanged = dpkgOut.split('\n').filter((l) => /^\S+\s+(c\s+)?\//.test(l)).map((l) => l.slice(l.indexOf('/'))).sort();
    // dpkg's findings split by whether vmkit could check the package (its version is in a source).
    const unknown = new Set(result.items.filter((i) => i.reason === 'version-not-in-sources').map((i) => i.name));
    const ownerOf = new Map();
    for (const p of ev.packages) for (const f of p.files) ownerOf.set(f.at ?? f.path, p.name);
    const dpkgChecked = dpkgChanged.filter((p) => !unknown.has(ownerOf.get(p)));
    const dpkgOther = dpkgChanged.length - dpkgChecked.length;
    notes.push(
      `categories: ${Object.entries(cat).filter(([, n]) => n).map(([k, n]) => `${k} ${n}`).join(', ')}; ${unknown.size} packages at a version no configured source carries`,
      `of the regular files of packages whose installed version a source carries: ${((100 * cat.affirmed) / Math.max(covered, 1)).toFixed(2)}% affirmed (${cat.affirmed} of ${covered})`,
      `changed files found in the packages vmkit could check — vmkit: ${changed.join(', ') || 'none'}; dpkg --verify: ${dpkgChecked.join(', ') || 'none'} (same: ${String(changed.join() === dpkgChecked.join())}); dpkg --verify also reports ${dpkgOther} paths in packages at versions no source carries (vmkit: version-not-in-sources)${debsumsOut ? `; debsums -a -s printed ${debsumsOut.trim().split('\n').length} lines` : ''}`,
      cold ? 'cold includes the fetch of every .deb through the configured mirror (received bytes are machine-wide, an upper bound)' : 'cache was already filled: no cold figure this run (delete .cache/attest-machine-bench/ to measure it)',
    );
    for (const n of notes) log(n);
    return { title, sections: [{ heading: `${ev.packages.length} installed packages, ${files} files`, markdown: table }], notes };
  } finally {
    await svc.close();
  }
}
