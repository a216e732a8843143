/**
 * The ownership handoff: open a disk by reading its owner record, asking a
 * live owner to release it, taking the next epoch by compare-and-swap and
 * opening the image behind a write guard that fences this holder as soon as
 * its epoch stops being current. The owner side answers release requests:
 * it drains in-flight writes, flushes, closes and writes the record `free`.
 * The sequence, the invariants and the failure cases are in docs/ownership.md.
 * @module
 */
import { VmkitError, isVmkitError } from '../../errors.js';
import type { WriteGuard } from '../_guard.js';
import type { BlockDevice, BlockExtent, ByteLength, ByteOffset } from '../device.js';
import { openImage, type OpenImageOptions } from '../image.js';
import { fileProvider } from '../backends/file.js';
import type { Storage, StorageProvider } from '../backends/storage.js';
import type { ImageDevice } from '../formats/types.js';
import { _signal, _within } from './_deadline.js';
import { RELEASE_DENIED, ReleaseAuthenticator, newOwnerSecret, releaseRequestFor } from './auth.js';
import { FileOwnerStore } from './file-store.js';
import { leaseAlive } from './record.js';
import { httpTransport, inProcessTransport, type ReleaseReply, type ReleaseRequest, type ReleaseServer, type ReleaseTransport } from './transport.js';
import type { OwnerIdentity, OwnerRecord, OwnerSnapshot, OwnerStore } from './types.js';

/**
 * Default lease: 10 s, renewed every third of it.
 * @example
 * await openOwned('vm.raw', { as: 'a', leaseMs: DEFAULT_LEASE_MS / 2 });
 */
export const DEFAULT_LEASE_MS = 10_000;
/**
 * Default clock difference tolerated between hosts (see docs/ownership.md, clock skew).
 * @example
 * await openOwned('vm.raw', { as: 'a', maxSkewMs: 4 * DEFAULT_MAX_SKEW_MS }); // hosts without NTP
 */
export const DEFAULT_MAX_SKEW_MS = 1_000;

/**
 * Options of {@link openOwned}.
 * @example
 * const o: OpenOwnedOptions = { as: 'vm-17', serve: '127.0.0.1:7070', leaseMs: 5000, onReleaseRequest: () => (busy ? 'backup running' : undefined) };
 */
export interface OpenOwnedOptions {
  /** Who opens: an id (host and pid are filled in) or a full identity. */
  as: string | OwnerIdentity;
  /** Where owner records live (default: a {@link FileOwnerStore} sidecar next to the disk). */
  store?: OwnerStore;
  /** How release requests travel, both ways (default: HTTP). */
  transport?: ReleaseTransport;
  /**
   * Where this holder answers release requests (transport-specific; HTTP
   * `host:port`, default `127.0.0.1:0`; off loopback only with TLS or
   * `insecure`, see `createHttpTransport`). `false`: do not serve — openers
   * must then wait for the lease to run out.
   */
  serve?: string | false;
  /** Lease length in ms (default {@link DEFAULT_LEASE_MS}; 100 ms … 1 h). */
  leaseMs?: number;
  /** Clock difference tolerated between hosts in ms (default {@link DEFAULT_MAX_SKEW_MS}). */
  maxSkewMs?: number;
  /** Longest wait for a live owner that cannot be reached or is draining, in ms (default: 2 leases). */
  waitMs?: number;
  /** Timeout of one release request in ms (default 5000). */
  requestTimeoutMs?: number;
  /** The disk's name in the store (default: the path as given). */
  name?: string;
  /** How to open the image (provider, format); the guard is added by the handoff. */
  image?: Omit<OpenImageOptions, 'guard'>;
  /**
   * The owner's policy for release requests: return a reason to refuse (the
   * opener reports it as VmkitError REFUSED), or nothing to release.
   */
  onReleaseRequest?: (req: ReleaseRequest) => string | undefined | void | Promise<string | undefined | void>;
  /** Wall clock in ms (default `Date.now`); tests use it to simulate clock skew. */
  now?: () => number;
  /** Cancels the open while it waits. */
  signal?: AbortSignal;
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

let hostName: string | undefined;
async function localHost(): Promise<string> {
  if (hostName !== undefined) return hostName;
  try {
    const name = 'node:os';
    hostName = ((await import(/* @vite-ignore */ name)) as typeof import('node:os')).hostname();
  } catch {
    hostName = typeof navigator !== 'undefined' ? 'browser' : 'unknown';
  }
  return hostName;
}

/**
 * Fills in host and pid for an id (or validates a full identity).
 *
 * @example
 * ```ts
 * const me = await ownerIdentity('vm-1'); // { id: 'vm-1', host: 'node-a', pid: 4242 }
 * ```
 */
export async function ownerIdentity(as: string | OwnerIdentity): Promise<OwnerIdentity> {
  if (typeof as === 'string') {
    if (as.length === 0 || as.length > 1024) throw new VmkitError('ARG_RANGE', 'as: owner id must be 1..1024 chars');
    return { id: as, host: await localHost(), pid: typeof process !== 'undefined' ? process.pid : 0 };
  }
  if (typeof as !== 'object' || as === null || typeof as.id !== 'string' || as.id.length === 0) throw new VmkitError('ARG_TYPE', 'as must be an owner id or an OwnerIdentity');
  return { id: as.id, host: as.host, pid: as.pid };
}

function sameHolder(a: OwnerIdentity | undefined, b: OwnerIdentity): boolean {
  return a !== undefined && a.id === b.id && a.host === b.host && a.pid === b.pid;
}

const monotonic = (): number => performance.now();

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new VmkitError('CANCELLED', 'open cancelled'));
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(new VmkitError('CANCELLED', 'open cancelled'));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function posInt(v: number | undefined, name: string, def: number, min: number, max: number): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) throw new VmkitError('ARG_RANGE', `${name} must be an integer in ${min}..${max}, got ${v}`);
  return v;
}

