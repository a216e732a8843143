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
import { allocationMap, planExtents, zeroRuns, type PlanOp } from './_plan.js';
import { RangeSet, restrictPlan } from './_ranges.js';
import type { BackupDevice, ChainOps } from './_types.js';
import { newProgress, RateLimiter, withPolicy, type JobOptions, type JobProgress } from './job.js';
import { zeroes } from './mirror.js';
import { alignedBuffer } from '../backends/storage.js';

/** Reads into `dst` (a device without `readInto` reads a fresh buffer, copied over). */
async function readInto(dev: BackupDevice, offset: number, dst: Uint8Array): Promise<void> {
  if (dev.readInto) return dev.readInto(offset, dst);
  dst.set(await dev.read(offset, dst.length));
}

/**
 * A sink for a streamed backup: receives the image's bytes in order. A chunk
 * is the sink's until the promise it returns settles (the job reuses its
 * buffer then): copy it to keep it.
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
    limiter.interrupt();
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
    // Not durable yet: the job flushes the target once, at the end (a target left by a crash
    // before then is not a backup, durable or not).
    await ops.create(target, image.size, fmt, { durable: false });
    // A fresh image without backing reads as zero: zero runs need no write.
    return { dev: await ops.open(target), owned: true, zeroed: true };
  }

  const cancelCheck = (): void => {
    if (cancelled) throw new VmkitError('CANCELLED', 'backup cancelled');
  };

  /**
   * Into a device: `depth` workers take the plan's ops in turn, each reading into its own
   * page-aligned buffer (no zero-filled allocation per op, and reads straight from the page
   * cache: see alignedBuffer) and writing what is not zero. With asynchronous storage the
   * reads and writes of several ops overlap; zero ops and zero runs write nothing into a
   * fresh target (holes in a raw file, as qemu-img convert leaves them).
   */
  async function toDevice(plan: PlanOp[], dev: BackupDevice, zeroed: boolean, depth: number): Promise<void> {
    let next = 0;
    let failure: unknown;
    const worker = async (): Promise<void> => {
      let buf: Uint8Array | undefined;
      while (next < plan.length && failure === undefined) {
        cancelCheck();
        const op = plan[next++]!;
        if (op.zero) {
          if (!zeroed) await policy(`zero at ${op.offset}`, () => zeroes(dev, op.offset, op.length));
          p.zeroedBytes += op.length;
        } else {
          await limiter.take(op.length);
          cancelCheck();
          buf ??= alignedBuffer(chunk);
          const data = buf.subarray(0, op.length);
          await policy(`read at ${op.offset}`, () => readInto(image, op.offset, data));
          for (const run of zeroRuns(data, 4096)) {
            const at = op.offset + run.offset;
            if (run.zero) {
              if (!zeroed) await policy(`zero at ${at}`, () => zeroes(dev, at, run.length));
              p.zeroedBytes += run.length;
            } else {
              await policy(`write at ${at}`, () => dev.write(at, data.subarray(run.offset, run.offset + run.length)));
              p.copiedBytes += run.length;
            }
          }
        }
        p.remaining -= op.length;
        changed();
      }
    };
    // Every worker settles before this returns: none is left reading or writing.
    await Promise.all(Array.from({ length: Math.min(depth, Math.max(1, plan.length)) }, () => worker().catch((e: unknown) => void (failure ??= e))));
    if (failure !== undefined) throw failure;
  }

  /**
   * Into a sink, in order: the reads of up to `depth` data ops run ahead into reused aligned
   * buffers while the sink takes the bytes before them; zero ops stream from one zero buffer.
   */
  async function toSink(plan: PlanOp[], sink: ByteSink, depth: number): Promise<void> {
    const pool: Uint8Array[] = [];
    const reads: { buf: Uint8Array; done: Promise<void> }[] = [];
    let ahead = 0; // next plan index whose read may start
    const startReads = async (from: number): Promise<void> => {
      while (ahead < plan.length && reads.length < depth && ahead <= from + depth) {
        const op = plan[ahead++]!;
        if (op.zero) continue;
        await limiter.take(op.length);
        const buf = (pool.pop() ?? alignedBuffer(chunk)).subarray(0, op.length);
        const done = policy(`read at ${op.offset}`, () => readInto(image, op.offset, buf));
        done.catch(() => {}); // awaited in order below (or settled on failure)
        reads.push({ buf, done });
      }
    };
    const zero = new Uint8Array(Math.min(chunk, 1 << 20));
    let pos = 0; // stream position
    const fill = async (upTo: number): Promise<void> => {
      while (pos < upTo) {
        const n = Math.min(zero.length, upTo - pos);
        await sink(n === zero.length ? zero : zero.subarray(0, n));
        pos += n;
      }
    };
    try {
      for (let i = 0; i < plan.length; i++) {
        cancelCheck();
        const op = plan[i]!;
        if (op.zero) {
          await fill(op.offset + op.length);
          p.zeroedBytes += op.length;
        } else {
          await startReads(i);
          const r = reads.shift()!;
          await r.done;
          await fill(op.offset);
          // The sink has the buffer until its promise settles (ByteSink: copy to keep it).
          await sink(r.buf);
          pos += op.length;
          p.copiedBytes += op.length;
          pool.push(new Uint8Array(r.buf.buffer, r.buf.byteOffset, chunk));
        }
        p.remaining -= op.length;
        changed();
        await startReads(i + 1);
      }
      await fill(image.size);
    } finally {
      // Nothing left reading into a buffer (or from a device the caller may close next).
      await Promise.allSettled(reads.map((r) => r.done));
    }
  }

  async function run(): Promise<JobProgress> {
    const t = await openTarget();
    try {
      // A bulk copy: a qcow2 target's metadata is written back at the final flush (as
      // consolidation does), not after every write.
      if (t.owned) await t.dev?.setCacheMode?.('writeback');
      const map = await allocationMap(image);
      let plan = planExtents(map, opts.scope === 'top' ? 1 : Infinity, chunk);
      if (opts.dirty) {
        const keep = new RangeSet();
        for (const [s, e] of opts.dirty) keep.add(s, e);
        plan = restrictPlan(plan, keep);
      }
      p.planned = plan.reduce((n, o) => n + o.length, 0);
      p.remaining = p.planned;
      const depth = Math.max(1, opts.parallel ?? 4);
      if (t.sink) await toSink(plan, t.sink, depth);
      else await toDevice(plan, t.dev!, t.zeroed, depth);
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
      limiter.interrupt();
      await done.catch(() => {});
    },
    done,
  };
}
