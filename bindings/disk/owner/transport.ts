/**
 * Release requests between an opener and the disk's current owner, over a
 * pluggable transport: HTTP(S) (the default: `POST /release`), in-process
 * (one registry per JS realm) and `MessagePort` (browsers, workers). Every
 * transport carries the same proof (auth.ts: an HMAC with the disk's secret
 * over the request and its time); the holder checks it before anything else.
 *
 * ```
 * POST /release   content-type: application/json   (no Origin header)
 *   {"disk":"vm.raw","epoch":7,"requester":{"id":"b","host":"h","pid":2},"time":1796394568391,"nonce":"…","mac":"…"}
 *   200 {"ok":true,"epoch":7,"revision":"…"}            released (record now free at that store revision)
 *   401 {"ok":false,"code":"DENIED","reason":"…"}        no valid proof (also: nothing held here yet)
 *   409 {"ok":false,"code":"CONFLICT","reason":"…"}      authenticated, but another epoch is held
 *   403 {"ok":false,"code":"REFUSED","reason":"…"}       the owner's policy said no
 *   403 DENIED  an Origin header (a web page);  415 DENIED  not application/json
 *   400 CORRUPT malformed;  413 CORRUPT body over 16 KiB;  404 NOT_FOUND  not POST /release
 * ```
 * No answer names the disk, an epoch or the holder.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { validateIdentity } from './record.js';
import type { OwnerIdentity } from './types.js';
import { nodeModule } from '../../_node.js';

/**
 * What an opener asks a holder: give up `disk`, which the opener saw at `epoch`.
 * @example
 * const req: ReleaseRequest = { disk: 'vm.raw', epoch: 7, requester: { id: 'b', host: 'h', pid: 2 } };
 */
export interface ReleaseRequest {
  readonly disk: string;
  readonly epoch: number;
  readonly requester: OwnerIdentity;
  /** The proof (auth.ts `signReleaseRequest`): when it was made, ms since 1970 by the requester's clock. */
  readonly time?: number;
  /** 16 random bytes, base64url: two requests made in the same millisecond differ. */
  readonly nonce?: string;
  /** HMAC-SHA256 with the disk's secret over the request, `time` and `nonce`, base64url. */
  readonly mac?: string;
}

/**
 * A holder's answer. `ok: true` means the holder drained, flushed, closed and
 * wrote the record `free` at `epoch`, as store revision `revision` (the opener
 * may compare-and-swap from it without reading the record again).
 * @example
 * const yes: ReleaseReply = { ok: true, epoch: 7 };
 * const no: ReleaseReply = { ok: false, code: 'REFUSED', reason: 'backup running' };
 */
export type ReleaseReply =
  | { readonly ok: true; readonly epoch: number; readonly revision?: string }
  | { readonly ok: false; readonly code: 'CONFLICT' | 'REFUSED' | 'NOT_FOUND' | 'CORRUPT' | 'DENIED'; readonly reason: string };

/**
 * The owner side: answers one release request.
 * @example
 * const h: ReleaseHandler = async (req) => ({ ok: false, code: 'REFUSED', reason: 'not now' });
 */
export type ReleaseHandler = (req: ReleaseRequest) => Promise<ReleaseReply>;

/**
 * A running release endpoint.
 * @example
 * const srv = await transport.serve('127.0.0.1:0', handler); console.log(srv.endpoint); await srv.close();
 */
export interface ReleaseServer {
  /** What goes into the owner record's `owner.endpoint`. */
  readonly endpoint: string;
  close(): Promise<void>;
}

/**
 * How release requests travel.
 * @example
 * const reply = await httpTransport.request('http://127.0.0.1:7070/release', req, 2000);
 */
