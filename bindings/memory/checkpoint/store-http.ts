/**
 * A page store at a URL (`PageStore.open('http://host/store')`, `vmkit
 * checkpoint save --store <url>`): the store's objects as HTTP resources.
 *
 * ```
 *  read      GET  <url>/STORE, <url>/checkpoints/<name>.vmkidx, <url>/frames/ab/<hash>
 *  save      HEAD <url>/frames/ab/<hash>     (is the frame there?)
 *            PUT  <url>/refs/<id>.refs, <url>/frames/ab/<hash>, <url>/checkpoints/<name>.vmkidx
 *  gc        MKCOL <url>/gc.lock/            (exclusive: 405 when another collection holds it)
 *            GET  <url>/refs/, <url>/checkpoints/, <url>/frames/, <url>/frames/ab/  (JSON listings)
 *            DELETE <url>/frames/ab/<hash>, <url>/gc.lock/
 * ```
 *
 * Reading needs only GET (any static server, a CDN, a public bucket); saving
 * needs PUT whose object appears whole or not at all (nginx's dav module
 * writes to a temporary file and renames it), and a collection needs DELETE,
 * MKCOL and JSON folder listings with modification times (nginx `autoindex
 * on; autoindex_format json;`). A server without them gets UNSUPPORTED for
 * that operation only. 5xx, 429, 408, dropped connections, truncated bodies
 * and timeouts are retried with exponential backoff, then NETWORK or
 * TIMEOUT; no answer is read past `maxObjectBytes`. Layout and protocol:
 * docs/checkpoint-format.md ("Shared page store").
 * @module
 */
import { VmkitError } from '../../errors.js';
import { aint } from '../../_utils.js';
import { readCapped } from '../../_bytes.js';
import type { _StoreBackend, _StoreEntry } from './_store-backend.js';
import { _isNode, _nodeFetch } from './_http-node.js';

/**
 * Options of a page store at a URL (`PageStore.open(url, { http })`).
 * @example
 * ```ts
 * const store = await PageStore.open('http://127.0.0.1:8080/store', { create: true, http: { timeoutMs: 5000, retries: 2 } });
 * ```
 */
export interface HttpStoreOptions {
  /** The fetch to use (default `globalThis.fetch`). */
  fetch?: typeof fetch;
  /** Extra request headers (an `Authorization`). */
  headers?: Record<string, string>;
  /** Per attempt, for the answer and its whole body (default 30 000 ms). */
  timeoutMs?: number;
  /** Attempts after the first for 5xx, 429, 408, network errors, short bodies and timeouts (default 4). */
  retries?: number;
  /** The first backoff; each retry doubles it, with jitter (default 100 ms). */
  retryDelayMs?: number;
  /** Ends every request with CANCELLED. */
  signal?: AbortSignal;
  /** The largest object read (default 64 MiB: the index of a 32 TiB guest); a longer answer is CORRUPT. */
  maxObjectBytes?: number;
}

class Retry extends Error {
  readonly timeout: boolean;
  constructor(message: string, timeout = false) {
    super(message);
    this.timeout = timeout;
  }
}

