/**
 * LZ4 for vmkit: the core's block codec, and the LZ4 frame format around it
 * (https://github.com/lz4/lz4/blob/dev/doc/lz4_Frame_format.md), so vmkit's
 * frames decode with the `lz4` command and `lz4`'s decode with vmkit.
 * See docs/lz4.md.
 * @module
 */
import { withCore } from '../../core.js';
import { check } from '../../_status.js';
import { VmkitError } from '../../errors.js';
import { abytes, aint } from '../../_utils.js';
import { concatBytes } from '../../_bytes.js';
import { LZ4_BLOCK_LIMIT, blockCompress, blockCompressInto, blockDecompress, blockDecompressInto, compressBound, decodeBound, scratchBuf, xxh32Of } from './_codec.js';

/**
 * The largest LZ4 block the block functions take or make, in bytes (256 MiB):
 * input to compress, a block to decode, and what a block may decode to given
 * its `maxSize` / `dst`. Past it they throw LIMIT before the core sees the
 * block; {@link lz4FrameCompress} and {@link lz4FrameDecompress} stream any
 * size in blocks of at most 4 MiB.
 * @example
 * ```ts
 * const frame = data.length > LZ4_MAX_BLOCK ? lz4FrameCompress(data) : lz4CompressBlock(data);
 * ```
 */
export const LZ4_MAX_BLOCK: number = LZ4_BLOCK_LIMIT;

// The block functions' size checks: LIMIT, naming the largest size, before the core sees the block.
function blockInput(n: number, name: string): void {
  if (n > LZ4_BLOCK_LIMIT) {
    throw new VmkitError('LIMIT', `${name} is ${n} bytes: the largest LZ4 block vmkit compresses in one piece is ${LZ4_BLOCK_LIMIT} bytes (256 MiB); lz4FrameCompress streams any size`);
  }
}

function blockOutput(blockLen: number, room: number, name: string): void {
  const most = Math.min(room, decodeBound(blockLen));
  if (most > LZ4_BLOCK_LIMIT) {
    throw new VmkitError('LIMIT', `a ${blockLen}-byte LZ4 block with ${name} ${room} may decode to ${most} bytes: the largest vmkit decodes in one piece is ${LZ4_BLOCK_LIMIT} bytes (256 MiB); pass a smaller ${name}`);
  }
}

/**
 * Compresses `data` into one LZ4 block (the raw block format, no header).
 * LIMIT when `data` is over {@link LZ4_MAX_BLOCK}.
 * @example
 * ```ts
 * import { init, lz4CompressBlock, lz4DecompressBlock } from 'vmkit/memory';
 * await init();
 * const block = lz4CompressBlock(new Uint8Array(4096));
 * const page = lz4DecompressBlock(block, 4096);
 * ```
 */
export function lz4CompressBlock(data: Uint8Array): Uint8Array {
  abytes(data, 'data');
  blockInput(data.length, 'data');
  return blockCompress(data);
}

/**
 * Compresses `data` into `dst` as one LZ4 block and returns its length: the
 * allocation-free form of {@link lz4CompressBlock} for callers that reuse an
 * output buffer (one copy in, one copy out). A `dst` of
 * `lz4CompressBound(data.length)` bytes always fits; a smaller one is allowed
 * and throws OUTPUT_TOO_SMALL as soon as the block would not fit, so a
 * `dst` of `data.length - 1` bytes doubles as "give up when it does not pay".
 * @example
 * ```ts
 * import { init, lz4CompressBlockInto, lz4CompressBound } from 'vmkit/memory';
 * await init();
 * const out = new Uint8Array(lz4CompressBound(4096));
 * for (const page of pages) {
 *   const n = lz4CompressBlockInto(page, out);
 *   sink.write(out.subarray(0, n)); // copy or consume before the next call
 * }
 * ```
 */
export function lz4CompressBlockInto(data: Uint8Array, dst: Uint8Array): number {
  abytes(data, 'data');
  abytes(dst, 'dst');
  blockInput(data.length, 'data');
  return blockCompressInto(data, dst);
}

