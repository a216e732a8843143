/**
 * Deadlines for the handoff's waits. Every promise the handoff awaits on a
 * peer (a store call, a release request, an image open, the owner's policy, the
 * drain of in-flight writes) goes through {@link _within}, so no interleaving
 * leaves a caller waiting on a promise that nothing will settle: it gets the
 * answer or a `VmkitError` `TIMEOUT` (docs/ownership.md, "Deadlines").
 *
 * The timer is deliberately *not* unref'd: a process whose only pending work is
 * a bounded wait stays alive until the wait ends. (An HTTP release request whose
 * `fetch` never settles while its `AbortSignal.timeout` timer is unref'd let a
 * Node process exit with code 13, "unsettled top-level await", instead of
 * reporting TIMEOUT: issue #26.)
 * @module
 * @internal
 */
import { VmkitError } from '../../errors.js';

/**
 * `p`, or a `TIMEOUT` rejection after `ms` (at least 0), whichever comes first.
 * `p` keeps running; its late result is dropped (and a late rejection handled).
 *
 * @example
 * ```ts
 * const snap = await _within(store.read(disk), 2000, () => `reading the owner record of ${disk}`);
 * ```
 * @internal
 */
export function _within<T>(p: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const limit = Math.max(0, Math.ceil(ms));
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new VmkitError('TIMEOUT', `${what()}: no answer in ${limit} ms`)), limit);
  });
  return Promise.race([p, expired]).finally(() => clearTimeout(timer));
}

/**
 * A promise and the function that settles it, for waits that something else ends
 * (the drain of in-flight writes): settling twice is harmless.
 *
 * @example
 * ```ts
 * const idle = _signal(); queueMicrotask(idle.fire); await idle.promise;
 * ```
 * @internal
 */
export function _signal(): { promise: Promise<void>; fire: () => void } {
  let fire!: () => void;
  const promise = new Promise<void>((r) => (fire = r));
  return { promise, fire };
}
