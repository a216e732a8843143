// The staging buffer of a checkpoint writer (docs/checkpoint-format.md).
//
// The host copies a window of guest pages into core memory and appends them:
// a zero page goes to the index only; another is LZ4-compressed straight into
// the block buffer, or copied raw when compression saves less than 1/16 of a
// page. Before each non-zero page the stager checks that the worst case
// (lz4CompressBound(pageSize)) still fits; when it does not, it stops and
// reports the block full, so the host writes the block with ONE write and
// resets the stager. Per page it reports (kind, offset in block, length,
// xxHash32 of the stored record), which the host records in the
// checkpoint's page index: the record's hash lets a reader check one page
// without reading the rest of its block.
//
// stagingExtract is the reverse for a reader: it decodes a run of pages of
// one block (or of a span of it), checking every entry against the span's
// length and, when asked, every record against its hash.

import { E_ARG, E_CORRUPT, E_HANDLE, E_INTEGRITY, E_LIMIT, E_NO_MEMORY } from "./_errors";
import { tryAlloc } from "./_memory";
import { lz4Compress, lz4CompressBound, lz4CompressDense, lz4Decompress, xxh32 } from "./lz4";
import { isZeroRange } from "./_zero";

/** Page kinds in the entries the stager reports (and the checkpoint index stores). */
export const PAGE_ABSENT: u32 = 0;
export const PAGE_ZERO: u32 = 1;
export const PAGE_RAW: u32 = 2;
export const PAGE_LZ4: u32 = 3;

/** Codecs a stager can use. */
export const CODEC_NONE: u32 = 0;
export const CODEC_LZ4: u32 = 1;
/** LZ4 with the denser, slower page search (lz4CompressDense; lz4Compress for 64 KiB pages); records are LZ4 blocks as with CODEC_LZ4. */
export const CODEC_LZ4_DENSE: u32 = 2;

/** Bytes of one page entry: kind, offset, length, xxHash32 of the record (u32 each). */
export const STAGING_ENTRY: u32 = 16;

const MAX_STAGERS: i32 = 16;
const MAX_BLOCK: u32 = 64 << 20;

const sBuf = new StaticArray<usize>(MAX_STAGERS);
const sCap = new StaticArray<u32>(MAX_STAGERS);
const sUsed = new StaticArray<u32>(MAX_STAGERS);
const sPage = new StaticArray<u32>(MAX_STAGERS);
const sCodec = new StaticArray<u32>(MAX_STAGERS);

function validPageSize(p: u32): bool {
  return p >= 512 && p <= 65536 && (p & (p - 1)) == 0;
}

function live(h: i32): bool {
  return h >= 0 && h < MAX_STAGERS && unchecked(sBuf[h]) != 0;
}

/**
 * Opens a stager with a block buffer of `blockSize` bytes for pages of
 * `pageSize` bytes (a power of two in [512, 65536]) and `codec` (0 none,
 * 1 LZ4, 2 LZ4 with the dense search). Returns a handle, or E_ARG (sizes: the block must hold at least
 * lz4CompressBound(pageSize)), E_LIMIT (16 open).
 */
export function stagingOpen(blockSize: u32, pageSize: u32, codec: u32): i32 {
  if (!validPageSize(pageSize) || codec > CODEC_LZ4_DENSE) return E_ARG;
  if (blockSize < lz4CompressBound(pageSize) || blockSize > MAX_BLOCK) return E_ARG;
  let h: i32 = -1;
  for (let i = 0; i < MAX_STAGERS; i++) {
    if (unchecked(sBuf[i]) == 0) {
      h = i;
      break;
    }
  }
  if (h < 0) return E_LIMIT;
  const p = tryAlloc(blockSize);
  if (p == 0) return E_NO_MEMORY;
  unchecked((sBuf[h] = p));
  unchecked((sCap[h] = blockSize));
  unchecked((sUsed[h] = 0));
  unchecked((sPage[h] = pageSize));
  unchecked((sCodec[h] = codec));
  return h;
}

