// Copy planning for live backup and consolidation (docs/abi.md, "backup plan").
//
// The host hands the core the allocation map of a disk chain (as a block-status
// query reports it: data, zero or unallocated, with the depth of the layer that
// answered) and the ranges the mirror driver has written since the job began.
// The core answers with the extents to copy: what is allocated above the base
// layer, minus what the mirror already wrote, split at chunk boundaries. It also
// splits a buffer read from the source into zero and data runs, so zero runs
// become zero writes (zero clusters) on the target instead of written data.
//
// Extent records are 24 bytes: three little-endian u64 (start, length, info).
//   input info (plan):  bits 0..31 depth (0 = top layer), bits 32..33 kind
//                       (0 data, 1 zero, 2 unallocated)
//   output info:        0 = copy data, 1 = write zeroes
// Range records (mirrored ranges, subtract output) are 16 bytes: start, length.

import { isZeroRange } from "./_zero";
import { E_ARG, E_CORRUPT, E_OUTPUT_TOO_SMALL } from "./_errors";

/** Input kinds (bits 32..33 of info). */
const PLAN_KIND_DATA: u64 = 0;
const PLAN_KIND_ZERO: u64 = 1;
const PLAN_KIND_UNALLOCATED: u64 = 2;
/** Output ops. */
const PLAN_OP_COPY: u64 = 0;
const PLAN_OP_ZERO: u64 = 1;

const U64_MAX: u64 = 0xffff_ffff_ffff_ffff;

// Emits one output extent; merges with the previous one when contiguous, of
// the same op and inside the same chunk. Returns the new count or an error.
// unsafe: writes at outPtr + 24*n only after checking n < cap.
function emit(outPtr: usize, n: i32, cap: i32, start: u64, len: u64, op: u64, chunk: u64): i32 {
  // Split at multiples of chunk so no extent crosses a chunk boundary.
  while (len > 0) {
    const next = (start / chunk + 1) * chunk; // next boundary above start (may wrap at 2^64)
    let piece = len;
    if (next > start && next - start < len) piece = next - start;
    if (n > 0) {
      const p = outPtr + <usize>(n - 1) * 24;
      const ps = load<u64>(p);
      const pl = load<u64>(p, 8);
      const pop = load<u64>(p, 16);
      if (pop == op && ps + pl == start && ps / chunk == start / chunk) {
        store<u64>(p, pl + piece, 8);
        start += piece;
        len -= piece;
        continue;
      }
    }
    if (n >= cap) return E_OUTPUT_TOO_SMALL;
    const q = outPtr + <usize>n * 24;
    store<u64>(q, start);
    store<u64>(q, piece, 8);
    store<u64>(q, op, 16);
    n++;
    start += piece;
    len -= piece;
  }
  return n;
}

/**
 * Plans the copy of everything allocated above the base layer.
 *
 * `inPtr` holds `n` extent records sorted by start and not overlapping (a
 * block-status walk). An extent is copied when its kind is data or zero and its
 * depth is below `baseDepth` (layers 0..baseDepth-1 are "above the base"; pass
 * 0xffffffff to copy every allocated extent). Data extents become copy ops,
 * zero extents zero ops. Adjacent ops of the same kind merge; no output extent
 * crosses a multiple of `chunk` (non-zero, a multiple of 512).
 *
 * Returns the number of records written to `outPtr` (capacity `cap`), E_ARG for
 * a bad chunk or an extent that wraps past 2^64, E_CORRUPT for unsorted or
 * overlapping input, E_OUTPUT_TOO_SMALL when `cap` is too small (a safe
 * capacity is the sum over inputs of length/chunk + 2).
 */
export function backupPlanExtents(inPtr: usize, n: i32, baseDepth: u32, chunk: u64, outPtr: usize, cap: i32): i32 {
  if (n < 0 || cap < 0 || chunk == 0 || chunk % 512 != 0) return E_ARG;
  let out: i32 = 0;
  let prevEnd: u64 = 0;
  for (let i: i32 = 0; i < n; i++) {
    // unsafe: the host allocated n records at inPtr.
    const p = inPtr + <usize>i * 24;
    const start = load<u64>(p);
    const len = load<u64>(p, 8);
    const info = load<u64>(p, 16);
    if (len == 0) continue;
    if (len > U64_MAX - start) return E_ARG;
    if (i > 0 && start < prevEnd) return E_CORRUPT;
    prevEnd = start + len;
    const depth = <u32>(info & 0xffff_ffff);
    const kind = (info >> 32) & 3;
    if (kind == PLAN_KIND_UNALLOCATED || kind == 3) continue;
    if (depth >= baseDepth) continue;
    const r = emit(outPtr, out, cap, start, len, kind == PLAN_KIND_ZERO ? PLAN_OP_ZERO : PLAN_OP_COPY, chunk);
    if (r < 0) return r;
    out = r;
  }
  return out;
}

