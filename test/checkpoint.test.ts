// Checkpoint writer/reader on buffers (Node and Chromium): round trips of the
// worst cases, pages in any order, diff chains, one block read per run, the
// cache, and hostile files (flipped bits, truncation, bad offsets, loops)
// rejected with VmkitError and no large allocation.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { CheckpointReader, CheckpointWriter, LazyGuestMemory, memorySink, VmkitError, type CheckpointSource } from '../bindings/memory/index.js';
import { gpa } from '../bindings/memory/types.js';
import { coreInfo } from '../bindings/index.js';
import { xxh32 } from '../bindings/memory/checkpoint/lz4.js';
import {
  FOOTER_SIZE,
  HEADER_SIZE,
  PAGE_WORDS,
  decodeFooter,
  decodeHeader,
  decodeIndex,
  encodeFooter,
  encodeHeader,
  encodeIndex,
  type BlockEntry,
  type CheckpointFooter,
  type CheckpointHeader,
} from '../bindings/memory/checkpoint/format.js';
import { PACK_GROUP, checkPackedFraming, packPageTable, unpackPageTable } from '../bindings/memory/checkpoint/_packed-index.js';

const PS = 4096;

/** Index of the first differing byte, or -1 (toEqual on large typed arrays is slow). */
function diffAt(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => (x = (Math.imul(x, 1103515245) + 12345) >>> 0);
}

/** A guest mixing zero, text-like, random and one-byte-changed pages. */
function guest(pages: number, seed: number): Uint8Array {
  const m = new Uint8Array(pages * PS);
  const r = rng(seed);
  for (let p = 0; p < pages; p++) {
    const kind = r() % 4;
    const page = m.subarray(p * PS, (p + 1) * PS);
    if (kind === 1) for (let i = 0; i < PS; i++) page[i] = 97 + (r() >>> 29);
    else if (kind === 2) for (let i = 0; i < PS; i++) page[i] = r() >>> 24;
    else if (kind === 3) page[r() % PS] = 1 + (r() % 255);
  }
  return m;
}

async function save(
  mem: Uint8Array,
  opts: { blockSize?: number; codec?: 'lz4' | 'none'; order?: number[]; formatVersion?: number } = {},
): Promise<{ file: Uint8Array; stats: Awaited<ReturnType<CheckpointWriter['finish']>> }> {
  const sink = memorySink();
  const w = await CheckpointWriter.create(sink, { guestSize: mem.length, blockSize: opts.blockSize ?? 65536, codec: opts.codec, formatVersion: opts.formatVersion });
  if (opts.order) for (const p of opts.order) await w.writePages(p, mem.subarray(p * PS, (p + 1) * PS));
  else await w.writePages(0, mem);
  const stats = await w.finish();
  return { file: sink.bytes(), stats };
}

