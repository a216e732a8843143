/**
 * The remote reader's transport for `http:` URLs in Node: HTTP/1.1 GETs on
 * keep-alive `node:net` sockets that read into one 512 KiB buffer each
 * (`onread`), and a response parser of its own (status line, headers,
 * `Content-Length`, chunked, or to the close).
 *
 * Why: Node's sockets otherwise hand over a new 64 KiB Buffer per read and
 * node:http parses and streams each; receiving a 45 MiB checkpoint cost
 * 50–100 ms of CPU that way and 15–20 ms into a reused 512 KiB–1 MiB buffer
 * (curl: ~20 ms), on a restore whose every millisecond is on one core.
 * `https:` stays on node:https.
 *
 * ```
 *  GET /vm.ckpt HTTP/1.1 ─▶  socket (onread: 512 KiB buffer, reused)
 *                            head: status, headers (≤ 64 KiB)
 *                            body: Content-Length | chunked | to the close
 *                              └─▶ readInto(dst): copied from the buffer into dst as it arrives
 *  a body read to its end: the socket goes back to the pool (unless Connection: close)
 *  cancelled: a small rest (≤ 64 KiB) is drained, a larger one closes the socket
 * ```
 * @module
 */
import { VmkitError } from '../../errors.js';

/**
 * The body of a transport response: a stream reader as fetch's, and
 * `readInto`, which copies the body into `dst` as it arrives.
 */
export interface _NodeBody {
  getReader(): { read(): Promise<{ done: boolean; value: Uint8Array }>; cancel(): Promise<void> };
  cancel(): Promise<void>;
  /**
   * Skips `skip` bytes, then fills `dst`; answers the bytes copied and
   * whether more followed (with `exact`, read to the end to know; without,
   * the rest is dropped and the connection closed).
   */
  readInto(dst: Uint8Array, skip: number, exact: boolean): Promise<{ got: number; longer: boolean }>;
}

type Net = typeof import('node:net');
type Socket = import('node:net').Socket;

const READ_BUFFER = 512 << 10;
const MAX_HEAD = 64 << 10;
const DRAIN_MAX = 64 << 10;
const IDLE_MAX = 16;

let net: Net | undefined;
/**
 * A body's pieces copied into `dst` after its first `skip` bytes, for both Node
 * transports (this one and _http-node's node:http one). `push` says when the
 * reader may stop: `dst` is full and, for an `exact` read, a byte past it was
 * seen (`longer`), so a longer answer is told from an exact one.
 * @internal
 */
export class _BodyFill {
  got = 0;
  longer = false;
  private skipped = 0;
  private readonly dst: Uint8Array;
  private readonly skip: number;
  private readonly exact: boolean;
  constructor(dst: Uint8Array, skip: number, exact: boolean) {
    this.dst = dst;
    this.skip = skip;
    this.exact = exact;
  }

  push(piece: Uint8Array): boolean {
    let v = piece;
    if (this.skipped < this.skip) {
      const n = Math.min(this.skip - this.skipped, v.length);
      this.skipped += n;
      v = v.subarray(n);
    }
    const n = Math.min(v.length, this.dst.length - this.got);
    if (n > 0) this.dst.set(n === v.length ? v : v.subarray(0, n), this.got);
    this.got += n;
    if (n < v.length) this.longer = true;
    return this.got === this.dst.length && (!this.exact || this.longer);
  }
}

const idle = new Map<string, Conn[]>();

/** Where a response's body bytes go while it is read. */
interface Sink {
  data(piece: Uint8Array): void;
  end(): void;
  fail(e: Error): void;
}

/** One connection: its socket, its read buffer, and what its bytes feed now. */
class Conn {
  readonly key: string;
  readonly sock: Socket;
  /** The parser of the response in progress (undefined while idle). */
  feed: ((b: Uint8Array) => void) | undefined;
  onEnd: (() => void) | undefined;
  onFail: ((e: Error) => void) | undefined;
  dead = false;

