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
import type { CheckReport, ImageDevice, ImageInfo } from '../../disk/formats/types.js';
import { formatOpt, INPUT_FORMAT_OPTIONS } from './_disk_args.js';

function onePath(positionals: string[], sub: string): string {
  const [path] = positionals;
  if (path === undefined || positionals.length !== 1) throw new VmkitError('ARG_RANGE', `usage: vmkit disk ${sub} <file>; see vmkit disk ${sub} --help`);
  return path;
}

/** Opens `path` read-only with the formats the user pinned (`-f`, `-F`). */
function openInput(path: string, values: Record<string, unknown>): Promise<ImageDevice> {
  const format = formatOpt(values.format, '--format');
  const backingFormat = formatOpt(values['backing-format'], '--backing-format');
  return openImage(path, { provider, readOnly: true, ...(format ? { format } : {}), ...(backingFormat ? { backingFormat } : {}) });
}

async function owner(sub: string, argv: string[], io: CliIO): Promise<number> {
  let m: { runOwner(sub: string, argv: string[], io: CliIO): Promise<number> };
  try {
    m = (await import('./_disk_owner.js')) as typeof m;
  } catch (e) {
    throw new VmkitError('UNSUPPORTED', `vmkit disk ${sub}: disk ownership is not in this build (commands/_disk_owner.js did not load: ${(e as Error)?.message ?? e})`, { cause: e });
  }
  return m.runOwner(sub, argv, io);
}

function backupJob(sub: 'snapshot' | 'backup' | 'consolidate') {
  return async (argv: string[], io: CliIO): Promise<number> => {
    // --server: the job runs inside a `vmkit disk serve --control` process, the disk's owner.
    if (argv.some((a) => a === '--server' || a.startsWith('--server='))) return (await import('./_disk_remote.js')).runRemote(sub, argv, io);
    // Offline jobs: synchronous I/O costs far less CPU than the thread pool (bench/RESULTS.md, backup);
    // a backup to a file's reads and writes overlap on the thread pool instead (bench/RESULTS.md, disk),
    // but a backup to stdout is one ordered stream with nothing to overlap: synchronous reads there
    // (~25% less CPU as a whole process; this Node's thread pool goes through io_uring).
    // Loaded here, not at the top: `disk info` and the other light subcommands skip it (start-up).
    const { runBackup, setFormatDriver } = await import('./_disk_backup.js');
    setFormatDriver(async (toStream) => (sub === 'backup' && !toStream ? fileFormatDriver : syncFileFormatDriver));
    return runBackup(sub, argv, io);
  };
}

/**
 * The `disk` command group (help: help/disk.ts).
 * @example
 * ```ts
 * process.exitCode = await command.run.check!(['vm.qcow2', '--output=json'], process);
 * ```
 */
export const command: Command = {
  run: {
    create,
    info,
    map,
    check,
    snapshot: backupJob('snapshot'),
    backup: backupJob('backup'),
    consolidate: backupJob('consolidate'),
    owner: (argv, io) => owner('owner', argv, io),
    open: (argv, io) => owner('open', argv, io),
    release: (argv, io) => owner('release', argv, io),
    serve: async (argv, io) => (await import('./_disk_serve.js')).runServe(argv, io),
    convert: async (argv, io) => (await import('./_disk_convert.js')).runConvert(argv, io),
  },
};

async function create(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, {
    size: { type: 'string' },
    format: { type: 'string', short: 'f' },
    backing: { type: 'string', short: 'b' },
    'backing-format': { type: 'string', short: 'F' },
    'cluster-size': { type: 'string' },
    'extended-l2': { type: 'boolean' },
    'data-file': { type: 'string' },
    'data-file-raw': { type: 'boolean' },
    'compression-type': { type: 'string' },
  });
  const ct = values['compression-type'];
  if (ct !== undefined && ct !== 'zlib' && ct !== 'zstd') throw new VmkitError('ARG_RANGE', `--compression-type must be zlib or zstd, got ${String(ct)}`);
  const path = onePath(positionals, 'create');
  const dataFile = typeof values['data-file'] === 'string' ? values['data-file'] : undefined;
  if (values['data-file-raw'] && dataFile === undefined) throw new VmkitError('ARG_RANGE', '--data-file-raw needs --data-file');
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
    ...(dataFile !== undefined ? { dataFile, dataFileRaw: values['data-file-raw'] === true } : {}),
    ...(ct !== undefined ? { compressionType: ct } : {}),
  });
  const dev = await openImage(path, { provider, readOnly: true, noBacking: true });
  const i = await dev.info();
  await dev.close();
  emit(io, values.json, { file: path, ...i }, () => `created ${path}: ${format}, ${formatBytes(i.virtualSize)} (${i.virtualSize} bytes)${backing ? `, backing ${backing}` : ''}`);
  return 0;
}

