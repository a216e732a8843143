// Sizes at the core's boundary (Node and Chromium). Every binding that sizes a
// core buffer from its caller's input used to hand the size to the core's
// allocator, which traps past 1 GiB ("Allocation too large"); the trap reset
// the core and every live handle then threw STALE_HANDLE. Each such entry must
// now refuse a size it cannot serve with LIMIT naming its largest size, or do
// the work in pieces, and leave every other handle working: no reset.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { coreInfo } from '../bindings/index.js';
import { core } from '../bindings/core.js';
import {
  AddressSpace,
  LazyGuestMemory,


  PrefetchEngine,
  bufferPages,
  gpa,
  coalesce,
  lz4CompressBlock,
  lz4CompressBlockInto,
  lz4CompressBound,
  lz4DecompressBlock,
  lz4DecompressBlockInto,
} from '../bindings/memory/index.js';
import { DigestIndex } from '../bindings/attest/index-store.js';
import { isAllZero, zeroGranules } from '../bindings/disk/_sectors.js';
import { planExtents } from '../bindings/disk/backup/_plan.js';

const MiB = 1 << 20;
const CORE_MAX_ALLOC = 512 * MiB, LZ4_MAX_BLOCK = 256 * MiB, MAX_MAP = 2 ** 24;

// Handles made before the huge calls: each must still answer after every one of them.
let engine: PrefetchEngine;
let index: DigestIndex;
let mem: LazyGuestMemory;
let space: AddressSpace;
let resets: number;

beforeAll(() => {
  engine = new PrefetchEngine(64);
  engine.setResident(3, 1, true);
  index = new DigestIndex();
  index.addPackage({ repository: 'deb http://example/debian bookworm main', package: 'hello', version: '2.10-3' }, { alg: 'sha256', hex: '11'.repeat(32) });
  mem = LazyGuestMemory.openSync(bufferPages(new Uint8Array(16 * 4096).fill(5)));
  space = AddressSpace.create({ memory: mem, mode: 'x86-64', root: 0n });
  resets = coreInfo().resets;
});

afterAll(() => {
  space.dispose();
  mem.close();
  index.close();
  engine.close();
});

/** The handles made before still work, and the core was never reset. */
function othersAlive(): void {
  expect(coreInfo().resets).toBe(resets);
  expect(engine.isResident(3)).toBe(true);
  expect(index.lookupHex('sha256', '11'.repeat(32)).map((p) => p.version)).toEqual(['2.10-3']);
  const b = new Uint8Array(4);
  mem.readSync(gpa(mem.size - 4n), b);
  expect(b).toEqual(new Uint8Array(4).fill(5));
  expect(space.translate(0x1000n).ok).toBe(false);
}

function limit(fn: () => unknown, names: string): void {
  expect(fn).toThrow(expect.objectContaining({ code: 'LIMIT', message: expect.stringContaining(names) }));
  othersAlive();
}