export interface ReleaseTransport {
  readonly kind: string;
  /**
   * Sends `req` to the owner at `endpoint`. Rejects with NETWORK when the owner
   * cannot be reached, TIMEOUT when it does not answer within `timeoutMs`.
   */
  request(endpoint: string, req: ReleaseRequest, timeoutMs: number): Promise<ReleaseReply>;
  /** Starts answering requests at `address` (transport-specific; HTTP: `host:port`). */
  serve(address: string | undefined, handler: ReleaseHandler): Promise<ReleaseServer>;
  /** True when this transport can reach `endpoint` (by its scheme). */
  handles(endpoint: string): boolean;
}

/** Largest request or reply body accepted. */
const MAX_BODY = 16 * 1024;

/**
 * Validates a decoded release request; throws CORRUPT / LIMIT.
 *
 * @example
 * ```ts
 * const req = validateReleaseRequest(JSON.parse(body));
 * ```
 */
export function validateReleaseRequest(v: unknown): ReleaseRequest {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new VmkitError('CORRUPT', 'release request must be a JSON object');
  const o = v as Record<string, unknown>;
  if (typeof o.disk !== 'string' || o.disk.length === 0 || o.disk.length > 1024) throw new VmkitError('CORRUPT', 'release request: disk must be a non-empty string');
  if (typeof o.epoch !== 'number' || !Number.isSafeInteger(o.epoch) || o.epoch < 0) throw new VmkitError('CORRUPT', `release request: epoch must be a safe non-negative integer, got ${JSON.stringify(o.epoch)?.slice(0, 40)}`);
  const requester = validateIdentity(o.requester);
  if (o.mac === undefined && o.nonce === undefined && o.time === undefined) return { disk: o.disk, epoch: o.epoch, requester };
  // The proof's fields are only typed and bounded here; the holder verifies them (auth.ts).
  if (typeof o.time !== 'number' || !Number.isSafeInteger(o.time) || o.time < 0) throw new VmkitError('CORRUPT', 'release request: time must be a safe non-negative integer');
  if (typeof o.nonce !== 'string' || o.nonce.length > 64) throw new VmkitError('CORRUPT', 'release request: nonce must be a short string');
  if (typeof o.mac !== 'string' || o.mac.length > 64) throw new VmkitError('CORRUPT', 'release request: mac must be a short string');
  return { disk: o.disk, epoch: o.epoch, requester, time: o.time, nonce: o.nonce, mac: o.mac };
}

function validateReply(v: unknown, endpoint: string): ReleaseReply {
  const o = (typeof v === 'object' && v !== null ? v : {}) as Record<string, unknown>;
  if (o.ok === true && typeof o.epoch === 'number' && Number.isSafeInteger(o.epoch)) {
    if (typeof o.revision === 'string' && o.revision.length > 0 && o.revision.length <= 256) return { ok: true, epoch: o.epoch, revision: o.revision };
    return { ok: true, epoch: o.epoch };
  }
  if (o.ok === false && typeof o.reason === 'string' && (o.code === 'CONFLICT' || o.code === 'REFUSED' || o.code === 'NOT_FOUND' || o.code === 'CORRUPT' || o.code === 'DENIED')) {
    return { ok: false, code: o.code, reason: o.reason.slice(0, 1024) };
  }
  throw new VmkitError('NETWORK', `release reply from ${endpoint} is malformed`);
}

const STATUS: Record<string, number> = { CONFLICT: 409, REFUSED: 403, NOT_FOUND: 404, CORRUPT: 400, DENIED: 401 };

function hostPort(address: string | undefined): { host: string; port: number } {
  const a = address ?? '127.0.0.1:0';
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(a) ?? /^()()(\d{1,5})$/.exec(a);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new VmkitError('ARG_RANGE', `serve address must be host:port or a port, got ${JSON.stringify(address)}`);
  return { host: m[1] || m[2] || '127.0.0.1', port };
}

