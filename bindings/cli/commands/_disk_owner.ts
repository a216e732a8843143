/**
 * `vmkit disk owner|open|release`: disk ownership from the shell
 * (docs/ownership.md). Dispatched here by commands/disk.ts.
 *
 * - `owner` prints the owner record and whether its lease is alive.
 * - `open` takes the disk (asking its owner to release it), holds it, answers
 *   release requests at the printed endpoint, and exits 0 once it released the
 *   disk (to a request, or on SIGINT/SIGTERM); 1 if it was fenced.
 * - `release` asks the current owner to let go; the disk ends `free`.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { emit, parse, type CliIO } from '../_common.js';
import { openOwned, readOwner, requestRelease } from '../../disk/owner/handoff.js';
import { leaseAlive } from '../../disk/owner/record.js';
import { createHttpTransport, type ReleaseTransport } from '../../disk/owner/transport.js';
import type { OwnerStore } from '../../disk/owner/types.js';
import { formatOpt } from './_disk_args.js';

function onePath(positionals: string[], sub: string): string {
  const [p] = positionals;
  if (p === undefined || positionals.length !== 1) throw new VmkitError('ARG_RANGE', `usage: vmkit disk ${sub} <disk> …; see vmkit disk owner --help`);
  return p;
}

function ms(v: unknown, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== 'string' || !/^\d+$/.test(v) || !Number.isSafeInteger(n)) throw new VmkitError('ARG_RANGE', `${name} must be a number of milliseconds, got ${JSON.stringify(v)}`);
  return n;
}

/**
 * The disk's key in the store: `--name` when given (the same disk reached by
 * different paths on different hosts must share one etcd key), else the path.
 */
function nameOf(name: unknown, path: string): string {
  if (name === undefined) return path;
  if (typeof name !== 'string' || name.length === 0 || name.length > 1024) throw new VmkitError('ARG_RANGE', `--name must be a non-empty key of at most 1024 characters`);
  return name;
}

/** `--tls-cert/--tls-key` (both or neither) and `--insecure`: the HTTP transport to serve with. */
async function transportOf(cert: unknown, key: unknown, insecure: unknown): Promise<ReleaseTransport | undefined> {
  if ((cert === undefined) !== (key === undefined)) throw new VmkitError('ARG_RANGE', '--tls-cert and --tls-key go together');
  if (cert === undefined) return insecure === true ? createHttpTransport({ insecure: true }) : undefined;
  const { readFile } = await import('node:fs/promises');
  const read = (p: unknown, flag: string): Promise<Buffer> =>
    readFile(String(p)).catch((e: unknown) => {
      throw new VmkitError('NOT_FOUND', `${flag} ${String(p)}: ${(e as Error)?.message ?? e}`, { path: String(p), cause: e });
    });
  return createHttpTransport({ tls: { cert: await read(cert, '--tls-cert'), key: await read(key, '--tls-key') }, insecure: insecure === true });
}

/** The record as printed: the secret stays in the store. */
function shown<T extends { secret?: string } | null>(r: T): T {
  return r && r.secret !== undefined ? { ...r, secret: '<hidden>' } : r;
}

async function storeOf(etcd: unknown): Promise<OwnerStore | undefined> {
  if (etcd === undefined) return undefined;
  let m: { etcdStore(o: { endpoints: string[] }): OwnerStore };
  try {
    const spec = '../../disk/owner/etcd-store.js';
    m = (await import(/* @vite-ignore */ spec)) as typeof m;
  } catch (e) {
    throw new VmkitError('UNSUPPORTED', `--etcd: the etcd store is not in this build (${(e as Error)?.message ?? e})`, { cause: e });
  }
  return m.etcdStore({ endpoints: String(etcd).split(',').filter(Boolean) });
}

/**
 * Runs `vmkit disk owner|open|release` (commands/disk.ts loads this module on demand).
 *
 * @example
 * ```ts
 * process.exitCode = await runOwner('owner', ['vm.qcow2', '--json'], process);
 * ```
 */
