/**
 * Consolidation ("deleting a snapshot"): collapses the active delta into the
 * layer below it, or onto a new target image, while the guest keeps writing.
 * A mirror driver goes in front of the chain; the delta's allocated clusters
 * are copied to the target in one pass while every guest write is mirrored;
 * when the pass is over the target takes over as the active layer and the
 * delta leaves the chain. A state record next to the delta makes every crash
 * recoverable (docs/backup.md). The job itself, phase by phase, is
 * `_consolidate-job.ts`.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { bitsToBase64, intentGranule } from './_intent.js';
import type { ChainOps } from './_types.js';
import type { FormatName } from '../formats/types.js';
import { readJobRecord, removeJobRecord, writeJobRecord, type JobRecord } from './job.js';
import type { LiveDisk } from './live.js';
import { _ConsolidationJob, _emptyDelta, _oldDelta, type ConsolidateJob, type ConsolidateOptions } from './_consolidate-job.js';

export type { ConsolidateJob, ConsolidateOptions, ConsolidateResult } from './_consolidate-job.js';
export { allocationMap } from './_plan.js';

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
  return new _ConsolidationJob(disk, rec, targetDev, opts, false);
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
    if (rec.full) await disk.ops.create(rec.target, disk.size, rec.format as FormatName);
    else await disk.ops.createOverlay(rec.target, rec.base, rec.format as FormatName);
  }
  const targetDev = await disk.ops.open(rec.target);
  return new _ConsolidationJob(disk, rec, targetDev, opts, true);
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
      await _emptyDelta(ops, rec);
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
