// Whole-machine attestation of an RPM-based root (issue 22): packages built here with
// rpmbuild (a %config file, a program, a %ghost file, a symlink; an epoch), served from a
// signed repository made by createrepo_c and gpg with the fixture repository's own package
// beside them, installed into a temporary root by rpm itself (`rpm --root -i --nodeps
// --noscripts`), changed in known ways, collected from rpm's database
// and attested through the service with file digests read from each .rpm's header.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appendFileSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { join, relative } from 'node:path';
import { needTool } from './_tools.js';
import { imaNgEntry } from './_ima-line.js';
import { buildFixtures, FIXTURES, startServer, type FixtureServer } from './_attest-server.js';
import { attestInstalled, openSource, readKeyring } from '../bindings/attest/index.js';
import { OnDemandFiles, SourceSet, appraiseInstalled, collectInstalled } from '../bindings/attest/service/index.js';
import { startLocalService, type LocalService } from './_attest-service.js';
import { serveVmkit, runVmkit } from './_cli.js';
import { RpmSource } from '../bindings/attest/sources/rpm.js';
import { _rpmHeaderDigest, parseRpmdbExport, rpmFileDigests } from '../bindings/attest/_rpm.js';

const tools = ['rpmbuild:rpm', 'rpmdb:rpm', 'createrepo_c:createrepo-c', 'gpg:gnupg'];
const ready = tools.every((t) => needTool(t.split(':')[0]!, t.split(':')[1]!));

const SPEC = (name: string, epoch: string, version: string): string => `Name: ${name}
${epoch ? `Epoch: ${epoch}\n` : ''}Version: ${version}
Release: 1
Summary: vmkit machine fixture
License: MIT
BuildArch: noarch
%description
A package for vmkit's whole-machine specs.
%install
mkdir -p %{buildroot}/usr/bin %{buildroot}/etc %{buildroot}/usr/share/${name} %{buildroot}/var/log
printf '#!/bin/sh\\necho ${name} ${version}\\n' >%{buildroot}/usr/bin/${name}
chmod 755 %{buildroot}/usr/bin/${name}
printf 'setting=1\\n' >%{buildroot}/etc/${name}.conf
printf 'notes of ${name}\\n' >%{buildroot}/usr/share/${name}/NOTES
ln -s ${name} %{buildroot}/usr/bin/${name}-link
%files
/usr/bin/${name}
/usr/bin/${name}-link
%config(noreplace) /etc/${name}.conf
/usr/share/${name}
%ghost /var/log/${name}.log
`;

