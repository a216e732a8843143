// The core's LZ4 block codec, xxHash32 and the TS frame format: round trips
// (fast-check), known vectors, the block format's end rules, and fuzzing of the
// decompressor and the frame parser (bad input → VmkitError, never a trap).
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  lz4CompressBlock,
  lz4CompressBlockInto,
  lz4CompressBound,
  lz4DecompressBlock,
  lz4FrameCompress,
  lz4FrameDecompress,
  xxh32,
  VmkitError,
} from '../bindings/memory/index.js';
import { coreInfo } from '../bindings/index.js';
import { core } from '../bindings/core.js';

const enc = new TextEncoder();

/** Bytes drawn from a small alphabet, so matches are likely. */
const compressible = fc
  .tuple(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 0, max: 20000 }), fc.integer())
  .map(([alpha, n, seed]) => {
    const a = new Uint8Array(n);
    let x = seed >>> 0;
    for (let i = 0; i < n; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      a[i] = (x >>> 24) % alpha;
    }
    return a;
  });

/** Walks an LZ4 block and returns its sequences (to check the end rules). */
function sequences(block: Uint8Array): { litStart: number; lit: number; matchLen: number; outPos: number }[] {
  const out: { litStart: number; lit: number; matchLen: number; outPos: number }[] = [];
  let ip = 0;
  let op = 0;
  while (ip < block.length) {
    const t = block[ip++]!;
    let lit = t >> 4;
    if (lit === 15) for (let b = 255; b === 255; ) lit += b = block[ip++]!;
    ip += lit;
    op += lit;
    if (ip >= block.length) {
      out.push({ litStart: op - lit, lit, matchLen: 0, outPos: op });
      break;
    }
    ip += 2;
    let ml = t & 15;
    if (ml === 15) for (let b = 255; b === 255; ) ml += b = block[ip++]!;
    ml += 4;
    out.push({ litStart: op - lit, lit, matchLen: ml, outPos: op });
    op += ml;
  }
  return out;
}

