/**
 * The consolidation job as the phases QEMU's mirror job names (block/mirror.c):
 * {@link _ConsolidationJob.plan plan} → {@link _ConsolidationJob.copyPass copyPass} →
 * {@link _ConsolidationJob.waitUntilComplete waitUntilComplete} →
 * {@link _ConsolidationJob.pivot pivot} | {@link _ConsolidationJob.rollBack rollBack} →
 * {@link _ConsolidationJob.finish finish}. Each phase is a method and what the
 * phases share is a field, so a reader sees which phase sets what. The public
 * entry points (consolidate, resumeConsolidation, recoverConsolidation) are in
 * consolidate.ts, which re-exports the option, result and job types declared
 * here; the sequence and the state record are in docs/backup.md.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { base64ToBits, bitsToBase64, intentGranule, WriteIntent } from './_intent.js';
import { allocationMap, isL2Layer, joinHostRuns, planExtents, planFromL2, type L2Layer, type PlanOp } from './_plan.js';
import { RangeSet, restrictPlan } from './_ranges.js';
import type { BackupDevice, ChainOps } from './_types.js';
import type { FormatName } from '../formats/types.js';
import {
  newProgress,
  RateLimiter,
  removeJobRecord,
  withPolicy,
  writeJobRecord,
  type JobOptions,
  type JobProgress,
  type JobRecord,
} from './job.js';
import type { LiveDisk } from './live.js';
import { MirrorDriver } from './mirror.js';

/** Bytes copied between background syncs of the target's file (see copyPass()). */
const _SYNC_EVERY = 16 << 20;

/**
 * Where a consolidation puts the delta's data.
 *
 * @example
 * ```ts
 * const job = await consolidate(disk, { into: 'vm-flat.qcow2', full: true, autoComplete: false });
 * ```
 */
export interface ConsolidateOptions extends JobOptions {
  /** 'base' (default): into the layer below the delta. Otherwise the path of a new target image. */
  into?: 'base' | string;
  /** Format of a new target (default: the delta's format). */
  format?: FormatName;
  /**
   * A new target holds the whole chain, with no backing file (default false:
   * the target is an overlay on the delta's backing file and gets only the
   * delta's data).
   */
  full?: boolean;
  /**
   * Pivot as soon as the target is in sync (default true). With false the job
   * stays `ready`, mirroring, until {@link ConsolidateJob.complete}.
   */
  autoComplete?: boolean;
  /**
   * Into the base only: keep the delta in the chain, emptied, as `qemu-img
   * commit` does (default false: the delta leaves the chain and its file is
   * removed once the base is durable). The active layer after the job is then
   * the (empty) delta, so a VM configured with its path carries on unchanged.
   */
  keepDelta?: boolean;
  /** Milliseconds between checkpoints of the state record's cursor (default 1000). */
  checkpointMs?: number;
  /** Test hook: called at named points of the job (crash tests stop the process there). */
  hook?: (point: 'recorded' | 'copying' | 'in-sync' | 'pivot-recorded' | 'pivoted' | 'delta-removed' | 'finished') => void | Promise<void>;
}

/**
 * What a finished consolidation reports.
 *
 * @example
 * ```ts
 * const { active, elapsedMs, copiedBytes }: ConsolidateResult = await job.done;
 * ```
 */
export interface ConsolidateResult extends JobProgress {
  /** The active layer after the job: the base or the target (the delta if cancelled). */
  active: string;
  /** Milliseconds from start to pivot. */
  elapsedMs: number;
}

/**
 * A running consolidation.
 *
 * @example
 * ```ts
 * const job: ConsolidateJob = await consolidate(disk, { autoComplete: false });
 * while (job.progress().state !== 'ready') await new Promise((r) => setTimeout(r, 100));
 * job.complete();
 * await job.done;
 * ```
 */
export interface ConsolidateJob {
  /** Current progress. */
  progress(): JobProgress;
  /** Stops the job; the delta stays active; resolves once the job is cancelled. */
  cancel(): Promise<void>;
  /** Pivots a job started with `autoComplete: false` once it is ready. */
  complete(): void;
  /** Resolves when the job is done, rejects when it fails or is cancelled (CANCELLED). */
  readonly done: Promise<ConsolidateResult>;
}

