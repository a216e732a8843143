/**
 * HTTP plumbing of the attestation service: bounded request bodies, JSON
 * answers, and the mapping from {@link VmkitError} codes to HTTP statuses.
 * @module
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { VmkitError, type ErrorCode } from '../../errors.js';

/**
 * HTTP status for an error code: the client's fault → 4xx, ours or an
 * upstream's → 5xx.
 * @example `statusOf(new VmkitError('LIMIT', 'too big')) // 413`
 */
export function statusOf(e: unknown): number {
  if (!(e instanceof VmkitError)) return 500;
  // An error that knows its answer (a client over its nonce quota: 429).
  const own = (e as { httpStatus?: unknown }).httpStatus;
  if (typeof own === 'number' && own >= 400 && own <= 599) return own;
  // A refused nonce is an authentication failure of the request.
  if (e.code === 'REFUSED' && typeof (e as { reason?: unknown }).reason === 'string') return 401;
  const map: Partial<Record<ErrorCode, number>> = {
    ARG_TYPE: 400,
    ARG_RANGE: 400,
    CORRUPT: 400,
    LIMIT: 413,
    UNSUPPORTED: 415,
    REFUSED: 403,
    INTEGRITY: 403,
    NOT_FOUND: 404,
    TIMEOUT: 408,
    CONFLICT: 409,
    INVALID_STATE: 503,
    NETWORK: 502,
    CANCELLED: 499,
  };
  return map[e.code] ?? 500;
}

/**
 * Reads a request body of at most `max` bytes. A Content-Length above `max`
 * is refused before reading; a body that grows past it while streaming is
 * refused as soon as it does (LIMIT), so memory stays bounded by `max`.
 * `onChunk` sees each chunk as it arrives (streamed parsers); when it returns
 * `'drop'` the body is no longer kept (it went elsewhere) and resolves empty.
 * @example `const body = await readBody(req, 1 << 20);`
 */
export function readBody(req: IncomingMessage, max: number, onChunk?: (c: Buffer) => void | 'drop' | undefined): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = req.headers['content-length'];
    if (declared !== undefined && !(Number(declared) <= max)) {
      reject(new VmkitError('LIMIT', `request body of ${declared} bytes exceeds the limit of ${max}`));
      return;
    }
    const chunks: Buffer[] = [];
    let n = 0;
    let kept = 0;
    let done = false;
    const fail = (e: VmkitError): void => {
      if (done) return;
      done = true;
      req.removeAllListeners('data');
      req.resume(); // drain what is in flight; the handler closes the connection
      reject(e);
    };
    req.on('data', (c: Buffer) => {
      if (done) return;
      n += c.length;
      if (n > max) return fail(new VmkitError('LIMIT', `request body exceeds the limit of ${max} bytes`));
      if (onChunk) {
        try {
          // 'drop': the consumer took the chunk (streamed elsewhere); it is not kept here.
          if (onChunk(c) === 'drop') {
            kept = -1;
            chunks.length = 0;
            return;
          }
        } catch (e) {
          return fail(e instanceof VmkitError ? e : new VmkitError('CORRUPT', (e as Error).message, { cause: e }));
        }
      }
      if (kept >= 0) {
        chunks.push(c);
        kept += c.length;
      }
    });
    req.on('end', () => {
      if (done) return;
      done = true;
      resolve(kept < 0 ? Buffer.alloc(0) : Buffer.concat(chunks, kept));
    });
    req.on('error', (e) => fail(new VmkitError('NETWORK', `request body: ${e.message}`, { cause: e })));
    req.on('aborted', () => fail(new VmkitError('NETWORK', 'request aborted by the client')));
  });
}

/**
 * The key a client's nonce quota is counted under: its IPv4 address, or the
 * /64 of its IPv6 address (one host gets a whole /64, so counting single IPv6
 * addresses would let it take as many quotas as it likes).
 * @example `clientKey('2001:db8::1') // '2001:db8:0:0::/64'`
 */
export function clientKey(address: string | undefined): string {
  if (!address) return '?';
  const v4 = /^(?:::ffff:)?(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (v4) return v4[1]!;
  const bare = address.split('%')[0]!.toLowerCase();
  const [head = '', tail] = bare.split('::');
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(Math.max(0, 8 - h.length - t.length)).fill('0'), ...t];
  return `${groups.slice(0, 4).map((g) => g.replace(/^0+(?=.)/, '')).join(':')}::/64`;
}

/**
 * Sends `value` as JSON with `status`.
 * @example `sendJson(res, 200, { ok: true });`
 */
export function sendJson(res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void {
  const body = JSON.stringify(value);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(body);
}

/**
 * Sends an error as `{ error: { code, message } }` with the status
 * {@link statusOf} gives; `close` also ends the connection (after a body
 * that was not read to its end).
 * @example `sendError(res, new VmkitError('ARG_RANGE', 'bad digest'));`
 */
export function sendError(res: ServerResponse, e: unknown, close: boolean = false): number {
  const err = e instanceof VmkitError ? e : new VmkitError('IO', 'internal error', { cause: e });
  const status = statusOf(err);
  if (res.headersSent) {
    res.destroy();
    return status;
  }
  const headers: Record<string, string> = {};
  if (close) headers['connection'] = 'close';
  if (status === 503 || status === 429) headers['retry-after'] = '1';
  const reason = (err as { reason?: unknown }).reason;
  const body: { code: string; message: string; reason?: string } = { code: err.code, message: status >= 500 && status !== 502 && status !== 503 ? 'internal error' : err.message };
  if (typeof reason === 'string') body.reason = reason;
  sendJson(res, status, { error: body }, headers);
  return status;
}
