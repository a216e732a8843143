// The digest index (wasm core table + TypeScript side tables) against a plain
// Map model: random packages, file digests, duplicate digests, digests that
// share their first 8 bytes (same slot and fingerprint in the core), every
// algorithm length; and the raw core exports' contract.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { DigestIndex, type DigestAlgorithm, type Provenance } from '../bindings/attest/index.js';
import { hexInto, toHex, digestLength } from '../bindings/attest/index-store.js';
import { core } from '../bindings/core.js';
import { VmkitError } from '../bindings/errors.js';

const ALGS: DigestAlgorithm[] = ['sha256', 'sha1', 'sha512', 'md5', 'sha384', 'sm3'];

interface Dix {
  dixCreate(e: number, a: number, b: number): number;
  dixFree(h: number): number;
  dixInsert(h: number, k: number, v: number): number;
  dixGet(h: number, k: number): number;
  dixGetBatch(h: number, k: number, n: number, out: number): number;
  dixInsertBatch(h: number, k: number, v: number, n: number, prev: number): number;
  dixCount(h: number): number;
  dixInsertDigests(h: number, src: number, meta: number, values: number, n: number, prev: number): number;
  dixGetDigest(h: number, src: number, len: number, tag: number): number;
  dixGetHex(h: number, hex: number, n: number, len: number, tag: number, dec: number, out: number): number;
  dixGetPacked(h: number, src: number, n: number, len: number, tag: number, out: number): number;
}