/**
 * One running consolidation (what `consolidate` and `resumeConsolidation`
 * return). The constructor sets the job up and starts {@link run}; every
 * field below the settings belongs to the phase named beside it.
 * @internal
 */
export class _ConsolidationJob implements ConsolidateJob {
  readonly done: Promise<ConsolidateResult>;
  private readonly disk: LiveDisk;
  private readonly ops: ChainOps;
  private readonly rec: JobRecord;
  private readonly targetDev: BackupDevice;
  private readonly opts: ConsolidateOptions;
  private readonly resumed: boolean;
  private readonly p: JobProgress = newProgress();
  private readonly t0: number = Date.now();
  private readonly chunk: number;
  private readonly parallel: number;
  private readonly limiter: RateLimiter;
  private readonly limited: boolean;
  private readonly checkpointMs: number;
  /** Bytes per bit of the write-intent bitmap. */
  private readonly granule: number;
  /** The error policy around each target write. */
  private readonly policy: <T>(what: string, fn: () => Promise<T>) => Promise<T>;
  private readonly intent: WriteIntent;
  /** The resumed record's intent bitmap (plan: what to copy again below its cursor). */
  private readonly bits: Uint8Array | undefined;
  /** The delta's L2 tables, when it hands them out (plan, and the mirror's host reads). */
  private readonly l2: L2Layer | undefined;
  private readonly mirror: MirrorDriver;
  // Requests from outside (cancel, complete, the signal) and the target's failures; `wake` ends waitUntilComplete's wait.
  private cancelRequested = false;
  private completeRequested: boolean;
  private wake: (() => void) | undefined;
  private failure: unknown;
  // copyPass: the plan's ops (todo), the next to start, those running, the checkpoint and report schedule.
  private todo: PlanOp[] = [];
  private next = 0;
  private readonly inflight = new Set<number>();
  private lastCheckpoint = 0;
  private checkpointing = false;
  private reportStep = 0;
  private nextReport = 0;
  /** Bytes copied since the last background sync of the target's file. */
  private sinceSync = 0;
  /** The background sync of the target's file in flight, if any (see copyPass()). */
  private bgSync: Promise<void> | undefined;

  constructor(disk: LiveDisk, rec: JobRecord, targetDev: BackupDevice, opts: ConsolidateOptions, resumed: boolean) {
    this.disk = disk;
    this.ops = disk.ops;
    this.rec = rec;
    this.targetDev = targetDev;
    this.opts = opts;
    this.resumed = resumed;
    this.chunk = opts.chunk ?? 1 << 20;
    if (this.chunk <= 0 || this.chunk % 65536 !== 0) throw new VmkitError('ARG_RANGE', `chunk must be a positive multiple of 65536, got ${this.chunk}`);
    this.parallel = Math.max(1, opts.parallel ?? 4);
    this.limiter = new RateLimiter(opts.rateLimit ?? Infinity);
    this.limited = Number.isFinite(opts.rateLimit ?? Infinity);
    // Without retries a request runs as is: its error fails the job, which reports it as a
    // VmkitError (the retry wrapper's promise and frame per request were a fifth of the pass's garbage).
    const p = this.p;
    this.policy =
      opts.onError === 'retry'
        ? <T>(what: string, fn: () => Promise<T>): Promise<T> => withPolicy(opts, () => p.retries++, what, fn)
        : <T>(_what: string, fn: () => Promise<T>): Promise<T> => fn();
    this.completeRequested = opts.autoComplete !== false;
    this.checkpointMs = opts.checkpointMs ?? 1000;
    const granule = (this.granule = intentGranule(disk.size));
    if (resumed) {
      this.bits = rec.intentGranule === granule ? base64ToBits(rec.intent, Math.ceil(Math.ceil(disk.size / granule) / 8)) : undefined;
      if (!this.bits) throw new VmkitError('CORRUPT', `job record of ${rec.delta}: intent bitmap does not fit the disk`, { path: rec.delta });
    }
    this.intent = new WriteIntent(
      disk.size,
      async (cursor, g, b) => {
        rec.cursor = cursor;
        rec.intentGranule = g;
        rec.intent = bitsToBase64(b);
        await writeJobRecord(this.ops, rec);
      },
      async () => {
        // A background sync of the target's file in flight makes its storage's flush return at
        // once (nothing written since it began): wait for it, or the checkpoint would record as
        // durable what that sync has not finished writing.
        await this.bgSync;
        await disk.device.flush();
        await targetDev.flush();
      },
      resumed ? rec.cursor : 0,
      this.bits,
    );
    // A qcow2 delta hands out its L2 tables: the plan then comes from one pass over them, with host
    // offsets the copy reads the delta's file at directly (a whole chain's block status is only
    // needed for a full target).
    const top = disk.device;
    const l2 = (this.l2 = !rec.full && isL2Layer(top) ? top : undefined);
    this.mirror = new MirrorDriver(disk.device, targetDev, {
      ...(l2 ? { readHost: (h: number, d: Uint8Array) => l2.storage.readInto(h, d) } : {}),
      intent: this.intent,
      // A resumed full target may hold data where the source now has zeroes.
      targetZeroed: rec.full && !resumed,
      policy: this.policy,
      onTargetError: (e) => {
        this.failure ??= e;
        this.wake?.();
      },
    });
    opts.signal?.addEventListener('abort', this.onAbort);
    this.done = this.run();
    // A caller that only polls progress must not see an unhandled rejection.
    this.done.catch(() => {});
  }

