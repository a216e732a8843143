/**
 * Backup from a frozen (point-in-time) image while the guest writes to the
 * delta above it: to a raw or qcow2 file, or a stream of raw bytes. Only
 * allocated extents are read; zero runs become holes or zero clusters. An
 * incremental backup copies only the frozen layer's own clusters (what
 * changed since the layer below was frozen) or a dirty-range list.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { aint } from '../../_utils.js';
import { planExtents, zeroRuns } from './_plan.js';
import { RangeSet, restrictPlan } from './_ranges.js';
import type { BackupDevice, ChainOps } from './_types.js';
import { allocationMap } from './consolidate.js';
import { newProgress, RateLimiter, withPolicy, type JobOptions, type JobProgress } from './job.js';
import { zeroes } from './mirror.js';

/**
 * A sink for a streamed backup: receives the image's bytes in order.
 *
 * @example
 * ```ts
 * const chunks: Uint8Array[] = [];
 * const sink: ByteSink = (chunk) => void chunks.push(chunk.slice());
 * await backup(snap.image, sink).done; // the raw image, in order
 * ```
 */
export type ByteSink = (chunk: Uint8Array) => void | Promise<void>;

/**
 * Options of {@link backup}.
 *
 * @example
 * ```ts
 * await backup(snap.image, 'incr.qcow2', { ops, format: 'qcow2', scope: 'top', backing: 'full.qcow2' }).done;
 * ```
 */
export interface BackupOptions extends JobOptions {
  /** Image operations (needed when the target is a path). */
  ops?: ChainOps;
  /** Format of a target file (default raw). */
  format?: 'raw' | 'qcow2';
  /**
   * 'full' (default): everything the image holds. 'top': only the clusters
   * allocated in the image's top layer — an incremental backup over the
   * layer below; with a qcow2 target, `backing` names the previous backup.
   */
  scope?: 'full' | 'top';
  /** For scope 'top' into qcow2: the previous backup, made the target's backing file. */
  backing?: string;
  /** Copy only these [start, end) byte ranges (a dirty bitmap turned into ranges). */
  dirty?: ReadonlyArray<readonly [number, number]>;
}

/**
 * A running backup.
 *
 * @example
 * ```ts
 * const job: BackupJob = backup(snap.image, 'vm-backup.raw', { ops });
 * setTimeout(() => void job.cancel(), 60_000); // done then rejects CANCELLED
 * const final = await job.done;
 * ```
 */
export interface BackupJob {
  progress(): JobProgress;
  cancel(): Promise<void>;
  /** Resolves with the final progress; rejects CANCELLED or with the I/O error. */
  readonly done: Promise<JobProgress>;
}

/**
 * Backs up `image` (a frozen chain, e.g. {@link Snapshot.image}) to a file
 * path, an open device, or a byte sink.
 *
 * @example
 * ```ts
 * const snap = await snapshot(disk);
 * const job = backup(snap.image, 'vm-backup.qcow2', { ops, format: 'qcow2' });
 * const res = await job.done;
 * console.log(res.copiedBytes, 'bytes copied');
 * ```
 */
