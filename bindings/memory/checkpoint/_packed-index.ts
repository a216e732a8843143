/**
 * The packed page table of format version 3 (docs/checkpoint-format.md,
 * "Index"): the same four words per page as version 2, sent through a
 * reversible transform that leaves mostly zero bytes, then LZ4, in groups of
 * {@link PACK_GROUP} pages. On the real 2 GiB guest's import it is 2.0 MiB
 * instead of 8.0 MiB: the record checksums (4 random bytes per stored page)
 * and the record lengths are nearly all that is left.
 *
 * Transform of a group (n pages), word by word, then byte planes:
 * - a zero or absent page becomes (0, 0, kind << 28, 0): its block, offset and
 *   checksum are implied (NO_BLOCK, 0, 0);
 * - a stored page's block becomes its difference from the previous stored
 *   page's block (mod 2^32), and its offset the difference from where the
 *   previous stored record of the same block ended (0 for a block's first);
 * - the words are laid out by column (all blocks, all offsets, all
 *   kind|lengths, all checksums), and the 16·n bytes by byte plane (byte k of
 *   every word of column c together), so the constant high bytes form runs.
 * A group is stored as u32 `length | flag << 31` and its bytes: flag 1 an LZ4
 * block decoding to exactly 16·n bytes, flag 0 the 16·n transformed bytes raw.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { concatBytes } from '../../_bytes.js';
import { blockCompress, blockDecompressInto } from './_codec.js';

/** Pages per group of the packed page table (the last group may be shorter). */
export const PACK_GROUP = 65536;
const NO_BLOCK = 0xffffffff;
const KIND_SHIFT = 28;
const PAGE_ZERO = 1;
const PAGE_ABSENT = 0;
/** A group's LZ4 block cannot be smaller than this share of its output (a block expands 255:1 at most). */
const MAX_EXPANSION = 255;

/** Groups of a table of `pages` pages. */
export function packGroups(pages: number): number {
  return Math.ceil(pages / PACK_GROUP);
}

function isStored(w2: number): boolean {
  const kind = w2 >>> KIND_SHIFT;
  return kind !== PAGE_ZERO && kind !== PAGE_ABSENT;
}

/** Packs a page table of four words per page (see the module comment). */
export function packPageTable(pages: Uint32Array): Uint8Array {
  const np = pages.length / 4;
  const parts: Uint8Array[] = [];
  let total = 0;
  let prevBlock = 0;
  let prevEnd = 0;
  for (let g = 0; g < np; g += PACK_GROUP) {
    const n = Math.min(PACK_GROUP, np - g);
    const cols = new Uint32Array(4 * n);
    for (let i = 0; i < n; i++) {
      const p = 4 * (g + i);
      const w2 = pages[p + 2]!;
      if (!isStored(w2)) {
        cols[2 * n + i] = (w2 >>> KIND_SHIFT) << KIND_SHIFT;
        continue;
      }
      const blk = pages[p]!;
      const off = pages[p + 1]!;
      const expected = blk === prevBlock ? prevEnd : 0;
      cols[i] = (blk - prevBlock) >>> 0;
      cols[n + i] = (off - expected) >>> 0;
      cols[2 * n + i] = w2;
      cols[3 * n + i] = pages[p + 3]!;
      prevBlock = blk;
      prevEnd = off + (w2 & 0x0fffffff);
    }
    const planes = new Uint8Array(16 * n);
    const bytes = new Uint8Array(cols.buffer);
    // Word w of column c is cols[c * n + i]; byte k of it goes to plane 4c + k.
    for (let c = 0; c < 4; c++) {
      for (let k = 0; k < 4; k++) {
        const plane = planes.subarray((4 * c + k) * n, (4 * c + k + 1) * n);
        for (let i = 0, s = 4 * c * n + k; i < n; i++, s += 4) plane[i] = bytes[s]!;
      }
    }
    const z = blockCompress(planes);
    const packed = z.length < planes.length;
    const body = packed ? z : planes;
    const head = new Uint8Array(4);
    new DataView(head.buffer).setUint32(0, (body.length | (packed ? 0x80000000 : 0)) >>> 0, true);
    parts.push(head, body);
    total += 4 + body.length;
  }
  return concatBytes(parts, total);
}