  progress(): JobProgress {
    Object.assign(this.p, this.mirror.stats);
    return { ...this.p };
  }

  async cancel(): Promise<void> {
    this.cancelRequested = true;
    this.limiter.interrupt();
    this.wake?.();
    await this.done.catch(() => {});
  }

  complete(): void {
    this.completeRequested = true;
    this.wake?.();
  }

  private readonly onAbort = (): void => {
    this.cancelRequested = true;
    this.limiter.interrupt();
    this.wake?.();
  };

  private changed(): void {
    this.opts.onProgress?.(this.progress());
  }

  private stopping(): boolean {
    return this.failure !== undefined || this.cancelRequested;
  }

  /** The phases in order: the mirror goes in front of the chain, then plan → copyPass → waitUntilComplete → pivot | rollBack → finish. */
  private async run(): Promise<ConsolidateResult> {
    const disk = this.disk;
    // Until the pivot the delta is the truth and the target is made durable only by the job's
    // flushes (checkpoints, pivot), so its metadata may be cached write-back, as QEMU's is.
    await this.targetDev.setCacheMode?.('writeback');
    await disk.exclusive(async () => disk.setFront(this.mirror));
    try {
      await this.plan();
      await this.copyPass();
      await this.waitUntilComplete();
      if (this.stopping()) return await this.rollBack();
      await this.pivot();
      return await this.finish();
    } finally {
      this.opts.signal?.removeEventListener('abort', this.onAbort);
    }
  }

  /**
   * Plans from the allocation map as it is now: every later allocation in the
   * delta comes from a guest write the mirror forwards itself.
   */
  private async plan(): Promise<void> {
    const { rec, chunk, l2, disk, p } = this;
    let plan: PlanOp[] = l2 ? joinHostRuns(await planFromL2(l2, chunk), chunk) : planExtents(await allocationMap(disk.device), rec.full ? Infinity : 1, chunk);
    if (this.resumed) {
      // Only what the interrupted run had not made durable: from the cursor
      // on, and the regions marked as possibly holding unsynced writes.
      const keep = new RangeSet();
      keep.add(rec.cursor, disk.size);
      const b = this.bits!;
      const granule = this.granule;
      for (let r = 0; r * granule < rec.cursor; r++) if (b[r >> 3]! & (1 << (r & 7))) keep.add(r * granule, Math.min(rec.cursor, (r + 1) * granule));
      plan = restrictPlan(plan, keep);
    }
    this.todo = plan;
    p.planned = plan.reduce((n, o) => n + o.length, 0);
    p.remaining = p.planned;
    this.reportStep = p.planned / 1024;
    this.nextReport = p.planned - this.reportStep;
  }