describe('DigestIndex', () => {
  it('answers like a Map model over random packages, files and duplicate digests', () => {
    const digest = fc.tuple(fc.constantFrom(...ALGS), fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0, max: 3 })).map(([alg, seed, tail]) => {
      // Few distinct seeds → many duplicates; digests of one seed share their first 8 bytes.
      const b = new Uint8Array(digestLength(alg));
      for (let i = 0; i < b.length; i++) b[i] = i < 8 ? seed : (seed * 31 + i * 7 + tail) & 255;
      return { alg, hex: toHex(b) };
    });
    const op = fc.oneof(
      fc.record({ kind: fc.constant('pkg' as const), name: fc.constantFrom('a', 'b', 'c', 'libc6'), version: fc.constantFrom('1', '2', '1:2-3'), d: digest }),
      fc.record({ kind: fc.constant('file' as const), path: fc.constantFrom('/usr/bin/x', '/etc/y', '/lib/z.so'), d: digest }),
    );
    fc.assert(
      fc.property(fc.array(op, { minLength: 1, maxLength: 120 }), fc.array(digest, { maxLength: 30 }), (ops, probes) => {
        const ix = new DigestIndex();
        const model = new Map<string, Provenance[]>();
        const add = (k: string, p: Provenance) => (model.get(k) ?? model.set(k, []).get(k)!).unshift(p);
        let last = -1;
        let lastProv: Provenance | undefined;
        try {
          for (const o of ops) {
            if (o.kind === 'pkg') {
              const prov = { repository: 'deb http://x/debian bookworm main', package: o.name, version: o.version, architecture: 'amd64' };
              last = ix.addPackage(prov, o.d);
              lastProv = prov;
              add(`${o.d.alg}:${o.d.hex}`, prov);
            } else if (last >= 0) {
              ix.addFile(last, o.path, o.d);
              add(`${o.d.alg}:${o.d.hex}`, { ...lastProv!, path: o.path });
            }
          }
          expect(ix.size).toBe([...model.values()].reduce((n, l) => n + l.length, 0));
          for (const d of [...probes, ...ops.map((o) => o.d)]) {
            const bytes = new Uint8Array(d.hex.length / 2);
            hexInto(d.hex, bytes);
            const want = model.get(`${d.alg}:${d.hex}`) ?? [];
            // Newest first, as the chain is walked.
            expect(ix.lookupDigest(d.alg, bytes)).toEqual(want);
            expect(ix.has(d.alg, bytes)).toBe(want.length > 0);
          }
          // hasMany: every probe of one algorithm packed together, against the model.
          for (const alg of ALGS) {
            const ds = [...probes, ...ops.map((o) => o.d)].filter((d) => d.alg === alg);
            const len = digestLength(alg);
            const packed = new Uint8Array(ds.length * len);
            ds.forEach((d, i) => hexInto(d.hex, packed, i * len));
            const out = new Uint8Array(ds.length);
            const want = ds.map((d) => (model.has(`${alg}:${d.hex}`) ? 1 : 0));
            expect(ix.hasMany(alg, packed, out)).toBe(want.reduce((a: number, b) => a + b, 0));
            expect([...out]).toEqual(want);
          }
          for (const name of ['a', 'b', 'c', 'libc6', 'none']) {
            const want = ops.filter((o) => o.kind === 'pkg' && o.name === name);
            expect(ix.lookupPackage(name).length).toBe(want.length);
            expect(ix.lookupPackage(name, '2').length).toBe(want.filter((o) => o.kind === 'pkg' && o.version === '2').length);
          }
        } finally {
          ix.close();
        }
      }),
      { numRuns: 150 },
    );
  });

  it('hasMany crosses its 4096-digest batches and checks its arguments', () => {
    const ix = new DigestIndex();
    try {
      const n = 10_000;
      const packed = new Uint8Array(n * 32);
      // Distinct digests: the index in the first 4 bytes, xorshift noise after.
      let x = 0x9e3779b9;
      for (let i = 0; i < packed.length; i++) {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        packed[i] = x & 255;
      }
      const dv = new DataView(packed.buffer);
      for (let i = 0; i < n; i++) dv.setUint32(i * 32, i);
      const p = ix.addPackage({ repository: 'r', package: 'p', version: '1' }, { alg: 'sha256', hex: 'ff'.repeat(32) });
      // Every third digest present; sm3 keys share the sha256 bytes but never answer for them.
      for (let i = 0; i < n; i += 3) ix.addFile(p, `/f${i}`, { alg: 'sha256', hex: toHex(packed.subarray(i * 32, i * 32 + 32)) });
      ix.addFile(p, '/sm3', { alg: 'sm3', hex: toHex(packed.subarray(32, 64)) });
      const out = new Uint8Array(n);
      expect(ix.hasMany('sha256', packed, out)).toBe(Math.ceil(n / 3));
      for (let i = 0; i < n; i++) expect(out[i]).toBe(i % 3 === 0 ? 1 : 0);
      expect(ix.hasMany('sm3', packed.subarray(0, 96))).toBe(1);
      expect(ix.hasMany('sha256', new Uint8Array(0))).toBe(0);
      expect(() => ix.hasMany('sha256', new Uint8Array(33))).toThrow(VmkitError);
      expect(() => ix.hasMany('sha256', packed, new Uint8Array(1))).toThrow(/out needs/);
      expect(() => ix.hasMany('nope' as DigestAlgorithm, packed)).toThrow(VmkitError);
    } finally {
      ix.close();
    }
  });

  it('lookupMany and lookupHex answer what lookupDigest answers per digest, whatever the text (also in browsers: TextEncoder path)', () => {
    const ix = new DigestIndex();
    try {
      const known: Record<string, string[]> = {};
      for (const alg of ALGS) {
        known[alg] = [];
        for (let i = 0; i < 300; i++) {
          const b = new Uint8Array(digestLength(alg));
          for (let j = 0; j < b.length; j++) b[j] = (i * 131 + j * 17 + alg.length) & 255;
          const hex = toHex(b);
          ix.addPackage({ repository: 'r', package: `p${i % 50}`, version: String(i) }, { alg, hex });
          if (i % 3 === 0) ix.addFile(0, `/f${i}`, { alg, hex }); // duplicates: a chain of two
          known[alg]!.push(hex);
        }
      }
      const one = (alg: DigestAlgorithm, h: string) => {
        const b = new Uint8Array(digestLength(alg));
        const r = h.length === b.length * 2 && hexInto(h, b) ? ix.lookupDigest(alg, b) : [];
        return r.length ? r : undefined;
      };
      for (const alg of ALGS) {
        const k = known[alg]!;
        const n = digestLength(alg) * 2;
        const text = [...k, ...k.slice(0, 20).map((h) => h.toUpperCase()), 'g'.repeat(n), k[1]!.slice(0, n - 1) + 'é', k[2]!.slice(0, n - 1) + String.fromCharCode(0x100 + k[2]!.charCodeAt(n - 1)) /* low byte: the right digit */, k[3]!.slice(0, -2), k[4]! + 'ab', ''];
        for (let i = 0; i < 30; i++) text.push(toHex(Uint8Array.from({ length: n / 2 }, (_, j) => (i * 7 + j * 3 + 1) & 255)));
        const got = ix.lookupMany(alg, text);
        expect(got).toEqual(text.map((h) => one(alg, h)));
        expect(got.slice(0, k.length).every((x) => x !== undefined)).toBe(true);
        expect(text.map((h) => ix.lookupHex(alg, h))).toEqual(got.map((x) => x ?? []));
        // Crossing the 4096-digest batches.
        const big = Array.from({ length: 9000 }, (_, i) => text[i % text.length]!);
        expect(ix.lookupMany(alg, big)).toEqual(big.map((h) => one(alg, h)));
        // The same digests as raw bytes packed, and as hex text in bytes (lookupManyHexText):
        // the strings of the right length only (a text must be whole digests); non-hex ones included.
        const whole = big.filter((h) => h.length === n && /^[\x00-\x7f]*$/.test(h));
        const raw = new Uint8Array(whole.length * (n / 2));
        const hexOk = whole.map((h) => /^[0-9a-fA-F]*$/.test(h));
        whole.forEach((h, i) => { if (hexOk[i]) hexInto(h, raw.subarray(i * (n / 2), (i + 1) * (n / 2))); });
        const want = whole.map((h) => one(alg, h));
        expect(ix.lookupManyHexText(alg, new TextEncoder().encode(whole.join('')))).toEqual(want);
        expect(ix.lookupMany(alg, raw)).toEqual(whole.map((h, i) => (hexOk[i] ? want[i] : one(alg, '00'.repeat(n / 2)))));
        expect(() => ix.lookupManyHexText(alg, new Uint8Array(n + 1))).toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
        expect(ix.lookupManyHexText(alg, new Uint8Array(0))).toEqual([]);
        // A control character one case-fold (| 0x20) from the digit it replaces in a known
        // digest is not hex (a decoder that folded it would find the digest).
        for (let i = 0; i < n; i++) {
          const t = new TextEncoder().encode(k[5]!);
          if (t[i]! < 0x30 || t[i]! > 0x39) continue;
          t[i] = t[i]! - 0x20;
          expect(ix.lookupManyHexText(alg, t)).toEqual([undefined]);
        }
        expect(ix.lookupManyHexText(alg, new TextEncoder().encode(k[5]!))[0]).toBeDefined();
      }
    } finally {
      ix.close();
    }
  });

  it('lookupMany stays right when a digest it already found gains entries (its per-entry hit cache)', () => {
    const ix = new DigestIndex();
    const x = 'ab'.repeat(32);
    const r = 'deb http://x/debian bookworm main';
    ix.addPackage({ repository: r, package: 'a', version: '1' }, { alg: 'sha256', hex: x });
    ix.addPackage({ repository: r, package: 'other', version: '1' }, { alg: 'sha256', hex: 'cd'.repeat(32) });
    expect(ix.lookupMany('sha256', [x, x]).map((l) => l?.map((p) => p.package))).toEqual([['a'], ['a']]);
    expect(ix.lookupMany('sha256', [x])[0]).toBe(ix.lookupMany('sha256', [x])[0]); // the shared list, from the cache
    const b = ix.addPackage({ repository: r, package: 'b', version: '2' }, { alg: 'sha256', hex: x });
    expect(ix.lookupMany('sha256', [x])[0]!.map((p) => p.package)).toEqual(['b', 'a']);
    ix.addFile(b, '/usr/bin/b', { alg: 'sha256', hex: x });
    expect(ix.lookupMany('sha256', [x.toUpperCase()])[0]!.map((p) => `${p.package}:${p.path ?? ''}`)).toEqual(['b:/usr/bin/b', 'b:', 'a:']);
    expect(ix.lookupMany('sm3', [x])[0]).toBeUndefined();
    ix.close();
  });

  it('holds 200 000 digests across many table growths', () => {
    const ix = new DigestIndex();
    const p = ix.addPackage({ repository: 'r', package: 'bulk', version: '1' }, { alg: 'sha256', hex: 'ff'.repeat(32) });
    const d = new Uint8Array(32);
    const dv = new DataView(d.buffer);
    for (let i = 0; i < 200_000; i++) {
      dv.setUint32(0, i * 2654435761);
      dv.setUint32(28, i);
      ix.addFile(p, `/f${i % 7}`, { alg: 'sha256', hex: toHex(d) });
    }
    expect(ix.size).toBe(200_001);
    for (let i = 0; i < 200_000; i += 997) {
      dv.setUint32(0, i * 2654435761);
      dv.setUint32(28, i);
      expect(ix.lookupDigest('sha256', d)).toEqual([{ repository: 'r', package: 'bulk', version: '1', path: `/f${i % 7}` }]);
      dv.setUint32(28, i + 1);
      expect(ix.has('sha256', d)).toBe(false);
    }
    const m = ix.memory();
    expect(m.core).toBeGreaterThanOrEqual(200_001 * 36);
    expect(m.core).toBeLessThan(200_001 * 80);
    ix.close();
  });

  it('refuses malformed digests and use after close; wrong lengths never match', () => {
    const ix = new DigestIndex();
    const prov = { repository: 'r', package: 'p', version: '1' };
    expect(() => ix.addPackage(prov, { alg: 'sha256', hex: 'zz'.repeat(32) })).toThrow(VmkitError);
    expect(() => ix.addPackage(prov, { alg: 'sha256', hex: 'ab' })).toThrow(VmkitError);
    expect(() => ix.addPackage(prov, { alg: 'nope' as DigestAlgorithm, hex: 'ab' })).toThrow(VmkitError);
    const id = ix.addPackage(prov, { alg: 'sha1', hex: '11'.repeat(20) });
    expect(() => ix.addFile(id + 5, '/x', { alg: 'sha256', hex: '00'.repeat(32) })).toThrow(VmkitError);
    expect(ix.lookupDigest('sha256', new Uint8Array(20).fill(0x11))).toEqual([]);
    expect(ix.lookupDigest('sha1', new Uint8Array(20).fill(0x11)).length).toBe(1);
    expect(ix.lookupDigest('sha1', new Uint8Array(21).fill(0x11))).toEqual([]);
    expect(ix.packageEntry(id).digests).toEqual([{ alg: 'sha1', hex: '11'.repeat(20) }]);
    expect(() => ix.has('sha1', 'x' as unknown as Uint8Array)).toThrow(VmkitError);
    ix.close();
    expect(() => ix.has('sha1', new Uint8Array(20))).toThrow(VmkitError);
    expect(() => new DigestIndex({ expected: -1 })).toThrow(VmkitError);
  });

  it('hexInto/toHex round-trip and reject non-hex', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 80 }), (b) => {
        const out = new Uint8Array(b.length);
        expect(hexInto(toHex(b), out)).toBe(true);
        expect(out).toEqual(b);
        expect(hexInto(toHex(b).toUpperCase(), out)).toBe(true);
        expect(out).toEqual(b);
      }),
    );
    expect(hexInto('0g', new Uint8Array(1))).toBe(false);
    expect(hexInto('012', new Uint8Array(2))).toBe(false);
    expect(hexInto('0102', new Uint8Array(1))).toBe(false);
  });
});