describe('checkpoint round trips', () => {
  it('restores the worst cases exactly: random, all zero, one byte per page, mixed', async () => {
    const n = 64;
    const random = new Uint8Array(n * PS);
    const r = rng(5);
    for (let i = 0; i < random.length; i++) random[i] = r() >>> 24;
    const oneByte = new Uint8Array(n * PS);
    for (let p = 0; p < n; p++) oneByte[p * PS + ((p * 97) % PS)] = 0xa5;
    for (const [name, mem] of [['random', random], ['zero', new Uint8Array(n * PS)], ['one byte', oneByte], ['mixed', guest(n, 9)]] as const) {
      const { file, stats } = await save(mem);
      const rd = await CheckpointReader.open(file);
      const out = new Uint8Array(mem.length);
      await rd.restoreTo(out);
      expect(diffAt(out, mem), name).toBe(-1);
      const info = rd.info();
      expect(info.zeroPages + info.storedPages, name).toBe(n);
      expect(info.blocks).toBe(stats.blocks);
      expect(stats.writes).toBe(stats.blocks + 3); // header, index, footer
      if (name === 'zero') expect(info.blocks).toBe(0);
      if (name === 'random') expect(info.rawPages).toBe(n);
      await rd.close();
    }
  });

  it('accepts pages in any order, with any block size and codec (fast-check)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 40 }),
        fc.integer(),
        fc.constantFrom(4128, 8192, 65536),
        fc.constantFrom('lz4' as const, 'none' as const),
        async (n, seed, blockSize, codec) => {
          const mem = guest(n, seed);
          const order = Array.from({ length: n }, (_, i) => i);
          const r = rng(seed ^ 0x55);
          for (let i = n - 1; i > 0; i--) {
            const j = r() % (i + 1);
            [order[i], order[j]] = [order[j]!, order[i]!];
          }
          const { file } = await save(mem, { blockSize, codec, order });
          const rd = await CheckpointReader.open(file);
          const out = new Uint8Array(mem.length);
          rd.readPagesIntoSync(0, n, out);
          expect(diffAt(out, mem)).toBe(-1);
          const p = r() % n;
          expect(diffAt(await rd.readPage(p), mem.subarray(p * PS, (p + 1) * PS))).toBe(-1);
          await rd.close();
        },
      ),
      { numRuns: 25 },
    );
  });

  it('a lazy random read reads its own record only (version 2); a run of pages one span', async () => {
    const mem = guest(256, 3);
    const { file } = await save(mem, { blockSize: 65536 });
    const rd = await CheckpointReader.open(file);
    const hdr = decodeHeader(file.subarray(0, HEADER_SIZE));
    const ftr = decodeFooter(file.subarray(file.length - FOOTER_SIZE), file.length, hdr);
    const { pages } = decodeIndex(file.subarray(ftr.indexOffset, ftr.indexOffset + ftr.indexLength), hdr, ftr);
    const recLen = (p: number): number => (pages[PAGE_WORDS * p + 2]! >>> 28 >= 2 ? pages[PAGE_WORDS * p + 2]! & 0x0fffffff : 0);
    const r = rng(11);
    for (let i = 0; i < 60; i++) {
      const p = r() % 256;
      const before = rd.stats;
      const page = await rd.readPage(p);
      expect(diffAt(page, mem.subarray(p * PS, (p + 1) * PS))).toBe(-1);
      const after = rd.stats;
      // One read of exactly the page's record (none for a zero page, or when the last read holds it).
      expect(after.reads - before.reads).toBeLessThanOrEqual(rd.blockOf(p) < 0 ? 0 : 1);
      if (after.reads > before.reads) expect(after.bytesRead - before.bytesRead).toBe(recLen(p));
      expect(after.blockReads).toBe(0);
    }
    // Pages handed out by readPage share slabs, never bytes: earlier pages keep their contents.
    const got = await Promise.all([5, 6, 7, 200].map((p) => rd.readPage(p)));
    [5, 6, 7, 200].forEach((p, i) => expect(diffAt(got[i]!, mem.subarray(p * PS, (p + 1) * PS))).toBe(-1));
    // A run of neighbours (as the prefetcher asks for): one read of their records' span, zero pages between them included.
    const b = rd.blockOf(100) >= 0 ? rd.blockOf(100) : rd.blockOf(101);
    const run: number[] = [];
    for (let p = 0; p < 256; p++) if (rd.blockOf(p) === b) run.push(p);
    const first = run[0]!;
    const n = Math.min(64, run[run.length - 1]! - first + 1);
    const fresh = await CheckpointReader.open(file);
    const out = new Uint8Array(n * PS);
    fresh.readPagesIntoSync(first, n, out);
    expect(diffAt(out, mem.subarray(first * PS, (first + n) * PS))).toBe(-1);
    const used = Array.from({ length: n }, (_, i) => recLen(first + i)).reduce((a, x) => a + x, 0);
    expect(fresh.stats.reads).toBe(1);
    expect(fresh.stats.bytesRead).toBe(used); // saved in order: the records are back to back
    await rd.close();
    await fresh.close();
  });

  it('pages saved out of order: a run is split where one read would cost more than twice its records', async () => {
    const mem = guest(96, 8);
    const order = [...Array(96).keys()].reverse();
    const { file } = await save(mem, { blockSize: 1 << 20, order });
    const rd = await CheckpointReader.open(file);
    const out = new Uint8Array(mem.length);
    await rd.readPagesInto(0, 96, out);
    expect(diffAt(out, mem)).toBe(-1);
    const stored = rd.info().storedPages;
    const st = rd.stats;
    expect(st.reads).toBeGreaterThanOrEqual(2);
    expect(st.reads).toBeLessThanOrEqual(stored);
    expect(st.bytesRead).toBeLessThanOrEqual(2 * rd.info().storedBytes);
    await rd.close();
    // The same runs through the source's asynchronous reads.
    const ra = await CheckpointReader.open(file, { syncReads: false });
    out.fill(0xee);
    await ra.readPagesInto(0, 96, out);
    expect(diffAt(out, mem)).toBe(-1);
    expect(ra.stats).toEqual(st);
    await ra.close();
  });

  it('a record that does not match its checksum is INTEGRITY for its pages only', async () => {
    const mem = guest(64, 13);
    const { file } = await save(mem, { blockSize: 1 << 20 });
    const hdr = decodeHeader(file.subarray(0, HEADER_SIZE));
    const ftr = decodeFooter(file.subarray(file.length - FOOTER_SIZE), file.length, hdr);
    const { blocks, pages } = decodeIndex(file.subarray(ftr.indexOffset, ftr.indexOffset + ftr.indexLength), hdr, ftr);
    const victim = [...Array(64).keys()].find((p) => pages[PAGE_WORDS * p + 2]! >>> 28 === 3)!;
    const bad = file.slice();
    bad[blocks[pages[PAGE_WORDS * victim]!]!.offset + pages[PAGE_WORDS * victim + 1]! + 3]! ^= 0x10;
    const rd = await CheckpointReader.open(bad);
    await expect(rd.readPage(victim)).rejects.toMatchObject({ code: 'INTEGRITY' });
    expect(() => rd.readPagesIntoSync(victim, 1, new Uint8Array(PS))).toThrow(expect.objectContaining({ code: 'INTEGRITY' }));
    for (let p = 0; p < 64; p++) {
      if (p === victim) continue;
      expect(diffAt(await rd.readPage(p), mem.subarray(p * PS, (p + 1) * PS))).toBe(-1);
    }
    await expect(rd.restoreTo(new Uint8Array(mem.length))).rejects.toMatchObject({ code: 'INTEGRITY' });
    await rd.close();
    // Asynchronous record reads check them alike.
    const ra = await CheckpointReader.open(bad, { syncReads: false });
    await expect(ra.readPage(victim)).rejects.toMatchObject({ code: 'INTEGRITY' });
    expect(diffAt(await ra.readPage(victim ^ 1), mem.subarray((victim ^ 1) * PS, ((victim ^ 1) + 1) * PS))).toBe(-1);
    await ra.close();
  });

  it('readPageInto: the page in the caller\'s buffer, one shared resolved promise on the synchronous path, errors as rejections', async () => {
    const mem = guest(128, 21);
    const { file } = await save(mem, { blockSize: 65536 });
    const { file: v1 } = await save(mem, { blockSize: 65536, formatVersion: 1 });
    const dst = new Uint8Array(PS + 8);
    for (const [name, rd] of [
      ['v2 sync', await CheckpointReader.open(file)],
      ['v2 async reads', await CheckpointReader.open(file, { syncReads: false })],
      ['v1', await CheckpointReader.open(v1)],
    ] as const) {
      const r = rng(31);
      for (let i = 0; i < 40; i++) {
        const p = r() % 128;
        dst.fill(0xee);
        await rd.readPageInto(p, dst);
        expect(diffAt(dst.subarray(0, PS), mem.subarray(p * PS, (p + 1) * PS)), `${name} page ${p}`).toBe(-1);
        expect(dst[PS], name).toBe(0xee); // nothing written past the page
      }
      // Bad arguments and a closed reader reject; they never throw from the call itself.
      const tooSmall = rd.readPageInto(0, new Uint8Array(PS - 1));
      await expect(tooSmall).rejects.toMatchObject({ code: 'OUTPUT_TOO_SMALL' });
      await expect(rd.readPageInto(128, dst)).rejects.toBeInstanceOf(VmkitError);
      await rd.close();
      await expect(rd.readPageInto(0, dst)).rejects.toMatchObject({ code: 'INVALID_STATE' });
    }
    // The synchronous path (a full version 2 file read synchronously) allocates no promise per page.
    const rs = await CheckpointReader.open(file);
    const a = rs.readPageInto(1, dst);
    const b = rs.readPageInto(2, dst);
    expect(a).toBe(b);
    await a;
    expect(diffAt(dst.subarray(0, PS), mem.subarray(2 * PS, 3 * PS))).toBe(-1);
    // A record that does not match its checksum: INTEGRITY as a rejection, later reads unaffected.
    const hdr = decodeHeader(file.subarray(0, HEADER_SIZE));
    const ftr = decodeFooter(file.subarray(file.length - FOOTER_SIZE), file.length, hdr);
    const { blocks, pages } = decodeIndex(file.subarray(ftr.indexOffset, ftr.indexOffset + ftr.indexLength), hdr, ftr);
    const victim = [...Array(128).keys()].find((p) => pages[PAGE_WORDS * p + 2]! >>> 28 === 3)!;
    const bad = file.slice();
    bad[blocks[pages[PAGE_WORDS * victim]!]!.offset + pages[PAGE_WORDS * victim + 1]! + 3]! ^= 0x10;
    const rb = await CheckpointReader.open(bad);
    await expect(rb.readPageInto(victim, dst)).rejects.toMatchObject({ code: 'INTEGRITY' });
    await rb.readPageInto(victim ^ 1, dst);
    expect(diffAt(dst.subarray(0, PS), mem.subarray((victim ^ 1) * PS, ((victim ^ 1) + 1) * PS))).toBe(-1);
    await rb.close();
    await rs.close();
  });
});