function pickTransport(endpoint: string, preferred: ReleaseTransport): ReleaseTransport | undefined {
  for (const t of [preferred, httpTransport, inProcessTransport]) if (t.handles(endpoint)) return t;
  return undefined;
}

/**
 * One holding: the guard, the lease, the release handler and the in-flight
 * write accounting behind an {@link OwnedDisk}.
 * @internal
 */
class _Holder implements WriteGuard, OwnedDisk {
  readonly disk: string;
  readonly epoch: number;
  readonly identity: OwnerIdentity;
  readonly store: OwnerStore;
  readonly done: Promise<ReleaseOutcome>;
  endpoint: string | undefined;
  device!: BlockDevice;
  inner: ImageDevice | undefined;
  server: ReleaseServer | undefined;
  state: 'holding' | 'releasing' | 'released' | 'fenced' = 'holding';
  /** The revision and content of our record as we last wrote or read it. */
  revision: string;
  private current: OwnerRecord;
  /** Set when the `releasing` CAS succeeded: it proved the epoch current, so the drain's flush needs no store read. */
  private releasingConfirmed = false;
  private readonly leaseMs: number;
  private readonly now: () => number;
  private readonly policy: OpenOwnedOptions['onReleaseRequest'];
  /** Monotonic time until which writes go through without asking the store. */
  private validUntil: number;
  /** Monotonic time until which writes may go through unverified: the lease's end by this holder's clock, less a margin. */
  private leaseEnd: number;
  /**
   * Monotonic time at which the lease itself ends by this holder's clock (the start of the CAS
   * that wrote it, plus its length). Every store call is bounded by it: past it, the holder
   * cannot confirm anything, refuses every write and stops (issue #18: a hung store must not
   * make a refusal wait longer than the lease).
   */
  private leaseHardEnd: number;
  private chain: Promise<unknown> = Promise.resolve();
  /** Store conversations queued or running on `chain` (the renewal timer adds none while one is). */
  private verifies = 0;
  private timer: ReturnType<typeof setInterval> | undefined;
  private inflight = 0;
  /** Fired when the last in-flight write ends, while a release waits for it. */
  private idle: { promise: Promise<void>; fire: () => void } | undefined;
  /** Set when a release gave up waiting for in-flight writes: the guard then refuses every storage write. */
  private sealed = false;
  private readonly requestTimeoutMs: number;
  private giving: Promise<void> | undefined;
  private resolveDone!: (o: ReleaseOutcome) => void;
  private readonly ready: Promise<boolean>;
  /** Settles the wait of release requests that arrived while the image was opening. */
  opened!: (ok: boolean) => void;

  constructor(
    disk: string,
    record: OwnerRecord,
    identity: OwnerIdentity,
    store: OwnerStore,
    revision: string,
    leaseStart: number,
    leaseMs: number,
    now: () => number,
    policy: OpenOwnedOptions['onReleaseRequest'],
    requestTimeoutMs: number,
  ) {
    const epoch = record.epoch;
    this.current = record;
    this.disk = disk;
    this.epoch = epoch;
    this.identity = identity;
    this.store = store;
    this.revision = revision;
    this.leaseMs = leaseMs;
    this.now = now;
    this.policy = policy;
    this.requestTimeoutMs = requestTimeoutMs;
    this.leaseHardEnd = leaseStart + leaseMs;
    this.leaseEnd = leaseStart + leaseMs - this.margin();
    this.validUntil = leaseStart + leaseMs / 2;
    this.done = new Promise((r) => (this.resolveDone = r));
    this.ready = new Promise((r) => (this.opened = r));
  }

  get fenced(): boolean {
    return this.state === 'fenced';
  }

  /** The disk's release secret, which requests to this holder must prove they know. */
  get secret(): string | undefined {
    return this.current.secret;
  }

  // Slack between the end of the lease and the last unverified write: covers the time a write takes.
  private margin(): number {
    return Math.min(this.leaseMs / 5, 1000);
  }

  startRenewal(): void {
    this.timer = setInterval(() => {
      // A conversation already queued renews if the lease needs it: do not pile up behind a slow store.
      if (this.verifies === 0) this.verify(true).catch(() => {});
    }, Math.max(20, Math.floor(this.leaseMs / 3)));
    // Renewal alone must not keep a process alive.
    (this.timer as { unref?: () => void }).unref?.();
  }

