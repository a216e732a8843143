/**
 * An NBD server (the NBD project's doc/proto.md: fixed newstyle handshake,
 * structured replies, `base:allocation` and `qemu:allocation-depth` block
 * status, STARTTLS) over vmkit's block layer: any qcow2 chain, VMDK or raw
 * image opened with `openImage` is served as a plain block device to QEMU,
 * qemu-img, libnbd and the kernel's nbd client. Node only (sockets). What is
 * implemented of the protocol, its limits and the diagrams are in docs/nbd.md.
 * @module
 */
import { VmkitError } from '../../errors.js';
import type { BlockDevice } from '../device.js';
import { _negotiate, type _Export } from './_handshake.js';
import { _Closed, _Inbox } from './_inbox.js';
import { _ProtocolViolation, _Session, type _Limits, type _Writer } from './_transmission.js';
import { nodeModule } from '../../_node.js';

type Net = typeof import('node:net');
type Tls = typeof import('node:tls');
type Socket = import('node:net').Socket;
type _TlsSetup = { mod: Tls; ctx: import('node:tls').SecureContext; verify: boolean };
const pem = (v: string | Uint8Array): string => (typeof v === 'string' ? v : new TextDecoder().decode(v));

/**
 * One export of an {@link NbdServer}.
 * @example
 * const e: NbdExportSpec = { name: 'vm', device: await openImage('vm.qcow2'), description: 'the VM disk' };
 */
export interface NbdExportSpec {
  /** The export's name ('' is the default export, what a client gets when it names none). */
  name?: string;
  /** The device served. The server never closes it: its owner does, after `close()`. */
  device: BlockDevice;
  /** Shown by `nbdinfo --list` (NBD_INFO_DESCRIPTION). */
  description?: string;
  /** Serve read-only even when the device is writable (NBD_FLAG_READ_ONLY; writes fail EPERM). */
  readOnly?: boolean;
}

/**
 * TLS for an {@link NbdServer}: PEM text or bytes, as QEMU's `tls-creds-x509`
 * directory holds them (`server-cert.pem`, `server-key.pem`, `ca-cert.pem`).
 * @example
 * const tls: NbdTlsOptions = { cert: readFileSync('server-cert.pem'), key: readFileSync('server-key.pem') };
 */
export interface NbdTlsOptions {
  cert: string | Uint8Array;
  key: string | Uint8Array;
  /** When given, clients must present a certificate signed by it (QEMU's `verify-peer=on`). */
  ca?: string | Uint8Array;
}

/**
 * Options of {@link serveNbd}.
 * @example
 * const o: NbdServerOptions = { listen: 'unix:/run/vm.sock', exports: [{ name: 'vm', device }] };
 */
export interface NbdServerOptions {
  /** `unix:<path>` (or a path with a `/`), or `<host>:<port>` (port 0 picks one; `[::1]:10809` for IPv6). */
  listen: string;
  /** What is served (at least one export). */
  exports: readonly NbdExportSpec[];
  /** With TLS, every client must STARTTLS before anything else (FORCEDTLS mode). */
  tls?: NbdTlsOptions;
  /** Allow a TCP listener on a non-loopback address without TLS. */
  insecure?: boolean;
  /** Connections served at once (default 16); more are refused at accept. */
  maxConnections?: number;
  /** Time a client has to finish the handshake, in ms (default 10 000). */
  handshakeTimeoutMs?: number;
  /** Largest read or write payload, in bytes (default 32 MiB, the protocol's interoperable maximum). */
  maxPayload?: number;
  /** Called for each connection that ends with an error (a protocol violation, a socket error). */
  onConnectionError?: (err: Error) => void;
}

/**
 * Counters of an {@link NbdServer}, summed over its connections.
 * @example
 * const { connections, requests, errors } = server.stats();
 */
export interface NbdServerStats {
  /** Connections open now. */
  connections: number;
  /** Connections accepted since the start. */
  accepted: number;
  requests: number;
  /** Requests answered with an error. */
  errors: number;
  bytesRead: number;
  bytesWritten: number;
  /** Connections ended by a protocol violation (the server hung up). */
  violations: number;
}

const DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024;
const LOOPBACK = /^(127\.\d+\.\d+\.\d+|localhost|::1|\[::1\])$/;

/** A parsed `listen` address. */
interface _Where {
  unix?: string;
  host?: string;
  port?: number;
}

function parseListen(s: string): _Where {
  if (typeof s !== 'string' || s.length === 0) throw new VmkitError('ARG_TYPE', 'listen must be unix:<path> or <host>:<port>');
  if (s.startsWith('unix:')) return { unix: s.slice(5) };
  if (s.includes('/')) return { unix: s };
  const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(s);
  if (!m) throw new VmkitError('ARG_RANGE', `listen: ${JSON.stringify(s)} is neither unix:<path> nor <host>:<port>`);
  const port = Number(m[2]);
  if (port > 65535) throw new VmkitError('ARG_RANGE', `listen: port ${port} is over 65535`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
}

/**
 * A running NBD server.
 * @example
 * const s = await serveNbd({ listen: 'unix:/tmp/vm.sock', exports: [{ device }] });
 * console.log(s.uri()); // nbd+unix:///?socket=/tmp/vm.sock
 * await s.close();
 */
export class NbdServer {
  /** Where it listens: `unix:<path>` or `<host>:<port>` (the port picked when 0 was asked). */
  readonly address: string;
  private readonly conns = new Set<_Conn>();
  private closing: Promise<void> | undefined;
  private readonly totals = { accepted: 0, requests: 0, errors: 0, bytesRead: 0, bytesWritten: 0, violations: 0 };

  private readonly srv: import('node:net').Server;
  private readonly tlsOn: boolean;

  /** @internal */
  constructor(srv: import('node:net').Server, address: string, tlsOn: boolean) {
    this.srv = srv;
    this.address = address;
    this.tlsOn = tlsOn;
  }

  /**
   * The NBD URI of an export (the form qemu-img, qemu-io, nbdinfo and nbdcopy take).
   * @example
   * execFileSync('nbdinfo', [server.uri('vm')]);
   */
  uri(exportName = ''): string {
    const scheme = this.tlsOn ? 'nbds' : 'nbd';
    if (this.address.startsWith('unix:')) return `${scheme}+unix:///${encodeURIComponent(exportName)}?socket=${this.address.slice(5)}`;
    const host = this.address.slice(0, this.address.lastIndexOf(':'));
    const port = this.address.slice(this.address.lastIndexOf(':') + 1);
    return `${scheme}://${host.includes(':') ? `[${host}]` : host}:${port}/${encodeURIComponent(exportName)}`;
  }

  /**
   * Counters over all connections.
   * @example
   * console.log(server.stats().requests);
   */
  stats(): NbdServerStats {
    const t = { ...this.totals, connections: this.conns.size };
    for (const c of this.conns) {
      const k = c.session?.counts;
      if (!k) continue;
      t.requests += k.requests;
      t.errors += k.errors;
      t.bytesRead += k.bytesRead;
      t.bytesWritten += k.bytesWritten;
    }
    return t;
  }

  /** @internal */
  track(c: _Conn): void {
    this.totals.accepted++;
    this.conns.add(c);
  }

  /** @internal */
  untrack(c: _Conn, violation: boolean): void {
    if (!this.conns.delete(c)) return;
    const k = c.session?.counts;
    if (k) {
      this.totals.requests += k.requests;
      this.totals.errors += k.errors;
      this.totals.bytesRead += k.bytesRead;
      this.totals.bytesWritten += k.bytesWritten;
    }
    if (violation) this.totals.violations++;
  }

  /** @internal */
  get shuttingDown(): boolean {
    return this.closing !== undefined;
  }

  /**
   * Stops accepting, lets every connection finish the requests it has in
   * flight (their replies go out), then closes the connections. The exported
   * devices stay open (their owner closes them). Idempotent.
   *
   * `holdClients`: the connections stay open, their new requests unread,
   * until it settles (close() resolves once those in flight are answered). An
   * ownership handoff uses it: a client with reconnect (QEMU's NBD client
   * retries at once, then only after 1 s) is let go when the next server
   * already listens, and its unread requests go there.
   * @example
   * await server.close();
   * await device.close();
   */
  close(opts: { holdClients?: Promise<unknown> } = {}): Promise<void> {
    return (this.closing ??= (async () => {
      const stopped = new Promise<void>((r) => this.srv.close(() => r()));
      await Promise.all([...this.conns].map((c) => c.shutdown(opts.holdClients)));
      // net.Server's close callback waits for every connection to end: held ones end later.
      if (!opts.holdClients) await stopped;
    })());
  }
}

/** One client connection. @internal */
class _Conn {
  session: _Session | undefined;
  private stream: Socket;
  private readonly inbox = new _Inbox(1 << 20);
  private done: Promise<void> | undefined;
  private ended!: () => void;
  private readonly finished = new Promise<void>((r) => (this.ended = r));
  private hold: Promise<unknown> | undefined;
  private quiet!: () => void;
  /** Resolves when no request of this connection is in flight any more and none will be taken. */
  private readonly quiesced = new Promise<void>((r) => (this.quiet = r));

  private readonly server: NbdServer;
  private readonly exports: Map<string, _Export>;
  private readonly o: NbdServerOptions;
  private readonly tls: _TlsSetup | undefined;
  private readonly lim: _Limits;

  constructor(sock: Socket, server: NbdServer, exports: Map<string, _Export>, o: NbdServerOptions, tls: _TlsSetup | undefined, lim: _Limits) {
    this.server = server;
    this.exports = exports;
    this.o = o;
    this.tls = tls;
    this.lim = lim;
    this.stream = sock;
    sock.setNoDelay?.(true);
    sock.on('error', () => {});
  }

  private writer(): _Writer {
    return {
      write: (parts) => {
        const s = this.stream;
        if (s.destroyed) return;
        if (parts.length === 1) s.write(parts[0]!);
        else {
          s.cork();
          for (const p of parts) s.write(p);
          s.uncork();
        }
      },
      pending: () => this.stream.writableLength,
      drained: () =>
        new Promise<void>((r) => {
          const s = this.stream;
          if (s.destroyed || s.writableLength === 0) return r();
          const done = (): void => {
            s.off('drain', done);
            s.off('close', done);
            r();
          };
          s.on('drain', done);
          s.on('close', done);
        }),
    };
  }

  run(): Promise<void> {
    return (this.done ??= this.serve());
  }

  private async serve(): Promise<void> {
    const sock = this.stream;
    this.inbox.attach(sock);
    const out = this.writer();
    let violation = false;
    const timer = setTimeout(() => {
      violation = true;
      this.o.onConnectionError?.(new VmkitError('TIMEOUT', `NBD handshake not finished within ${this.o.handshakeTimeoutMs ?? 10_000} ms`));
      this.stream.destroy();
      this.inbox.end(new _Closed('handshake timeout'));
    }, this.o.handshakeTimeoutMs ?? 10_000);
    try {
      const tls = this.tls;
      const neg = await _negotiate({
        inbox: this.inbox,
        write: (p) => out.write(p),
        startTls: tls
          ? async () => {
              this.inbox.detach();
              const raw = this.stream;
              const ts = new tls.mod.TLSSocket(raw, { isServer: true, secureContext: tls.ctx, requestCert: tls.verify, rejectUnauthorized: tls.verify });
              ts.on('error', () => {});
              await new Promise<void>((resolve, reject) => {
                ts.once('secure', () => resolve());
                ts.once('error', (e) => reject(new _ProtocolViolation(`TLS handshake failed: ${e.message}`)));
                ts.once('close', () => reject(new _ProtocolViolation('closed during the TLS handshake')));
              });
              this.stream = ts;
              this.inbox.attach(ts);
            }
          : undefined,
        tlsRequired: tls !== undefined,
        lookup: (name) => this.exports.get(name),
        exports: () => [...this.exports.values()],
        shuttingDown: () => this.server.shuttingDown,
        maxOptionBytes: 64 * 1024,
        maxOptions: 1024,
        blockSize: [512, 4096, this.lim.maxPayload],
      });
      clearTimeout(timer);
      if (!neg) return;
      this.session = new _Session(neg.agreed, this.inbox, out, this.lim);
      if (this.server.shuttingDown) this.session.stop();
      const how = await this.session.run();
      this.quiet();
      // Held open by close({ holdClients }): the client's next requests stay unread until then.
      if (how === 'stopped' && this.hold) await this.hold.catch(() => {});
    } catch (e) {
      if (!(e instanceof _Closed)) {
        violation = true;
        this.o.onConnectionError?.(e as Error);
      }
    } finally {
      clearTimeout(timer);
      this.inbox.detach();
      const s = this.stream;
      // Replies already queued go out before the socket closes (end, not destroy).
      // (A peer that keeps its side open must not hold the server's close: the socket goes once flushed.)
      if (!s.destroyed) {
        if (violation) s.destroy();
        else s.end(() => s.destroy());
      }
      this.server.untrack(this, violation);
      this.quiet();
      this.ended();
    }
  }

  /** Stops taking requests, waits for those in flight, closes (once `hold` settles, when given). */
  async shutdown(hold?: Promise<unknown>): Promise<void> {
    if (this.session) {
      this.hold = hold;
      this.session.stop();
    } else {
      this.stream.destroy();
      this.inbox.end(new _Closed('the server is shutting down'));
    }
    await (hold ? this.quiesced : this.finished);
  }
}

/**
 * Serves block devices over NBD until `close()`.
 *
 * A TCP listener on an address other than loopback needs `tls` (or
 * `insecure: true`): NBD itself authenticates nobody.
 *
 * @example
 * ```ts
 * import { init, openImage, serveNbd } from 'vmkit/disk';
 * await init();
 * const device = await openImage('vm.qcow2');
 * const server = await serveNbd({ listen: 'unix:/tmp/vm.sock', exports: [{ name: 'vm', device }] });
 * // qemu-system-x86_64 -drive driver=nbd,server.type=unix,server.path=/tmp/vm.sock,export=vm …
 * // nbdinfo --map 'nbd+unix:///vm?socket=/tmp/vm.sock'
 * await server.close();
 * await device.close();
 * ```
 * @throws {VmkitError} ARG_TYPE / ARG_RANGE: a bad option (named), or a non-loopback listen address without `tls` or `insecure`; CONFLICT: the address is in use (a live server on a Unix socket; a stale socket file is replaced); IO: it cannot be bound otherwise.
 */
export async function serveNbd(opts: NbdServerOptions): Promise<NbdServer> {
  if (typeof opts !== 'object' || opts === null) throw new VmkitError('ARG_TYPE', 'serveNbd needs options with listen and exports');
  const where = parseListen(opts.listen);
  if (!Array.isArray(opts.exports) || opts.exports.length === 0) throw new VmkitError('ARG_RANGE', 'exports: at least one export is needed');
  const exports = new Map<string, _Export>();
  for (const [i, e] of opts.exports.entries()) {
    if (typeof e !== 'object' || e === null || typeof e.device !== 'object' || e.device === null) throw new VmkitError('ARG_TYPE', `exports[${i}].device must be a BlockDevice`);
    const name = e.name ?? '';
    if (typeof name !== 'string' || new TextEncoder().encode(name).length > 4096 || name.includes('\0')) throw new VmkitError('ARG_RANGE', `exports[${i}].name must be a string of at most 4096 bytes without NUL`);
    if (exports.has(name)) throw new VmkitError('ARG_RANGE', `exports[${i}].name ${JSON.stringify(name)} is given twice`);
    if (e.device.size % 512 !== 0) throw new VmkitError('ARG_RANGE', `exports[${i}]: device size ${e.device.size} is not a multiple of 512`);
    exports.set(name, { name, device: e.device, readOnly: e.readOnly === true || e.device.readOnly, ...(e.description ? { description: e.description } : {}) });
  }
  // A client that names no export gets the only one there is.
  if (!exports.has('') && exports.size === 1) exports.set('', [...exports.values()][0]!);
  const maxPayload = opts.maxPayload ?? DEFAULT_MAX_PAYLOAD;
  if (!Number.isSafeInteger(maxPayload) || maxPayload < 4096 || maxPayload > 256 * 1024 * 1024) throw new VmkitError('ARG_RANGE', `maxPayload must be 4096..256 MiB, got ${maxPayload}`);
  const maxConnections = opts.maxConnections ?? 16;
  if (!Number.isSafeInteger(maxConnections) || maxConnections < 1 || maxConnections > 4096) throw new VmkitError('ARG_RANGE', `maxConnections must be 1..4096, got ${maxConnections}`);
  if (where.host !== undefined && !LOOPBACK.test(where.host) && !opts.tls && !opts.insecure) {
    throw new VmkitError('ARG_RANGE', `listen: ${opts.listen} is not a loopback address: NBD authenticates nobody, so give tls (--tls-creds) or insecure (--insecure)`);
  }
  const net = await nodeModule<Net>('node:net');
  let tls: _TlsSetup | undefined;
  if (opts.tls) {
    const mod = await nodeModule<Tls>('node:tls');
    try {
      const ctx = mod.createSecureContext({ cert: pem(opts.tls.cert), key: pem(opts.tls.key), ...(opts.tls.ca ? { ca: pem(opts.tls.ca) } : {}) });
      tls = { mod, ctx, verify: opts.tls.ca !== undefined };
    } catch (e) {
      throw new VmkitError('ARG_RANGE', `tls: the certificate or key is not usable: ${(e as Error).message}`, { cause: e });
    }
  }
  const lim: _Limits = { maxPayload, inflightBytes: Math.max(64 * 1024 * 1024, 2 * maxPayload), maxInflight: 256, maxExtents: 1 << 16 };
  const srv = net.createServer({ pauseOnConnect: true });
  srv.maxConnections = maxConnections;
  let server!: NbdServer;
  srv.on('connection', (sock: Socket) => {
    const c = new _Conn(sock, server, exports, opts, tls, lim);
    server.track(c);
    void c.run();
  });
  const listen = (): Promise<string> =>
    new Promise<string>((resolve, reject) => {
      const fail = (e: NodeJS.ErrnoException): void => reject(e);
      srv.once('error', fail);
      const done = (): void => {
        srv.off('error', fail);
        const a = srv.address();
        if (where.unix !== undefined) resolve(`unix:${where.unix}`);
        else if (a && typeof a === 'object') resolve(`${a.address}:${a.port}`);
        else resolve(String(a));
      };
      if (where.unix !== undefined) srv.listen(where.unix, done);
      else srv.listen(where.port, where.host, done);
    });
  let address: string | undefined;
  let err: NodeJS.ErrnoException | undefined;
  await listen().then((a) => (address = a), (e: NodeJS.ErrnoException) => (err = e));
  // A socket file left by a server that died: nothing answers on it, so it is ours to replace.
  if (err?.code === 'EADDRINUSE' && where.unix !== undefined && (await _staleSocket(net, where.unix))) {
    await (await nodeModule<typeof import('node:fs/promises')>('node:fs/promises')).unlink(where.unix).catch(() => {});
    err = undefined;
    await listen().then((a) => (address = a), (e: NodeJS.ErrnoException) => (err = e));
  }
  if (err || address === undefined) {
    throw new VmkitError(err?.code === 'EADDRINUSE' ? 'CONFLICT' : 'IO', `listen on ${opts.listen}: ${err?.message ?? 'no address'}`, { cause: err });
  }
  server = new NbdServer(srv, address, tls !== undefined);
  return server;
}

/** True when a Unix socket path exists but nothing accepts on it (ECONNREFUSED). */
async function _staleSocket(net: Net, path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(path);
    c.once('connect', () => {
      c.destroy();
      resolve(false);
    });
    c.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ECONNREFUSED'));
  });
}
