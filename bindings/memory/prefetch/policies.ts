/**
 * Prefetch policies: what to load when a page faults. All run on the same
 * {@link PrefetchEngine} and are measured the same way (docs/prefetch.md):
 *
 * - `none`: the faulting page only;
 * - `physical`: its physical neighbours (Linux's fault-around);
 * - `virtual`: the frames of its virtual neighbours, a fixed window (the method);
 * - `adaptive`: the virtual window, grown while prefetched pages get used,
 *   shrunk when they are wasted, and turned the way accesses go (readahead);
 * - `replay`: the pages a previous run touched, all loaded at restore (REAP);
 * - `replay+virtual`: replay, and the virtual window for what it missed.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { aint, aoneOf } from '../../_utils.js';
import type { PrefetchEngine } from './engine.js';

/** Policy names {@link createPolicy} knows. @example POLICY_NAMES.includes('adaptive'); */
export const POLICY_NAMES = ['none', 'physical', 'virtual', 'adaptive', 'replay', 'replay+virtual'] as const;
/** A policy name. @example const p: PolicyName = 'replay+virtual'; */
export type PolicyName = (typeof POLICY_NAMES)[number];

/**
 * A prefetch policy. `onFault` loads the faulting page (and whatever else it
 * chooses) through the engine and returns the runs it read.
 * @example
 * const mine: PrefetchPolicy = { name: 'mine', onFault: (e, vpn, ppn) => e.faultPhysical(ppn, 0, 1) };
 */
export interface PrefetchPolicy {
  readonly name: string;
  /** Before the first access (a replay loads its working set here). Returns the runs read. */
  start?(engine: PrefetchEngine): Uint32Array;
  /** Frame `ppn` faulted; `vpn` is the faulting virtual page when known. */
  onFault(engine: PrefetchEngine, vpn: bigint | undefined, ppn: number): Uint32Array;
  /** A prefetched page was used for the first time. */
  onHit?(vpn: bigint | undefined, ppn: number): void;
}

/**
 * Options of {@link createPolicy}.
 * @example
 * const opts: PolicyOptions = { ahead: 8, minWindow: 2, maxWindow: 1024 };
 */
export interface PolicyOptions {
  /** Pages before the faulting page (default 8; adaptive: its initial window's back part). */
  back?: number;
  /** Pages after it (default 8). */
  ahead?: number;
  /** Replay: the recorded working set (frames, in first-touch order). */
  record?: ArrayLike<number>;
  /** Adaptive: smallest and largest window (default 2 and 1024). */
  minWindow?: number;
  maxWindow?: number;
  /** Adaptive: grow when at least this share of the last prefetch was used before the next fault (default 0.25). */
  growAt?: number;
  /** Adaptive: shrink when less than this share was used (default 0.1). */
  shrinkAt?: number;
  /** Adaptive: a stream is a 2^streamShift-page region of virtual space (default 18: 1 GiB). */
  streamShift?: number;
}

function virtualFault(engine: PrefetchEngine, vpn: bigint | undefined, ppn: number, back: number, ahead: number): Uint32Array {
  const v = vpn ?? engine.reverse(ppn);
  // Without a virtual page (a frame nothing maps) there is no neighbourhood.
  if (v === undefined) return engine.faultList([], ppn);
  return engine.faultVirtual(v, back, ahead);
}

class FixedPolicy implements PrefetchPolicy {
  readonly name: string;
  private readonly back: number;
  private readonly ahead: number;
  constructor(name: 'none' | 'physical' | 'virtual', back: number, ahead: number) {
    this.name = name;
    this.back = name === 'none' ? 0 : back;
    this.ahead = name === 'none' ? 0 : ahead;
  }
  onFault(engine: PrefetchEngine, vpn: bigint | undefined, ppn: number): Uint32Array {
    if (this.name === 'physical' || this.name === 'none') return engine.faultPhysical(ppn, this.back, this.ahead);
    return virtualFault(engine, vpn, ppn, this.back, this.ahead);
  }
}

interface Stream {
  window: number;
  dir: 1 | -1;
  last: bigint;
  issued: number;
  used: number;
}

/**
 * The virtual window sized like Linux readahead sizes its window: per stream
 * (a region of virtual space, 1 GiB by default), the window doubles when at
 * least a quarter of what the previous fault prefetched was used before the
 * next fault, and halves when under a tenth was; it points the way the
 * faults move (a quarter of it stays behind). The defaults were chosen on
 * the evaluation traces (docs/prefetch.md): smaller streams (2 MiB) and
 * stricter growth (half used) cost more faults than the waste they saved.
 */
