// Alpine APKINDEX sources against an index signed as abuild-sign signs it
// (scripts/attest-fixtures.sh: openssl dgst over the control tar.gz, the
// signature in a cut tar gzipped in front): both signature kinds, the C:
// checksums against SHA-1s taken here of the control segments, and every
// break of the chain refused — tampered index, tampered signature, wrong key,
// unknown key, no signature.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, readdirSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { gunzipSync, gzipSync } from 'node:zlib';
import { join } from 'node:path';
import { needTool } from './_tools.js';
import { buildFixtures, FIXTURES, startServer, type FixtureServer } from './_attest-server.js';
import { ApkSource, openSource } from '../bindings/attest/index.js';
import { parseApkIndex, verifyApkIndex } from '../bindings/attest/sources/apk.js';
import { VmkitError } from '../bindings/errors.js';

const tools = ['apt-ftparchive:apt-utils', 'createrepo_c:createrepo-c', 'rpmbuild:rpm', 'gpg:gnupg', 'dpkg-deb:dpkg', 'zstd:zstd', 'openssl:openssl'];
const ready = tools.every((t) => needTool(t.split(':')[0]!, t.split(':')[1]!));

async function refused(p: Promise<unknown>, code: string, re?: RegExp): Promise<void> {
  const e = await p.then(() => undefined, (x: unknown) => x);
  expect(e, `expected ${code}`).toBeInstanceOf(VmkitError);
  expect((e as VmkitError).code).toBe(code);
  if (re) expect((e as VmkitError).message).toMatch(re);
}

// Offset of the second gzip member, found independently of the code under test: zlib
// inflates the first member and reports how much input it used.
function firstMemberEnd(b: Buffer): number {
  for (let c = 18; c < b.length - 3; c++) {
    if (b[c] !== 0x1f || b[c + 1] !== 0x8b) continue;
    try {
      gunzipSync(b.subarray(0, c));
      return c;
    } catch {
      /* inside the first member */
    }
  }
  throw new Error('one member only');
}