  private stop(outcome: ReleaseOutcome, state: 'released' | 'fenced'): void {
    if (this.state === 'released' || this.state === 'fenced') return;
    this.state = state;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    const srv = this.server;
    this.server = undefined;
    // Close after the current reply went out (a release answer is being sent right now).
    if (srv) setTimeout(() => void srv.close().catch(() => {}), 0);
    if (state === 'fenced') void this.abandon();
    this.resolveDone(outcome);
  }

  // A fenced holder may not flush, so the image's own close() (which flushes) would
  // fail and keep the file open: drop the top layer's storage unflushed instead.
  private async abandon(): Promise<void> {
    const d = this.inner;
    this.inner = undefined;
    if (!d) return;
    const closing = Promise.all([d.storage.close().catch(() => {}), d.backing?.close().catch(() => {})]);
    await _within(closing, Math.max(this.margin(), this.requestTimeoutMs), () => `${this.disk}: closing the image unflushed`).catch(() => {});
  }

  // A store call of this holder, bounded by what is left of the lease (at least `floor` ms).
  private storeCall<T>(what: string, f: () => Promise<T>, floor = 0): Promise<T> {
    const left = Math.max(this.leaseHardEnd - monotonic(), floor);
    if (left <= 0) return Promise.reject(new VmkitError('TIMEOUT', `${what} of ${this.disk}: the lease has run out`, { path: this.disk }));
    return _within(Promise.resolve().then(f), left, () => `${what} of ${this.disk} (bounded by the lease)`);
  }

  // The lease ran out and the store did not confirm it: refuse, and stop holding (a holder that
  // keeps `holding` after refusing would leave whoever waits on `done` waiting forever).
  private leaseLost(cause: unknown, why: string): VmkitError {
    const err = new VmkitError('FENCED', `${why} on ${this.disk} and the lease ran out: ${(cause as Error)?.message ?? cause} (this holder: ${this.identity.id} at epoch ${this.epoch})`, {
      cause,
      path: this.disk,
    });
    if (this.state === 'holding') this.stop({ reason: 'fenced' }, 'fenced');
    return err;
  }

  private fencedError(op: string, why: string): VmkitError {
    return new VmkitError('FENCED', `${op} on ${this.disk} refused: ${why} (this holder: ${this.identity.id} at epoch ${this.epoch})`, { path: this.disk });
  }

  /** The WriteGuard hook: cheap while the cached lease is valid, a store check otherwise and before every flush. */
  check(op: 'write' | 'flush' | 'discard'): void | Promise<void> {
    if (this.state === 'fenced') throw this.fencedError(op, 'a newer epoch owns the disk');
    if (this.state === 'released') throw this.fencedError(op, 'the disk was released');
    if (this.sealed) throw this.fencedError(op, 'the release stopped waiting for in-flight writes');
    if (op !== 'flush' && monotonic() < this.validUntil) return;
    if (op === 'flush' && this.state === 'releasing' && this.releasingConfirmed && monotonic() < this.leaseEnd) return;
    return this.verify(false).then(() => undefined);
  }

  // Serialized: one store conversation at a time per holder.
  private verify(renew: boolean): Promise<void> {
    this.verifies++;
    const run = this.chain.then(() => this.verifyNow(renew)).finally(() => this.verifies--);
    this.chain = run.catch(() => {});
    return run;
  }

  private async verifyNow(renew: boolean): Promise<void> {
    if (this.state === 'fenced') throw this.fencedError('write', 'a newer epoch owns the disk');
    if (this.state === 'released') throw this.fencedError('write', 'the disk was released');
    const t0 = monotonic();
    if ((renew || this.leaseEnd - t0 < this.leaseMs / 2) && this.state === 'holding') {
      // A renewal first swaps from the revision we last wrote (no read): one store call instead of
      // two while nobody else writes our record, which keeps renewals inside the lease on a slow
      // store. A lost swap (the record changed) falls through to the read below.
      const wall = this.now();
      const next: OwnerRecord = { ...this.current, leaseExpiresAt: wall + this.leaseMs, updatedAt: wall };
      let rev: string | null;
      try {
        rev = await this.storeCall('renewing the lease', () => this.store.compareAndSwap(this.disk, this.revision, next));
      } catch (e) {
        if (monotonic() < this.leaseEnd) return;
        throw this.leaseLost(e, 'cannot renew the lease');
      }
      if (rev !== null) {
        this.renewed(rev, next, t0);
        return;
      }
    }
    let snap: OwnerSnapshot;
    try {
      snap = await this.storeCall('reading the owner record', () => this.store.read(this.disk));
    } catch (e) {
      // The store is unreachable (or hangs: the call is bounded by the lease): the lease we hold is still ours until it runs out.
      if (monotonic() < this.leaseEnd) return;
      throw this.leaseLost(e, 'cannot confirm the lease');
    }
    const r = snap.record;
    // Our own release just wrote `free`: not a takeover (giveUp finishes the holder).
    if (r && r.state === 'free' && this.state === 'releasing' && r.epoch === this.epoch && sameHolder(r.owner, this.identity)) {
      throw this.fencedError('write', 'the disk was released');
    }
    if (!r || r.epoch !== this.epoch || !sameHolder(r.owner, this.identity) || r.state === 'free') {
      this.stop({ reason: 'fenced' }, 'fenced');
      throw this.fencedError('write', r ? `the record is at epoch ${r.epoch} (${r.state}${r.owner ? ` by ${r.owner.id}` : ''})` : 'the owner record is gone');
    }
    this.revision = snap.revision ?? this.revision;
    this.current = r;
    const remaining = this.leaseEnd - t0;
    if (renew || remaining < this.leaseMs / 2 || r.state === 'releasing') {
      if (r.state === 'releasing') {
        if (monotonic() < this.leaseEnd) return; // draining: the lease does not get longer
        throw this.fencedError('write', 'the lease ran out while releasing');
      }
      const wall = this.now();
      const start = monotonic();
      const next: OwnerRecord = { ...r, leaseExpiresAt: wall + this.leaseMs, updatedAt: wall };
      let rev: string | null;
      try {
        // A renewal that timed out may still have been applied: the next one then loses its CAS and reads again.
        rev = await this.storeCall('renewing the lease', () => this.store.compareAndSwap(this.disk, snap.revision, next));
      } catch (e) {
        if (monotonic() < this.leaseEnd) return;
        throw this.leaseLost(e, 'cannot renew the lease');
      }
      if (rev === null) return this.verifyNow(false); // something changed: look again (fences if it was a takeover)
      this.renewed(rev, next, start);
    } else {
      this.validUntil = Math.min(t0 + this.leaseMs / 2, this.leaseEnd);
    }
  }