/**
 * The parts of [start, start+len) not covered by any of the `m` ranges at
 * `mirPtr` (16-byte records sorted by start; they may overlap or touch).
 * Writes 16-byte range records to `outPtr`; returns their count, E_ARG for a
 * range that wraps past 2^64, E_CORRUPT for unsorted ranges,
 * E_OUTPUT_TOO_SMALL when `cap` (at most m + 1 needed) is too small.
 */
export function backupPlanSubtract(start: u64, len: u64, mirPtr: usize, m: i32, outPtr: usize, cap: i32): i32 {
  if (m < 0 || cap < 0 || len > U64_MAX - start) return E_ARG;
  const end = start + len;
  let cur = start;
  let out: i32 = 0;
  let prevStart: u64 = 0;
  for (let i: i32 = 0; i < m && cur < end; i++) {
    // unsafe: the host allocated m records at mirPtr.
    const p = mirPtr + <usize>i * 16;
    const ms = load<u64>(p);
    const ml = load<u64>(p, 8);
    if (ml > U64_MAX - ms) return E_ARG;
    if (i > 0 && ms < prevStart) return E_CORRUPT;
    prevStart = ms;
    const me = ms + ml;
    if (ml == 0 || me <= cur) continue;
    if (ms >= end) break;
    if (ms > cur) {
      if (out >= cap) return E_OUTPUT_TOO_SMALL;
      const q = outPtr + <usize>out * 16;
      store<u64>(q, cur);
      store<u64>(q, ms - cur, 8);
      out++;
    }
    if (me > cur) cur = me;
  }
  if (cur < end) {
    if (out >= cap) return E_OUTPUT_TOO_SMALL;
    const q = outPtr + <usize>out * 16;
    store<u64>(q, cur);
    store<u64>(q, end - cur, 8);
    out++;
  }
  return out;
}

// True when the `size` bytes at p are all zero.
// unsafe: the caller checked p .. p+size lies in the host's buffer.
@inline function granuleIsZero(p: usize, size: usize): bool {
  return isZeroRange(p, size);
}

/**
 * Splits the `len` bytes at `buf` into runs of all-zero and data granules of
 * `granule` bytes (a multiple of 16; the last granule may be short and is then
 * checked byte by byte). Writes extent records (start relative to buf, length,
 * op 0 data / 1 zero) to `outPtr`, adjacent granules of the same kind merged.
 * Returns the count, E_ARG for a bad granule or length, E_OUTPUT_TOO_SMALL.
 */
export function backupPlanZeroRuns(buf: usize, len: i32, granule: i32, outPtr: usize, cap: i32): i32 {
  if (len < 0 || granule <= 0 || granule % 16 != 0 || cap < 0) return E_ARG;
  let out: i32 = 0;
  let o: i32 = 0;
  while (o < len) {
    const g = len - o < granule ? len - o : granule;
    let zero: bool;
    if (g % 16 == 0) {
      zero = granuleIsZero(buf + <usize>o, <usize>g);
    } else {
      zero = true;
      for (let k: i32 = 0; k < g; k++) {
        // unsafe: o + k < len, inside the host's buffer.
        if (load<u8>(buf + <usize>(o + k)) != 0) {
          zero = false;
          break;
        }
      }
    }
    const op: u64 = zero ? PLAN_OP_ZERO : PLAN_OP_COPY;
    if (out > 0 && load<u64>(outPtr + <usize>(out - 1) * 24, 16) == op) {
      const p = outPtr + <usize>(out - 1) * 24;
      store<u64>(p, load<u64>(p, 8) + <u64>g, 8);
    } else {
      if (out >= cap) return E_OUTPUT_TOO_SMALL;
      const q = outPtr + <usize>out * 24;
      store<u64>(q, <u64>o);
      store<u64>(q, <u64>g, 8);
      store<u64>(q, op, 16);
      out++;
    }
    o += g;
  }
  return out;
}

