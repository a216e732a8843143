/**
 * `vmkit disk serve`: an image (a qcow2 chain, VMDK or raw) served over NBD
 * until SIGINT/SIGTERM, as `qemu-nbd` does: in-flight requests finish and the
 * image is flushed and closed on the way out.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { emit, parse, type CliIO } from '../_common.js';
import { openImage } from '../../disk/image.js';
import type { FormatName } from '../../disk/formats/types.js';
import { serveNbd, type NbdTlsOptions } from '../../disk/nbd/server.js';
import { serveControl, type ControlHandler, type ControlServer } from '../../disk/nbd/control.js';
import type { BlockDevice } from '../../disk/device.js';

/** Usage of `vmkit disk serve`. */
export const serveUsage = `Usage: vmkit disk serve <file> [options]
  Serves the image (qcow2 chain, VMDK or raw) over NBD until SIGINT/SIGTERM, as qemu-nbd does.

Options:
  --listen <addr>       unix:<path>, a path, or <host>:<port> (default 127.0.0.1:10809; port 0 picks one)
  -x, --export <name>   export name (default ''; a client naming none gets the only export)
  --description <text>  shown by nbdinfo --list
  -r, --read-only       serve read-only (writes fail with EPERM)
  -f, --format <fmt>    pin the image format (qcow2, vmdk, raw) instead of probing it
  --tls-creds <dir>     TLS with a QEMU tls-creds-x509 directory (server-cert.pem, server-key.pem,
                        and ca-cert.pem when clients must present certificates): clients must STARTTLS
  --insecure            allow a non-loopback TCP address without TLS
  --max-connections <n> connections served at once (default 16)
  --cache <mode>        writeback (default, as qemu-nbd: qcow2 metadata reaches the file on FLUSH)
                        or writethrough (after every request)
  --aio <mode>          threads (default: file I/O on libuv's thread pool, other requests go on)
                        or sync (blocking I/O on the main thread: less overhead per request when the
                        image is in the page cache, but a slow read stalls every connection)
  --control <path>      a control socket (mode 0600): vmkit disk snapshot|backup|consolidate --server <path>
                        run inside this process while clients keep writing (qcow2 and VMDK chains)
  --json                print the listening address and URI as JSON

Example:
  vmkit disk serve vm.qcow2 --listen unix:/tmp/vm.sock -x vm &
  qemu-system-x86_64 -drive driver=nbd,server.type=unix,server.path=/tmp/vm.sock,export=vm,if=virtio …

Exit codes: 0 stopped by a signal after a clean shutdown, 1 failure, 2 usage error.`;

/** Runs `vmkit disk serve`; resolves when a signal stopped the server. */
export async function runServe(argv: string[], io: CliIO, signals: NodeJS.EventEmitter = process): Promise<number> {
  const { values, positionals } = parse(argv, {
    listen: { type: 'string' },
    export: { type: 'string', short: 'x' },
    description: { type: 'string' },
    'read-only': { type: 'boolean', short: 'r' },
    format: { type: 'string', short: 'f' },
    'tls-creds': { type: 'string' },
    insecure: { type: 'boolean' },
    'max-connections': { type: 'string' },
    cache: { type: 'string' },
    aio: { type: 'string' },
    control: { type: 'string' },
  });
  if (values.help) {
    io.stdout.write(serveUsage + '\n');
    return 0;
  }
  const [file] = positionals;
  if (file === undefined || positionals.length !== 1) throw new VmkitError('ARG_RANGE', 'usage: vmkit disk serve <file> [--listen …]; see vmkit disk serve --help');
  const format = values.format as string | undefined;
  if (format !== undefined && !['qcow2', 'vmdk', 'raw'].includes(format)) throw new VmkitError('ARG_RANGE', `--format must be qcow2, vmdk or raw, got ${JSON.stringify(format)}`);
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
  let device: BlockDevice;
  let closeDevice: () => Promise<void>;
  let handler: ControlHandler | undefined;
  if (control) {
    const { fileFormatDriver, syncFileFormatDriver } = await import('../../disk/image.js');
    const { openLive, liveBlockDevice } = await import('./_disk_live.js');
    const live = await openLive(file, aio === 'sync' ? syncFileFormatDriver : fileFormatDriver);
    if (cache === 'writeback') await live.disk.device.setCacheMode?.('writeback');
    const probe = await openImage(file, { readOnly: true, noBacking: true });
    const fmt = probe.format;
    await probe.close();
    device = liveBlockDevice(live.disk, fmt);
    closeDevice = live.close;
    handler = live.handler;
  } else {
    const img = await openImage(file, { readOnly, provider: aio === 'sync' ? syncFileProvider : fileProvider, ...(format ? { format: format as FormatName } : {}) });
    // qcow2 keeps its metadata cache write-back between FLUSHes, as qemu-nbd's default cache mode does.
    const withCache = img as typeof img & { setCacheMode?: (m: 'writeback' | 'writethrough') => Promise<void> };
    if (!readOnly && typeof withCache.setCacheMode === 'function') await withCache.setCacheMode(cache);
    device = img;
    closeDevice = () => img.close();
  }
  let server;
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
      ctl = await serveControl(control, handler);
    } catch (e) {
      await server.close();
      await closeDevice().catch(() => {});
      throw e;
    }
  }
  const uri = server.uri(typeof values.export === 'string' ? values.export : '');
  emit(io, values.json, { listen: server.address, uri, file, format: device.format, size: device.size, readOnly, ...(ctl ? { control: ctl.path } : {}) }, () => `serving ${file} (${device.format}, ${device.size} bytes${readOnly ? ', read-only' : ''}) at ${uri}`);
  const sig = await new Promise<string>((resolve) => {
    const on = (s: string) => (): void => resolve(s);
    signals.once('SIGINT', on('SIGINT'));
    signals.once('SIGTERM', on('SIGTERM'));
  });
  await ctl?.close();
  await server.close();
  await closeDevice();
  const st = server.stats();
  io.stderr.write(`vmkit disk serve: ${sig}: stopped after ${st.accepted} connections, ${st.requests} requests (${st.errors} errors)\n`);
  return 0;
}