/** Releases a stager. Returns 0 or E_HANDLE. */
export function stagingClose(h: i32): i32 {
  if (!live(h)) return E_HANDLE;
  heap.free(unchecked(sBuf[h]));
  unchecked((sBuf[h] = 0));
  return 0;
}

/** Pointer to the stager's block bytes (0 for a bad handle). */
export function stagingBuffer(h: i32): usize {
  return live(h) ? unchecked(sBuf[h]) : 0;
}

/** Bytes of the block filled so far, or E_HANDLE. */
export function stagingUsed(h: i32): i32 {
  return live(h) ? <i32>unchecked(sUsed[h]) : E_HANDLE;
}

/** Empties the block (after the host wrote it). Returns 0 or E_HANDLE. */
export function stagingReset(h: i32): i32 {
  if (!live(h)) return E_HANDLE;
  unchecked((sUsed[h] = 0));
  return 0;
}

/** 1 when a non-zero page might not fit any more (the host should write the block), 0 if not, or E_HANDLE. */
export function stagingFull(h: i32): i32 {
  if (!live(h)) return E_HANDLE;
  return unchecked(sCap[h]) - unchecked(sUsed[h]) < lz4CompressBound(unchecked(sPage[h])) ? 1 : 0;
}

/**
 * Appends up to `count` pages from `src` (count * pageSize bytes). For each
 * page taken it writes four u32 to `entries`: kind (1 zero, 2 raw, 3 LZ4),
 * offset in the block, stored length and the xxHash32 (seed 0) of the stored
 * bytes (0 for a zero page). Returns the number of pages taken: fewer than
 * `count` means the block is full (write it, reset, append the rest).
 * E_HANDLE for a bad handle.
 * unsafe: the host guarantees src and entries hold count pages / count * 16 bytes.
 */
export function stagingAppend(h: i32, src: usize, count: u32, entries: usize): i32 {
  if (!live(h)) return E_HANDLE;
  const buf = unchecked(sBuf[h]);
  const cap = unchecked(sCap[h]);
  const ps = unchecked(sPage[h]);
  const codec = unchecked(sCodec[h]);
  const bound = lz4CompressBound(ps);
  // Compression "pays" when it saves at least 1/16 of a page; the compressor
  // gives up (E_OUTPUT_TOO_SMALL) as soon as it would exceed that.
  const limit = ps - (ps >> 4);
  let used = unchecked(sUsed[h]);
  let i: u32 = 0;
  for (; i < count; i++) {
    const p = src + <usize>i * ps;
    const e = entries + <usize>i * STAGING_ENTRY;
    if (isZeroRange(p, ps)) {
      store<u32>(e, PAGE_ZERO);
      store<u32>(e, 0, 4);
      store<u32>(e, 0, 8);
      store<u32>(e, 0, 12);
      continue;
    }
    if (cap - used < bound) break; // full
    let n: i32 = -1;
    if (codec == CODEC_LZ4) n = lz4Compress(p, ps, buf + used, limit);
    else if (codec == CODEC_LZ4_DENSE) n = ps <= 65535 ? lz4CompressDense(p, ps, buf + used, limit) : lz4Compress(p, ps, buf + used, limit); // 64 KiB pages: the fast search
    if (n > 0) {
      store<u32>(e, PAGE_LZ4);
      store<u32>(e, used, 4);
      store<u32>(e, <u32>n, 8);
      // Hashed while the record is still in cache.
      store<u32>(e, xxh32(buf + used, <u32>n, 0), 12);
      used += <u32>n;
    } else {
      memory.copy(buf + used, p, ps);
      store<u32>(e, PAGE_RAW);
      store<u32>(e, used, 4);
      store<u32>(e, ps, 8);
      store<u32>(e, xxh32(buf + used, ps, 0), 12);
      used += ps;
    }
  }
  unchecked((sUsed[h] = used));
  return <i32>i;
}

