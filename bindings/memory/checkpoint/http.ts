/**
 * A checkpoint source over HTTP(S): `Range` requests through `fetch` (Node
 * and browsers), for a checkpoint served by any server or object store that
 * honours them (nginx, S3-compatible gateways, a CDN).
 *
 * ```
 *  open:   GET Range: bytes=0-4095 ─┐ both in flight at once (one round trip):
 *          GET Range: bytes=-65536 ─┘ header; footer + index (when it fits)
 *  a page: GET Range: bytes=a-b     one request per run of records (the reader's span)
 *          If-Match: "<etag>"       412, another ETag or another size: INTEGRITY
 *  prefetch(position, length): the span is fetched in the background; reads inside it wait for it
 *  a span: memory cache → local cache (localCache: a directory, OPFS) → the server (then kept in both)
 *  sigv4:  every request signed (Authorization, x-amz-date; Range and If-Match among the signed headers)
 * ```
 *
 * Every response is read into a buffer of the size asked for, never more: a
 * server that ignores `Range` (200 with the whole body) is read as a stream
 * that is skipped up to the wanted bytes and cancelled after them, and only
 * within `maxUnrangedBytes` of the start of the file (else UNSUPPORTED). 5xx,
 * 429, network errors, short bodies and timeouts are retried with exponential
 * backoff; the caller's `AbortSignal` ends everything with CANCELLED.
 * Format: docs/checkpoint-format.md ("Remote checkpoints").
 * @module
 */
import { VmkitError } from '../../errors.js';
import { aint } from '../../_utils.js';
import type { CheckpointSource } from './io.js';
import { _isNode, _nodeFetch, type _NodeBody } from './_http-node.js';
import { _openLocalCacheFile, type LocalCacheOptions, type _LocalCacheFile } from './_local-cache.js';
import { _sigv4Signer, type SigV4Credentials, type _Signer } from './_sigv4.js';

export type { LocalCacheOptions } from './_local-cache.js';
export type { SigV4Credentials } from './_sigv4.js';

/**
 * Options of {@link httpSource} (and `CheckpointReader.open(url, { http })`).
 *
 * @example
 * ```ts
 * const opts: HttpSourceOptions = { timeoutMs: 5000, retries: 3, cacheBytes: 8 << 20, signal: ac.signal };
 * ```
 */
export interface HttpSourceOptions {
  /** The fetch to use (default `globalThis.fetch`). */
  fetch?: typeof fetch;
  /** Extra request headers (an `Authorization` for a private bucket). */
  headers?: Record<string, string>;
  /** Per attempt, for the response and its whole body (default 30 000 ms). */
  timeoutMs?: number;
  /** Attempts after the first for 5xx, 429, network errors, short bodies and timeouts (default 4). */
  retries?: number;
  /** The first backoff; each retry doubles it, with jitter (default 100 ms). */
  retryDelayMs?: number;
  /** Ends every request in flight and every later one with CANCELLED. */
  signal?: AbortSignal;
  /** Bytes of fetched ranges kept in memory, least recently used dropped first (default 16 MiB). */
  cacheBytes?: number;
  /**
   * Bytes the suffix request of `open` asks for: the footer and, when it
   * fits, the index, so that open and a first page take two round trips
   * (default 2 MiB: the index of a guest up to 512 MiB, 16 bytes a page; a
   * larger index costs one more round trip, for the part the tail missed).
   */
  suffixBytes?: number;
  /** How far into the file a server that ignores `Range` may be streamed to reach a read (default 1 MiB; past it UNSUPPORTED). */
  maxUnrangedBytes?: number;
  /** Requests in flight at once; more wait their turn (default 6, a browser's per-host limit). */
  maxConcurrent?: number;
  /**
   * A bounded cache of fetched ranges on this host, beside the memory one: a
   * directory in Node, an OPFS directory in a browser. Used only when the
   * server sends a strong ETag or a Last-Modified to key it by.
   */
  localCache?: LocalCacheOptions;
  /** Signs every request with AWS Signature Version 4 (a private S3 or S3-compatible bucket); unsigned without it. */
  sigv4?: SigV4Credentials;
}

