/**
 * `vmkit disk convert <in> <out> [-O fmt] [--subformat s] [--cluster-size n] [--in-flight n] [-t writeback|unsafe]`:
 * an image (through its chain) to a new image of any format, as `qemu-img
 * convert`.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { emit, formatBytes, parse, parseSize, type CliIO } from '../_common.js';
import { syncFileProvider as provider } from '../../disk/backends/file.js';
import { convertImage } from '../../disk/convert.js';
import type { FormatName } from '../../disk/formats/types.js';

/**
 * Runs `vmkit disk convert`.
 *
 * @example
 * ```ts
 * await runConvert(['vm.qcow2', 'vm.vhdx', '-O', 'vhdx'], io);
 * ```
 */
export async function runConvert(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, {
    'output-format': { type: 'string', short: 'O' },
    subformat: { type: 'string' },
    'cluster-size': { type: 'string' },
    'in-flight': { type: 'string' },
    cache: { type: 'string', short: 't' },
  });
  const cache = values.cache;
  if (cache !== undefined && cache !== 'writeback' && cache !== 'unsafe') throw new VmkitError('ARG_RANGE', `-t must be writeback or unsafe, got ${JSON.stringify(cache)}`);
  if (positionals.length !== 2) throw new VmkitError('ARG_RANGE', 'usage: vmkit disk convert <in> <out> [-O fmt]');
  const [from, to] = positionals as [string, string];
  const fmt = values['output-format'];
  const formats = ['qcow2', 'vmdk', 'vhd', 'vhdx', 'raw'];
  if (fmt !== undefined && (typeof fmt !== 'string' || !formats.includes(fmt))) throw new VmkitError('ARG_RANGE', `-O must be one of ${formats.join(', ')}, got ${JSON.stringify(fmt)}`);
  const inFlight = values['in-flight'];
  if (inFlight !== undefined && !/^[0-9]+$/.test(String(inFlight))) throw new VmkitError('ARG_RANGE', `--in-flight must be a whole number from 1 to 64, got ${JSON.stringify(inFlight)}`);
  const r = await convertImage(from, to, {
    provider,
    ...(fmt ? { format: fmt as FormatName } : {}),
    ...(typeof values.subformat === 'string' ? { subformat: values.subformat } : {}),
    ...(typeof values['cluster-size'] === 'string' ? { clusterSize: parseSize(values['cluster-size'], '--cluster-size') } : {}),
    ...(inFlight !== undefined ? { inFlight: Number(inFlight) } : {}),
    ...(cache !== undefined ? { cache } : {}),
  });
  emit(io, values.json, { from, to, ...r }, () => `converted ${from} to ${to}: ${r.format}, ${formatBytes(r.size)}, ${formatBytes(r.bytesWritten)} written`);
  return 0;
}
