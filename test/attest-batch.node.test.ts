// The batched appraisal path (lookupMany: a request's hex decoded and looked up
// in one core call) against the one-digest-at-a-time path (lookupDigest), on
// real repositories (scripts/attest-fixtures.sh: Debian .debs with their file
// digests, RPM filelists-ext) — hits, misses, duplicates in the index (the
// same file in two RPM versions) and in the request, malformed hex — and the
// appraisal built on each, which must be the same.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { needTool } from './_tools.js';
import { buildFixtures, FIXTURES, startServer, type FixtureServer } from './_attest-server.js';
import { AptSource, RpmSource, DigestIndex, appraise, readKeyring, type DigestAlgorithm, type Provenance, type ReferenceIndex, type EvidenceDigest } from '../bindings/attest/index.js';
import { digestLength, hexInto } from '../bindings/attest/index-store.js';
import { SourceSet } from '../bindings/attest/service/index.js';
import type { ImaEntry } from '../bindings/attest/ima.js';

const tools = ['apt-ftparchive:apt-utils', 'createrepo_c:createrepo-c', 'rpmbuild:rpm', 'gpg:gnupg', 'dpkg-deb:dpkg', 'zstd:zstd'];
const ready = tools.every((t) => needTool(t.split(':')[0]!, t.split(':')[1]!));

// What the per-digest path answers for a hex string (undefined for none, as lookupMany does).
function oneByOne(ix: ReferenceIndex, alg: DigestAlgorithm, hex: unknown): Provenance[] | undefined {
  const b = new Uint8Array(digestLength(alg));
  if (typeof hex !== 'string' || hex.length !== b.length * 2 || !hexInto(hex, b)) return undefined;
  const r = ix.lookupDigest(alg, b);
  return r.length ? r : undefined;
}

// The same index seen without lookupMany: appraise falls back to lookupDigest per digest.
const perDigest = (ix: ReferenceIndex): ReferenceIndex => ({ lookupDigest: (a, d) => ix.lookupDigest(a, d), lookupPackage: (n, v) => ix.lookupPackage(n, v), size: ix.size });

