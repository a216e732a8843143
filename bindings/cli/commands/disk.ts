/**
 * `vmkit disk`: create, inspect, map and check virtual disk images (qcow2,
 * VMDK, raw) and their backing chains; also dispatches the backup
 * (`snapshot|backup|consolidate`) and ownership (`owner|open|release`)
 * subcommands to their modules.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { emit, formatBytes, parse, parseSize, type CliIO, type Command } from '../_common.js';
import { mapExtents, toQemuMap, type BlockExtent } from '../../disk/device.js';
import { syncFileProvider as provider } from '../../disk/backends/file.js';
import { chainOf, checkImage, createImage, fileFormatDriver, openImage, syncFileFormatDriver } from '../../disk/image.js';
import type { FormatName, ImageInfo } from '../../disk/formats/types.js';
import { backupUsage, runBackup, setFormatDriver } from './_disk_backup.js';

const FORMATS = ['qcow2', 'vmdk', 'raw'] as const;

const usage = `Usage:
  vmkit disk create <file> --size <bytes> [--format qcow2|vmdk|raw] [--backing <file>] [--backing-format <fmt>] [--cluster-size <bytes>] [--extended-l2]
  vmkit disk info <file> [--json]       format, virtual size, backing chain, allocated bytes
  vmkit disk map <file> [--json]        extents (data/zero/depth), as qemu-img map --output=json
  vmkit disk check <file> [--repair-leaks] [--json]   metadata check, as qemu-img check
__BACKUP__  vmkit disk serve <file> [--listen unix:<path>|<host>:<port>] [-x <export>] [--read-only]
                                        serve over NBD, as qemu-nbd (see vmkit disk serve --help)
  vmkit disk owner|open|release …   disk ownership (see vmkit disk owner --help)

Sizes take K/M/G/T suffixes. --backing is relative to the new image, as qemu-img create -b.
Exit codes: 0 ok, 1 failure (check: corruptions found), 2 usage error.`;

function formatOpt(v: unknown, name: string): FormatName | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !(FORMATS as readonly string[]).includes(v)) {
    throw new VmkitError('ARG_RANGE', `${name} must be one of ${FORMATS.join(', ')}, got ${JSON.stringify(v)}`);
  }
  return v as FormatName;
}

function onePath(positionals: string[], sub: string): string {
  const [path] = positionals;
  if (path === undefined || positionals.length !== 1) throw new VmkitError('ARG_RANGE', `usage: vmkit disk ${sub} <file>`);
  return path;
}

/** The `disk` command group. */
export const command: Command = {
  summary: 'virtual disks: create, info, map, check; snapshot, backup, consolidate; ownership',
  usage: usage.replace('__BACKUP__', backupUsage),
  async run(argv: string[], io: CliIO): Promise<number> {
    const [sub, ...rest] = argv;
    if ((sub === 'snapshot' || sub === 'backup' || sub === 'consolidate') && rest.some((a) => a === '--server' || a.startsWith('--server='))) {
      return (await import('./_disk_remote.js')).runRemote(sub, rest, io);
    }
    if (sub === 'snapshot' || sub === 'backup' || sub === 'consolidate') {
      // Offline jobs: synchronous I/O costs far less CPU than the thread pool (bench/RESULTS.md, backup);
      // a backup's reads and writes overlap on the thread pool instead (bench/RESULTS.md, disk).
      setFormatDriver(async () => (sub === 'backup' ? fileFormatDriver : syncFileFormatDriver));
      return runBackup(sub, rest, io);
    }
    if (sub === 'owner' || sub === 'open' || sub === 'release') {
      let m: { runOwner(sub: string, argv: string[], io: CliIO): Promise<number> };
      try {
        m = (await import('./_disk_owner.js')) as typeof m;
      } catch (e) {
        throw new VmkitError('UNSUPPORTED', `vmkit disk ${sub}: disk ownership is not in this build (commands/_disk_owner.js did not load: ${(e as Error)?.message ?? e})`, { cause: e });
      }
      return m.runOwner(sub, rest, io);
    }
    if (sub === 'serve') return (await import('./_disk_serve.js')).runServe(rest, io);
    if (sub === 'create') return create(rest, io);
    if (sub === 'info') return info(rest, io);
    if (sub === 'map') return map(rest, io);
    if (sub === 'check') return check(rest, io);
    if (sub === '--help' || sub === '-h' || sub === 'help') {
      io.stdout.write(command.usage + '\n');
      return 0;
    }
    throw new VmkitError('ARG_RANGE', `unknown disk subcommand ${JSON.stringify(sub)}; see vmkit disk --help`);
  },
};