  // A renewal CAS that started at monotonic `start` went through.
  private renewed(rev: string, next: OwnerRecord, start: number): void {
    this.revision = rev;
    this.current = next;
    this.leaseHardEnd = start + this.leaseMs;
    this.leaseEnd = start + this.leaseMs - this.margin();
    this.validUntil = start + this.leaseMs / 2;
  }

  // In-flight accounting of mutating operations (the drain of a release waits for them).
  async mutate<T>(op: 'write' | 'flush' | 'discard', f: () => Promise<T>): Promise<T> {
    if (this.state !== 'holding') {
      throw this.fencedError(op, this.state === 'fenced' ? 'a newer epoch owns the disk' : `the disk is ${this.state}`);
    }
    this.inflight++;
    try {
      return await f();
    } finally {
      if (--this.inflight === 0) this.idle?.fire();
    }
  }

  /** The owner side of a release request. */
  async onRequest(req: ReleaseRequest): Promise<ReleaseReply> {
    // Replies name no disk, epoch or holder (docs/ownership.md, threat model).
    if (req.disk !== this.disk) return { ok: false, code: 'NOT_FOUND', reason: 'the disk asked for is not held here' };
    if (req.epoch !== this.epoch) return { ok: false, code: 'CONFLICT', reason: 'the request names another epoch than the one held' };
    // Settles within openOwned's deadline: the image open after the CAS is bounded by it.
    if (!(await this.ready)) return { ok: false, code: 'CONFLICT', reason: 'the holder failed to open the image' };
    if (this.state === 'fenced') return { ok: false, code: 'CONFLICT', reason: 'the holder was fenced' };
    // The policy is the owner's own code (`disk serve --as` stops its NBD server in it), and is not cut
    // short: the requester's own timeout bounds what the requester waits.
    if (this.state === 'holding' && this.policy) {
      let reason: string | undefined | void;
      try {
        reason = await this.policy(req);
      } catch (e) {
        reason = `release policy failed: ${(e as Error)?.message ?? e}`;
      }
      if (typeof reason === 'string' && reason.length > 0) return { ok: false, code: 'REFUSED', reason };
    }
    try {
      await this.giveUp({ reason: 'requested', by: req.requester });
    } catch (e) {
      // Fenced, or the release ran out of lease (TIMEOUT): the record moves on by itself, the requester reads it again.
      if (isVmkitError(e, 'FENCED')) return { ok: false, code: 'CONFLICT', reason: 'the holder was fenced' };
      if (isVmkitError(e, 'TIMEOUT')) return { ok: false, code: 'CONFLICT', reason: 'the release ran out of lease' };
      return { ok: false, code: 'REFUSED', reason: `release failed (${isVmkitError(e) ? e.code : 'error'})` };
    }
    return this.state === 'released' ? { ok: true, epoch: this.epoch, revision: this.revision } : { ok: false, code: 'CONFLICT', reason: 'the holder was fenced' };
  }

  release(): Promise<void> {
    return this.giveUp({ reason: 'released' });
  }

  close(): Promise<void> {
    return this.release();
  }

  // Drain, flush, close, mark free. Idempotent: concurrent requests share one release.
  giveUp(outcome: ReleaseOutcome): Promise<void> {
    if (this.state === 'released' || this.state === 'fenced') return this.giving ?? Promise.resolve();
    return (this.giving ??= this.giveUpNow(outcome));
  }