describe.runIf(ready)('batched lookups on real repositories', () => {
  let srv: FixtureServer;
  let apt: AptSource;
  let rpm: RpmSource;
  let set: SourceSet;
  let both: DigestIndex;
  const known: string[] = [];

  beforeAll(async () => {
    buildFixtures();
    srv = await startServer();
    const ring = await readKeyring(readFileSync(join(FIXTURES, 'keyring.gpg')));
    apt = new AptSource(`deb ${srv.url}/debian bookworm main`, { keyring: ring });
    await apt.refresh();
    for (const name of ['hello', 'tree', 'vmkit-fixture-zstd', 'vmkit-fixture-gzip']) {
      const e = apt.lookupPackage(name)[0]!;
      known.push(e.digests[0]!.hex);
      for (const d of (await apt.fileDigests(e))!.values()) known.push(d.hex);
    }
    rpm = new RpmSource(`rpm ${srv.url}/rpm-ext`, { keyring: ring });
    await rpm.refresh();
    for (const e of rpm.lookupPackage('vmkit-fixture')) known.push(e.digests.find((d) => d.alg === 'sha256')?.hex ?? e.digests[0]!.hex);
    set = new SourceSet([apt, rpm]);
    // The same packages under two repository ids (a suite and its -updates carry the same
    // .debs): every digest has two entries in one index, the chains lookups walk.
    both = new DigestIndex();
    for (const repo of ['deb http://a/debian bookworm main', 'deb http://a/debian bookworm-updates main']) {
      for (const name of ['hello', 'tree', 'vmkit-fixture-zstd', 'vmkit-fixture-gzip']) {
        const e = apt.lookupPackage(name)[0]!;
        const id = both.addPackage({ ...e.provenance, repository: repo }, e.digests[0]!);
        for (const [path, d] of (await apt.fileDigests(e))!) both.addFile(id, path, d);
      }
    }
  });
  afterAll(async () => {
    apt?.close();
    rpm?.close();
    both?.close();
    await srv?.close();
  });

  // Requests: every known digest (some twice, some upper case), misses, and text that is not a digest.
  function request(): string[] {
    const r = [...known, ...known.slice(0, 7), ...known.slice(3, 9).map((h) => h.toUpperCase())];
    for (let i = 0; i < 20; i++) r.push(randomBytes(32).toString('hex'));
    r.push('zz'.repeat(32), known[0]!.slice(0, 62), known[0]! + '00', '', known[1]!.slice(0, 63) + 'é', known[2]!.slice(0, 40) + ':' + known[2]!.slice(41));
    // Shuffled, so hits and misses interleave.
    for (let i = r.length - 1; i > 0; i--) {
      const j = randomBytes(4).readUInt32LE() % (i + 1);
      [r[i], r[j]] = [r[j]!, r[i]!];
    }
    return r;
  }

  it('lookupMany gives exactly what lookupDigest gives per digest (DigestIndex, sources, SourceSet)', () => {
    expect(known.length).toBeGreaterThan(20);
    const hex = request();
    for (const ix of [apt, rpm, set, both] as ReferenceIndex[]) {
      const got = ix.lookupMany!('sha256', hex);
      expect(got).toEqual(hex.map((h) => oneByOne(ix, 'sha256', h)));
      // Packed raw bytes: the same answers for the valid ones.
      const valid = hex.filter((h) => /^[0-9a-fA-F]{64}$/.test(h));
      const packed = Uint8Array.from(Buffer.from(valid.join(''), 'hex'));
      expect(ix.lookupMany!('sha256', packed)).toEqual(valid.map((h) => oneByOne(ix, 'sha256', h)));
    }
    // The single hex lookup (decoded straight into the core) answers the same.
    for (const h of hex) expect(both.lookupHex('sha256', h)).toEqual(oneByOne(both, 'sha256', h) ?? []);
    // Duplicates: two entries per digest, newest first, as lookupDigest walks them.
    const two = both.lookupMany('sha256', known.slice(0, 10));
    expect(two.every((x) => x?.length === 2 && x[0]!.repository.endsWith('bookworm-updates main'))).toBe(true);
    const hits = set.lookupMany('sha256', hex).filter((x) => x !== undefined).length;
    expect(hits).toBeGreaterThan(known.length);
    expect(hits).toBeLessThan(hex.length - 20);
  });

  it('crosses the 4096-digest batches, and other algorithms never confuse', () => {
    const hex = Array.from({ length: 9000 }, (_, i) => (i % 3 === 0 ? known[i % known.length]! : randomBytes(32).toString('hex')));
    expect(set.lookupMany('sha256', hex)).toEqual(hex.map((h) => oneByOne(set, 'sha256', h)));
    // The same bytes under sm3 (32 bytes, another key tag) or as a sha1 prefix: nothing.
    expect(set.lookupMany('sm3', known).every((x) => x === undefined)).toBe(true);
    expect(set.lookupMany('sha1', known.map((h) => h.slice(0, 40))).every((x) => x === undefined)).toBe(true);
  });

  it('a DigestIndex with longer and shorter digests answers the same both ways', () => {
    const ix = new DigestIndex();
    try {
      const want: { alg: DigestAlgorithm; hex: string }[] = [];
      for (const alg of ['sha512', 'sha384', 'sha1', 'md5', 'sm3'] as DigestAlgorithm[]) {
        const n = digestLength(alg);
        for (let i = 0; i < 50; i++) {
          const hex = randomBytes(n).toString('hex');
          ix.addPackage({ repository: 'r', package: `p${i}`, version: '1' }, { alg, hex });
          if (i % 2) ix.addPackage({ repository: 'r', package: `q${i}`, version: '2' }, { alg, hex }); // duplicate digest
          want.push({ alg, hex });
          // Same first 32 bytes, another tail: the tail check must tell them apart.
          if (n > 32) want.push({ alg, hex: hex.slice(0, 64) + randomBytes(n - 32).toString('hex') });
        }
      }
      for (const alg of ['sha512', 'sha384', 'sha1', 'md5', 'sm3'] as DigestAlgorithm[]) {
        const hex = want.filter((w) => w.alg === alg).map((w) => w.hex);
        const got = ix.lookupMany(alg, hex);
        expect(got).toEqual(hex.map((h) => oneByOne(ix, alg, h)));
        expect(got.filter((x) => x !== undefined).length).toBe(50);
        expect(ix.lookupMany(alg, Uint8Array.from(Buffer.from(hex.join(''), 'hex')))).toEqual(got);
        expect(hex.map((h) => ix.lookupHex(alg, h.toUpperCase()))).toEqual(got.map((x) => x ?? []));
      }
      expect(() => ix.lookupMany('sha1', new Uint8Array(21))).toThrow(/whole number/);
      expect(ix.lookupMany('sha256', [])).toEqual([]);
    } finally {
      ix.close();
    }
  });

  it('appraise gives the same appraisal through lookupMany as one digest at a time (digests and IMA entries)', () => {
    const hex = request();
    const paths = ['/usr/bin/hello', '/usr/bin/tree', undefined];
    const digests: EvidenceDigest[] = hex.map((h, i) => {
      const d: EvidenceDigest = { alg: i % 17 === 5 ? 'sha1' : 'sha256', hex: i % 17 === 5 ? h.slice(0, 40) : h };
      const p = paths[i % 3];
      if (p) d.path = p;
      return d;
    });
    // IMA entries as verifyImaLog gives them: raw digests, some of another length than the algorithm's.
    const entries: ImaEntry[] = hex.map((h, i) => ({
      line: i + 1,
      pcr: 10,
      template: 'ima-ng',
      templateHash: new Uint8Array(20),
      violation: i % 23 === 0,
      digestAlg: i % 19 === 3 ? 'sha1' : i % 29 === 4 ? 'crc32' : 'sha256',
      digest: /^[0-9a-fA-F]{64}$/.test(h) ? Uint8Array.from(Buffer.from(h, 'hex')) : new Uint8Array(i % 2 ? 31 : 20),
      path: paths[i % 3] ?? `/opt/x${i}`,
    }));
    const ima = { entries, excluded: 0, failures: [], failureCount: 0, pcrs: {} } as unknown as Parameters<typeof appraise>[1]['ima'];
    for (const ix of [set, both]) expect(appraise(ix, { digests, ima }, { maxDetail: 100_000 })).toEqual(appraise(perDigest(ix), { digests, ima }, { maxDetail: 100_000 }));
    const batched = appraise(set, { digests, ima }, { maxDetail: 100_000 });
    const sw = batched.submods['vmkit-software']!.summary;
    expect(sw.affirming).toBeGreaterThan(0);
    expect(sw.warning).toBeGreaterThan(0);
    expect(batched.submods['vmkit-ima']!.summary.affirming).toBeGreaterThan(0);
  });
});
