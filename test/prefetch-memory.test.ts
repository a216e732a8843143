// Lazy guest memory (Node and Chromium): pages start absent and load on first
// access from a buffer or a checkpoint; contents match the image byte for
// byte; reads and writes at GPA and at GVA; a checkpoint's runs are counted
// by storage block; a 64 GiB guest works in a small wasm memory.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  AddressSpace,
  CheckpointReader,
  CheckpointWriter,
  LazyGuestMemory,
  VmkitError,
  bufferPages,
  createPolicy,
  gpa,
  gva,
  memorySink,
  type PageSource,
  type Translator,
} from '../bindings/memory/index.js';
import { coreInfo } from '../bindings/index.js';

const PS = 4096;

/** An image whose every 8-byte word holds (page << 16) | word index: any misplaced byte shows. */
function image(pages: number): Uint8Array {
  const m = new Uint8Array(pages * PS);
  const dv = new DataView(m.buffer);
  for (let p = 0; p < pages; p++) for (let w = 0; w < PS / 8; w++) dv.setBigUint64(p * PS + w * 8, (BigInt(p) << 16n) | BigInt(w), true);
  return m;
}

/** v -> frame table as a Translator (what an address space gives). */
function translator(map: Map<bigint, bigint>): Translator {
  const rev = new Map<bigint, bigint[]>();
  for (const [v, f] of map) rev.set(f, [...(rev.get(f) ?? []), v << 12n]);
  return {
    translateInto(gvas, out) {
      for (let i = 0; i < gvas.length; i++) {
        const f = map.get(gvas[i]! >> 12n);
        out[i] = f === undefined ? 0xffff_ffff_ffff_ffffn : (f << 12n) | (gvas[i]! & 0xfffn);
      }
    },
    gvasOf: (pa) => rev.get(pa >> 12n) ?? [],
  };
}

