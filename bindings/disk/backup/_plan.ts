/**
 * Host side of the core's copy planner (assembly/backup_plan.ts, docs/abi.md
 * "backup plan"): marshals extents into core memory and back.
 * @module
 */
import { withScratch, type Core } from '../../core.js';
import { check } from '../../_status.js';
import { VmkitError } from '../../errors.js';
import type { BlockExtent } from '../device.js';
import type { BackupDevice } from './_types.js';

/** One planned operation: copy data, or write zeroes. */
export interface PlanOp {
  offset: number;
  length: number;
  zero: boolean;
  /**
   * Where the data lies in the top layer's file, when the plan came from its
   * L2 tables ({@link planFromL2}): the copy then reads the file there, in one
   * request, instead of reading the guest range through the chain.
   */
  host?: number;
  /**
   * Where the data lies when the op spans several host runs of the top
   * layer's file (guest-contiguous clusters stored apart, joined by
   * {@link joinHostRuns}): each segment is read at its host offset, and the
   * op is written to the target as one request.
   */
  segments?: Array<{ offset: number; length: number; host: number }>;
}

const KIND: Record<BlockExtent['kind'], bigint> = { data: 0n, zero: 1n, unallocated: 2n };

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
  const n = extents.length;
  let cap = 0;
  for (const e of extents) cap += Math.floor(e.length / chunk) + 2;
  return withScratch([n * 24, cap * 24], (ex, [inp, out], c) => {
    const v = view(c, inp, n * 3);
    extents.forEach((e, i) => {
      v[i * 3] = BigInt(e.offset);
      v[i * 3 + 1] = BigInt(e.length);
      v[i * 3 + 2] = (KIND[e.kind] << 32n) | BigInt(Math.min(e.depth, 0xffff_fffe));
    });
    const bd = baseDepth === Infinity ? 0xffff_ffff : Math.min(baseDepth, 0xffff_ffff);
    const k = check(ex.backupPlanExtents(inp, n, bd | 0, BigInt(chunk), out, cap), 'backup plan');
    const o = view(c, out, k * 3);
    const ops: PlanOp[] = [];
    for (let i = 0; i < k; i++) ops.push({ offset: Number(o[i * 3]!), length: Number(o[i * 3 + 1]!), zero: o[i * 3 + 2] === 1n });
    return ops;
  });
}

