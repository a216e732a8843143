/**
 * An owner store in this JS realm's memory: for tests, the tour and browser
 * pages where every contender lives in one realm. Records are stored
 * serialized, so they go through the same validation as the file store.
 * @module
 */
import { encodeRecord, parseRecord } from './record.js';
import type { OwnerRecord, OwnerSnapshot, OwnerStore } from './types.js';

/**
 * A {@link OwnerStore} in memory; revisions are a per-disk counter.
 *
 * @example
 * ```ts
 * const store = new MemoryOwnerStore();
 * const a = await openOwned('vm.raw', { as: 'a', store, transport: inProcessTransport, image: { provider } });
 * ```
 */
export class MemoryOwnerStore implements OwnerStore {
  readonly kind: string = 'memory';
  private readonly data = new Map<string, { rev: number; bytes: Uint8Array }>();

  /**
   * Reads the current record of `disk` (validated like a file revision).
   *
   * @example
   * ```ts
   * const { record, revision } = await store.read('vm.raw'); // { record: null, revision: null } at first
   * ```
   */
  async read(disk: string): Promise<OwnerSnapshot> {
    const e = this.data.get(disk);
    return e ? { record: parseRecord(e.bytes, disk), revision: String(e.rev) } : { record: null, revision: null };
  }

  /**
   * Stores `next` as the next revision if `expected` is still current; null when it is not.
   *
   * @example
   * ```ts
   * const rev = await store.compareAndSwap('vm.raw', null, { version: 1, disk: 'vm.raw', epoch: 1, state: 'free', leaseExpiresAt: 0, updatedAt: Date.now() });
   * // rev === '1'; a second swap from null returns null
   * ```
   */
  async compareAndSwap(disk: string, expected: string | null, next: OwnerRecord): Promise<string | null> {
    const bytes = encodeRecord(next);
    const e = this.data.get(disk);
    if ((e ? String(e.rev) : null) !== expected) return null;
    const rev = (e?.rev ?? 0) + 1;
    this.data.set(disk, { rev, bytes });
    return String(rev);
  }

  /**
   * Replaces the stored bytes without validation (tests use it to plant hostile metadata).
   * @internal
   */
  _putRaw(disk: string, bytes: Uint8Array): void {
    this.data.set(disk, { rev: (this.data.get(disk)?.rev ?? 0) + 1, bytes });
  }

  /**
   * Nothing to release.
   *
   * @example
   * ```ts
   * await store.close();
   * ```
   */
  async close(): Promise<void> {}
}