describe('digest index core exports', () => {
  it('insert, replace, get, batch and bad handles', () => {
    const c = core();
    const ex = c.exports as unknown as Dix;
    const h = ex.dixCreate(4, 1, 2);
    expect(h).toBeGreaterThan(0);
    const p = c.alloc(32 * 4 + 16 + 16);
    try {
      const u8 = c.u8();
      for (let k = 0; k < 4; k++) u8.fill(k + 1, p + k * 32, p + k * 32 + 32);
      expect(ex.dixInsert(h, p, 10)).toBe(0);
      expect(ex.dixInsert(h, p, 11)).toBe(11); // replaced value 10, + 1
      expect(ex.dixGet(h, p)).toBe(12);
      expect(ex.dixGet(h, p + 32)).toBe(0);
      const vals = p + 128;
      const prev = p + 144;
      new Uint32Array(c.u8().buffer, vals, 4).set([1, 2, 3, 4]);
      expect(ex.dixInsertBatch(h, p, vals, 4, prev)).toBe(4);
      expect([...new Uint32Array(c.u8().buffer, prev, 4)]).toEqual([12, 0, 0, 0]);
      expect(ex.dixCount(h)).toBe(4);
      expect(ex.dixGetBatch(h, p, 4, prev)).toBe(4);
      expect([...new Uint32Array(c.u8().buffer, prev, 4)]).toEqual([2, 3, 4, 5]);
      expect(ex.dixInsert(h, p, -1)).toBe(-1);
      expect(ex.dixInsert(h, p, 0x7fffffff)).toBe(-1);
      expect(ex.dixFree(h)).toBe(0);
      expect(ex.dixGet(h, p)).toBe(-5);
      expect(ex.dixFree(h)).toBe(-5);
      expect(ex.dixGet(0, p)).toBe(-5);
      expect(ex.dixGet(100000, p)).toBe(-5);
      expect(ex.dixCreate(-1, 0, 0)).toBe(-1);
    } finally {
      c.free(p);
    }
  });

  it('keys raw digests by its one key rule (first 32 bytes, zero-padded, last byte XOR tag) on every path', () => {
    const c = core();
    const ex = c.exports as unknown as Dix;
    const h = ex.dixCreate(0, 5, 6);
    // md5 (16 B, tag 1), sha1 (20 B, tag 2), sha512 (64 B, tag 4), sha256 (32 B, tag 0), sm3 (32 B, tag 5).
    const cases = [[16, 1], [20, 2], [64, 4], [32, 0], [32, 5]] as const;
    const digests = cases.map(([len], k) => Uint8Array.from({ length: len }, (_, i) => (i * 29 + k * 101 + 7) & 255));
    const total = digests.reduce((n, d) => n + d.length, 0);
    const p = c.alloc(total + cases.length * 12 + 64 * 2 + 128 + 64 + 16);
    try {
      let u8 = c.u8();
      let at = p;
      for (const d of digests) {
        u8.set(d, at);
        at += d.length;
      }
      const meta = (p + total + 3) & ~3;
      const vals = meta + cases.length * 4;
      const prev = vals + cases.length * 4;
      new Uint32Array(u8.buffer, meta, cases.length).set(cases.map(([len, tag]) => len | (tag << 8)));
      new Uint32Array(u8.buffer, vals, cases.length).set(cases.map((_, k) => 100 + k));
      expect(ex.dixInsertDigests(h, p, meta, vals, cases.length, prev)).toBe(cases.length);
      const key = prev + cases.length * 4;
      const hex = key + 32;
      const dec = hex + 128;
      const out = dec + 64;
      cases.forEach(([len, tag], k) => {
        const d = digests[k]!;
        // The rule written out here, independently of the core: the key it must have stored.
        const want = new Uint8Array(32);
        want.set(d.subarray(0, 32));
        want[31]! ^= tag;
        u8 = c.u8();
        u8.set(want, key);
        expect(ex.dixGet(h, key), `key of case ${k}`).toBe(101 + k);
        u8.set(d, dec);
        expect(ex.dixGetDigest(h, dec, len, tag)).toBe(101 + k);
        expect(ex.dixGetDigest(h, dec, len, (tag + 1) & 255)).toBe(0);
        expect(ex.dixGetPacked(h, dec, 1, len, tag, out)).toBe(1);
        expect(new Uint32Array(c.u8().buffer, out, 1)[0]).toBe(101 + k);
        c.u8().set(new TextEncoder().encode(toHex(d).toUpperCase()), hex);
        expect(ex.dixGetHex(h, hex, 1, len, tag, dec, out)).toBe(1);
        expect(new Uint32Array(c.u8().buffer, out, 1)[0]).toBe(101 + k);
      });
      // A length or tag outside the rule's range is refused, not keyed.
      new Uint32Array(c.u8().buffer, meta, 1).set([65]);
      expect(ex.dixInsertDigests(h, p, meta, vals, 1, prev)).toBe(-1);
      expect(ex.dixGetDigest(h, p, 0, 0)).toBe(-1);
      expect(ex.dixGetDigest(h, p, 32, 256)).toBe(-1);
      expect(ex.dixFree(h)).toBe(0);
    } finally {
      c.free(p);
    }
  });
});