describe('LZ4 blocks: sizes past the largest block', () => {
  it('compressing 600 MiB is LIMIT naming 256 MiB, not a trap', () => {
    expect(LZ4_MAX_BLOCK).toBe(256 * MiB);
    const big = new Uint8Array(600 * MiB);
    limit(() => lz4CompressBlock(big), String(LZ4_MAX_BLOCK));
    limit(() => lz4CompressBlockInto(big, new Uint8Array(16)), String(LZ4_MAX_BLOCK));
    // One byte past the limit is refused too; at the limit is the caller's (not run here: 256 MiB of work).
    limit(() => lz4CompressBlock(big.subarray(0, LZ4_MAX_BLOCK + 1)), String(LZ4_MAX_BLOCK));
  });

  it('decompressing with a 1.5 GiB maxSize works for a small block, and is LIMIT for one that could decode past 256 MiB', () => {
    const page = new Uint8Array(4096).fill(0x61);
    const block = lz4CompressBlock(page);
    // The room asked of the core is what the block can decode to, not maxSize.
    const before = coreInfo().memoryBytes;
    expect(lz4DecompressBlock(block, 1.5 * 1024 * MiB)).toEqual(page);
    expect(coreInfo().memoryBytes).toBe(before);
    othersAlive();
    // 2 MiB of block may decode to 510 MiB: more than one piece the core decodes.
    const wide = new Uint8Array(2 * MiB);
    limit(() => lz4DecompressBlock(wide, 1.5 * 1024 * MiB), String(LZ4_MAX_BLOCK));
    limit(() => lz4DecompressBlockInto(wide, new Uint8Array(300 * MiB)), String(LZ4_MAX_BLOCK));
    limit(() => lz4DecompressBlock(new Uint8Array(300 * MiB), 16), String(LZ4_MAX_BLOCK));
    // The same block with a maxSize in bounds is decoded (and is garbage: CORRUPT or OUTPUT_TOO_SMALL, never a trap).
    expect(() => lz4DecompressBlock(wide, 64 * MiB)).toThrow(expect.objectContaining({ code: expect.stringMatching(/^(CORRUPT|OUTPUT_TOO_SMALL)$/) }));
    othersAlive();
  });

  it('a 1.5 GiB destination for a small block needs no 1.5 GiB in the core', () => {
    const data = new TextEncoder().encode('hello hello hello hello hello hello');
    const block = lz4CompressBlock(data);
    let dst: Uint8Array;
    try {
      dst = new Uint8Array(1.5 * 1024 * MiB);
    } catch {
      // A browser may not hand out 1.5 GiB to one page; the 300 MiB case above covers it there.
      return;
    }
    const before = coreInfo().memoryBytes;
    expect(lz4DecompressBlockInto(block, dst)).toBe(data.length);
    expect(dst.subarray(0, data.length)).toEqual(data);
    expect(coreInfo().memoryBytes).toBe(before);
    othersAlive();
  });

  it('blocks within the limit still round-trip, with the bound as the destination', () => {
    const data = new Uint8Array(3 * MiB + 5);
    for (let i = 0; i < data.length; i++) data[i] = (i * 31) >> 7;
    const out = new Uint8Array(lz4CompressBound(data.length));
    const n = lz4CompressBlockInto(data, out);
    expect(lz4DecompressBlock(out.subarray(0, n), data.length)).toEqual(data);
    othersAlive();
  });
});