// ---- plans from a qcow2 layer's L2 tables -------------------------------------
//
// The allocation map of the top layer in one pass over its L2 tables, instead of
// one block-status query per extent: the host reads each table (its cache, dirty
// tables included) and the core decodes its entries straight into copy ops that
// carry the host offset of the data, so the copy reads the layer's file directly
// and in long runs wherever its clusters lie back to back.
//
// Op records are 32 bytes: four little-endian u64 (start, length, host, op).
//   op 0: copy data from host offset `host` of the layer's file
//   op 1: write zeroes
//   op 2: copy through the chain (compressed clusters, partly allocated
//         subclusters of extended L2 entries): the host reads the guest range

// The entry bits, as bindings/disk/formats/qcow2/metadata.ts (decodeL2, the per-entry decoder of
// the device's lookups) reads them in 32-bit halves; this table-at-a-time decoder stays in the
// core so a consolidation decodes each table in one call. test/qcow2-l2-decoders.test.ts checks
// that the two classify random tables alike.
const L2_COPIED: u64 = <u64>1 << 63;
const L2_COMPRESSED: u64 = <u64>1 << 62;
const L2_HOST_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_ZERO: u64 = 1;
const MAPPED_HOST: u64 = 0;
const MAPPED_ZERO: u64 = 1;
const MAPPED_CHAIN: u64 = 2;

// Appends one op; merges with the previous one when guest-contiguous, of the same op, host-
// contiguous for op 0, and inside the same chunk. Splits at multiples of chunk.
// unsafe: writes at outPtr + 32*n only after checking n < cap.
function emitMapped(outPtr: usize, n: i32, cap: i32, start: u64, len: u64, host: u64, op: u64, chunk: u64): i32 {
  while (len > 0) {
    const next = (start / chunk + 1) * chunk;
    let piece = len;
    if (next > start && next - start < len) piece = next - start;
    if (n > 0) {
      const p = outPtr + <usize>(n - 1) * 32;
      const ps = load<u64>(p);
      const pl = load<u64>(p, 8);
      const ph = load<u64>(p, 16);
      const pop = load<u64>(p, 24);
      if (pop == op && ps + pl == start && ps / chunk == start / chunk && (op != MAPPED_HOST || ph + pl == host)) {
        store<u64>(p, pl + piece, 8);
        start += piece;
        host += op == MAPPED_HOST ? piece : 0;
        len -= piece;
        continue;
      }
    }
    if (n >= cap) return E_OUTPUT_TOO_SMALL;
    const q = outPtr + <usize>n * 32;
    store<u64>(q, start);
    store<u64>(q, piece, 8);
    store<u64>(q, op == MAPPED_HOST ? host : 0, 16);
    store<u64>(q, op, 24);
    n++;
    start += piece;
    host += op == MAPPED_HOST ? piece : 0;
    len -= piece;
  }
  return n;
}

// Big-endian u64 at p.
// unsafe: the caller checked p .. p+8 lies in the host's table.
@inline function loadBE64(p: usize): u64 {
  return bswap<u64>(load<u64>(p));
}

/**
 * Decodes one qcow2 L2 table into copy ops for the guest clusters it maps
 * (those allocated in this layer: data, zero, or compressed; unallocated
 * entries defer to the backing file and produce nothing), appended to the `n`
 * op records already at `outPtr` (32-byte records, see above; an op merges
 * with the last one when it continues it, so call in guest order).
 *
 * `table` holds `entries` entries (8 bytes, or 16 with `extL2` ≠ 0) for the
 * guest clusters from `guestBase` on, clusters of 2^`clusterBits` bytes; ops
 * stop at `diskSize` and never cross a multiple of `chunk` (non-zero, multiple
 * of 512). Returns the new count, E_ARG for bad arguments, E_CORRUPT for a
 * data cluster whose host offset is not cluster aligned, E_OUTPUT_TOO_SMALL
 * (n + entries × (cluster/chunk + 1) records always suffice).
 */