describe('format version 1 (written by the old writer path) still reads identically', () => {
  it('round trips, reads page by page and by runs, a block read at most per page and cached reads none', async () => {
    const mem = guest(256, 3);
    const v1 = await save(mem, { blockSize: 65536, formatVersion: 1 });
    const v2 = await save(mem, { blockSize: 65536, formatVersion: 2 });
    const h1 = decodeHeader(v1.file.subarray(0, HEADER_SIZE));
    expect(h1.version).toBe(1);
    expect(decodeHeader(v2.file.subarray(0, HEADER_SIZE)).version).toBe(2);
    // The documented version 1 layout: 12-byte page entries, a checksum per block.
    const f1 = decodeFooter(v1.file.subarray(v1.file.length - FOOTER_SIZE), v1.file.length, h1);
    expect(f1.indexLength).toBe(16 + 16 * v1.stats.blocks + 12 * 256);
    const { blocks } = decodeIndex(v1.file.subarray(f1.indexOffset, f1.indexOffset + f1.indexLength), h1, f1);
    for (const bl of blocks) expect(bl.checksum).toBe(xxh32(v1.file.subarray(bl.offset, bl.offset + bl.length)));
    // The same blocks as version 2 (only the index differs).
    expect(diffAt(v1.file.subarray(HEADER_SIZE + 0, f1.indexOffset), v2.file.subarray(HEADER_SIZE, f1.indexOffset))).toBe(-1);
    const a = await CheckpointReader.open(v1.file);
    expect(a.info().version).toBe(1);
    const out = new Uint8Array(mem.length);
    await a.restoreTo(out);
    expect(diffAt(out, mem)).toBe(-1);
    out.fill(7);
    a.readPagesIntoSync(0, 256, out);
    expect(diffAt(out, mem)).toBe(-1);
    await a.close();
    const file = v1.file;
    const rd = await CheckpointReader.open(file, { cacheBlocks: 2 });
    const r = rng(11);
    for (let i = 0; i < 50; i++) {
      const p = r() % 256;
      const before = rd.stats.blockReads;
      const page = await rd.readPage(p);
      expect(diffAt(page, mem.subarray(p * PS, (p + 1) * PS))).toBe(-1);
      expect(rd.stats.blockReads - before).toBeLessThanOrEqual(rd.blockOf(p) < 0 ? 0 : 1);
      const again = rd.stats.blockReads;
      await rd.readPage(p);
      expect(rd.stats.blockReads).toBe(again);
    }
    // A run of pages in one block: one read for the whole run.
    const b = rd.blockOf(100) >= 0 ? rd.blockOf(100) : rd.blockOf(101);
    const run: number[] = [];
    for (let p = 0; p < 256; p++) if (rd.blockOf(p) === b) run.push(p);
    const fresh = await CheckpointReader.open(file, { cacheBlocks: 1 });
    await fresh.readPagesInto(run[0]!, run[run.length - 1]! - run[0]! + 1, new Uint8Array((run[run.length - 1]! - run[0]! + 1) * PS));
    expect(fresh.stats.blockReads).toBe(new Set(run.map((p) => fresh.blockOf(p)).filter((x) => x >= 0)).size);
    await rd.close();
    await fresh.close();
  });

  it('a flipped bit in a version 1 block is INTEGRITY (its block checksum)', async () => {
    const mem = guest(32, 4);
    const { file } = await save(mem, { blockSize: 8192, formatVersion: 1 });
    const bad = file.slice();
    bad[HEADER_SIZE + 5]! ^= 1;
    const rd = await CheckpointReader.open(bad);
    await expect(rd.restoreTo(new Uint8Array(mem.length))).rejects.toMatchObject({ code: 'INTEGRITY' });
    await rd.close();
  });
});