export function backup(image: BackupDevice, target: string | BackupDevice | ByteSink, opts: BackupOptions = {}): BackupJob {
  const p = newProgress();
  const chunk = opts.chunk ?? 1 << 20;
  aint(chunk, 'chunk', 65536);
  if (chunk % 65536 !== 0) throw new VmkitError('ARG_RANGE', `chunk must be a multiple of 65536, got ${chunk}`);
  const limiter = new RateLimiter(opts.rateLimit ?? Infinity);
  const policy = <T>(what: string, fn: () => Promise<T>): Promise<T> => withPolicy(opts, () => p.retries++, what, fn);
  let cancelled = false;
  const onAbort = (): void => {
    cancelled = true;
  };
  opts.signal?.addEventListener('abort', onAbort);
  const changed = (): void => opts.onProgress?.({ ...p });

  async function openTarget(): Promise<{ dev?: BackupDevice; sink?: ByteSink; owned: boolean; zeroed: boolean }> {
    if (typeof target === 'function') return { sink: target, owned: false, zeroed: false };
    if (typeof target !== 'string') return { dev: target, owned: false, zeroed: false };
    const ops = opts.ops;
    if (!ops) throw new VmkitError('ARG_TYPE', 'opts.ops is required when the backup target is a path');
    if (await ops.exists(target)) throw new VmkitError('CONFLICT', `backup target ${target} exists`, { path: target });
    const fmt = opts.format ?? 'raw';
    if (opts.backing !== undefined) {
      if (fmt !== 'qcow2') throw new VmkitError('ARG_RANGE', 'a backing file needs a qcow2 target');
      await ops.createOverlay(target, opts.backing, 'qcow2');
      return { dev: await ops.open(target), owned: true, zeroed: false };
    }
    await ops.create(target, image.size, fmt);
    // A fresh image without backing reads as zero: zero runs need no write.
    return { dev: await ops.open(target), owned: true, zeroed: true };
  }

  async function run(): Promise<JobProgress> {
    const t = await openTarget();
    try {
      const map = await allocationMap(image);
      let plan = planExtents(map, opts.scope === 'top' ? 1 : Infinity, chunk);
      if (opts.dirty) {
        const keep = new RangeSet();
        for (const [s, e] of opts.dirty) keep.add(s, e);
        plan = restrictPlan(plan, keep);
      }
      p.planned = plan.reduce((n, o) => n + o.length, 0);
      p.remaining = p.planned;
      let pos = 0; // stream position
      const fill = async (upTo: number): Promise<void> => {
        const z = new Uint8Array(Math.min(1 << 20, Math.max(0, upTo - pos)));
        while (pos < upTo) {
          const n = Math.min(z.length, upTo - pos);
          await t.sink!(n === z.length ? z : z.subarray(0, n));
          pos += n;
        }
      };
      for (const op of plan) {
        if (cancelled) throw new VmkitError('CANCELLED', 'backup cancelled');
        await limiter.take(op.length);
        if (t.sink) {
          await fill(op.offset);
          const buf = op.zero ? new Uint8Array(op.length) : await policy(`read at ${op.offset}`, () => image.read(op.offset, op.length));
          await t.sink(buf);
          pos += op.length;
          if (op.zero) p.zeroedBytes += op.length;
          else p.copiedBytes += op.length;
        } else if (op.zero) {
          if (!t.zeroed) await policy(`zero at ${op.offset}`, () => zeroes(t.dev!, op.offset, op.length));
          p.zeroedBytes += op.length;
        } else {
          const buf = await policy(`read at ${op.offset}`, () => image.read(op.offset, op.length));
          for (const run of zeroRuns(buf, 4096)) {
            const at = op.offset + run.offset;
            if (run.zero) {
              if (!t.zeroed) await policy(`zero at ${at}`, () => zeroes(t.dev!, at, run.length));
              p.zeroedBytes += run.length;
            } else {
              await policy(`write at ${at}`, () => t.dev!.write(at, buf.subarray(run.offset, run.offset + run.length)));
              p.copiedBytes += run.length;
            }
          }
        }
        p.remaining -= op.length;
        changed();
      }
      if (t.sink) await fill(image.size);
      if (t.dev) await t.dev.flush();
      p.inSync = true;
      p.done = true;
      p.state = 'done';
      changed();
      return { ...p };
    } catch (e) {
      p.done = true;
      p.state = cancelled ? 'cancelled' : 'failed';
      changed();
      if (t.owned && typeof target === 'string') {
        await t.dev?.close().catch(() => {});
        t.dev = undefined;
        await opts.ops!.remove(target);
      }
      throw e;
    } finally {
      if (t.owned) await t.dev?.close();
      opts.signal?.removeEventListener('abort', onAbort);
    }
  }

  const done = run();
  done.catch(() => {});
  return {
    progress: () => ({ ...p }),
    async cancel() {
      cancelled = true;
      await done.catch(() => {});
    },
    done,
  };
}