describe('other entries that size a core buffer from their input', () => {
  it('the core allocator itself: past 1 GiB it answers 0, and the bindings refuse past CORE_MAX_ALLOC', () => {
    const ex = core().exports;
    // Before: heap.alloc trapped here ("Allocation too large") and the core was reset.
    expect(ex.alloc(2 ** 30)).toBe(0);
    expect(ex.alloc(2 ** 31 - 1)).toBe(0);
    othersAlive();
    expect(CORE_MAX_ALLOC).toBe(512 * MiB);
    limit(() => core().alloc(CORE_MAX_ALLOC + 1), String(CORE_MAX_ALLOC));
    limit(() => core().alloc(2 ** 32 + 16), String(CORE_MAX_ALLOC));
  });

  it('a core buffer size past 2^32 no longer wraps: planning a backup of a 85 GiB extent at 512-byte chunks is LIMIT', () => {
    // Room for 178956973 ops of 24 bytes: 2^32 + 56 bytes, which the u32 size
    // parameter took as 56; the core then wrote its ops past that block.
    const n = 178956971;
    limit(() => planExtents([{ offset: 0, length: n * 512, kind: 'data', depth: 0 }], Infinity, 512), String(CORE_MAX_ALLOC));
    // A plan of ordinary size is unchanged.
    expect(planExtents([{ offset: 0, length: 3 * 512, kind: 'data', depth: 0 }], Infinity, 1024)).toEqual([
      { offset: 0, length: 1024, zero: false },
      { offset: 1024, length: 512, zero: false },
    ]);
  });

  it('PrefetchEngine: a translation table past MAX_MAP is LIMIT (2^26 trapped)', () => {
    expect(MAX_MAP).toBe(2 ** 24);
    limit(() => new PrefetchEngine(16, { mapCapacity: 2 ** 26 }), String(MAX_MAP));
    limit(() => new PrefetchEngine(16, { mapCapacity: MAX_MAP + 1 }), String(MAX_MAP));
  });

  it('PrefetchEngine: a long queue of wide faults is handled in slices', () => {
    const e = new PrefetchEngine(1 << 16, { mapCapacity: 1 << 12 });
    try {
      const pairs: [bigint, number][] = [];
      for (let v = 0; v < 1 << 12; v++) pairs.push([BigInt(v * 16), v * 16]);
      e.map(pairs);
      // 20000 faults with the widest window: room for 1.3 G runs asked at once before (a trap).
      const vpns = new BigUint64Array(20000);
      for (let i = 0; i < vpns.length; i++) vpns[i] = BigInt((i % (1 << 12)) * 16);
      const runs = e.faultVirtualBatch(vpns, 0, 65534);
      // Every mapped frame loaded exactly once, as one fault at a time would.
      let pages = 0;
      for (let i = 1; i < runs.length; i += 2) pages += runs[i]!;
      expect(pages).toBe(1 << 12);
      expect(e.residentCount()).toBe(1 << 12);
    } finally {
      e.close();
    }
    othersAlive();
  });

  it('coalesce of more pages than one core call sorts is LIMIT', () => {
    limit(() => coalesce({ length: 2 ** 25 } as ArrayLike<number>), String(2 ** 24));
    expect(Array.from(coalesce([9, 3, 5, 4]))).toEqual([3, 3, 9, 1]);
  });

  it('DigestIndex: expected digests past what one core block holds is LIMIT (2^26 trapped)', () => {
    limit(() => new DigestIndex({ expected: 2 ** 26 }), String(2 ** 25 - 128));
    limit(() => new DigestIndex({ expected: 2 ** 25 }), String(2 ** 25 - 128));
  });

  it('disk zero scan: buffers past a window are scanned in pieces, bit for bit as one pass would', () => {
    const data = new Uint8Array(40 * MiB + 4096 + 512);
    // Non-zero bytes at window edges, in the middle of granules, in the last partial granule.
    const marks = [0, 4095, 16 * MiB - 1, 16 * MiB, 16 * MiB + 70000, 32 * MiB + 1, data.length - 1];
    for (const at of marks) data[at] = 1;
    for (const granule of [512, 4096, 65536, 8 * MiB, 32 * MiB]) {
      const bm = zeroGranules(data, granule);
      const n = Math.ceil(data.length / granule);
      expect(bm.length).toBe((n + 7) >> 3);
      const dirty = new Set(marks.map((at) => Math.floor(at / granule)));
      const got = Array.from({ length: n }, (_, g) => (bm[g >> 3]! >> (g & 7)) & 1);
      const want = Array.from({ length: n }, (_, g) => (dirty.has(g) ? 0 : 1));
      expect(got.join(''), `granule ${granule}`).toBe(want.join(''));
    }
    expect(isAllZero(data)).toBe(false);
    expect(isAllZero(new Uint8Array(40 * MiB))).toBe(true);
    othersAlive();
  });

  it('disk zero scan of a 1.1 GiB buffer (one core block of it trapped)', () => {
    let big: Uint8Array;
    try {
      big = new Uint8Array(1.1 * 1024 * MiB);
    } catch {
      return; // a browser may refuse one 1.1 GiB buffer; the windowing is covered above
    }
    expect(isAllZero(big)).toBe(true);
    big[big.length - 3] = 9;
    expect(isAllZero(big)).toBe(false);
    const bm = zeroGranules(big, 65536);
    const last = Math.ceil(big.length / 65536) - 1;
    const bit = (g: number): number => (bm[g >> 3]! >> (g & 7)) & 1;
    expect([bit(0), bit(last - 1), bit(last)]).toEqual([1, 1, 0]);
    othersAlive();
  });
});