describe.runIf(ready)('Alpine APKINDEX', () => {
  let srv: FixtureServer;
  const dir = () => join(FIXTURES, 'apk');
  const pem = (k: string) => readFileSync(join(dir(), `${k}.rsa.pub`), 'utf8');
  const keys = () => ({ 'vmkit-test.rsa.pub': pem('vmkit-test') });
  const index = (arch = 'x86_64') => readFileSync(join(dir(), arch, 'APKINDEX.tar.gz'));
  // name-version → SHA-1 hex of its control segment, hashed here.
  const controls = () =>
    new Map(readdirSync(join(dir(), 'pkgs')).map((f) => [f.replace(/\.control\.tar\.gz$/, ''), createHash('sha1').update(readFileSync(join(dir(), 'pkgs', f))).digest('hex')]));

  beforeAll(async () => {
    buildFixtures();
    srv = await startServer();
  });
  afterAll(async () => {
    await srv?.close();
  });

  it('verifies RSA (SHA-1) and RSA256 signatures and reads every record with its control-segment SHA-1', async () => {
    for (const [arch, hash] of [['x86_64', 'SHA-1'], ['x86_64-256', 'SHA-256']] as const) {
      const v = await verifyApkIndex(index(arch), keys());
      expect(v.signer).toBe('vmkit-test.rsa.pub');
      expect(v.hash).toBe(hash);
      expect(v.description).toBe('v3.20-vmkit-fixture');
      const want = controls();
      expect(v.records.length).toBe(want.size);
      for (const r of v.records) expect(want.get(`${r.name}-${r.version}`), r.name).toBe(r.checksum.hex);
      expect(v.records.find((r) => r.name === 'ca-certificates-bundle')?.arch).toBe('noarch');
      // The same with the keys as a list.
      expect((await verifyApkIndex(index(arch), [pem('other'), pem('vmkit-test')])).signer).toBe('vmkit-test.rsa.pub');
    }
  });

  it('refuses a tampered index, a tampered signature, the wrong key, an unknown key and no signature', async () => {
    const b = index();
    const cut = firstMemberEnd(b);
    // One bit of the control member (its gzip body).
    const t = Buffer.from(b);
    t[cut + 40]! ^= 1;
    await refused(verifyApkIndex(t, keys()), 'INTEGRITY', /does not verify/);
    // One bit of the signature, re-packed as a valid gzip member.
    const sigTar = gunzipSync(b.subarray(0, cut));
    sigTar[512 + 17]! ^= 1;
    await refused(verifyApkIndex(Buffer.concat([gzipSync(sigTar), b.subarray(cut)]), keys()), 'INTEGRITY', /does not verify/);
    // Another key under the signer's name; another key under its own name.
    await refused(verifyApkIndex(b, { 'vmkit-test.rsa.pub': pem('other') }), 'INTEGRITY', /does not verify/);
    await refused(verifyApkIndex(b, { 'other.rsa.pub': pem('other') }), 'INTEGRITY', /not among the trusted keys/);
    await refused(verifyApkIndex(b, [pem('other')]), 'INTEGRITY', /does not verify/);
    // No signature member: refused unless allowed.
    await refused(verifyApkIndex(b.subarray(cut), keys()), 'INTEGRITY', /not signed/);
    expect((await verifyApkIndex(b.subarray(cut), keys(), { allowUnsigned: true })).records.length).toBe(controls().size);
    expect((await verifyApkIndex(b, { 'other.rsa.pub': pem('other') }, { allowUnsigned: true })).signer).toBeUndefined();
    // Not gzip, truncated.
    await refused(verifyApkIndex(Buffer.from('hello world, not an index'), keys()), 'CORRUPT');
    await refused(verifyApkIndex(b.subarray(0, b.length - 30), keys()), 'INTEGRITY');
    await expect(verifyApkIndex(b, { k: 'not a key' })).rejects.toThrow(VmkitError);
  });

  it('parseApkIndex keeps Q1 SHA-1 records only', () => {
    const recs = parseApkIndex('C:Q1' + Buffer.alloc(20, 7).toString('base64') + '\nP:a\nV:1-r0\nA:x86_64\n\nC:0123456789abcdef0123456789abcdef\nP:old\nV:1\n\nP:noc\nV:1\n\nC:Q1AAAA\nP:short\nV:1\n');
    expect(recs).toEqual([{ name: 'a', version: '1-r0', arch: 'x86_64', checksum: { alg: 'sha1', hex: '07'.repeat(20) } }]);
  });

  it('ApkSource: refresh over HTTP, lookups by digest and package, 304 on the second refresh, openSource', async () => {
    srv.overrides.clear();
    const src = openSource(`apk ${srv.url}/apk/x86_64`, { apkKeys: keys() }) as ApkSource;
    expect(src).toBeInstanceOf(ApkSource);
    const r = await src.refresh();
    expect(r).toEqual({ changed: true, packages: controls().size });
    expect(src.signer).toBe('vmkit-test.rsa.pub');
    const want = controls();
    const musl = want.get('musl-1.2.5-r0')!;
    expect(src.lookupDigest('sha1', Buffer.from(musl, 'hex'))).toEqual([{ repository: `apk ${srv.url}/apk/x86_64`, package: 'musl', version: '1.2.5-r0', architecture: 'x86_64' }]);
    expect(src.lookupMany('sha1', [...want.values(), '00'.repeat(20)]).map((x) => x?.[0]?.package)).toEqual([...[...want.keys()].map((k) => k.replace(/-[^-]+-r\d+$/, '')), undefined]);
    expect(src.lookupPackage('busybox')[0]!.digests).toEqual([{ alg: 'sha1', hex: want.get('busybox-1.36.1-r29') }]);
    expect(await src.refresh()).toEqual({ changed: false, packages: want.size });
    src.close();
    // Tampered in transit: refused, nothing indexed.
    srv.overrides.set('/apk/x86_64/APKINDEX.tar.gz', (body) => {
      const t = Buffer.from(body!);
      t[t.length - 20]! ^= 1;
      return t;
    });
    const bad = new ApkSource(`apk ${srv.url}/apk/x86_64`, { keys: keys() });
    await refused(bad.refresh(), 'INTEGRITY');
    expect(bad.size).toBe(0);
    srv.overrides.clear();
    expect(() => new ApkSource('apk ftp://x/y')).toThrow(VmkitError);
  });
});