describe('lazy guest memory over a buffer', () => {
  it('loads pages on first access only, with the right bytes', async () => {
    const img = image(64);
    const mem = await LazyGuestMemory.open(bufferPages(img));
    expect(mem.residentCount()).toBe(0);
    const b = new Uint8Array(PS + 100);
    // A read from 0x5f00 spans pages 5 and 6: two faults, two reads.
    mem.readSync(gpa(0x5f00), b);
    expect(b).toEqual(img.subarray(0x5f00, 0x5f00 + PS + 100));
    expect(mem.residentCount()).toBe(2);
    await mem.read(gpa(0x5000), new Uint8Array(8));
    const s = mem.stats();
    // Three accesses (pages 5, 6, then 5 again); faults 2; 8 KiB read.
    expect([s.accesses, s.faults, s.sourceReads, s.bytesRead]).toEqual([3, 2, 2, 2 * PS]);
    mem.close();
  });

  it('writes keep the rest of the page', async () => {
    const img = image(8);
    const mem = LazyGuestMemory.openSync(bufferPages(img));
    mem.writeSync(gpa(0x2002), new Uint8Array([0xaa, 0xbb]));
    await mem.write(gpa(0x3ffe), new Uint8Array([1, 2, 3, 4])); // crosses into page 4
    const b = new Uint8Array(PS);
    mem.readSync(gpa(0x2000), b);
    const want = img.slice(0x2000, 0x3000);
    want[2] = 0xaa;
    want[3] = 0xbb;
    expect(b).toEqual(want);
    const c = new Uint8Array(4);
    await mem.read(gpa(0x3ffe), c);
    expect(Array.from(c)).toEqual([1, 2, 3, 4]);
    // The source is never written: word 0 of page 2 is 2 << 16, so its byte 2 is still 2.
    expect(img[0x2002]).toBe(2);
    mem.close();
  });

  it('physical prefetch loads the run in one read', () => {
    const mem = LazyGuestMemory.openSync(bufferPages(image(64)), { policy: createPolicy('physical', { back: 0, ahead: 7 }) });
    mem.readSync(gpa(0x5000), new Uint8Array(8));
    // Page 5 faults and brings 6..12: one read of 8 pages.
    expect([mem.stats().faults, mem.stats().sourceReads, mem.residentCount()]).toEqual([1, 1, 8]);
    for (let p = 5; p <= 12; p++) mem.readSync(gpa(p * PS), new Uint8Array(1));
    expect([mem.stats().faults, mem.stats().prefetchHits, mem.stats().wasted]).toEqual([1, 7, 0]);
    mem.close();
  });

  it('GVA access: the policy walks the virtual neighbourhood', async () => {
    const img = image(64);
    // Virtual pages 0x400..0x403 on frames 9, 2, 40, 3.
    const map = new Map<bigint, bigint>([[0x400n, 9n], [0x401n, 2n], [0x402n, 40n], [0x403n, 3n]]);
    const mem = await LazyGuestMemory.open(bufferPages(img), { translator: translator(map), policy: createPolicy('virtual', { back: 1, ahead: 2 }) });
    const b = new Uint8Array(16);
    await mem.readVirtual(gva(0x401_008n), b);
    expect(b).toEqual(img.subarray(2 * PS + 8, 2 * PS + 24));
    // Fault at 0x401: window 0x400..0x403 -> frames {9, 2, 40, 3}: runs (2,2) (9,1) (40,1) = 3 reads.
    expect([mem.stats().faults, mem.stats().prefetched, mem.stats().reads, mem.residentCount()]).toEqual([1, 3, 3, 4]);
    // Crossing from 0x402 into 0x403: both resident, prefetch hits.
    mem.readVirtualSync(gva(0x402_ff8n), new Uint8Array(16));
    expect([mem.stats().faults, mem.stats().prefetchHits]).toEqual([1, 2]);
    await mem.writeVirtual(gva(0x400_000n), new Uint8Array([7]));
    const one = new Uint8Array(1);
    mem.readSync(gpa(9 * PS), one);
    expect(one[0]).toBe(7);
    await expect(mem.readVirtual(gva(0x999_000n), b)).rejects.toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
    mem.close();
  });

  it('GPA faults find their virtual page through the reverse map', () => {
    const map = new Map<bigint, bigint>([[0x10n, 30n], [0x11n, 7n], [0x12n, 50n]]);
    const mem = LazyGuestMemory.openSync(bufferPages(image(64)), { translator: translator(map), policy: createPolicy('virtual', { back: 1, ahead: 1 }) });
    // Frame 7 <- virtual 0x11; its neighbours 0x10, 0x12 bring frames 30 and 50.
    mem.readSync(gpa(7 * PS), new Uint8Array(1));
    expect([mem.isResident(30), mem.isResident(50), mem.isResident(8)]).toEqual([true, true, false]);
    mem.close();
  });

  it('rejects out-of-range access and bad sources', () => {
    const mem = LazyGuestMemory.openSync(bufferPages(image(4)));
    expect(() => mem.readSync(gpa(4 * PS - 2), new Uint8Array(4))).toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
    expect(() => mem.readVirtualSync(gva(0), new Uint8Array(1))).toThrow(expect.objectContaining({ code: 'INVALID_STATE' }));
    mem.close();
    expect(() => bufferPages(new Uint8Array(100))).toThrow(VmkitError);
  });

  it('a failed read leaves the pages absent', async () => {
    let fail = true;
    const base = bufferPages(image(8));
    const src: PageSource = {
      pageSize: PS,
      pageCount: 8,
      readPagesInto: async (f, n, d) => {
        if (fail) throw new VmkitError('IO', 'disk gone');
        return base.readPagesInto(f, n, d);
      },
    };
    const mem = await LazyGuestMemory.open(src, { policy: createPolicy('physical', { back: 0, ahead: 1 }) });
    await expect(mem.read(gpa(0x2000), new Uint8Array(1))).rejects.toThrow('disk gone');
    expect(mem.residentCount()).toBe(0);
    fail = false;
    await mem.read(gpa(0x2000), new Uint8Array(1));
    expect(mem.residentCount()).toBe(2);
    mem.close();
  });

  it('replay loads the working set on open', async () => {
    const mem = await LazyGuestMemory.open(bufferPages(image(16)), { policy: createPolicy('replay', { record: [3, 4, 5, 9] }) });
    // Runs (3,3) and (9,1): 2 reads before any access.
    expect([mem.residentCount(), mem.stats().sourceReads]).toEqual([4, 2]);
    await mem.read(gpa(0x4000), new Uint8Array(1));
    expect([mem.stats().faults, mem.stats().prefetchHits]).toEqual([0, 1]);
    mem.close();
  });
});

