// LZ4 block format (https://github.com/lz4/lz4/blob/dev/doc/lz4_Block_format.md)
// and xxHash32 (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md).
//
// The compressor is LZ4's greedy "fast" search: a 4096-entry hash table of
// 5-byte sequences (as LZ4's own 64-bit byU32 mode), a skip step that grows
// while nothing matches, backward extension of each match and an immediate
// re-check of the position after a match. The step grows every 32 failed
// probes (LZ4's acceleration 1 waits 64), every 16 for pages. Chosen by A/B
// runs on the real guest's pages (CPU time): the 5-byte hash finds fewer
// 4-byte matches, the slowest sequences to emit, and with the 32-probe step
// was ~1.18x faster than the 4-byte hash with LZ4's step, for 0.5% more
// output; the 16-probe step for pages another 1.08x for 0.7% more (measured
// on the pointer-based compressor below). It keeps the block format's end
// rules so every decoder accepts its output: the last 5 bytes are literals
// (LASTLITERALS), no match starts within the last 12 bytes (MFLIMIT), inputs
// under 13 bytes are one literal run.
//
// The decompressor is the safe kind: every read of the input and every write
// to the output is checked against the given lengths (nothing is written at
// or past dstCap), a bad block returns E_CORRUPT (or E_OUTPUT_TOO_SMALL when
// the output does not fit), never a trap. Short sequences far from both ends
// take a shortcut with fixed-size copies, as LZ4's own decoder.

import { E_ARG, E_CORRUPT, E_OUTPUT_TOO_SMALL } from "./_errors";

const MINMATCH: u32 = 4;
const LASTLITERALS: u32 = 5;
const MFLIMIT: u32 = 12;
const MIN_LENGTH: u32 = MFLIMIT + 1;
const MAX_DISTANCE: u32 = 65535;
const HASH_LOG: u32 = 12;
const HASH_SIZE: u32 = 1 << HASH_LOG;
const SKIP_TRIGGER: u32 = 5; // LZ4 uses 6; see above
// Pages (inputs under 64 KiB): the step grows every 16 failed probes. On the
// real guest's pages (2048 of them, interleaved A/B, CPU time) 1.08x faster
// than every 32, for 0.7% more output (54.81% -> 55.20% of the input).
const SKIP_TRIGGER_SMALL: u32 = 4;
/** Largest input the compressor takes (LZ4_MAX_INPUT_SIZE). */
const MAX_INPUT: u32 = 0x7e000000;

// Inputs of 64 KiB and more: the hash table holds `base + position`; entries
// below `base` belong to an earlier call and are ignored, so the 16 KiB table
// need not be cleared per call. Inputs under 64 KiB (pages): a table of
// 16-bit positions (8 KiB), cleared per call — as LZ4's byU16 mode; measured
// 1.26x faster on the real guest's pages than the 32-bit table (CPU time,
// interleaved A/B on 20356 pages), same output. Either way a call never sees
// an earlier call's positions, so an input's output depends on it alone.
let table: usize = 0;
let base: u32 = 0;

function prepareTable(len: u32): void {
  if (table == 0) {
    table = heap.alloc(HASH_SIZE << 2);
    memory.fill(table, 0, HASH_SIZE << 2);
    base = 1;
  }
  if (<u64>base + <u64>len + 1 >= 0x80000000) {
    memory.fill(table, 0, HASH_SIZE << 2);
    base = 1;
  }
}

// The hash of the 5 low bytes of v (v loaded little-endian at a position at
// most mflimit, so the 8-byte load ends within the input).
// @ts-ignore: decorator
@inline function hash5(v: u64): u32 {
  return <u32>(((v << 24) * 889523592379) >> (64 - HASH_LOG));
}



// Copies n bytes in 16-byte steps ("wild copy": may write up to 15 bytes past
// dst + n and read past src + n). Short copies are the common case in LZ4, and
// memory.copy is a runtime call in most engines, costly for a few bytes.
// unsafe: callers check that dst + roundUp16(n) and src + roundUp16(n) are in
// their buffers, and that src + 16 <= dst or the ranges do not overlap within a step.
// @ts-ignore: decorator
@inline function wildCopy16(dst: usize, src: usize, n: u32): void {
  let i: usize = 0;
  const end = <usize>n;
  if (ASC_FEATURE_SIMD) {
    do {
      v128.store(dst + i, v128.load(src + i));
      i += 16;
    } while (i < end);
  } else {
    do {
      store<u64>(dst + i, load<u64>(src + i));
      store<u64>(dst + i, load<u64>(src + i, 8), 8);
      i += 16;
    } while (i < end);
  }
}

