// Sector work for the block layer (docs/abi.md, "sectors").
//
// Three primitives the disk formats build on:
//  - zero detection over granules (a sector, a subcluster, a cluster) so that
//    runs of zeroes become zero clusters instead of written data;
//  - a copy between two buffers that detects zero granules in the same pass;
//  - scanning an allocation bitmap into runs of equal bits.
// With SIMD enabled (the release and debug builds) the hot loops use 128-bit
// loads; the nosimd target compiles the scalar 64-bit paths instead
// (ASC_FEATURE_SIMD is a compile-time constant, so only one path is emitted).
//
// Run records are 12 bytes: three little-endian u32 (start bit, length, value).

import { E_ARG, E_OUTPUT_TOO_SMALL } from "./_errors";
import { isZeroRange } from "./_zero";


// Copies n bytes from src to dst and reports whether they were all zero.
// unsafe: both ranges lie in memory; they may not overlap partially (the host
// passes distinct buffers).
function copyRange(dst: usize, src: usize, n: usize): bool {
  let i: usize = 0;
  let nz: bool = false;
  if (ASC_FEATURE_SIMD) {
    while (i + 64 <= n) {
      const a = v128.load(src + i);
      const b = v128.load(src + i, 16);
      const c = v128.load(src + i, 32);
      const d = v128.load(src + i, 48);
      v128.store(dst + i, a);
      v128.store(dst + i, b, 16);
      v128.store(dst + i, c, 32);
      v128.store(dst + i, d, 48);
      if (!nz) nz = v128.any_true(v128.or(v128.or(a, b), v128.or(c, d)));
      i += 64;
    }
    while (i + 16 <= n) {
      const a = v128.load(src + i);
      v128.store(dst + i, a);
      if (!nz) nz = v128.any_true(a);
      i += 16;
    }
  } else {
    while (i + 8 <= n) {
      const a = load<u64>(src + i);
      store<u64>(dst + i, a);
      if (a != 0) nz = true;
      i += 8;
    }
  }
  while (i < n) {
    const a = load<u8>(src + i);
    store<u8>(dst + i, a);
    if (a != 0) nz = true;
    i++;
  }
  return !nz;
}

/**
 * Marks which granules of `len` bytes at `buf` are all zero: bit g of the
 * bitmap at `out` (LSB first within each byte) is 1 when granule g is zero. A
 * short last granule is checked too. `granule` is a non-zero multiple of 16.
 * The bitmap needs ceil(ceil(len / granule) / 8) bytes; they are all written.
 * Returns the number of zero granules, or E_ARG.
 */
export function sectorsZeroMap(buf: usize, len: u32, granule: u32, out: usize): i32 {
  return zeroGranules(0, buf, len, granule, out, false);
}

/**
 * Copies `len` bytes from `src` to `dst` and, in the same pass, marks the zero
 * granules in the bitmap at `out` as {@link sectorsZeroMap} does. Returns the
 * number of zero granules, or E_ARG.
 */
export function sectorsCopyZero(dst: usize, src: usize, len: u32, granule: u32, out: usize): i32 {
  return zeroGranules(dst, src, len, granule, out, true);
}

// The loop of both exports: marks the zero granules of the `len` bytes at
// `src` in the bitmap at `out`, copying each granule to `dst` on the way when
// `copy`. Inlined with a constant `copy`, so each export keeps its own loop
// without a branch per granule.
@inline function zeroGranules(dst: usize, src: usize, len: u32, granule: u32, out: usize, copy: bool): i32 {
  if (granule == 0 || granule % 16 != 0) return E_ARG;
  const n = (len + granule - 1) / granule;
  memory.fill(out, 0, (n + 7) >> 3);
  let zeros: i32 = 0;
  for (let g: u32 = 0; g < n; g++) {
    const off = g * granule;
    const m = min(granule, len - off);
    // unsafe: off + m <= len, inside the host's buffer(s).
    if (copy ? copyRange(dst + off, src + off, m) : isZeroRange(src + off, m)) {
      setBit(out, g);
      zeros++;
    }
  }
  return zeros;
}

// Sets bit i of the bitmap at p.
// unsafe: the caller sized the bitmap for bit i.
@inline function setBit(p: usize, i: u32): void {
  const q = p + (i >> 3);
  store<u8>(q, <u8>(<u32>load<u8>(q) | (<u32>1 << (i & 7))));
}