  private async giveUpNow(outcome: ReleaseOutcome): Promise<void> {
    this.state = 'releasing';
    // Say so in the record: openers that read it now wait instead of asking again.
    const marked = await this.mark('releasing').catch(() => undefined);
    if (marked === false) this.state = 'fenced';
    this.releasingConfirmed = marked === true;
    let failure: unknown;
    if (this.inflight > 0) {
      // In-flight writes finish, fail or are refused within the lease (their store checks are bounded by it).
      const idle = (this.idle = _signal());
      try {
        await _within(idle.promise, this.leaseHardEnd - monotonic(), () => `${this.disk}: waiting for ${this.inflight} in-flight write(s) before releasing`);
      } catch (e) {
        failure = e;
        this.sealed = true;
      }
    }
    if (!this.sealed) {
      try {
        // The flush still passes the guard: this holder's epoch is current until it writes `free`.
        const d = this.inner;
        if (d) await _within(d.close(), Math.max(this.leaseHardEnd - monotonic(), this.margin()), () => `${this.disk}: flushing and closing the image`);
        if (this.inner === d) this.inner = undefined;
      } catch (e) {
        failure = e;
        // A flush that did not finish may still have a write in flight.
        if (isVmkitError(e, 'TIMEOUT')) this.sealed = true;
        await this.abandon();
      }
    }
    if (this.sealed) {
      // A write may still land: writing `free` now could let it land under the next holder. Drop
      // the image unflushed and leave the record `releasing`: openers wait for its lease to end.
      await this.abandon();
    } else if (this.state === 'releasing') {
      try {
        if (!(await this.mark('free'))) this.state = 'fenced';
      } catch (e) {
        failure ??= e;
      }
    }
    const fenced = (this.state as string) === 'fenced';
    this.state = 'releasing'; // stop() ignores a holder that is already stopped
    if (fenced) this.stop({ reason: 'fenced' }, 'fenced');
    else this.stop(outcome, 'released');
    if (failure !== undefined) throw failure;
  }

  // Writes our record with a new state by CAS; false when another epoch owns the record (we were fenced).
  private mark(state: 'releasing' | 'free'): Promise<boolean> {
    const run = this.chain.then(async () => {
      const next = (r: OwnerRecord, wall: number): OwnerRecord => (state === 'free' ? { ...r, state, leaseExpiresAt: wall, updatedAt: wall } : { ...r, state, updatedAt: wall });
      // First from what we know (no read: the common case, nobody else writes our record).
      const w0 = this.now();
      const fast = next(this.current, w0);
      // Bounded by the lease, but never below the margin: writing `free` after the lease ran out still
      // saves the next opener its wait, and the CAS keeps it exact. A CAS that timed out may have
      // been applied: the retries below read the record and find our own write.
      const call = <T>(what: string, f: () => Promise<T>): Promise<T> => this.storeCall(`${what} (marking it ${state})`, f, this.margin());
      const rev0 = await call('swapping the owner record', () => this.store.compareAndSwap(this.disk, this.revision, fast));
      if (rev0 !== null) {
        this.revision = rev0;
        this.current = fast;
        return true;
      }
      for (let i = 0; i < 8; i++) {
        const snap = await call('reading the owner record', () => this.store.read(this.disk));
        const r = snap.record;
        if (!r || r.epoch !== this.epoch || !sameHolder(r.owner, this.identity)) return false;
        // Our own `free` (a CAS whose answer timed out) is already there.
        if (r.state === 'free') {
          if (state !== 'free') return false;
          this.revision = snap.revision ?? this.revision;
          this.current = r;
          return true;
        }
        if (r.state === state) {
          this.revision = snap.revision ?? this.revision;
          this.current = r;
          return true;
        }
        const n = next(r, this.now());
        const rev = await call('swapping the owner record', () => this.store.compareAndSwap(this.disk, snap.revision, n));
        if (rev !== null) {
          this.revision = rev;
          this.current = n;
          return true;
        }
      }
      throw new VmkitError('CONFLICT', `${this.disk}: the owner record kept changing while marking it ${state}`, { path: this.disk });
    });
    this.chain = run.catch(() => {});
    return run;
  }
}

/**
 * The image's own writes go through the guard too, one by one: a qcow2 or VMDK
 * write is several storage writes (data, L2 table, refcounts) across awaits,
 * and a holder stalled between them must not finish the rest after it was
 * fenced. Checking before each storage write and flush keeps every write to
 * the file within one event-loop turn of a passed check (docs/ownership.md).
 * @internal
 */
function _guardedStorage(s: Storage, guard: WriteGuard): Storage {
  return {
    get name() {
      return s.name;
    },
    get readOnly() {
      return s.readOnly;
    },
    size: () => s.size(),
    readInto: (offset, dst) => s.readInto(offset, dst),
    write: async (offset, data) => {
      await guard.check('write');
      return s.write(offset, data);
    },
    truncate: async (size) => {
      await guard.check('write');
      return s.truncate(size);
    },
    flush: async () => {
      // The device checked 'flush' against the store just before; the lease check suffices here.
      await guard.check('write');
      return s.flush();
    },
    close: () => s.close(),
  };
}

function _guardedProvider(base: StorageProvider, guard: WriteGuard): StorageProvider {
  return {
    open: async (name, o) => {
      const st = await base.open(name, o);
      return o.readOnly ? st : _guardedStorage(st, guard);
    },
    create: (name) => base.create(name),
    resolve: (from, rel) => base.resolve(from, rel),
    relative: (from, target) => base.relative(from, target),
  };
}

/**
 * The device handed to the caller: the image with in-flight accounting, so a
 * release can drain writes before it flushes, and refuses writes once the
 * holder is releasing, released or fenced.
 * @internal
 */
