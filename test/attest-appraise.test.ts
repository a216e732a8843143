// Appraisal of evidence against a reference index: verdicts per item against
// the real DigestIndex, properties against a Map-backed model index (unknown
// digests never affirm, a package without its digest never affirms, adding
// items never improves the status, counts add up), IMA logs (unknown file,
// tampered template hash, PCR mismatch, excludes) and the evidence parser
// (fuzzed: any JSON gives Evidence or a VmkitError).
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  Ar4si,
  appraise,
  appraiseEvidence,
  parseEvidence,
  tierOf,
  vectorStatus,
  worst,
  type ArStatus,
  type EvidenceDigest,
  type EvidencePackage,
} from '../bindings/attest/appraise.js';
import { imaHash, imaTemplateData, type ImaEntry } from '../bindings/attest/ima.js';
import { DigestIndex, toHex } from '../bindings/attest/index-store.js';
import type { Digest, DigestAlgorithm, PackageEntry, Provenance, ReferenceIndex } from '../bindings/attest/types.js';
import { VmkitError } from '../bindings/errors.js';

const REPO = 'deb http://127.0.0.1/debian bookworm main';
const d32 = (n: number): string => toHex(new Uint8Array(32).fill(n));

/** A ReferenceIndex over plain Maps: the model the properties run against. */
class ModelIndex implements ReferenceIndex {
  byDigest = new Map<string, Provenance[]>();
  pkgs: PackageEntry[] = [];
  get size(): number {
    return this.byDigest.size;
  }
  addPackage(p: Provenance, d: Digest): void {
    this.pkgs.push({ provenance: p, digests: [d] });
    this.add(d, p);
  }
  add(d: Digest, p: Provenance): void {
    const k = `${d.alg}:${d.hex}`;
    (this.byDigest.get(k) ?? this.byDigest.set(k, []).get(k)!).push(p);
  }
  lookupDigest(alg: DigestAlgorithm, digest: Uint8Array): Provenance[] {
    return this.byDigest.get(`${alg}:${toHex(digest)}`) ?? [];
  }
  lookupPackage(name: string, version?: string): PackageEntry[] {
    return this.pkgs.filter((e) => e.provenance.package === name && (version === undefined || e.provenance.version === version));
  }
}

function realIndex(): DigestIndex {
  const ix = new DigestIndex();
  const hello = ix.addPackage({ repository: REPO, package: 'hello', version: '2.10-3', architecture: 'amd64' }, { alg: 'sha256', hex: d32(1) });
  ix.addFile(hello, '/usr/bin/hello', { alg: 'sha256', hex: d32(2) });
  ix.addFile(hello, '/usr/share/doc/hello/copyright', { alg: 'sha256', hex: d32(3) });
  ix.addPackage({ repository: REPO, package: 'hello', version: '2.10-2', architecture: 'amd64' }, { alg: 'sha256', hex: d32(4) });
  return ix;
}

