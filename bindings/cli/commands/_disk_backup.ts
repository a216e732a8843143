/**
 * `vmkit disk snapshot|backup|consolidate`: dispatched here by
 * commands/disk.ts. Each runs the same library jobs a live caller runs
 * (docs/backup.md), on image files.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { emit, formatBytes, parse, parseSize, Progress, type CliIO } from '../_common.js';
import type { FormatDriver } from '../../disk/backup/node.js';
import type { ChainOps } from '../../disk/backup/_types.js';

// The jobs load when one of these subcommands runs: `vmkit disk info` and the rest of commands/disk.ts
// import this module for its usage text, and start-up is mostly module loading (cli/main.ts).
const jobs = async () => {
  const [b, c, j, l, n, s] = await Promise.all([
    import('../../disk/backup/backup.js'),
    import('../../disk/backup/consolidate.js'),
    import('../../disk/backup/job.js'),
    import('../../disk/backup/live.js'),
    import('../../disk/backup/node.js'),
    import('../../disk/backup/snapshot.js'),
  ]);
  return { ...b, ...c, ...j, ...l, ...n, ...s };
};

/** Usage lines of the three subcommands (commands/disk.ts prints them in its help). */
export const backupUsage: string = `  vmkit disk snapshot <disk> [--delta <path>] [--format qcow2|vmdk] [--json]
  vmkit disk backup <disk> <target|-> [--format raw|qcow2] [--scope full|top] [--backing <prev>] [--rate <bytes/s>] [--json]
  vmkit disk consolidate <disk> [--into base|<target>] [--full] [--keep-delta] [--rate <bytes/s>] [--resume|--rollback] [--json]
`;

let driverFactory: (() => Promise<FormatDriver | undefined>) | undefined;

/**
 * Sets how the CLI finds the image formats (commands/disk.ts passes the
 * vmkit/disk format driver). Without one, raw images only.
 *
 * @example
 * ```ts
 * setFormatDriver(async () => qcow2VmdkRawDriver);
 * ```
 */
export function setFormatDriver(factory: () => Promise<FormatDriver | undefined>): void {
  driverFactory = factory;
}

async function chainOps(NodeChainOps: new (d?: FormatDriver) => ChainOps): Promise<ChainOps> {
  const d = driverFactory ? await driverFactory() : undefined;
  return new NodeChainOps(d);
}

function rate(v: string | boolean | string[] | undefined): number | undefined {
  return typeof v === 'string' ? parseSize(v, '--rate') : undefined;
}

function oneOf<T extends string>(v: unknown, name: string, allowed: readonly T[], dflt: T): T {
  if (v === undefined) return dflt;
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) {
    throw new VmkitError('ARG_RANGE', `${name} must be one of ${allowed.join(', ')}, got ${JSON.stringify(v)}`);
  }
  return v as T;
}

/**
 * Runs `vmkit disk <sub> …argv`. Resolves to the exit code.
 *
 * @example
 * ```ts
 * process.exitCode = await runBackup('consolidate', ['vm-delta-1.qcow2', '--into', 'base'], process);
 * ```
 */