class _OwnedDevice implements BlockDevice {
  private readonly h: _Holder;
  private readonly d: ImageDevice;
  constructor(h: _Holder, d: ImageDevice) {
    this.h = h;
    this.d = d;
  }
  get size(): number {
    return this.d.size;
  }
  get alignment(): number {
    return this.d.alignment;
  }
  get readOnly(): boolean {
    return this.d.readOnly;
  }
  get format(): string {
    return this.d.format;
  }
  get backing(): BlockDevice | undefined {
    return this.d.backing;
  }
  read(offset: ByteOffset, length: ByteLength): Promise<Uint8Array> {
    return this.d.read(offset, length);
  }
  readInto(offset: ByteOffset, dst: Uint8Array): Promise<void> {
    return this.d.readInto(offset, dst);
  }
  write(offset: ByteOffset, data: Uint8Array): Promise<void> {
    return this.h.mutate('write', () => this.d.write(offset, data));
  }
  writeZeroes(offset: ByteOffset, length: ByteLength): Promise<void> {
    return this.h.mutate('write', () => this.d.writeZeroes(offset, length));
  }
  discard(offset: ByteOffset, length: ByteLength): Promise<void> {
    return this.h.mutate('discard', () => this.d.discard(offset, length));
  }
  flush(): Promise<void> {
    return this.h.mutate('flush', () => this.d.flush());
  }
  blockStatus(offset: ByteOffset, length: ByteLength): Promise<BlockExtent> {
    return this.d.blockStatus(offset, length);
  }
  close(): Promise<void> {
    return this.h.release();
  }
}

/**
 * Opens `diskPath` as its owner (the method of docs/ownership.md): reads the
 * owner record; asks a live owner to release (it drains, flushes, closes and
 * writes `free`, or refuses → VmkitError REFUSED); waits for an unreachable
 * owner's lease to run out (up to `waitMs`, then TIMEOUT); takes the next
 * epoch by compare-and-swap; opens the image behind a guard that throws FENCED
 * once another holder owns a newer epoch. Serves release requests while held.
 *
 * @example
 * ```ts
 * import { createHttpTransport, openOwned } from 'vmkit/disk';
 * import { readFile } from 'node:fs/promises';
 * // Other hosts reach the release endpoint over HTTPS (plain HTTP serves loopback only).
 * const transport = createHttpTransport({ tls: { cert: await readFile('node-a.crt'), key: await readFile('node-a.key') } });
 * const d = await openOwned('vm.qcow2', { as: 'vm-17', serve: '0.0.0.0:7070', transport });
 * console.log(`holding epoch ${d.epoch}, release requests at ${d.endpoint}`);
 * await d.device.write(0, new Uint8Array(4096));
 * const { reason } = await d.done; // 'requested' when another host took it over
 * ```
 * @throws {VmkitError} ARG_TYPE / ARG_RANGE: a bad option (named); REFUSED: the holder refused to let go (its reason in the message); TIMEOUT: the disk did not become free within `waitMs`, or the store did not answer; CONFLICT: lost a race for the record too many times; CORRUPT / LIMIT / UNSUPPORTED: the owner record is malformed, out of bounds or from a newer version; NETWORK: the store is unreachable; CANCELLED: `signal` aborted; and what openImage throws.
 */