// Copies 16 bytes (unsafe: both ranges are in their buffers).
// @ts-ignore: decorator
@inline function copy16(dst: usize, src: usize): void {
  if (ASC_FEATURE_SIMD) {
    v128.store(dst, v128.load(src));
  } else {
    store<u64>(dst, load<u64>(src));
    store<u64>(dst, load<u64>(src, 8), 8);
  }
}

// @ts-ignore: decorator
@inline function round16(n: u32): u32 {
  return (n + 15) & ~15;
}

// The bytes wildCopy16 reads and writes for n (a do-while: 16 for n = 0).
// @ts-ignore: decorator
@inline function wildLen(n: u32): u32 {
  return n == 0 ? 16 : round16(n);
}

/** Worst-case compressed size of `n` input bytes (LZ4_compressBound); 0 when n is too large. */
export function lz4CompressBound(n: u32): u32 {
  if (n > MAX_INPUT) return 0;
  return n + n / 255 + 16;
}

// @ts-ignore: decorator
@inline function writeLength(op: usize, n: u32): usize {
  // unsafe: callers reserved n / 255 + 1 bytes at op.
  while (n >= 255) {
    store<u8>(op++, 255);
    n -= 255;
  }
  store<u8>(op++, <u8>n);
  return op;
}

// The compressor over a table of T: u16 holds positions (inputs under
// 64 KiB, every candidate within MAX_DISTANCE, so that check is compiled out:
// measured ~9% on pages); u32 holds `b + position`, entries below `b` being
// an earlier call's. It works on absolute pointers rather than offsets from
// the input, so fewer values are live in the hot loops and the engine keeps
// them in registers; the 8 bytes at the next probe are loaded once for both
// its hash and its match test, and the token is kept in a local. Literal runs
// start with one 16-byte copy (77% of runs on guest pages are under 4 bytes).
// Against the former offset-based loop (same search, same output): 1.09x on
// the real guest's pages, 1.07x on 1 MiB blocks (CPU time, interleaved A/B
// of two builds in one process). The step grows every `1 << skip` failed
// probes.
// @ts-ignore: decorator
@inline function compressPtr<T>(src: usize, srcLen: u32, dst: usize, dstCap: u32, t: usize, b: u32, limited: bool, skip: u32): i32 {
  const oend: usize = dst + dstCap;
  const iend: usize = src + srcLen;
  let op: usize = dst;
  let anchor: usize = src;
  if (srcLen >= MIN_LENGTH) {
    const mflimit: usize = iend - MFLIMIT;
    const matchlimit: usize = iend - LASTLITERALS;
    store<T>(t + (<usize>hash5(load<u64>(src)) << alignof<T>()), <T>b);
    let ip: usize = src + 1;
    let v = load<u64>(ip); // the 8 bytes at the next probe: its hash and its first 4 bytes
    let done = false;
    while (!done) {
      let forward = ip;
      let step: usize = 1;
      let searchNb: u32 = 1 << skip;
      let ref: usize = 0;
      if (ip > mflimit) break;
      while (true) {
        const cur = forward;
        forward = cur + step;
        step = <usize>(searchNb++ >> skip);
        if (forward > mflimit) {
          done = true;
          break;
        }
        const slot = t + (<usize>hash5(v) << alignof<T>());
        const e = <u32>load<T>(slot);
        store<T>(slot, <T>(b + <u32>(cur - src)));
        const vcur = <u32>v;
        v = load<u64>(forward);
        if (sizeof<T>() == 2) {
          ref = src + <usize>e;
          if (load<u32>(ref) == vcur) {
            ip = cur;
            break;
          }
        } else if (e >= b) {
          ref = src + <usize>(e - b);
          if (cur - ref <= MAX_DISTANCE && load<u32>(ref) == vcur) {
            ip = cur;
            break;
          }
        }
      }
      if (done) break;
      while (ip > anchor && ref > src && load<u8>(ip - 1) == load<u8>(ref - 1)) {
        ip--;
        ref--;
      }
      const litLen = <u32>(ip - anchor);
      let token = op;
      if (limited && op + 1 + <usize>litLen + <usize>(litLen / 255) + 2 + 1 + LASTLITERALS > oend) return E_OUTPUT_TOO_SMALL;
      op++;
      let tok: u32;
      if (litLen >= 15) {
        tok = 15 << 4;
        op = writeLength(op, litLen - 15);
      } else {
        tok = litLen << 4;
      }
      // Literals: most runs are short, so one 16-byte copy covers them.
      if (op + 16 <= oend && anchor + 16 <= iend) {
        copy16(op, anchor);
        if (litLen > 16) {
          if (litLen <= 64 && op + round16(litLen) <= oend && anchor + round16(litLen) <= iend) wildCopy16(op + 16, anchor + 16, litLen - 16);
          else memory.copy(op + 16, anchor + 16, litLen - 16);
        }
      } else memory.copy(op, anchor, litLen);
      op += litLen;
      while (true) {
        store<u16>(op, <u16>(ip - ref));
        op += 2;
        let mip = ip + MINMATCH;
        let mref = ref + MINMATCH;
        while (true) {
          if (mip + 8 > matchlimit) {
            while (mip < matchlimit && load<u8>(mip) == load<u8>(mref)) {
              mip++;
              mref++;
            }
            break;
          }
          const diff = load<u64>(mip) ^ load<u64>(mref);
          if (diff != 0) {
            mip += <usize>(ctz(diff) >> 3);
            break;
          }
          mip += 8;
          mref += 8;
        }
        const ml = <u32>(mip - ip) - MINMATCH;
        if (limited && op + <usize>(ml / 255) + 1 + 1 + LASTLITERALS > oend) return E_OUTPUT_TOO_SMALL;
        if (ml >= 15) {
          store<u8>(token, tok | 15);
          op = writeLength(op, ml - 15);
        } else {
          store<u8>(token, tok | ml);
        }
        ip = mip;
        anchor = ip;
        if (ip > mflimit) {
          done = true;
          break;
        }
        store<T>(t + (<usize>hash5(load<u64>(ip - 2)) << alignof<T>()), <T>(b + <u32>(ip - 2 - src)));
        const slot = t + (<usize>hash5(load<u64>(ip)) << alignof<T>());
        const e = <u32>load<T>(slot);
        store<T>(slot, <T>(b + <u32>(ip - src)));
        if (sizeof<T>() == 2) {
          ref = src + <usize>e;
        } else {
          if (e < b) break;
          ref = src + <usize>(e - b);
          if (ip - ref > MAX_DISTANCE) break;
        }
        if (load<u32>(ref) != load<u32>(ip)) break;
        token = op++;
        tok = 0;
      }
      if (done) break;
      ip++;
      v = load<u64>(ip);
    }
  }
  const last = <u32>(iend - anchor);
  if (op + 1 + <usize>last + <usize>(last / 255) + 1 > oend) return E_OUTPUT_TOO_SMALL;
  if (last >= 15) {
    store<u8>(op++, 15 << 4);
    op = writeLength(op, last - 15);
  } else {
    store<u8>(op++, <u8>(last << 4));
  }
  memory.copy(op, anchor, last);
  op += last;
  return <i32>(op - dst);
}

