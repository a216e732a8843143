/**
 * The holder side of the handoff: one holding of a disk at an epoch — the
 * write guard that fences it as soon as its epoch stops being current, the
 * lease and its renewal, the in-flight write accounting, and the answer to
 * release requests (drain, flush, close, write `free`). Every store call and
 * wait is bounded by the lease (`_deadline.ts`). docs/ownership.md has the
 * sequence and the invariants.
 * @module
 * @internal
 */
import { VmkitError, isVmkitError } from '../../errors.js';
import type { WriteGuard } from '../_guard.js';
import type { BlockDevice } from '../device.js';
import { _signal, _within } from './_deadline.js';
import type { ReleaseReply, ReleaseRequest, ReleaseServer } from './transport.js';
import type { OwnedDisk, OwnedOpen, OwnerIdentity, OwnerRecord, OwnerSnapshot, OwnerStore, ReleaseOutcome } from './types.js';

/**
 * The owner's policy for release requests (`OpenOwnedOptions.onReleaseRequest`):
 * a reason to refuse, or nothing to release.
 * @internal
 */
export type _ReleasePolicy = (req: ReleaseRequest) => string | undefined | void | Promise<string | undefined | void>;

/**
 * Monotonic milliseconds: leases and deadlines are measured on it, never on the wall clock.
 * @internal
 */
export const _monotonic = (): number => performance.now();

function sameHolder(a: OwnerIdentity | undefined, b: OwnerIdentity): boolean {
  return a !== undefined && a.id === b.id && a.host === b.host && a.pid === b.pid;
}

/**
 * One holding: the guard, the lease, the release handler and the in-flight
 * write accounting behind an {@link OwnedDisk}.
 * @internal
 */
export class _Holder implements WriteGuard, OwnedDisk {
  readonly disk: string;
  readonly epoch: number;
  readonly identity: OwnerIdentity;
  readonly store: OwnerStore;
  readonly done: Promise<ReleaseOutcome>;
  endpoint: string | undefined;
  device!: BlockDevice;
  inner: OwnedOpen | undefined;
  server: ReleaseServer | undefined;
  state: 'holding' | 'releasing' | 'released' | 'fenced' = 'holding';
  /** The revision and content of our record as we last wrote or read it. */
  revision: string;
  private current: OwnerRecord;
  /** Set when the `releasing` CAS succeeded: it proved the epoch current, so the drain's flush needs no store read. */
  private releasingConfirmed = false;
  private readonly leaseMs: number;
  private readonly now: () => number;
  private readonly policy: _ReleasePolicy | undefined;
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
    policy: _ReleasePolicy | undefined,
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
    const closing = d.abandon().catch(() => {});
    await _within(closing, Math.max(this.margin(), this.requestTimeoutMs), () => `${this.disk}: closing the image unflushed`).catch(() => {});
  }

  // A store call of this holder, bounded by what is left of the lease (at least `floor` ms).
  private storeCall<T>(what: string, f: () => Promise<T>, floor = 0): Promise<T> {
    const left = Math.max(this.leaseHardEnd - _monotonic(), floor);
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
    if (op !== 'flush' && _monotonic() < this.validUntil) return;
    if (op === 'flush' && this.state === 'releasing' && this.releasingConfirmed && _monotonic() < this.leaseEnd) return;
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
    const t0 = _monotonic();
    if ((renew || this.leaseEnd - t0 < this.leaseMs / 2) && this.state === 'holding') {
      // A renewal first swaps from the revision we last wrote (no read): one store call instead of
      // two while nobody else writes our record, which keeps renewals inside the lease on a slow
      // store. A lost swap (the record changed) falls through to the read below.
      if ((await this.renew(this.current, this.revision, this.now(), t0)) !== false) return;
    }
    let snap: OwnerSnapshot;
    try {
      snap = await this.storeCall('reading the owner record', () => this.store.read(this.disk));
    } catch (e) {
      // The store is unreachable (or hangs: the call is bounded by the lease): the lease we hold is still ours until it runs out.
      if (_monotonic() < this.leaseEnd) return;
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
        if (_monotonic() < this.leaseEnd) return; // draining: the lease does not get longer
        throw this.fencedError('write', 'the lease ran out while releasing');
      }
      const wall = this.now();
      // false: something changed: look again (fences if it was a takeover).
      if ((await this.renew(r, snap.revision, wall, _monotonic())) === false) return this.verifyNow(false);
    } else {
      this.validUntil = Math.min(t0 + this.leaseMs / 2, this.leaseEnd);
    }
  }

  // One renewal: swaps `base`, with a lease from wall time `wall`, from `revision`. true: renewed (the
  // lease counts from monotonic `start`); false: the record changed (the CAS lost); undefined: the
  // store did not answer, and the lease still runs. Past the lease's end that is FENCED (leaseLost).
  private async renew(base: OwnerRecord, revision: string | null, wall: number, start: number): Promise<boolean | undefined> {
    const next: OwnerRecord = { ...base, leaseExpiresAt: wall + this.leaseMs, updatedAt: wall };
    let rev: string | null;
    try {
      // A renewal that timed out may still have been applied: the next one then loses its CAS and reads again.
      rev = await this.storeCall('renewing the lease', () => this.store.compareAndSwap(this.disk, revision, next));
    } catch (e) {
      if (_monotonic() < this.leaseEnd) return undefined;
      throw this.leaseLost(e, 'cannot renew the lease');
    }
    if (rev === null) return false;
    this.renewed(rev, next, start);
    return true;
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
        await _within(idle.promise, this.leaseHardEnd - _monotonic(), () => `${this.disk}: waiting for ${this.inflight} in-flight write(s) before releasing`);
      } catch (e) {
        failure = e;
        this.sealed = true;
      }
    }
    if (!this.sealed) {
      try {
        // The flush still passes the guard: this holder's epoch is current until it writes `free`.
        const d = this.inner;
        if (d) await _within(d.close(), Math.max(this.leaseHardEnd - _monotonic(), this.margin()), () => `${this.disk}: flushing and closing the image`);
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
