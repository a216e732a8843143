/**
 * `vmkit disk serve`: an image (a qcow2 chain, VMDK or raw) served over NBD
 * until SIGINT/SIGTERM, as `qemu-nbd` does: in-flight requests finish and the
 * image is flushed and closed on the way out.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { emit, parse, type CliIO } from '../_common.js';
import { openImage } from '../../disk/image.js';
import { formatOpt, INPUT_FORMAT_OPTIONS } from './_disk_args.js';
import { serveNbd, type NbdServer, type NbdTlsOptions } from '../../disk/nbd/server.js';
import type { OwnedDisk, OwnedOpen } from '../../disk/owner/handoff.js';
import type { ChainOps } from '../../disk/backup/_types.js';
import type { LiveServe } from './_disk_live.js';
import type { ControlHandler, ControlServer } from '../../disk/nbd/control.js';
import type { BlockDevice } from '../../disk/device.js';

/** Runs `vmkit disk serve`; resolves when a signal stopped the server. */
export async function runServe(argv: string[], io: CliIO, signals: NodeJS.EventEmitter = process): Promise<number> {
  const { values, positionals } = parse(argv, {
    listen: { type: 'string' },
    export: { type: 'string', short: 'x' },
    description: { type: 'string' },
    'read-only': { type: 'boolean', short: 'r' },
    ...INPUT_FORMAT_OPTIONS,
    'tls-creds': { type: 'string' },
    insecure: { type: 'boolean' },
    'max-connections': { type: 'string' },
    cache: { type: 'string' },
    aio: { type: 'string' },
    control: { type: 'string' },
    as: { type: 'string' },
    'release-listen': { type: 'string' },
    etcd: { type: 'string' },
    name: { type: 'string' },
    lease: { type: 'string' },
  });
  const [file] = positionals;
  if (file === undefined || positionals.length !== 1) throw new VmkitError('ARG_RANGE', 'usage: vmkit disk serve <file> [--listen …]; see vmkit disk serve --help');
  const format = formatOpt(values.format, '--format');
  const maxConnections = values['max-connections'] === undefined ? undefined : Number(values['max-connections']);
  if (maxConnections !== undefined && !Number.isSafeInteger(maxConnections)) throw new VmkitError('ARG_RANGE', `--max-connections must be an integer, got ${values['max-connections']}`);
  let tls: NbdTlsOptions | undefined;
  if (typeof values['tls-creds'] === 'string') {
    const { readFile } = await import('node:fs/promises');
    const { join } = await import('node:path');
    const dir = values['tls-creds'];
    const read = async (n: string, need: boolean): Promise<Uint8Array | undefined> =>
      readFile(join(dir, n)).then(
        (b) => new Uint8Array(b),
        (e: NodeJS.ErrnoException) => {
          if (!need && e.code === 'ENOENT') return undefined;
          throw new VmkitError('NOT_FOUND', `--tls-creds: cannot read ${join(dir, n)}: ${e.message}`, { cause: e, path: join(dir, n) });
        },
      );
    const ca = await read('ca-cert.pem', false);
    tls = { cert: (await read('server-cert.pem', true))!, key: (await read('server-key.pem', true))!, ...(ca ? { ca } : {}) };
  }
  const cache = values.cache ?? 'writeback';
  if (cache !== 'writeback' && cache !== 'writethrough') throw new VmkitError('ARG_RANGE', `--cache must be writeback or writethrough, got ${JSON.stringify(cache)}`);
  const aio = values.aio ?? 'threads';
  if (aio !== 'threads' && aio !== 'sync') throw new VmkitError('ARG_RANGE', `--aio must be threads or sync, got ${JSON.stringify(aio)}`);
  const readOnly = values['read-only'] === true;
  const control = typeof values.control === 'string' ? values.control : undefined;
  if (control && (readOnly || format)) throw new VmkitError('ARG_RANGE', '--control serves the chain writable with probed formats: drop --read-only / --format');
  const { fileProvider, syncFileProvider } = await import('../../disk/backends/file.js');
  const provider = aio === 'sync' ? syncFileProvider : fileProvider;
  let device: BlockDevice;
  let closeDevice: () => Promise<void>;
  const backingFormat = formatOpt(values['backing-format'], '--backing-format');
  if (backingFormat && control) throw new VmkitError('ARG_RANGE', '--backing-format does not apply with --control (the live chain must record its formats)');
  const { activeLayer, activePointerOf } = await import('./_disk_active.js');
  // The live-job modules load before the disk is taken: in a handoff, the time between taking it
  // and listening is a pause the guest sees.
  const liveMods = control
    ? await Promise.all([import('./_disk_live.js'), import('../../disk/backup/node.js'), import('../../disk/image.js')]).then(([l, n, i]) => ({ ...l, ...n, ...i }))
    : undefined;
  // A writable server opens the layer the last live job left active (a snapshot's delta), not the
  // frozen one below it: the pointer file beside the disk names it (docs/nbd.md, "Live jobs").
  const follow = async (): Promise<string> => {
    if (readOnly) return file;
    const active = await activeLayer(file);
    if (active !== file && (format || backingFormat)) {
      throw new VmkitError('ARG_RANGE', `${activePointerOf(file)} makes ${active} the active layer: drop --format / --backing-format (they would apply to it)`);
    }
    return active;
  };
  let held: OwnedDisk | undefined;
  let server: NbdServer | undefined;
  let handler: ControlHandler | undefined;
  let live: LiveServe | undefined;
  // --as on a unix socket: a release request leaves the clients connected (their requests unread) until
  // the next server listens on the path, so QEMU's NBD client reconnects at once rather than after its 1 s
  // backoff (docs/nbd.md, "Ownership handoff"). Settles when let go.
  let handedOver: Promise<void> | undefined;
  let released!: () => void;
  const releasedP = new Promise<void>((r) => (released = r));
  // The chain as a LiveDisk whose jobs use `ops`, served with the format of its active layer.
  const openLiveDevice = async (ops: ChainOps): Promise<{ device: BlockDevice; live: LiveServe }> => {
    const { openLive, liveBlockDevice } = liveMods!;
    const active = await follow();
    const l = await openLive(active, ops, file);
    if (cache === 'writeback') await l.disk.device.setCacheMode?.('writeback');
    return { device: liveBlockDevice(l.disk, await ops.formatOf(active)), live: l };
  };
  if (typeof values.as === 'string') {
    if (readOnly) throw new VmkitError('ARG_RANGE', '--as takes the disk to write it: drop --read-only');
    const { openOwned } = await import('../../disk/owner/handoff.js');
    const { createHttpTransport } = await import('../../disk/owner/transport.js');
    const { _guardedChainOps } = await import('../../disk/backup/_guarded.js');
    // Plain HTTP (off loopback only with --insecure); an owner's HTTPS endpoint is trusted through --tls-creds' CA too.
    const transport = createHttpTransport({ ...(tls?.ca ? { ca: tls.ca } : {}), insecure: values.insecure === true });
    let store;
    if (typeof values.etcd === 'string') store = (await import('../../disk/owner/etcd-store.js')).etcdStore({ endpoints: values.etcd.split(',').filter(Boolean) });
    const leaseMs = values.lease === undefined ? undefined : Number(values.lease);
    held = await openOwned(file, {
      as: values.as,
      ...(store ? { store } : {}),
      ...(typeof values.name === 'string' ? { name: values.name } : {}),
      ...(leaseMs !== undefined ? { leaseMs } : {}),
      transport,
      serve: typeof values['release-listen'] === 'string' ? values['release-listen'] : '127.0.0.1:0',
      image: { provider },
      // Opened once the epoch is ours (the previous holder may have moved the active layer while
      // releasing). Every file the server or its jobs write goes through the holder's guard.
      open: async ({ guard, provider: guarded }): Promise<OwnedOpen> => {
        if (control) {
          const { NodeChainOps, formatDriverWith } = liveMods!;
          const o = await openLiveDevice(_guardedChainOps(new NodeChainOps(formatDriverWith(guarded)), guard));
          live = o.live;
          return { device: o.device, close: () => o.live.close(), abandon: () => o.live.abandon() };
        }
        const img = await openImage(await follow(), { provider: guarded, guard, ...(format ? { format } : {}), ...(backingFormat ? { backingFormat } : {}) });
        return {
          device: img,
          close: () => img.close(),
          abandon: async () => {
            await Promise.all([img.storage.close().catch(() => {}), img.backing?.close().catch(() => {})]);
          },
        };
      },
      // Before the holder drains and flushes: no new job or request is taken, a running job is
      // cancelled or finished, those in flight are answered, clients are disconnected (they
      // reconnect to the next server), then the disk is released.
      onReleaseRequest: async (req) => {
        io.stderr.write(`vmkit disk serve: release requested by ${req.requester.id}: stopping\n`);
        await live?.stopJobs(`the disk is handed over to ${req.requester.id}`);
        const path = listenPath(server?.address);
        handedOver = path === undefined ? undefined : releasedP.then(() => successorListens(path, socketIno, HANDOVER_WAIT_MS));
        await server?.close(handedOver ? { holdClients: handedOver } : {});
        return undefined;
      },
    });
    void held.done.then(() => released());
    const h = held;
    device = h.device;
    closeDevice = () => h.release();
    handler = live?.handler;
  } else if (control) {
    const { fileFormatDriver, syncFileFormatDriver, NodeChainOps } = liveMods!;
    const o = await openLiveDevice(new NodeChainOps(aio === 'sync' ? syncFileFormatDriver : fileFormatDriver));
    live = o.live;
    device = o.device;
    closeDevice = () => o.live.close();
    handler = o.live.handler;
  } else {
    const img = await openImage(await follow(), { readOnly, provider, ...(format ? { format } : {}), ...(backingFormat ? { backingFormat } : {}) });
    // qcow2 keeps its metadata cache write-back between FLUSHes, as qemu-nbd's default cache mode does.
    const withCache = img as typeof img & { setCacheMode?: (m: 'writeback' | 'writethrough') => Promise<void> };
    if (!readOnly && typeof withCache.setCacheMode === 'function') await withCache.setCacheMode(cache);
    device = img;
    closeDevice = () => img.close();
  }
  try {
    server = await serveNbd({
      listen: typeof values.listen === 'string' ? values.listen : '127.0.0.1:10809',
      exports: [{ name: typeof values.export === 'string' ? values.export : '', device, readOnly, ...(typeof values.description === 'string' ? { description: values.description } : {}) }],
      ...(tls ? { tls } : {}),
      ...(values.insecure ? { insecure: true } : {}),
      ...(maxConnections !== undefined ? { maxConnections } : {}),
      onConnectionError: (e) => io.stderr.write(`vmkit disk serve: connection ended: ${e.message}\n`),
    });
  } catch (e) {
    await closeDevice().catch(() => {});
    throw e;
  }
  let ctl: ControlServer | undefined;
  if (control && handler) {
    try {
      ctl = await (await import('../../disk/nbd/control.js')).serveControl(control, handler);
    } catch (e) {
      await server.close();
      await closeDevice().catch(() => {});
      throw e;
    }
  }
  const socketPath = listenPath(server.address);
  const socketIno = socketPath === undefined ? undefined : await inodeOf(socketPath);
  const uri = server.uri(typeof values.export === 'string' ? values.export : '');
  emit(io, values.json, { listen: server.address, uri, file, format: device.format, size: device.size, readOnly, ...(ctl ? { control: ctl.path } : {}), ...(held ? { owner: values.as, epoch: held.epoch } : {}) }, () => `serving ${file} (${device.format}, ${device.size} bytes${readOnly ? ', read-only' : ''}) at ${uri}`);
  const sig = await new Promise<string>((resolve) => {
    const on = (s: string) => (): void => resolve(s);
    signals.once('SIGINT', on('SIGINT'));
    signals.once('SIGTERM', on('SIGTERM'));
    // An owner that was asked to release (or was fenced) has stopped serving: its work is done.
    held?.done.then((o) => resolve(o.reason === 'requested' ? `released to ${o.by?.id ?? 'another owner'}` : o.reason));
  });
  await ctl?.close();
  await server.close();
  // Released to another server: the clients held open are let go once it listens (or after the bound).
  await handedOver;
  await closeDevice().catch((e: unknown) => {
    // A holder that already gave the disk away has nothing left to release.
    if (!held) throw e;
  });
  const st = server.stats();
  io.stderr.write(`vmkit disk serve: ${sig}: stopped after ${st.accepted} connections, ${st.requests} requests (${st.errors} errors)\n`);
  return 0;
}

/** How long a released server keeps its clients waiting for the next one to listen (then lets them go anyway). */
const HANDOVER_WAIT_MS = 10_000;

const listenPath = (address: string | undefined): string | undefined => (address?.startsWith('unix:') ? address.slice(5) : undefined);

async function inodeOf(path: string): Promise<number | undefined> {
  const { stat } = await import('node:fs/promises');
  return stat(path).then(
    (st) => st.ino,
    () => undefined,
  );
}

/** Resolves once `path` is a socket other than ours (inode `ours`): the next server listens there. */
async function successorListens(path: string, ours: number | undefined, waitMs: number): Promise<void> {
  const until = Date.now() + waitMs;
  while (Date.now() < until) {
    const ino = await inodeOf(path);
    if (ino !== undefined && ino !== ours) return;
    await new Promise((r) => setTimeout(r, 2));
  }
}