async function info(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, INPUT_FORMAT_OPTIONS);
  const path = onePath(positionals, 'info');
  const dev = await openInput(path, values);
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
  const { values, positionals } = parse(argv, INPUT_FORMAT_OPTIONS);
  const path = onePath(positionals, 'map');
  const dev = await openInput(path, values);
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

/**
 * A check report in `qemu-img check --output=json`'s keys (QAPI ImageCheck):
 * counts that are zero are left out, as qemu-img leaves them out, except
 * `check-errors`. vmkit adds `messages` (one line per problem).
 * @example
 * ```ts
 * qemuCheckJson(await checkImage('vm.qcow2')); // { filename, format, 'check-errors': 0, … }
 * ```
 */
export function qemuCheckJson(r: CheckReport): Record<string, unknown> {
  const out: Record<string, unknown> = { filename: r.filename, format: r.format, 'check-errors': r.checkErrors };
  const opt = (k: string, v: number | undefined): void => {
    if (v) out[k] = v;
  };
  opt('corruptions', r.corruptions);
  opt('leaks', r.leaks);
  opt('leaks-fixed', r.leaksFixed);
  opt('image-end-offset', r.imageEndOffset);
  opt('total-clusters', r.totalClusters);
  opt('allocated-clusters', r.allocatedClusters);
  opt('fragmented-clusters', r.fragmentedClusters);
  opt('compressed-clusters', r.compressedClusters);
  out.messages = r.messages;
  return out;
}

/** qemu-img check's exit codes: 0 clean, 1 check failed, 2 corruptions, 3 leaks only, 63 no check for the format. */
const CHECK_EXIT = { clean: 0, failed: 1, corrupt: 2, leaks: 3, unsupported: 63 } as const;

async function check(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, { format: { type: 'string', short: 'f' }, 'repair-leaks': { type: 'boolean', short: 'r' } });
  const path = onePath(positionals, 'check');
  const format = formatOpt(values.format, '--format');
  const r = await checkImage(path, { provider, ...(format ? { format } : {}), ...(values['repair-leaks'] ? { repairLeaks: true } : {}) });
  if (r.unsupported) {
    // As qemu-img: nothing on stdout, the reason on stderr, exit 63.
    io.stderr.write(`vmkit: ${path}: this image format (${r.format}) does not support checks\n`);
    return CHECK_EXIT.unsupported;
  }
  emit(io, values.json, qemuCheckJson(r), () => {
    const lines = r.messages.map((m) => `${m.severity === 'leak' ? 'Leaked' : 'ERROR'}: ${m.message}`);
    if (r.corruptions === 0 && r.leaks === 0 && r.checkErrors === 0) lines.push('No errors were found on the image.');
    else {
      if (r.corruptions) lines.push(`${r.corruptions} errors were found on the image.`);
      if (r.leaks) lines.push(`${r.leaks} leaked clusters were found on the image (wasted space, no harm to data).`);
      if (r.checkErrors) lines.push(`${r.checkErrors} internal errors have occurred during the check.`);
    }
    if (r.leaksFixed) lines.push(`${r.leaksFixed} leaked clusters were repaired.`);
    if (r.allocatedClusters !== undefined && r.totalClusters) {
      lines.push(`${r.allocatedClusters}/${r.totalClusters} = ${((100 * r.allocatedClusters) / r.totalClusters).toFixed(2)}% allocated, ${r.compressedClusters ?? 0} compressed clusters`);
    }
    if (r.imageEndOffset !== undefined) lines.push(`Image end offset: ${r.imageEndOffset}`);
    return lines.join('\n');
  });
  if (r.checkErrors > 0) return CHECK_EXIT.failed;
  if (r.corruptions > 0) return CHECK_EXIT.corrupt;
  if (r.leaks > 0) return CHECK_EXIT.leaks;
  return CHECK_EXIT.clean;
}