describe("the writer's dense LZ4 search (search: 'dense')", () => {
  it('stores the same pages as the fast search in fewer bytes, plain LZ4 records either way', async () => {
    const mem = guest(256, 17);
    const files: { stats: Awaited<ReturnType<CheckpointWriter['finish']>>; file: Uint8Array }[] = [];
    for (const search of ['fast', 'dense'] as const) {
      const sink = memorySink();
      const w = await CheckpointWriter.create(sink, { guestSize: mem.length, blockSize: 65536, search });
      await w.writePages(0, mem);
      files.push({ stats: await w.finish(), file: sink.bytes() });
    }
    const [fast, dense] = files;
    expect(dense!.stats.storedBytes).toBeLessThan(fast!.stats.storedBytes);
    const r = await CheckpointReader.open(dense!.file);
    const out = new Uint8Array(mem.length);
    await r.restoreTo(out);
    expect(diffAt(out, mem)).toBe(-1);
    await r.close();
    await expect(CheckpointWriter.create(memorySink(), { guestSize: mem.length, search: 'best' as 'fast' })).rejects.toMatchObject({ code: 'ARG_RANGE' });
  });

  it('round-trips pages of every page size and any content (property): short runs, long repeats, noise, 64 KiB pages', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(512, 4096, 65536),
        fc.array(fc.tuple(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 1, max: 5000 }), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 40 }),
        async (ps, runs) => {
          const pages = 4;
          const mem = new Uint8Array(pages * ps);
          const r = rng(runs.length * 7 + ps);
          let at = 0;
          for (const [kind, len, byte] of runs) {
            for (let i = 0; i < len && at < mem.length; i++, at++) {
              mem[at] = kind === 0 ? byte : kind === 1 ? r() >>> 24 : kind === 2 ? mem[Math.max(0, at - 1 - (byte % 64))]! : 97 + ((r() >>> 29) & (byte & 3));
            }
          }
          const sink = memorySink();
          const w = await CheckpointWriter.create(sink, { guestSize: mem.length, pageSize: ps, blockSize: ps === 65536 ? 1 << 18 : 65536, search: 'dense' });
          await w.writePages(0, mem);
          await w.finish();
          const rd = await CheckpointReader.open(sink.bytes());
          const out = new Uint8Array(mem.length);
          await rd.readPagesInto(0, pages, out);
          await rd.close();
          expect(diffAt(out, mem)).toBe(-1);
        },
      ),
      { numRuns: 60 },
    );
  });
});

