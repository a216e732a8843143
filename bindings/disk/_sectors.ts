/**
 * The block layer's calls into the core's sector module (assembly/sectors.ts):
 * zero detection per granule and bitmap-to-runs scanning.
 * @module
 */
import { withScratch } from '../core.js';
import { check } from '../_status.js';
import { VmkitError } from '../errors.js';
import { aint } from '../_utils.js';

/** One run of equal bits in a bitmap. */
export interface BitRun {
  start: number;
  length: number;
  value: 0 | 1;
}

// Bytes of data one core call scans: the data is copied into the core, and a
// caller's buffer of any size (a 1.5 GiB write) must not become one core block.
const WINDOW = 1 << 24;

function zeroGranulesCore(data: Uint8Array, granule: number): Uint8Array {
  const n = Math.ceil(data.length / granule);
  const bmLen = Math.max(1, (n + 7) >> 3);
  if (data.length === 0) return new Uint8Array(bmLen);
  return withScratch(data.length + bmLen, (ex, p, c) => {
    c.u8().set(data, p);
    check(ex.sectorsZeroMap(p, data.length, granule, p + data.length), 'zero scan');
    return c.u8().slice(p + data.length, p + data.length + bmLen);
  });
}

/**
 * Which `granule`-byte pieces of `data` are all zero: one bit per granule
 * (LSB first), 1 = zero. `granule` is a non-zero multiple of 16. Scanned in
 * windows of whole granules (8 at least, so each window's bitmap is whole
 * bytes), or granule by granule when one granule is larger than a window.
 * @internal
 */
export function zeroGranules(data: Uint8Array, granule: number): Uint8Array {
  if (data.length <= WINDOW) return zeroGranulesCore(data, granule);
  const n = Math.ceil(data.length / granule);
  const out = new Uint8Array((n + 7) >> 3);
  if (granule * 8 <= WINDOW) {
    const step = Math.floor(WINDOW / (granule * 8)) * granule * 8;
    for (let at = 0; at < data.length; at += step) {
      out.set(zeroGranulesCore(data.subarray(at, Math.min(data.length, at + step)), granule), at / granule / 8);
    }
  } else {
    for (let g = 0; g < n; g++) {
      if (isAllZero(data.subarray(g * granule, Math.min(data.length, (g + 1) * granule)))) out[g >> 3]! |= 1 << (g & 7);
    }
  }
  return out;
}

/**
 * True when every byte of `data` is zero (one core pass, a window at a time).
 * @internal
 */
export function isAllZero(data: Uint8Array): boolean {
  // Data mostly shows at once: a non-zero byte among the first or the last few answers without
  // copying the buffer into the core (a 1 MiB chunk of a convert cost ~1 ms to copy and scan there).
  const n = data.length;
  for (let i = 0; i < 16 && i < n; i++) if (data[i] !== 0 || data[n - 1 - i] !== 0) return false;
  for (let at = 0; at < data.length; at += WINDOW) {
    const part = data.subarray(at, Math.min(data.length, at + WINDOW));
    const g = Math.ceil(part.length / 16) * 16;
    if ((zeroGranulesCore(part, g)[0]! & 1) !== 1) return false;
  }
  return true;
}

/**
 * Scans bits [start, start + nbits) of `bitmap` into runs of equal bits.
 * @internal
 */
export function bitmapRuns(bitmap: Uint8Array, start: number, nbits: number): BitRun[] {
  // The core takes bit numbers as u32: checked here so that none wraps.
  aint(start, 'start', 0, 0xffff_ffff);
  aint(nbits, 'nbits', 0, 0xffff_ffff - start);
  if (nbits === 0) return [];
  if (Math.ceil((start + nbits) / 8) > bitmap.length) throw new VmkitError('ARG_RANGE', 'bitmap runs: bits past the end of the bitmap');
  // Room for 8 extra bytes so word-sized reads near the end stay in the block.
  const cap = Math.min(nbits, 1 << 20);
  return withScratch(bitmap.length + 8 + cap * 12, (ex, p, c) => {
    const u = c.u8();
    u.set(bitmap, p);
    u.fill(0, p + bitmap.length, p + bitmap.length + 8);
    const out = p + bitmap.length + 8;
    const n = check(ex.sectorsBitmapRuns(p, start, nbits, out, cap), 'bitmap runs');
    const dv = new DataView(c.u8().buffer, out, n * 12);
    const runs: BitRun[] = [];
    for (let i = 0; i < n; i++) {
      runs.push({ start: dv.getUint32(i * 12, true), length: dv.getUint32(i * 12 + 4, true), value: dv.getUint32(i * 12 + 8, true) ? 1 : 0 });
    }
    return runs;
  });
}