/**
 * The 16-bit table for inputs under 64 KiB, in static memory: its address is
 * a constant in the compiled code, one register fewer in the search loop
 * (measured ~1%).
 */
const small: usize = memory.data(HASH_SIZE << 1, 16);

/**
 * Compresses `srcLen` bytes at `src` into one LZ4 block at `dst` (room for
 * `dstCap` bytes). Returns the block's length, or E_OUTPUT_TOO_SMALL when it
 * does not fit (a `dstCap` of lz4CompressBound(srcLen) always fits), or E_ARG.
 */
export function lz4Compress(src: usize, srcLen: u32, dst: usize, dstCap: u32): i32 {
  if (srcLen > MAX_INPUT) return E_ARG;
  if (srcLen <= 65535) {
    // Small inputs (pages): 16-bit positions, table cleared per call (8 KiB).
    clearSmall();
    // With room for the worst case (no LZ4 block is longer than the bound)
    // the output checks are compiled out: measured ~3% on pages.
    if (dstCap >= lz4CompressBound(srcLen)) return compressPtr<u16>(src, srcLen, dst, dstCap, small, 0, false, SKIP_TRIGGER_SMALL);
    return compressPtr<u16>(src, srcLen, dst, dstCap, small, 0, true, SKIP_TRIGGER_SMALL);
  }
  prepareTable(srcLen);
  const b = base;
  base = b + srcLen + 1;
  return compressPtr<u32>(src, srcLen, dst, dstCap, table, b, true, SKIP_TRIGGER);
}