/**
 * Requests an {@link httpSource} made.
 *
 * @example
 * ```ts
 * const { requests, bytes, retries, cacheHits }: HttpSourceStats = src.stats;
 * ```
 */
export interface HttpSourceStats {
  /** HTTP requests sent (retries included). */
  requests: number;
  /** Body bytes received and kept. */
  bytes: number;
  /** Of the requests, retries. */
  retries: number;
  /** Reads served from the cache (or from a prefetch in flight). */
  cacheHits: number;
  /** Spans read from the local cache ({@link HttpSourceOptions.localCache}) instead of the network. */
  localHits: number;
  /** Local cache entries found damaged (removed, and the span fetched again). */
  localCorrupt: number;
}

/**
 * A {@link CheckpointSource} over HTTP, with its URL, validator and counters.
 *
 * @example
 * ```ts
 * const src: HttpCheckpointSource = await httpSource('https://store.example/vm.ckpt');
 * src.prefetch(1 << 20, 4 << 20); // one request in the background
 * ```
 */
export interface HttpCheckpointSource extends CheckpointSource {
  /** The checkpoint's URL. */
  readonly url: string;
  /** The strong ETag every request is conditional on (undefined when the server sends none). */
  readonly etag: string | undefined;
  /** True when the server answered a ranged request with the whole body. */
  readonly ignoresRange: boolean;
  /** Counters (a copy). */
  readonly stats: HttpSourceStats;
  /** Starts fetching `[position, position + length)` into the cache; reads inside it wait for it. Never rejects. */
  prefetch(position: number, length: number): void;
}

/** A fetched range: bytes at `at` (or their fetch in flight). */
interface Chunk {
  at: number;
  end: number;
  bytes: Uint8Array | undefined;
  pending: Promise<Uint8Array> | undefined;
  /** Read at least once: such chunks are dropped before prefetched ones nobody has read yet. */
  used: boolean;
}

/**
 * The default suffix of the open: 2 MiB holds the index of a guest up to
 * 512 MiB, so its first page is the second round trip. Against 64 KiB it
 * costs 2 MiB of transfer (~17 ms at 1 Gbit/s) when the index is small, and
 * the bytes are kept: the tail holds the last blocks and the machine state.
 */
const DEFAULT_SUFFIX_BYTES = 2 << 20;

const CONTENT_RANGE = /^bytes (\d+)-(\d+)\/(\d+|\*)$/;

/**
 * True for `http:` and `https:` URLs (what {@link httpSource} reads).
 * @example
 * ```ts
 * isHttpUrl('https://store.example/vm.ckpt'); // true
 * isHttpUrl('/tmp/vm.ckpt'); // false
 * ```
 */
export function isHttpUrl(target: unknown): target is string | URL {
  if (target instanceof URL) return target.protocol === 'http:' || target.protocol === 'https:';
  return typeof target === 'string' && /^https?:\/\//i.test(target);
}

/** A failure worth another attempt (5xx, 429, a dropped connection, a short body, a timeout). */
class RetryableError extends Error {
  readonly timeout: boolean;
  constructor(message: string, timeout: boolean = false) {
    super(message);
    this.timeout = timeout;
  }
}

/**
 * Opens a checkpoint over HTTP(S) as a {@link CheckpointSource}: one round
 * trip (two requests in flight) learns its size and ETag and fetches the
 * header, the footer and — when it fits the suffix — the index; later reads
 * are one `Range` request each, unless the cache holds them.
 * @example
 * ```ts
 * import { CheckpointReader, httpSource } from 'vmkit/memory';
 * const r = await CheckpointReader.open(await httpSource('http://127.0.0.1:8080/vm.ckpt'));
 * // or simply: await CheckpointReader.open('http://127.0.0.1:8080/vm.ckpt')
 * ```
 */