export async function runBackup(sub: 'snapshot' | 'backup' | 'consolidate', argv: string[], io: CliIO): Promise<number> {
  const { backup, consolidate, recoverConsolidation, resumeConsolidation, readJobRecord, LiveDisk, NodeChainOps, snapshot } = await jobs();
  if (sub === 'snapshot') {
    const { values, positionals } = parse(argv, { delta: { type: 'string' }, format: { type: 'string' } });
    const [path] = positionals;
    if (path === undefined || positionals.length !== 1) throw new VmkitError('ARG_RANGE', 'usage: vmkit disk snapshot <disk> [--delta <path>]');
    const format = oneOf(values.format, '--format', ['qcow2', 'vmdk'] as const, 'qcow2');
    const ops = await chainOps(NodeChainOps);
    const disk = await LiveDisk.open(path, ops);
    try {
      const snap = await snapshot(disk, { format, ...(typeof values.delta === 'string' ? { delta: values.delta } : {}) });
      await snap.image.close();
      emit(io, values.json, { frozen: snap.frozen, delta: snap.delta, active: snap.delta }, () => `snapshot: ${snap.frozen} frozen; active layer ${snap.delta}`);
    } finally {
      await disk.close();
    }
    return 0;
  }

  if (sub === 'backup') {
    const { values, positionals } = parse(argv, {
      format: { type: 'string' },
      scope: { type: 'string' },
      backing: { type: 'string' },
      rate: { type: 'string' },
    });
    const [path, target] = positionals;
    if (path === undefined || target === undefined || positionals.length !== 2) {
      throw new VmkitError('ARG_RANGE', 'usage: vmkit disk backup <disk> <target|->');
    }
    const format = oneOf(values.format, '--format', ['raw', 'qcow2'] as const, 'raw');
    const scope = oneOf(values.scope, '--scope', ['full', 'top'] as const, 'full');
    const ops = await chainOps(NodeChainOps);
    const image = await ops.open(path, { readOnly: true });
    try {
      const bar = new Progress(io, 'backup', 1, !values.json && target !== '-');
      const r = rate(values.rate);
      const job = backup(image, target === '-' ? (c) => new Promise<void>((res, rej) => io.stdout.write(c, (e) => (e ? rej(e) : res()))) : target, {
        ops,
        format,
        scope,
        ...(typeof values.backing === 'string' ? { backing: values.backing } : {}),
        ...(r !== undefined ? { rateLimit: r } : {}),
        onProgress: (p) => bar.update(p.planned > 0 ? 1 - p.remaining / p.planned : 1),
      });
      const res = await job.done;
      bar.done();
      if (target !== '-') {
        emit(io, values.json, { source: path, target, format, scope, ...res }, () => `backup: ${path} → ${target} (${format}); ${formatBytes(res.copiedBytes)} copied, ${formatBytes(res.zeroedBytes)} zero`);
      } else if (values.json) {
        io.stderr.write(JSON.stringify({ source: path, target: '-', ...res }) + '\n');
      }
    } finally {
      await image.close();
    }
    return 0;
  }

  const { values, positionals } = parse(argv, {
    into: { type: 'string' },
    full: { type: 'boolean' },
    'keep-delta': { type: 'boolean' },
    rate: { type: 'string' },
    resume: { type: 'boolean' },
    rollback: { type: 'boolean' },
  });
  const [path] = positionals;
  if (path === undefined || positionals.length !== 1) throw new VmkitError('ARG_RANGE', 'usage: vmkit disk consolidate <disk> [--into base|<target>]');
  if (values.resume && values.rollback) throw new VmkitError('ARG_RANGE', '--resume and --rollback exclude each other');
  const ops = await chainOps(NodeChainOps);
  const rec = await readJobRecord(ops, path);
  if (values.rollback || rec?.phase === 'pivot') {
    // Before the pivot: roll back; after it: roll forward (the target is the truth).
    const r = await recoverConsolidation(ops, path);
    emit(io, values.json, r, () => `consolidate: ${r.action === 'none' ? 'nothing to recover' : r.action}; active layer ${r.active}`);
    return 0;
  }
  if (rec && !values.resume) {
    throw new VmkitError('INVALID_STATE', `a consolidation of ${path} was interrupted: pass --resume or --rollback`, { path });
  }
  const r = rate(values.rate);
  const disk = await LiveDisk.open(path, ops);
  try {
    const bar = new Progress(io, 'consolidate', 1, !values.json);
    const opts = {
      ...(r !== undefined ? { rateLimit: r } : {}),
      onProgress: (p: { planned: number; remaining: number }) => bar.update(p.planned > 0 ? 1 - p.remaining / p.planned : 1),
    };
    const job = values.resume
      ? await resumeConsolidation(disk, opts)
      : await consolidate(disk, {
          ...opts,
          into: typeof values.into === 'string' ? values.into : 'base',
          full: values.full === true,
          ...(values['keep-delta'] === true ? { keepDelta: true } : {}),
        });
    const res = await job.done;
    bar.done();
    emit(io, values.json, res, () =>
      `consolidate: ${path} → ${res.active} in ${res.elapsedMs} ms; ${formatBytes(res.copiedBytes)} copied, ${formatBytes(res.zeroedBytes)} zero, ${formatBytes(res.skippedBytes)} skipped; active layer ${res.active}`,
    );
  } finally {
    await disk.close();
  }
  return 0;
}
