/**
 * Internal glue to the core's LZ4, xxHash32 and staging exports: typed
 * signatures and grow-only scratch buffers in core memory (one set per core
 * generation, re-made after a trap reset).
 * @module
 */
import { checkGeneration, core, withCore, type Core } from '../../core.js';
import { check } from '../../_status.js';

/** Bytes of one staging entry (kind, offset, length, record xxHash32: u32 each). */
export const STAGING_ENTRY = 16;

interface Scratch {
  gen: number;
  ptr: number[];
  cap: number[];
}
let scratch: Scratch | undefined;

/**
 * A core buffer of at least `n` bytes in slot `slot` (0..3), kept between
 * calls and grown by doubling. Valid until the next call with the same slot.
 */
export function scratchBuf(c: Core, slot: number, n: number): number {
  if (!scratch || scratch.gen !== c.generation) scratch = { gen: c.generation, ptr: [0, 0, 0, 0], cap: [0, 0, 0, 0] };
  if ((scratch.cap[slot] ?? 0) < n) {
    if (scratch.ptr[slot]) c.free(scratch.ptr[slot]!);
    scratch.ptr[slot] = 0;
    scratch.cap[slot] = 0;
    // Doubling keeps small buffers few; past 64 MiB a block is rounded to 4 MiB
    // instead, so a 257 MiB need is not made a 512 MiB buffer.
    let cap = 65536;
    while (cap < n && cap < 1 << 26) cap *= 2;
    if (cap < n) cap = Math.ceil(n / (1 << 22)) * (1 << 22);
    scratch.ptr[slot] = c.alloc(cap);
    scratch.cap[slot] = cap;
  }
  return scratch.ptr[slot]!;
}

/**
 * The largest LZ4 block the core compresses or decodes in one piece: 256 MiB.
 * A block is one buffer in core memory, in and out; past this the block
 * functions throw LIMIT (the frame functions stream any size in blocks of at
 * most 4 MiB).
 */
export const LZ4_BLOCK_LIMIT: number = 256 * 1024 * 1024;

/**
 * The most bytes an LZ4 block of `n` bytes can decode to: a sequence's token
 * and offset (3 bytes) give at most 19 bytes of match, each further length
 * byte at most 255, so no block expands by more than 255 to 1 (plus a little).
 */
export function decodeBound(n: number): number {
  return n * 255 + 64;
}

/** Worst-case LZ4 block size for `n` input bytes (the core's lz4CompressBound). */
export function compressBound(n: number): number {
  return n + Math.floor(n / 255) + 16;
}

const HASH_WINDOW = 1 << 20;

/** xxHash32 of `data` (any size: fed to the core window by window). */
export function xxh32Of(data: Uint8Array, seed: number = 0): number {
  return withCore((c) => {
    const e = c.exports;
    if (data.length <= HASH_WINDOW) {
      const p = scratchBuf(c, 3, Math.max(1, data.length));
      c.u8().set(data, p);
      return e.xxh32(p, data.length, seed) >>> 0;
    }
    const p = scratchBuf(c, 3, HASH_WINDOW);
    e.xxh32Init(seed);
    for (let at = 0; at < data.length; at += HASH_WINDOW) {
      const part = data.subarray(at, Math.min(data.length, at + HASH_WINDOW));
      c.u8().set(part, p);
      e.xxh32Update(p, part.length);
    }
    return e.xxh32Digest() >>> 0;
  });
}

/** Rethrows `err` through withCore, so a trap resets the core and becomes CORE_TRAP. */
function rethrow(err: unknown): never {
  return withCore(() => {
    throw err;
  });
}

/**
 * The four block calls' one path: `src` copied into core scratch, the codec run
 * into a second scratch of `room` bytes writing at most `cap`, the result copied
 * into `into` (its length returned) or out as a fresh array by one slice of core
 * memory. A flag, not a callback, picks the codec: hot path, no closure per call.
 */
function coreBlock(compress: boolean, src: Uint8Array, room: number, cap: number, into: Uint8Array | undefined): Uint8Array | number {
  const c = core();
  try {
    const s = scratchBuf(c, 0, Math.max(1, src.length));
    const d = scratchBuf(c, 1, Math.max(1, room));
    const mem = c.u8();
    mem.set(src, s);
    const e = c.exports;
    const n = compress ? check(e.lz4Compress(s, src.length, d, cap), 'lz4 compress') : check(e.lz4Decompress(s, src.length, d, cap), 'lz4 decompress');
    if (!into) return mem.slice(d, d + n);
    into.set(mem.subarray(d, d + n));
    return n;
  } catch (err) {
    return rethrow(err);
  }
}

/** Compresses `src` into one LZ4 block; returns a fresh array. */
export function blockCompress(src: Uint8Array): Uint8Array {
  const bound = compressBound(src.length);
  return coreBlock(true, src, bound, bound, undefined) as Uint8Array;
}

/**
 * Compresses `src` into `dst` (one copy in, one copy out, no allocation);
 * returns the block length. OUTPUT_TOO_SMALL when the block does not fit
 * (a dst of compressBound(src.length) bytes always fits).
 */
export function blockCompressInto(src: Uint8Array, dst: Uint8Array): number {
  const bound = compressBound(src.length);
  return coreBlock(true, src, bound, Math.min(bound, dst.length), dst) as number;
}

/**
 * Decompresses one LZ4 block into `dst` (at most dst.length bytes); returns the
 * decoded length. CORRUPT for a bad block, OUTPUT_TOO_SMALL when it does not fit.
 */
export function blockDecompressInto(block: Uint8Array, dst: Uint8Array): number {
  // Room for what the block can decode to, not for all of dst: a 1.5 GiB dst
  // for a page-sized block needs no 1.5 GiB in the core.
  const room = Math.min(dst.length, decodeBound(block.length));
  return coreBlock(false, block, room, room, dst) as number;
}

/**
 * Decompresses one LZ4 block of at most `maxSize` decoded bytes into a new
 * array of exactly the decoded length (one copy in; the output array is made
 * by one slice of core memory, cheaper than a zeroed array plus a copy).
 */
export function blockDecompress(block: Uint8Array, maxSize: number): Uint8Array {
  const room = Math.min(maxSize, decodeBound(block.length));
  return coreBlock(false, block, room, room, undefined) as Uint8Array;
}

/** The live core (throws NOT_INITIALIZED). */
export function liveCore(): Core {
  return core();
}

/**
 * Closes stager `h` of core generation `gen` and frees its input and entry
 * buffers. After a trap reset they are gone with the old memory: nothing to do.
 */
export function closeStaging(gen: number, h: number, input: number, entries: number, what: string): void {
  try {
    const c = checkGeneration(gen, what);
    c.exports.stagingClose(h);
    c.free(input);
    c.free(entries);
  } catch {
    // The core was reset: its memory (and these buffers) are gone already.
  }
}
