/**
 * Consolidation ("deleting a snapshot"): collapses the active delta into the
 * layer below it, or onto a new target image, while the guest keeps writing.
 * A mirror driver goes in front of the chain; the delta's allocated clusters
 * are copied to the target in one pass while every guest write is mirrored;
 * when the pass is over the target takes over as the active layer and the
 * delta leaves the chain. A state record next to the delta makes every crash
 * recoverable (docs/backup.md).
 * @module
 */
import { VmkitError } from '../../errors.js';
import { base64ToBits, bitsToBase64, intentGranule, WriteIntent } from './_intent.js';
import { isL2Layer, joinHostRuns, planExtents, planFromL2, type PlanOp } from './_plan.js';
import { RangeSet, restrictPlan } from './_ranges.js';
import type { BackupDevice, BlockExtent, ChainOps, ImageFormat } from './_types.js';
import {
  newProgress,
  RateLimiter,
  readJobRecord,
  removeJobRecord,
  withPolicy,
  writeJobRecord,
  type JobOptions,
  type JobProgress,
  type JobRecord,
} from './job.js';
import type { LiveDisk } from './live.js';
import { MirrorDriver } from './mirror.js';

/** Bytes copied between background syncs of the target's file (see run()). */
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
  format?: ImageFormat;
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

/** Walks the block status of `dev` over [0, size) into extents. */
export async function allocationMap(dev: BackupDevice, step: number = 1 << 30): Promise<BlockExtent[]> {
  const out: BlockExtent[] = [];
  let off = 0;
  while (off < dev.size) {
    const e = await dev.blockStatus(off, Math.min(step, dev.size - off));
    if (!(e.length > 0) || e.offset !== off) {
      throw new VmkitError('CORRUPT', `block status at ${off} returned an empty or misplaced extent`, { offset: off });
    }
    const last = out[out.length - 1];
    if (last && last.kind === e.kind && last.depth === e.depth && last.offset + last.length === off) last.length += e.length;
    else out.push({ ...e });
    off += e.length;
  }
  return out;
}

/**
 * Starts consolidating the active delta of `disk`. The caller keeps reading
 * and writing `disk` throughout; its writes complete only once the target
 * has them too.
 *
 * @example
 * ```ts
 * const disk = await LiveDisk.open('vm-delta.qcow2', ops);
 * const job = await consolidate(disk, { into: 'base', rateLimit: 200 * 2 ** 20 });
 * const timer = setInterval(() => console.log(job.progress().remaining), 1000);
 * const res = await job.done;                   // disk.path is now the base
 * clearInterval(timer);
 * ```
 */
export async function consolidate(disk: LiveDisk, opts: ConsolidateOptions = {}): Promise<ConsolidateJob> {
  const ops = disk.ops;
  const delta = disk.path;
  const existing = await readJobRecord(ops, delta);
  if (existing) {
    throw new VmkitError('INVALID_STATE', `a ${existing.mode} consolidation of ${delta} was interrupted: recover it first (recoverConsolidation)`, { path: delta });
  }
  const base = await ops.backingOf(delta);
  if (base === undefined) {
    throw new VmkitError('INVALID_STATE', `${delta} has no backing file: there is nothing to consolidate`, { path: delta });
  }
  const into = opts.into ?? 'base';
  const mode: JobRecord['mode'] = into === 'base' ? 'base' : 'target';
  const full = mode === 'target' && opts.full === true;
  const format = opts.format ?? (await ops.formatOf(delta));
  const target = mode === 'base' ? base : into;
  if (opts.keepDelta && mode !== 'base') throw new VmkitError('ARG_RANGE', 'keepDelta applies to a consolidation into the base only', { path: delta });
  if (mode === 'target') {
    if (target === delta || target === base) throw new VmkitError('ARG_RANGE', `target ${target} is a layer of the chain`, { path: target });
    if (await ops.exists(target)) throw new VmkitError('CONFLICT', `target ${target} exists`, { path: target });
  }
  const rec: JobRecord = {
    magic: 'vmkit-disk-job',
    version: 1,
    kind: 'consolidate',
    mode,
    phase: 'mirroring',
    delta,
    base,
    target,
    targetCreated: mode === 'target',
    full,
    format,
    ...(opts.keepDelta ? { keepDelta: true } : {}),
    cursor: 0,
    intentGranule: intentGranule(disk.size),
    intent: bitsToBase64(new Uint8Array(Math.ceil(Math.ceil(disk.size / intentGranule(disk.size)) / 8))),
    started: new Date().toISOString(),
    updated: '',
  };
  // The record goes first: a crash after it leaves a target to roll back. Into the base it
  // need not be durable yet: until the first checkpoint flushes it, losing it to a power cut
  // leaves the chain as it was (the delta, still active, hides whatever reached the base's
  // clusters under it), only without a cursor to resume from. Its fsync would also commit
  // the filesystem's journal in the middle of the job, which costs more than the copy.
  await writeJobRecord(ops, rec, mode !== 'base');
  if (mode === 'target') {
    if (full) await ops.create(target, disk.size, format);
    else await ops.createOverlay(target, base, format);
  }
  await opts.hook?.('recorded');
  const targetDev = await ops.open(target);
  return startJob(disk, rec, targetDev, opts, false);
}