export async function httpSource(url: string | URL, options: HttpSourceOptions = {}): Promise<HttpCheckpointSource> {
  if (!isHttpUrl(url)) throw new VmkitError('ARG_RANGE', `url must be an http(s) URL, got ${String(url)}`);
  const href = String(url);
  // Node reads through node:http (a third of fetch's CPU per byte); browsers and a caller's fetch through fetch.
  const doFetch = options.fetch ?? (_isNode() ? (_nodeFetch as unknown as typeof fetch) : globalThis.fetch);
  if (typeof doFetch !== 'function') throw new VmkitError('UNSUPPORTED', 'no fetch in this runtime (pass options.fetch)');
  const timeoutMs = options.timeoutMs ?? 30_000;
  aint(timeoutMs, 'timeoutMs', 1, 3_600_000);
  const retries = options.retries ?? 4;
  aint(retries, 'retries', 0, 20);
  const retryDelayMs = options.retryDelayMs ?? 100;
  aint(retryDelayMs, 'retryDelayMs', 0, 60_000);
  const cacheBytes = options.cacheBytes ?? 16 << 20;
  aint(cacheBytes, 'cacheBytes', 0, 1 << 30);
  const suffixBytes = options.suffixBytes ?? DEFAULT_SUFFIX_BYTES;
  aint(suffixBytes, 'suffixBytes', 64, 64 << 20);
  const maxUnranged = options.maxUnrangedBytes ?? 1 << 20;
  aint(maxUnranged, 'maxUnrangedBytes', 0, Number.MAX_SAFE_INTEGER);
  const maxConcurrent = options.maxConcurrent ?? 6;
  aint(maxConcurrent, 'maxConcurrent', 1, 256);
  const userSignal = options.signal;
  // A bounded number of requests in flight: a policy's hundreds of spans must not open hundreds of connections.
  let running = 0;
  const waiting: (() => void)[] = [];
  const acquire = async (): Promise<void> => {
    if (running < maxConcurrent) {
      running++;
      return;
    }
    await new Promise<void>((r) => waiting.push(r));
  };
  const release = (): void => {
    const next = waiting.shift();
    if (next) next();
    else running--;
  };
  const stats: HttpSourceStats = { requests: 0, bytes: 0, retries: 0, cacheHits: 0, localHits: 0, localCorrupt: 0 };
  const sign: _Signer | undefined = options.sigv4 !== undefined ? await _sigv4Signer(options.sigv4) : undefined;
  let local: _LocalCacheFile | undefined;

  let size = -1;
  let etag: string | undefined;
  let lastModified: string | undefined;
  let ignoresRange = false;
  let closed = false;
  // Chunks in least-recently-used order (the first is dropped first).
  const chunks: Chunk[] = [];
  let cached = 0;
  const inflight = new Set<AbortController>();

  const cancelled = (): VmkitError => new VmkitError('CANCELLED', `${href}: cancelled`, { path: href, cause: userSignal?.reason });
  const changed = (why: string): VmkitError =>
    new VmkitError('INTEGRITY', `${href}: the checkpoint changed on the server (${why}); a restore cannot mix two files`, { path: href });

  /** Checks a response's validators against the ones of the first response (or records them). */
  const validate = (res: Response, total: number): void => {
    const et = res.headers.get('etag') ?? undefined;
    const lm = res.headers.get('last-modified') ?? undefined;
    if (size < 0) {
      size = total;
      etag = et;
      lastModified = lm;
      return;
    }
    if (etag !== undefined && et !== undefined && et !== etag) throw changed(`ETag ${etag} became ${et}`);
    if (total !== size) throw changed(`size ${size} became ${total}`);
    if (etag === undefined && lastModified !== undefined && lm !== undefined && lm !== lastModified) throw changed(`Last-Modified ${lastModified} became ${lm}`);
  };

  /**
   * Reads `want` bytes starting `skip` bytes into the body into a new buffer,
   * then cancels the rest: never holds more than `want` bytes of it.
   */
  const readBody = async (res: Response, skip: number, want: number, exact: boolean): Promise<Uint8Array> => {
    const out = new Uint8Array(want);
    if (!res.body) {
      if (want === 0) return out;
      throw new RetryableError('empty body');
    }
    const into = (res.body as unknown as Partial<_NodeBody>).readInto;
    if (into) {
      // The Node transport copies each piece as it arrives (no stream reader promise per piece).
      const { got, longer } = await into(out, skip, exact);
      if (exact && longer) throw new VmkitError('NETWORK', `${href}: the response is longer than the range asked for`, { path: href });
      if (got < want) throw new RetryableError(`short body: ${got} of ${want} bytes`);
      stats.bytes += want;
      return out;
    }
    const rd = res.body.getReader();
    let got = 0;
    let skipped = 0;
    try {
      while (got < want) {
        const { value, done } = await rd.read();
        if (done) break;
        let v = value;
        if (skipped < skip) {
          const s = Math.min(skip - skipped, v.length);
          skipped += s;
          v = v.subarray(s);
        }
        const n = Math.min(v.length, want - got);
        out.set(v.subarray(0, n), got);
        got += n;
        if (exact && n < v.length) throw new VmkitError('NETWORK', `${href}: the response is longer than the range asked for`, { path: href });
      }
      if (got < want) throw new RetryableError(`short body: ${got} of ${want} bytes`);
      if (exact) {
        const { done } = await rd.read();
        if (!done) throw new VmkitError('NETWORK', `${href}: the response is longer than the range asked for`, { path: href });
      }
    } finally {
      rd.cancel().catch(() => {});
    }
    stats.bytes += want;
    return out;
  };

  /** One attempt at GET with `range` (`a-b` or `-n`); returns [offset, bytes]. */
  const attempt = async (range: string, position: number, length: number): Promise<[number, Uint8Array]> => {
    const ac = new AbortController();
    inflight.add(ac);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      ac.abort();
    }, timeoutMs);
    const onAbort = (): void => ac.abort();
    userSignal?.addEventListener('abort', onAbort);
    let headers: Record<string, string> = { ...options.headers, Range: `bytes=${range}` };
    if (etag !== undefined && !etag.startsWith('W/')) headers['If-Match'] = etag;
    else if (lastModified !== undefined) headers['If-Unmodified-Since'] = lastModified;
    stats.requests++;
    try {
      let res: Response;
      try {
        if (sign) headers = await sign(href, headers);
        res = await doFetch(href, { headers, signal: ac.signal, cache: 'no-store' });
      } catch (e) {
        if (e instanceof VmkitError) throw e;
        throw new RetryableError(`${(e as Error)?.message ?? String(e)}`);
      }
      if (res.status === 206) {
        const m = CONTENT_RANGE.exec(res.headers.get('content-range') ?? '');
        if (!m) {
          res.body?.cancel().catch(() => {});
          throw new VmkitError('NETWORK', `${href}: 206 without a valid Content-Range`, { path: href });
        }
        const a = Number(m[1]);
        const b = Number(m[2]);
        const total = m[3] === '*' ? -1 : Number(m[3]);
        if (total < 0) throw new VmkitError('NETWORK', `${href}: Content-Range without the file's length`, { path: href });
        validate(res, total);
        const from = position >= 0 ? position : Math.max(0, total - length);
        const to = position >= 0 ? Math.min(position + length, total) : total;
        if (a !== from || b !== to - 1) {
          res.body?.cancel().catch(() => {});
          throw new VmkitError('NETWORK', `${href}: asked for bytes ${from}-${to - 1}, got ${a}-${b}`, { path: href });
        }
        return [a, await readBody(res, 0, b - a + 1, true)];
      }
      if (res.status === 200) {
        // The server ignored Range: the whole file follows.
        ignoresRange = true;
        const cl = res.headers.get('content-length');
        const total = cl === null ? NaN : Number(cl);
        if (!Number.isSafeInteger(total)) {
          res.body?.cancel().catch(() => {});
          throw new VmkitError('UNSUPPORTED', `${href}: the server ignores Range and sends no Content-Length`, { path: href });
        }
        validate(res, total);
        const from = position >= 0 ? position : Math.max(0, total - length);
        const to = position >= 0 ? Math.min(position + length, total) : total;
        if (to > maxUnranged) {
          res.body?.cancel().catch(() => {});
          throw new VmkitError(
            'UNSUPPORTED',
            `${href}: the server ignores Range requests; reaching bytes ${from}-${to - 1} would stream ${to} bytes, past maxUnrangedBytes ${maxUnranged}`,
            { path: href, offset: from },
          );
        }
        return [from, await readBody(res, from, to - from, false)];
      }
      res.body?.cancel().catch(() => {});
      if (res.status === 412) throw changed('412 Precondition Failed');
      if (res.status === 416) throw size >= 0 ? changed('416 Range Not Satisfiable') : new VmkitError('CORRUPT', `${href}: 416 for ${range} (an empty file?)`, { path: href });
      if (res.status === 404 || res.status === 410) throw new VmkitError('NOT_FOUND', `${href}: ${res.status}`, { path: href });
      if (res.status >= 500 || res.status === 429 || res.status === 408) throw new RetryableError(`HTTP ${res.status}`);
      throw new VmkitError('REFUSED', `${href}: HTTP ${res.status} ${res.statusText}`, { path: href });
    } catch (e) {
      if (userSignal?.aborted) throw cancelled();
      if (timedOut) throw new RetryableError(`no answer within ${timeoutMs} ms`, true);
      if (e instanceof VmkitError || e instanceof RetryableError) throw e;
      throw new RetryableError((e as Error)?.message ?? String(e));
    } finally {
      clearTimeout(timer);
      userSignal?.removeEventListener('abort', onAbort);
      inflight.delete(ac);
    }
  };

  const sleep = (ms: number): Promise<void> =>
    new Promise((resolve, reject) => {
      const t = setTimeout(done, ms);
      function done(): void {
        userSignal?.removeEventListener('abort', stop);
        resolve();
      }
      function stop(): void {
        clearTimeout(t);
        reject(cancelled());
      }
      userSignal?.addEventListener('abort', stop, { once: true });
    });

  /** GET with retries. `position < 0` asks for the last `length` bytes. */
  const get = async (position: number, length: number): Promise<[number, Uint8Array]> => {
    if (closed) throw new VmkitError('INVALID_STATE', `${href}: source closed`, { path: href });
    const range = position < 0 ? `-${length}` : `${position}-${position + length - 1}`;
    for (let i = 0; ; i++) {
      if (userSignal?.aborted) throw cancelled();
      if (closed) throw new VmkitError('INVALID_STATE', `${href}: source closed`, { path: href });
      try {
        await acquire();
        try {
          return await attempt(range, position, length);
        } finally {
          release();
        }
      } catch (e) {
        if (!(e instanceof RetryableError)) throw e;
        if (i >= retries) {
          const code = e.timeout ? 'TIMEOUT' : 'NETWORK';
          throw new VmkitError(code, `${href}: bytes ${range}: ${e.message} (after ${i + 1} attempts)`, { path: href, cause: e });
        }
        stats.retries++;
        await sleep(retryDelayMs * 2 ** i * (0.5 + Math.random() / 2));
      }
    }
  };

  const remember = (c: Chunk): void => {
    const n = c.end - c.at;
    if (n > cacheBytes) return;
    chunks.push(c);
    cached += n;
    // The least recently used settled chunks that were read go first, then prefetched ones nobody read yet
    // (a restore's windows ahead must outlive the windows it has decoded); a fetch in flight stays.
    for (const unread of [false, true]) {
      for (let i = 0; cached > cacheBytes && i < chunks.length; ) {
        const old = chunks[i]!;
        if (old.bytes === undefined || old.used === unread) {
          i++;
          continue;
        }
        chunks.splice(i, 1);
        cached -= old.end - old.at;
      }
    }
  };

  const find = (position: number, end: number): Chunk | undefined => {
    for (let i = chunks.length - 1; i >= 0; i--) {
      const c = chunks[i]!;
      if (c.at <= position && end <= c.end) {
        chunks.splice(i, 1);
        chunks.push(c);
        return c;
      }
    }
    return undefined;
  };

  /** A settled chunk holding the end of `[position, end)` but not its start. */
  const tailOf = (position: number, end: number): Chunk | undefined => {
    for (const c of chunks) if (c.bytes && c.at > position && c.at < end && end <= c.end) return c;
    return undefined;
  };

  // Open: the header and the file's tail in one round trip.
  const [head, tail] = await Promise.allSettled([get(0, 4096), get(-1, suffixBytes)]);
  if (head.status === 'rejected') throw head.reason;
  if (tail.status === 'fulfilled') {
    const [at, bytes] = tail.value;
    remember({ at, end: at + bytes.length, bytes, pending: undefined, used: true });
  } else if (!(tail.reason instanceof VmkitError && tail.reason.code === 'UNSUPPORTED')) throw tail.reason;
  {
    const [at, bytes] = head.value;
    remember({ at, end: at + bytes.length, bytes, pending: undefined, used: true });
  }

  if (options.localCache !== undefined) local = await _openLocalCacheFile(options.localCache, href, etag, lastModified, size);

  /** `[position, position + length)` from the local cache, else from the server (then kept locally). */
  const fetchSpan = async (position: number, length: number): Promise<Uint8Array> => {
    if (local) {
      const hit = await local.get(position, position + length);
      stats.localCorrupt = local.corrupt;
      if (hit) {
        stats.localHits++;
        return hit;
      }
    }
    const [, bytes] = await get(position, length);
    local?.put(position, bytes);
    return bytes;
  };

  const src: HttpCheckpointSource = {
    url: href,
    get size() {
      return size;
    },
    get etag() {
      return etag;
    },
    get ignoresRange() {
      return ignoresRange;
    },
    get stats() {
      return { ...stats };
    },
    prefetchBytes: cacheBytes,
    async read(position: number, dst: Uint8Array): Promise<void> {
      const end = position + dst.length;
      if (position < 0 || end > size) throw new VmkitError('CORRUPT', `${href}: read past the end (${position}+${dst.length} of ${size})`, { path: href, offset: position });
      if (dst.length === 0) return;
      const c = find(position, end);
      if (c) {
        // A failed prefetch is asked for again below, and reports its own error.
        const bytes = c.bytes ?? (await c.pending!.catch(() => undefined));
        if (bytes) {
          c.used = true;
          stats.cacheHits++;
          dst.set(bytes.subarray(position - c.at, end - c.at));
          return;
        }
      }
      // A read whose end is cached (the index, when the open's tail holds only its end) fetches the rest.
      const t = tailOf(position, end);
      const upTo = t ? t.at : end;
      const bytes = await fetchSpan(position, upTo - position);
      dst.set(bytes);
      if (t) {
        t.used = true;
        dst.set(t.bytes!.subarray(0, end - t.at), upTo - position);
      }
      // A page record read once is rarely read again soon, but a restore's spans are re-read by later windows.
      remember({ at: position, end: upTo, bytes, pending: undefined, used: true });
    },
    async readView(position: number, length: number): Promise<Uint8Array> {
      const end = position + length;
      const c = position >= 0 && end <= size && length > 0 ? find(position, end) : undefined;
      const bytes = c ? (c.bytes ?? (await c.pending!.catch(() => undefined))) : undefined;
      if (c && bytes) {
        c.used = true;
        stats.cacheHits++;
        return bytes.subarray(position - c.at, end - c.at);
      }
      const dst = new Uint8Array(length);
      await src.read(position, dst);
      return dst;
    },
    prefetch(position: number, length: number): void {
      const end = Math.min(position + length, size);
      if (position < 0 || end <= position || find(position, end)) return;
      const c: Chunk = { at: position, end, bytes: undefined, pending: undefined, used: false };
      c.pending = fetchSpan(position, end - position).then((b) => (c.bytes = b));
      // A failed prefetch is forgotten: a read that needs the bytes asks again.
      c.pending.catch(() => {
        const i = chunks.indexOf(c);
        if (i >= 0) {
          chunks.splice(i, 1);
          cached -= c.end - c.at;
        }
      });
      remember(c);
    },
    async close(): Promise<void> {
      closed = true;
      for (const ac of inflight) ac.abort();
      chunks.length = 0;
      cached = 0;
      // The local writes finish: a next open of the same checkpoint finds them.
      await local?.flush();
    },
  };
  return src;
}