/**
 * Decompresses one LZ4 block whose decoded size is at most `maxSize` bytes.
 * Throws CORRUPT for a malformed block, OUTPUT_TOO_SMALL when it decodes to
 * more than `maxSize`, LIMIT when the block could decode to more than
 * {@link LZ4_MAX_BLOCK} within `maxSize` (a block expands 255:1 at most, so a
 * small block with a huge `maxSize` is fine).
 * @example
 * ```ts
 * const page = lz4DecompressBlock(block, 4096);
 * ```
 */
export function lz4DecompressBlock(block: Uint8Array, maxSize: number): Uint8Array {
  abytes(block, 'block');
  aint(maxSize, 'maxSize', 0, 0x7e000000);
  blockInput(block.length, 'block');
  blockOutput(block.length, maxSize, 'maxSize');
  return blockDecompress(block, maxSize);
}

/**
 * Decompresses one LZ4 block into `dst`; returns the decoded length. LIMIT
 * as {@link lz4DecompressBlock}, with `dst.length` as the maximum.
 * @example
 * ```ts
 * const page = new Uint8Array(4096);
 * if (lz4DecompressBlockInto(block, page) !== 4096) throw new Error('short page');
 * ```
 */
export function lz4DecompressBlockInto(block: Uint8Array, dst: Uint8Array): number {
  abytes(block, 'block');
  abytes(dst, 'dst');
  blockInput(block.length, 'block');
  blockOutput(block.length, dst.length, 'dst.length');
  return blockDecompressInto(block, dst);
}

/**
 * The worst-case size of an LZ4 block for `n` input bytes (LZ4_compressBound).
 * @example
 * ```ts
 * const dst = new Uint8Array(lz4CompressBound(4096)); // 4128
 * ```
 */
export function lz4CompressBound(n: number): number {
  aint(n, 'n', 0, 0x7e000000);
  return compressBound(n);
}

/**
 * xxHash32 of `data` with `seed` (the checksum of LZ4 frames and vmkit checkpoints).
 * @example
 * ```ts
 * xxh32(new Uint8Array(0)); // 0x02cc5d05
 * ```
 */
export function xxh32(data: Uint8Array, seed: number = 0): number {
  abytes(data, 'data');
  aint(seed, 'seed', 0, 0xffffffff);
  return xxh32Of(data, seed);
}

/**
 * Options of {@link lz4FrameCompress}.
 *
 * @example
 * ```ts
 * const frame = lz4FrameCompress(data, { blockSize: 1048576, blockChecksum: true });
 * ```
 */
export interface Lz4FrameOptions {
  /** Block maximum size: 64 KiB (default), 256 KiB, 1 MiB or 4 MiB. */
  blockSize?: 65536 | 262144 | 1048576 | 4194304;
  /** Append an xxHash32 to each block (default false). */
  blockChecksum?: boolean;
  /** Append an xxHash32 of the whole content (default true). */
  contentChecksum?: boolean;
  /** Write the content size into the frame header (default true). */
  contentSize?: boolean;
}

/**
 * Options of {@link lz4FrameDecompress}.
 *
 * @example
 * ```ts
 * const data = lz4FrameDecompress(frame, { maxOutput: 64 << 20 }); // LIMIT beyond 64 MiB
 * ```
 */
export interface Lz4FrameDecodeOptions {
  /** Refuse (LIMIT) to produce more than this many bytes (default 1 GiB). */
  maxOutput?: number;
}

const MAGIC = 0x184d2204;
const BD_CODE: Record<number, number> = { 65536: 4, 262144: 5, 1048576: 6, 4194304: 7 };
const BLOCK_MAX = [0, 0, 0, 0, 65536, 262144, 1048576, 4194304];

/**
 * Wraps `data` in one LZ4 frame (independent blocks), readable by `lz4 -d`.
 * Blocks that do not shrink are stored uncompressed, as the spec allows.
 * @example
 * ```ts
 * const frame = lz4FrameCompress(new TextEncoder().encode('hello hello hello'));
 * // writeFileSync('x.lz4', frame); then: lz4 -d x.lz4
 * ```
 */
