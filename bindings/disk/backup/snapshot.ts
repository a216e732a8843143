/**
 * Snapshot: a new delta overlay becomes the active layer of a live disk and
 * the layer below freezes, readable as a point-in-time image while the guest
 * keeps writing to the delta.
 * @module
 */
import { VmkitError } from '../../errors.js';
import type { FormatName } from '../formats/types.js';
import type { BackupDevice, ChainOps } from './_types.js';
import type { LiveDisk } from './live.js';

/**
 * Options of {@link snapshot}.
 *
 * @example
 * ```ts
 * const snap = await snapshot(disk, { delta: 'vm-2026-12-04.vmdk', format: 'vmdk' });
 * ```
 */
export interface SnapshotOptions {
  /** Path of the new delta (default: `<name>-delta-<n>.<ext>` beside the active layer, first free n). */
  delta?: string;
  /** Format of the delta (default qcow2; 'vmdk' for a VMware-style delta). */
  format?: Extract<FormatName, 'qcow2' | 'vmdk'>;
}

/**
 * A taken snapshot.
 *
 * @example
 * ```ts
 * const { frozen, delta, image }: Snapshot = await snapshot(disk);
 * await backup(image, 'vm-backup.raw', { ops }).done;
 * await image.close();
 * ```
 */
export interface Snapshot {
  /** The frozen layer (the former active layer). */
  frozen: string;
  /** The new active delta. */
  delta: string;
  /** The frozen chain opened read-only: the point-in-time image. Close it when done. */
  image: BackupDevice;
}

/** The default delta name beside `active`: `<stem>-delta-<n>.<ext>`. */
export async function defaultDeltaPath(ops: ChainOps, active: string, format: string): Promise<string> {
  const m = /^(.*?)(?:-delta-\d+)?(\.[^./\\]*)?$/.exec(active);
  const stem = m?.[1] ?? active;
  const ext = format === 'vmdk' ? '.vmdk' : '.qcow2';
  for (let n = 1; n < 10_000; n++) {
    const p = `${stem}-delta-${n}${ext}`;
    if (!(await ops.exists(p))) return p;
  }
  throw new VmkitError('LIMIT', `no free delta name beside ${active}`, { path: active });
}

/**
 * Freezes the active layer of `disk` and stacks a new delta on it. Guest I/O
 * pauses only while the delta is created and swapped in; requests in flight
 * finish first, so the frozen image holds every write acknowledged before.
 *
 * The delta is created under a temporary name and renamed into place, so
 * after a crash it either does not exist (the old layer is still active) or
 * is a complete overlay (it is the active layer).
 *
 * @example
 * ```ts
 * const disk = await LiveDisk.open('vm.qcow2', ops);
 * const snap = await snapshot(disk);          // disk now writes to vm-delta-1.qcow2
 * const job = backup(snap.image, 'backup.raw', { ops });
 * await job.done;
 * await snap.image.close();
 * ```
 */
export async function snapshot(disk: LiveDisk, opts: SnapshotOptions = {}): Promise<Snapshot> {
  const ops = disk.ops;
  const format = opts.format ?? 'qcow2';
  return disk.exclusive(async () => {
    const frozen = disk.path;
    const delta = opts.delta ?? (await defaultDeltaPath(ops, frozen, format));
    if (await ops.exists(delta)) throw new VmkitError('CONFLICT', `delta ${delta} exists`, { path: delta });
    await disk.device.flush();
    const tmp = `${delta}.tmp-${Date.now().toString(36)}`;
    try {
      await ops.createOverlay(tmp, frozen, format);
      await ops.rename(tmp, delta);
    } catch (e) {
      await ops.remove(tmp).catch(() => {});
      throw e;
    }
    const chain = await ops.open(delta);
    const old = disk.device;
    disk.swapChain(delta, chain);
    await old.close();
    const image = await ops.open(frozen, { readOnly: true });
    return { frozen, delta, image };
  });
}