/**
 * Resumes a consolidation of `disk`'s delta that a crash interrupted before
 * its pivot: the target is kept and the pass runs again over everything the
 * delta holds (the delta is the truth until the pivot, so a pass from the
 * start is always right). A job interrupted after its pivot is finished by
 * {@link recoverConsolidation} instead.
 *
 * @example
 * ```ts
 * const disk = await LiveDisk.open('vm-delta.qcow2', ops);
 * const job = await resumeConsolidation(disk);
 * await job.done;
 * ```
 */
export async function resumeConsolidation(disk: LiveDisk, opts: ConsolidateOptions = {}): Promise<ConsolidateJob> {
  const rec = await readJobRecord(disk.ops, disk.path);
  if (!rec) throw new VmkitError('NOT_FOUND', `no interrupted consolidation of ${disk.path}`, { path: disk.path });
  if (rec.phase !== 'mirroring') {
    throw new VmkitError('INVALID_STATE', `the consolidation of ${disk.path} had pivoted: finish it with recoverConsolidation`, { path: disk.path });
  }
  if (!(await disk.ops.exists(rec.target))) {
    // Crashed between the record and the target's creation.
    if (rec.full) await disk.ops.create(rec.target, disk.size, rec.format as ImageFormat);
    else await disk.ops.createOverlay(rec.target, rec.base, rec.format as ImageFormat);
  }
  const targetDev = await disk.ops.open(rec.target);
  return startJob(disk, rec, targetDev, opts, true);
}