describe('format version 3 (packed page table)', () => {
  it('is the default; the same blocks and decoded index as version 2, a smaller index, and reads identically', async () => {
    const mem = guest(512, 8);
    const v2 = await save(mem, { blockSize: 65536, formatVersion: 2 });
    const v3 = await save(mem, { blockSize: 65536, order: [...Array(512).keys()].reverse() });
    const v3b = await save(mem, { blockSize: 65536 });
    const h2 = decodeHeader(v2.file.subarray(0, HEADER_SIZE));
    const h3 = decodeHeader(v3b.file.subarray(0, HEADER_SIZE));
    expect(h3.version).toBe(3);
    const f2 = decodeFooter(v2.file.subarray(v2.file.length - FOOTER_SIZE), v2.file.length, h2);
    const f3 = decodeFooter(v3b.file.subarray(v3b.file.length - FOOTER_SIZE), v3b.file.length, h3);
    expect(f2.indexOffset).toBe(f3.indexOffset);
    expect(diffAt(v2.file.subarray(HEADER_SIZE, f2.indexOffset), v3b.file.subarray(HEADER_SIZE, f3.indexOffset))).toBe(-1);
    const i2 = decodeIndex(v2.file.subarray(f2.indexOffset, f2.indexOffset + f2.indexLength), h2, f2);
    const i3 = decodeIndex(v3b.file.subarray(f3.indexOffset, f3.indexOffset + f3.indexLength), h3, f3);
    expect(i3.blocks).toEqual(i2.blocks);
    expect(diffAt(new Uint8Array(i3.pages.buffer), new Uint8Array(i2.pages.buffer))).toBe(-1);
    expect(f3.indexLength).toBeLessThan(f2.indexLength / 2);
    // Written backwards (records in reverse page order: every offset off the running guess) and forwards.
    for (const file of [v3.file, v3b.file]) {
      const r = await CheckpointReader.open(file);
      const out = new Uint8Array(mem.length);
      await r.restoreTo(out);
      expect(diffAt(out, mem)).toBe(-1);
      const rr = rng(3);
      for (let i = 0; i < 40; i++) {
        const p = rr() % 512;
        expect(diffAt(await r.readPage(p), mem.subarray(p * PS, (p + 1) * PS))).toBe(-1);
      }
      await r.close();
    }
  });

  it('packs and unpacks tables of several groups exactly, with zero, absent, raw and LZ4 pages and blocks skipped', () => {
    const r = rng(21);
    const np = 2 * PACK_GROUP + 777;
    const t = new Uint32Array(np * PAGE_WORDS);
    let blk = 0;
    let off = 0;
    for (let p = 0; p < np; p++) {
      const k = r() % 10;
      const w = PAGE_WORDS * p;
      if (k < 3) {
        t.set([0xffffffff, 0, (k === 0 ? 0 : 1) << 28, 0], w);
        continue;
      }
      if (k === 3) [blk, off] = [blk + 1 + (r() % 3), 0];
      if (k === 4) off += 1 + (r() % 50); // a gap (a page written twice: its earlier copy)
      const len = k === 5 ? PS : 1 + (r() % 4000);
      t.set([blk, off, ((k === 5 ? 2 : 3) << 28) | len, r()], w);
      off += len;
    }
    const packed = packPageTable(t);
    checkPackedFraming(packed, np, 0);
    const back = new Uint32Array(np * PAGE_WORDS);
    unpackPageTable(packed, back, 0);
    expect(diffAt(new Uint8Array(back.buffer), new Uint8Array(t.buffer))).toBe(-1);
    // Framing errors: truncated, a group length past the end, bytes left over.
    expect(() => checkPackedFraming(packed.subarray(0, packed.length - 1), np, 0)).toThrow(VmkitError);
    expect(() => checkPackedFraming(packed, np + PACK_GROUP, 0)).toThrow(/ends inside group 3/);
    expect(() => unpackPageTable(packed, new Uint32Array((np + 1) * PAGE_WORDS), 0)).toThrow(/does not decode to 778 pages/);
    const extra = new Uint8Array(packed.length + 4);
    extra.set(packed);
    expect(() => checkPackedFraming(extra, np, 0)).toThrow(/after the packed page table/);
    const big = packed.slice();
    new DataView(big.buffer).setUint32(0, 0x80000001, true); // 1 byte claiming a whole group: past 255:1
    expect(() => checkPackedFraming(big, np, 0)).toThrow(/bad length/);
  });

  it('refuses corrupt packed tables cleanly (fuzzed bytes under a fixed checksum): CORRUPT, never a wrong page or a trap', async () => {
    const mem = guest(300, 12);
    const { file } = await save(mem, { blockSize: 16384 });
    const h = decodeHeader(file.subarray(0, HEADER_SIZE));
    const f = decodeFooter(file.subarray(file.length - FOOTER_SIZE), file.length, h);
    const good = file.subarray(f.indexOffset, f.indexOffset + f.indexLength);
    const start = 16 + 16 * f.blockCount;
    const want = decodeIndex(good, h, f).pages;
    fc.assert(
      fc.property(fc.integer({ min: start, max: good.length - 1 }), fc.integer({ min: 1, max: 255 }), (at, x) => {
        const bad = good.slice();
        bad[at]! ^= x;
        const ff: CheckpointFooter = { ...f, indexChecksum: xxh32(bad) };
        try {
          const got = decodeIndex(bad, h, ff).pages;
          // Decoded anyway (a flipped checksum or length byte): it is a table that passed every extent check.
          expect(got.length).toBe(want.length);
        } catch (e) {
          expect(e).toBeInstanceOf(VmkitError);
          expect((e as VmkitError).code).toBe('CORRUPT');
        }
      }),
      { numRuns: 200 },
    );
  });
});