// Cleared with wide stores in line: memory.fill is a call out of wasm in
// most engines (measured ~2% of a page's compression).
// @ts-ignore: decorator
@inline function clearSmall(): void {
  for (let k: usize = 0; k < (HASH_SIZE << 1); k += 64) {
    if (ASC_FEATURE_SIMD) {
      const z = i64x2.splat(0);
      v128.store(small + k, z);
      v128.store(small + k, z, 16);
      v128.store(small + k, z, 32);
      v128.store(small + k, z, 48);
    } else {
      for (let j: usize = 0; j < 64; j += 8) store<u64>(small + k + j, 0);
    }
  }
}

// lz4CompressDense's tables: the newest position + 1 of each 4-byte hash (0:
// none; cleared per call like `small`) and, per position, the previous
// position + 1 with the same hash (written before it is read: no clearing).
// 8192 heads (16 KiB): fewer false candidates than 4096, ~10% less CPU on
// the guest's pages; 16384 cost more to clear than they saved.
const HC_LOG: u32 = 13;
const hcHead: usize = memory.data(2 << HC_LOG, 16);
const hcChain: usize = memory.data(65536 << 1, 16);
/**
 * Candidates lz4CompressDense tries per position (LZ4HC's levels try 4 to
 * 256). Measured on 42,679 of the real 2 GiB guest's stored pages (every 8th),
 * sizes scaled to all 341,432, CPU against lz4Compress in the same run:
 * depth 4 with lazy matching 435 MB at 4.5x the CPU, depth 4 greedy 445 MB
 * at 4.1x, depth 2 lazy 444 MB, depth 8 431 MB at 5.5x; lz4Compress 471 MB.
 */
const HC_DEPTH: u32 = 4;
// After 2^HC_SKIP positions without a match the search steps over more bytes
// (every position is still hashed): on the guest's pages 0.6% smaller output
// than stepping by one, for the same CPU.
const HC_SKIP: u32 = 6;

let hcNext: u32 = 0; // positions below this are in the tables

// @ts-ignore: decorator
@inline function hcInsert(src: usize, upto: u32): void {
  // After a long match only its last positions are hashed.
  if (upto > hcNext + 32) hcNext = upto - 8;
  for (let p = hcNext; p < upto; p++) {
    const slot = hcHead + (<usize>((load<u32>(src + p) * 2654435761) >> (32 - HC_LOG)) << 1);
    store<u16>(hcChain + (<usize>p << 1), load<u16>(slot));
    store<u16>(slot, <u16>(p + 1));
  }
  if (upto > hcNext) hcNext = upto;
}

let hcRef: u32 = 0; // the best match's position, set by hcBest

// The longest match for position ip among the HC_DEPTH newest earlier
// positions with its hash (ending by matchlimit); its length (0 for none),
// its position in hcRef.
// @ts-ignore: decorator
@inline function hcBest(src: usize, ip: u32, matchlimit: u32): u32 {
  hcInsert(src, ip);
  const v = load<u32>(src + ip);
  let c = <u32>load<u16>(hcHead + (<usize>((v * 2654435761) >> (32 - HC_LOG)) << 1));
  let best: u32 = 0;
  for (let d: u32 = 0; d < HC_DEPTH && c != 0; d++) {
    const r = c - 1;
    if (load<u32>(src + r) == v) {
      let m = ip + MINMATCH;
      let q = r + MINMATCH;
      while (m + 8 <= matchlimit) {
        const diff = load<u64>(src + m) ^ load<u64>(src + q);
        if (diff != 0) {
          m += <u32>ctz(diff) >> 3;
          q = 0xffffffff; // found the end
          break;
        }
        m += 8;
        q += 8;
      }
      if (q != 0xffffffff) {
        while (m < matchlimit && load<u8>(src + m) == load<u8>(src + q)) {
          m++;
          q++;
        }
      }
      if (m - ip > best) {
        best = m - ip;
        hcRef = r;
      }
    }
    c = <u32>load<u16>(hcChain + (<usize>r << 1));
  }
  return best;
}

