/**
 * `vmkit disk snapshot|backup|consolidate --server <control socket>`: the
 * live jobs run inside a `vmkit disk serve --control` process (the disk's
 * owner) while its clients keep writing; this end sends the request, shows
 * progress and prints the result.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { emit, formatBytes, parse, Progress, type CliIO } from '../_common.js';
import { callControl } from '../../disk/nbd/control.js';

/** Runs a live job through `--server`; resolves to the exit code. */
export async function runRemote(sub: 'snapshot' | 'backup' | 'consolidate', argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, {
    server: { type: 'string' },
    'delta-format': { type: 'string' },
    'output-format': { type: 'string', short: 'O' },
    delta: { type: 'string' },
    scope: { type: 'string' },
    into: { type: 'string' },
    full: { type: 'boolean' },
    'keep-delta': { type: 'boolean' },
    rate: { type: 'string' },
  });
  const server = values.server as string | undefined;
  if (!server) throw new VmkitError('ARG_RANGE', '--server <control socket> is required');
  const { resolve } = await import('node:path');
  const args: Record<string, unknown> = {};
  // The job's output format, named as the local commands name it: the delta's (snapshot), the target's (backup).
  const format = sub === 'snapshot' ? values['delta-format'] : sub === 'backup' ? values['output-format'] : undefined;
  if (typeof format === 'string') args.format = format;
  if (typeof values.rate === 'string') args.rate = Number(values.rate);
  if (sub === 'snapshot') {
    if (positionals.length > 0) throw new VmkitError('ARG_RANGE', 'usage: vmkit disk snapshot --server <socket> [--delta <path>] (the server knows its disk)');
    if (typeof values.delta === 'string') args.delta = resolve(values.delta);
  } else if (sub === 'backup') {
    if (positionals.length !== 1) throw new VmkitError('ARG_RANGE', 'usage: vmkit disk backup --server <socket> <target> (from the last snapshot)');
    args.target = resolve(positionals[0]!); // the server's working folder is not ours
    if (typeof values.scope === 'string') args.scope = values.scope;
  } else {
    if (positionals.length > 0) throw new VmkitError('ARG_RANGE', 'usage: vmkit disk consolidate --server <socket> [--into base|<target>]');
    if (typeof values.into === 'string') args.into = values.into === 'base' ? 'base' : resolve(values.into);
    if (values.full) args.full = true;
    if (values['keep-delta']) args.keepDelta = true;
  }
  const bar = new Progress(io, sub, 0, !values.json);
  const r = (await callControl(server, { op: sub, args }, (p) => {
    // Bytes when the server sends them (planned/remaining), else its fraction of an unknown total.
    if (typeof p.planned === 'number' && typeof p.remaining === 'number') bar.update(p.planned - p.remaining, p.planned);
  })) as Record<string, unknown>;
  bar.done();
  emit(io, values.json, r, () => {
    if (sub === 'snapshot') return `snapshot: ${r.frozen} frozen; active layer ${r.active}`;
    if (sub === 'backup') return `backup: ${r.source} → ${r.target} (${r.format}); ${formatBytes(Number(r.copiedBytes ?? 0))} copied`;
    return `consolidate: active layer ${r.active}; ${formatBytes(Number(r.copiedBytes ?? 0))} copied in ${r.elapsedMs} ms`;
  });
  return 0;
}
