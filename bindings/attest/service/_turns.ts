/**
 * Small requests first. While any small request (a nonce, an ordinary
 * attestation, `/healthz`) is in flight, the work of large requests waits:
 * each pool worker at its next checkpoint (a flag in shared memory it waits
 * on with `Atomics.wait`, _appraise-worker.ts), and the event loop's slices
 * of a large appraisal at their next turn. It waits at most for a budget of
 * time, so that a steady stream of small requests cannot starve a large one:
 * a large request keeps at least `1 - share` of the time (a quarter by
 * default) and is never held more than `capMs` at once.
 *
 * ```
 * small requests in flight   0 ──┐1      ┌──0 ──┐1 ┌──0
 *                                └───────┘      └──┘
 * flag (shared with workers)  0 ─ 1 ─────── 0 ── 1 ── 0
 * worker                      run │ wait ... │ run │w│ run   (checkpoint every few entries)
 * event loop, large slices    run │ small requests only │ run ...
 * ```
 *
 * Why: on a machine with few cores the pool's threads (and the garbage
 * collector's helper threads working for them, which do not take a thread's
 * nice value) compete with the event loop for the cores and the memory
 * bandwidth; a small request's latency then grows with the large work beside
 * it. Pausing the large work while small requests are served costs a large
 * request about the small requests' own time.
 * @module
 */
import { _macrotask } from '../ima.js';

/**
 * A budget of pause time: full at `capMs`, refilled at `share` ms per ms of
 * wall time, spent by each pause. Under continuous demand it allows pauses
 * for `share` of the time. @internal
 */
export class _PauseBudget {
  private tokens: number;
  private last: number;
  private readonly capMs: number;
  private readonly share: number;
  private readonly now: () => number;
  constructor(capMs: number = 50, share: number = 0.75, now: () => number = () => performance.now()) {
    this.capMs = capMs;
    this.share = share;
    this.tokens = capMs;
    this.now = now;
    this.last = now();
  }

  /** How long a pause may last from now, ms (0: none). */
  allowed(): number {
    const now = this.now();
    this.tokens = Math.min(this.capMs, this.tokens + (now - this.last) * this.share);
    this.last = now;
    return this.tokens >= 0.5 ? this.tokens : 0;
  }

  /** A pause of `ms` was taken (the refill goes on during it: the share is of all wall time). */
  spent(ms: number): void {
    this.tokens -= ms;
  }
}

/**
 * The worker's checkpoint: while the flag says small requests are in
 * flight, waits (the thread sleeps) until it clears or the budget is spent.
 * @internal
 */
export function _yieldToSmall(flag: Int32Array | undefined, budget: _PauseBudget): void {
  if (!flag || Atomics.load(flag, 0) === 0) return;
  const ms = budget.allowed();
  if (ms === 0) return;
  const t0 = performance.now();
  Atomics.wait(flag, 0, 1, ms);
  budget.spent(performance.now() - t0);
}

/** Small requests in flight, told to the pool's workers and to the event loop's large work. @internal */
export class _SmallFirst {
  /** 1 while small requests are in flight (shared with the pool's workers). */
  readonly flag: Int32Array = new Int32Array(new SharedArrayBuffer(4));
  private small = 0;
  private readonly budget: _PauseBudget;
  private waiting: (() => void)[] = [];

  constructor(budget: _PauseBudget = new _PauseBudget()) {
    this.budget = budget;
  }

  /** Small requests in flight. */
  get inFlight(): number {
    return this.small;
  }

  /** A small request began. */
  enter(): void {
    if (this.small++ === 0) Atomics.store(this.flag, 0, 1);
  }

  /** A small request ended (or turned out large). */
  leave(): void {
    if (--this.small > 0) return;
    this.small = 0;
    Atomics.store(this.flag, 0, 0);
    Atomics.notify(this.flag, 0);
    for (const w of this.waiting.splice(0)) w();
  }

  /**
   * A turn of the event loop for a slice of large work: after the events
   * pending now, and while small requests are in flight, after them (within
   * the budget).
   */
  async turn(): Promise<void> {
    await _macrotask();
    if (this.small === 0) return;
    const ms = this.budget.allowed();
    if (ms === 0) return;
    const t0 = performance.now();
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(t);
        const i = this.waiting.indexOf(done);
        if (i >= 0) this.waiting.splice(i, 1);
        resolve();
      };
      const t = setTimeout(done, ms);
      this.waiting.push(done);
    });
    this.budget.spent(performance.now() - t0);
  }
}