function startJob(disk: LiveDisk, rec: JobRecord, targetDev: BackupDevice, opts: ConsolidateOptions, resumed: boolean): ConsolidateJob {
  const ops = disk.ops;
  const p = newProgress();
  const t0 = Date.now();
  const chunk = opts.chunk ?? 1 << 20;
  if (chunk <= 0 || chunk % 65536 !== 0) throw new VmkitError('ARG_RANGE', `chunk must be a positive multiple of 65536, got ${chunk}`);
  const parallel = Math.max(1, opts.parallel ?? 4);
  const limiter = new RateLimiter(opts.rateLimit ?? Infinity);
  const limited = Number.isFinite(opts.rateLimit ?? Infinity);
  // Without retries a request runs as is: its error fails the job, which reports it as a
  // VmkitError (the retry wrapper's promise and frame per request were a fifth of the pass's garbage).
  const policy =
    opts.onError === 'retry'
      ? <T>(what: string, fn: () => Promise<T>): Promise<T> => withPolicy(opts, () => p.retries++, what, fn)
      : <T>(_what: string, fn: () => Promise<T>): Promise<T> => fn();
  let cancelRequested = false;
  let completeRequested = opts.autoComplete !== false;
  let wake: (() => void) | undefined;
  let failure: unknown;
  const checkpointMs = opts.checkpointMs ?? 1000;
  const granule = intentGranule(disk.size);
  /** The background sync of the target's file in flight, if any (see run()). */
  let bgSync: Promise<void> | undefined;
  let bits: Uint8Array | undefined;
  if (resumed) {
    bits = rec.intentGranule === granule ? base64ToBits(rec.intent, Math.ceil(Math.ceil(disk.size / granule) / 8)) : undefined;
    if (!bits) throw new VmkitError('CORRUPT', `job record of ${rec.delta}: intent bitmap does not fit the disk`, { path: rec.delta });
  }
  const intent = new WriteIntent(
    disk.size,
    async (cursor, g, b) => {
      rec.cursor = cursor;
      rec.intentGranule = g;
      rec.intent = bitsToBase64(b);
      await writeJobRecord(ops, rec);
    },
    async () => {
      // A background sync of the target's file in flight makes its storage's flush return at
      // once (nothing written since it began): wait for it, or the checkpoint would record as
      // durable what that sync has not finished writing.
      await bgSync;
      await disk.device.flush();
      await targetDev.flush();
    },
    resumed ? rec.cursor : 0,
    bits,
  );
  // A qcow2 delta hands out its L2 tables: the plan then comes from one pass over them, with host
  // offsets the copy reads the delta's file at directly (a whole chain's block status is only
  // needed for a full target).
  const top = disk.device;
  const l2 = !rec.full && isL2Layer(top) ? top : undefined;
  const mirror = new MirrorDriver(disk.device, targetDev, {
    ...(l2 ? { readHost: (h: number, d: Uint8Array) => l2.storage.readInto(h, d) } : {}),
    intent,
    // A resumed full target may hold data where the source now has zeroes.
    targetZeroed: rec.full && !resumed,
    policy,
    onTargetError: (e) => {
      failure ??= e;
      wake?.();
    },
  });
  const report = (): JobProgress => {
    Object.assign(p, mirror.stats);
    return { ...p };
  };
  const changed = (): void => {
    opts.onProgress?.(report());
  };
  const onAbort = (): void => {
    cancelRequested = true;
    wake?.();
  };
  opts.signal?.addEventListener('abort', onAbort);

  async function run(): Promise<ConsolidateResult> {
    // Until the pivot the delta is the truth and the target is made durable only by the job's
    // flushes (checkpoints, pivot), so its metadata may be cached write-back, as QEMU's is.
    await targetDev.setCacheMode?.('writeback');
    await disk.exclusive(async () => disk.setFront(mirror));
    try {
      // Plan from the allocation map as it is now: every later allocation in
      // the delta comes from a guest write the mirror forwards itself.
      let plan: PlanOp[] = l2 ? joinHostRuns(await planFromL2(l2, chunk), chunk) : planExtents(await allocationMap(disk.device), rec.full ? Infinity : 1, chunk);
      if (resumed) {
        // Only what the interrupted run had not made durable: from the cursor
        // on, and the regions marked as possibly holding unsynced writes.
        const keep = new RangeSet();
        keep.add(rec.cursor, disk.size);
        const b = bits!;
        for (let r = 0; r * granule < rec.cursor; r++) if (b[r >> 3]! & (1 << (r & 7))) keep.add(r * granule, Math.min(rec.cursor, (r + 1) * granule));
        plan = restrictPlan(plan, keep);
      }
      p.planned = plan.reduce((n, o) => n + o.length, 0);
      p.remaining = p.planned;
      const reportStep = p.planned / 1024;
      let nextReport = p.planned - reportStep;
      await opts.hook?.('copying');
      // The single pass: ops in offset order, `parallel` at a time.
      let next = 0;
      const inflight = new Set<number>();
      let lastCheckpoint = Date.now();
      let checkpointing = false;
      // Early write-back: the target's file is synced in the background every few megabytes
      // copied, so the device writes while the pass goes on and the flush before the pivot
      // finds little left (it was a third of the job: 128 MiB of dirty pages written at the end).
      // The file's own fdatasync, not the device's flush: that would queue behind the copy's
      // writes and write back metadata the job keeps cached until the pivot. An error fails the
      // job (the kernel reports a write-back error once, so it must not be lost).
      const tStorage = (targetDev as { storage?: { flush?: () => Promise<void> } }).storage;
      let sinceSync = 0;
      const trickle = async (): Promise<void> => {
        if (!tStorage?.flush) return;
        // With synchronous file I/O the pass runs on microtasks alone: a turn of the event loop
        // lets the sync's completion (and the guest's I/O) in.
        await new Promise<void>((r) => (typeof setImmediate === 'function' ? setImmediate(r) : setTimeout(r, 0)));
        if (bgSync) return;
        sinceSync = 0;
        bgSync = tStorage
          .flush()
          .catch((e: unknown) => {
            failure ??= e;
          })
          .finally(() => {
            bgSync = undefined;
          });
      };
      const worker = async (): Promise<void> => {
        while (next < plan.length) {
          if (cancelRequested || failure !== undefined) return;
          const i = next++;
          const op = plan[i]!;
          inflight.add(op.offset);
          if (limited) await limiter.take(op.length);
          await mirror.copy(op);
          inflight.delete(op.offset);
          p.remaining -= op.length;
          if (!op.zero && (sinceSync += op.length) >= _SYNC_EVERY) await trickle();
          // Mirrored ranges below every op still to run are never looked at again.
          const low = inflight.size > 0 ? Math.min(...inflight) : next < plan.length ? plan[next]!.offset : Infinity;
          mirror.forgetBelow(low);
          // Progress about a thousand times a pass at most (every op of a small plan): a report
          // per 64 KiB cluster cost more than its copy's bookkeeping.
          if (p.remaining <= nextReport || next >= plan.length) {
            nextReport = p.remaining - reportStep;
            changed();
          }
          if (!checkpointing && Date.now() - lastCheckpoint >= checkpointMs) {
            checkpointing = true;
            try {
              await intent.checkpoint(Math.min(low, disk.size));
            } finally {
              checkpointing = false;
              lastCheckpoint = Date.now();
            }
          }
        }
      };
      const workers = Array.from({ length: Math.min(parallel, Math.max(1, plan.length)) }, () =>
        worker().catch((e: unknown) => {
          failure ??= e;
        }),
      );
      await Promise.all(workers);
      await bgSync;
      if (failure === undefined && !cancelRequested) {
        // The pass is over: record it, so a crash from here resumes with nothing to copy.
        await intent.checkpoint(disk.size).catch((e: unknown) => {
          failure ??= e;
        });
      }
      if (failure === undefined && !cancelRequested) {
        p.inSync = true;
        p.state = 'ready';
        changed();
        await opts.hook?.('in-sync');
        while (!completeRequested && !cancelRequested && failure === undefined) {
          await new Promise<void>((r) => (wake = r));
          wake = undefined;
        }
      }
      if (failure !== undefined || cancelRequested) {
        await disk.exclusive(async () => {
          mirror.detach();
          disk.setFront(undefined);
        });
        await intent.settle();
        await targetDev.close().catch(() => {});
        if (rec.targetCreated) await ops.remove(rec.target);
        await removeJobRecord(ops, rec.delta);
        if (failure !== undefined) {
          p.state = 'failed';
          p.done = true;
          changed();
          throw failure instanceof VmkitError ? failure : new VmkitError('IO', `consolidation failed: ${(failure as Error)?.message}`, { cause: failure });
        }
        p.state = 'cancelled';
        p.done = true;
        changed();
        throw new VmkitError('CANCELLED', `consolidation of ${rec.delta} was cancelled; ${rec.delta} stays active`, { path: rec.delta });
      }
      // Pivot: with guest I/O paused, make both sides durable, record that
      // the target is now the truth, drop the delta, and swap the chain.
      p.state = 'pivoting';
      changed();
      await disk.exclusive(async () => {
        await mirror.drain();
        await intent.settle();
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
          await emptyDelta(ops, rec);
          disk.swapChain(rec.delta, await ops.open(rec.delta));
        } else {
          disk.swapChain(rec.target, targetDev);
          await old.close();
        }
      });
      // The guest's I/O runs again: the old delta's storage is freed now, outside the pause
      // (freeing a hundred megabytes took ~70 ms on an ext4 mounted with discard). The record
      // goes last, so a crash before it finishes this through recoverConsolidation.
      await opts.hook?.('pivoted');
      await ops.remove(rec.keepDelta ? _oldDelta(rec.delta) : rec.delta);
      await opts.hook?.('delta-removed');
      await removeJobRecord(ops, rec.delta);
      await opts.hook?.('finished');
      p.state = 'done';
      p.done = true;
      changed();
      return { ...report(), active: rec.keepDelta ? rec.delta : rec.target, elapsedMs: Date.now() - t0 };
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
  }

  const done = run();
  // A caller that only polls progress must not see an unhandled rejection.
  done.catch(() => {});
  return {
    progress: report,
    async cancel() {
      cancelRequested = true;
      wake?.();
      await done.catch(() => {});
    },
    complete() {
      completeRequested = true;
      wake?.();
    },
    done,
  };
}

