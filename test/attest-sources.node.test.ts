// Repository sources against real repositories built by Debian's, RPM's and
// npm's own tools (scripts/attest-fixtures.sh), served by a local HTTP server:
// the signed chain is followed and every break in it is refused.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, readdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { needTool } from './_tools.js';
import { buildFixtures, FIXTURES, startServer, type FixtureServer } from './_attest-server.js';
import { AptSource, NpmSource, RpmSource, openSource, readKeyring, type Keyring } from '../bindings/attest/index.js';
import { verifyCleartext } from '../bindings/attest/_openpgp.js';
import { debFileDigests } from '../bindings/attest/_deb.js';
import { rpmFileDigests } from '../bindings/attest/_rpm.js';
import { filelistsExtParser } from '../bindings/attest/sources/rpm.js';
import fc from 'fast-check';
import { decompress, decompressChunks, _useSystemXz } from '../bindings/attest/sources/_io.js';
import { VmkitError } from '../bindings/errors.js';

const tools = ['apt-ftparchive:apt-utils', 'createrepo_c:createrepo-c', 'rpmbuild:rpm', 'gpg:gnupg', 'dpkg-deb:dpkg', 'zstd:zstd'];
const ready = tools.every((t) => needTool(t.split(':')[0]!, t.split(':')[1]!));

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const hexBytes = (h: string): Uint8Array => Uint8Array.from(Buffer.from(h, 'hex'));

async function refused(p: Promise<unknown>, code: string): Promise<VmkitError> {
  const e = await p.then(() => undefined, (x: unknown) => x);
  expect(e, `expected ${code}`).toBeInstanceOf(VmkitError);
  expect((e as VmkitError).code).toBe(code);
  return e as VmkitError;
}