/** Regular, non-ghost files of an .rpm and whether each is %config, by rpm itself (`--dump`). */
function rpmDump(rpm: string): Map<string, boolean> {
  const out = new Map<string, boolean>();
  for (const l of execFileSync('rpm', ['-qp', '--noghost', '--dump', rpm], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n')) {
    const f = l.split(' ');
    if (f.length >= 9 && f[4]!.startsWith('0100')) out.set(f[0]!, f[7] === '1');
  }
  return out;
}

describe('file digests that are not SHA-256', () => {
  it('an old .rpm with MD5 file digests is not-fetched (UNSUPPORTED), never compared nor cached', async () => {
    const entry = { provenance: { repository: 'rpm http://x/old', package: 'old', version: '1-1', architecture: 'noarch' }, digests: [{ alg: 'sha256' as const, hex: 'c'.repeat(64) }] };
    const index = {
      lookupPackage: (name: string) => (name === 'old' ? [entry] : []),
      fileDigests: async () => new Map([['/usr/bin/old', { alg: 'md5' as const, hex: 'd'.repeat(32) }]]),
    };
    const cacheDir = mkdtempSync(join(tmpdir(), 'vmkit-md5-'));
    try {
      const files = new OnDemandFiles(index, { cacheDir });
      const sub = await appraiseInstalled(index, files, { packages: [{ name: 'old', version: '1-1', architecture: 'noarch', files: [{ path: '/usr/bin/old', sha256: 'e'.repeat(64) }] }], unowned: [] });
      expect(sub.categories).toMatchObject({ 'not-fetched': 1, 'digest-mismatch': 0, affirmed: 0 });
      expect(sub.items[0]).toMatchObject({ kind: 'package', reason: 'not-fetched', name: 'old' });
      expect(sub.items[0]!.path).toMatch(/^UNSUPPORTED: .*md5 file digests/);
      expect(readdirSync(cacheDir)).toEqual([]);
    } finally {
      rmSync(cacheDir, { recursive: true, force: true });
    }
  });
});

describe.skipIf(!ready)('attesting a whole RPM machine', () => {
  let srv: FixtureServer;
  let tmp: string;
  let root: string;
  let gnupg: string;
  const rpms: Record<string, string> = {};
  beforeAll(async () => {
    buildFixtures();
    tmp = mkdtempSync(join(tmpdir(), 'vmkit-machine-rpm-'));
    const rb = join(tmp, 'rpmbuild');
    mkdirSync(join(rb, 'SPECS'), { recursive: true });
    for (const [name, epoch, version] of [['vmkit-machine-tool', '1', '2.0'], ['vmkit-machine-local', '', '3.0']] as const) {
      const spec = join(rb, 'SPECS', `${name}.spec`);
      writeFileSync(spec, SPEC(name, epoch, version));
      execFileSync('rpmbuild', ['--quiet', '--define', `_topdir ${rb}`, '-bb', spec], { stdio: ['ignore', 'ignore', 'pipe'] });
      rpms[name] = join(rb, 'RPMS/noarch', `${name}-${version}-1.noarch.rpm`);
    }
    rpms['vmkit-fixture'] = join(FIXTURES, 'rpm', 'vmkit-fixture-1.0-1.noarch.rpm');
    // A throwaway signing key; its agent is stopped in afterAll.
    gnupg = join(tmp, 'gnupg');
    mkdirSync(gnupg, { mode: 0o700 });
    const gpg = (...a: string[]) => execFileSync('gpg', ['--homedir', gnupg, '--batch', '--quiet', ...a], { stdio: ['ignore', 'pipe', 'ignore'] });
    gpg('--passphrase', '', '--quick-gen-key', 'vmkit rpm machine <rpm@vmkit.invalid>', 'ed25519', 'sign', 'never');
    writeFileSync(join(tmp, 'keyring.gpg'), gpg('--export'));
    // The repository: the tool and the fixture repository's package, not the local build.
    const repo = (dir: string, files: string[]) => {
      mkdirSync(dir, { recursive: true });
      for (const f of files) copyFileSync(f, join(dir, f.slice(f.lastIndexOf('/') + 1)));
      execFileSync('createrepo_c', ['--quiet', dir], { stdio: 'ignore' });
      gpg('--armor', '--detach-sign', '-o', join(dir, 'repodata/repomd.xml.asc'), join(dir, 'repodata/repomd.xml'));
    };
    repo(join(tmp, 'repo'), [rpms['vmkit-machine-tool']!, rpms['vmkit-fixture']!]);
    // A repository whose .rpm had a file digest in its header changed after it was built: its
    // primary.xml (made after) carries the changed package's checksum, the header's own digest does not.
    const bad = readFileSync(rpms['vmkit-machine-tool']!);
    const want = rpmFileDigests(bad).get('/usr/bin/vmkit-machine-tool')!.hex;
    const at = bad.indexOf(Buffer.from(want));
    expect(at).toBeGreaterThan(0);
    bad[at] = want[0] === '0' ? 0x31 : 0x30;
    mkdirSync(join(tmp, 'bad-src'));
    writeFileSync(join(tmp, 'bad-src', 'vmkit-machine-tool-2.0-1.noarch.rpm'), bad);
    repo(join(tmp, 'repo-bad'), [join(tmp, 'bad-src', 'vmkit-machine-tool-2.0-1.noarch.rpm')]);
    srv = await startServer();
    const serve = (dir: string, prefix: string) => {
      const walk = (d: string): string[] => readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(join(d, e.name)) : [join(d, e.name)]));
      for (const f of walk(dir)) srv.overrides.set(`${prefix}/${relative(dir, f)}`, () => readFileSync(f));
    };
    serve(join(tmp, 'repo'), '/machine-rpm');
    serve(join(tmp, 'repo-bad'), '/machine-rpm-bad');
    // The machine: all three installed by rpm into a fresh database.
    root = join(tmp, 'root');
    mkdirSync(root);
    const rpmIn = (...a: string[]) => execFileSync('rpm', ['--root', root, '--dbpath', '/var/lib/rpm', ...a], { stdio: ['ignore', 'ignore', 'pipe'] });
    rpmIn('--initdb');
    rpmIn('-i', '--nodeps', '--noscripts', '--nosignature', rpms['vmkit-machine-tool']!, rpms['vmkit-machine-local']!, rpms['vmkit-fixture']!);
    // The changes the verdicts must find.
    appendFileSync(join(root, 'etc/vmkit-machine-tool.conf'), 'setting=2\n'); // %config
    appendFileSync(join(root, 'usr/bin/vmkit-machine-tool'), 'echo changed\n'); // program
    writeFileSync(join(root, 'usr/bin/intruder'), '#!/bin/sh\necho hi\n'); // unowned
    mkdirSync(join(root, 'var/log'), { recursive: true });
    writeFileSync(join(root, 'var/log/vmkit-machine-tool.log'), 'a ghost file exists now\n'); // %ghost: not attested
  }, 180_000);
  afterAll(async () => {
    await srv?.close();
    if (gnupg) execFileSync('gpgconf', ['--homedir', gnupg, '--kill', 'all'], { stdio: 'ignore' });
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  async function service(cacheDir: string): Promise<LocalService> {
    const ring = await readKeyring(readFileSync(join(tmp, 'keyring.gpg')));
    return startLocalService(new SourceSet([openSource(`rpm ${srv.url}/machine-rpm`, { keyring: ring })]), { cacheDir });
  }

  it('reads rpm database exports: each installed header with its files, modes, flags and states', () => {
    const pkgs = parseRpmdbExport(execFileSync('rpmdb', ['--root', root, '--dbpath', '/var/lib/rpm', '--exportdb']));
    const q = execFileSync('rpm', ['--root', root, '--dbpath', '/var/lib/rpm', '-qa', '--qf', '%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE} %{ARCH}\n'], { encoding: 'utf8' });
    expect(pkgs.map((p) => `${p.name} ${p.version.includes(':') ? p.version : `0:${p.version}`} ${p.arch}`).sort()).toEqual(q.trim().split('\n').sort());
    const tool = pkgs.find((p) => p.name === 'vmkit-machine-tool')!;
    expect(tool.version).toBe('1:2.0-1');
    const byPath = new Map(tool.files.map((f) => [f.path, f]));
    expect(byPath.get('/var/log/vmkit-machine-tool.log')!.flags & 64).toBe(64);
    expect(byPath.get('/etc/vmkit-machine-tool.conf')!.flags & 1).toBe(1);
    expect(byPath.get('/usr/bin/vmkit-machine-tool-link')!.mode & 0o170000).toBe(0o120000);
  });

  it('binds the header: the signature header digest covers it; a changed header is refused', async () => {
    for (const f of Object.values(rpms)) {
      const b = readFileSync(f);
      const d = _rpmHeaderDigest(b);
      expect(createHash(d.alg).update(b.subarray(d.start, d.end)).digest('hex')).toBe(d.hex);
    }
    const ring = await readKeyring(readFileSync(join(tmp, 'keyring.gpg')));
    const src = new RpmSource(`rpm ${srv.url}/machine-rpm-bad`, { keyring: ring });
    await src.refresh(); // primary.xml signed and consistent with the changed .rpm
    await expect(src.fileDigests(src.lookupPackage('vmkit-machine-tool')[0]!)).rejects.toMatchObject({ code: 'INTEGRITY' });
    src.close();
  });

  it('collects installed packages from rpm: %config files as conffiles, no %ghost, no symlinks', async () => {
    const ev = await collectInstalled({ root, unownedUnder: ['/usr/bin', '/etc'] });
    expect(ev.packages.map((p) => `${p.name} ${p.version} ${p.architecture}`).sort()).toEqual(['vmkit-fixture 1.0-1 noarch', 'vmkit-machine-local 3.0-1 noarch', 'vmkit-machine-tool 1:2.0-1 noarch']);
    for (const p of ev.packages) {
      const want = rpmDump(rpms[p.name]!);
      expect(p.files.map((f) => f.path).sort()).toEqual([...want.keys()].sort());
      for (const f of p.files) {
        expect(f.conffile === true).toBe(want.get(f.path));
        expect(f.sha256).toBe(createHash('sha256').update(readFileSync(join(root, f.path))).digest('hex'));
      }
    }
    expect(ev.unowned.map((u) => u.path)).toEqual(['/usr/bin/intruder']);
    await expect(collectInstalled({ root, format: 'dpkg' })).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('gives each file a verdict against the signed repository, and answers from the cache after a restart', async () => {
    const cacheDir = join(tmp, 'cache');
    const ev = await collectInstalled({ root, unownedUnder: ['/usr/bin', '/etc'] });
    const rpmHits = () => [...srv.hits].filter(([p]) => p.endsWith('.rpm')).reduce((n, [, c]) => n + c, 0);
    const { svc, url, jwks } = await service(cacheDir);
    let first: Awaited<ReturnType<typeof attestInstalled>> | undefined;
    try {
      first = await attestInstalled({ serviceUrl: url, installed: ev, jwks: jwks as never });
      expect(first.status).toBe('contraindicated');
      const byReason = (reason: string) => first!.items.filter((i) => i.reason === reason).map((i) => [i.kind, i.path ?? null, i.name ?? null, i.version ?? null, i.status]);
      expect(byReason('digest-mismatch')).toEqual([['file', '/usr/bin/vmkit-machine-tool', 'vmkit-machine-tool', '1:2.0-1', 'contraindicated']]);
      expect(byReason('modified-conffile')).toEqual([['file', '/etc/vmkit-machine-tool.conf', 'vmkit-machine-tool', '1:2.0-1', 'warning']]);
      expect(byReason('unowned')).toEqual([['file', '/usr/bin/intruder', null, null, 'warning']]);
      expect(byReason('version-not-in-sources')).toEqual([['package', null, 'vmkit-machine-local', '3.0-1', 'warning']]);
      const tool = rpmDump(rpms['vmkit-machine-tool']!).size;
      const fixture = rpmDump(rpms['vmkit-fixture']!).size;
      expect(first.categories).toMatchObject({ affirmed: tool + fixture - 2, 'digest-mismatch': 1, 'modified-conffile': 1, unowned: 1, 'version-not-in-sources': rpmDump(rpms['vmkit-machine-local']!).size, 'not-fetched': 0, 'not-in-package': 0, missing: 0 });
      expect(first.items.find((i) => i.kind === 'package' && i.name === 'vmkit-fixture')!.matches[0]!.repository).toBe(`rpm ${srv.url}/machine-rpm`);
      expect(svc.files.counts.fetched).toBe(2);
    } finally {
      await svc.close();
    }
    const before = rpmHits();
    const s2 = await service(cacheDir);
    try {
      const again = await attestInstalled({ serviceUrl: s2.url, installed: ev, jwks: s2.jwks as never });
      expect(again.categories).toEqual(first.categories);
      expect(s2.svc.files.counts.fetched).toBe(0);
      expect(rpmHits()).toBe(before);
    } finally {
      await s2.svc.close();
    }
  }, 120_000);

  it('appraises the IMA log against the same package file digests, PCR 10 replayed', async () => {
    const ev = await collectInstalled({ root });
    const file = (p: string, alg: 'sha1' | 'sha256' = 'sha256') => createHash(alg).update(readFileSync(join(root, p))).digest();
    const entries = [
      imaNgEntry('sha256', Buffer.alloc(32, 7), 'boot_aggregate'),
      imaNgEntry('sha256', file('/usr/share/vmkit-fixture/hello.txt'), '/usr/share/vmkit-fixture/hello.txt'),
      imaNgEntry('sha256', file('/usr/bin/vmkit-machine-tool'), '/usr/bin/vmkit-machine-tool'),
      imaNgEntry('sha256', file('/etc/vmkit-machine-tool.conf'), '/etc/vmkit-machine-tool.conf'),
      imaNgEntry('sha256', file('/usr/bin/intruder'), '/usr/bin/intruder'),
      imaNgEntry('sha256', file('/usr/bin/vmkit-machine-local'), '/usr/bin/vmkit-machine-local'),
      imaNgEntry('sha1', file('/usr/share/vmkit-machine-tool/NOTES', 'sha1'), '/usr/share/vmkit-machine-tool/NOTES'),
    ];
    const log = entries.map((e) => e.line).join('');
    // PCR 10 (SHA-1 bank) as the kernel extends it: pcr = sha1(pcr || sha1(template data)).
    let pcr = Buffer.alloc(20);
    for (const e of entries) pcr = createHash('sha1').update(pcr).update(createHash('sha1').update(e.data).digest()).digest();
    const { svc, url, jwks } = await service(join(tmp, 'cache-ima'));
    try {
      const r = await attestInstalled({ serviceUrl: url, installed: ev, jwks: jwks as never, ima: { log, pcr10: { bank: 'sha1', hex: pcr.toString('hex') } } });
      expect(r.ima!.pcr10).toMatchObject({ bank: 'sha1', match: true });
      expect(r.ima!.categories).toEqual({ affirmed: 1, 'digest-mismatch': 1, 'modified-conffile': 1, unowned: 1, 'version-not-in-sources': 1, 'digest-unverifiable': 1, 'not-a-file': 1, 'not-in-package': 0, 'not-fetched': 0, 'unowned-ignored': 0 });
      expect(r.ima!.status).toBe('contraindicated');
      const reasons = Object.fromEntries(r.ima!.items.map((i) => [i.path, [i.reason, i.status, i.line]]));
      expect(reasons['/usr/bin/vmkit-machine-tool']).toEqual(['digest-mismatch', 'contraindicated', 3]);
      expect(reasons['/etc/vmkit-machine-tool.conf']).toEqual(['modified-conffile', 'warning', 4]);
      expect(reasons['/usr/bin/vmkit-machine-local']).toEqual(['version-not-in-sources', 'warning', 6]);
      expect(r.tokens.length).toBe(2); // the evidence, then the log
      // A log that does not replay to the quoted PCR 10 is a failure whatever its files say.
      const clean = entries.slice(0, 2).map((e) => e.line).join('');
      const bad = await attestInstalled({ serviceUrl: url, installed: ev, jwks: jwks as never, ima: { log: clean, pcr10: { bank: 'sha1', hex: pcr.toString('hex') } } });
      expect(bad.ima!.categories!.affirmed).toBe(1);
      expect(bad.ima!.pcr10!.match).toBe(false);
      expect(bad.ima!.status).toBe('contraindicated');
      expect(bad.ima!.failures!.map((f) => f.id)).toContain('ima.pcr_mismatch');
      // Hostile IMA fields are refused with stable codes.
      const { nonce } = (await (await fetch(`${url}/nonce`, { method: 'POST' })).json()) as { nonce: string };
      const res = await fetch(`${url}/attest/installed`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ nonce, installed: { packages: [] }, ima: { log: 3 } }) });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe('ARG_TYPE');
    } finally {
      await svc.close();
    }
  }, 120_000);

  it('the CLI: request --installed on an RPM root with --ima and --pcr10', async () => {
    const hello = createHash('sha256').update(readFileSync(join(root, 'usr/share/vmkit-fixture/hello.txt'))).digest();
    const tool = createHash('sha256').update(readFileSync(join(root, 'usr/bin/vmkit-machine-tool'))).digest();
    const entries = [imaNgEntry('sha256', hello, '/usr/share/vmkit-fixture/hello.txt'), imaNgEntry('sha256', tool, '/usr/bin/vmkit-machine-tool')];
    writeFileSync(join(tmp, 'ima.log'), entries.map((e) => e.line).join(''));
    let pcr = Buffer.alloc(20);
    for (const e of entries) pcr = createHash('sha1').update(pcr).update(createHash('sha1').update(e.data).digest()).digest();
    const srv2 = serveVmkit(['attest', 'serve', '--repo', `rpm ${srv.url}/machine-rpm`, '--keyring', join(tmp, 'keyring.gpg'), '--port', '0', '--json', '--cache-dir', join(tmp, 'cli-cache')]);
    try {
      const url = await srv2.listening();
      const r = await runVmkit(['attest', 'request', '--server', url, '--installed', '--root', root, '--ima', join(tmp, 'ima.log'), '--pcr10', `sha1:${pcr.toString('hex')}`, '--json'], { timeoutMs: 60_000 });
      expect(r.code, r.stderr).toBe(1);
      const doc = JSON.parse(r.stdout) as { status: string; packages: number; categories: Record<string, number>; ima: { status: string; categories: Record<string, number>; pcr10: { match: boolean }; items: { path: string; reason: string }[] } };
      expect(doc.status).toBe('contraindicated');
      expect(doc.packages).toBe(3);
      expect(doc.categories).toMatchObject({ 'digest-mismatch': 1, 'modified-conffile': 1, 'version-not-in-sources': rpmDump(rpms['vmkit-machine-local']!).size });
      expect(doc.ima.pcr10.match).toBe(true);
      expect(doc.ima.categories).toMatchObject({ affirmed: 1, 'digest-mismatch': 1 });
      expect(doc.ima.items.map((i) => [i.path, i.reason])).toEqual([['/usr/bin/vmkit-machine-tool', 'digest-mismatch']]);
    } finally {
      srv2.kill();
    }
  }, 120_000);
});