class AdaptivePolicy implements PrefetchPolicy {
  readonly name = 'adaptive';
  private readonly streams = new Map<bigint, Stream>();
  private readonly initial: number;
  private readonly min: number;
  private readonly max: number;
  private readonly grow: number;
  private readonly shrink: number;
  private readonly shift: bigint;
  constructor(initial: number, min: number, max: number, grow: number, shrink: number, shift: number) {
    this.initial = initial;
    this.min = min;
    this.max = max;
    this.grow = grow;
    this.shrink = shrink;
    this.shift = BigInt(shift);
  }
  onFault(engine: PrefetchEngine, vpn: bigint | undefined, ppn: number): Uint32Array {
    const v = vpn ?? engine.reverse(ppn);
    if (v === undefined) return engine.faultList([], ppn);
    const key = v >> this.shift;
    let s = this.streams.get(key);
    if (!s) {
      s = { window: this.initial, dir: 1, last: v, issued: 0, used: 0 };
      this.streams.set(key, s);
    } else {
      if (v !== s.last) s.dir = v > s.last ? 1 : -1;
      if (s.issued > 0) {
        const ratio = s.used / s.issued;
        if (ratio >= this.grow) s.window = Math.min(this.max, s.window * 2);
        else if (ratio < this.shrink) s.window = Math.max(this.min, s.window >> 1);
      }
    }
    const w = s.window;
    const minor = w >> 2;
    const runs = s.dir > 0 ? engine.faultVirtual(v, minor, w) : engine.faultVirtual(v, w, minor);
    s.issued = Math.max(0, engine.lastLoaded - 1);
    s.used = 0;
    s.last = v;
    return runs;
  }
  onHit(vpn: bigint | undefined): void {
    if (vpn === undefined) return;
    const s = this.streams.get(vpn >> this.shift);
    if (s) s.used++;
  }
}

class ReplayPolicy implements PrefetchPolicy {
  readonly name: string;
  private readonly record: ArrayLike<number>;
  private readonly inner: PrefetchPolicy;
  constructor(record: ArrayLike<number>, inner: PrefetchPolicy, name: string) {
    this.record = record;
    this.inner = inner;
    this.name = name;
  }
  start(engine: PrefetchEngine): Uint32Array {
    const frames = Array.from(this.record).filter((p) => p < engine.pages);
    return engine.faultList(frames, -1);
  }
  onFault(engine: PrefetchEngine, vpn: bigint | undefined, ppn: number): Uint32Array {
    return this.inner.onFault(engine, vpn, ppn);
  }
  onHit(vpn: bigint | undefined, ppn: number): void {
    this.inner.onHit?.(vpn, ppn);
  }
}

/**
 * Makes a policy by name.
 * @example
 * const p = createPolicy('virtual', { back: 8, ahead: 8 });
 * const r = createPolicy('replay', { record: [0x830d, 0x830c] });
 */
export function createPolicy(name: PolicyName | string, options: PolicyOptions = {}): PrefetchPolicy {
  const n = aoneOf(name, 'policy', POLICY_NAMES);
  const back = options.back ?? 8;
  const ahead = options.ahead ?? 8;
  aint(back, 'back', 0, 32767);
  aint(ahead, 'ahead', 0, 32767);
  switch (n) {
    case 'none':
    case 'physical':
    case 'virtual':
      return new FixedPolicy(n, back, ahead);
    case 'adaptive': {
      const min = options.minWindow ?? 2;
      const max = options.maxWindow ?? 1024;
      aint(min, 'minWindow', 1, 32767);
      aint(max, 'maxWindow', min, 32767);
      const grow = options.growAt ?? 0.25;
      const shrink = options.shrinkAt ?? 0.1;
      if (!(grow > 0 && grow <= 1) || !(shrink >= 0 && shrink <= grow)) throw new VmkitError('ARG_RANGE', `adaptive needs 0 <= shrinkAt <= growAt <= 1, got ${shrink} and ${grow}`);
      const shift = options.streamShift ?? 18;
      aint(shift, 'streamShift', 0, 52);
      return new AdaptivePolicy(Math.min(max, Math.max(min, ahead)), min, max, grow, shrink, shift);
    }
    case 'replay':
    case 'replay+virtual': {
      if (!options.record) throw new VmkitError('ARG_RANGE', `policy ${n} needs a recorded working set (record)`);
      const inner = n === 'replay' ? new FixedPolicy('none', 0, 0) : new FixedPolicy('virtual', back, ahead);
      return new ReplayPolicy(options.record, inner, n);
    }
  }
}