  /**
   * The single pass: the plan's ops in offset order, `parallel` at a time.
   * When it is over with nothing stopping the job, it is recorded, so a crash
   * from here resumes with nothing to copy.
   */
  private async copyPass(): Promise<void> {
    await this.opts.hook?.('copying');
    this.lastCheckpoint = Date.now();
    const plan = this.todo;
    const workers = Array.from({ length: Math.min(this.parallel, Math.max(1, plan.length)) }, () =>
      this.worker().catch((e: unknown) => {
        this.failure ??= e;
      }),
    );
    await Promise.all(workers);
    await this.bgSync;
    if (!this.stopping()) {
      await this.intent.checkpoint(this.disk.size).catch((e: unknown) => {
        this.failure ??= e;
      });
    }
  }

  /** One of copyPass's `parallel` workers: takes the next op until none is left or the job stops. */
  private async worker(): Promise<void> {
    const { p, mirror, todo: plan, inflight, disk } = this;
    while (this.next < plan.length) {
      if (this.stopping()) return;
      const i = this.next++;
      const op = plan[i]!;
      inflight.add(op.offset);
      if (this.limited) await this.limiter.take(op.length);
      if (this.cancelRequested) {
        inflight.delete(op.offset);
        return;
      }
      await mirror.copy(op);
      inflight.delete(op.offset);
      p.remaining -= op.length;
      if (!op.zero && (this.sinceSync += op.length) >= _SYNC_EVERY) await this.trickle();
      // Mirrored ranges below every op still to run are never looked at again.
      const low = inflight.size > 0 ? Math.min(...inflight) : this.next < plan.length ? plan[this.next]!.offset : Infinity;
      mirror.forgetBelow(low);
      // Progress about a thousand times a pass at most (every op of a small plan): a report
      // per 64 KiB cluster cost more than its copy's bookkeeping.
      if (p.remaining <= this.nextReport || this.next >= plan.length) {
        this.nextReport = p.remaining - this.reportStep;
        this.changed();
      }
      if (!this.checkpointing && Date.now() - this.lastCheckpoint >= this.checkpointMs) {
        this.checkpointing = true;
        try {
          await this.intent.checkpoint(Math.min(low, disk.size));
        } finally {
          this.checkpointing = false;
          this.lastCheckpoint = Date.now();
        }
      }
    }
  }

  /**
   * Early write-back: the target's file is synced in the background every few megabytes
   * copied, so the device writes while the pass goes on and the flush before the pivot
   * finds little left (it was a third of the job: 128 MiB of dirty pages written at the end).
   * The file's own fdatasync, not the device's flush: that would queue behind the copy's
   * writes and write back metadata the job keeps cached until the pivot. An error fails the
   * job (the kernel reports a write-back error once, so it must not be lost).
   */
  private async trickle(): Promise<void> {
    const tStorage = (this.targetDev as { storage?: { flush?: () => Promise<void> } }).storage;
    if (!tStorage?.flush) return;
    // With synchronous file I/O the pass runs on microtasks alone: a turn of the event loop
    // lets the sync's completion (and the guest's I/O) in.
    await new Promise<void>((r) => (typeof setImmediate === 'function' ? setImmediate(r) : setTimeout(r, 0)));
    if (this.bgSync) return;
    this.sinceSync = 0;
    this.bgSync = tStorage
      .flush()
      .catch((e: unknown) => {
        this.failure ??= e;
      })
      .finally(() => {
        this.bgSync = undefined;
      });
  }

  /** In sync: reports `ready`, then mirrors until complete(), cancel() or a failure. */
  private async waitUntilComplete(): Promise<void> {
    if (this.stopping()) return;
    this.p.inSync = true;
    this.p.state = 'ready';
    this.changed();
    await this.opts.hook?.('in-sync');
    while (!this.completeRequested && !this.stopping()) {
      await new Promise<void>((r) => (this.wake = r));
      this.wake = undefined;
    }
  }