describe('diff checkpoints', () => {
  it('holds only dirty pages and restores through the chain', async () => {
    const n = 64;
    const base = guest(n, 1);
    const sinkA = memorySink();
    const wa = await CheckpointWriter.create(sinkA, { guestSize: base.length, blockSize: 65536 });
    await wa.writePages(0, base);
    const sa = await wa.finish();
    const fileA = sinkA.bytes();
    // Change pages 3, 10..12, 63; mark them dirty.
    const next = base.slice();
    const bitmap = new Uint8Array(n / 8);
    for (const p of [3, 10, 11, 12, 63]) {
      next.fill(p + 1, p * PS, p * PS + 100);
      bitmap[p >> 3]! |= 1 << (p & 7);
    }
    const src = await CheckpointReader.open(fileA); // any PageSource: here a reader over the new memory
    const live = { pageSize: PS, pageCount: n, readPagesIntoSync: (f: number, c: number, d: Uint8Array) => d.set(next.subarray(f * PS, (f + c) * PS)), readPagesInto: async (f: number, c: number, d: Uint8Array) => d.set(next.subarray(f * PS, (f + c) * PS)) };
    const sinkB = memorySink();
    const wb = await CheckpointWriter.create(sinkB, { guestSize: base.length, blockSize: 65536, parent: { path: 'a.ckpt', id: sa.id } });
    expect(await wb.writeDirty(bitmap, live)).toBe(5);
    const sb = await wb.finish();
    expect(sb.absentPages).toBe(n - 5);
    const fileB = sinkB.bytes();
    const rb = await CheckpointReader.open(fileB, { resolveParent: (p) => (p === 'a.ckpt' ? fileA : new Uint8Array(0)) });
    const out = new Uint8Array(next.length);
    await rb.restoreTo(out);
    expect(diffAt(out, next)).toBe(-1);
    expect(rb.info().chain).toEqual([sb.id, sa.id]);
    // Without the parent: absent pages are NOT_FOUND, present ones read.
    const alone = await CheckpointReader.open(fileB, { parents: false });
    await expect(alone.readPage(0)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(diffAt(await alone.readPage(3), next.subarray(3 * PS, 4 * PS))).toBe(-1);
    // A wrong parent (another checkpoint) is caught by its id.
    await expect(CheckpointReader.open(fileB, { resolveParent: () => fileB })).rejects.toMatchObject({ code: 'LIMIT' });
    await expect(CheckpointReader.open(fileB, { resolveParent: () => sinkA.bytes().slice() })).resolves.toBeInstanceOf(CheckpointReader);
    const other = (await save(base)).file;
    await expect(CheckpointReader.open(fileB, { resolveParent: () => other })).rejects.toMatchObject({ code: 'INTEGRITY' });
    await src.close();
  });
});

describe('hostile checkpoint files', () => {
  const mem = guest(32, 21);
  let good: Uint8Array;

  it('rejects truncated files as incomplete (no footer) at every cut', async () => {
    good = (await save(mem, { blockSize: 8192 })).file;
    for (let cut = 0; cut < good.length; cut += Math.max(1, Math.floor(good.length / 97))) {
      await expect(CheckpointReader.open(good.subarray(0, cut))).rejects.toBeInstanceOf(VmkitError);
    }
  });

  it('catches every flipped bit in header, index and footer on open, and in blocks on read', async () => {
    good ??= (await save(mem, { blockSize: 8192 })).file;
    const r = rng(77);
    for (let i = 0; i < 300; i++) {
      const f = good.slice();
      const at = r() % f.length;
      f[at]! ^= 1 << (r() % 8);
      try {
        const rd = await CheckpointReader.open(f);
        const out = new Uint8Array(mem.length);
        try {
          await rd.restoreTo(out).finally(() => rd.close());
          // A flip in alignment padding or an unused header byte changes nothing read.
          expect(diffAt(out, mem)).toBe(-1);
        } catch (e) {
          expect(e).toBeInstanceOf(VmkitError);
          expect(['INTEGRITY', 'CORRUPT']).toContain((e as VmkitError).code);
        }
      } catch (e) {
        expect(e).toBeInstanceOf(VmkitError);
      }
    }
  });

  it('fuzz: random and mutated files give VmkitError without large allocations or traps', async () => {
    good ??= (await save(mem, { blockSize: 8192 })).file;
    const resets = coreInfo().resets;
    let biggest = 0;
    const spy = (bytes: Uint8Array): CheckpointSource => ({
      size: bytes.length,
      readSync: (pos, dst) => {
        biggest = Math.max(biggest, dst.length);
        if (pos + dst.length > bytes.length) throw new VmkitError('CORRUPT', 'eof');
        dst.set(bytes.subarray(pos, pos + dst.length));
      },
      read: async (pos, dst) => {
        biggest = Math.max(biggest, dst.length);
        if (pos + dst.length > bytes.length) throw new VmkitError('CORRUPT', 'eof');
        dst.set(bytes.subarray(pos, pos + dst.length));
      },
      close: async () => {},
    });
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.nat(good.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }),
        async (muts) => {
          const f = good.slice();
          for (const [i, v] of muts) f[i] = v;
          try {
            const rd = await CheckpointReader.open(spy(f));
            await rd.restoreTo(new Uint8Array(mem.length)).finally(() => rd.close());
          } catch (e) {
            expect(e).toBeInstanceOf(VmkitError);
          }
        },
      ),
      { numRuns: 300 },
    );
    expect(biggest).toBeLessThanOrEqual(good.length);
    expect(coreInfo().resets).toBe(resets);
  });
});

