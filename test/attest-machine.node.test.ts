// Whole-machine attestation (issue 22): a small Debian root built from the fixture
// repository's real .debs (dpkg-deb -x, a hand-written dpkg status, .list files and a
// diversion), changed in known ways, attested through the service against two signed
// APT sources with file digests fetched on demand and cached on disk.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { needTool } from './_tools.js';
import { buildFixtures, FIXTURES, startServer, type FixtureServer } from './_attest-server.js';
import { attestInstalled, openSource, readKeyring, splitInstalled } from '../bindings/attest/index.js';
import { SourceSet, collectInstalled, parseDiversions, parseDpkgStatus, parseInstalled } from '../bindings/attest/service/index.js';
import { startLocalService, type LocalService } from './_attest-service.js';
import { serveVmkit, runVmkit } from './_cli.js';

const tools = ['apt-ftparchive:apt-utils', 'createrepo_c:createrepo-c', 'rpmbuild:rpm', 'gpg:gnupg', 'dpkg-deb:dpkg', 'zstd:zstd'];
const ready = tools.every((t) => needTool(t.split(':')[0]!, t.split(':')[1]!));

// name, version the machine says, .deb in the fixture pool
const PKGS = [
  ['hello', '2.10-3', 'amd64', 'hello_2.10-3_amd64.deb'],
  ['tree', '2.1.0-1', 'amd64', 'tree_2.1.0-1_amd64.deb'],
  ['vmkit-fixture-gzip', '1:1.0-1', 'all', 'vmkit-fixture-gzip_1.0-1_all.deb'],
  ['python3-six', '1.16.0-4', 'all', 'python3-six_1.16.0-4_all.deb'],
  // A version no configured source carries (a local rebuild, a superseded point release).
  ['pv', '1.6.19-1', 'amd64', 'pv_1.6.20-1_amd64.deb'],
] as const;

/** Regular files of a .deb by `dpkg-deb -c` (the independent reading). */
function regularFiles(deb: string): string[] {
  return execFileSync('dpkg-deb', ['-c', deb], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.startsWith('-'))
    .map((l) => l.slice(l.indexOf('./') + 1));
}

function buildRoot(root: string): void {
  const info = join(root, 'var/lib/dpkg/info');
  mkdirSync(info, { recursive: true });
  let status = '';
  for (const [name, version, arch, file] of PKGS) {
    const deb = join(FIXTURES, 'debian/pool/main', file);
    execFileSync('dpkg-deb', ['-x', deb, root]);
    const list = execFileSync('dpkg-deb', ['-c', deb], { encoding: 'utf8' })
      .split('\n')
      .filter(Boolean)
      .map((l) => l.slice(l.indexOf('./') + 1).replace(/ -> .*$/, '').replace(/\/$/, '') || '/.');
    writeFileSync(join(info, `${name}.list`), list.join('\n') + '\n');
    const conf = name === 'vmkit-fixture-gzip' ? `Conffiles:\n /usr/share/vmkit-fixture/gzip.txt ${createHash('md5').update(readFileSync(join(root, 'usr/share/vmkit-fixture/gzip.txt'))).digest('hex')}\n` : '';
    status += `Package: ${name}\nStatus: install ok installed\nPriority: optional\nArchitecture: ${arch}\nVersion: ${version}\n${conf}Description: fixture\n continued line\n\n`;
  }
  // A removed package's stanza stays in the status file: not installed, not attested.
  status += 'Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n';
  writeFileSync(join(root, 'var/lib/dpkg/status'), status);
  // tree diverts hello's binary, as dpkg-divert --package tree --rename would.
  writeFileSync(join(root, 'var/lib/dpkg/diversions'), '/usr/bin/hello\n/usr/bin/hello.distrib\ntree\n');
  renameSync(join(root, 'usr/bin/hello'), join(root, 'usr/bin/hello.distrib'));
  // The changes the verdicts must find.
  appendFileSync(join(root, 'usr/share/vmkit-fixture/gzip.txt'), 'local setting\n'); // conffile
  appendFileSync(join(root, 'usr/bin/tree'), Buffer.from([0x90])); // binary
  unlinkSync(join(root, 'usr/share/doc/tree/TODO')); // missing
  writeFileSync(join(root, 'usr/bin/intruder'), '#!/bin/sh\necho hi\n'); // unowned
  mkdirSync(join(root, 'etc'), { recursive: true });
  writeFileSync(join(root, 'etc/hostname'), 'machine\n'); // unowned, ignored by a path rule
}

