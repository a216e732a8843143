/**
 * The control socket of a serving process: JSON lines over a Unix socket that
 * only its owner can open (mode 0600), through which `vmkit disk
 * snapshot|backup|consolidate --server <socket>` run the live jobs inside the
 * process that serves the disk while the VM keeps writing through NBD.
 *
 * ```
 * client → {"id":1,"op":"snapshot","args":{}}
 * server → {"id":1,"event":"progress","done":0.5}        (zero or more)
 * server → {"id":1,"ok":true,"result":{…}}  or  {"id":1,"ok":false,"error":{"code":"CONFLICT","message":"…"}}
 * ```
 * Node only (sockets). docs/nbd.md, "Live jobs".
 * @module
 */
import { VmkitError, isVmkitError, type ErrorCode } from '../../errors.js';
import { nodeModule } from '../../_node.js';

type Net = typeof import('node:net');

/** Longest request line accepted (bytes). */
const MAX_LINE = 64 * 1024;

/**
 * What a control request asks for.
 * @example
 * const r: ControlRequest = { op: 'backup', args: { target: 'backup.raw' } };
 */
export interface ControlRequest {
  op: string;
  args?: Record<string, unknown>;
}

/**
 * Runs one control request; `progress` reports how far it is (0…1).
 * @example
 * const h: ControlHandler = async (req, progress) => { progress(1); return { done: true }; };
 */
export type ControlHandler = (req: ControlRequest, progress: (done: number, detail?: Record<string, unknown>) => void) => Promise<unknown>;

/**
 * A listening control socket.
 * @example
 * const c = await serveControl('/run/vm.ctl', handler);
 * await c.close();
 */
export interface ControlServer {
  readonly path: string;
  close(): Promise<void>;
}

const net = (): Promise<Net> => nodeModule<Net>('node:net');

/**
 * Listens on `path` (created owner-only: 0600) and runs each request line
 * through `handler`, one at a time per connection.
 *
 * @example
 * ```ts
 * const ctl = await serveControl('/tmp/vm.ctl', async (req) => ({ echo: req.op }));
 * console.log(await callControl('/tmp/vm.ctl', { op: 'ping' })); // { echo: 'ping' }
 * await ctl.close();
 * ```
 */
export async function serveControl(path: string, handler: ControlHandler): Promise<ControlServer> {
  if (typeof path !== 'string' || path.length === 0) throw new VmkitError('ARG_TYPE', 'path must be a socket path');
  const n = await net();
  const conns = new Set<import('node:net').Socket>();
  const srv = n.createServer((sock) => {
    conns.add(sock);
    sock.on('close', () => conns.delete(sock));
    sock.on('error', () => {});
    let buf = '';
    let chain = Promise.resolve();
    const send = (o: unknown): void => {
      if (!sock.destroyed) sock.write(JSON.stringify(o) + '\n');
    };
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      buf += d;
      if (buf.length > MAX_LINE && !buf.includes('\n')) {
        send({ id: null, ok: false, error: { code: 'LIMIT', message: `request line over ${MAX_LINE} bytes` } });
        sock.destroy();
        return;
      }
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        chain = chain.then(() => one(line, send));
      }
    });
  });
  const one = async (line: string, send: (o: unknown) => void): Promise<void> => {
    let id: unknown = null;
    try {
      const msg = JSON.parse(line) as { id?: unknown; op?: unknown; args?: unknown };
      id = msg.id ?? null;
      if (typeof msg !== 'object' || msg === null || typeof msg.op !== 'string') throw new VmkitError('ARG_TYPE', 'a request is {"id":…, "op":"…", "args":{…}}');
      if (msg.args !== undefined && (typeof msg.args !== 'object' || msg.args === null || Array.isArray(msg.args))) throw new VmkitError('ARG_TYPE', 'args must be an object');
      const result = await handler({ op: msg.op, ...(msg.args ? { args: msg.args as Record<string, unknown> } : {}) }, (done, detail) => send({ id, event: 'progress', done, ...detail }));
      send({ id, ok: true, result: result ?? null });
    } catch (e) {
      const code: ErrorCode = isVmkitError(e) ? e.code : e instanceof SyntaxError ? 'ARG_TYPE' : 'IO';
      send({ id, ok: false, error: { code, message: (e as Error)?.message ?? String(e) } });
    }
  };
  // The socket file is created owner-only: the umask is narrowed around the bind (the bind is synchronous).
  const old = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      srv.once('error', (e: NodeJS.ErrnoException) => reject(new VmkitError(e.code === 'EADDRINUSE' ? 'CONFLICT' : 'IO', `control socket ${path}: ${e.message}`, { cause: e, path })));
      srv.listen(path, () => resolve());
    });
  } finally {
    process.umask(old);
  }
  return {
    path,
    close: () =>
      new Promise<void>((r) => {
        for (const c of conns) c.destroy();
        srv.close(() => r());
      }),
  };
}

/**
 * Sends one request to a control socket; resolves to its result, rejects with
 * the `VmkitError` the server answered. `onProgress` sees progress events.
 *
 * @example
 * ```ts
 * const r = await callControl('/tmp/vm.ctl', { op: 'snapshot' }, (p) => console.log(p.done));
 * ```
 */
export async function callControl(path: string, req: ControlRequest, onProgress?: (p: { done: number } & Record<string, unknown>) => void): Promise<unknown> {
  const n = await net();
  return new Promise((resolve, reject) => {
    const sock = n.connect(path);
    let buf = '';
    sock.setEncoding('utf8');
    sock.once('error', (e: NodeJS.ErrnoException) =>
      reject(new VmkitError(e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? 'NOT_FOUND' : 'NETWORK', `control socket ${path}: ${e.message}`, { cause: e, path })),
    );
    sock.once('connect', () => sock.write(JSON.stringify({ id: 1, ...req }) + '\n'));
    sock.on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl)) as { event?: string; ok?: boolean; result?: unknown; error?: { code: ErrorCode; message: string }; done?: number };
        buf = buf.slice(nl + 1);
        if (msg.event === 'progress') onProgress?.(msg as { done: number });
        else {
          sock.end();
          if (msg.ok) resolve(msg.result);
          else reject(new VmkitError(msg.error?.code ?? 'IO', msg.error?.message ?? 'the server answered an error'));
          return;
        }
      }
    });
    sock.once('close', () => reject(new VmkitError('NETWORK', `control socket ${path} closed before answering`, { path })));
  });
}