/**
 * Checks the group framing of a packed table of `pages` pages in `b` without
 * decoding it: every group's length lies inside `b`, the groups end exactly at
 * its end, and no LZ4 group claims more than 255 output bytes per input byte.
 * So the 16-byte-per-page table a reader then allocates is bounded by the
 * index's own length (×255 / 16 pages per byte at worst). Throws CORRUPT with
 * the byte offset (`base` + position).
 */
export function checkPackedFraming(b: Uint8Array, pages: number, base: number): void {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let o = 0;
  for (let g = 0; g < pages; g += PACK_GROUP) {
    const n = Math.min(PACK_GROUP, pages - g);
    if (o + 4 > b.length) throw new VmkitError('CORRUPT', `checkpoint: packed page table ends inside group ${g / PACK_GROUP}`, { offset: base + o });
    const word = v.getUint32(o, true);
    const len = word & 0x7fffffff;
    const packed = word >>> 31 === 1;
    if (packed ? len === 0 || len * MAX_EXPANSION < 16 * n : len !== 16 * n) {
      throw new VmkitError('CORRUPT', `checkpoint: packed page table group ${g / PACK_GROUP} has a bad length ${len}`, { offset: base + o });
    }
    o += 4 + len;
    if (o > b.length) throw new VmkitError('CORRUPT', `checkpoint: packed page table group ${g / PACK_GROUP} runs past the index`, { offset: base + o - len - 4 });
  }
  if (o !== b.length) throw new VmkitError('CORRUPT', `checkpoint: ${b.length - o} bytes after the packed page table`, { offset: base + o });
}

/**
 * Unpacks a table checked by {@link checkPackedFraming} into `pages` (four
 * words per page). CORRUPT when a group does not decode to exactly its size.
 */
export function unpackPageTable(b: Uint8Array, pages: Uint32Array, base: number): void {
  const np = pages.length / 4;
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let o = 0;
  let prevBlock = 0;
  let prevEnd = 0;
  const planesBuf = new Uint8Array(16 * Math.min(PACK_GROUP, np));
  const cols = new Uint32Array(4 * Math.min(PACK_GROUP, np));
  const colBytes = new Uint8Array(cols.buffer);
  for (let g = 0; g < np; g += PACK_GROUP) {
    const n = Math.min(PACK_GROUP, np - g);
    const word = v.getUint32(o, true);
    const len = word & 0x7fffffff;
    const body = b.subarray(o + 4, o + 4 + len);
    const planes = planesBuf.subarray(0, 16 * n);
    if (word >>> 31 === 1) {
      let got: number;
      try {
        got = blockDecompressInto(body, planes);
      } catch (e) {
        if (e instanceof VmkitError && (e.code === 'CORRUPT' || e.code === 'OUTPUT_TOO_SMALL')) got = -1;
        else throw e;
      }
      if (got !== planes.length) throw new VmkitError('CORRUPT', `checkpoint: packed page table group ${g / PACK_GROUP} does not decode to ${n} pages`, { offset: base + o });
    } else planes.set(body);
    for (let c = 0; c < 4; c++) {
      for (let k = 0; k < 4; k++) {
        const plane = planes.subarray((4 * c + k) * n, (4 * c + k + 1) * n);
        for (let i = 0, d = 4 * c * n + k; i < n; i++, d += 4) colBytes[d] = plane[i]!;
      }
    }
    for (let i = 0; i < n; i++) {
      const p = 4 * (g + i);
      const w2 = cols[2 * n + i]!;
      if (!isStored(w2)) {
        if (cols[i] !== 0 || cols[n + i] !== 0 || cols[3 * n + i] !== 0 || (w2 & 0x0fffffff) !== 0) {
          throw new VmkitError('CORRUPT', `checkpoint: page ${g + i} is zero or absent but carries a location (packed page table)`);
        }
        pages[p] = NO_BLOCK;
        pages[p + 1] = 0;
        pages[p + 2] = w2;
        pages[p + 3] = 0;
        continue;
      }
      const blk = (prevBlock + cols[i]!) >>> 0;
      const off = ((blk === prevBlock ? prevEnd : 0) + cols[n + i]!) >>> 0;
      pages[p] = blk;
      pages[p + 1] = off;
      pages[p + 2] = w2;
      pages[p + 3] = cols[3 * n + i]!;
      prevBlock = blk;
      prevEnd = off + (w2 & 0x0fffffff);
    }
    o += 4 + len;
  }
}