describe('contents under any policy', () => {
  it('random reads and writes match a shadow copy of the image', () => {
    const pages = 48;
    const img = image(pages);
    // Virtual page v -> frame (11v + 5) mod 48 (a permutation), for the virtual policies' reverse map.
    const map = new Map<bigint, bigint>(Array.from({ length: pages }, (_, v) => [BigInt(v), BigInt((11 * v + 5) % pages)] as [bigint, bigint]));
    fc.assert(
      fc.property(
        fc.constantFrom('none', 'physical', 'virtual', 'adaptive', 'replay+virtual'),
        fc.array(fc.record({ at: fc.integer({ min: 0, max: pages * PS - 1 }), len: fc.integer({ min: 1, max: 3 * PS }), write: fc.boolean(), seed: fc.integer({ min: 0, max: 255 }) }), { maxLength: 25 }),
        (name, ops) => {
          const shadow = img.slice();
          const mem = LazyGuestMemory.openSync(bufferPages(img.slice()), { translator: translator(map), policy: createPolicy(name, { back: 2, ahead: 3, record: [7, 8, 30] }) });
          for (const op of ops) {
            const len = Math.min(op.len, pages * PS - op.at);
            if (op.write) {
              const d = Uint8Array.from({ length: len }, (_, i) => (op.seed + i) & 255);
              mem.writeSync(gpa(op.at), d);
              shadow.set(d, op.at);
            } else {
              const d = new Uint8Array(len);
              mem.readSync(gpa(op.at), d);
              expect(d).toEqual(shadow.subarray(op.at, op.at + len));
            }
          }
          const all = new Uint8Array(pages * PS);
          mem.readSync(gpa(0), all);
          expect(all).toEqual(shadow);
          // Every page is resident now; loaded pages = faults + prefetched, and nothing loads twice.
          const s = mem.stats();
          expect(mem.residentCount()).toBe(pages);
          expect(s.loaded).toBe(pages);
          expect(s.prefetched).toBe(s.loaded - s.faults);
          mem.close();
        },
      ),
      { numRuns: 40 },
    );
  });
});

/** 64 frames: PML4 1, PDPT 2, PD 3, PT 4; virtual pages 0x400 + i (i < 16) on frames 8 + 3i. */
function mappedImage(): Uint8Array {
  const img = image(64);
  const dv = new DataView(img.buffer);
  const entry = (t: number, i: number, target: number): void => dv.setBigUint64(t * PS + i * 8, (BigInt(target) << 12n) | 7n, true);
  for (const t of [1, 2, 3, 4]) img.fill(0, t * PS, (t + 1) * PS);
  entry(1, 0, 2);
  entry(2, 0, 3);
  entry(3, 2, 4);
  for (let i = 0; i < 16; i++) entry(4, i, 8 + 3 * i);
  return img;
}

describe('an AddressSpace as the translator', () => {
  it('walks the guest\'s own tables for the neighbourhood', async () => {
    const img = mappedImage();
    const src = bufferPages(img);
    const space = AddressSpace.create({ memory: { size: BigInt(img.length), readSync: (at, dst) => src.readPagesIntoSync(Number(at) / PS, dst.length / PS, dst) }, mode: 'x86-64', root: 0x1000n });
    const mem = await LazyGuestMemory.open(src, { translator: space, policy: createPolicy('virtual', { back: 0, ahead: 3 }) });
    const b = new Uint8Array(8);
    for (let i = 0; i < 16; i++) {
      await mem.readVirtual(gva(0x400000n + BigInt(i) * 0x1000n), b);
      // Word 0 of frame 8 + 3i holds (frame << 16) | 0.
      expect(new DataView(b.buffer).getBigUint64(0, true)).toBe(BigInt(8 + 3 * i) << 16n);
    }
    // Faults at i = 0, 4, 8, 12, each bringing the next three; frames 3 apart: 4 reads per fault.
    const s = mem.stats();
    expect([s.faults, s.prefetched, s.prefetchHits, s.wasted, s.reads, s.sourceReads]).toEqual([4, 12, 12, 0, 16, 16]);
    // Frame 11 (i = 1) evicted and read at its GPA: the reverse map (gvasOf) finds 0x401; its
    // neighbours 0x402..0x404 are resident, so the fault loads that page alone.
    mem.evict(11, 1);
    mem.readSync(gpa(11 * PS), b);
    expect([mem.stats().faults, mem.stats().loaded, mem.stats().reads]).toEqual([5, 17, 17]);
    mem.close();
    space.dispose();
  });
});

describe('an AddressSpace walking through the lazy memory itself', () => {
  it('table pages fault in alone, data pages with their virtual neighbours', async () => {
    const img = mappedImage();
    const mem = await LazyGuestMemory.open(bufferPages(img), { policy: createPolicy('virtual', { back: 0, ahead: 3 }) });
    const space = AddressSpace.create({ memory: mem, mode: 'x86-64', root: 0x1000n });
    mem.useTranslator(space);
    const b = new Uint8Array(8);
    for (let i = 0; i < 16; i++) await mem.readVirtual(gva(0x400000n + BigInt(i) * 0x1000n), b);
    // The first translation walks PML4, PDPT, PD, PT: four faults of one page each (the walker
    // caches them after). Data: faults at i = 0, 4, 8, 12, each with three neighbours.
    // 8 faults; 20 accesses (4 table reads + 16); 12 prefetched, all used; 20 pages in 20 reads.
    const s = mem.stats();
    expect([s.accesses, s.faults, s.prefetched, s.prefetchHits, s.wasted, s.loaded, s.reads]).toEqual([20, 8, 12, 12, 0, 20, 20]);
    mem.close();
    space.dispose();
  });
});