describe('appraise against the digest index', () => {
  it('gives each kind of item its verdict, match and reason', () => {
    const ix = realIndex();
    try {
      const a = appraise(ix, {
        digests: [
          { alg: 'sha256', hex: d32(2), path: '/usr/bin/hello' },
          { alg: 'sha256', hex: d32(1) },
          { alg: 'sha256', hex: d32(3), path: '/usr/bin/other' },
          { alg: 'sha256', hex: d32(9) },
        ],
        packages: [
          { name: 'hello', version: '2.10-3', digest: { alg: 'sha256', hex: d32(1) } },
          { name: 'hello', version: '2.10-3' },
          { name: 'hello', version: '2.10-3', digest: { alg: 'sha256', hex: d32(4) } },
          { name: 'hello', version: '2.10-3', architecture: 'arm64', digest: { alg: 'sha256', hex: d32(1) } },
          { name: 'hello', version: '2.10-3', digest: { alg: 'sha512', hex: 'aa'.repeat(64) } },
          { name: 'nope', version: '1' },
        ],
      });
      const s = a.submods['vmkit-software']!;
      const got = s.items.map((i) => [i.status, i.reason ?? '']);
      expect(got).toEqual([
        ['affirming', ''],
        ['affirming', ''],
        ['warning', 'path-mismatch'],
        ['warning', 'unknown-digest'],
        ['affirming', ''],
        ['warning', 'package-without-digest'],
        ['contraindicated', 'digest-mismatch'],
        ['warning', 'unknown-package'],
        ['warning', 'digest-unverifiable'],
        ['warning', 'unknown-package'],
      ]);
      expect(s.items[0]!.matches[0]).toMatchObject({ repository: REPO, package: 'hello', version: '2.10-3', architecture: 'amd64', path: '/usr/bin/hello' });
      expect(s.items[1]!.matches[0]).toMatchObject({ package: 'hello', version: '2.10-3' });
      expect(s.items[1]!.matches[0]!.path).toBeUndefined();
      expect(s.trustVector).toEqual({ 'file-system': Ar4si.CONTRAINDICATED_FILES });
      expect(a.status).toBe('contraindicated');
      expect(s.summary).toMatchObject({ items: 10, affirming: 3, warning: 6, contraindicated: 1 });
      const ok = appraise(ix, { digests: [{ alg: 'sha256', hex: d32(2), path: '/usr/bin/hello' }] });
      expect(ok.status).toBe('affirming');
      expect(ok.submods['vmkit-software']!.trustVector).toEqual({ 'file-system': 2 });
      expect(appraise(ix, { digests: [{ alg: 'sha256', hex: d32(9) }] }, { unknown: 'contraindicated' }).status).toBe('contraindicated');
      expect(appraise(ix, {}).status).toBe('none');
    } finally {
      ix.close();
    }
  });

  it('lists at most maxDetail affirming items but every non-affirming one', () => {
    const ix = realIndex();
    try {
      const digests: EvidenceDigest[] = [...Array(20)].map(() => ({ alg: 'sha256', hex: d32(2) }));
      digests.push({ alg: 'sha256', hex: d32(77) });
      const s = appraise(ix, { digests }, { maxDetail: 5 }).submods['vmkit-software']!;
      expect(s.items.length).toBe(6);
      expect(s.summary.omitted).toBe(15);
      expect(s.items.at(-1)!.reason).toBe('unknown-digest');
    } finally {
      ix.close();
    }
  });
});

describe('properties (model index)', () => {
  const arbWorld = fc.array(fc.record({ name: fc.constantFrom('a', 'b', 'c'), version: fc.constantFrom('1', '2'), n: fc.integer({ min: 1, max: 60 }) }), { maxLength: 12 });
  const build = (w: { name: string; version: string; n: number }[]): ModelIndex => {
    const m = new ModelIndex();
    for (const p of w) m.addPackage({ repository: REPO, package: p.name, version: p.version }, { alg: 'sha256', hex: d32(p.n) });
    return m;
  };
  const arbDigest = fc.integer({ min: 1, max: 120 }).map((n): EvidenceDigest => ({ alg: 'sha256', hex: d32(n) }));
  const arbPkg = fc.record({ name: fc.constantFrom('a', 'b', 'c', 'd'), version: fc.constantFrom('1', '2', '3'), n: fc.option(fc.integer({ min: 1, max: 120 })) }).map(
    ({ name, version, n }): EvidencePackage => (n === null ? { name, version } : { name, version, digest: { alg: 'sha256', hex: d32(n) } }),
  );

  it('an unknown digest never lets the result affirm', () => {
    fc.assert(
      fc.property(arbWorld, fc.array(arbDigest), fc.array(arbPkg), fc.integer({ min: 200, max: 255 }), (w, ds, ps, u) => {
        const a = appraise(build(w), { digests: [...ds, { alg: 'sha256', hex: d32(u) }], packages: ps });
        expect(a.status).not.toBe('affirming');
        expect(a.status).not.toBe('none');
      }),
    );
  });

  it('a package without a digest never affirms; affirming items always carry a match', () => {
    fc.assert(
      fc.property(arbWorld, fc.array(arbPkg, { minLength: 1 }), (w, ps) => {
        const a = appraise(build(w), { packages: ps });
        for (const it of a.submods['vmkit-software']!.items) {
          if (it.status === 'affirming') {
            expect(it.hex).toBeDefined();
            expect(it.matches.length).toBeGreaterThan(0);
            expect(it.matches.every((m) => m.package === it.name && m.version === it.version)).toBe(true);
          }
          if (it.kind === 'package' && it.hex === undefined) expect(it.status).not.toBe('affirming');
        }
      }),
    );
  });

  it('known digests alone affirm; adding items never improves the status; counts add up', () => {
    const rank: Record<ArStatus, number> = { none: 0, affirming: 1, warning: 2, contraindicated: 3 };
    fc.assert(
      fc.property(arbWorld, fc.array(arbDigest), fc.array(arbPkg), fc.array(arbDigest), (w, ds, ps, more) => {
        const m = build(w);
        const known = w.map((p): EvidenceDigest => ({ alg: 'sha256', hex: d32(p.n) }));
        if (known.length) expect(appraise(m, { digests: known }).status).toBe('affirming');
        const a = appraise(m, { digests: ds, packages: ps });
        const b = appraise(m, { digests: [...ds, ...more], packages: ps });
        if (a.status !== 'none') expect(rank[b.status]).toBeGreaterThanOrEqual(rank[a.status]);
        const s = b.submods['vmkit-software'];
        if (s) {
          expect(s.summary.affirming + s.summary.warning + s.summary.contraindicated + s.summary.none).toBe(s.summary.items);
          expect(s.summary.items).toBe(ds.length + more.length + ps.length);
          expect(s.status).toBe(vectorStatus(s.trustVector));
        }
      }),
    );
  });

  it('AR4SI tiers', () => {
    expect([-1, 0, 1, 2, 3, 31, 32, 33, 95, 96, 99, 127, -97].map(tierOf)).toEqual(['none', 'none', 'none', 'affirming', 'affirming', 'affirming', 'warning', 'warning', 'warning', 'contraindicated', 'contraindicated', 'contraindicated', 'contraindicated']);
    expect(worst('warning', 'affirming')).toBe('warning');
    expect(vectorStatus({})).toBe('none');
  });
});