export function backupPlanL2(
  table: usize,
  entries: i32,
  extL2: i32,
  clusterBits: i32,
  guestBase: u64,
  diskSize: u64,
  chunk: u64,
  outPtr: usize,
  n: i32,
  cap: i32,
): i32 {
  if (entries < 0 || n < 0 || cap < n || clusterBits < 9 || clusterBits > 21 || chunk == 0 || chunk % 512 != 0) return E_ARG;
  const cs: u64 = <u64>1 << <u64>clusterBits;
  const es: usize = extL2 != 0 ? 16 : 8;
  for (let i: i32 = 0; i < entries; i++) {
    const start = guestBase + <u64>i * cs;
    if (start >= diskSize) break;
    const len = diskSize - start < cs ? diskSize - start : cs;
    // unsafe: the host passed `entries` entries of es bytes at table.
    const e = loadBE64(table + <usize>i * es);
    let op: u64 = U64_MAX;
    let host: u64 = 0;
    if (e & L2_COMPRESSED) {
      op = MAPPED_CHAIN;
    } else {
      host = e & L2_HOST_MASK;
      if (host != 0 && (host & (cs - 1)) != 0) return E_CORRUPT;
      if (extL2 != 0) {
        // unsafe: as above, the bitmap is the second half of the 16-byte entry.
        const bm = loadBE64(table + <usize>i * es + 8);
        const alloc = <u32>(bm & 0xffff_ffff);
        const zeroes = <u32>(bm >> 32);
        if (alloc == 0 && zeroes == 0) continue;
        if (alloc == 0xffff_ffff && host != 0) op = MAPPED_HOST;
        else if (zeroes == 0xffff_ffff) op = MAPPED_ZERO;
        else op = MAPPED_CHAIN;
      } else if (e & L2_ZERO) {
        op = MAPPED_ZERO;
      } else if (host != 0) {
        op = MAPPED_HOST;
      } else {
        continue; // unallocated: the backing file answers
      }
    }
    const r = emitMapped(outPtr, n, cap, start, len, host, op, chunk);
    if (r < 0) return r;
    n = r;
  }
  return n;
}

// ---- self-check -------------------------------------------------------------

function put3(p: usize, i: i32, a: u64, b: u64, c: u64): void {
  const q = p + <usize>i * 24;
  store<u64>(q, a);
  store<u64>(q, b, 8);
  store<u64>(q, c, 16);
}

function is3(p: usize, i: i32, a: u64, b: u64, c: u64): bool {
  const q = p + <usize>i * 24;
  return load<u64>(q) == a && load<u64>(q, 8) == b && load<u64>(q, 16) == c;
}

