/**
 * Release requests between an opener and the disk's current owner, over a
 * pluggable transport: HTTP (the default: `POST /release`), in-process (one
 * registry per JS realm) and `MessagePort` (browsers, workers).
 *
 * ```
 * POST /release  {"disk":"vm.raw","epoch":7,"requester":{"id":"b","host":"h","pid":2}}
 *   200 {"ok":true,"epoch":7,"revision":"…"}                    released (record now free at that store revision)
 *   409 {"ok":false,"code":"CONFLICT","reason":"holder has epoch 8"}   wrong epoch
 *   403 {"ok":false,"code":"REFUSED","reason":"…"}              the owner's policy said no
 *   404 {"ok":false,"code":"NOT_FOUND","reason":"…"}            this process does not hold that disk
 * ```
 * @module
 */
import { VmkitError } from '../../errors.js';
import { validateIdentity } from './record.js';
import type { OwnerIdentity } from './types.js';

/**
 * What an opener asks a holder: give up `disk`, which the opener saw at `epoch`.
 * @example
 * const req: ReleaseRequest = { disk: 'vm.raw', epoch: 7, requester: { id: 'b', host: 'h', pid: 2 } };
 */
export interface ReleaseRequest {
  readonly disk: string;
  readonly epoch: number;
  readonly requester: OwnerIdentity;
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
  | { readonly ok: false; readonly code: 'CONFLICT' | 'REFUSED' | 'NOT_FOUND' | 'CORRUPT'; readonly reason: string };

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
  return { disk: o.disk, epoch: o.epoch, requester: validateIdentity(o.requester) };
}

function validateReply(v: unknown, endpoint: string): ReleaseReply {
  const o = (typeof v === 'object' && v !== null ? v : {}) as Record<string, unknown>;
  if (o.ok === true && typeof o.epoch === 'number' && Number.isSafeInteger(o.epoch)) {
    if (typeof o.revision === 'string' && o.revision.length > 0 && o.revision.length <= 256) return { ok: true, epoch: o.epoch, revision: o.revision };
    return { ok: true, epoch: o.epoch };
  }
  if (o.ok === false && typeof o.reason === 'string' && (o.code === 'CONFLICT' || o.code === 'REFUSED' || o.code === 'NOT_FOUND' || o.code === 'CORRUPT')) {
    return { ok: false, code: o.code, reason: o.reason.slice(0, 1024) };
  }
  throw new VmkitError('NETWORK', `release reply from ${endpoint} is malformed`);
}

const STATUS: Record<string, number> = { CONFLICT: 409, REFUSED: 403, NOT_FOUND: 404, CORRUPT: 400 };

function hostPort(address: string | undefined): { host: string; port: number } {
  const a = address ?? '127.0.0.1:0';
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(a) ?? /^()()(\d{1,5})$/.exec(a);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new VmkitError('ARG_RANGE', `serve address must be host:port or a port, got ${JSON.stringify(address)}`);
  return { host: m[1] || m[2] || '127.0.0.1', port };
}

/**
 * HTTP: the owner runs a `node:http` server answering `POST /release`; the
 * opener uses `fetch` (Node and browsers).
 *
 * @example
 * ```ts
 * const srv = await httpTransport.serve('127.0.0.1:0', handler);
 * const reply = await httpTransport.request(srv.endpoint, { disk, epoch, requester }, 2000);
 * ```
 */
export const httpTransport: ReleaseTransport = {
  kind: 'http',
  handles: (endpoint) => /^https?:\/\//.test(endpoint),
  async request(endpoint, req, timeoutMs) {
    let res: Response;
    try {
      res = await fetch(endpoint, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(req),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (e) {
      const name = (e as Error)?.name;
      if (name === 'TimeoutError' || name === 'AbortError') throw new VmkitError('TIMEOUT', `release request to ${endpoint}: no answer in ${timeoutMs} ms`, { cause: e });
      throw new VmkitError('NETWORK', `release request to ${endpoint}: ${(e as Error)?.message ?? e}${(e as { cause?: { code?: string } })?.cause?.code ? ` (${(e as { cause: { code: string } }).cause.code})` : ''}`, { cause: e });
    }
    let text: string;
    try {
      text = await res.text();
    } catch (e) {
      throw new VmkitError('NETWORK', `release reply from ${endpoint}: ${(e as Error)?.message ?? e}`, { cause: e });
    }
    if (text.length > MAX_BODY) throw new VmkitError('NETWORK', `release reply from ${endpoint} is ${text.length} bytes`);
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch {
      throw new VmkitError('NETWORK', `release reply from ${endpoint} (HTTP ${res.status}) is not JSON`);
    }
    return validateReply(v, endpoint);
  },
  async serve(address, handler) {
    const { host, port } = hostPort(address);
    const httpName = 'node:http';
    const http = (await import(/* @vite-ignore */ httpName)) as typeof import('node:http');
    const send = (res: import('node:http').ServerResponse, status: number, body: unknown): void => {
      const s = JSON.stringify(body);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s), connection: 'close' });
      res.end(s);
    };
    const server = http.createServer((req, res) => {
      if (req.method !== 'POST' || (req.url ?? '').split('?')[0] !== '/release') {
        send(res, 404, { ok: false, code: 'NOT_FOUND', reason: 'only POST /release is served here' });
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
          send(res, 400, { ok: false, code: 'CORRUPT', reason: (e as Error)?.message ?? 'bad request' });
          return;
        }
        handler(r).then(
          (reply) => send(res, reply.ok ? 200 : (STATUS[reply.code] ?? 500), reply),
          (e: unknown) => send(res, 500, { ok: false, code: 'REFUSED', reason: `release failed: ${(e as Error)?.message ?? e}` }),
        );
      });
    });
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
    if (addr.address === '0.0.0.0' || addr.address === '::') {
      const osName = 'node:os';
      h = ((await import(/* @vite-ignore */ osName)) as typeof import('node:os')).hostname();
    }
    return {
      endpoint: `http://${h}:${addr.port}/release`,
      close: () =>
        new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections?.();
        }),
    };
  },
};

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
        h(req).then(answer, (e: unknown) => answer({ ok: false, code: 'REFUSED', reason: `release failed: ${(e as Error)?.message ?? e}` }));
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