async function imaLine(path: string, digest: Uint8Array, tamper = false): Promise<string> {
  const e: ImaEntry = { line: 1, pcr: 10, template: 'ima-ng', templateHash: new Uint8Array(20), violation: false, digestAlg: 'sha256', digest, path };
  const th = await imaHash('sha1', imaTemplateData(e));
  if (tamper) th[0]! ^= 1;
  return `10 ${toHex(th)} ima-ng sha256:${toHex(digest)} ${path}`;
}

describe('IMA appraisal', () => {
  it('affirms a log of repository files; unknown files, tampering, PCR mismatch and excludes', async () => {
    const ix = realIndex();
    try {
      const boot = `10 ${'0'.repeat(40)} ima-ng sha1:${'0'.repeat(40)} boot_aggregate`;
      const good = [boot, await imaLine('/usr/bin/hello', new Uint8Array(32).fill(2))];
      let a = await appraiseEvidence(ix, { ima: { log: good.join('\n') } });
      expect(a.status).toBe('affirming');
      const sub = a.submods['vmkit-ima']!;
      expect(sub.trustVector).toEqual({ executables: Ar4si.APPROVED_RUNTIME });
      expect(sub.items[1]!.matches[0]).toMatchObject({ package: 'hello', path: '/usr/bin/hello' });
      expect(sub.items[1]!.line).toBe(2);

      const unknown = [...good, await imaLine('/tmp/evil', new Uint8Array(32).fill(66))].join('\n');
      a = await appraiseEvidence(ix, { ima: { log: unknown } });
      expect(a.status).toBe('warning');
      expect(a.submods['vmkit-ima']!.trustVector.executables).toBe(Ar4si.UNRECOGNIZED_RUNTIME);
      expect(a.submods['vmkit-ima']!.items.at(-1)).toMatchObject({ reason: 'ima.validation.ima-ng.not_in_allowlist', path: '/tmp/evil', line: 3 });

      a = await appraiseEvidence(ix, { ima: { log: unknown, excludes: ['glob:/tmp/*'] } });
      expect(a.status).toBe('affirming');
      expect(a.submods['vmkit-ima']!.summary.excluded).toBe(1);
      expect(a.submods['vmkit-ima']!.excludes).toEqual(['glob:/tmp/*']);
      await expect(appraiseEvidence(ix, { ima: { log: unknown, excludes: ['/tmp/'] } })).rejects.toMatchObject({ code: 'ARG_RANGE' });
      a = await appraiseEvidence(ix, { ima: { log: unknown, excludes: ['/tmp/'] } }, { requestRegex: true });
      expect(a.status).toBe('affirming');
      a = await appraiseEvidence(ix, { ima: { log: unknown } }, { excludes: ['/tmp/'] });
      expect(a.status).toBe('affirming');

      const tampered = [...good, await imaLine('/usr/share/doc/hello/copyright', new Uint8Array(32).fill(3), true)].join('\n');
      a = await appraiseEvidence(ix, { ima: { log: tampered } });
      expect(a.status).toBe('contraindicated');
      expect(a.submods['vmkit-ima']!.trustVector.executables).toBe(Ar4si.CRYPTO_FAILED);
      expect(a.submods['vmkit-ima']!.failures![0]!.id).toBe('ima.validation.ima_hash');

      const pcr = a.submods['vmkit-ima']!.pcrs!.sha1!;
      a = await appraiseEvidence(ix, { ima: { log: good.join('\n'), pcr10: { bank: 'sha1', hex: pcr } } });
      expect(a.submods['vmkit-ima']!.pcr10?.match).toBe(false);
      expect(a.status).toBe('contraindicated');
      const right = (await appraiseEvidence(ix, { ima: { log: good.join('\n') } })).submods['vmkit-ima']!.pcrs!.sha1!;
      a = await appraiseEvidence(ix, { ima: { log: good.join('\n'), pcr10: { bank: 'sha1', hex: right } } });
      expect(a.status).toBe('affirming');
    } finally {
      ix.close();
    }
  });
});