describe.runIf(ready)('repository sources over real repositories', () => {
  let srv: FixtureServer;
  let ring: Keyring;
  let otherRing: Keyring;
  const debs = () => readdirSync(join(FIXTURES, 'debian/pool/main')).filter((f) => f.endsWith('.deb'));

  beforeAll(async () => {
    buildFixtures();
    srv = await startServer();
    ring = await readKeyring(readFileSync(join(FIXTURES, 'keyring.gpg')));
    otherRing = await readKeyring(readFileSync(join(FIXTURES, 'other-keyring.gpg')));
  });
  afterAll(async () => {
    await srv?.close();
  });
  const reset = () => {
    srv.overrides.clear();
    srv.mounts.clear();
    srv.hits.clear();
  };
  const deb = (dir = 'debian') => `deb ${srv.url}/${dir} bookworm main`;

  describe('APT', () => {
    it('indexes every .deb of a signed repository with the digest of its file', async () => {
      reset();
      const src = new AptSource(deb(), { keyring: ring });
      const r = await src.refresh();
      expect(r.changed).toBe(true);
      expect(r.packages).toBe(debs().length);
      expect(r.validUntil!.getTime()).toBeGreaterThan(Date.now());
      for (const f of debs()) {
        const bytes = readFileSync(join(FIXTURES, 'debian/pool/main', f));
        const [name, version] = f.split('_') as [string, string];
        const hits = src.lookupDigest('sha256', Uint8Array.from(createHash('sha256').update(bytes).digest()));
        expect(hits.length).toBe(1);
        expect(hits[0]!.package).toBe(name);
        expect(hits[0]!.repository).toBe(deb());
        expect(hits[0]!.version.endsWith(version)).toBe(true);
        const e = src.lookupPackage(name);
        expect(e.length).toBe(1);
        expect(e[0]!.digests).toEqual([{ alg: 'sha256', hex: sha256(bytes) }]);
      }
      // Epoch kept as the repository spells it.
      expect(src.lookupPackage('vmkit-fixture-zstd', '1:1.0-1').length).toBe(1);
      expect(src.lookupPackage('hello', '9.9').length).toBe(0);
      expect(src.lookupDigest('sha256', new Uint8Array(32))).toEqual([]);
      // A digest of the right bytes under another algorithm is not a match.
      const h = hexBytes(src.lookupPackage('hello')[0]!.digests[0]!.hex);
      expect(src.lookupDigest('sm3', h)).toEqual([]);
      src.close();
    });

    it('reads a local mirror through a file: URL with node:fs: the same index as over HTTP, the chain still checked', async () => {
      reset();
      const over = new AptSource(deb(), { keyring: ring });
      const want = (await over.refresh()).packages;
      const digestOf = (s: AptSource, name: string) => s.lookupPackage(name)[0]!.digests;
      const dir = mkdtempSync(join(tmpdir(), 'vmkit-file-apt-'));
      // No fetch involved: a file: URL never reaches globalThis.fetch (undici stays unloaded).
      const fetchWas = globalThis.fetch;
      globalThis.fetch = (() => Promise.reject(new Error('fetch used for a file: URL'))) as typeof fetch;
      try {
        execFileSync('cp', ['-r', join(FIXTURES, 'debian'), dir]);
        const line = `deb file://${dir}/debian bookworm main`;
        const src = new AptSource(line, { keyring: ring });
        expect((await src.refresh()).packages).toBe(want);
        expect(digestOf(src, 'hello')).toEqual(digestOf(over, 'hello'));
        src.close();
        // APT's one-slash spelling too.
        const one = new AptSource(`deb file:${dir}/debian bookworm main`, { keyring: ring });
        expect((await one.refresh()).packages).toBe(want);
        one.close();
        // Signed by a key not in the keyring, and a Packages file changed after signing: INTEGRITY, nothing indexed.
        await refused(new AptSource(line, { keyring: otherRing }).refresh(), 'INTEGRITY');
        const bin = join(dir, 'debian/dists/bookworm/main/binary-amd64');
        for (const f of readdirSync(bin)) {
          const b = readFileSync(join(bin, f));
          b[b.length >> 1]! ^= 0x20;
          writeFileSync(join(bin, f), b);
        }
        const forged = new AptSource(line, { keyring: ring });
        await refused(forged.refresh(), 'INTEGRITY');
        expect(forged.size).toBe(0);
        // No such repository: NOT_FOUND, as a 404.
        await refused(new AptSource(`deb file://${dir}/nowhere bookworm main`, { keyring: ring }).refresh(), 'NOT_FOUND');
      } finally {
        globalThis.fetch = fetchWas;
        over.close();
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('reads the release file as Release + Release.gpg when there is no InRelease, and binary or armored keyrings', async () => {
      reset();
      srv.overrides.set('/debian/dists/bookworm/InRelease', () => ({ status: 404 }));
      const armored = await readKeyring(readFileSync(join(FIXTURES, 'keyring.asc')));
      const src = new AptSource(deb(), { keyring: armored });
      expect((await src.refresh()).packages).toBe(debs().length);
      expect(srv.hits.get('/debian/dists/bookworm/Release.gpg')).toBe(1);
      src.close();
    });

    it('uses signed-by= from the source line', async () => {
      reset();
      const src = openSource(`deb [signed-by=${join(FIXTURES, 'keyring.gpg')}] ${srv.url}/debian bookworm main`);
      expect((await src.refresh()).packages).toBe(debs().length);
      src.close();
    });

    it('refuses unsigned, badly signed and wrongly keyed release files unless allowed', async () => {
      reset();
      await refused(new AptSource(deb()).refresh(), 'INTEGRITY'); // no keyring at all
      await refused(new AptSource(deb('debian-other'), { keyring: ring }).refresh(), 'INTEGRITY');
      await refused(new AptSource(deb(), { keyring: otherRing }).refresh(), 'INTEGRITY');
      // InRelease with one signed byte changed (a Packages hash).
      srv.overrides.set('/debian/dists/bookworm/InRelease', (b) => Buffer.from(b!.toString('utf8').replace(/^ ([0-9a-f])/m, (_m, c: string) => ' ' + (c === '0' ? '1' : '0'))));
      await refused(new AptSource(deb(), { keyring: ring }).refresh(), 'INTEGRITY');
      // No signature anywhere.
      srv.overrides.set('/debian/dists/bookworm/InRelease', () => ({ status: 404 }));
      srv.overrides.set('/debian/dists/bookworm/Release.gpg', () => ({ status: 404 }));
      const e = await refused(new AptSource(deb(), { keyring: ring }).refresh(), 'INTEGRITY');
      expect(e.message).toMatch(/not signed/);
      const ok = new AptSource(deb(), { keyring: ring, allowUnsigned: true });
      expect((await ok.refresh()).packages).toBe(debs().length);
      ok.close();
      // A Release.gpg made by a key outside the keyring.
      srv.overrides.set('/debian/dists/bookworm/Release.gpg', () => readFileSync(join(FIXTURES, 'debian-other/dists/bookworm/Release.gpg')));
      await refused(new AptSource(deb(), { keyring: ring }).refresh(), 'INTEGRITY');
    });

    it('a Packages.xz prefetched in full while the InRelease signature fails: refused, nothing of it indexed', async () => {
      reset();
      const XZ = '/debian/dists/bookworm/main/binary-amd64/Packages.xz';
      // The InRelease answer waits until the prefetch has read the whole Packages.xz body.
      let bodyRead!: () => void;
      const prefetched = new Promise<void>((r) => (bodyRead = r));
      const fetch: typeof globalThis.fetch = async (input, init) => {
        const u = new URL(String(input));
        if (u.pathname.endsWith('/InRelease')) await prefetched;
        const res = await globalThis.fetch(input, init);
        if (u.pathname !== XZ || !res.body) return res;
        const seen = res.body.pipeThrough(new TransformStream({ flush: () => bodyRead() }));
        return new Response(seen, { status: res.status, headers: res.headers });
      };
      for (const [why, keyring] of [['signed by a key outside the keyring', otherRing], ['one signed byte changed', ring]] as const) {
        srv.hits.clear();
        if (keyring === ring) {
          srv.overrides.set('/debian/dists/bookworm/InRelease', (b) => Buffer.from(b!.toString('utf8').replace(/^ ([0-9a-f])/m, (_m, c: string) => ' ' + (c === '0' ? '1' : '0'))));
        }
        const src = new AptSource(deb(), { keyring, fetch });
        await refused(src.refresh(), 'INTEGRITY');
        expect(srv.hits.get(XZ), why).toBe(1); // the prefetch only: nothing fetched past the refused signature
        expect(src.size, why).toBe(0);
        expect(src.lookupPackage('hello'), why).toEqual([]);
        expect(src.lookupMany('sha256', [sha256(readFileSync(join(FIXTURES, 'debian/pool/main', debs()[0]!)))])[0], why).toBeUndefined();
        src.close();
      }
      // The same source with the real signature and the same prefetch: indexed.
      reset();
      const ok = new AptSource(deb(), { keyring: ring, fetch });
      expect((await ok.refresh()).packages).toBe(debs().length);
      expect(srv.hits.get(XZ)).toBe(1);
      ok.close();
    });

    it('refuses an expired release file (Valid-Until) unless allowed, also when it expires while cached', async () => {
      reset();
      const e = await refused(new AptSource(deb('debian-expired'), { keyring: ring }).refresh(), 'INTEGRITY');
      expect(e.message).toMatch(/Valid-Until/);
      const ok = new AptSource(deb('debian-expired'), { keyring: ring, allowExpired: true });
      expect((await ok.refresh()).packages).toBe(debs().length);
      ok.close();
      let now = new Date();
      const src = new AptSource(deb(), { keyring: ring, now: () => now });
      await src.refresh();
      now = new Date(Date.now() + 20 * 365 * 86400e3);
      await refused(src.refresh(), 'INTEGRITY'); // 304, but the signed state is past Valid-Until
      expect(src.lookupPackage('hello')).toEqual([]); // nothing confirms from an expired state
    });

    it('refuses index files and packages that do not match the signed hashes', async () => {
      reset();
      srv.overrides.set('/debian/dists/bookworm/main/binary-amd64/Packages.xz', (b) => {
        const c = Buffer.from(b!);
        c[c.length - 20]! ^= 1;
        return c;
      });
      await refused(new AptSource(deb(), { keyring: ring }).refresh(), 'INTEGRITY');
      // A by-hash style substitution: a valid Packages file of other content.
      srv.overrides.set('/debian/dists/bookworm/main/binary-amd64/Packages.xz', () => execFileSync('xz', ['-c'], { input: 'Package: evil\nVersion: 1\nFilename: pool/evil.deb\nSize: 1\nSHA256: ' + '0'.repeat(64) + '\n' }));
      await refused(new AptSource(deb(), { keyring: ring }).refresh(), 'INTEGRITY');
      reset();
      const src = new AptSource(deb(), { keyring: ring });
      await src.refresh();
      const hello = src.lookupPackage('hello')[0]!;
      const f = debs().find((d) => d.startsWith('hello_'))!;
      srv.overrides.set(`/debian/pool/main/${f}`, (b) => Buffer.concat([b!.subarray(0, b!.length - 1), Buffer.from([b![b!.length - 1]! ^ 1])]));
      await refused(src.fileDigests(hello), 'INTEGRITY');
      src.close();
    });

    // Issue 18: a tampered Packages.xz that is longer than its signed size was refused
    // with LIMIT (the read stops at the signed size); it is an integrity failure.
    it('refuses an index file or package longer than its signed size with INTEGRITY, not LIMIT', async () => {
      reset();
      srv.overrides.set('/debian/dists/bookworm/main/binary-amd64/Packages.xz', (b) => Buffer.concat([b!, Buffer.from('tampered')]));
      const e = await refused(new AptSource(deb(), { keyring: ring }).refresh(), 'INTEGRITY');
      expect(e.message).toMatch(/longer than the \d+ bytes/);
      reset();
      const src = new AptSource(deb(), { keyring: ring });
      await src.refresh();
      const f = debs().find((d) => d.startsWith('hello_'))!;
      srv.overrides.set(`/debian/pool/main/${f}`, (b) => Buffer.concat([b!, Buffer.alloc(4096)]));
      await refused(src.fileDigests(src.lookupPackage('hello')[0]!), 'INTEGRITY');
      src.close();
      // Past the source's own byte limit it stays LIMIT: that is our bound, not their lie.
      reset();
      await refused(new AptSource(deb(), { keyring: ring, maxBytes: 100 }).refresh(), 'LIMIT');
    });

    it('falls back to .gz and plain Packages when a compression is missing, each checked', async () => {
      for (const hide of [['.xz'], ['.xz', '.gz']]) {
        reset();
        for (const h of hide) srv.overrides.set(`/debian/dists/bookworm/main/binary-amd64/Packages${h}`, () => ({ status: 404 }));
        const src = new AptSource(deb(), { keyring: ring });
        expect((await src.refresh()).packages).toBe(debs().length);
        const used = hide.length === 1 ? '.gz' : '';
        expect(srv.hits.get(`/debian/dists/bookworm/main/binary-amd64/Packages${used}`)).toBe(1);
        src.close();
      }
    });

    it('refreshes incrementally: 304 on the release file, no refetch of unchanged index files', async () => {
      reset();
      const src = new AptSource(deb(), { keyring: ring, allowExpired: true });
      expect((await src.refresh()).changed).toBe(true);
      const r2 = await src.refresh();
      expect(r2.changed).toBe(false);
      expect(srv.hits.get('/debian/dists/bookworm/InRelease')).toBe(2);
      expect(srv.hits.get('/debian/dists/bookworm/main/binary-amd64/Packages.xz')).toBe(1);
      // A new release file (other Date and Valid-Until) listing the same Packages: not fetched again.
      srv.mounts.set('/debian/dists/', '/debian-expired/dists/');
      const r3 = await src.refresh();
      expect(r3.changed).toBe(false);
      expect(r3.validUntil!.getTime()).toBeLessThan(Date.now());
      expect(srv.hits.get('/debian/dists/bookworm/InRelease')).toBe(3);
      expect(srv.hits.get('/debian/dists/bookworm/main/binary-amd64/Packages.xz')).toBe(1);
      expect(src.lookupPackage('hello').length).toBe(1);
      src.close();
    });

    it('file digests of .deb packages (xz, zstd, gzip data) equal what dpkg-deb extracts, and become lookups', async () => {
      reset();
      const src = new AptSource(deb(), { keyring: ring });
      await src.refresh();
      for (const name of ['hello', 'vmkit-fixture-zstd', 'vmkit-fixture-gzip']) {
        const entry = src.lookupPackage(name)[0]!;
        const files = (await src.fileDigests(entry))!;
        const f = debs().find((d) => d.startsWith(name + '_'))!;
        const dir = mkdtempSync(join(tmpdir(), 'vmkit-deb-'));
        try {
          execFileSync('dpkg-deb', ['-x', join(FIXTURES, 'debian/pool/main', f), dir]);
          const want = new Map<string, string>();
          const walk = (d: string): void => {
            for (const n of readdirSync(d, { withFileTypes: true })) {
              const p = join(d, n.name);
              if (n.isDirectory()) walk(p);
              else if (n.isFile() && statSync(p).isFile()) want.set('/' + relative(dir, p), sha256(readFileSync(p)));
            }
          };
          walk(dir);
          expect(new Map([...files].map(([k, v]) => [k, v.hex]))).toEqual(want);
          expect(want.size).toBeGreaterThan(0);
          const [path, hex] = [...want][0]!;
          const hits = src.lookupDigest('sha256', hexBytes(hex));
          expect(hits.some((h) => h.path === path && h.package === name)).toBe(true);
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      }
      // Cached per package: the .deb is fetched once.
      const f = debs().find((d) => d.startsWith('hello_'))!;
      await src.fileDigests(src.lookupPackage('hello')[0]!);
      expect(srv.hits.get(`/debian/pool/main/${f}`)).toBe(1);
      src.close();
    });

    it('debFileDigests reads a real .deb without the repository', async () => {
      const f = debs().find((d) => d.startsWith('tree_'))!;
      const m = await debFileDigests(readFileSync(join(FIXTURES, 'debian/pool/main', f)));
      const bin = execFileSync('sh', ['-c', `dpkg-deb --fsys-tarfile '${join(FIXTURES, 'debian/pool/main', f)}' | tar -xOf - ./usr/bin/tree`], { maxBuffer: 1 << 26 });
      expect(m.get('/usr/bin/tree')).toBe(sha256(bin));
    });
  });

  describe('RPM', () => {
    const rpms = () => readdirSync(join(FIXTURES, 'rpm')).filter((f) => f.endsWith('.rpm'));
    it('indexes createrepo_c repodata with a signed repomd.xml', async () => {
      reset();
      const src = new RpmSource(`rpm ${srv.url}/rpm`, { keyring: ring });
      const r = await src.refresh();
      expect(r.packages).toBe(rpms().length);
      for (const f of rpms()) {
        const hits = src.lookupDigest('sha256', hexBytes(sha256(readFileSync(join(FIXTURES, 'rpm', f)))));
        expect(hits.length).toBe(1);
        expect(hits[0]).toMatchObject({ package: 'vmkit-fixture', architecture: 'noarch', repository: `rpm ${srv.url}/rpm` });
        expect(f).toContain(hits[0]!.version);
      }
      expect(src.lookupPackage('vmkit-fixture', '1.1-1').length).toBe(1);
      // Second refresh: 304.
      expect((await src.refresh()).changed).toBe(false);
      src.close();
    });

    it('reads xz-compressed repodata (streamed into the XML parser)', async () => {
      reset();
      const src = new RpmSource(`rpm ${srv.url}/rpm-xz`, { keyring: ring });
      expect((await src.refresh()).packages).toBe(rpms().length);
      expect(src.lookupPackage('vmkit-fixture').map((e) => e.digests[0]!.hex).sort()).toEqual(rpms().map((f) => sha256(readFileSync(join(FIXTURES, 'rpm', f)))).sort());
      src.close();
    });

    it('decompressChunks streams gzip, xz and zstd made by the real tools', async () => {
      const input = Buffer.from(Array.from({ length: 40000 }, (_, i) => `line ${i} ${i * 7919}\n`).join(''));
      for (const [tool, kind] of [['gzip', 'gz'], ['xz', 'xz'], ['zstd', 'zst']] as const) {
        const packed = execFileSync(tool, ['-c'], { input });
        const parts: Uint8Array[] = [];
        for await (const c of decompressChunks(packed, kind, 1 << 24, tool)) parts.push(c);
        expect(Buffer.concat(parts).equals(input)).toBe(true);
        const e = await (async () => { for await (const _ of decompressChunks(packed, kind, 1000, tool)) void _; })().catch((x: unknown) => x);
        expect((e as VmkitError).code).toBe('LIMIT');
      }
    });

    it('large xz goes through the system xz, with the same bytes, limits and errors as the wasm decoder', async () => {
      // Random bytes do not compress: the .xz stays above the 256 KiB where the process pays off.
      const input = Buffer.concat([randomBytes(400_000), Buffer.from('x'.repeat(100_000))]);
      const packed = execFileSync('xz', ['-c', '-6'], { input });
      expect(packed.length).toBeGreaterThan(256 << 10);
      const bad = Buffer.concat([packed.subarray(0, 1000), Buffer.from([packed[1000]! ^ 0xff]), packed.subarray(1001)]);
      try {
        for (const system of [true, false]) {
          _useSystemXz(system);
          expect(Buffer.from(await decompress(packed, 'xz', 1 << 24, 'x')).equals(input), `system ${system}`).toBe(true);
          const parts: Uint8Array[] = [];
          for await (const c of decompressChunks(packed, 'xz', 1 << 24, 'x')) parts.push(c);
          expect(Buffer.concat(parts).equals(input)).toBe(true);
          await refused(decompress(packed, 'xz', 100_000, 'x'), 'LIMIT');
          await refused(decompress(bad, 'xz', 1 << 24, 'x'), 'CORRUPT');
          await refused(decompress(packed.subarray(0, packed.length - 100), 'xz', 1 << 24, 'x'), 'CORRUPT');
          const drain = async (max: number, data: Uint8Array = packed): Promise<void> => {
            for await (const c of decompressChunks(data, 'xz', max, 'x')) void c;
          };
          await refused(drain(100_000), 'LIMIT');
          await refused(drain(1 << 24, bad), 'CORRUPT');
          // A consumer slower than xz: the child's output waits for it, the bytes are the same.
          const slow: Uint8Array[] = [];
          for await (const c of decompressChunks(packed, 'xz', 1 << 24, 'x')) {
            slow.push(c);
            await new Promise((r) => setTimeout(r, 2));
          }
          expect(Buffer.concat(slow).equals(input), `slow, system ${system}`).toBe(true);
          // A consumer that stops after one chunk, then a whole run again.
          for await (const c of decompressChunks(packed, 'xz', 1 << 24, 'x')) {
            expect(c.length).toBeGreaterThan(0);
            break;
          }
          expect(Buffer.from(await decompress(packed, 'xz', 1 << 24, 'x')).equals(input)).toBe(true);
        }
      } finally {
        _useSystemXz(true);
      }
    });

    it('file digests of .rpm packages equal `rpm -qp --dump`, checked against primary.xml', async () => {
      reset();
      const src = new RpmSource(`rpm ${srv.url}/rpm`, { keyring: ring });
      await src.refresh();
      for (const f of rpms()) {
        const dump = execFileSync('rpm', ['-qp', '--dump', join(FIXTURES, 'rpm', f)]).toString().trim().split('\n');
        const want = new Map(dump.map((l) => l.split(' ')).filter((w) => w[3] && /^[0-9a-f]{64}$/.test(w[3])).map((w) => [w[0]!, w[3]!]));
        expect(want.size).toBeGreaterThan(0);
        const version = f.slice('vmkit-fixture-'.length, -'.noarch.rpm'.length);
        const entry = src.lookupPackage('vmkit-fixture', version)[0]!;
        const files = (await src.fileDigests(entry))!;
        expect(new Map([...files].map(([k, v]) => [k, v.hex]))).toEqual(want);
        expect(new Map([...rpmFileDigests(readFileSync(join(FIXTURES, 'rpm', f)))].map(([k, v]) => [k, v.hex]))).toEqual(want);
        const [path, hex] = [...want][0]!;
        expect(src.lookupDigest('sha256', hexBytes(hex)).some((p) => p.path === path && p.version === version)).toBe(true);
      }
      // A tampered .rpm is refused.
      const f = rpms()[0]!;
      srv.overrides.set(`/rpm/${f}`, (b) => Buffer.concat([b!.subarray(0, 200), Buffer.from([b![200]! ^ 1]), b!.subarray(201)]));
      const src2 = new RpmSource(`rpm ${srv.url}/rpm`, { keyring: ring });
      await src2.refresh();
      const v = f.slice('vmkit-fixture-'.length, -'.noarch.rpm'.length);
      await refused(src2.fileDigests(src2.lookupPackage('vmkit-fixture', v)[0]!), 'INTEGRITY');
      src.close();
      src2.close();
    });

    it('loads file digests from filelists-ext.xml (added by modifyrepo_c, signed), equal to `rpm -qp --dump`, and refuses a tampered one', async () => {
      reset();
      const dir = join(FIXTURES, 'rpm-ext');
      const src = new RpmSource(`rpm ${srv.url}/rpm-ext`, { keyring: ring });
      await src.refresh();
      let files = 0;
      for (const f of readdirSync(dir).filter((x) => x.endsWith('.rpm'))) {
        const version = f.slice('vmkit-fixture-'.length, -'.noarch.rpm'.length);
        const dump = execFileSync('rpm', ['-qp', '--dump', join(dir, f)]).toString().trim().split('\n').map((l) => l.split(' '));
        for (const w of dump.filter((x) => x[4]!.startsWith('0100'))) {
          // Without fetching any .rpm: the digest is in the index from the repodata alone.
          expect(src.lookupDigest('sha256', hexBytes(w[3]!))).toEqual([{ repository: `rpm ${srv.url}/rpm-ext`, package: 'vmkit-fixture', version, architecture: 'noarch', path: w[0] }]);
          files++;
        }
      }
      expect(files).toBeGreaterThan(1);
      expect(src.filelistsExtFiles).toBe(files);
      expect([...srv.hits.keys()].some((k) => k.endsWith('.rpm'))).toBe(false);
      src.close();
      // Off by option: no file digests until fileDigests() fetches a package.
      const off = new RpmSource(`rpm ${srv.url}/rpm-ext`, { keyring: ring, filelistsExt: false });
      await off.refresh();
      expect(off.filelistsExtFiles).toBe(0);
      off.close();
      // One changed byte (same size): the file no longer matches its signed checksum in repomd.xml.
      const ext = readdirSync(join(dir, 'repodata')).find((f) => f.endsWith('filelists-ext.xml.gz'))!;
      srv.overrides.set(`/rpm-ext/repodata/${ext}`, (b) => Buffer.concat([b!.subarray(0, 100), Buffer.from([b![100]! ^ 1]), b!.subarray(101)]));
      await refused(new RpmSource(`rpm ${srv.url}/rpm-ext`, { keyring: ring }).refresh(), 'INTEGRITY');
    });

    it('filelistsExtParser: directories skipped, bad input CORRUPT', () => {
      const seen: string[] = [];
      const fp = filelistsExtParser((f) => seen.push(`${f.pkgid} ${f.alg} ${f.path} ${f.hex}`));
      fp.write('<filelists-ext packages="1"><package pkgid="AB" name="x" arch="noarch"><version epoch="0" ver="1" rel="1"/><checksum type="sha256"/>');
      fp.write('<file type="dir">/usr/share/x</file><file hash="CD">/usr/share/x/a</file></package></filelists-ext>');
      expect(fp.close()).toBe(1);
      expect(seen).toEqual(['ab sha256 /usr/share/x/a cd']);
      for (const bad of ['<filelists-ext><file hash="ab">/x</file></filelists-ext>', '<filelists-ext><package pkgid="a"><file hash="zz">/x</file></package></filelists-ext>', '<filelists-ext><package pkgid="a">']) {
        expect(() => {
          const q = filelistsExtParser(() => {});
          q.write(bad);
          q.close();
        }).toThrow(VmkitError);
      }
    });

    it('malformed .rpm and .deb files end in VmkitError (fuzz, real packages as seeds)', async () => {
      const rpm = readFileSync(join(FIXTURES, 'rpm', rpms()[0]!));
      const debf = readFileSync(join(FIXTURES, 'debian/pool/main', debs().find((d) => d.startsWith('vmkit-fixture-gzip'))!));
      const mutate = (seed: Uint8Array) => fc.tuple(fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }), fc.option(fc.nat())).map(([flips, cut]) => {
        let b = Uint8Array.from(seed);
        for (const [i, v] of flips) b[i % Math.min(b.length, 4096)] = v; // headers live in the first KiB
        if (cut !== null) b = b.subarray(0, cut % b.length);
        return b;
      });
      await fc.assert(
        fc.asyncProperty(mutate(rpm), mutate(debf), async (r, d) => {
          try {
            rpmFileDigests(r);
          } catch (e) {
            expect(e).toBeInstanceOf(VmkitError);
          }
          await debFileDigests(d, { maxBytes: 1 << 20 }).catch((e: unknown) => expect(e).toBeInstanceOf(VmkitError));
        }),
        { numRuns: 200 },
      );
    });

    it('refuses an unsigned, wrongly signed or tampered chain', async () => {
      reset();
      await refused(new RpmSource(`rpm ${srv.url}/rpm`, { keyring: otherRing }).refresh(), 'INTEGRITY');
      await refused(new RpmSource(`rpm ${srv.url}/rpm`).refresh(), 'INTEGRITY');
      srv.overrides.set('/rpm/repodata/repomd.xml.asc', () => ({ status: 404 }));
      await refused(new RpmSource(`rpm ${srv.url}/rpm`, { keyring: ring }).refresh(), 'INTEGRITY');
      const ok = new RpmSource(`rpm ${srv.url}/rpm`, { keyring: ring, allowUnsigned: true });
      expect((await ok.refresh()).packages).toBe(rpms().length);
      ok.close();
      reset();
      const primary = readdirSync(join(FIXTURES, 'rpm/repodata')).find((f) => f.endsWith('primary.xml.gz'))!;
      srv.overrides.set(`/rpm/repodata/${primary}`, (b) => {
        const x = execFileSync('gzip', ['-dc'], { input: b! }).toString().replace(/(<checksum type="sha256" pkgid="YES">)([0-9a-f])/, (_m, tag: string, c: string) => tag + (c === 'f' ? '0' : 'f')); // always a different digit
        return execFileSync('gzip', ['-c'], { input: x });
      });
      await refused(new RpmSource(`rpm ${srv.url}/rpm`, { keyring: ring }).refresh(), 'INTEGRITY');
    });
  });

  describe('npm', () => {
    const tarballs = () => readdirSync(join(FIXTURES, 'npm/tarballs'));
    const serveNpm = () => {
      srv.mounts.set('/npm/vmkit-fixture', '/npm/packument.json');
      srv.mounts.set('/npm/-/npm/v1/keys', '/npm/keys.json');
    };
    it('indexes dist.integrity of versions with a valid registry signature', async () => {
      reset();
      serveNpm();
      const src = openSource(`npm ${srv.url}/npm vmkit-fixture`);
      expect(src).toBeInstanceOf(NpmSource);
      const r = await src.refresh();
      expect(r.packages).toBe(tarballs().length);
      for (const f of tarballs()) {
        const d = Uint8Array.from(createHash('sha512').update(readFileSync(join(FIXTURES, 'npm/tarballs', f))).digest());
        const hits = src.lookupDigest('sha512', d);
        expect(hits.map((h) => `${h.package}@${h.version}`)).toEqual([`vmkit-fixture@${f.slice('vmkit-fixture-'.length, -4)}`]);
        // The first 32 bytes alone, or a changed tail, never match.
        const t = d.slice();
        t[63]! ^= 1;
        expect(src.lookupDigest('sha512', t)).toEqual([]);
      }
      expect((await src.refresh()).changed).toBe(false);
    });

    it('refuses a bad signature and leaves unsigned versions out', async () => {
      reset();
      serveNpm();
      const doc = () => JSON.parse(readFileSync(join(FIXTURES, 'npm/packument.json'), 'utf8'));
      srv.overrides.set('/npm/vmkit-fixture', () => {
        const d = doc();
        const v = d.versions['1.0.0'];
        v.dist.integrity = v.dist.integrity.replace(/^sha512-./, (m: string) => (m.endsWith('A') ? 'sha512-B' : 'sha512-A'));
        return Buffer.from(JSON.stringify(d));
      });
      await refused(new NpmSource(`npm ${srv.url}/npm vmkit-fixture`).refresh(), 'INTEGRITY');
      srv.overrides.set('/npm/vmkit-fixture', () => {
        const d = doc();
        delete d.versions['1.0.0'].dist.signatures;
        return Buffer.from(JSON.stringify(d));
      });
      const src = new NpmSource(`npm ${srv.url}/npm vmkit-fixture`);
      await src.refresh();
      expect(src.lookupPackage('vmkit-fixture').map((e) => e.provenance.version)).toEqual(['1.0.1']);
      src.close();
    });
  });

  it('openSource picks the source from the line and refuses others', () => {
    expect(openSource(deb(), { keyring: ring })).toBeInstanceOf(AptSource);
    expect(openSource(`rpm ${srv.url}/rpm`)).toBeInstanceOf(RpmSource);
    for (const bad of ['', 'deb-src http://x/ bookworm main', 'deb http://x/debian bookworm', 'deb ftp://x/ bookworm main', 'rpm', 'npm notaurl', 'yum http://x']) {
      expect(() => openSource(bad), bad).toThrow(VmkitError);
    }
  });
});

// The machine's own apt lists: Debian's signed InRelease checked against Debian's keyring.
const realInRelease = (() => {
  try {
    // Debian's own only: a third-party repository in the lists is signed by a key not in Debian's keyring.
    return readdirSync('/var/lib/apt/lists')
      .filter((f) => f.endsWith('_InRelease'))
      .map((f) => join('/var/lib/apt/lists', f))
      .filter((f) => /^Origin: Debian$/m.test(readFileSync(f, 'utf8')));
  } catch {
    return [];
  }
})();
if (realInRelease.length === 0) console.warn("\n*** SKIPPING Debian's own InRelease check: no apt lists (run apt-get update) ***\n");
describe.runIf(realInRelease.length > 0)("Debian's own signed metadata", () => {
  it('verifies InRelease files from apt-get update with /usr/share/keyrings/debian-archive-keyring.gpg', async () => {
    const ring = await readKeyring(readFileSync('/usr/share/keyrings/debian-archive-keyring.gpg'));
    for (const f of realInRelease.slice(0, 2)) {
      const text = readFileSync(f, 'utf8');
      const { text: signed } = await verifyCleartext(text, ring, f);
      expect(signed).toMatch(/^Origin: Debian/m);
      await expect(verifyCleartext(text.replace('Origin: Debian', 'Origin: Evil'), ring, f)).rejects.toThrow(VmkitError);
    }
  });
});
