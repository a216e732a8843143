// The core's sector primitives (assembly/sectors.ts, docs/abi.md "sectors")
// against plain TypeScript references over random buffers: zero-granule maps,
// copy with zero detection, and bitmap runs. Runs in Node and Chromium.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { core } from '../bindings/core.js';

interface SectorExports {
  sectorsZeroMap(buf: number, len: number, granule: number, out: number): number;
  sectorsCopyZero(dst: number, src: number, len: number, granule: number, out: number): number;
  sectorsBitmapRuns(bitmap: number, start: number, nbits: number, out: number, cap: number): number;
}
const x = (): SectorExports => core().exports as unknown as SectorExports;

function refZeroMap(buf: Uint8Array, granule: number): { zeros: number; bits: Uint8Array } {
  const n = Math.ceil(buf.length / granule);
  const bits = new Uint8Array(Math.ceil(n / 8));
  let zeros = 0;
  for (let g = 0; g < n; g++) {
    if (buf.subarray(g * granule, (g + 1) * granule).every((b) => b === 0)) {
      bits[g >> 3]! |= 1 << (g & 7);
      zeros++;
    }
  }
  return { zeros, bits };
}

function refRuns(bits: Uint8Array, start: number, nbits: number): number[][] {
  const at = (i: number): number => (bits[i >> 3]! >> (i & 7)) & 1;
  const runs: number[][] = [];
  let i = start;
  while (i < start + nbits) {
    const v = at(i);
    let j = i + 1;
    while (j < start + nbits && at(j) === v) j++;
    runs.push([i, j - i, v]);
    i = j;
  }
  return runs;
}

/** Sparse random data: mostly zero granules, some with a single non-zero byte anywhere. */
const sparse = fc
  .record({ len: fc.integer({ min: 1, max: 20000 }), granule: fc.constantFrom(16, 32, 48, 512, 4096), pokes: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { maxLength: 20 }) })
  .map(({ len, granule, pokes }) => {
    const buf = new Uint8Array(len);
    for (const [at, v] of pokes) buf[at % len] = v;
    return { buf, granule };
  });

describe('sectors (core)', () => {
  it('zero map and copy agree with the reference', () => {
    fc.assert(
      fc.property(sparse, ({ buf, granule }) => {
        const c = core();
        const ref = refZeroMap(buf, granule);
        const p = c.alloc(buf.length);
        const d = c.alloc(buf.length);
        const o = c.alloc(ref.bits.length + 16);
        try {
          c.u8().set(buf, p);
          expect(x().sectorsZeroMap(p, buf.length, granule, o)).toBe(ref.zeros);
          expect(c.u8().slice(o, o + ref.bits.length)).toEqual(ref.bits);
          c.u8().fill(0xee, o, o + ref.bits.length);
          expect(x().sectorsCopyZero(d, p, buf.length, granule, o)).toBe(ref.zeros);
          expect(c.u8().slice(o, o + ref.bits.length)).toEqual(ref.bits);
          expect(c.u8().slice(d, d + buf.length)).toEqual(buf);
        } finally {
          c.free(p);
          c.free(d);
          c.free(o);
        }
      }),
      { numRuns: 150 },
    );
  });

  it('bitmap runs agree with the reference, and a short output is refused', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 300 }), fc.nat(), fc.nat(), fc.boolean(), (raw, s, l, dense) => {
        // Dense maps have long runs (all-ones / all-zero bytes), where the word skipping matters.
        const bits = dense ? raw.map((b) => (b & 1 ? 0xff : b & 2 ? 0 : b)) : raw;
        const total = bits.length * 8;
        const start = s % total;
        const nbits = l % (total - start + 1);
        const ref = refRuns(bits, start, nbits);
        const c = core();
        const b = c.alloc(bits.length);
        const o = c.alloc(12 * (ref.length + 1));
        try {
          c.u8().set(bits, b);
          expect(x().sectorsBitmapRuns(b, start, nbits, o, ref.length)).toBe(ref.length);
          const v = new Uint32Array(c.u8().buffer, o, ref.length * 3);
          expect(Array.from({ length: ref.length }, (_, i) => [v[i * 3], v[i * 3 + 1], v[i * 3 + 2]])).toEqual(ref);
          if (ref.length > 0) expect(x().sectorsBitmapRuns(b, start, nbits, o, ref.length - 1)).toBe(-2);
        } finally {
          c.free(b);
          c.free(o);
        }
      }),
      { numRuns: 200 },
    );
  });

  it('rejects a granule that is not a multiple of 16', () => {
    const c = core();
    const p = c.alloc(64);
    try {
      expect(x().sectorsZeroMap(p, 64, 24, p)).toBe(-1);
      expect(x().sectorsCopyZero(p, p, 64, 0, p)).toBe(-1);
    } finally {
      c.free(p);
    }
  });
});