/** A backend over HTTP for {@link PageStore} (internal: `PageStore.open(url)` makes it). */
export function _httpBackend(url: string, options: HttpStoreOptions = {}): _StoreBackend {
  const base = url.replace(/\/+$/, '');
  const doFetch = options.fetch ?? globalThis.fetch;
  if (typeof doFetch !== 'function') throw new VmkitError('UNSUPPORTED', 'no fetch in this runtime (pass http.fetch)');
  // GETs in Node go through node:http (keep-alive agents): a restore is one GET per frame, and undici's
  // fetch cost ~3x the CPU per request (bench/checkpoint-store.bench.js); other methods keep fetch.
  const getFetch = options.fetch ?? (_isNode() ? (_nodeFetch as unknown as typeof fetch) : globalThis.fetch);
  const timeoutMs = options.timeoutMs ?? 30_000;
  aint(timeoutMs, 'http.timeoutMs', 1, 3_600_000);
  const retries = options.retries ?? 4;
  aint(retries, 'http.retries', 0, 20);
  const retryDelayMs = options.retryDelayMs ?? 100;
  aint(retryDelayMs, 'http.retryDelayMs', 0, 60_000);
  const maxBytes = options.maxObjectBytes ?? 64 << 20;
  aint(maxBytes, 'http.maxObjectBytes', 1, 1 << 30);
  const signal = options.signal;
  const cancelled = (): VmkitError => new VmkitError('CANCELLED', `${base}: cancelled`, { path: base, cause: signal?.reason });

  /** The body, read up to maxBytes (a longer one is CORRUPT; a shorter one than Content-Length is retried). */
  const body = async (res: Response, href: string): Promise<Uint8Array> => {
    const cl = res.headers.get('content-length');
    if (cl !== null && Number(cl) > maxBytes) {
      res.body?.cancel().catch(() => {});
      throw new VmkitError('CORRUPT', `${href}: ${cl} bytes, more than maxObjectBytes ${maxBytes}`, { path: href });
    }
    if (!res.body) return new Uint8Array(0);
    let bytes: Uint8Array;
    try {
      bytes = await readCapped(res.body, maxBytes, () => new VmkitError('CORRUPT', `${href}: more than maxObjectBytes ${maxBytes}`, { path: href }));
    } catch (e) {
      if (e instanceof VmkitError) throw e;
      throw new Retry(`body: ${(e as Error)?.message ?? String(e)}`);
    }
    if (cl !== null && bytes.length !== Number(cl)) throw new Retry(`short body: ${bytes.length} of ${cl} bytes`);
    return bytes;
  };

  /**
   * One request with retries; `ok(status)` says which answers are final (the
   * caller's), every other status is an error: 5xx/429/408 retried, the
   * rest REFUSED (401/403/other 4xx) or UNSUPPORTED (405/501).
   */
  const request = async <T>(method: string, key: string, data: Uint8Array | undefined, ok: (status: number) => boolean, read: (res: Response, href: string) => Promise<T>): Promise<T> => {
    const href = `${base}/${key}`;
    for (let i = 0; ; i++) {
      if (signal?.aborted) throw cancelled();
      const ac = new AbortController();
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        ac.abort();
      }, timeoutMs);
      const onAbort = (): void => ac.abort();
      signal?.addEventListener('abort', onAbort);
      try {
        let res: Response;
        try {
          res = await (method === 'GET' ? getFetch : doFetch)(href, { method, headers: { ...options.headers }, body: data, signal: ac.signal, cache: 'no-store' } as RequestInit);
        } catch (e) {
          throw new Retry((e as Error)?.message ?? String(e));
        }
        if (ok(res.status)) return await read(res, href);
        res.body?.cancel().catch(() => {});
        if (res.status >= 500 && res.status !== 501) throw new Retry(`HTTP ${res.status}`);
        if (res.status === 429 || res.status === 408) throw new Retry(`HTTP ${res.status}`);
        if (res.status === 405 || res.status === 501) throw new VmkitError('UNSUPPORTED', `${href}: the server does not allow ${method} (${res.status})`, { path: href });
        throw new VmkitError('REFUSED', `${href}: ${method} answered ${res.status} ${res.statusText}`, { path: href });
      } catch (e) {
        if (signal?.aborted) throw cancelled();
        const err = timedOut ? new Retry(`no answer within ${timeoutMs} ms`, true) : e;
        if (!(err instanceof Retry)) throw err;
        if (i >= retries) throw new VmkitError(err.timeout ? 'TIMEOUT' : 'NETWORK', `${href}: ${method}: ${err.message} (after ${i + 1} attempts)`, { path: href, cause: err });
        await new Promise((r) => setTimeout(r, retryDelayMs * 2 ** i * (0.5 + Math.random() / 2)));
      } finally {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      }
    }
  };
  const none = async (res: Response): Promise<void> => {
    await res.body?.cancel().catch(() => {});
  };

  const get = (key: string): Promise<Uint8Array | undefined> =>
    request('GET', key, undefined, (s) => s === 200 || s === 404 || s === 410, async (res, href) => (res.status === 200 ? body(res, href) : (await none(res), undefined)));

  const mkcol = (key: string): Promise<number> => request('MKCOL', `${key}/`, undefined, (s) => (s >= 200 && s < 300) || s === 405 || s === 409, async (res) => (await none(res), res.status));

  return {
    where: base,
    get,
    has: (key) => request('HEAD', key, undefined, (s) => s === 200 || s === 404 || s === 410, async (res) => (await none(res), res.status === 200)),
    async put(key, data) {
      const put = (): Promise<number> => request('PUT', key, data, (s) => (s >= 200 && s < 300) || s === 409, async (res) => (await none(res), res.status));
      if ((await put()) !== 409) return;
      // 409: a WebDAV server that does not create folders on PUT (nginx without create_full_put_path).
      const parts = key.split('/').slice(0, -1);
      for (let i = 1; i <= parts.length; i++) await mkcol(parts.slice(0, i).join('/'));
      if ((await put()) === 409) throw new VmkitError('REFUSED', `${base}/${key}: PUT answered 409 Conflict`, { path: `${base}/${key}` });
    },
    remove: (key) => request('DELETE', key, undefined, (s) => (s >= 200 && s < 300) || s === 404 || s === 410, none),
    async list(dir) {
      const listing = await request('GET', dir === '' ? '' : `${dir}/`, undefined, (s) => s === 200 || s === 404, async (res, href) => (res.status === 200 ? body(res, href) : (await none(res), undefined)));
      if (!listing) return [];
      let parsed: unknown;
      try {
        parsed = JSON.parse(new TextDecoder().decode(listing));
      } catch {
        parsed = undefined;
      }
      if (!Array.isArray(parsed)) throw new VmkitError('UNSUPPORTED', `${base}/${dir}/: the server gives no JSON folder listing (nginx: autoindex on; autoindex_format json;)`, { path: `${base}/${dir}/` });
      const out: _StoreEntry[] = [];
      for (const e of parsed as { name?: unknown; type?: unknown; mtime?: unknown }[]) {
        if (typeof e?.name !== 'string' || e.name.includes('/') || e.name === '.' || e.name === '..') continue;
        const t = typeof e.mtime === 'string' ? Date.parse(e.mtime) : NaN;
        out.push({ name: e.name, dir: e.type === 'directory', mtimeMs: Number.isFinite(t) ? t : 0 });
      }
      return out;
    },
    async lock(key) {
      const s = await mkcol(key);
      if (s === 405) return false;
      if (s === 409) throw new VmkitError('REFUSED', `${base}/${key}/: MKCOL answered 409 Conflict`, { path: `${base}/${key}/` });
      return true;
    },
    unlock: (key) => request('DELETE', `${key}/`, undefined, (s) => (s >= 200 && s < 300) || s === 404, none),
  };
}
