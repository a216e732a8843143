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
  /**
   * A prefetched page was used for the first time. A policy may load more
   * now (asynchronous readahead, no fault): it returns those runs.
   */
  onHit?(vpn: bigint | undefined, ppn: number, engine?: PrefetchEngine): Uint32Array | undefined | void;
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
  /** Adaptive: grow the read-around when at least this share of the last window was used before the next fault (default 0.25). */
  growAt?: number;
  /** Adaptive: shrink (read-around, or a stream's window) when less than this share was used (default 0.1). */
  shrinkAt?: number;
  /** Adaptive: this many consecutive unmapped virtual pages end a region; no window crosses one (default 32: 128 KiB, Linux's default readahead). */
  gap?: number;
  /** Adaptive: sequential streams followed at once (default 8). */
  streams?: number;
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
  /** The way the stream moves: its windows go this way. */
  dir: 1 | -1;
  /** The last window issued, virtual pages [lo, hi] after clipping. */
  lo: bigint;
  hi: bigint;
  /** Its size in pages. */
  size: number;
  /** A page the window loaded whose first use issues the next window; -1n: none. */
  marker: bigint;
  /** Pages the window loaded (the faulting page not counted), and how many of them were used since. */
  issued: number;
  used: number;
  /** When the stream last moved: the least recent one is replaced. */
  at: number;
}

/**
 * The virtual window sized the way Linux sizes readahead (mm/readahead.c,
 * mm/filemap.c), on the guest's virtual pages:
 *
 * - **read-around**: a fault next to no known stream loads `ra` pages ahead
 *   and a quarter of that behind, and starts a stream. `ra` starts at the
 *   initial window; at each read-around it is judged on the previous
 *   window: pages used since it was issued against pages it brought — ×4
 *   (×2 from a sixteenth of `maxWindow` on) at `growAt` or more, halved
 *   under `shrinkAt`, within `minWindow`..`maxWindow`;
 * - **sequential miss**: a fault on the page next to either end of a
 *   stream's window continues the stream from there, that way:
 *   the window grows ×4 / ×2 the same way, or halves when under `shrinkAt`
 *   of the last window was used (the program skipped it: waste); turning
 *   round keeps the size;
 * - **asynchronous readahead**: each window marks a page it loaded (three
 *   quarters into a read-around's forward part, the first page of a
 *   stream's window); the first use of that page issues the stream's next
 *   window at once, ×4 / ×2, without a fault;
 * - **region bounds**: no window crosses `gap` consecutive unmapped virtual
 *   pages (a hole in the page tables, as between two mappings), so a wide
 *   window stops at the edge of its mapping instead of spilling into the next.
 *
 * At most `streams` streams are followed (a reader follows a few files at once).
 */
class AdaptivePolicy implements PrefetchPolicy {
  readonly name = 'adaptive';
  private readonly streams: Stream[] = [];
  private ra: number;
  private readonly min: number;
  private readonly max: number;
  private readonly grow: number;
  private readonly shrink: number;
  private readonly gap: number;
  private readonly maxStreams: number;
  /** Pages the last window loaded, and prefetched pages used since (any window's). */
  private lastIssued = 0;
  private hits = 0;
  private clock = 0;
  constructor(initial: number, min: number, max: number, grow: number, shrink: number, gap: number, maxStreams: number) {
    this.ra = initial;
    this.min = min;
    this.max = max;
    this.grow = grow;
    this.shrink = shrink;
    this.gap = gap;
    this.maxStreams = maxStreams;
  }

  /** get_next_ra_size: ×4 while small, then ×2, capped. */
  private grown(size: number): number {
    return Math.min(this.max, size < this.max >> 4 ? size * 4 : size * 2);
  }

  /**
   * Frames of the window [v - back, v + ahead] clipped to v's region (`gap`
   * unmapped pages in a row end it; v's own page is always in), the clipped
   * bounds, and the translations for placing the marker.
   */
  private window(engine: PrefetchEngine, v: bigint, back: number, ahead: number, withV: boolean): { frames: number[]; lo: bigint; hi: bigint; f: Float64Array; base: bigint } {
    const b = v >= BigInt(back) ? back : Number(v);
    const base = v - BigInt(b);
    const f = engine.frameRange(base, b + ahead + 1);
    const edge = (step: 1 | -1, n: number): number => {
      let end = 0;
      let hole = 0;
      for (let i = 1; i <= n; i++) {
        if (f[b + step * i]! < 0) {
          if (++hole >= this.gap) break;
        } else {
          hole = 0;
          end = i;
        }
      }
      return end;
    };
    const up = edge(1, ahead);
    const down = edge(-1, b);
    const frames: number[] = [];
    for (let i = b - down; i <= b + up; i++) if ((withV || i !== b) && f[i]! >= 0 && f[i]! < engine.pages) frames.push(f[i]!);
    return { frames, lo: v - BigInt(down), hi: v + BigInt(up), f, base };
  }

