/**
 * The block layer's calls into the core's sector module (assembly/sectors.ts):
 * zero detection per granule and bitmap-to-runs scanning.
 * @module
 */
import { withCore } from '../core.js';
import { check } from '../_status.js';
import { VmkitError } from '../errors.js';
import { aint } from '../_utils.js';

interface SectorExports {
  sectorsZeroMap(buf: number, len: number, granule: number, out: number): number;
  sectorsCopyZero(dst: number, src: number, len: number, granule: number, out: number): number;
  sectorsBitmapRuns(bitmap: number, start: number, nbits: number, out: number, cap: number): number;
}

/** One run of equal bits in a bitmap. */
export interface BitRun {
  start: number;
  length: number;
  value: 0 | 1;
}

/**
 * Which `granule`-byte pieces of `data` are all zero: one bit per granule
 * (LSB first), 1 = zero. `granule` is a non-zero multiple of 16.
 * @internal
 */
export function zeroGranules(data: Uint8Array, granule: number): Uint8Array {
  if (data.length > 0x7fff_0000) throw new VmkitError('ARG_RANGE', 'zero scan: buffer too large');
  const n = Math.ceil(data.length / granule);
  const bmLen = Math.max(1, (n + 7) >> 3);
  if (data.length === 0) return new Uint8Array(bmLen);
  return withCore((c) => {
    const ex = c.exports as unknown as SectorExports;
    const p = c.alloc(data.length + bmLen);
    try {
      c.u8().set(data, p);
      check(ex.sectorsZeroMap(p, data.length, granule, p + data.length), 'zero scan');
      return c.u8().slice(p + data.length, p + data.length + bmLen);
    } finally {
      c.free(p);
    }
  });
}

/**
 * True when every byte of `data` is zero (one core pass).
 * @internal
 */
export function isAllZero(data: Uint8Array): boolean {
  if (data.length === 0) return true;
  const g = Math.ceil(data.length / 16) * 16;
  return (zeroGranules(data, g)[0]! & 1) === 1;
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
  return withCore((c) => {
    const ex = c.exports as unknown as SectorExports;
    // Room for 8 extra bytes so word-sized reads near the end stay in the block.
    const cap = Math.min(nbits, 1 << 20);
    const p = c.alloc(bitmap.length + 8 + cap * 12);
    try {
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
    } finally {
      c.free(p);
    }
  });
}