describe('parseEvidence', () => {
  it('normalizes good evidence and names bad fields', () => {
    const ev = parseEvidence({ digests: [{ alg: 'sha256', hex: 'AB'.repeat(32), path: '/x', extra: 1 }], packages: [{ name: 'a', version: '1', digest: { alg: 'sha1', hex: '00'.repeat(20) } }], ima: { log: '', excludes: ['glob:/tmp/*'], pcr10: { bank: 'sha256', hex: 'CD'.repeat(32) } } });
    expect(ev.digests).toEqual([{ alg: 'sha256', hex: 'ab'.repeat(32), path: '/x' }]);
    expect(ev.ima!.pcr10!.hex).toBe('cd'.repeat(32));
    const bad: [unknown, string][] = [
      [null, 'ARG_TYPE'],
      [{}, 'ARG_RANGE'],
      [{ digests: {} }, 'ARG_TYPE'],
      [{ digests: [{ alg: 'crc32', hex: '00' }] }, 'ARG_RANGE'],
      [{ digests: [{ alg: 'sha256', hex: '00' }] }, 'ARG_RANGE'],
      [{ digests: [{ alg: 'sha256', hex: 'zz'.repeat(32) }] }, 'ARG_RANGE'],
      [{ packages: [{ name: 'a' }] }, 'ARG_TYPE'],
      [{ packages: [{ name: '', version: '1' }] }, 'ARG_RANGE'],
      [{ ima: { log: 5 } }, 'ARG_TYPE'],
      [{ ima: { log: '', pcr10: { bank: 'md5', hex: '' } } }, 'ARG_RANGE'],
      [{ ima: { log: '', excludes: 'x' } }, 'ARG_TYPE'],
      [{ digests: [...Array(5)].map(() => ({ alg: 'sha1', hex: '00'.repeat(20) })) }, 'LIMIT'],
    ];
    for (const [v, code] of bad) {
      let err: unknown;
      try {
        parseEvidence(v, { maxItems: 4 });
      } catch (e) {
        err = e;
      }
      expect(err, JSON.stringify(v)).toBeInstanceOf(VmkitError);
      expect((err as VmkitError).code, JSON.stringify(v)).toBe(code);
    }
  });

  it('fuzz: any JSON value gives Evidence or a VmkitError', () => {
    const shaped = fc.record(
      {
        digests: fc.array(fc.record({ alg: fc.constantFrom('sha256', 'sha1', 'x'), hex: fc.oneof(fc.constant('00'.repeat(32)), fc.string()), path: fc.anything() }, { requiredKeys: [] })),
        packages: fc.array(fc.record({ name: fc.anything(), version: fc.string(), digest: fc.anything() }, { requiredKeys: [] })),
        ima: fc.record({ log: fc.oneof(fc.string(), fc.anything()), excludes: fc.anything(), pcr10: fc.anything() }, { requiredKeys: [] }),
      },
      { requiredKeys: [] },
    );
    fc.assert(
      fc.property(fc.oneof(fc.jsonValue(), shaped), (v) => {
        try {
          const ev = parseEvidence(v);
          expect(ev.digests?.length || ev.packages?.length || ev.ima).toBeTruthy();
        } catch (e) {
          expect(e).toBeInstanceOf(VmkitError);
        }
      }),
      { numRuns: 500 },
    );
  });
});