/**
 * lz4Compress for a smaller block at more CPU, for inputs under 64 KiB
 * (pages; E_ARG for larger): a hash-chain search as LZ4HC's (every position
 * hashed, the 4 newest candidates of each hash tried, the longest taken)
 * with one step of lazy matching (a longer match at the next byte wins).
 * On the real 2 GiB guest's pages 7.6% smaller than lz4Compress (435 against
 * 471 MB) for ~4.4x its CPU (~16 µs a page here). The output
 * is an ordinary LZ4 block (lz4Decompress reads it); with a `dstCap` under
 * the bound it gives up (E_OUTPUT_TOO_SMALL) as soon as the block would not fit.
 */
export function lz4CompressDense(src: usize, srcLen: u32, dst: usize, dstCap: u32): i32 {
  if (srcLen > 65535) return E_ARG;
  const oend: usize = dst + dstCap;
  let op: usize = dst;
  let anchor: u32 = 0;
  if (srcLen >= MIN_LENGTH) {
    for (let k: usize = 0; k < (2 << HC_LOG); k += 16) {
      if (ASC_FEATURE_SIMD) v128.store(hcHead + k, i64x2.splat(0));
      else {
        store<u64>(hcHead + k, 0);
        store<u64>(hcHead + k, 0, 8);
      }
    }
    hcNext = 0;
    const mflimit = srcLen - MFLIMIT;
    const matchlimit = srcLen - LASTLITERALS;
    let ip: u32 = 0;
    let misses: u32 = 0;
    while (ip <= mflimit) {
      let ml = hcBest(src, ip, matchlimit);
      if (ml < MINMATCH) {
        misses++;
        ip += 1 + (misses >> HC_SKIP);
        continue;
      }
      misses = 0;
      let ref = hcRef;
      if (ip + 1 <= mflimit) {
        const ml2 = hcBest(src, ip + 1, matchlimit);
        if (ml2 > ml + 1) {
          ip++;
          ml = ml2;
          ref = hcRef;
        }
      }
      while (ip > anchor && ref > 0 && load<u8>(src + ip - 1) == load<u8>(src + ref - 1)) {
        ip--;
        ref--;
        ml++;
      }
      const litLen = ip - anchor;
      if (op + 1 + <usize>litLen + <usize>(litLen / 255) + 2 + <usize>(ml / 255) + 1 + LASTLITERALS > oend) return E_OUTPUT_TOO_SMALL;
      const token = op++;
      let tok: u32;
      if (litLen >= 15) {
        tok = 15 << 4;
        op = writeLength(op, litLen - 15);
      } else {
        tok = litLen << 4;
      }
      // Most literal runs are short: one 16-byte copy (room: the check above
      // left 2 + 1 + LASTLITERALS bytes past the run, and the input has 12
      // bytes past any match start).
      if (litLen <= 16 && op + 16 <= oend && <usize>anchor + 16 <= <usize>srcLen) copy16(op, src + anchor);
      else memory.copy(op, src + anchor, litLen);
      op += litLen;
      store<u16>(op, <u16>(ip - ref));
      op += 2;
      const mlc = ml - MINMATCH;
      if (mlc >= 15) {
        store<u8>(token, tok | 15);
        op = writeLength(op, mlc - 15);
      } else {
        store<u8>(token, tok | mlc);
      }
      ip += ml;
      anchor = ip;
    }
  }
  const last = srcLen - anchor;
  if (op + 1 + <usize>last + <usize>(last / 255) + 1 > oend) return E_OUTPUT_TOO_SMALL;
  if (last >= 15) {
    store<u8>(op++, 15 << 4);
    op = writeLength(op, last - 15);
  } else {
    store<u8>(op++, <u8>(last << 4));
  }
  memory.copy(op, src + anchor, last);
  op += last;
  return <i32>(op - dst);
}

