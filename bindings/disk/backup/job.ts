/**
 * Job control shared by backup and consolidation: progress, cancel, an error
 * policy, a rate limit, and the persisted state record that lets a job be
 * resumed or rolled back after a crash (docs/backup.md).
 * @module
 */
import { VmkitError } from '../../errors.js';
import type { ChainOps } from './_types.js';
import type { MirrorStats } from './mirror.js';

/**
 * Where a job is in its life (docs/backup.md has the state machine).
 *
 * @example
 * ```ts
 * const { state }: { state: JobState } = job.progress();
 * if (state === 'ready') job.complete();
 * ```
 */
export type JobState = 'running' | 'ready' | 'pivoting' | 'done' | 'cancelled' | 'failed';

/**
 * A snapshot of a job's progress.
 *
 * @example
 * ```ts
 * const p: JobProgress = job.progress();
 * console.log(`${p.planned - p.remaining}/${p.planned} bytes, in sync: ${p.inSync}`);
 * ```
 */
export interface JobProgress extends MirrorStats {
  /** The job's state. */
  state: JobState;
  /** Bytes the copy pass has still to visit. */
  remaining: number;
  /** Bytes the pass planned at the start. */
  planned: number;
  /** True once the pass is over: the target holds everything and the mirror keeps it so. */
  inSync: boolean;
  /** True once the job has finished (successfully, cancelled or failed). */
  done: boolean;
  /** Copy operations retried after an error. */
  retries: number;
}

/** What a job does when a copy fails. */
export type ErrorPolicy = 'stop' | 'retry';

/**
 * Options every job takes.
 *
 * @example
 * ```ts
 * const ac = new AbortController();
 * const job = backup(snap.image, 'vm-backup.raw', { ops, rateLimit: 100 * 2 ** 20, onError: 'retry', signal: ac.signal });
 * ```
 */
export interface JobOptions {
  /** Copy at most this many bytes per second (guest writes are never throttled). Default: unlimited. */
  rateLimit?: number;
  /** On an I/O error: stop the job (default) or retry the operation. */
  onError?: ErrorPolicy;
  /** Attempts per operation under 'retry' (default 3), with doubling backoff from 10 ms. */
  retries?: number;
  /** Largest single copy, bytes (default 1 MiB, a multiple of 64 KiB). */
  chunk?: number;
  /** Copy operations in flight at once (default 4). */
  parallel?: number;
  /** Cancels the job when aborted. */
  signal?: AbortSignal;
  /** Called after each copy operation and on every state change. */
  onProgress?: (p: JobProgress) => void;
}

/**
 * A token bucket over copied bytes: `take(n)` resolves once `n` bytes fit the
 * rate. Bursts of up to one second's worth pass at once.
 *
 * @example
 * ```ts
 * const rl = new RateLimiter(50 * 2 ** 20); // 50 MiB/s
 * await rl.take(2 ** 20);
 * ```
 */