describe('lazy guest memory over a checkpoint', () => {
  it('restores lazily with reads counted by storage block', async () => {
    const img = image(256);
    const sink = memorySink();
    // Stored uncompressed, a 64 KiB block holds 15 pages (the staging buffer
    // stops when less than lz4CompressBound(4096) > 4096 bytes remain): 0..14
    // in block 0, 15..29 in block 1, ...
    const w = await CheckpointWriter.create(sink, { guestSize: img.length, blockSize: 65536, codec: 'none' });
    await w.writePages(0, img);
    await w.finish();
    const r = await CheckpointReader.open(sink.bytes());
    expect([r.blockOf(14), r.blockOf(15), r.blockOf(29), r.blockOf(30)]).toEqual([0, 1, 1, 2]);
    const mem = await LazyGuestMemory.open(r, { policy: createPolicy('physical', { back: 2, ahead: 2 }) });
    const b = new Uint8Array(64);
    await mem.read(gpa(15 * PS), b);
    expect(b).toEqual(img.subarray(15 * PS, 15 * PS + 64));
    // Page 15 faults: pages 13..17 are one run but two storage blocks (0 and 1): 2 reads.
    expect([mem.stats().faults, mem.stats().reads]).toEqual([1, 2]);
    // Every byte of the guest through the lazy memory equals the image.
    const all = new Uint8Array(img.length);
    await mem.read(gpa(0), all);
    expect(all).toEqual(img);
    await r.close();
    mem.close();
  });
});

describe('a guest larger than wasm memory', () => {
  it('64 GiB guest: one bit per page in the core, contents in the host', async () => {
    const pageCount = 1 << 24; // 64 GiB
    const src: PageSource = {
      pageSize: PS,
      pageCount,
      readPagesInto: async (first, count, dst) => {
        const dv = new DataView(dst.buffer, dst.byteOffset, dst.byteLength);
        for (let i = 0; i < count; i++) dv.setUint32(i * PS, first + i, true);
      },
    };
    const mem = await LazyGuestMemory.open(src, { policy: createPolicy('physical', { back: 0, ahead: 3 }) });
    const b = new Uint8Array(4);
    const at = 60n << 30n; // 60 GiB
    await mem.read(gpa(at), b);
    expect(new DataView(b.buffer).getUint32(0, true)).toBe(Number(at >> 12n));
    await mem.read(gpa(at + 3n * 4096n), b);
    expect(new DataView(b.buffer).getUint32(0, true)).toBe(Number(at >> 12n) + 3);
    expect([mem.stats().faults, mem.residentCount()]).toEqual([1, 4]);
    expect(coreInfo().memoryBytes).toBeLessThan(64 * 2 ** 20);
    mem.close();
  });
});

describe('adaptive readahead through lazy memory', () => {
  it('a hit on the marked page reads the next window without a fault, with the right bytes', async () => {
    // 64 virtual pages on scattered frames (v -> 7v mod 64); read them in order.
    const img = image(64);
    const map = new Map<bigint, bigint>();
    for (let v = 0; v < 64; v++) map.set(0x400n + BigInt(v), BigInt((7 * v) % 64));
    const mem = await LazyGuestMemory.open(bufferPages(img), { policy: createPolicy('adaptive', { ahead: 2, minWindow: 2, maxWindow: 256 }) });
    mem.useTranslator(translator(map));
    const b = new Uint8Array(PS);
    for (let v = 0; v < 64; v++) {
      await mem.readVirtual(gva((0x400n + BigInt(v)) << 12n), b);
      const f = (7 * v) % 64;
      expect(b).toEqual(img.subarray(f * PS, (f + 1) * PS));
    }
    // As the engine spec's scan: one fault, then windows of 8, 32 and 21 pages
    // issued by hits on their marks; every page loaded once.
    const s = mem.stats();
    expect([s.faults, s.prefetched, s.prefetchHits, s.wasted, mem.residentCount()]).toEqual([1, 63, 63, 0, 64]);
    mem.close();
  });
});
