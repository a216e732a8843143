/**
 * The hook through which disk ownership fences a stale owner: every writable
 * block device calls its guard before it writes or flushes, and the guard
 * throws VmkitError FENCED when this holder's epoch is no longer current.
 * @module
 */

/**
 * Checked by a block device before each write or flush.
 *
 * @example
 * ```ts
 * const guard: WriteGuard = {
 *   check(op) { if (!stillOwner()) throw new VmkitError('FENCED', `${op} after losing the disk`); },
 * };
 * const dev = await openImage('vm.qcow2', { guard });
 * ```
 */
export interface WriteGuard {
  /**
   * Throws VmkitError('FENCED') when the caller may no longer write. May be
   * async (e.g. it consults a lease); devices await it before touching storage.
   */
  check(op: 'write' | 'flush' | 'discard'): void | Promise<void>;
}