describe('lz4 block codec (core)', () => {
  it('xxh32 matches reference vectors', () => {
    expect(xxh32(new Uint8Array(0))).toBe(0x02cc5d05);
    expect(xxh32(enc.encode('a'))).toBe(0x550d7456);
    expect(xxh32(enc.encode('abc'))).toBe(0x32d153ff);
    // Large inputs go through the streaming path in windows.
    const big = new Uint8Array(3 << 20).map((_, i) => (i * 31) & 0xff);
    const parts = big.subarray(0, 1 << 20);
    expect(xxh32(big)).not.toBe(xxh32(parts));
    expect(xxh32(big, 1)).not.toBe(xxh32(big, 0));
  });

  it('round-trips compressible and random data (fast-check)', () => {
    fc.assert(
      fc.property(fc.oneof(compressible, fc.uint8Array({ maxLength: 5000 })), (data) => {
        const block = lz4CompressBlock(data);
        expect(block.length).toBeLessThanOrEqual(lz4CompressBound(data.length));
        expect(lz4DecompressBlock(block, data.length)).toEqual(data);
      }),
      { numRuns: 200 },
    );
  });

  it('compresses into a caller buffer: the same block, OUTPUT_TOO_SMALL when it does not fit (fast-check)', () => {
    fc.assert(
      fc.property(fc.oneof(compressible, fc.uint8Array({ maxLength: 5000 })), fc.double({ min: 0, max: 1.2, noNaN: true }), (data, f) => {
        const block = lz4CompressBlock(data);
        const big = new Uint8Array(lz4CompressBound(data.length) + 7).fill(0xee);
        const n = lz4CompressBlockInto(data, big);
        expect(big.subarray(0, n)).toEqual(block);
        expect(big[n]).toBe(0xee); // nothing written past the block
        // A smaller dst (the compressor's early-exit path): the same block when it fits.
        const small = new Uint8Array(Math.floor(block.length * f));
        let m = -1;
        try {
          m = lz4CompressBlockInto(data, small);
        } catch (e) {
          expect(e).toBeInstanceOf(VmkitError);
          expect((e as VmkitError).code).toBe('OUTPUT_TOO_SMALL');
        }
        if (m >= 0) expect(small.subarray(0, m)).toEqual(block);
        if (small.length < block.length) expect(m).toBe(-1);
      }),
      { numRuns: 200 },
    );
  });

  it('keeps the end rules: last 5 bytes literals, no match starting in the last 12', () => {
    fc.assert(
      fc.property(compressible, (data) => {
        const seqs = sequences(lz4CompressBlock(data));
        const last = seqs[seqs.length - 1]!;
        expect(last.matchLen).toBe(0);
        if (data.length >= 13) expect(last.lit).toBeGreaterThanOrEqual(5);
        for (const s of seqs) if (s.matchLen) expect(s.outPos).toBeLessThanOrEqual(data.length - 12);
      }),
      { numRuns: 100 },
    );
  });

  it('compresses a zero page to a few bytes and text well', () => {
    expect(lz4CompressBlock(new Uint8Array(4096)).length).toBeLessThan(40);
    const text = enc.encode('the quick brown fox jumps over the lazy dog. '.repeat(100));
    expect(lz4CompressBlock(text).length).toBeLessThan(text.length / 10);
  });

  it('decodes hand-made blocks (overlapping matches, long lengths)', () => {
    // "a" then a match of offset 1, length 4+15+10 = 29 -> 30 'a', then 5 literals.
    const b = new Uint8Array([0x1f, 0x61, 0x01, 0x00, 10, 0x50, 0x62, 0x63, 0x64, 0x65, 0x66]);
    const out = lz4DecompressBlock(b, 100);
    expect(new TextDecoder().decode(out)).toBe('a'.repeat(30) + 'bcdef');
  });

  it('rejects bad blocks with CORRUPT or OUTPUT_TOO_SMALL', () => {
    const cases: [number[], string][] = [
      [[], 'CORRUPT'],
      [[0x10], 'CORRUPT'], // literal past the end
      [[0x10, 0x61, 0x00, 0x00], 'CORRUPT'], // offset 0
      [[0x10, 0x61, 0x02, 0x00], 'CORRUPT'], // offset before the start
      [[0x1f, 0x61, 0x01, 0x00], 'CORRUPT'], // truncated length byte
      [[0x10, 0x61, 0x01], 'CORRUPT'], // truncated offset
      [[0x11, 0x61, 0x01, 0x00], 'CORRUPT'], // ends with a match
    ];
    for (const [bytes, code] of cases) {
      expect(() => lz4DecompressBlock(new Uint8Array(bytes), 64), JSON.stringify(bytes)).toThrow(
        expect.objectContaining({ code }),
      );
    }
    const block = lz4CompressBlock(new Uint8Array(4096));
    expect(() => lz4DecompressBlock(block, 4095)).toThrow(expect.objectContaining({ code: 'OUTPUT_TOO_SMALL' }));
  });

  it('never writes past the output capacity in core memory, whatever the cap (the fast paths write ahead)', () => {
    const c = core();
    const e = c.exports as unknown as { lz4Decompress(s: number, n: number, d: number, cap: number): number };
    const inputs = [
      enc.encode('the quick brown fox jumps over the lazy dog. '.repeat(8)),
      new Uint8Array(300).map((_, i) => (i % 23) * 7 + (i >> 6)),
      new Uint8Array(200).map((_, i) => (i * 2654435761) >>> 27),
    ];
    let x = 7;
    for (const data of inputs) {
      const block = lz4CompressBlock(data);
      const blocks = [block];
      for (let k = 0; k < 40; k++) {
        const m = block.slice();
        x = (Math.imul(x, 1103515245) + 12345) >>> 0;
        m[x % m.length]! ^= 1 << (x >>> 29);
        blocks.push(m);
      }
      for (const b of blocks) {
        for (let cap = 0; cap <= data.length + 40; cap += cap < 40 ? 1 : 7) {
          const s = c.alloc(b.length + 64);
          const d = c.alloc(cap + 128);
          const mem = c.u8();
          mem.set(b, s);
          mem.fill(0xa5, d, d + cap + 128);
          const n = e.lz4Decompress(s, b.length, d, cap);
          const after = c.u8().subarray(d + cap, d + cap + 128);
          expect(after.every((v) => v === 0xa5), `cap ${cap}`).toBe(true);
          if (b === block && cap >= data.length) {
            expect(n).toBe(data.length);
            expect(c.u8().slice(d, d + n)).toEqual(data);
          }
          if (b === block && cap < data.length) expect(n).toBeLessThan(0);
          c.free(s);
          c.free(d);
        }
      }
    }
  });

  it('never traps on random or mutated input (fuzz)', () => {
    const resets = coreInfo().resets;
    const seed = lz4CompressBlock(enc.encode('hello hello hello hello hello world, hello hello'));
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 300 }),
          fc.array(fc.tuple(fc.nat(seed.length - 1), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }).map((muts) => {
            const b = seed.slice();
            for (const [i, v] of muts) b[i] = v;
            return b;
          }),
        ),
        fc.integer({ min: 0, max: 2000 }),
        (data, cap) => {
          try {
            const out = lz4DecompressBlock(data, cap);
            expect(out.length).toBeLessThanOrEqual(cap);
          } catch (e) {
            expect(e).toBeInstanceOf(VmkitError);
            expect(['CORRUPT', 'OUTPUT_TOO_SMALL']).toContain((e as VmkitError).code);
          }
        },
      ),
      { numRuns: 2000 },
    );
    expect(coreInfo().resets).toBe(resets);
  });
});

