/**
 * The live side of `vmkit disk serve --control <socket>`: the served disk is a
 * LiveDisk, and the control socket runs snapshot, backup and consolidation on
 * it inside the serving process while clients keep writing through NBD
 * (docs/nbd.md, "Live jobs"); `vmkit disk snapshot|backup|consolidate
 * --server <socket>` are the other end.
 * @module
 */
import { VmkitError } from '../../errors.js';
import type { BlockDevice, BlockExtent } from '../../disk/device.js';
import { backup } from '../../disk/backup/backup.js';
import { consolidate } from '../../disk/backup/consolidate.js';
import { LiveDisk } from '../../disk/backup/live.js';
import { NodeChainOps, type FormatDriver } from '../../disk/backup/node.js';
import { snapshot, type Snapshot } from '../../disk/backup/snapshot.js';
import type { ControlHandler } from '../../disk/nbd/control.js';

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

/** Opens `path` as a LiveDisk and returns it with the control socket's handler. */
export async function openLive(path: string, driver: FormatDriver): Promise<{ disk: LiveDisk; handler: ControlHandler; close(): Promise<void> }> {
  const ops = new NodeChainOps(driver);
  const disk = await LiveDisk.open(path, ops);
  let snap: Snapshot | undefined;
  let busy: string | undefined;
  const handler: ControlHandler = async (req, progress) => {
    const a = req.args ?? {};
    if (req.op === 'info') return { active: disk.path, size: disk.size, snapshot: snap ? { frozen: snap.frozen, delta: snap.delta } : null, job: busy ?? null };
    if (req.op !== 'snapshot' && req.op !== 'backup' && req.op !== 'consolidate') throw new VmkitError('ARG_RANGE', `unknown control op ${JSON.stringify(req.op)}: info, snapshot, backup, consolidate`);
    if (busy) throw new VmkitError('CONFLICT', `a ${busy} job is running on ${disk.path}`);
    busy = req.op;
    try {
      if (req.op === 'snapshot') {
        const format = str(a.format, 'format') ?? 'qcow2';
        if (format !== 'qcow2' && format !== 'vmdk') throw new VmkitError('ARG_RANGE', `format must be qcow2 or vmdk, got ${format}`);
        const delta = str(a.delta, 'delta');
        const next = await snapshot(disk, { format, ...(delta ? { delta } : {}) });
        await snap?.image.close();
        snap = next;
        return { frozen: snap.frozen, delta: snap.delta, active: disk.path };
      }
      if (req.op === 'backup') {
        // From the last snapshot: a point in time, while the guest writes to the delta above it.
        if (!snap) throw new VmkitError('INVALID_STATE', `no snapshot of ${disk.path} to back up from: take one first (vmkit disk snapshot --server …)`);
        const target = str(a.target, 'target');
        if (!target) throw new VmkitError('ARG_RANGE', 'backup needs a target path');
        const format = str(a.format, 'format') ?? 'raw';
        if (format !== 'raw' && format !== 'qcow2') throw new VmkitError('ARG_RANGE', `format must be raw or qcow2, got ${format}`);
        const scope = str(a.scope, 'scope') ?? 'full';
        if (scope !== 'full' && scope !== 'top') throw new VmkitError('ARG_RANGE', `scope must be full or top, got ${scope}`);
        const rate = num(a.rate, 'rate');
        const job = backup(snap.image, target, {
          ops,
          format,
          scope,
          ...(rate ? { rateLimit: rate } : {}),
          onProgress: (p) => progress(p.planned > 0 ? 1 - p.remaining / p.planned : 1, { planned: p.planned, remaining: p.remaining, state: p.state }),
        });
        return { source: snap.frozen, target, format, scope, ...(await job.done) };
      }
      // consolidate: the frozen chain a backup read from is merged now; let it go first.
      await snap?.image.close();
      snap = undefined;
      const into = str(a.into, 'into') ?? 'base';
      const rate = num(a.rate, 'rate');
      const job = await consolidate(disk, {
        into,
        full: a.full === true,
        ...(a.keepDelta === true ? { keepDelta: true } : {}),
        ...(rate ? { rateLimit: rate } : {}),
        onProgress: (p) => progress(p.planned > 0 ? 1 - p.remaining / p.planned : 1, { planned: p.planned, remaining: p.remaining, state: p.state }),
      });
      return await job.done;
    } finally {
      busy = undefined;
    }
  };
  return {
    disk,
    handler,
    close: async () => {
      await snap?.image.close();
      await disk.close();
    },
  };
}
