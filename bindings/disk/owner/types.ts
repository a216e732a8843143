/**
 * Disk ownership: the owner record every store keeps per disk, and the store
 * contract (read + compare-and-swap) that the file sidecar and etcd implement.
 * The method and the invariants are in docs/ownership.md. Also what a
 * holding hands its caller ({@link OwnedDisk}) and why it ends.
 * @module
 */
import type { BlockDevice } from '../device.js';

/**
 * The state of a disk's ownership.
 * - `owned`: `owner` holds the disk until `leaseExpiresAt` (renewed while alive).
 * - `releasing`: the owner accepted a release request and is draining (no new writes).
 * - `free`: nobody holds the disk; the next opener takes `epoch + 1`.
 * @example
 * const s: OwnerState = 'owned';
 */
export type OwnerState = 'owned' | 'releasing' | 'free';

/**
 * Who holds (or last held) a disk.
 * @example
 * const who: OwnerIdentity = { id: 'vm-17', host: 'node-a', pid: 4242, endpoint: 'http://10.0.0.5:7070' };
 */
export interface OwnerIdentity {
  /** The holder's stable id (chosen by the caller, e.g. a VM name). */
  readonly id: string;
  readonly host: string;
  readonly pid: number;
  /** Where the holder takes release requests (`http://…`, or a transport-specific name). */
  readonly endpoint?: string;
}

/**
 * The owner metadata of one disk (format version 2; version 1, written by
 * older builds, has no `secret`).
 * `epoch` only grows: it is the fencing token. Writes by a holder whose epoch
 * is not the record's current epoch must be refused by the disk layer.
 * @example
 * const r: OwnerRecord = { version: 2, disk: 'vm.qcow2', epoch: 3, state: 'owned', owner, leaseExpiresAt: Date.now() + 10_000, updatedAt: Date.now(), secret: newOwnerSecret() };
 */
export interface OwnerRecord {
  readonly version: 1 | 2;
  /** The disk this record governs (as the store names it). */
  readonly disk: string;
  readonly epoch: number;
  readonly state: OwnerState;
  /** The current (or, when free, the last) holder. */
  readonly owner?: OwnerIdentity;
  /** Milliseconds since the epoch (wall clock of the writer) after which the lease is dead. */
  readonly leaseExpiresAt: number;
  /** Milliseconds since the epoch when this record was written. */
  readonly updatedAt: number;
  /**
   * The disk's release secret (version 2; 32 random bytes, base64url): a
   * release request must carry an HMAC made with it, so only those who can
   * read this record can make the holder let go (docs/ownership.md, threat model).
   * Kept across takes; a version-1 record gets one at its next take.
   */
  readonly secret?: string;
}

/**
 * What a store returns on read: the record (or null when the disk has none
 * yet) and an opaque revision for compare-and-swap.
 * @example
 * const { record, revision } = await store.read('vm.qcow2');
 */
export interface OwnerSnapshot {
  readonly record: OwnerRecord | null;
  /** Opaque; changes on every successful write. `null` when there is no record. */
  readonly revision: string | null;
}

/**
 * A metadata store: the file sidecar (default) or etcd. Both guarantee that
 * `compareAndSwap` is atomic across processes (and hosts, for etcd) and that a
 * reader never sees a torn record.
 * @example
 * const snap = await store.read(disk);
 * const ok = await store.compareAndSwap(disk, snap.revision, { ...next });
 */
export interface OwnerStore {
  /** A short name for messages and metrics (`file`, `etcd`). */
  readonly kind: string;
  read(disk: string): Promise<OwnerSnapshot>;
  /**
   * Writes `next` only if the stored revision still equals `expected` (null:
   * only if no record exists). Resolves to the new revision, or null when the
   * comparison failed (someone else wrote first).
   */
  compareAndSwap(disk: string, expected: string | null, next: OwnerRecord): Promise<string | null>;
  close(): Promise<void>;
}

/**
 * Why a holder stopped holding.
 * @example
 * const { reason, by } = await held.done; // 'requested', { id: 'vm-18', … }
 */
export interface ReleaseOutcome {
  /**
   * `requested`: a release request; `released`: `release()`/`close()`; `fenced`: another holder
   * took a newer epoch, or the lease ran out before the store confirmed it (store unreachable,
   * process stalled past its lease).
   */
  readonly reason: 'requested' | 'released' | 'fenced';
  /** Who asked, for `requested`. */
  readonly by?: OwnerIdentity;
}

/**
 * A disk held by this process at `epoch`.
 * @example
 * const d = await openOwned('vm.raw', { as: 'vm-1' });
 * await d.device.write(0, new Uint8Array(512));
 * await d.device.flush();   // re-checks the epoch in the store first
 * await d.release();
 */
export interface OwnedDisk {
  /** The disk's name in the store. */
  readonly disk: string;
  /** The image, writable while this holder's epoch is current; writes after release or fencing throw FENCED. */
  readonly device: BlockDevice;
  /** The fencing token this holder writes under. */
  readonly epoch: number;
  readonly identity: OwnerIdentity;
  /** Where this holder answers release requests (undefined with `serve: false`). */
  readonly endpoint: string | undefined;
  readonly store: OwnerStore;
  /** Resolves when the holder stopped holding, and why. */
  readonly done: Promise<ReleaseOutcome>;
  /** True once another holder took a newer epoch, or the lease ran out unconfirmed (every write then throws FENCED). */
  readonly fenced: boolean;
  /** Drains in-flight writes, flushes, closes the image and writes the record `free`. */
  release(): Promise<void>;
  /** The same as {@link OwnedDisk.release}. */
  close(): Promise<void>;
}

/**
 * What `OpenOwnedOptions.open` hands the holder.
 * @example
 * const o: OwnedOpen = { device: live, close: () => live.close(), abandon: () => live.abandon() };
 */
export interface OwnedOpen {
  /** What the caller writes (the holder adds in-flight accounting and refuses writes once it let go). */
  readonly device: BlockDevice;
  /** Flushes and closes; its writes still pass the guard (the epoch is current until the record is `free`). */
  close(): Promise<void>;
  /** Lets every file go unflushed: the holder was fenced and may write nothing more. */
  abandon(): Promise<void>;
}
