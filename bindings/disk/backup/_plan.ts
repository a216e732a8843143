/**
 * Host side of the core's copy planner (assembly/backup_plan.ts, docs/abi.md
 * "backup plan"): marshals extents into core memory and back.
 * @module
 */
import { withCore, type Core } from '../../core.js';
import { check } from '../../_status.js';
import type { BlockExtent } from './_types.js';

/** One planned operation: copy data, or write zeroes. */
export interface PlanOp {
  offset: number;
  length: number;
  zero: boolean;
}

interface PlanExports {
  backupPlanExtents(inp: number, n: number, baseDepth: number, chunk: bigint, out: number, cap: number): number;
  backupPlanSubtract(start: bigint, len: bigint, mir: number, m: number, out: number, cap: number): number;
  backupPlanZeroRuns(buf: number, len: number, granule: number, out: number, cap: number): number;
}

const KIND: Record<BlockExtent['kind'], bigint> = { data: 0n, zero: 1n, unallocated: 2n };

function ex(c: Core): PlanExports {
  return c.exports as unknown as PlanExports;
}

function view(c: Core, ptr: number, count: number): BigUint64Array {
  // ptr is 16-byte aligned (alloc), so an 8-byte view lines up.
  return new BigUint64Array(c.exports.memory.buffer, ptr, count);
}

/**
 * Copy operations for the extents allocated above `baseDepth` (depth 0 = top;
 * `Infinity` = every allocated extent), split so none crosses a multiple of
 * `chunk`. `extents` must be sorted and disjoint (a block-status walk).
 */
export function planExtents(extents: readonly BlockExtent[], baseDepth: number, chunk: number): PlanOp[] {
  if (extents.length === 0) return [];
  return withCore((c) => {
    const n = extents.length;
    let cap = 0;
    for (const e of extents) cap += Math.floor(e.length / chunk) + 2;
    const inp = c.alloc(n * 24);
    const out = c.alloc(cap * 24);
    try {
      const v = view(c, inp, n * 3);
      extents.forEach((e, i) => {
        v[i * 3] = BigInt(e.offset);
        v[i * 3 + 1] = BigInt(e.length);
        v[i * 3 + 2] = (KIND[e.kind] << 32n) | BigInt(Math.min(e.depth, 0xffff_fffe));
      });
      const bd = baseDepth === Infinity ? 0xffff_ffff : Math.min(baseDepth, 0xffff_ffff);
      const k = check(ex(c).backupPlanExtents(inp, n, bd | 0, BigInt(chunk), out, cap), 'backup plan');
      const o = view(c, out, k * 3);
      const ops: PlanOp[] = [];
      for (let i = 0; i < k; i++) ops.push({ offset: Number(o[i * 3]!), length: Number(o[i * 3 + 1]!), zero: o[i * 3 + 2] === 1n });
      return ops;
    } finally {
      c.free(inp);
      c.free(out);
    }
  });
}

/** The parts of [offset, offset+length) not covered by `ranges` (sorted [start, end) pairs). */
export function subtractRanges(offset: number, length: number, ranges: ReadonlyArray<readonly [number, number]>): Array<[number, number]> {
  if (length === 0) return [];
  if (ranges.length === 0) return [[offset, offset + length]];
  return withCore((c) => {
    const m = ranges.length;
    const mir = c.alloc(m * 16);
    const out = c.alloc((m + 1) * 16);
    try {
      const v = view(c, mir, m * 2);
      ranges.forEach(([s, e], i) => {
        v[i * 2] = BigInt(s);
        v[i * 2 + 1] = BigInt(e - s);
      });
      const k = check(ex(c).backupPlanSubtract(BigInt(offset), BigInt(length), mir, m, out, m + 1), 'backup plan subtract');
      const o = view(c, out, k * 2);
      const res: Array<[number, number]> = [];
      for (let i = 0; i < k; i++) res.push([Number(o[i * 2]!), Number(o[i * 2]!) + Number(o[i * 2 + 1]!)]);
      return res;
    } finally {
      c.free(mir);
      c.free(out);
    }
  });
}

/**
 * Splits `buf` into runs of whole `granule`s that are all zero or not; offsets
 * relative to buf. Zero runs become zero writes on the target.
 */
export function zeroRuns(buf: Uint8Array, granule: number): PlanOp[] {
  if (buf.length === 0) return [];
  // Copied data is rarely zero: when every granule has a non-zero byte in its first 16, the
  // buffer is one data run, and copying it into the core to scan would cost more than the copy.
  if (leadsWithData(buf, granule)) return [{ offset: 0, length: buf.length, zero: false }];
  return withCore((c) => {
    const cap = Math.ceil(buf.length / granule) + 1;
    const p = c.alloc(buf.length);
    const out = c.alloc(cap * 24);
    try {
      c.u8().set(buf, p);
      const k = check(ex(c).backupPlanZeroRuns(p, buf.length, granule, out, cap), 'zero runs');
      const o = view(c, out, k * 3);
      const ops: PlanOp[] = [];
      for (let i = 0; i < k; i++) ops.push({ offset: Number(o[i * 3]!), length: Number(o[i * 3 + 1]!), zero: o[i * 3 + 2] === 1n });
      return ops;
    } finally {
      c.free(p);
      c.free(out);
    }
  });
}

/**
 * True when every `granule` of `buf` has a non-zero byte among its first 16
 * (so none is all zero). A quick test that spares the core scan for data.
 *
 * @example
 * ```ts
 * if (leadsWithData(buf, 4096)) await target.write(at, buf); // no zero runs to look for
 * ```
 * @internal
 */
export function leadsWithData(buf: Uint8Array, granule: number): boolean {
  for (let g = 0; g < buf.length; g += granule) {
    const end = Math.min(buf.length, g + 16);
    let i = g;
    while (i < end && buf[i] === 0) i++;
    if (i === end) return false;
  }
  return true;
}