// Copies a match of ml bytes from offset back; returns op + ml.
// unsafe: the caller checked [op - offset, op + ml) lies in [-prefix, dstCap).
// @ts-ignore: decorator
@inline function copyMatch(dst: usize, op: u32, offset: u32, ml: u32, dstCap: u32): u32 {
  const d = dst + op;
  const s = d - offset;
  if (offset >= 16 && ml <= 64 && round16(ml) <= dstCap - op) {
    wildCopy16(d, s, ml); // each 16-byte step reads only finished output
  } else if (offset >= ml) {
    memory.copy(d, s, ml); // no overlap
  } else if (offset >= 8) {
    let i: u32 = 0;
    while (i + 8 <= ml) {
      store<u64>(d + i, load<u64>(s + i));
      i += 8;
    }
    while (i < ml) {
      store<u8>(d + i, load<u8>(s + i));
      i++;
    }
  } else if (offset == 1) {
    memory.fill(d, load<u8>(s), ml);
  } else {
    for (let i: u32 = 0; i < ml; i++) store<u8>(d + i, load<u8>(s + i));
  }
  return op + ml;
}

/**
 * Decompresses one LZ4 block of `srcLen` bytes at `src` into `dst` (room for
 * `dstCap` bytes). Returns the decompressed length; E_CORRUPT for a malformed
 * block (truncated, offset 0 or before the output start, a block that does
 * not end with literals); E_OUTPUT_TOO_SMALL when the output exceeds `dstCap`.
 */
export function lz4Decompress(src: usize, srcLen: u32, dst: usize, dstCap: u32): i32 {
  return lz4DecompressPrefixed(src, srcLen, dst, dstCap, 0);
}

/**
 * lz4Decompress for linked blocks (LZ4 frames without block independence):
 * the `prefixLen` bytes before `dst` are earlier output that matches may
 * refer to (at most 64 KiB are ever used).
 * unsafe: the host guarantees [dst - prefixLen, dst + dstCap) is in memory.
 */
export function lz4DecompressPrefixed(src: usize, srcLen: u32, dst: usize, dstCap: u32, prefixLen: u32): i32 {
  if (srcLen == 0) return E_CORRUPT;
  let ip: u32 = 0;
  let op: u32 = 0;
  // The shortcut (as LZ4's own decoder): a sequence with under 15 literals
  // and a match of under 19 bytes, far from both ends, is copied with fixed
  // 16- and 8-byte moves and two checks (offset in range, no overlap within
  // a move). Most sequences on guest pages are of this kind.
  const shortIn: i64 = <i64>srcLen - 17; // the 16 literal bytes after a token are readable
  const shortOut: i64 = <i64>dstCap - 32; // 16 literal + 18 match bytes from op + lit are writable
  while (true) {
    if (ip >= srcLen) return E_CORRUPT;
    const token = <u32>load<u8>(src + ip++);
    let lit = token >> 4;
    if (lit < 15 && <i64>ip <= shortIn && <i64>op <= shortOut) {
      // unsafe: ip + 16 <= srcLen - 1 and op + 32 <= dstCap by the bounds above.
      copy16(dst + op, src + ip);
      ip += lit;
      op += lit;
      // The block cannot end here: its last literals reach srcLen, and ip + 2 <= srcLen - 1.
      const offset = <u32>load<u16>(src + ip);
      const ml = token & 15;
      if (ml < 15 && offset >= 16 && <u64>offset <= <u64>op + prefixLen) {
        ip += 2;
        const d = dst + op;
        copy16(d, d - offset);
        store<u16>(d + 16, load<u16>(d - offset + 16));
        op += ml + MINMATCH;
        continue;
      }
      // Otherwise the general path, from the offset on.
      ip += 2;
      if (offset == 0 || <u64>offset > <u64>op + prefixLen) return E_CORRUPT;
      let ml2 = ml;
      if (ml2 == 15) {
        let b: u32;
        do {
          if (ip >= srcLen) return E_CORRUPT;
          b = load<u8>(src + ip++);
          ml2 += b;
          if (ml2 > 0x7fffffff) return E_CORRUPT;
        } while (b == 255);
      }
      ml2 += MINMATCH;
      if (ml2 > dstCap - op) return E_OUTPUT_TOO_SMALL;
      op = copyMatch(dst, op, offset, ml2, dstCap);
      continue;
    }
    if (lit == 15) {
      let b: u32;
      do {
        if (ip >= srcLen) return E_CORRUPT;
        b = load<u8>(src + ip++);
        lit += b;
        if (lit > srcLen) return E_CORRUPT; // cannot have more literals than input bytes
      } while (b == 255);
    }
    // unsafe: both ranges checked against their lengths first.
    if (lit > srcLen - ip) return E_CORRUPT;
    if (lit > dstCap - op) return E_OUTPUT_TOO_SMALL;
    // wildCopy16 moves at least 16 bytes, even for an empty run: the room
    // checked is what it moves (an empty run near the end once wrote up to
    // 16 bytes past dstCap).
    if (lit <= 64 && wildLen(lit) <= srcLen - ip && wildLen(lit) <= dstCap - op) wildCopy16(dst + op, src + ip, lit);
    else memory.copy(dst + op, src + ip, lit);
    ip += lit;
    op += lit;
    if (ip == srcLen) return <i32>op; // the last sequence: literals only
    if (srcLen - ip < 2) return E_CORRUPT;
    const offset = <u32>load<u16>(src + ip);
    ip += 2;
    if (offset == 0 || <u64>offset > <u64>op + prefixLen) return E_CORRUPT;
    let ml = token & 15;
    if (ml == 15) {
      let b: u32;
      do {
        if (ip >= srcLen) return E_CORRUPT;
        b = load<u8>(src + ip++);
        ml += b;
        if (ml > 0x7fffffff) return E_CORRUPT;
      } while (b == 255);
    }
    ml += MINMATCH;
    if (ml > dstCap - op) return E_OUTPUT_TOO_SMALL;
    op = copyMatch(dst, op, offset, ml, dstCap);
  }
  return E_CORRUPT; // unreachable
}