  constructor(key: string, host: string, port: number) {
    this.key = key;
    const buffer = Buffer.allocUnsafe(READ_BUFFER);
    this.sock = net!.connect({
      host,
      port,
      onread: {
        buffer,
        callback: (n: number, b: Uint8Array): boolean => {
          // `b` is reused after this returns: the feed copies what it keeps.
          if (this.feed) this.feed(b.subarray(0, n));
          else this.sock.destroy(); // bytes on an idle connection: not a state to reuse
          return true;
        },
      },
    } as import('node:net').NetConnectOpts);
    this.sock.setNoDelay(true);
    this.sock.on('end', () => {
      this.dead = true;
      this.onEnd?.();
    });
    this.sock.on('error', (e) => {
      this.dead = true;
      this.onFail?.(e);
    });
    this.sock.on('close', () => {
      this.dead = true;
      this.onFail?.(new Error('connection closed'));
      const list = idle.get(this.key);
      const i = list ? list.indexOf(this) : -1;
      if (i >= 0) list!.splice(i, 1);
    });
  }

  connected(): Promise<void> {
    if (!this.sock.connecting) return this.dead ? Promise.reject(new Error('connection closed')) : Promise.resolve();
    return new Promise((resolve, reject) => {
      this.sock.once('connect', () => resolve());
      this.onFail = reject;
    });
  }

  /** Back to the pool (unref'd: an idle connection keeps no process alive). */
  release(reusable: boolean): void {
    this.feed = undefined;
    this.onEnd = undefined;
    this.onFail = undefined;
    if (!reusable || this.dead) {
      this.sock.destroy();
      return;
    }
    // Reading again (a response's bytes that waited for a reader paused it): a close while idle is seen.
    this.sock.resume();
    this.sock.unref();
    let list = idle.get(this.key);
    if (!list) idle.set(this.key, (list = []));
    if (list.length >= IDLE_MAX) this.sock.destroy();
    else list.push(this);
  }
}

/** A header value or name that could split the request (CR, LF, NUL) is refused. */
const UNSAFE = /[\r\n\0]/;

/**
 * GET `url` (an `http:` URL) with `headers`; resolves when the response's
 * head has arrived. Network failures reject with a plain Error (the caller
 * retries), an unsafe header with ARG_RANGE.
 */