/**
 * Decodes `count` pages of `pageSize` bytes into `dst` from `blockLen` bytes
 * at `block` (a whole block or a span of one), as described by `entries`
 * (four u32 each: kind, offset, length, xxHash32; kinds 1 zero, 2 raw,
 * 3 LZ4). Every entry is checked against the span and the page size; with
 * `verify` != 0 every stored record is also checked against its hash first.
 * Returns `count`, or E_CORRUPT / E_INTEGRITY naming no page (the host
 * reports which run), or E_ARG.
 * unsafe: the host guarantees block, entries and dst hold blockLen bytes,
 * count * 16 bytes and count * pageSize bytes.
 */
export function stagingExtract(block: usize, blockLen: u32, entries: usize, count: u32, pageSize: u32, dst: usize, verify: u32): i32 {
  if (!validPageSize(pageSize)) return E_ARG;
  for (let i: u32 = 0; i < count; i++) {
    const e = entries + <usize>i * STAGING_ENTRY;
    const kind = load<u32>(e);
    const off = load<u32>(e, 4);
    const len = load<u32>(e, 8);
    const d = dst + <usize>i * pageSize;
    if (kind == PAGE_ZERO) {
      memory.fill(d, 0, pageSize);
      continue;
    }
    if (off > blockLen || len > blockLen - off) return E_CORRUPT;
    if (verify != 0 && xxh32(block + off, len, 0) != load<u32>(e, 12)) return E_INTEGRITY;
    if (kind == PAGE_RAW) {
      if (len != pageSize) return E_CORRUPT;
      memory.copy(d, block + off, pageSize);
    } else if (kind == PAGE_LZ4) {
      if (lz4Decompress(block + off, len, d, pageSize) != <i32>pageSize) return E_CORRUPT;
    } else {
      return E_CORRUPT;
    }
  }
  return <i32>count;
}

/** Stages a zero, a patterned and a random page, then extracts them again. */
export function stagingSelfCheck(): i32 {
  const ps: u32 = 4096;
  const h = stagingOpen(lz4CompressBound(ps) * 2, ps, CODEC_LZ4);
  if (h < 0) return 1;
  const src = heap.alloc(ps * 4);
  const out = heap.alloc(ps * 4);
  const ent = heap.alloc(4 * STAGING_ENTRY);
  memory.fill(src, 0, ps);
  let x: u32 = 99;
  for (let i: u32 = 0; i < ps; i++) {
    store<u8>(src + ps + i, <u8>(i % 13));
    x = x * 1103515245 + 12345;
    store<u8>(src + 2 * ps + i, <u8>(x >> 16));
    store<u8>(src + 3 * ps + i, <u8>(x >> 8));
  }
  let r: i32 = 0;
  const n = stagingAppend(h, src, 4, ent);
  // Block of 2 bounds: zero (index only), pattern (small), random (raw), then full.
  const buf = stagingBuffer(h);
  const used = <u32>stagingUsed(h);
  if (n != 3 || load<u32>(ent) != PAGE_ZERO || load<u32>(ent, 16) != PAGE_LZ4 || load<u32>(ent, 32) != PAGE_RAW) r = 2;
  else if (stagingFull(h) != 1) r = 3;
  else if (load<u32>(ent, 28) != xxh32(buf + load<u32>(ent, 20), load<u32>(ent, 24), 0)) r = 7;
  else if (stagingExtract(buf, used, ent, 3, ps, out, 1) != 3) r = 4;
  else if (memory.compare(src, out, ps * 3) != 0) r = 5;
  else {
    store<u8>(buf + load<u32>(ent, 36), load<u8>(buf + load<u32>(ent, 36)) ^ 1); // a flipped bit in the raw record
    if (stagingExtract(buf, used, ent, 3, ps, out, 1) != E_INTEGRITY) r = 8;
    else if (stagingExtract(buf, used, ent, 3, ps, out, 0) != 3) r = 9; // unchecked: decodes regardless
    else {
      store<u32>(ent, 0x7fffffff, 20); // offset past the block
      if (stagingExtract(buf, used, ent, 3, ps, out, 0) != E_CORRUPT) r = 6;
    }
  }
  heap.free(src);
  heap.free(out);
  heap.free(ent);
  stagingClose(h);
  return r;
}