export function lz4FrameCompress(data: Uint8Array, options: Lz4FrameOptions = {}): Uint8Array {
  abytes(data, 'data');
  const bs = options.blockSize ?? 65536;
  const code = BD_CODE[bs];
  if (code === undefined) throw new VmkitError('ARG_RANGE', `blockSize must be 64 KiB, 256 KiB, 1 MiB or 4 MiB, got ${bs}`);
  const bsum = options.blockChecksum === true;
  const csum = options.contentChecksum !== false;
  const csize = options.contentSize !== false;
  const head = new Uint8Array(csize ? 15 : 7);
  const hv = new DataView(head.buffer);
  hv.setUint32(0, MAGIC, true);
  head[4] = 0x40 | 0x20 | (bsum ? 0x10 : 0) | (csize ? 0x08 : 0) | (csum ? 0x04 : 0);
  head[5] = code << 4;
  if (csize) hv.setBigUint64(6, BigInt(data.length), true);
  const descEnd = csize ? 14 : 6;
  head[descEnd] = (xxh32Of(head.subarray(4, descEnd)) >>> 8) & 0xff;
  const parts: Uint8Array[] = [head];
  let total = head.length;
  withCore((c) => {
    const e = c.exports;
    const bound = compressBound(bs);
    const s = scratchBuf(c, 0, bs);
    const d = scratchBuf(c, 1, bound);
    if (csum) e.xxh32Init(0);
    for (let at = 0; at < data.length; at += bs) {
      const chunk = data.subarray(at, Math.min(data.length, at + bs));
      c.u8().set(chunk, s);
      if (csum) e.xxh32Update(s, chunk.length);
      const n = e.lz4Compress(s, chunk.length, d, chunk.length - 1);
      const raw = n <= 0;
      const len = raw ? chunk.length : n;
      const out = new Uint8Array(4 + len + (bsum ? 4 : 0));
      const ov = new DataView(out.buffer);
      ov.setUint32(0, (len | (raw ? 0x80000000 : 0)) >>> 0, true);
      out.set(raw ? chunk : c.u8().subarray(d, d + len), 4);
      if (bsum) ov.setUint32(4 + len, e.xxh32(raw ? s : d, len, 0) >>> 0, true);
      parts.push(out);
      total += out.length;
    }
    const tail = new Uint8Array(csum ? 8 : 4);
    if (csum) new DataView(tail.buffer).setUint32(4, e.xxh32Digest() >>> 0, true);
    parts.push(tail);
    total += tail.length;
  });
  return concatBytes(parts, total);
}

function corrupt(msg: string, offset: number): never {
  throw new VmkitError('CORRUPT', `lz4 frame: ${msg}`, { offset });
}

/**
 * Decodes a stream of LZ4 frames (as `lz4` writes them: independent or linked
 * blocks, block and content checksums, content size; skippable frames are
 * skipped). Throws CORRUPT for malformed input, INTEGRITY for a checksum
 * mismatch, UNSUPPORTED for dictionaries and the legacy format, LIMIT past
 * `maxOutput`.
 * @example
 * ```ts
 * const data = lz4FrameDecompress(readFileSync('x.lz4'));
 * ```
 */