export class RateLimiter {
  private readonly rate: number;
  private tokens: number;
  private last: number;
  constructor(bytesPerSecond: number) {
    this.rate = bytesPerSecond;
    this.tokens = bytesPerSecond;
    this.last = Date.now();
  }
  /**
   * Waits until `n` bytes may go.
   *
   * @example
   * ```ts
   * for (const op of plan) {
   *   await rl.take(op.length);
   *   await copy(op);
   * }
   * ```
   */
  async take(n: number): Promise<void> {
    if (!Number.isFinite(this.rate) || this.rate <= 0) return;
    for (;;) {
      if (this.interrupted) return;
      const now = Date.now();
      this.tokens = Math.min(this.rate, this.tokens + ((now - this.last) / 1000) * this.rate);
      this.last = now;
      if (this.tokens >= Math.min(n, this.rate)) {
        this.tokens -= n;
        return;
      }
      await new Promise<void>((r) => {
        const t = setTimeout(() => {
          this.sleepers.delete(wake);
          r();
        }, Math.max(1, ((Math.min(n, this.rate) - this.tokens) / this.rate) * 1000));
        const wake = (): void => {
          clearTimeout(t);
          r();
        };
        this.sleepers.add(wake);
      });
    }
  }
  private interrupted = false;
  private readonly sleepers = new Set<() => void>();
  /**
   * Lets every waiting and later `take` return at once: a cancelled job must
   * not sit out seconds of rate limit (a handoff waits for it).
   *
   * @example
   * ```ts
   * signal.addEventListener('abort', () => rl.interrupt());
   * ```
   */
  interrupt(): void {
    this.interrupted = true;
    for (const w of this.sleepers) w();
    this.sleepers.clear();
  }
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Runs `fn` under the error policy: retries with doubling backoff, else rethrows. */
export async function withPolicy<T>(opts: JobOptions, onRetry: () => void, what: string, fn: () => Promise<T>): Promise<T> {
  const attempts = opts.onError === 'retry' ? Math.max(1, opts.retries ?? 3) : 1;
  let delay = 10;
  for (let i = 1; ; i++) {
    try {
      return await fn();
    } catch (e) {
      if (i >= attempts || (e instanceof VmkitError && (e.code === 'CANCELLED' || e.code === 'FENCED'))) {
        if (e instanceof VmkitError) throw e;
        throw new VmkitError('IO', `${what} failed: ${(e as Error)?.message ?? String(e)}`, { cause: e });
      }
      onRetry();
      await sleep(delay);
      delay *= 2;
    }
  }
}

// ---- the persisted state record ----------------------------------------------

/** Magic string at the head of every job record. */
export const JOB_RECORD_MAGIC = 'vmkit-disk-job';
/** Version of the record format this build writes and reads. */
export const JOB_RECORD_VERSION = 1;

/**
 * The state record of a consolidation, kept next to the delta as
 * `<delta>.vmkit-job` (docs/backup.md, "State record").
 *
 * @example
 * ```ts
 * const rec: JobRecord | undefined = await readJobRecord(ops, 'vm-delta.qcow2');
 * if (rec?.phase === 'pivot') console.log('the target', rec.target, 'is already the truth');
 * ```
 */
export interface JobRecord {
  magic: typeof JOB_RECORD_MAGIC;
  version: typeof JOB_RECORD_VERSION;
  kind: 'consolidate';
  /** 'base': collapse into the layer below; 'target': onto a new image. */
  mode: 'base' | 'target';
  /** 'mirroring': the delta is still the truth; 'pivot': the target is. */
  phase: 'mirroring' | 'pivot';
  /** The delta being consolidated (the active layer until the pivot). */
  delta: string;
  /** The layer below the delta. */
  base: string;
  /** The image that takes over: the base itself, or the new target. */
  target: string;
  /** True when the job created `target` (rollback removes it). */
  targetCreated: boolean;
  /** True when the target holds the whole chain (no backing file). */
  full: boolean;
  /** Format of a created target. */
  format: string;
  /** Every planned copy below this byte offset is done and flushed on both sides (resume starts here). */
  cursor: number;
  /** Bytes per bit of `intent`. */
  intentGranule: number;
  /** Base64 bitmap: regions below `cursor` that may hold a guest write the target lacks. */
  intent: string;
  /**
   * Into the base only: after the pivot the delta stays in the chain, emptied
   * (an empty overlay on the base, as `qemu-img commit` leaves it), instead of
   * being removed. Absent in records of jobs that drop it.
   */
  keepDelta?: boolean;
  /** When the job began (ISO 8601). */
  started: string;
  /** Updated at each phase change. */
  updated: string;
}

/** The record's path for a delta. */
export function recordPath(delta: string): string {
  return `${delta}.vmkit-job`;
}

/**
 * Reads and validates the record of `delta`'s job; undefined when none.
 * Throws CORRUPT for a record that is not one, UNSUPPORTED for another version.
 *
 * @example
 * ```ts
 * const rec = await readJobRecord(ops, 'vm-delta.qcow2');
 * if (rec?.phase === 'pivot') console.log('target took over:', rec.target);
 * ```
 */
export async function readJobRecord(ops: ChainOps, delta: string): Promise<JobRecord | undefined> {
  const path = recordPath(delta);
  const text = await ops.readText(path);
  if (text === undefined) return undefined;
  let r: Partial<JobRecord>;
  try {
    r = JSON.parse(text) as Partial<JobRecord>;
  } catch (e) {
    throw new VmkitError('CORRUPT', `job record is not JSON: ${(e as Error).message}`, { path, cause: e });
  }
  if (r === null || typeof r !== 'object' || r.magic !== JOB_RECORD_MAGIC) {
    throw new VmkitError('CORRUPT', 'not a vmkit job record (bad magic)', { path });
  }
  if (r.version !== JOB_RECORD_VERSION) {
    throw new VmkitError('UNSUPPORTED', `job record version ${String(r.version)}; this build reads ${JOB_RECORD_VERSION}`, { path });
  }
  for (const k of ['delta', 'base', 'target'] as const) {
    if (typeof r[k] !== 'string' || r[k] === '') throw new VmkitError('CORRUPT', `job record field ${k} missing`, { path });
  }
  if (typeof r.cursor !== 'number' || !(r.cursor >= 0) || typeof r.intentGranule !== 'number' || !(r.intentGranule > 0) || typeof r.intent !== 'string') {
    throw new VmkitError('CORRUPT', 'job record has a bad cursor or intent bitmap', { path });
  }
  if (r.kind !== 'consolidate' || (r.mode !== 'base' && r.mode !== 'target') || (r.phase !== 'mirroring' && r.phase !== 'pivot')) {
    throw new VmkitError('CORRUPT', 'job record has a bad kind, mode or phase', { path });
  }
  if (r.keepDelta !== undefined && (r.keepDelta !== true || r.mode !== 'base')) {
    throw new VmkitError('CORRUPT', 'job record has a bad keepDelta (true, into the base only)', { path });
  }
  return r as JobRecord;
}

/**
 * Writes the record atomically, and durably unless `durable` is false (then
 * it survives a killed process but not a power loss).
 */
export async function writeJobRecord(ops: ChainOps, rec: JobRecord, durable = true): Promise<void> {
  rec.updated = new Date().toISOString();
  await ops.writeTextAtomic(recordPath(rec.delta), JSON.stringify(rec, null, 2) + '\n', { durable });
}

/** Removes the record (the job is over). */
export async function removeJobRecord(ops: ChainOps, delta: string): Promise<void> {
  await ops.remove(recordPath(delta));
}

/** A fresh progress object. */
export function newProgress(): JobProgress {
  return {
    state: 'running',
    remaining: 0,
    planned: 0,
    inSync: false,
    done: false,
    copiedBytes: 0,
    zeroedBytes: 0,
    skippedBytes: 0,
    mirroredBytes: 0,
    mirroredWrites: 0,
    recopiedBytes: 0,
    retries: 0,
  };
}