/** True for addresses only this host can reach: 127.0.0.0/8, ::1 (also IPv4-mapped), `localhost`. */
function isLoopback(host: string): boolean {
  const h = host.toLowerCase().replace(/^::ffff:/, '');
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/**
 * Options of {@link createHttpTransport}.
 * @example
 * const o: HttpTransportOptions = { tls: { cert: await readFile('owner.crt'), key: await readFile('owner.key') } };
 */
export interface HttpTransportOptions {
  /** Serve HTTPS (`node:https`) with this PEM certificate chain and key; endpoints are then `https://…`. */
  readonly tls?: { readonly cert: string | Uint8Array; readonly key: string | Uint8Array };
  /**
   * Extra PEM CA certificates to trust when requesting `https://` endpoints
   * (Node). Without it the opener uses `fetch`, which trusts the system store
   * (and, in Node, `NODE_EXTRA_CA_CERTS`).
   */
  readonly ca?: string | Uint8Array;
  /** Allow plain HTTP on a non-loopback address (release requests and replies then travel in clear). */
  readonly insecure?: boolean;
}

type NodeHttp = typeof import('node:http');
type NodeHttps = typeof import('node:https');


function asText(v: string | Uint8Array): string | Buffer {
  return typeof v === 'string' ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength);
}

function networkError(endpoint: string, e: unknown, timeoutMs: number): VmkitError {
  const name = (e as Error)?.name;
  if (name === 'TimeoutError' || name === 'AbortError') return new VmkitError('TIMEOUT', `release request to ${endpoint}: no answer in ${timeoutMs} ms`, { cause: e });
  const code = (e as { code?: string })?.code ?? (e as { cause?: { code?: string } })?.cause?.code;
  return new VmkitError('NETWORK', `release request to ${endpoint}: ${(e as Error)?.message ?? e}${code ? ` (${code})` : ''}`, { cause: e });
}

// POST with node:https and a CA of the caller's (fetch in Node cannot be given one without undici).
async function postWithCa(endpoint: string, body: string, timeoutMs: number, ca: string | Uint8Array): Promise<{ status: number; text: string }> {
  const https = await nodeModule<NodeHttps>('node:https');
  return new Promise((resolve, reject) => {
    const req = https.request(endpoint, { method: 'POST', ca: asText(ca), headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > MAX_BODY) {
          res.destroy();
          reject(new VmkitError('NETWORK', `release reply from ${endpoint} is over ${MAX_BODY} bytes`));
        } else chunks.push(c);
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', (e) => reject(networkError(endpoint, e, timeoutMs)));
    });
    req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { name: 'TimeoutError' })));
    req.on('error', (e) => reject(networkError(endpoint, e, timeoutMs)));
    req.end(body);
  });
}

/**
 * An HTTP(S) release transport: the owner runs a `node:http` (or, with `tls`,
 * `node:https`) server answering `POST /release`; the opener uses `fetch`
 * (Node and browsers; browsers send an `Origin`, which holders refuse: use
 * the MessagePort transport there). A server on an address other hosts can
 * reach refuses to start without `tls`, unless told `insecure`.
 *
 * The server accepts only `POST /release` with `content-type:
 * application/json` and no `Origin` header (a web page in a local browser can
 * send a `text/plain` POST anywhere without a preflight; a JSON one needs a
 * CORS preflight, which this server never grants), bodies up to 16 KiB, and
 * bounds how long a request may take to arrive.
 *
 * @example
 * ```ts
 * const t = createHttpTransport({ tls: { cert: await readFile('owner.crt'), key: await readFile('owner.key') } });
 * const held = await openOwned('vm.qcow2', { as: 'vm-17', transport: t, serve: '0.0.0.0:7070' });
 * ```
 */
