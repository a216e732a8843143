/**
 * `vmkit checkpoint import|export`: QEMU migration streams to and from vmkit
 * checkpoints (docs/checkpoint-format.md, "Machine state").
 * @module
 */
import { VmkitError } from '../../errors.js';
import { importQemuMigration } from '../../memory/checkpoint/qemu/import.js';
import { exportQemuMigration } from '../../memory/checkpoint/qemu/export.js';
import { emit, formatBytes, parse, parseSize, type CliIO } from '../_common.js';

/**
 * `vmkit checkpoint import <vm.mig|-> <out.ckpt> [--parent <checkpoint>]`
 * (`-`: stdin, for `migrate "exec:vmkit checkpoint import - vm.ckpt"`).
 * @example
 * ```ts
 * await _importCmd(['vm.mig', 'vm.ckpt'], io);
 * ```
 */
export async function _importCmd(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, {
    'block-size': { type: 'string' },
    codec: { type: 'string' },
    search: { type: 'string' },
    parent: { type: 'string' },
    'max-ram': { type: 'string' },
  });
  const [mig, out] = positionals;
  if (!mig || !out || positionals.length !== 2) throw new VmkitError('ARG_RANGE', 'import needs <vm.mig|-> <checkpoint>');
  const codec = (values.codec as string | undefined) ?? 'lz4';
  if (codec !== 'lz4' && codec !== 'none') throw new VmkitError('ARG_RANGE', `--codec must be lz4 or none, got ${codec}`);
  const search = (values.search as string | undefined) ?? 'dense';
  if (search !== 'dense' && search !== 'fast') throw new VmkitError('ARG_RANGE', `--search must be dense or fast, got ${search}`);
  const blockSize = values['block-size'] === undefined ? undefined : parseSize(values['block-size'] as string, '--block-size');
  const maxGuestBytes = values['max-ram'] === undefined ? undefined : parseSize(values['max-ram'] as string, '--max-ram');
  const t0 = performance.now();
  const s = await importQemuMigration(mig === '-' ? 0 : mig, out, { codec, search, blockSize, parent: values.parent as string | undefined, maxGuestBytes });
  const seconds = (performance.now() - t0) / 1000;
  emit(io, values.json, { path: out, seconds, ...s }, () =>
    [
      `${out}: imported ${formatBytes(s.streamBytes)} QEMU stream (${s.machine || 'no machine type'}) in ${seconds.toFixed(2)}s`,
      `ram blocks: ${s.blocks.map((b) => `${b.id} ${formatBytes(b.length)}`).join(', ')}`,
      `pages: ${s.checkpoint.pages} (${s.checkpoint.zeroPages} zero${s.checkpoint.absentPages ? `, ${s.checkpoint.absentPages} in parent` : ''}), ${s.pageRecords} page records in the stream`,
      `device state kept: ${formatBytes(s.stateBytes)}; file ${formatBytes(s.checkpoint.fileBytes)}`,
      ...s.cpus.map((c) => `cpu ${c.index}: CR0=${c.cr0} CR3=${c.cr3} CR4=${c.cr4} EFER=${c.efer}`),
    ].join('\n'),
  );
  return 0;
}

/**
 * The export's default thread count (`--threads auto`): 2 when more than one
 * core is free — the cores less the 1-minute load average, so QEMU (reading
 * the stream) and the exporter keep one each and the worker gets a third —
 * else 1. Measured on the 2 GiB guest (docs/checkpoint-format.md): QEMU's
 * restore took 0.90× its own file's time with 2 threads on a quiet 2-core
 * machine but 1.35× with 1; under load the worker competes with QEMU and 2
 * threads lost (3.26× against 1.37×).
 * @example
 * ```ts
 * _autoExportThreads(2, 0.3); // 2: a quiet 2-core machine
 * _autoExportThreads(2, 1.5); // 1: under one core free
 * ```
 */
export function _autoExportThreads(cores: number, load1: number): number {
  return cores >= 2 && cores - load1 > 1 ? 2 : 1;
}

/**
 * `vmkit checkpoint export <in.ckpt> <vm.mig|->`.
 * @example
 * ```ts
 * await _exportCmd(['vm.ckpt', '-'], io); // the stream on stdout
 * ```
 */
export async function _exportCmd(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, { threads: { type: 'string' } });
  const [ckpt, out] = positionals;
  const os = await import('node:os');
  const threads = values.threads === undefined || values.threads === 'auto' ? _autoExportThreads(os.availableParallelism(), os.loadavg()[0]!) : Number(values.threads);
  if (!Number.isInteger(threads) || threads < 1 || threads > 16) throw new VmkitError('ARG_RANGE', `--threads must be 1..16 or auto, got ${values.threads}`);
  if (!ckpt || !out || positionals.length !== 2) throw new VmkitError('ARG_RANGE', 'export needs <checkpoint> <vm.mig|->');
  if (out === '-') {
    if (values.json) throw new VmkitError('ARG_RANGE', '--json reports an export to a file; with - stdout is the stream');
    await exportQemuMigration(ckpt, (b) => new Promise<void>((res, rej) => io.stdout.write(b, (e) => (e ? rej(e) : res()))), { threads });
    return 0;
  }
  const fs = await import('node:fs');
  const tmp = `${out}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w');
  try {
    let at = 0;
    const stats = await exportQemuMigration(ckpt, async (b) => {
      for (let done = 0; done < b.length; ) done += fs.writeSync(fd, b, done, b.length - done, at + done);
      at += b.length;
    }, { threads });
    fs.closeSync(fd);
    fs.renameSync(tmp, out);
    emit(io, values.json, { path: out, ...stats }, () => `${out}: ${formatBytes(stats.bytes)} QEMU stream, ${stats.pages} pages (${stats.zeroPages} zero)`);
  } catch (e) {
    try {
      fs.closeSync(fd);
    } catch {
      // already closed
    }
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  return 0;
}