async function create(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, {
    size: { type: 'string' },
    format: { type: 'string' },
    backing: { type: 'string' },
    'backing-format': { type: 'string' },
    'cluster-size': { type: 'string' },
    'extended-l2': { type: 'boolean' },
  });
  const path = onePath(positionals, 'create');
  const format = formatOpt(values.format, '--format') ?? 'qcow2';
  const backing = typeof values.backing === 'string' ? values.backing : undefined;
  const size = typeof values.size === 'string' ? parseSize(values.size, '--size') : undefined;
  if (size === undefined && backing === undefined) throw new VmkitError('ARG_RANGE', '--size is required (or --backing to take its size)');
  const backingFormat = formatOpt(values['backing-format'], '--backing-format');
  const clusterSize = typeof values['cluster-size'] === 'string' ? parseSize(values['cluster-size'], '--cluster-size') : undefined;
  await createImage(path, {
    provider,
    format,
    ...(size !== undefined ? { size } : {}),
    ...(backing !== undefined ? { backing } : {}),
    ...(backingFormat ? { backingFormat } : {}),
    ...(clusterSize ? { clusterSize } : {}),
    ...(values['extended-l2'] ? { extendedL2: true } : {}),
  });
  const dev = await openImage(path, { provider, readOnly: true, noBacking: true });
  const i = await dev.info();
  await dev.close();
  emit(io, values.json, { file: path, ...i }, () => `created ${path}: ${format}, ${formatBytes(i.virtualSize)} (${i.virtualSize} bytes)${backing ? `, backing ${backing}` : ''}`);
  return 0;
}

async function info(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, {});
  const path = onePath(positionals, 'info');
  const dev = await openImage(path, { provider, readOnly: true });
  try {
    const chain: (ImageInfo & { file: string })[] = [];
    for (const l of chainOf(dev)) chain.push({ file: l.storage.name, ...(await l.info()) });
    const top = chain[0]!;
    emit(io, values.json, { ...top, chain }, () =>
      chain
        .map((c, d) =>
          [
            `${d === 0 ? 'image' : `backing ${d}`}: ${c.file}`,
            `  format: ${c.format}`,
            `  virtual size: ${formatBytes(c.virtualSize)} (${c.virtualSize} bytes)`,
            `  file size: ${formatBytes(c.fileSize)}`,
            `  allocated: ${formatBytes(c.allocatedBytes)}`,
            ...(c.clusterSize ? [`  cluster size: ${c.clusterSize}`] : []),
            ...(c.backingFile !== undefined ? [`  backing file: ${c.backingFile}${c.backingFormat ? ` (${c.backingFormat})` : ''}`] : []),
            ...Object.entries(c.specific ?? {}).map(([k, v]) => `  ${k}: ${v}`),
          ].join('\n'),
        )
        .join('\n'),
    );
  } finally {
    await dev.close();
  }
  return 0;
}

async function map(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, {});
  const path = onePath(positionals, 'map');
  const dev = await openImage(path, { provider, readOnly: true });
  let ext: BlockExtent[];
  try {
    ext = await mapExtents(dev);
  } finally {
    await dev.close();
  }
  const q = toQemuMap(ext);
  emit(io, values.json, q, () =>
    ['Offset          Length          Depth  Kind         Mapped to', ...ext.map((e) =>
      `0x${e.offset.toString(16).padEnd(14)} 0x${e.length.toString(16).padEnd(14)} ${String(e.depth).padEnd(6)} ${(e.kind + (e.compressed ? ',comp' : '')).padEnd(12)} ${e.hostOffset !== undefined ? '0x' + e.hostOffset.toString(16) : ''}`,
    )].join('\n'),
  );
  return 0;
}

async function check(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, { 'repair-leaks': { type: 'boolean' } });
  const path = onePath(positionals, 'check');
  const r = await checkImage(path, { provider, ...(values['repair-leaks'] ? { repairLeaks: true } : {}) });
  emit(io, values.json, r, () => {
    const lines = r.messages.map((m) => `${m.severity === 'leak' ? 'Leaked' : 'ERROR'}: ${m.message}`);
    if (r.corruptions === 0 && r.leaks === 0 && r.checkErrors === 0) lines.push('No errors were found on the image.');
    else {
      if (r.corruptions) lines.push(`${r.corruptions} errors were found on the image.`);
      if (r.leaks) lines.push(`${r.leaks} leaked clusters were found on the image (wasted space, no harm to data).`);
    }
    if (r.leaksFixed) lines.push(`${r.leaksFixed} leaked clusters were repaired.`);
    if (r.allocatedClusters !== undefined && r.totalClusters) {
      lines.push(`${r.allocatedClusters}/${r.totalClusters} = ${((100 * r.allocatedClusters) / r.totalClusters).toFixed(2)}% allocated, ${r.compressedClusters ?? 0} compressed clusters`);
    }
    if (r.imageEndOffset !== undefined) lines.push(`Image end offset: ${r.imageEndOffset}`);
    return lines.join('\n');
  });
  return r.corruptions > 0 || r.checkErrors > 0 ? 1 : 0;
}