describe('hostile checkpoint files, crafted with valid checksums', () => {
  // Each case re-seals what it changes (header, index and footer checksums),
  // so the structural checks, not the checksums, must catch it.
  const mem = guest(24, 5);
  const biggestRead = { n: 0 };
  const spy = (bytes: Uint8Array): CheckpointSource => ({
    size: bytes.length,
    readSync: (pos, dst) => {
      biggestRead.n = Math.max(biggestRead.n, dst.length);
      if (pos < 0 || pos + dst.length > bytes.length) throw new VmkitError('CORRUPT', 'read past the end');
      dst.set(bytes.subarray(pos, pos + dst.length));
    },
    read: async (pos, dst) => {
      biggestRead.n = Math.max(biggestRead.n, dst.length);
      if (pos < 0 || pos + dst.length > bytes.length) throw new VmkitError('CORRUPT', 'read past the end');
      dst.set(bytes.subarray(pos, pos + dst.length));
    },
    close: async () => {},
  });

  async function parts(): Promise<{ file: Uint8Array; header: CheckpointHeader; footer: CheckpointFooter; blocks: BlockEntry[]; pages: Uint32Array }> {
    const { file } = await save(mem, { blockSize: 8192 });
    const header = decodeHeader(file.subarray(0, HEADER_SIZE));
    const footer = decodeFooter(file.subarray(file.length - FOOTER_SIZE), file.length, header);
    const { blocks, pages } = decodeIndex(file.subarray(footer.indexOffset, footer.indexOffset + footer.indexLength), header, footer);
    return { file, header, footer, blocks, pages };
  }

  /** Rebuilds a file from (possibly altered) parts, every checksum recomputed. */
  function seal(file: Uint8Array, header: CheckpointHeader, footer: CheckpointFooter, blocks: BlockEntry[], pages: Uint32Array, patchFooter: Partial<CheckpointFooter> = {}): Uint8Array {
    const index = encodeIndex(blocks, pages);
    const data = file.subarray(HEADER_SIZE, footer.indexOffset);
    const out = new Uint8Array(HEADER_SIZE + data.length + index.length + FOOTER_SIZE);
    out.set(encodeHeader(header), 0);
    out.set(data, HEADER_SIZE);
    out.set(index, footer.indexOffset);
    const f = { ...footer, indexLength: index.length, indexChecksum: xxh32(index), blockCount: blocks.length, fileLength: out.length, ...patchFooter };
    out.set(encodeFooter(f), out.length - FOOTER_SIZE);
    return out;
  }

  async function rejects(f: Uint8Array, codes: string[]): Promise<void> {
    biggestRead.n = 0;
    let err: unknown;
    try {
      const r = await CheckpointReader.open(spy(f));
      await r.restoreTo(new Uint8Array(Number(r.guestSize) <= mem.length ? mem.length : 0)).finally(() => r.close());
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(VmkitError);
    expect(codes).toContain((err as VmkitError).code);
    expect(biggestRead.n).toBeLessThanOrEqual(f.length);
  }

  it('huge guest, page and block sizes give CORRUPT/LIMIT before any large allocation', async () => {
    const { file, header, footer, blocks, pages } = await parts();
    const sealed = seal(file, header, footer, blocks, pages);
    expect(diffAt(sealed, file)).toBe(-1); // the sealing itself is faithful
    // 2^31 pages declared: the index would be 24 GiB; the footer's length check refuses it first.
    await rejects(seal(file, { ...header, guestSize: 2n ** 31n * 4096n }, footer, blocks, pages), ['CORRUPT']);
    await rejects(seal(file, { ...header, guestSize: 2n ** 52n }, footer, blocks, pages), ['LIMIT']);
    await rejects(seal(file, { ...header, guestSize: 4097n }, footer, blocks, pages), ['CORRUPT']);
    await rejects(seal(file, { ...header, pageSize: 1 << 30 }, footer, blocks, pages), ['CORRUPT']);
    await rejects(seal(file, { ...header, blockSize: 0xffffffff }, footer, blocks, pages), ['CORRUPT']);
    await rejects(seal(file, { ...header, blockSize: 16 }, footer, blocks, pages), ['CORRUPT']);
  });

  it('offsets past the end or into other structures give CORRUPT', async () => {
    const { file, header, footer, blocks, pages } = await parts();
    const big = Number.MAX_SAFE_INTEGER - 4095;
    await rejects(seal(file, header, footer, blocks, pages, { indexOffset: 2 ** 40 }), ['CORRUPT']);
    await rejects(seal(file, header, footer, blocks, pages, { indexOffset: 4096 * 1000 }), ['CORRUPT']);
    await rejects(seal(file, header, footer, blocks, pages, { indexLength: 2 ** 40 }), ['CORRUPT']);
    await rejects(seal(file, header, footer, blocks, pages, { fileLength: big }), ['CORRUPT']);
    await rejects(seal(file, header, footer, blocks, pages, { blockCount: 1 << 30 }), ['CORRUPT']);
    // Blocks: past the index, overlapping, out of order, longer than the block size.
    const b = (i: number, e: Partial<BlockEntry>) => blocks.map((x, j) => (j === i ? { ...x, ...e } : x));
    await rejects(seal(file, header, footer, b(0, { offset: footer.indexOffset }), pages), ['CORRUPT']);
    await rejects(seal(file, header, footer, b(0, { offset: big }), pages), ['CORRUPT']);
    await rejects(seal(file, header, footer, b(1, { offset: blocks[0]!.offset }), pages), ['CORRUPT']);
    await rejects(seal(file, header, footer, b(0, { length: 0xffffffff }), pages), ['CORRUPT']);
    await rejects(seal(file, header, footer, b(0, { length: 0 }), pages), ['CORRUPT']);
    // Pages: past their block, in a block that does not exist, unknown kinds, absent in a full checkpoint.
    const W = PAGE_WORDS;
    const stored = [...Array(mem.length / PS).keys()].find((p) => pages[W * p + 2]! >>> 28 === 3)!;
    const pg = (e: [number, number, number, number?]) => {
      const q = pages.slice();
      q.set(e as readonly number[], W * stored);
      return q;
    };
    const w = pages[W * stored + 2]!;
    await rejects(seal(file, header, footer, blocks, pg([pages[W * stored]!, 0xfffff000, w])), ['CORRUPT']);
    await rejects(seal(file, header, footer, blocks, pg([0xfffffffe, 0, w])), ['CORRUPT']);
    await rejects(seal(file, header, footer, blocks, pg([pages[W * stored]!, pages[W * stored + 1]!, ((7 << 28) | 100) >>> 0])), ['CORRUPT']);
    await rejects(seal(file, header, footer, blocks, pg([pages[W * stored]!, pages[W * stored + 1]!, ((3 << 28) | 0x0fffffff) >>> 0])), ['CORRUPT']);
    await rejects(seal(file, header, footer, blocks, pg([0xffffffff, 0, 0])), ['CORRUPT']);
    // A version 2 block table entry has no checksum: its field must be 0.
    await rejects(seal(file, header, footer, b(0, { checksum: 1 }), pages), ['CORRUPT']);
    // An LZ4 page whose stored bytes are another page's: its checksum differs (INTEGRITY); re-sealed
    // with that record's checksum, it decodes to the wrong length or fails (CORRUPT), never silently.
    const raw = [...Array(mem.length / PS).keys()].find((p) => pages[W * p + 2]! >>> 28 === 2);
    if (raw !== undefined) {
      await rejects(seal(file, header, footer, blocks, pg([pages[W * raw]!, pages[W * raw + 1]!, ((3 << 28) | 200) >>> 0, pages[W * stored + 3]!])), ['INTEGRITY']);
      const at = blocks[pages[W * raw]!]!.offset + pages[W * raw + 1]!;
      const resealed = seal(file, header, footer, blocks, pg([pages[W * raw]!, pages[W * raw + 1]!, ((3 << 28) | 200) >>> 0, xxh32(file.subarray(at, at + 200))]));
      await rejects(resealed, ['CORRUPT']);
      // The same through the one-page read path (a lazy fault), sync and async.
      const one = await CheckpointReader.open(resealed);
      await expect(one.readPage(stored)).rejects.toMatchObject({ code: 'CORRUPT' });
      expect(() => one.readPagesIntoSync(stored, 1, new Uint8Array(PS))).toThrow(expect.objectContaining({ code: 'CORRUPT' }));
      await one.close();
      const oneAsync = await CheckpointReader.open(resealed, { syncReads: false });
      await expect(oneAsync.readPage(stored)).rejects.toMatchObject({ code: 'CORRUPT' });
      await oneAsync.close();
    }
  });

  it('parent chains that loop (A → B → A, A → A) give LIMIT', async () => {
    const a = 'aa'.repeat(16);
    const b = 'bb'.repeat(16);
    const diff = async (id: string, parent: { path: string; id: string }): Promise<Uint8Array> => {
      const sink = memorySink();
      const w = await CheckpointWriter.create(sink, { guestSize: mem.length, blockSize: 8192, id, parent });
      await w.writePages(1, mem.subarray(PS, 2 * PS));
      await w.finish();
      return sink.bytes();
    };
    const fa = await diff(a, { path: 'b.ckpt', id: b });
    const fb = await diff(b, { path: 'a.ckpt', id: a });
    const files: Record<string, Uint8Array> = { 'a.ckpt': fa, 'b.ckpt': fb };
    await expect(CheckpointReader.open(fa, { resolveParent: (p) => files[p] ?? new Uint8Array(0) })).rejects.toMatchObject({ code: 'LIMIT' });
    const self = await diff(a, { path: 'a.ckpt', id: a });
    await expect(CheckpointReader.open(self, { resolveParent: () => self })).rejects.toMatchObject({ code: 'LIMIT' });
  });
});

describe('a checkpoint as the source of the lazy guest memory', () => {
  it('serves LazyGuestMemory reads exactly, each stored block read at most once with a big enough cache', async () => {
    const mem = guest(512, 17);
    const { file, stats } = await save(mem, { blockSize: 65536 });
    const rd = await CheckpointReader.open(file, { cacheBlocks: 64 });
    const lazy = await LazyGuestMemory.open(rd);
    const r = rng(5);
    const dst = new Uint8Array(3 * PS);
    for (let i = 0; i < 200; i++) {
      const at = r() % (mem.length - dst.length);
      await lazy.read(gpa(at), dst);
      expect(diffAt(dst, mem.subarray(at, at + dst.length))).toBe(-1);
    }
    // Every block is read from the file once at most (the reader's cache holds them all).
    expect(rd.stats.blockReads).toBeLessThanOrEqual(stats.blocks);
    lazy.close();
    await rd.close();
  });
});