// ---- xxHash32 -------------------------------------------------------------

const P1: u32 = 2654435761;
const P2: u32 = 2246822519;
const P3: u32 = 3266489917;
const P4: u32 = 668265263;
const P5: u32 = 374761393;

// @ts-ignore: decorator
@inline function round(acc: u32, v: u32): u32 {
  return rotl<u32>(acc + v * P2, 13) * P1;
}

/**
 * xxHash32 of `len` bytes at `p` with `seed` (returned as i32; the host reads it `>>> 0`).
 * unsafe: the caller guarantees [p, p + len) is in memory.
 */
export function xxh32(p: usize, len: u32, seed: u32): u32 {
  let i: usize = 0;
  const n = <usize>len;
  let h: u32;
  if (n >= 16) {
    let v1 = seed + P1 + P2;
    let v2 = seed + P2;
    let v3 = seed;
    let v4 = seed - P1;
    while (i + 16 <= n) {
      v1 = round(v1, load<u32>(p + i));
      v2 = round(v2, load<u32>(p + i, 4));
      v3 = round(v3, load<u32>(p + i, 8));
      v4 = round(v4, load<u32>(p + i, 12));
      i += 16;
    }
    h = rotl<u32>(v1, 1) + rotl<u32>(v2, 7) + rotl<u32>(v3, 12) + rotl<u32>(v4, 18);
  } else {
    h = seed + P5;
  }
  h += len;
  while (i + 4 <= n) {
    h = rotl<u32>(h + load<u32>(p + i) * P3, 17) * P4;
    i += 4;
  }
  while (i < n) {
    h = rotl<u32>(h + <u32>load<u8>(p + i) * P5, 11) * P1;
    i++;
  }
  h ^= h >> 15;
  h *= P2;
  h ^= h >> 13;
  h *= P3;
  h ^= h >> 16;
  return h;
}

// Streaming xxHash32 (one stream at a time: the host hashes a large input
// window by window). State: four lanes, total length, up to 15 pending bytes.
let sV1: u32 = 0;
let sV2: u32 = 0;
let sV3: u32 = 0;
let sV4: u32 = 0;
let sSeed: u32 = 0;
let sTotal: u64 = 0;
let sPend: usize = 0;
let sPendLen: u32 = 0;

/** Starts a streaming xxHash32 with `seed`. */
export function xxh32Init(seed: u32): void {
  if (sPend == 0) sPend = heap.alloc(16);
  sSeed = seed;
  sV1 = seed + P1 + P2;
  sV2 = seed + P2;
  sV3 = seed;
  sV4 = seed - P1;
  sTotal = 0;
  sPendLen = 0;
}