export function createHttpTransport(options: HttpTransportOptions = {}): ReleaseTransport {
  if (typeof options !== 'object' || options === null) throw new VmkitError('ARG_TYPE', 'options must be an object');
  const { tls, ca, insecure = false } = options;
  if (tls !== undefined && (typeof tls !== 'object' || tls === null || tls.cert === undefined || tls.key === undefined)) throw new VmkitError('ARG_TYPE', 'options.tls must be { cert, key } (PEM)');
  return {
    kind: tls ? 'https' : 'http',
    handles: (endpoint) => /^https?:\/\//.test(endpoint),
    async request(endpoint, req, timeoutMs) {
      const body = JSON.stringify(req);
      let status: number;
      let text: string;
      if (ca !== undefined && endpoint.startsWith('https://')) {
        ({ status, text } = await postWithCa(endpoint, body, timeoutMs, ca));
      } else {
        let res: Response;
        try {
          res = await fetch(endpoint, { method: 'POST', headers: { 'content-type': 'application/json' }, body, signal: AbortSignal.timeout(timeoutMs) });
        } catch (e) {
          throw networkError(endpoint, e, timeoutMs);
        }
        status = res.status;
        try {
          text = await res.text();
        } catch (e) {
          throw new VmkitError('NETWORK', `release reply from ${endpoint}: ${(e as Error)?.message ?? e}`, { cause: e });
        }
      }
      if (text.length > MAX_BODY) throw new VmkitError('NETWORK', `release reply from ${endpoint} is ${text.length} bytes`);
      let v: unknown;
      try {
        v = JSON.parse(text);
      } catch {
        throw new VmkitError('NETWORK', `release reply from ${endpoint} (HTTP ${status}) is not JSON`);
      }
      return validateReply(v, endpoint);
    },
    async serve(address, handler) {
      const { host, port } = hostPort(address);
      if (!tls && !insecure && !isLoopback(host)) {
        throw new VmkitError(
          'ARG_RANGE',
          `serve: ${host} is not a loopback address, and release requests would cross the network in clear: give a TLS certificate and key (--tls-cert/--tls-key, or createHttpTransport({ tls })), or accept that with --insecure`,
        );
      }
      const send = (res: import('node:http').ServerResponse, status: number, body: unknown): void => {
        const s = JSON.stringify(body);
        res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s), connection: 'close', 'cache-control': 'no-store' });
        res.end(s);
      };
      const onRequest = (req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse): void => {
        if (req.method !== 'POST' || (req.url ?? '').split('?')[0] !== '/release') {
          send(res, 404, { ok: false, code: 'NOT_FOUND', reason: 'only POST /release is served here' });
          req.resume();
          return;
        }
        // A browser page: it can reach loopback ports, but every request it makes carries an Origin.
        if (req.headers.origin !== undefined) {
          send(res, 403, { ok: false, code: 'DENIED', reason: 'requests from web pages are refused' });
          req.resume();
          return;
        }
        const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
        if (type !== 'application/json') {
          send(res, 415, { ok: false, code: 'DENIED', reason: 'only application/json is accepted' });
          req.resume();
          return;
        }
        const chunks: Buffer[] = [];
        let size = 0;
        req.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_BODY) {
            send(res, 413, { ok: false, code: 'CORRUPT', reason: `body over ${MAX_BODY} bytes` });
            req.destroy();
          } else chunks.push(c);
        });
        req.on('end', () => {
          if (size > MAX_BODY) return;
          let r: ReleaseRequest;
          try {
            r = validateReleaseRequest(JSON.parse(Buffer.concat(chunks).toString('utf8')));
          } catch (e) {
            // The message describes the caller's own input only.
            send(res, 400, { ok: false, code: 'CORRUPT', reason: e instanceof VmkitError ? e.message : 'body is not JSON' });
            return;
          }
          handler(r).then(
            (reply) => send(res, reply.ok ? 200 : (STATUS[reply.code] ?? 500), reply),
            () => send(res, 500, { ok: false, code: 'REFUSED', reason: 'release failed' }),
          );
        });
      };
      const server = tls
        ? (await nodeModule<NodeHttps>('node:https')).createServer({ cert: asText(tls.cert), key: asText(tls.key) }, onRequest)
        : (await nodeModule<NodeHttp>('node:http')).createServer(onRequest);
      // A request must arrive whole within seconds (a slow sender cannot hold sockets open for minutes).
      server.headersTimeout = 5000;
      server.requestTimeout = 10_000;
      server.maxConnections = 256;
      // The server must not keep a process alive that is otherwise done.
      server.unref();
      await new Promise<void>((resolve, reject) => {
        server.once('error', (e) => reject(new VmkitError('NETWORK', `cannot serve release requests on ${host}:${port}: ${e.message}`, { cause: e })));
        server.listen(port, host, () => resolve());
      });
      const addr = server.address() as import('node:net').AddressInfo;
      let h = addr.family === 'IPv6' || addr.family === (6 as unknown as string) ? `[${addr.address}]` : addr.address;
      // Bound to every interface: advertise this host's name, which other hosts can resolve
      // (0.0.0.0 in the record would send them to themselves).
      if (addr.address === '0.0.0.0' || addr.address === '::') h = (await nodeModule<typeof import('node:os')>('node:os')).hostname();
      return {
        endpoint: `${tls ? 'https' : 'http'}://${h}:${addr.port}/release`,
        close: () =>
          new Promise<void>((resolve) => {
            server.close(() => resolve());
            server.closeAllConnections?.();
          }),
      };
    },
  };
}

