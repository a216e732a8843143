/**
 * Byte-range bookkeeping for the mirror driver: a set of merged ranges (what
 * the mirror wrote since the job began) and a FIFO range lock (orders guest
 * writes and copy operations that touch the same range).
 * @module
 */
import { slicePlanOp, type PlanOp } from './_plan.js';

/** A set of half-open byte ranges kept sorted and merged. */
export class RangeSet {
  private starts: number[] = [];
  private ends: number[] = [];

  /** Number of disjoint ranges held. */
  get count(): number {
    return this.starts.length;
  }

  /** Total bytes covered. */
  bytes(): number {
    let n = 0;
    for (let i = 0; i < this.starts.length; i++) n += this.ends[i]! - this.starts[i]!;
    return n;
  }

  // First index whose end is >= x (ranges touching x merge with it).
  private lower(x: number): number {
    let lo = 0;
    let hi = this.ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ends[mid]! < x) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Adds [start, end), merging with ranges it overlaps or touches. */
  add(start: number, end: number): void {
    if (end <= start) return;
    const i = this.lower(start);
    let j = i;
    let s = start;
    let e = end;
    while (j < this.starts.length && this.starts[j]! <= end) {
      s = Math.min(s, this.starts[j]!);
      e = Math.max(e, this.ends[j]!);
      j++;
    }
    this.starts.splice(i, j - i, s);
    this.ends.splice(i, j - i, e);
  }

  /** The ranges overlapping [start, end), clipped to it, in order. */
  overlapping(start: number, end: number): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    for (let i = this.lower(start + 1); i < this.starts.length && this.starts[i]! < end; i++) {
      const s = Math.max(start, this.starts[i]!);
      const e = Math.min(end, this.ends[i]!);
      if (e > s) out.push([s, e]);
    }
    return out;
  }

  /** True when [start, end) is entirely covered. */
  covers(start: number, end: number): boolean {
    const i = this.lower(start + 1);
    return i < this.starts.length && this.starts[i]! <= start && this.ends[i]! >= end;
  }

  /** Forgets everything below `x` (the copy pass has moved past it). */
  dropBelow(x: number): void {
    let k = 0;
    while (k < this.ends.length && this.ends[k]! <= x) k++;
    if (k > 0) {
      this.starts.splice(0, k);
      this.ends.splice(0, k);
    }
  }

  /** All ranges, in order. */
  toArray(): Array<[number, number]> {
    return this.starts.map((s, i) => [s, this.ends[i]!]);
  }
}

interface Held {
  start: number;
  end: number;
  done: Promise<void>;
}

/**
 * A lock on byte ranges granted in arrival order: an operation waits for every
 * earlier operation whose range overlaps its own, so two writes to one range
 * reach every device in the same order, and a copy never interleaves with a
 * guest write to its range. Non-overlapping operations run concurrently.
 */
export class RangeLock {
  private held: Held[] = [];

  /** Number of operations holding or waiting for a range. */
  get pending(): number {
    return this.held.length;
  }

  /**
   * Waits for earlier overlapping holders; resolves to the release function.
   * Callers must release (in a finally).
   */
  async acquire(start: number, end: number): Promise<() => void> {
    const waits: Promise<void>[] = [];
    for (const h of this.held) if (h.start < end && start < h.end) waits.push(h.done);
    let release!: () => void;
    const me: Held = { start, end, done: new Promise<void>((r) => (release = r)) };
    this.held.push(me);
    if (waits.length > 0) await Promise.all(waits);
    return () => {
      const i = this.held.indexOf(me);
      if (i >= 0) this.held.splice(i, 1);
      release();
    };
  }

  /** Resolves once every operation that holds or waits now has released. */
  async drain(): Promise<void> {
    await Promise.all(this.held.map((h) => h.done));
  }
}

/** The parts of `plan` inside `keep`, in order. */
export function restrictPlan(plan: readonly PlanOp[], keep: RangeSet): PlanOp[] {
  const out: PlanOp[] = [];
  for (const op of plan) {
    // A piece of an op read from the layer's file is read there, at offsets shifted alike.
    for (const [s, e] of keep.overlapping(op.offset, op.offset + op.length)) out.push(slicePlanOp(op, s, e));
  }
  return out;
}