export async function openOwned(diskPath: string, opts: OpenOwnedOptions): Promise<OwnedDisk> {
  if (typeof diskPath !== 'string' || diskPath.length === 0) throw new VmkitError('ARG_TYPE', 'diskPath must be a non-empty string');
  if (typeof opts !== 'object' || opts === null) throw new VmkitError('ARG_TYPE', 'openOwned needs options with at least { as }');
  const leaseMs = posInt(opts.leaseMs, 'leaseMs', DEFAULT_LEASE_MS, 100, 3_600_000);
  const maxSkewMs = posInt(opts.maxSkewMs, 'maxSkewMs', DEFAULT_MAX_SKEW_MS, 0, 600_000);
  const waitMs = posInt(opts.waitMs, 'waitMs', 2 * leaseMs, 0, 24 * 3_600_000);
  const requestTimeoutMs = posInt(opts.requestTimeoutMs, 'requestTimeoutMs', 5000, 1, 600_000);
  const store = opts.store ?? new FileOwnerStore();
  const transport = opts.transport ?? httpTransport;
  const now = opts.now ?? Date.now;
  const disk = opts.name ?? diskPath;
  const me0 = await ownerIdentity(opts.as);

  // Serve before taking the disk: the endpoint goes into the record we write.
  // Until the holder exists there is no secret, so every request is DENIED.
  // A request's time may differ from ours by the skew plus its sender's timeout.
  let holder: _Holder | undefined;
  const auth = new ReleaseAuthenticator({ windowMs: maxSkewMs + requestTimeoutMs, now });
  const server =
    opts.serve === false
      ? undefined
      : await transport.serve(opts.serve, async (req) => (holder && (await auth.accept(req, holder.secret)) ? holder.onRequest(req) : RELEASE_DENIED));
  const me: OwnerIdentity = server ? { ...me0, endpoint: server.endpoint } : me0;
  const deadline = monotonic() + waitMs;
  // Every wait below is bounded (docs/ownership.md, deadlines): a store call by what is left of the
  // open's deadline (at least one request's timeout), a release request by its timeout — also when
  // the transport's own timer cannot fire (an HTTP `fetch` that never settles, its unref'd timer).
  const bound = (): number => Math.max(deadline + requestTimeoutMs - monotonic(), requestTimeoutMs);
  const read = (): Promise<OwnerSnapshot> => _within(store.read(disk), bound(), () => `reading the owner record of ${disk}`);
  const ask = (t: ReleaseTransport, endpoint: string, req: ReleaseRequest, ms: number): Promise<ReleaseReply> =>
    _within(Promise.resolve().then(() => t.request(endpoint, req, ms)), ms, () => `release request to ${endpoint}`);
  try {
    let lastWhy = '';
    for (let round = 0; ; round++) {
      if (opts.signal?.aborted) throw new VmkitError('CANCELLED', `open of ${disk} cancelled`);
      // Every path below either takes the disk or loops; under endless contention
      // (each release goes to someone else) the wait is bounded too.
      if (round > 0 && monotonic() > deadline + requestTimeoutMs) {
        throw new VmkitError('TIMEOUT', `${disk}: not taken after ${waitMs} ms${lastWhy ? `; last: ${lastWhy}` : ' (others kept winning it)'}`, { path: disk });
      }
      const snap = await read();
      const r = snap.record;
      if (r && r.epoch >= Number.MAX_SAFE_INTEGER) throw new VmkitError('LIMIT', `${disk}: epoch ${r.epoch} cannot grow further`, { path: disk });
      const wall = now();
      const alive = r !== null && leaseAlive(r, wall, maxSkewMs);
      if (r && r.state !== 'free' && alive && r.state === 'owned' && r.owner?.endpoint) {
        // A live owner: ask it to let go.
        const t = pickTransport(r.owner.endpoint, transport);
        if (t) {
          let reply: ReleaseReply | undefined;
          try {
            reply = await ask(t, r.owner.endpoint, await releaseRequestFor(r, me, now()), requestTimeoutMs);
          } catch (e) {
            if (!isVmkitError(e, 'NETWORK') && !isVmkitError(e, 'TIMEOUT')) throw e;
            lastWhy = `owner ${r.owner.id} at ${r.owner.endpoint} is unreachable (${e.message})`;
          }
          if (reply?.ok) {
            // The owner wrote `free` at the epoch we asked about and told us its revision:
            // take over from it directly (a CAS; if anything changed since, read again).
            if (reply.revision !== undefined && reply.epoch === r.epoch) {
              const h = await take(reply.revision, r.epoch, r.secret);
              if (h) return h;
            }
            continue;
          }
          if (reply && reply.code === 'REFUSED') {
            throw new VmkitError('REFUSED', `${disk}: owner ${r.owner.id} (epoch ${r.epoch}) refused to release: ${reply.reason}`, { path: disk });
          }
          if (reply && reply.code === 'CONFLICT') {
            // The record moved on since we read it (or the holder was fenced): read again.
            lastWhy = `owner ${r.owner.id} answered: ${reply.reason}`;
            if (monotonic() > deadline) throw new VmkitError('TIMEOUT', `${disk}: gave up after ${waitMs} ms; last: ${lastWhy}`, { path: disk });
            await sleep(2, opts.signal);
            continue;
          }
          if (reply) lastWhy = `owner ${r.owner.id} answered ${reply.code}: ${reply.reason}`;
        } else lastWhy = `no transport reaches owner ${r.owner.id} at ${r.owner.endpoint}`;
      } else if (r && r.state !== 'free' && alive) {
        lastWhy = r.state === 'releasing' ? `owner ${r.owner?.id} is releasing` : `owner ${r.owner?.id} serves no release endpoint`;
      } else if (r && r.state !== 'free' && r.owner?.endpoint) {
        // The lease looks dead by our clock. If the owner still answers, our
        // clock (or its) is off: ask rather than take (docs/ownership.md, clock skew).
        const t = pickTransport(r.owner.endpoint, transport);
        if (t && r.state === 'owned') {
          let reply: ReleaseReply | undefined;
          try {
            reply = await ask(t, r.owner.endpoint, await releaseRequestFor(r, me, now()), Math.min(requestTimeoutMs, Math.max(100, leaseMs / 4)));
          } catch {
            // Unreachable with an expired lease: a dead owner. Take over below.
          }
          if (reply?.ok) continue;
          if (reply && reply.code === 'REFUSED') {
            throw new VmkitError('REFUSED', `${disk}: owner ${r.owner.id} (epoch ${r.epoch}) refused to release: ${reply.reason} (its lease looks expired by this clock: check clock skew)`, { path: disk });
          }
        }
      }
      if (r && r.state !== 'free' && alive) {
        // Live but not releasable now: poll until it frees, its lease runs out, or we give up.
        const left = deadline - monotonic();
        if (left <= 0) {
          throw new VmkitError(
            'TIMEOUT',
            `${disk}: ${lastWhy || 'the owner holds it'}; its lease runs until ${new Date(r.leaseExpiresAt).toISOString()} (+${maxSkewMs} ms skew allowance, this clock reads ${new Date(wall).toISOString()}); waited ${waitMs} ms`,
            { path: disk },
          );
        }
        await sleep(Math.max(1, Math.min(left, r.state === 'releasing' ? 5 : 20, r.leaseExpiresAt + maxSkewMs - wall + 1)), opts.signal);
        continue;
      }
      // Free, absent, or dead: take the next epoch by CAS.
      const h = await take(snap.revision, r?.epoch ?? 0, r?.secret);
      if (!h) {
        if (monotonic() > deadline) throw new VmkitError('TIMEOUT', `${disk}: lost every compare-and-swap for ${waitMs} ms`, { path: disk });
        continue;
      }
      return h;
    }
  } catch (e) {
    await server?.close().catch(() => {});
    throw e;
  }

  // Writes us as owner at `prevEpoch + 1` if the record is still at `expected`, then opens the image.
  // The disk keeps its secret; a record without one (version 1, or none yet) gets a fresh one.
  async function take(expected: string | null, prevEpoch: number, secret: string | undefined): Promise<_Holder | null> {
    const epoch = prevEpoch + 1;
    const t0 = monotonic();
    const w = now();
    const record: OwnerRecord = { version: 2, disk, epoch, state: 'owned', owner: me, leaseExpiresAt: w + leaseMs, updatedAt: w, secret: secret ?? newOwnerSecret() };
    // A CAS that timed out has an unknown outcome: openOwned fails with TIMEOUT, and a retry finds
    // the record naming a holder that never started, asks it (nobody answers) and waits out its lease.
    const rev = await _within(store.compareAndSwap(disk, expected, record), bound(), () => `taking epoch ${epoch} of ${disk}`);
    if (rev === null) return null;
    const h = new _Holder(disk, record, me, store, rev, t0, leaseMs, now, opts.onReleaseRequest, requestTimeoutMs);
    h.endpoint = server?.endpoint;
    h.server = server;
    // Requests from now on reach the holder; they wait until the image is open.
    holder = h;
    h.startRenewal();
    let dev: ImageDevice;
    const opening = openImage(diskPath, { ...opts.image, provider: _guardedProvider(opts.image?.provider ?? fileProvider, h), guard: h });
    try {
      dev = await _within(opening, bound(), () => `opening ${diskPath}`);
    } catch (e) {
      // An open that finishes after its deadline is closed (the holder has let go: nothing is flushed).
      opening.then((late) => late.close().catch(() => {}), () => {});
      h.opened(false);
      await h.giveUp({ reason: 'released' }).catch(() => {});
      throw e;
    }
    h.inner = dev;
    h.device = new _OwnedDevice(h, dev);
    h.opened(true);
    return h;
  }
}