/** Internal checks; 0 = pass. Allocates its own scratch memory. */
export function backupplanSelfCheck(): i32 {
  const inp = heap.alloc(24 * 8);
  const out = heap.alloc(24 * 16);
  let r: i32 = 0;
  // Plan: data depth 0 [0,4096), zero depth 0 [4096,8192), data depth 1 (base)
  // [8192,12288), unallocated [12288,16384), data depth 0 [16384, 16384+200000).
  put3(inp, 0, 0, 4096, 0);
  put3(inp, 1, 4096, 4096, (<u64>1 << 32) | 0);
  put3(inp, 2, 8192, 4096, 1);
  put3(inp, 3, 12288, 4096, (<u64>2 << 32) | 5);
  put3(inp, 4, 16384, 200000, 0);
  let n = backupPlanExtents(inp, 5, 1, 65536, out, 16);
  if (n != 6) r = 1;
  else if (!is3(out, 0, 0, 4096, 0) || !is3(out, 1, 4096, 4096, 1)) r = 2;
  else if (!is3(out, 2, 16384, 65536 - 16384, 0) || !is3(out, 3, 65536, 65536, 0)) r = 3;
  else if (!is3(out, 4, 131072, 65536, 0) || !is3(out, 5, 196608, 16384 + 200000 - 196608, 0)) r = 4;
  // baseDepth 2 takes the depth-1 extent too.
  if (r == 0) {
    n = backupPlanExtents(inp, 3, 2, 65536, out, 16);
    if (n != 3 || !is3(out, 2, 8192, 4096, 0)) r = 5;
  }
  // Too small an output, bad chunk, overlapping input.
  if (r == 0 && backupPlanExtents(inp, 5, 1, 65536, out, 2) != E_OUTPUT_TOO_SMALL) r = 6;
  if (r == 0 && backupPlanExtents(inp, 5, 1, 100, out, 16) != E_ARG) r = 7;
  if (r == 0) {
    put3(inp, 1, 100, 4096, 0);
    if (backupPlanExtents(inp, 2, 1, 65536, out, 16) != E_CORRUPT) r = 8;
  }
  // Subtract [10,20) and [15,40) and [60,70) from [0,100): [0,10) [40,60) [70,100).
  if (r == 0) {
    store<u64>(inp, 10);
    store<u64>(inp, 10, 8);
    store<u64>(inp, 15, 16);
    store<u64>(inp, 25, 24);
    store<u64>(inp, 60, 32);
    store<u64>(inp, 10, 40);
    n = backupPlanSubtract(0, 100, inp, 3, out, 8);
    if (n != 3) r = 9;
    else if (load<u64>(out) != 0 || load<u64>(out, 8) != 10 || load<u64>(out, 16) != 40 || load<u64>(out, 24) != 20) r = 10;
    else if (load<u64>(out, 32) != 70 || load<u64>(out, 40) != 30) r = 11;
    if (r == 0 && backupPlanSubtract(12, 20, inp, 3, out, 8) != 0) r = 12;
  }
  // Zero runs: 64 zero bytes, 16 data, 48 zero, 5-byte zero tail → zero/data/zero merged.
  if (r == 0) {
    const b = heap.alloc(133);
    memory.fill(b, 0, 133);
    store<u8>(b + 70, 1);
    n = backupPlanZeroRuns(b, 133, 16, out, 8);
    if (n != 3 || !is3(out, 0, 0, 64, 1) || !is3(out, 1, 64, 16, 0) || !is3(out, 2, 80, 53, 1)) r = 13;
    heap.free(b);
  }
  // L2 decode: standard entries [data@0x30000, data@0x40000 (contiguous), zero, unallocated,
  // data@0x90000, compressed] → host op [0,128K)@0x30000, zero [128K,192K), host [256K,320K)@0x90000,
  // chain [320K,384K). A second call continues the last op when it follows on.
  if (r == 0) {
    const t = heap.alloc(8 * 6);
    store<u64>(t, bswap<u64>(L2_COPIED | 0x30000));
    store<u64>(t + 8, bswap<u64>(L2_COPIED | 0x40000));
    store<u64>(t + 16, bswap<u64>(L2_ZERO));
    store<u64>(t + 24, 0);
    store<u64>(t + 32, bswap<u64>(L2_COPIED | 0x90000));
    store<u64>(t + 40, bswap<u64>(L2_COMPRESSED | 0x1234));
    const o = heap.alloc(32 * 8);
    n = backupPlanL2(t, 6, 0, 16, 0, 1 << 30, 1 << 20, o, 0, 8);
    if (n != 4) r = 14;
    else if (load<u64>(o) != 0 || load<u64>(o, 8) != 131072 || load<u64>(o, 16) != 0x30000 || load<u64>(o, 24) != 0) r = 15;
    else if (load<u64>(o + 32) != 131072 || load<u64>(o + 32, 24) != 1) r = 16;
    else if (load<u64>(o + 64) != 262144 || load<u64>(o + 64, 16) != 0x90000 || load<u64>(o + 96, 24) != 2) r = 17;
    // Continuing at guest 384K: a data cluster right after the compressed one is a new op;
    // a misaligned host offset is corrupt; a short disk clips the last cluster.
    if (r == 0) {
      store<u64>(t, bswap<u64>(L2_COPIED | 0xa0000));
      n = backupPlanL2(t, 1, 0, 16, 393216, 393216 + 1000, 1 << 20, o, 4, 8);
      if (n != 5 || load<u64>(o + 128, 8) != 1000 || load<u64>(o + 128, 16) != 0xa0000) r = 18;
      store<u64>(t, bswap<u64>(L2_COPIED | 0xa0200));
      if (r == 0 && backupPlanL2(t, 1, 0, 16, 0, 1 << 30, 1 << 20, o, 0, 8) != E_CORRUPT) r = 19;
    }
    heap.free(t);
    heap.free(o);
  }
  heap.free(inp);
  heap.free(out);
  return r;
}