/** Feeds `len` bytes at `p` to the stream (unsafe: [p, p + len) is in memory). */
export function xxh32Update(p: usize, len: u32): void {
  if (sPend == 0) xxh32Init(0);
  sTotal += len;
  let i: usize = 0;
  const n = <usize>len;
  if (sPendLen > 0) {
    const take = min<usize>(16 - sPendLen, n);
    memory.copy(sPend + sPendLen, p, take);
    sPendLen += <u32>take;
    i = take;
    if (sPendLen < 16) return;
    sV1 = round(sV1, load<u32>(sPend));
    sV2 = round(sV2, load<u32>(sPend, 4));
    sV3 = round(sV3, load<u32>(sPend, 8));
    sV4 = round(sV4, load<u32>(sPend, 12));
    sPendLen = 0;
  }
  let v1 = sV1, v2 = sV2, v3 = sV3, v4 = sV4;
  while (i + 16 <= n) {
    v1 = round(v1, load<u32>(p + i));
    v2 = round(v2, load<u32>(p + i, 4));
    v3 = round(v3, load<u32>(p + i, 8));
    v4 = round(v4, load<u32>(p + i, 12));
    i += 16;
  }
  sV1 = v1;
  sV2 = v2;
  sV3 = v3;
  sV4 = v4;
  if (i < n) {
    memory.copy(sPend, p + i, n - i);
    sPendLen = <u32>(n - i);
  }
}

/** The digest of everything fed since xxh32Init. */
export function xxh32Digest(): u32 {
  if (sPend == 0) xxh32Init(0);
  let h: u32;
  if (sTotal >= 16) {
    h = rotl<u32>(sV1, 1) + rotl<u32>(sV2, 7) + rotl<u32>(sV3, 12) + rotl<u32>(sV4, 18);
  } else {
    h = sSeed + P5;
  }
  h += <u32>sTotal;
  const p = sPend;
  const n = <usize>sPendLen;
  let i: usize = 0;
  while (i + 4 <= n) {
    h = rotl<u32>(h + load<u32>(p + i) * P3, 17) * P4;
    i += 4;
  }
  while (i < n) {
    h = rotl<u32>(h + <u32>load<u8>(p + i) * P5, 11) * P1;
    i++;
  }
  h ^= h >> 15;
  h *= P2;
  h ^= h >> 13;
  h *= P3;
  h ^= h >> 16;
  return h;
}

// ---- self-check -------------------------------------------------------------

/** Round-trips a few patterned buffers and checks xxh32 against known values. */
export function lz4SelfCheck(): i32 {
  // xxh32("", 0) = 0x02CC5D05; xxh32("a", 0) = 0x550D7456 (reference values).
  const buf = heap.alloc(3 * 8192);
  const a = buf;
  const c = buf + 8192;
  const d = buf + 16384;
  if (xxh32(a, 0, 0) != 0x02cc5d05) {
    heap.free(buf);
    return 1;
  }
  store<u8>(a, 0x61);
  if (xxh32(a, 1, 0) != 0x550d7456) {
    heap.free(buf);
    return 2;
  }
  for (let kind = 0; kind < 3; kind++) {
    let x: u32 = 12345;
    for (let i = 0; i < 4096; i++) {
      x = x * 1103515245 + 12345;
      const v: u8 = kind == 0 ? <u8>(x >> 16) : kind == 1 ? <u8>(i % 7) : <u8>((x >> 28) & 1);
      store<u8>(a + i, v);
    }
    const n = lz4Compress(a, 4096, c, 8192);
    if (n <= 0 || <u32>n > lz4CompressBound(4096)) {
      heap.free(buf);
      return 10 + kind;
    }
    const m = lz4Decompress(c, <u32>n, d, 4096);
    if (m != 4096 || memory.compare(a, d, 4096) != 0) {
      heap.free(buf);
      return 20 + kind;
    }
    // The dense page search round-trips too, and is no larger on these inputs.
    const nd = lz4CompressDense(a, 4096, c, 8192);
    if (nd <= 0 || nd > n + 16 || lz4Decompress(c, <u32>nd, d, 4096) != 4096 || memory.compare(a, d, 4096) != 0) {
      heap.free(buf);
      return 50 + kind;
    }
    // Streaming hash in uneven pieces equals the one-shot hash.
    xxh32Init(7);
    xxh32Update(a, 5);
    xxh32Update(a + 5, 30);
    xxh32Update(a + 35, 4061);
    if (xxh32Digest() != xxh32(a, 4096, 7)) {
      heap.free(buf);
      return 40 + kind;
    }
    // A truncated block must be rejected, not decoded past its end.
    if (lz4Decompress(c, <u32>n - 1, d, 4096) >= 4096) {
      heap.free(buf);
      return 30 + kind;
    }
  }
  heap.free(buf);
  return 0;
}