/** The second name an emptied delta's old file keeps until it is removed (see emptyDelta). */
function _oldDelta(delta: string): string {
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
async function emptyDelta(ops: ChainOps, rec: JobRecord): Promise<void> {
  const tmp = `${rec.delta}.vmkit-empty`;
  await ops.remove(tmp);
  await ops.createOverlay(tmp, rec.base, rec.format as ImageFormat);
  if (ops.link) {
    await ops.remove(_oldDelta(rec.delta));
    // Without the second name (a filesystem with no hard links) the rename frees it, as before.
    await ops.link(rec.delta, _oldDelta(rec.delta)).catch(() => {});
  }
  await ops.rename(tmp, rec.delta);
}

async function repair(ops: ChainOps, path: string): Promise<void> {
  if (ops.repairLeaks && (await ops.exists(path))) await ops.repairLeaks(path);
}

/**
 * What {@link recoverConsolidation} did.
 *
 * @example
 * ```ts
 * const { action, active }: RecoverResult = await recoverConsolidation(ops, 'vm-delta.qcow2');
 * if (action !== 'none') console.log('recovered:', action, '; active layer', active);
 * ```
 */
export interface RecoverResult {
  /** 'none' (no record), 'rolled-back' or 'rolled-forward'. */
  action: 'none' | 'rolled-back' | 'rolled-forward';
  /** The active layer now. */
  active: string;
  /** The record found, if any. */
  record?: JobRecord;
}

/**
 * Brings a chain back to a clean state after a crash during a consolidation
 * of `delta`, without resuming it. Before the pivot the delta is still the
 * truth: a created target and the record are removed (rolled back; use
 * {@link resumeConsolidation} to carry on instead). After the pivot the
 * target is the truth: the delta and the record are removed (rolled forward).
 * A job that finished leaves nothing behind: then, if `delta` still exists
 * (into the base keeping the delta, or no job ran) it is `active` (action
 * `none`); if it does not, NOT_FOUND — the job finished and its result (the
 * base, or the target) is the active layer, which only the caller that chose
 * it knows. `active` is never a layer that does not exist.
 *
 * @example
 * ```ts
 * const r = await recoverConsolidation(ops, 'vm-delta.qcow2');
 * const disk = await LiveDisk.open(r.active, ops);
 * ```
 */
export async function recoverConsolidation(ops: ChainOps, delta: string): Promise<RecoverResult> {
  const rec = await readJobRecord(ops, delta);
  if (!rec) {
    // No record: no job, or one that finished (its last step removes the record, after the
    // delta). Only in the first case is the delta still there to be the active layer.
    if (await ops.exists(delta)) return { action: 'none', active: delta };
    throw new VmkitError(
      'NOT_FOUND',
      `${delta} does not exist and no consolidation record names it: a consolidation that finished leaves none, and its result (the base, or the target) is the active layer`,
      { path: delta },
    );
  }
  if (rec.phase === 'pivot') {
    if (rec.keepDelta) {
      await emptyDelta(ops, rec);
      await ops.remove(_oldDelta(rec.delta));
    } else await ops.remove(rec.delta);
    // A kill mid-allocation leaves clusters counted but unused in the image the job wrote.
    await repair(ops, rec.target);
    await removeJobRecord(ops, delta);
    return { action: 'rolled-forward', active: rec.keepDelta ? rec.delta : rec.target, record: rec };
  }
  if (rec.targetCreated) await ops.remove(rec.target);
  else await repair(ops, rec.target);
  await repair(ops, rec.delta);
  await removeJobRecord(ops, delta);
  return { action: 'rolled-back', active: delta, record: rec };
}