  /**
   * Cancelled or failed before the pivot: the mirror leaves the chain, a
   * target the job created is removed, and so is the record; the delta stays
   * active. Always throws (CANCELLED, or the failure).
   */
  private async rollBack(): Promise<never> {
    const { disk, ops, rec, p } = this;
    await disk.exclusive(async () => {
      this.mirror.detach();
      disk.setFront(undefined);
    });
    await this.intent.settle();
    await this.targetDev.close().catch(() => {});
    if (rec.targetCreated) await ops.remove(rec.target);
    await removeJobRecord(ops, rec.delta);
    const failure = this.failure;
    if (failure !== undefined) {
      p.state = 'failed';
      p.done = true;
      this.changed();
      throw failure instanceof VmkitError ? failure : new VmkitError('IO', `consolidation failed: ${(failure as Error)?.message}`, { cause: failure });
    }
    p.state = 'cancelled';
    p.done = true;
    this.changed();
    throw new VmkitError('CANCELLED', `consolidation of ${rec.delta} was cancelled; ${rec.delta} stays active`, { path: rec.delta });
  }

  /**
   * With guest I/O paused: make both sides durable, record that the target is
   * now the truth, drop the delta, and swap the chain.
   */
  private async pivot(): Promise<void> {
    const { disk, ops, rec, targetDev, mirror, opts } = this;
    this.p.state = 'pivoting';
    this.changed();
    await disk.exclusive(async () => {
      await mirror.drain();
      await this.intent.settle();
      await disk.device.flush();
      // The target becomes the active disk: a completed guest write must survive the process.
      await targetDev.setCacheMode?.('writethrough');
      await targetDev.flush();
      rec.phase = 'pivot';
      await writeJobRecord(ops, rec);
      await opts.hook?.('pivot-recorded');
      const old = disk.device;
      mirror.detach();
      if (rec.keepDelta) {
        // The delta stays the active layer, emptied: the base under it holds everything now.
        await old.close();
        await targetDev.close();
        await _emptyDelta(ops, rec);
        disk.swapChain(rec.delta, await ops.open(rec.delta));
      } else {
        disk.swapChain(rec.target, targetDev);
        await old.close();
      }
    });
  }

  /**
   * The guest's I/O runs again: the old delta's storage is freed now, outside the pause
   * (freeing a hundred megabytes took ~70 ms on an ext4 mounted with discard). The record
   * goes last, so a crash before it finishes this through recoverConsolidation.
   */
  private async finish(): Promise<ConsolidateResult> {
    const { ops, rec, opts, p } = this;
    await opts.hook?.('pivoted');
    await ops.remove(rec.keepDelta ? _oldDelta(rec.delta) : rec.delta);
    await opts.hook?.('delta-removed');
    await removeJobRecord(ops, rec.delta);
    await opts.hook?.('finished');
    p.state = 'done';
    p.done = true;
    this.changed();
    return { ...this.progress(), active: rec.keepDelta ? rec.delta : rec.target, elapsedMs: Date.now() - this.t0 };
  }
}

/** The second name an emptied delta's old file keeps until it is removed (see _emptyDelta). */
export function _oldDelta(delta: string): string {
  return `${delta}.vmkit-old`;
}

/**
 * Replaces the delta by an empty overlay on the base (after the pivot of a
 * `keepDelta` job): created next to it, durable, then renamed over it, so a
 * crash leaves either the old delta (whose data the base holds too: the
 * chain reads the same) or the empty one. Where the ChainOps can link, the
 * old file first gets a second name, so the rename does not free its
 * storage while the guest's I/O is paused; the caller removes that name.
 * Idempotent.
 */
export async function _emptyDelta(ops: ChainOps, rec: JobRecord): Promise<void> {
  const tmp = `${rec.delta}.vmkit-empty`;
  await ops.remove(tmp);
  await ops.createOverlay(tmp, rec.base, rec.format as FormatName);
  if (ops.link) {
    await ops.remove(_oldDelta(rec.delta));
    // Without the second name (a filesystem with no hard links) the rename frees it, as before.
    await ops.link(rec.delta, _oldDelta(rec.delta)).catch(() => {});
  }
  await ops.rename(tmp, rec.delta);
}