describe('lz4 frame format', () => {
  it('round-trips with every option combination (fast-check)', () => {
    fc.assert(
      fc.property(
        fc.oneof(compressible, fc.uint8Array({ maxLength: 3000 })),
        fc.constantFrom(65536 as const, 262144 as const),
        fc.boolean(),
        fc.boolean(),
        fc.boolean(),
        (data, blockSize, blockChecksum, contentChecksum, contentSize) => {
          const f = lz4FrameCompress(data, { blockSize, blockChecksum, contentChecksum, contentSize });
          expect(new DataView(f.buffer).getUint32(0, true)).toBe(0x184d2204);
          expect(lz4FrameDecompress(f)).toEqual(data);
        },
      ),
      { numRuns: 100 },
    );
  });

  it('spans several blocks, and stores incompressible blocks raw', () => {
    const data = new Uint8Array(200_000);
    for (let i = 0; i < data.length; i++) data[i] = (Math.imul(i, 2654435761) >>> 13) & 0xff;
    const f = lz4FrameCompress(data);
    expect(f.length).toBeLessThan(data.length + 64);
    expect(lz4FrameDecompress(f)).toEqual(data);
  });

  it('catches flipped bits with the checksums and enforces maxOutput', () => {
    const data = enc.encode('checkpoint '.repeat(500));
    const f = lz4FrameCompress(data, { blockChecksum: true });
    for (let i = 4; i < f.length; i += 7) {
      const g = f.slice();
      g[i]! ^= 0x10;
      expect(() => lz4FrameDecompress(g)).toThrow(VmkitError);
    }
    expect(() => lz4FrameDecompress(f, { maxOutput: 100 })).toThrow(expect.objectContaining({ code: 'LIMIT' }));
  });

  it('skips skippable frames and decodes concatenated frames', () => {
    const a = lz4FrameCompress(enc.encode('first '));
    const b = lz4FrameCompress(enc.encode('second'));
    const skip = new Uint8Array([0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
    const all = new Uint8Array([...a, ...skip, ...b]);
    expect(new TextDecoder().decode(lz4FrameDecompress(all))).toBe('first second');
  });

  it('fuzz: random and mutated frames give VmkitError, never a trap', () => {
    const resets = coreInfo().resets;
    const seedFrame = lz4FrameCompress(enc.encode('abcabcabcabc hello frame '.repeat(20)), { blockChecksum: true });
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 64 }).map((t) => new Uint8Array([0x04, 0x22, 0x4d, 0x18, ...t])),
          fc.array(fc.tuple(fc.nat(seedFrame.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 3 }).map((m) => {
            const g = seedFrame.slice();
            for (const [i, v] of m) g[i] = v;
            return g;
          }),
          fc.nat(seedFrame.length).map((n) => seedFrame.slice(0, n)),
        ),
        (data) => {
          try {
            lz4FrameDecompress(data, { maxOutput: 1 << 20 });
          } catch (e) {
            expect(e).toBeInstanceOf(VmkitError);
          }
        },
      ),
      { numRuns: 1500 },
    );
    expect(coreInfo().resets).toBe(resets);
  });
});
