/**
 * The live side of `vmkit disk serve --control <socket>`: the served disk is a
 * LiveDisk, and the control socket runs snapshot, backup and consolidation on
 * it inside the serving process while clients keep writing through NBD
 * (docs/nbd.md, "Live jobs"); `vmkit disk snapshot|backup|consolidate
 * --server <socket>` are the other end.
 * @module
 */
import { VmkitError, isVmkitError } from '../../errors.js';
import type { BlockDevice, BlockExtent } from '../../disk/device.js';
import type { ChainOps } from '../../disk/backup/_types.js';
import { backup } from '../../disk/backup/backup.js';
import { consolidate } from '../../disk/backup/consolidate.js';
import { LiveDisk } from '../../disk/backup/live.js';
import { snapshot, type Snapshot } from '../../disk/backup/snapshot.js';
import type { ControlHandler } from '../../disk/nbd/control.js';
import { activePointerOf } from './_disk_active.js';

/** A LiveDisk as the NBD server sees a block device (TRIM is a hint it ignores: LiveDisk has no discard). */
export function liveBlockDevice(disk: LiveDisk, format: string): BlockDevice {
  return {
    get size() {
      return disk.size;
    },
    get alignment() {
      return disk.alignment;
    },
    readOnly: false,
    format,
    backing: undefined,
    read: (o, l) => disk.read(o, l),
    readInto: async (o, dst) => dst.set(await disk.read(o, dst.length)),
    write: (o, d) => disk.write(o, d),
    writeZeroes: (o, l) => disk.writeZeroes(o, l),
    discard: async () => {},
    flush: () => disk.flush(),
    blockStatus: (o, l) => disk.blockStatus(o, l) as Promise<BlockExtent>,
    close: () => disk.close(),
  };
}

const str = (v: unknown, name: string): string | undefined => {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v.length === 0) throw new VmkitError('ARG_TYPE', `${name} must be a non-empty string`);
  return v;
};
const num = (v: unknown, name: string): number | undefined => {
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw new VmkitError('ARG_RANGE', `${name} must be a positive integer`);
  return v;
};

/**
 * What `serve --control` holds: the live disk, the control socket's handler,
 * and how the process stops its jobs (a release request, a fence, SIGTERM).
 */
export interface LiveServe {
  readonly disk: LiveDisk;
  readonly handler: ControlHandler;
  /**
   * Refuses new jobs from now on and ends the running one: a backup and a
   * consolidation before its pivot are cancelled (the caller gets `code`
   * with `why`), a snapshot and a pivot already under way are waited for.
   */
  stopJobs(why: string, code?: 'CANCELLED' | 'FENCED'): Promise<void>;
  /** Stops the jobs, then flushes and closes the chain. */
  close(): Promise<void>;
  /** Stops the jobs and lets every layer go unflushed (a fenced holder may write nothing). */
  abandon(): Promise<void>;
}

/**
 * Opens the chain whose top is `path` as a LiveDisk with `ops` (under an
 * owner's guard with `vmkit disk serve --as`), and returns it with the
 * control socket's handler. A job that makes another layer active rewrites
 * `disk`'s pointer file (see {@link activePointerOf}) before guest I/O resumes.
 */