export function lz4FrameDecompress(frame: Uint8Array, options: Lz4FrameDecodeOptions = {}): Uint8Array {
  abytes(frame, 'frame');
  const maxOutput = options.maxOutput ?? 1 << 30;
  aint(maxOutput, 'maxOutput');
  const dv = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const parts: Uint8Array[] = [];
  let total = 0;
  let pos = 0;
  if (frame.length === 0) corrupt('empty input', 0);
  while (pos < frame.length) {
    if (frame.length - pos < 4) corrupt('truncated magic', pos);
    const magic = dv.getUint32(pos, true);
    if ((magic & 0xfffffff0) === 0x184d2a50) {
      if (frame.length - pos < 8) corrupt('truncated skippable frame', pos);
      const size = dv.getUint32(pos + 4, true);
      if (size > frame.length - pos - 8) corrupt('skippable frame past the end', pos);
      pos += 8 + size;
      continue;
    }
    if (magic === 0x184c2102) throw new VmkitError('UNSUPPORTED', 'lz4 legacy frames are not supported', { offset: pos });
    if (magic !== MAGIC) corrupt(`bad magic 0x${magic.toString(16)}`, pos);
    const start = pos + 4;
    if (frame.length - start < 3) corrupt('truncated frame descriptor', start);
    const flg = frame[start]!;
    const bd = frame[start + 1]!;
    if (flg >> 6 !== 1) throw new VmkitError('UNSUPPORTED', `lz4 frame version ${flg >> 6}`, { offset: start });
    if (flg & 0x02 || bd & 0x8f) corrupt('reserved descriptor bits set', start);
    if (flg & 0x01) throw new VmkitError('UNSUPPORTED', 'lz4 frames with a dictionary ID are not supported', { offset: start });
    const indep = (flg & 0x20) !== 0;
    const bsum = (flg & 0x10) !== 0;
    const hasSize = (flg & 0x08) !== 0;
    const csum = (flg & 0x04) !== 0;
    const blockMax = BLOCK_MAX[(bd >> 4) & 7]!;
    if (blockMax === 0) corrupt('bad block maximum size', start + 1);
    const descEnd = start + 2 + (hasSize ? 8 : 0);
    if (frame.length < descEnd + 1) corrupt('truncated frame descriptor', start);
    const contentSize = hasSize ? dv.getBigUint64(start + 2, true) : -1n;
    if (hasSize && contentSize > BigInt(maxOutput - total)) {
      throw new VmkitError('LIMIT', `lz4 frame content size ${contentSize} is over maxOutput ${maxOutput}`, { offset: start });
    }
    const hc = (xxh32Of(frame.subarray(start, descEnd)) >>> 8) & 0xff;
    if (hc !== frame[descEnd]) throw new VmkitError('INTEGRITY', 'lz4 frame header checksum mismatch', { offset: descEnd });
    pos = descEnd + 1;
    const frameStart = total;
    withCore((c) => {
      const e = c.exports;
      const HIST = 65536;
      const s = scratchBuf(c, 0, blockMax + 4);
      const w = scratchBuf(c, 2, HIST + blockMax);
      let hist = 0; // bytes of history at w (linked blocks)
      if (csum) e.xxh32Init(0);
      for (;;) {
        if (frame.length - pos < 4) corrupt('truncated block header', pos);
        const word = dv.getUint32(pos, true);
        pos += 4;
        if (word === 0) break;
        const raw = (word & 0x80000000) !== 0;
        const size = word & 0x7fffffff;
        if (size > blockMax) corrupt(`block of ${size} bytes over the maximum ${blockMax}`, pos - 4);
        if (frame.length - pos < size + (bsum ? 4 : 0)) corrupt('truncated block', pos);
        const data = frame.subarray(pos, pos + size);
        c.u8().set(data, s);
        if (bsum && (e.xxh32(s, size, 0) >>> 0) !== dv.getUint32(pos + size, true)) {
          throw new VmkitError('INTEGRITY', 'lz4 block checksum mismatch', { offset: pos });
        }
        pos += size + (bsum ? 4 : 0);
        const at = w + hist;
        let n: number;
        if (raw) {
          c.u8().copyWithin(at, s, s + size);
          n = size;
        } else {
          n = check(e.lz4DecompressPrefixed(s, size, at, blockMax, indep ? 0 : hist), 'lz4 frame block', pos);
        }
        if (n > maxOutput - total) throw new VmkitError('LIMIT', `lz4 frame output is over maxOutput ${maxOutput}`);
        if (csum) e.xxh32Update(at, n);
        parts.push(c.u8().slice(at, at + n));
        total += n;
        if (!indep) {
          // Keep the last 64 KiB as the next block's history.
          const end = hist + n;
          const keep = Math.min(HIST, end);
          c.u8().copyWithin(w, w + end - keep, w + end);
          hist = keep;
        }
      }
      if (csum) {
        if (frame.length - pos < 4) corrupt('truncated content checksum', pos);
        if ((e.xxh32Digest() >>> 0) !== dv.getUint32(pos, true)) {
          throw new VmkitError('INTEGRITY', 'lz4 content checksum mismatch', { offset: pos });
        }
        pos += 4;
      }
    });
    if (hasSize && BigInt(total - frameStart) !== contentSize) corrupt('content size does not match the header', start);
  }
  return concatBytes(parts, total);
}