/** The parts of [offset, offset+length) not covered by `ranges` (sorted [start, end) pairs). */
export function subtractRanges(offset: number, length: number, ranges: ReadonlyArray<readonly [number, number]>): Array<[number, number]> {
  if (length === 0) return [];
  if (ranges.length === 0) return [[offset, offset + length]];
  const m = ranges.length;
  return withScratch([m * 16, (m + 1) * 16], (ex, [mir, out], c) => {
    const v = view(c, mir, m * 2);
    ranges.forEach(([s, e], i) => {
      v[i * 2] = BigInt(s);
      v[i * 2 + 1] = BigInt(e - s);
    });
    const k = check(ex.backupPlanSubtract(BigInt(offset), BigInt(length), mir, m, out, m + 1), 'backup plan subtract');
    const o = view(c, out, k * 2);
    const res: Array<[number, number]> = [];
    for (let i = 0; i < k; i++) res.push([Number(o[i * 2]!), Number(o[i * 2]!) + Number(o[i * 2 + 1]!)]);
    return res;
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
  const cap = Math.ceil(buf.length / granule) + 1;
  return withScratch([buf.length, cap * 24], (ex, [p, out], c) => {
    c.u8().set(buf, p);
    const k = check(ex.backupPlanZeroRuns(p, buf.length, granule, out, cap), 'zero runs');
    const o = view(c, out, k * 3);
    const ops: PlanOp[] = [];
    for (let i = 0; i < k; i++) ops.push({ offset: Number(o[i * 3]!), length: Number(o[i * 3 + 1]!), zero: o[i * 3 + 2] === 1n });
    return ops;
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

/**
 * A qcow2 layer that can hand out its L2 tables (bindings/disk/formats/qcow2's
 * Qcow2Device): what {@link planFromL2} needs of it.
 *
 * @example
 * ```ts
 * const layer: L2Layer | undefined = isL2Layer(disk.device) ? disk.device : undefined;
 * ```
 * @internal
 */
export interface L2Layer {
  readonly format: 'qcow2';
  readonly size: number;
  readonly header: { readonly clusterBits: number; readonly extendedL2: boolean; readonly dataFile?: string | undefined };
  readonly storage: { size(): Promise<number>; readInto(offset: number, dst: Uint8Array): Promise<void> };
  forEachL2Table(fn: (guestOffset: number, table: Uint8Array | undefined) => void): Promise<void>;
}

/**
 * True when `dev` is a qcow2 layer whose L2 tables {@link planFromL2} can walk.
 *
 * @example
 * ```ts
 * const plan = isL2Layer(dev) ? await planFromL2(dev, 1 << 20) : planExtents(await allocationMap(dev), 1, 1 << 20);
 * ```
 * @internal
 */
export function isL2Layer(dev: unknown): dev is L2Layer {
  const d = dev as Partial<L2Layer> | undefined;
  // Not with an external data file: the plan's host offsets would be read from the qcow2 file.
  return d?.format === 'qcow2' && typeof d.forEachL2Table === 'function' && typeof d.header?.clusterBits === 'number' && d.header.dataFile === undefined && d.storage !== undefined;
}

/**
 * The copy plan of everything the top layer `dev` holds (what a
 * consolidation into the base copies), from one pass over its L2 tables: the
 * core decodes each table into ops, data ops carrying their host offset and
 * merged while guest and host offsets both run on, none crossing a multiple
 * of `chunk`. Compressed clusters and partly allocated subclusters become ops
 * without a host offset (read through the chain). A data cluster past the
 * end of the file or misaligned is CORRUPT.
 *
 * @example
 * ```ts
 * const plan = await planFromL2(delta, 1 << 20); // [{ offset, length, zero, host }, ...]
 * ```
 * @internal
 */
export async function planFromL2(dev: L2Layer, chunk: number): Promise<PlanOp[]> {
  const { clusterBits, extendedL2 } = dev.header;
  const cs = 2 ** clusterBits;
  const es = extendedL2 ? 16 : 8;
  const ops: PlanOp[] = [];
  const fileSize = await dev.storage.size();
  const tables: Array<[number, Uint8Array]> = [];
  // Tables are decoded as they come (a copy each, since the device may evict or change them).
  await dev.forEachL2Table((guest, table) => {
    if (table) tables.push([guest, table.slice()]);
    if (tables.length >= 16) decode();
  });
  decode();
  function decode(): void {
    if (tables.length === 0) return;
    const tlen = tables[0]![1].length;
    const entries = tlen / es;
    const cap = 1 + entries * (Math.ceil(cs / chunk) + 1);
    withScratch([tlen, cap * 32], (ex, [t, out], c) => {
      for (const [guest, table] of tables) {
        c.u8().set(table, t);
        // The last op so far goes in first, so the core continues it across tables.
        let n = 0;
        const last = ops[ops.length - 1];
        if (last) {
          const v = new BigUint64Array(ex.memory.buffer, out, 4);
          v[0] = BigInt(last.offset);
          v[1] = BigInt(last.length);
          v[2] = BigInt(last.host ?? 0);
          v[3] = last.zero ? 1n : last.host === undefined ? 2n : 0n;
          n = 1;
          ops.pop();
        }
        const k = check(ex.backupPlanL2(t, entries, extendedL2 ? 1 : 0, clusterBits, BigInt(guest), BigInt(dev.size), BigInt(chunk), out, n, cap), 'qcow2 L2 plan', guest);
        const o = new BigUint64Array(ex.memory.buffer, out, k * 4);
        for (let i = 0; i < k; i++) {
          const offset = Number(o[i * 4]!);
          const length = Number(o[i * 4 + 1]!);
          const op = o[i * 4 + 3]!;
          if (op === 0n) {
            const host = Number(o[i * 4 + 2]!);
            if (host + Math.ceil(length / cs) * cs > fileSize) {
              throw new VmkitError('CORRUPT', `qcow2 L2 entry for guest offset ${offset} points past the end of the file (${host} + ${length} > ${fileSize})`, { offset });
            }
            ops.push({ offset, length, zero: false, host });
          } else ops.push({ offset, length, zero: op === 1n });
        }
      }
    });
    tables.length = 0;
  }
  return ops;
}

/**
 * Joins consecutive data ops of a {@link planFromL2} plan that are
 * guest-contiguous but stored apart in the layer's file (a delta written in
 * random order) into ops with {@link PlanOp.segments}, within the same chunk:
 * fewer, larger copy steps and target writes, the same reads.
 *
 * @example
 * ```ts
 * const plan = joinHostRuns(await planFromL2(delta, 1 << 20), 1 << 20);
 * ```
 * @internal
 */
export function joinHostRuns(plan: readonly PlanOp[], chunk: number): PlanOp[] {
  const out: PlanOp[] = [];
  for (const op of plan) {
    const last = out[out.length - 1];
    if (
      last !== undefined &&
      !op.zero &&
      !last.zero &&
      op.host !== undefined &&
      (last.host !== undefined || last.segments !== undefined) &&
      last.offset + last.length === op.offset &&
      Math.floor(last.offset / chunk) === Math.floor((op.offset + op.length - 1) / chunk)
    ) {
      const segments = last.segments ?? [{ offset: last.offset, length: last.length, host: last.host! }];
      segments.push({ offset: op.offset, length: op.length, host: op.host });
      out[out.length - 1] = { offset: last.offset, length: last.length + op.length, zero: false, segments };
    } else out.push(op);
  }
  return out;
}

/**
 * The part [start, end) of `op` (inside it), keeping where its data lies.
 *
 * @example
 * ```ts
 * const tail = slicePlanOp(op, op.offset + 65536, op.offset + op.length);
 * ```
 * @internal
 */
export function slicePlanOp(op: PlanOp, start: number, end: number): PlanOp {
  const out: PlanOp = { offset: start, length: end - start, zero: op.zero };
  if (op.host !== undefined) out.host = op.host + (start - op.offset);
  if (op.segments) {
    const segments = op.segments
      .filter((g) => g.offset < end && g.offset + g.length > start)
      .map((g) => {
        const a = Math.max(start, g.offset);
        return { offset: a, length: Math.min(end, g.offset + g.length) - a, host: g.host + (a - g.offset) };
      });
    if (segments.length === 1) out.host = segments[0]!.host;
    else out.segments = segments;
  }
  return out;
}

/** Walks the block status of `dev` over [0, size) into extents. */
export async function allocationMap(dev: BackupDevice, step: number = 1 << 30): Promise<BlockExtent[]> {
  const out: BlockExtent[] = [];
  let off = 0;
  while (off < dev.size) {
    const e = await dev.blockStatus(off, Math.min(step, dev.size - off));
    if (!(e.length > 0) || e.offset !== off) {
      throw new VmkitError('CORRUPT', `block status at ${off} returned an empty or misplaced extent`, { offset: off });
    }
    const last = out[out.length - 1];
    if (last && last.kind === e.kind && last.depth === e.depth && last.offset + last.length === off) last.length += e.length;
    else out.push({ ...e });
    off += e.length;
  }
  return out;
}