export async function openLive(path: string, ops: ChainOps, disk: string = path): Promise<LiveServe> {
  const np = await import('node:path');
  const live = await LiveDisk.open(path, ops);
  const ptr = activePointerOf(disk);
  live.onActiveChange = async (active) => {
    if (np.resolve(active) === np.resolve(disk)) await ops.remove(ptr);
    else await ops.writeTextAtomic(ptr, JSON.stringify({ active: np.relative(np.dirname(np.resolve(disk)), np.resolve(active)) }) + '\n');
  };
  let snap: Snapshot | undefined;
  let busy: string | undefined;
  /** The running job: its end, and how to cancel it (a consolidation's cancel waits out a pivot under way). */
  let running: { done: Promise<unknown>; cancel?: () => Promise<void> } | undefined;
  let stopping: { why: string; code: 'CANCELLED' | 'FENCED' } | undefined;
  // Read through a call: it changes across the awaits of a job (TypeScript would keep it narrowed).
  const stopped = (): typeof stopping => stopping;
  const handler: ControlHandler = async (req, progress) => {
    const a = req.args ?? {};
    if (req.op === 'info') return { active: live.path, size: live.size, snapshot: snap ? { frozen: snap.frozen, delta: snap.delta } : null, job: busy ?? null };
    if (req.op !== 'snapshot' && req.op !== 'backup' && req.op !== 'consolidate') throw new VmkitError('ARG_RANGE', `unknown control op ${JSON.stringify(req.op)}: info, snapshot, backup, consolidate`);
    if (stopping) throw new VmkitError(stopping.code === 'FENCED' ? 'FENCED' : 'INVALID_STATE', `no new job on ${live.path}: ${stopping.why}`, { path: live.path });
    if (busy) throw new VmkitError('CONFLICT', `a ${busy} job is running on ${live.path}`);
    busy = req.op;
    const job: { done: Promise<unknown>; cancel?: () => Promise<void> } = { done: Promise.resolve() };
    running = job;
    const run = (async (): Promise<unknown> => {
      if (req.op === 'snapshot') {
        const format = str(a.format, 'format') ?? 'qcow2';
        if (format !== 'qcow2' && format !== 'vmdk') throw new VmkitError('ARG_RANGE', `format must be qcow2 or vmdk, got ${format}`);
        const delta = str(a.delta, 'delta');
        const next = await snapshot(live, { format, ...(delta ? { delta } : {}) });
        await snap?.image.close();
        snap = next;
        return { frozen: snap.frozen, delta: snap.delta, active: live.path };
      }
      if (req.op === 'backup') {
        // From the last snapshot: a point in time, while the guest writes to the delta above it.
        if (!snap) throw new VmkitError('INVALID_STATE', `no snapshot of ${live.path} to back up from: take one first (vmkit disk snapshot --server …)`);
        const target = str(a.target, 'target');
        if (!target) throw new VmkitError('ARG_RANGE', 'backup needs a target path');
        const format = str(a.format, 'format') ?? 'raw';
        if (format !== 'raw' && format !== 'qcow2') throw new VmkitError('ARG_RANGE', `format must be raw or qcow2, got ${format}`);
        const scope = str(a.scope, 'scope') ?? 'full';
        if (scope !== 'full' && scope !== 'top') throw new VmkitError('ARG_RANGE', `scope must be full or top, got ${scope}`);
        const rate = num(a.rate, 'rate');
        const b = backup(snap.image, target, {
          ops,
          format,
          scope,
          ...(rate ? { rateLimit: rate } : {}),
          onProgress: (p) => progress(p.planned > 0 ? 1 - p.remaining / p.planned : 1, { planned: p.planned, remaining: p.remaining, state: p.state }),
        });
        job.cancel = () => b.cancel();
        return { source: snap.frozen, target, format, scope, ...(await b.done) };
      }
      // consolidate: the frozen chain a backup read from is merged now; let it go first.
      await snap?.image.close();
      snap = undefined;
      const into = str(a.into, 'into') ?? 'base';
      const rate = num(a.rate, 'rate');
      const c = await consolidate(live, {
        into,
        full: a.full === true,
        ...(a.keepDelta === true ? { keepDelta: true } : {}),
        ...(rate ? { rateLimit: rate } : {}),
        onProgress: (p) => progress(p.planned > 0 ? 1 - p.remaining / p.planned : 1, { planned: p.planned, remaining: p.remaining, state: p.state }),
      });
      job.cancel = () => c.cancel();
      // Stopped while the job was being set up: cancel it before it copies anything.
      if (stopped()) void c.cancel();
      return await c.done;
    })();
    job.done = run;
    try {
      return await run;
    } catch (e) {
      // Cancelled by a handoff or a fence: the caller learns why, not just that it was cancelled.
      const st = stopped();
      if (st && isVmkitError(e, 'CANCELLED')) throw new VmkitError(st.code, `${req.op} on ${live.path} cancelled: ${st.why}`, { cause: e, path: live.path });
      throw e;
    } finally {
      busy = undefined;
      running = undefined;
    }
  };
  const stopJobs = async (why: string, code: 'CANCELLED' | 'FENCED' = 'CANCELLED'): Promise<void> => {
    stopping ??= { why, code };
    const r = running;
    if (!r) return;
    await r.cancel?.().catch(() => {});
    await r.done.catch(() => {});
  };
  return {
    disk: live,
    handler,
    stopJobs,
    close: async () => {
      await stopJobs('the server is stopping');
      await snap?.image.close();
      snap = undefined;
      await live.close();
    },
    abandon: async () => {
      await stopJobs('this server was fenced: another holds the disk now', 'FENCED');
      await snap?.image.close().catch(() => {});
      snap = undefined;
      // Each layer's file is closed as it is (a close that flushes would write, and be refused).
      let d: unknown = live.device;
      while (d && typeof d === 'object') {
        const st = (d as { storage?: { close(): Promise<void> } }).storage;
        await st?.close().catch(() => {});
        d = (d as { backing?: unknown }).backing;
      }
    },
  };
}