/**
 * Plain HTTP on loopback addresses (the default transport): `createHttpTransport()`.
 * Other hosts need {@link createHttpTransport} with `tls` (or `insecure`).
 *
 * @example
 * ```ts
 * const srv = await httpTransport.serve('127.0.0.1:0', handler);
 * const reply = await httpTransport.request(srv.endpoint, await signReleaseRequest({ disk, epoch, requester }, secret, Date.now()), 2000);
 * ```
 */
export const httpTransport: ReleaseTransport = createHttpTransport();

const registry = new Map<string, ReleaseHandler>();
let inprocSeq = 0;

/**
 * In-process: handlers in a registry of this JS realm, endpoints `inproc:<name>`.
 * For tests, tours and several disks in one process.
 *
 * @example
 * ```ts
 * const d = await openOwned('vm.raw', { as: 'a', transport: inProcessTransport });
 * ```
 */
export const inProcessTransport: ReleaseTransport = {
  kind: 'inproc',
  handles: (endpoint) => endpoint.startsWith('inproc:'),
  async request(endpoint, req, timeoutMs) {
    const h = registry.get(endpoint);
    if (!h) throw new VmkitError('NETWORK', `release request to ${endpoint}: nobody serves it in this process`);
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      return await Promise.race([
        h(structuredClone(req)),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new VmkitError('TIMEOUT', `release request to ${endpoint}: no answer in ${timeoutMs} ms`)), timeoutMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  },
  async serve(address, handler) {
    const endpoint = `inproc:${address ?? `owner-${++inprocSeq}`}`;
    if (registry.has(endpoint)) throw new VmkitError('CONFLICT', `${endpoint} is already served`);
    registry.set(endpoint, handler);
    return {
      endpoint,
      close: async () => {
        if (registry.get(endpoint) === handler) registry.delete(endpoint);
      },
    };
  },
};

/**
 * The part of `MessagePort` (browser or `node:worker_threads`) the transport uses.
 * @example
 * const { port1 }: { port1: MessagePortLike } = new MessageChannel();
 */
export interface MessagePortLike {
  postMessage(message: unknown): void;
  addEventListener(type: 'message', listener: (ev: { data: unknown }) => void): void;
  removeEventListener(type: 'message', listener: (ev: { data: unknown }) => void): void;
  start?(): void;
}

/**
 * Release requests over one `MessagePort` (a worker, an iframe, another tab
 * through a `MessageChannel`). Both ends construct a transport on their end of
 * the channel; endpoints are `port:<name>`, so several disks share one port.
 *
 * @example
 * ```ts
 * const { port1, port2 } = new MessageChannel();
 * const ownerSide = new MessagePortTransport(port1);   // serves
 * const openerSide = new MessagePortTransport(port2);  // requests
 * ```
 */
export class MessagePortTransport implements ReleaseTransport {
  readonly kind: string = 'port';
  private readonly port: MessagePortLike;
  private readonly handlers = new Map<string, ReleaseHandler>();
  private readonly pending = new Map<number, (reply: unknown) => void>();
  private seq = 0;
  private listening = false;

  constructor(port: MessagePortLike) {
    this.port = port;
  }

  private listen(): void {
    if (this.listening) return;
    this.listening = true;
    this.port.addEventListener('message', (ev) => {
      const m = ev.data as { t?: string; id?: number; endpoint?: string; req?: unknown; reply?: unknown };
      if (m?.t === 'vmkit-release-reply' && typeof m.id === 'number') {
        this.pending.get(m.id)?.(m.reply);
        this.pending.delete(m.id);
      } else if (m?.t === 'vmkit-release' && typeof m.id === 'number' && typeof m.endpoint === 'string') {
        const h = this.handlers.get(m.endpoint);
        const answer = (reply: ReleaseReply): void => this.port.postMessage({ t: 'vmkit-release-reply', id: m.id, reply });
        if (!h) return answer({ ok: false, code: 'NOT_FOUND', reason: `${m.endpoint} is not served on this port` });
        let req: ReleaseRequest;
        try {
          req = validateReleaseRequest(m.req);
        } catch (e) {
          return answer({ ok: false, code: 'CORRUPT', reason: (e as Error).message });
        }
        h(req).then(answer, () => answer({ ok: false, code: 'REFUSED', reason: 'release failed' }));
      }
    });
    this.port.start?.();
  }

  /**
   * True for `port:` endpoints.
   *
   * @example
   * ```ts
   * t.handles('port:vm-1'); // true
   * t.handles('http://10.0.0.2:7070/release'); // false
   * ```
   */
  handles(endpoint: string): boolean {
    return endpoint.startsWith('port:');
  }

  /**
   * Sends a release request to the endpoint on the other end of the port; TIMEOUT after `timeoutMs`.
   *
   * @example
   * ```ts
   * const reply = await openerSide.request('port:vm-1', { disk: 'vm.qcow2', epoch: 3, requester: me }, 5000);
   * if (!reply.ok) console.log(reply.code, reply.reason); // TIMEOUT throws instead
   * ```
   */
  async request(endpoint: string, req: ReleaseRequest, timeoutMs: number): Promise<ReleaseReply> {
    this.listen();
    const id = ++this.seq;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      const raw = await new Promise<unknown>((resolve, reject) => {
        this.pending.set(id, resolve);
        timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new VmkitError('TIMEOUT', `release request to ${endpoint}: no answer in ${timeoutMs} ms`));
        }, timeoutMs);
        this.port.postMessage({ t: 'vmkit-release', id, endpoint, req });
      });
      return validateReply(raw, endpoint);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Answers release requests for `port:<address>` (a fresh name when undefined); CONFLICT if already served.
   *
   * @example
   * ```ts
   * const server = await ownerSide.serve('vm-1', async () => ({ ok: false, code: 'REFUSED', reason: 'backup running' }));
   * // server.endpoint === 'port:vm-1'
   * await server.close();
   * ```
   */
  async serve(address: string | undefined, handler: ReleaseHandler): Promise<ReleaseServer> {
    this.listen();
    const endpoint = `port:${address ?? `owner-${++this.seq}`}`;
    if (this.handlers.has(endpoint)) throw new VmkitError('CONFLICT', `${endpoint} is already served`);
    this.handlers.set(endpoint, handler);
    return {
      endpoint,
      close: async () => {
        if (this.handlers.get(endpoint) === handler) this.handlers.delete(endpoint);
      },
    };
  }
}