  /**
   * Loads the window into stream `s` (fault: the faulting frame, or -1 for
   * asynchronous readahead) and marks the first page from `markFrom` on,
   * the way the stream moves, that this window loaded.
   */
  private load(engine: PrefetchEngine, s: Stream, w: ReturnType<AdaptivePolicy['window']>, size: number, fault: number, markFrom: bigint): Uint32Array {
    const before = w.frames.map((fr) => engine.isResident(fr));
    const runs = engine.faultList(w.frames, fault);
    const loaded = new Set(w.frames.filter((_, i) => !before[i]));
    s.lo = w.lo;
    s.hi = w.hi;
    s.size = size;
    s.issued = loaded.size;
    s.used = 0;
    s.at = ++this.clock;
    s.marker = -1n;
    for (let v = markFrom; v >= s.lo && v <= s.hi; v += BigInt(s.dir)) {
      if (loaded.has(w.f[Number(v - w.base)]!)) {
        s.marker = v;
        break;
      }
    }
    this.lastIssued = loaded.size;
    this.hits = 0;
    return runs;
  }

  onFault(engine: PrefetchEngine, vpn: bigint | undefined, ppn: number): Uint32Array {
    const v = vpn ?? engine.reverse(ppn);
    if (v === undefined) return engine.faultList([], ppn);
    for (const s of this.streams) {
      // Linux's test: the access is the page right after the window (here also right before it).
      const dir = v === s.hi + 1n ? 1 : v === s.lo - 1n ? -1 : 0;
      if (dir === 0) continue;
      // A sequential miss: continue the stream from here.
      let size = s.size;
      if (dir === s.dir) size = s.issued > 0 && s.used / s.issued < this.shrink ? Math.max(this.min, size >> 1) : this.grown(size);
      s.dir = dir;
      const w = dir > 0 ? this.window(engine, v, 0, size, false) : this.window(engine, v, size, 0, false);
      return this.load(engine, s, w, size, ppn, v + BigInt(dir));
    }
    // Read-around; first judge the last window on what got used.
    if (this.lastIssued > 0) {
      const ratio = this.hits / this.lastIssued;
      if (ratio >= this.grow) this.ra = this.grown(this.ra);
      else if (ratio < this.shrink) this.ra = Math.max(this.min, this.ra >> 1);
      this.lastIssued = 0;
    }
    let s: Stream;
    if (this.streams.length < this.maxStreams) {
      s = { dir: 1, lo: v, hi: v, size: 0, marker: -1n, issued: 0, used: 0, at: 0 };
      this.streams.push(s);
    } else {
      s = this.streams.reduce((a, b) => (a.at <= b.at ? a : b));
      s.dir = 1;
    }
    const ra = this.ra;
    // Linux marks the page async_size = ra / 4 before the window's end.
    return this.load(engine, s, this.window(engine, v, ra >> 2, ra, false), ra, ppn, v + BigInt(ra - (ra >> 2)));
  }

  onHit(vpn: bigint | undefined, _ppn: number, engine?: PrefetchEngine): Uint32Array | undefined {
    if (vpn === undefined) return undefined;
    this.hits++;
    let hit: Stream | undefined;
    for (const s of this.streams) {
      if (vpn >= s.lo && vpn <= s.hi) s.used++;
      if (s.marker === vpn) hit = s;
    }
    if (!hit || !engine) return undefined;
    // The marked page is in use: the stream is sequential, issue its next window now.
    hit.marker = -1n;
    const size = this.grown(hit.size);
    const start = hit.dir > 0 ? hit.hi + 1n : hit.lo - 1n;
    if (start < 0n) return undefined;
    const w = hit.dir > 0 ? this.window(engine, start, 0, size - 1, true) : this.window(engine, start, size - 1, 0, true);
    return this.load(engine, hit, w, size, -1, start);
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
  onHit(vpn: bigint | undefined, ppn: number, engine?: PrefetchEngine): Uint32Array | undefined {
    return this.inner.onHit?.(vpn, ppn, engine) ?? undefined;
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
      const gap = options.gap ?? 32;
      aint(gap, 'gap', 1, 32767);
      const streams = options.streams ?? 8;
      aint(streams, 'streams', 1, 1024);
      return new AdaptivePolicy(Math.min(max, Math.max(min, ahead)), min, max, grow, shrink, gap, streams);
    }
    case 'replay':
    case 'replay+virtual': {
      if (!options.record) throw new VmkitError('ARG_RANGE', `policy ${n} needs a recorded working set (record)`);
      const inner = n === 'replay' ? new FixedPolicy('none', 0, 0) : new FixedPolicy('virtual', back, ahead);
      return new ReplayPolicy(options.record, inner, n);
    }
  }
}
