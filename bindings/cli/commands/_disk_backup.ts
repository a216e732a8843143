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
import { openImage } from '../../disk/image.js';
import { syncFileProvider } from '../../disk/backends/file.js';
import { formatOpt, INPUT_FORMAT_OPTIONS } from './_disk_args.js';

/** `--server <socket>`: commands/disk.ts sends such runs to _disk_remote.ts before they get here. */
const REMOTE = { server: { type: 'string' } } as const;

// The jobs load when one of these subcommands runs: the rest of commands/disk.ts imports this
// module, and start-up is mostly module loading (cli/main.ts).
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

let driverFactory: ((toStream: boolean) => Promise<FormatDriver | undefined>) | undefined;

/**
 * Sets how the CLI finds the image formats (commands/disk.ts passes the
 * vmkit/disk format driver). Without one, raw images only. `toStream` is
 * true for a backup to stdout (`-`): one ordered stream, nothing to overlap.
 *
 * @example
 * ```ts
 * setFormatDriver(async () => qcow2VmdkRawDriver);
 * ```
 */
export function setFormatDriver(factory: (toStream: boolean) => Promise<FormatDriver | undefined>): void {
  driverFactory = factory;
}

/**
 * The chain operations, with the formats the user pinned for `path`
 * (`-f`: its own, `-F`: its backing file's when its header records none).
 */
async function chainOps(NodeChainOps: new (d?: FormatDriver) => ChainOps, path: string, values: Record<string, unknown>, toStream = false): Promise<ChainOps> {
  const d = driverFactory ? await driverFactory(toStream) : undefined;
  const format = formatOpt(values.format, '--format');
  const backingFormat = formatOpt(values['backing-format'], '--backing-format');
  if (!d || (!format && !backingFormat)) return new NodeChainOps(d);
  // Through getBuiltinModule, not the ES loader (start-up: main.ts).
  const { resolve } = process.getBuiltinModule('node:path');
  const target = resolve(path);
  const pinned: FormatDriver = {
    ...d,
    open: (p, o) =>
      resolve(p) === target
        ? openImage(p, { readOnly: o.readOnly, provider: syncFileProvider, ...(format ? { format } : {}), ...(backingFormat ? { backingFormat } : {}) })
        : d.open(p, o),
    formatOf: (p) => (format && resolve(p) === target ? Promise.resolve(format) : d.formatOf(p)),
  };
  return new NodeChainOps(pinned);
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
    // No -F here: after the snapshot the disk's backing file is two layers down, where only a recorded format counts.
    const { values, positionals } = parse(argv, { delta: { type: 'string' }, format: INPUT_FORMAT_OPTIONS.format, 'delta-format': { type: 'string' }, ...REMOTE });
    const [path] = positionals;
    if (path === undefined || positionals.length !== 1) throw new VmkitError('ARG_RANGE', 'usage: vmkit disk snapshot <disk> [--delta <path>]; see vmkit disk snapshot --help');
    const format = oneOf(values['delta-format'], '--delta-format', ['qcow2', 'vmdk'] as const, 'qcow2');
    const ops = await chainOps(NodeChainOps, path, values);
    const disk = await LiveDisk.open(path, ops);
    try {
      const snap = await snapshot(disk, { format, ...(typeof values.delta === 'string' ? { delta: values.delta } : {}) });
      await snap.image.close();
      // stdout is the new active layer's name alone, so a script can take it: active=$(vmkit disk snapshot vm.qcow2)
      if (values.json) emit(io, true, { frozen: snap.frozen, delta: snap.delta, active: snap.delta }, () => '');
      else {
        io.stdout.write(`${snap.delta}\n`);
        io.stderr.write(`vmkit: ${snap.frozen} frozen; the active layer is now ${snap.delta} (back up ${snap.frozen}; consolidate ${snap.delta})\n`);
      }
    } finally {
      await disk.close();
    }
    return 0;
  }

  if (sub === 'backup') {
    const { values, positionals } = parse(argv, {
      ...INPUT_FORMAT_OPTIONS,
      'output-format': { type: 'string', short: 'O' },
      ...REMOTE,
      scope: { type: 'string' },
      backing: { type: 'string' },
      rate: { type: 'string' },
    });
    const [path, target] = positionals;
    if (path === undefined || target === undefined || positionals.length !== 2) {
      throw new VmkitError('ARG_RANGE', 'usage: vmkit disk backup <disk> <target|->');
    }
    const format = oneOf(values['output-format'], '--output-format', ['raw', 'qcow2'] as const, 'raw');
    const scope = oneOf(values.scope, '--scope', ['full', 'top'] as const, 'full');
    const ops = await chainOps(NodeChainOps, path, values, target === '-');
    const image = await ops.open(path, { readOnly: true });
    try {
      const bar = new Progress(io, 'backup', 0, !values.json && target !== '-');
      const r = rate(values.rate);
      const job = backup(image, target === '-' ? (c) => new Promise<void>((res, rej) => io.stdout.write(c, (e) => (e ? rej(e) : res()))) : target, {
        ops,
        format,
        scope,
        ...(typeof values.backing === 'string' ? { backing: values.backing } : {}),
        ...(r !== undefined ? { rateLimit: r } : {}),
        onProgress: (p) => bar.update(p.planned - p.remaining, p.planned),
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
    ...INPUT_FORMAT_OPTIONS,
    ...REMOTE,
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
  const ops = await chainOps(NodeChainOps, path, values);
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
    const bar = new Progress(io, 'consolidate', 0, !values.json);
    const opts = {
      ...(r !== undefined ? { rateLimit: r } : {}),
      onProgress: (p: { planned: number; remaining: number }) => bar.update(p.planned - p.remaining, p.planned),
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