describe('dpkg database parsing', () => {
  it('reads installed stanzas, conffiles and continuation lines; skips removed packages', () => {
    const s = parseDpkgStatus('Package: a\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\nConffiles:\n /etc/a 0123 \n /etc/b 4567 obsolete\nDescription: x\n y\n\nPackage: b\nStatus: deinstall ok config-files\nVersion: 2\n');
    expect(s).toEqual([{ name: 'a', version: '1', architecture: 'amd64', conffiles: ['/etc/a', '/etc/b'] }]);
    expect(() => parseDpkgStatus('Package: a\nStatus: install ok installed\n')).toThrow(expect.objectContaining({ code: 'CORRUPT' }));
    expect(() => parseDpkgStatus(' orphan\n')).toThrow(expect.objectContaining({ code: 'CORRUPT' }));
    expect(parseDiversions('/a\n/a.real\n:\n').get('/a')).toEqual({ to: '/a.real', by: ':' });
    expect(() => parseDiversions('/a\n/b\n')).toThrow(expect.objectContaining({ code: 'CORRUPT' }));
  });

  it('refuses hostile installed evidence with stable codes', () => {
    const f = { path: '/x', sha256: 'a'.repeat(64) };
    expect(parseInstalled({ packages: [{ name: 'a', version: '1', architecture: 'all', files: [f] }] }).packages[0]!.files[0]).toEqual(f);
    expect(() => parseInstalled({ packages: [{ name: 'a', version: '1', architecture: 'all', files: [f, f] }] }, { maxFiles: 1 })).toThrow(expect.objectContaining({ code: 'LIMIT' }));
    expect(() => parseInstalled({ packages: [{ name: 'a', version: '1', architecture: 'all', files: [{ path: 'x', sha256: 'a'.repeat(64) }] }] })).toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
    expect(() => parseInstalled({ packages: [{ name: 'a', version: '1', architecture: 'all', files: [{ path: '/x', sha256: 'A'.repeat(64) }] }] })).toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
    expect(() => parseInstalled({ packages: 3 })).toThrow(expect.objectContaining({ code: 'ARG_TYPE' }));
    expect(() => parseInstalled(null)).toThrow(expect.objectContaining({ code: 'ARG_TYPE' }));
  });
});