export async function runOwner(sub: string, argv: string[], io: CliIO): Promise<number> {
  if (sub === 'owner') {
    const { values, positionals } = parse(argv, { etcd: { type: 'string' }, name: { type: 'string' } });
    const disk = nameOf(values.name, onePath(positionals, sub));
    const store = await storeOf(values.etcd);
    try {
      const r = await readOwner(disk, store ? { store } : {});
      const now = Date.now();
      const alive = r !== null && leaseAlive(r, now, 0);
      emit(io, values.json, { disk, record: shown(r), leaseAlive: alive, leaseRemainingMs: r && alive ? r.leaseExpiresAt - now : 0 }, () => {
        if (!r) return `${disk}: no owner record (free; the first opener takes epoch 1)`;
        const who = r.owner ? `${r.owner.id} (host ${r.owner.host}, pid ${r.owner.pid}${r.owner.endpoint ? `, release requests at ${r.owner.endpoint}` : ''})` : 'nobody';
        const lease = r.state === 'free' ? '' : alive ? `\nlease: alive for ${r.leaseExpiresAt - now} ms more` : `\nlease: expired ${now - r.leaseExpiresAt} ms ago (the next opener takes it over)`;
        return `${disk}: ${r.state} at epoch ${r.epoch}, ${r.state === 'free' ? 'last held by' : 'held by'} ${who}${lease}\nrecord version ${r.version}, written ${new Date(r.updatedAt).toISOString()}`;
      });
    } finally {
      await store?.close();
    }
    return 0;
  }
  if (sub === 'release') {
    const { values, positionals } = parse(argv, { as: { type: 'string' }, etcd: { type: 'string' }, name: { type: 'string' } });
    const disk = nameOf(values.name, onePath(positionals, sub));
    const store = await storeOf(values.etcd);
    try {
      const before = await readOwner(disk, store ? { store } : {});
      const after = await requestRelease(disk, { as: typeof values.as === 'string' ? values.as : 'vmkit-cli', ...(store ? { store } : {}) });
      emit(io, values.json, { disk, before: shown(before), after: shown(after) }, () =>
        !before || before.state === 'free' ? `${disk}: already free (epoch ${before?.epoch ?? 0})` : `${disk}: released by ${before.owner?.id} at epoch ${after?.epoch}; now ${after?.state}`,
      );
    } finally {
      await store?.close();
    }
    return 0;
  }
  if (sub === 'open') {
    const { values, positionals } = parse(argv, {
      as: { type: 'string' },
      serve: { type: 'string' },
      lease: { type: 'string' },
      wait: { type: 'string' },
      format: { type: 'string', short: 'f' },
      etcd: { type: 'string' },
      name: { type: 'string' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      insecure: { type: 'boolean' },
    });
    const disk = onePath(positionals, sub);
    const transport = await transportOf(values['tls-cert'], values['tls-key'], values.insecure);
    const name = nameOf(values.name, disk);
    if (typeof values.as !== 'string' || values.as.length === 0) throw new VmkitError('ARG_RANGE', 'vmkit disk open needs --as <id>');
    const format = formatOpt(values.format, '--format');
    const store = await storeOf(values.etcd);
    const leaseMs = ms(values.lease, '--lease');
    const waitMs = ms(values.wait, '--wait');
    const held = await openOwned(disk, {
      as: values.as,
      name,
      ...(store ? { store } : {}),
      ...(transport ? { transport } : {}),
      ...(typeof values.serve === 'string' ? { serve: values.serve } : {}),
      ...(leaseMs === undefined ? {} : { leaseMs }),
      ...(waitMs === undefined ? {} : { waitMs }),
      ...(format ? { image: { format } } : {}),
    });
    emit(io, values.json, { disk, epoch: held.epoch, endpoint: held.endpoint, owner: held.identity }, () => `holding ${disk} at epoch ${held.epoch}; release requests at ${held.endpoint}`);
    // Stay alive while holding (the library's server and renewal timer do not keep a process up).
    const keepAlive = setInterval(() => {}, 1 << 30);
    const onSignal = (): void => void held.release().catch(() => {});
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    try {
      const out = await held.done;
      if (out.reason === 'fenced') {
        io.stderr.write(`vmkit: ${disk}: fenced at epoch ${held.epoch} (another holder took a newer epoch)\n`);
        return 1;
      }
      if (!values.json) io.stdout.write(out.reason === 'requested' ? `released ${disk} to ${out.by?.id} (epoch ${held.epoch})\n` : `released ${disk} (epoch ${held.epoch})\n`);
      return 0;
    } finally {
      clearInterval(keepAlive);
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      await store?.close();
    }
  }
  throw new VmkitError('ARG_RANGE', `unknown ownership subcommand ${JSON.stringify(sub)}`);
}