export async function _rawGet(url: URL, headers: Record<string, string>, signal: AbortSignal): Promise<Response> {
  net ??= (await import(/* @vite-ignore */ ['node:net'][0]!)) as Net;
  let req = `GET ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\n`;
  for (const [k, v] of Object.entries(headers)) {
    if (UNSAFE.test(k) || UNSAFE.test(String(v)) || k.toLowerCase() === 'host' || k.toLowerCase() === 'connection') {
      if (UNSAFE.test(k) || UNSAFE.test(String(v))) throw new VmkitError('ARG_RANGE', `headers: ${JSON.stringify(k)} has a CR, LF or NUL`);
      continue;
    }
    req += `${k}: ${v}\r\n`;
  }
  req += 'Connection: keep-alive\r\n\r\n';
  if (signal.aborted) throw new Error('aborted');
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const port = Number(url.port || 80);
  const key = `${host}:${port}`;
  const list = idle.get(key);
  let conn: Conn | undefined;
  while (list?.length) {
    const c = list.pop()!;
    if (!c.dead) {
      conn = c;
      break;
    }
  }
  const reused = conn !== undefined;
  conn ??= new Conn(key, host, port);
  const c = conn;
  c.sock.ref();
  const onAbort = (): void => {
    c.dead = true;
    c.sock.destroy();
  };
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    await c.connected();
  } catch (e) {
    signal.removeEventListener('abort', onAbort);
    c.sock.destroy();
    throw e;
  }
  const answer = new Promise<Response>((resolve, reject) => {
    let headBuf: Buffer | undefined;
    let settled = false;
    let heard = false;
    // The body: framing, progress, and where its bytes go.
    let mode: 'length' | 'chunked' | 'close' | 'none' = 'none';
    let left = 0;
    let ended = false;
    let reusable = true;
    let sink: Sink | undefined;
    let failed: Error | undefined;
    const pending: Buffer[] = [];
    // Chunked decoding: 'size' line, 'data' (left bytes), 'crlf' after data, 'trailer' lines.
    let cstate: 'size' | 'data' | 'crlf' | 'trailer' = 'size';
    let line = '';

    const finish = (): void => {
      if (ended) return;
      ended = true;
      signal.removeEventListener('abort', onAbort);
      c.release(reusable && mode !== 'close');
      sink?.end();
    };
    const fail = (e: Error): void => {
      if (ended) return;
      ended = true;
      failed = e;
      signal.removeEventListener('abort', onAbort);
      c.release(false);
      if (!settled) {
        settled = true;
        reject(e);
      }
      sink?.fail(e);
    };
    const deliver = (piece: Uint8Array): void => {
      if (piece.length === 0) return;
      if (sink) sink.data(piece);
      else {
        // Nobody reads yet: kept (a copy: the socket's buffer is reused) and the socket paused.
        pending.push(Buffer.from(piece));
        c.sock.pause();
      }
    };
    const body = (b: Uint8Array): void => {
      if (mode === 'length') {
        const n = Math.min(b.length, left);
        if (n < b.length) reusable = false; // bytes past the body: the connection is not in a known state
        left -= n;
        deliver(b.subarray(0, n));
        if (left === 0) finish();
        return;
      }
      if (mode === 'close') return deliver(b);
      // chunked
      let i = 0;
      while (i < b.length && !ended) {
        if (cstate === 'data') {
          const n = Math.min(left, b.length - i);
          deliver(b.subarray(i, i + n));
          i += n;
          left -= n;
          if (left === 0) {
            cstate = 'crlf';
            line = '';
          }
          continue;
        }
        const ch = b[i++]!;
        if (ch !== 0x0a) {
          if (ch !== 0x0d) line += String.fromCharCode(ch);
          if (line.length > 4096) return fail(new Error('chunked encoding: a line past 4 KiB'));
          continue;
        }
        if (cstate === 'crlf') {
          if (line !== '') return fail(new Error('chunked encoding: data not followed by CRLF'));
          cstate = 'size';
        } else if (cstate === 'size') {
          const m = /^([0-9a-fA-F]{1,12})(;.*)?$/.exec(line.trim());
          if (!m) return fail(new Error(`chunked encoding: bad chunk size ${JSON.stringify(line.slice(0, 40))}`));
          left = parseInt(m[1]!, 16);
          cstate = left === 0 ? 'trailer' : 'data';
        } else if (line === '') {
          if (i < b.length) reusable = false;
          finish();
        }
        line = '';
      }
    };
    const head = (b: Uint8Array): void => {
      heard = true;
      const all = headBuf ? Buffer.concat([headBuf, b]) : Buffer.from(b);
      const at = all.indexOf('\r\n\r\n');
      if (at < 0 || at > MAX_HEAD) {
        if (at > MAX_HEAD || all.length > MAX_HEAD) return fail(new Error(`response head past ${MAX_HEAD} bytes`));
        headBuf = all;
        return;
      }
      headBuf = undefined;
      const lines = all.subarray(0, at).toString('latin1').split('\r\n');
      const m = /^HTTP\/1\.([01]) (\d{3})(?: (.*))?$/.exec(lines[0]!);
      if (!m) return fail(new Error(`not an HTTP/1.x response: ${JSON.stringify(lines[0]!.slice(0, 60))}`));
      const status = Number(m[2]);
      const rest = all.subarray(at + 4);
      if (status >= 100 && status < 200) {
        // An interim response (100 Continue): the real head follows.
        if (rest.length) head(rest);
        return;
      }
      const hs = new Map<string, string>();
      for (const l of lines.slice(1)) {
        const k = l.indexOf(':');
        if (k <= 0) return fail(new Error(`bad header line ${JSON.stringify(l.slice(0, 60))}`));
        const name = l.slice(0, k).trim().toLowerCase();
        const v = l.slice(k + 1).trim();
        hs.set(name, hs.has(name) ? `${hs.get(name)}, ${v}` : v);
      }
      const conn = (hs.get('connection') ?? '').toLowerCase();
      if (conn.includes('close') || (m[1] === '0' && !conn.includes('keep-alive'))) reusable = false;
      const te = (hs.get('transfer-encoding') ?? '').toLowerCase();
      const cl = hs.get('content-length');
      if (status === 204 || status === 304) mode = 'length';
      else if (te !== '' && te !== 'identity') {
        if (!/(^|,)\s*chunked\s*$/.test(te)) return fail(new Error(`unsupported Transfer-Encoding ${te}`));
        mode = 'chunked';
      } else if (cl !== undefined) {
        if (!/^\d{1,15}$/.test(cl)) return fail(new Error(`bad Content-Length ${JSON.stringify(cl)}`));
        mode = 'length';
        left = Number(cl);
      } else mode = 'close';
      c.feed = body;
      settled = true;
      const readBody = (dst: Uint8Array, skip: number, exact: boolean): Promise<{ got: number; longer: boolean }> =>
        new Promise((res, rej) => {
          const fill = new _BodyFill(dst, skip, exact);
          let done = false;
          const stop = (): void => {
            done = true;
            sink = undefined;
            res({ got: fill.got, longer: fill.longer });
          };
          sink = {
            data(piece) {
              if (done) return;
              if (fill.push(piece) && !ended) {
                // Enough (or too much): the rest is not read, the connection goes.
                stop();
                fail(new Error('body not read to its end'));
              }
            },
            end() {
              if (!done) stop();
            },
            fail(e) {
              if (done) return;
              done = true;
              sink = undefined;
              rej(e);
            },
          };
          for (const p of pending.splice(0)) sink?.data(p);
          if (ended) {
            if (failed && !done) sink?.fail(failed);
            else sink?.end();
          } else c.sock.resume();
        });
      const cancel = async (): Promise<void> => {
        if (ended) return;
        pending.length = 0;
        if (mode === 'length' && left <= DRAIN_MAX) {
          // A small rest (an error page) is read and dropped: the connection is kept. Unref'd: a server
          // that never sends the rest must not keep the process alive.
          sink = { data() {}, end() {}, fail() {} };
          c.sock.unref();
          c.sock.resume();
          return;
        }
        fail(new Error('cancelled'));
      };
      const reader = {
        async read(): Promise<{ done: boolean; value: Uint8Array }> {
          if (pending.length) return { done: false, value: pending.shift()! };
          if (ended) {
            if (failed) throw failed;
            return { done: true, value: new Uint8Array(0) };
          }
          return new Promise((res, rej) => {
            sink = {
              data(piece) {
                sink = undefined;
                c.sock.pause();
                res({ done: false, value: Buffer.from(piece) });
              },
              end() {
                sink = undefined;
                res({ done: true, value: new Uint8Array(0) });
              },
              fail(e) {
                sink = undefined;
                rej(e);
              },
            };
            c.sock.resume();
          });
        },
        cancel,
      };
      const bodyObj: _NodeBody = { getReader: () => reader, cancel, readInto: readBody };
      resolve({
        status,
        statusText: m[3] ?? '',
        headers: { get: (name: string): string | null => hs.get(name.toLowerCase()) ?? null },
        body: bodyObj,
      } as unknown as Response);
      if (mode === 'length' && left === 0) finish();
      if (rest.length) body(rest);
    };
    c.feed = head;
    // A kept-alive connection closed before any byte of the answer is an error like any other (the
    // caller retries, with backoff): sending the request again here would also repeat it against a
    // server that drops it on purpose.
    c.onFail = fail;
    c.onEnd = () => {
      if (mode === 'close' && settled) finish();
      else fail(new Error(reused && !heard ? 'the server closed a kept-alive connection without answering' : 'connection closed before the response ended'));
    };
    c.sock.write(req);
  });
  return answer;
}