describe.skipIf(!ready)('attesting a whole machine', () => {
  let repo: FixtureServer;
  let tmp: string;
  let root: string;
  beforeAll(async () => {
    buildFixtures();
    repo = await startServer();
    tmp = mkdtempSync(join(tmpdir(), 'vmkit-machine-'));
    root = join(tmp, 'root');
    buildRoot(root);
  }, 120_000);
  afterAll(async () => {
    await repo?.close();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  async function service(cacheDir: string, extra: object = {}): Promise<LocalService> {
    const [ring, other] = await Promise.all([readKeyring(readFileSync(join(FIXTURES, 'keyring.gpg'))), readKeyring(readFileSync(join(FIXTURES, 'other-keyring.gpg')))]);
    // Two sources at once, each with its own key (as bookworm + bookworm-security).
    const sources = new SourceSet([openSource(`deb ${repo.url}/debian bookworm main`, { keyring: ring }), openSource(`deb ${repo.url}/debian-other bookworm main`, { keyring: other })]);
    return startLocalService(sources, { cacheDir, ignore: ['glob:/etc/**'], ...extra });
  }

  it('collects installed packages, conffiles, diversions and unowned files', async () => {
    const ev = await collectInstalled({ root, unownedUnder: ['/usr/bin', '/etc'], concurrency: 4 });
    expect(ev.packages.map((p) => p.name)).toEqual(PKGS.map((p) => p[0]));
    const hello = ev.packages[0]!.files.find((f) => f.path === '/usr/bin/hello')!;
    expect(hello.at).toBe('/usr/bin/hello.distrib');
    expect(hello.sha256).toBe(createHash('sha256').update(readFileSync(join(root, 'usr/bin/hello.distrib'))).digest('hex'));
    expect(ev.packages[2]!.files.find((f) => f.path === '/usr/share/vmkit-fixture/gzip.txt')!.conffile).toBe(true);
    expect(ev.packages[1]!.files.find((f) => f.path === '/usr/share/doc/tree/TODO')!.missing).toBe(true);
    // Only regular files (the symlink vmkit-fixture-gzip-link and the directories are not hashed).
    for (const [i, [, , , file]] of PKGS.entries()) {
      expect(ev.packages[i]!.files.map((f) => f.path).sort()).toEqual(regularFiles(join(FIXTURES, 'debian/pool/main', file)).sort());
    }
    expect(ev.unowned.map((u) => u.path)).toEqual(['/etc/hostname', '/usr/bin/intruder']);
  });

  it('gives each file a verdict, fetches each .deb once and answers from the cache after', async () => {
    const cacheDir = join(tmp, 'cache');
    const ev = await collectInstalled({ root, unownedUnder: ['/usr/bin', '/etc'] });
    const { svc, url, jwks } = await service(cacheDir);
    try {
      const r = await attestInstalled({ serviceUrl: url, installed: ev, jwks: jwks as never, partBytes: 2048 });
      expect(r.tokens.length).toBeGreaterThan(1); // sent in parts
      expect(r.status).toBe('contraindicated');
      const byReason = (reason: string) => r.items.filter((i) => i.reason === reason);
      expect(byReason('digest-mismatch').map((i) => [i.path, i.name, i.version, i.status])).toEqual([['/usr/bin/tree', 'tree', '2.1.0-1', 'contraindicated']]);
      expect(byReason('modified-conffile').map((i) => [i.path, i.name, i.status])).toEqual([['/usr/share/vmkit-fixture/gzip.txt', 'vmkit-fixture-gzip', 'warning']]);
      expect(byReason('missing').map((i) => i.path)).toEqual(['/usr/share/doc/tree/TODO']);
      expect(byReason('unowned').map((i) => [i.path, i.status])).toEqual([['/usr/bin/intruder', 'warning']]);
      expect(byReason('version-not-in-sources').map((i) => [i.kind, i.name, i.version])).toEqual([['package', 'pv', '1.6.19-1']]);
      // Affirmed: every regular file of the four known packages (dpkg-deb -c) but the three changed.
      const known = PKGS.slice(0, 4).reduce((n, p) => n + regularFiles(join(FIXTURES, 'debian/pool/main', p[3])).length, 0);
      const pvFiles = regularFiles(join(FIXTURES, 'debian/pool/main', PKGS[4][3])).length;
      expect(r.categories).toMatchObject({ affirmed: known - 3, 'digest-mismatch': 1, 'modified-conffile': 1, missing: 1, unowned: 1, 'unowned-ignored': 1, 'version-not-in-sources': pvFiles, 'not-fetched': 0, 'not-in-package': 0 });
      expect(r.summary.contraindicated).toBe(1);
      // The diverted hello binary is affirmed, with the provenance of its package.
      const hello = r.items.find((i) => i.kind === 'package' && i.name === 'hello')!;
      expect(hello.status).toBe('affirming');
      expect(hello.matches[0]!.repository).toMatch(/^deb http:\/\/.*bookworm main$/);
      // Each .deb fetched once (four packages; pv's version is in no source).
      const debHits = () => [...repo.hits].filter(([p]) => p.endsWith('.deb')).reduce((n, [, c]) => n + c, 0);
      expect(svc.files.counts.fetched).toBe(4);
      const before = debHits();
      const again = await attestInstalled({ serviceUrl: url, installed: ev, jwks: jwks as never });
      expect(again.categories).toEqual(r.categories);
      expect(debHits()).toBe(before);
      expect(readdirSync(cacheDir).length).toBeGreaterThan(0);
    } finally {
      await svc.close();
    }
    // A restarted service answers from the persistent cache without fetching.
    const s2 = await service(cacheDir);
    try {
      const before = [...repo.hits].filter(([p]) => p.endsWith('.deb')).reduce((n, [, c]) => n + c, 0);
      const r = await attestInstalled({ serviceUrl: s2.url, installed: ev, jwks: s2.jwks as never });
      expect(r.categories['digest-mismatch']).toBe(1);
      expect(s2.svc.files.counts.fetched).toBe(0);
      expect([...repo.hits].filter(([p]) => p.endsWith('.deb')).reduce((n, [, c]) => n + c, 0)).toBe(before);
    } finally {
      await s2.svc.close();
    }
  }, 120_000);

  it('keeps to its per-request fetch budget; the client sends a part again until all are fetched', async () => {
    const ev = await collectInstalled({ root });
    const { svc, url, jwks } = await service(join(tmp, 'cache-budget'), { fetchPackages: 1 });
    try {
      const one = await attestInstalled({ serviceUrl: url, installed: ev, jwks: jwks as never, maxRounds: 1 });
      expect(one.items.filter((i) => i.reason === 'not-fetched').length).toBe(3);
      expect(one.categories['not-fetched']).toBeGreaterThan(0);
      const all = await attestInstalled({ serviceUrl: url, installed: ev, jwks: jwks as never });
      expect(all.categories['not-fetched']).toBe(0);
      expect(all.categories['digest-mismatch']).toBe(1);
    } finally {
      await svc.close();
    }
  }, 120_000);

  it('splits evidence into bounded parts without splitting a package', async () => {
    const ev = await collectInstalled({ root, unownedUnder: ['/usr/bin'] });
    const parts = splitInstalled(ev, 1024);
    expect(parts.flatMap((p) => p.packages)).toEqual(ev.packages);
    expect(parts.flatMap((p) => p.unowned)).toEqual(ev.unowned);
    for (const p of parts) if (p.packages.length > 1) expect(JSON.stringify(p).length).toBeLessThan(1024 + 200);
  });

  it('the CLI: serve --cache-dir --ignore, request --installed --root --unowned-under --json', async () => {
    const cacheDir = join(tmp, 'cli-cache');
    const srv = serveVmkit(['attest', 'serve', '--repo', `deb ${repo.url}/debian bookworm main`, '--keyring', join(FIXTURES, 'keyring.gpg'), '--port', '0', '--json', '--cache-dir', cacheDir, '--ignore', 'glob:/etc/**']);
    try {
      const url = await srv.listening();
      const r = await runVmkit(['attest', 'request', '--server', url, '--installed', '--root', root, '--unowned-under', '/usr/bin', '--unowned-under', '/etc', '--json'], { timeoutMs: 60_000 });
      expect(r.code, r.stderr).toBe(1);
      const doc = JSON.parse(r.stdout) as { status: string; packages: number; categories: Record<string, number>; items: { reason?: string; path?: string; name?: string }[] };
      expect(doc.status).toBe('contraindicated');
      expect(doc.packages).toBe(PKGS.length);
      expect(doc.categories).toMatchObject({ 'digest-mismatch': 1, 'modified-conffile': 1, unowned: 1, 'unowned-ignored': 1 });
      expect(doc.items.every((i) => (i as { status?: string }).status !== 'affirming')).toBe(true);
      expect(doc.items.find((i) => i.reason === 'version-not-in-sources')?.name).toBe('pv');
      expect(readdirSync(cacheDir).length).toBeGreaterThan(0);
    } finally {
      srv.kill();
    }
  }, 120_000);
});
