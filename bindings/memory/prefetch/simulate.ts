/**
 * Runs a trace of guest-virtual addresses through a prefetch policy and
 * counts what a lazy restore would have done: faults, pages prefetched and
 * used or wasted, read calls and bytes read. Nothing is read: the engine
 * only keeps the bookkeeping, so a trace over a 64 GiB guest simulates in
 * the time its accesses take.
 *
 * Translation is the engine's own table ({@link PrefetchEngine.map}) or the
 * engine's translator (an address space walking the guest's tables).
 * @module
 */
import { VmkitError } from '../../errors.js';
import type { PrefetchEngine, PrefetchStats } from './engine.js';
import { UNMAPPED } from './engine.js';
import type { PrefetchPolicy } from './policies.js';

/**
 * What {@link simulate} measured.
 * @example
 * const { faults, wasted, workingSet } = simulate(engine, policy, trace);
 */
export interface SimulationResult extends PrefetchStats {
  /** The policy's name. */
  policy: string;
  /** Bytes the reads fetched (pages loaded × 4096). */
  bytesRead: number;
  /** Frames touched, in first-touch order: the working set a replay records. */
  workingSet: number[];
}

/**
 * Options of {@link simulate}.
 * @example
 * simulate(engine, policy, trace, { batch: 65536 });
 */
export interface SimulateOptions {
  /** Batch size for the translator (default 4096). */
  batch?: number;
}

const PAGE_SHIFT = 12n;

/**
 * Simulates `trace` (guest-virtual addresses, any byte within a page) on a
 * fresh engine under `policy`. Unmapped addresses are counted in `unmapped`
 * and otherwise skipped.
 * @example
 * const e = new PrefetchEngine(64, { mapCapacity: 16 });
 * e.map([[0n, 5], [1n, 9]]);
 * const r = simulate(e, createPolicy('virtual', { back: 0, ahead: 1 }), [0x0n, 0x1000n]);
 * r.faults; // 1
 */
export function simulate(engine: PrefetchEngine, policy: PrefetchPolicy, trace: Iterable<bigint>, options: SimulateOptions = {}): SimulationResult {
  if (engine.stats().accesses !== 0) throw new VmkitError('INVALID_STATE', 'simulate needs a fresh engine');
  const seen = new Uint8Array(Math.ceil(engine.pages / 8));
  const workingSet: number[] = [];
  let loaded = 0;
  const count = (runs: Uint32Array): void => {
    for (let i = 1; i < runs.length; i += 2) loaded += runs[i]!;
  };
  if (policy.start) count(policy.start(engine));
  const visit = (vpn: bigint, ppn: number, status: number): void => {
    if ((seen[ppn >> 3]! & (1 << (ppn & 7))) === 0) {
      seen[ppn >> 3]! |= 1 << (ppn & 7);
      workingSet.push(ppn);
    }
    if (status === 2) count(policy.onFault(engine, vpn, ppn));
    else if (status === 1 && policy.onHit) {
      const more = policy.onHit(vpn, ppn, engine);
      if (more) count(more);
    }
  };
  let hostUnmapped = 0;
  const translator = engine.translator;
  if (!translator) {
    for (const gva of trace) {
      const vpn = gva >> PAGE_SHIFT;
      const r = engine.touch(vpn);
      if (r < 0) continue;
      visit(vpn, Math.floor(r / 4), r & 3);
    }
  } else {
    const n = options.batch ?? 4096;
    const gvas = new BigUint64Array(n);
    const gpas = new BigUint64Array(n);
    let k = 0;
    const flush = (): void => {
      if (k === 0) return;
      const g = k === n ? gvas : gvas.subarray(0, k);
      const o = k === n ? gpas : gpas.subarray(0, k);
      translator.translateInto(g, o);
      for (let i = 0; i < k; i++) {
        const pa = o[i]!;
        if (pa === UNMAPPED || pa >> PAGE_SHIFT >= BigInt(engine.pages)) {
          hostUnmapped++;
          continue;
        }
        const ppn = Number(pa >> PAGE_SHIFT);
        visit(g[i]! >> PAGE_SHIFT, ppn, engine.access(ppn));
      }
      k = 0;
    };
    for (const gva of trace) {
      gvas[k++] = gva;
      if (k === n) flush();
    }
    flush();
  }
  const s = engine.stats();
  return {
    ...s,
    accesses: s.accesses + hostUnmapped,
    unmapped: s.unmapped + hostUnmapped,
    policy: policy.name,
    bytesRead: loaded * 4096,
    workingSet,
  };
}