/**
 * Reads a disk's owner record (null when it has none).
 *
 * @example
 * ```ts
 * const rec = await readOwner('vm.qcow2');
 * if (rec?.state === 'owned') console.log(`${rec.owner?.id} holds epoch ${rec.epoch}`);
 * ```
 */
export async function readOwner(disk: string, opts: { store?: OwnerStore } = {}): Promise<OwnerRecord | null> {
  return (await (opts.store ?? new FileOwnerStore()).read(disk)).record;
}

/**
 * Asks the current owner of `disk` to release it without taking it (the disk
 * ends `free`). Resolves to the record afterwards; throws REFUSED when the
 * owner says no, TIMEOUT/NETWORK when it cannot be reached.
 *
 * @example
 * ```ts
 * const after = await requestRelease('vm.qcow2', { as: 'operator' });
 * console.log(after?.state); // 'free'
 * ```
 */
export async function requestRelease(
  disk: string,
  opts: { as: string | OwnerIdentity; store?: OwnerStore; transport?: ReleaseTransport; requestTimeoutMs?: number },
): Promise<OwnerRecord | null> {
  const store = opts.store ?? new FileOwnerStore();
  const me = await ownerIdentity(opts.as);
  const timeoutMs = posInt(opts.requestTimeoutMs, 'requestTimeoutMs', 5000, 1, 600_000);
  const { record: r } = await _within(store.read(disk), timeoutMs, () => `reading the owner record of ${disk}`);
  if (!r || r.state === 'free') return r;
  const endpoint = r.owner?.endpoint;
  if (!endpoint) throw new VmkitError('UNSUPPORTED', `${disk}: owner ${r.owner?.id} serves no release endpoint; wait for its lease (${new Date(r.leaseExpiresAt).toISOString()})`, { path: disk });
  const t = pickTransport(endpoint, opts.transport ?? httpTransport);
  if (!t) throw new VmkitError('UNSUPPORTED', `${disk}: no transport reaches ${endpoint}`, { path: disk });
  const req = await releaseRequestFor(r, me, Date.now());
  const reply = await _within(Promise.resolve().then(() => t.request(endpoint, req, timeoutMs)), timeoutMs, () => `release request to ${endpoint}`);
  if (!reply.ok) {
    const why = reply.code === 'DENIED' ? `${reply.reason} (this clock and the owner's differ by more than its window, or the record changed)` : reply.reason;
    throw new VmkitError(reply.code === 'DENIED' ? 'REFUSED' : reply.code, `${disk}: owner ${r.owner?.id} answered: ${why}`, { path: disk });
  }
  return (await _within(store.read(disk), timeoutMs, () => `reading the owner record of ${disk}`)).record;
}