// Bit i of the bitmap at p (LSB first within each byte).
function bitAt(p: usize, i: u32): u32 {
  return (load<u8>(p + (i >> 3)) >> (i & 7)) & 1;
}

/**
 * Scans bits [start, start + nbits) of the bitmap at `bitmap` (LSB first
 * within each byte) into runs of equal bits: records of three u32 (start,
 * length, value) at `out`, at most `cap` of them. Whole 64-bit words of equal
 * bits are skipped at once, so sparse maps scan fast. Returns the number of
 * runs, E_ARG (start + nbits overflows) or E_OUTPUT_TOO_SMALL.
 */
export function sectorsBitmapRuns(bitmap: usize, start: u32, nbits: u32, out: usize, cap: i32): i32 {
  if (cap < 0) return E_ARG;
  const end64 = <u64>start + <u64>nbits;
  if (end64 > 0xffff_ffff) return E_ARG;
  const end = <u32>end64;
  let n: i32 = 0;
  let pos = start;
  while (pos < end) {
    const v = bitAt(bitmap, pos);
    let q = pos + 1;
    // Finish the current byte bit by bit, then skip whole bytes/words.
    while (q < end && (q & 7) != 0 && bitAt(bitmap, q) == v) q++;
    if (q < end && (q & 7) == 0) {
      const fill8: u8 = v ? 0xff : 0;
      const fill64: u64 = v ? 0xffff_ffff_ffff_ffff : 0;
      // unsafe: reads only bytes that hold bits below `end`.
      while (q + 64 <= end && load<u64>(bitmap + (q >> 3)) == fill64) q += 64;
      while (q + 8 <= end && load<u8>(bitmap + (q >> 3)) == fill8) q += 8;
      while (q < end && bitAt(bitmap, q) == v) q++;
    }
    if (n >= cap) return E_OUTPUT_TOO_SMALL;
    const r = out + <usize>n * 12;
    store<u32>(r, pos);
    store<u32>(r, q - pos, 4);
    store<u32>(r, v, 8);
    n++;
    pos = q;
  }
  return n;
}

/** Internal checks (selfCheck module 5); needs no host buffers. */
export function sectorsSelfCheck(): i32 {
  const buf = heap.alloc(1024);
  const dst = heap.alloc(1024);
  const bm = heap.alloc(64);
  const runs = heap.alloc(12 * 16);
  let r: i32 = 0;
  memory.fill(buf, 0, 1024);
  store<u8>(buf + 700, 5); // granule 1 of 512 is non-zero
  if (sectorsZeroMap(buf, 1024, 512, bm) != 1 || load<u8>(bm) != 1) r = 1;
  if (r == 0 && sectorsZeroMap(buf, 1000, 16, bm) != 62) r = 2; // 63 granules, one dirty
  if (r == 0 && (sectorsCopyZero(dst, buf, 1024, 256, bm) != 3 || load<u8>(bm) != 0b1011 || load<u8>(dst + 700) != 5)) r = 3;
  if (r == 0 && sectorsZeroMap(buf, 64, 3, bm) != E_ARG) r = 4;
  if (r == 0) {
    // bits, LSB first: 1111 0000 | 1111 1111 | 0 … → runs (0,4,1) (4,4,0) (8,8,1) (16,496,0)
    memory.fill(bm, 0, 64);
    store<u8>(bm, 0x0f);
    store<u8>(bm + 1, 0xff);
    const k = sectorsBitmapRuns(bm, 0, 512, runs, 16);
    if (k != 4) r = 5;
    else if (load<u32>(runs) != 0 || load<u32>(runs, 4) != 4 || load<u32>(runs, 8) != 1) r = 6;
    else if (load<u32>(runs + 12) != 4 || load<u32>(runs + 12, 4) != 4 || load<u32>(runs + 12, 8) != 0) r = 7;
    else if (load<u32>(runs + 24) != 8 || load<u32>(runs + 24, 4) != 8) r = 8;
    else if (load<u32>(runs + 36) != 16 || load<u32>(runs + 36, 4) != 496 || load<u32>(runs + 36, 8) != 0) r = 9;
    else if (sectorsBitmapRuns(bm, 0, 512, runs, 2) != E_OUTPUT_TOO_SMALL) r = 10;
    else if (sectorsBitmapRuns(bm, 2, 3, runs, 4) != 2 || load<u32>(runs, 4) != 2) r = 11;
  }
  heap.free(buf);
  heap.free(dst);
  heap.free(bm);
  heap.free(runs);
  return r;
}
