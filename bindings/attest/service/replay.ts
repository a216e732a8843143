/**
 * The set of nonces already used, shared by the replicas of the attestation
 * service. With one secret (`--nonce-secret-file`) every replica can check
 * any replica's nonce (its MAC and expiry); this set makes each nonce count
 * once across all of them.
 *
 * ```
 * etcd (v3 JSON gateway, POST over fetch: no dependency)
 *   key   = prefix + nonce id (base64url)         value = "1"
 *   claim = txn( if create_revision(key) == 0      ← nobody used it yet
 *                then put(key, lease = L(bucket)) )  succeeded → accepted, else replayed
 *   L(bucket): one lease per 10 s of nonce expiry, granted on first use with a
 *              TTL reaching past the bucket's end; etcd deletes the keys with it
 * ```
 *
 * etcd's txn is linearizable, so of two replicas claiming one nonce at once
 * exactly one succeeds. When etcd cannot be reached the claim fails closed:
 * INVALID_STATE (the service answers 503), never an accepted replay.
 * @module
 */
import { VmkitError } from '../../errors.js';

/**
 * Where used nonces are recorded.
 *
 * @example
 * ```ts
 * const replay: ReplaySet = etcdReplaySet({ endpoints: 'http://10.0.0.1:2379' });
 * await replay.claim('AbC…', Date.now() + 60_000); // true the first time, false after
 * ```
 */
export interface ReplaySet {
  /** Records `id` as used until `expiresAt` (ms): true the first time anywhere, false after. */
  claim(id: string, expiresAt: number): Promise<boolean>;
  /** Releases connections and timers. */
  close(): void | Promise<void>;
}

/**
 * Options of {@link etcdReplaySet}.
 * @example `const o: EtcdReplayOptions = { endpoints: ['http://10.0.0.1:2379'], prefix: '/lab/nonces/' };`
 */
export interface EtcdReplayOptions {
  /** Client URLs of the cluster; tried in order. */
  endpoints: string | readonly string[];
  /** Key prefix (default `/vmkit/attest/nonce/`). */
  prefix?: string;
  /** Deadline of one request, ms (default 2000). */
  timeoutMs?: number;
  /** Extra request headers (e.g. `Authorization`). */
  headers?: Readonly<Record<string, string>>;
  /** The `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
  /** Clock (tests). */
  now?: () => number;
}

const BUCKET_MS = 10_000;
const MAX_RESPONSE = 64 * 1024;

/**
 * A {@link ReplaySet} on etcd v3 through its JSON gateway.
 * @example
 * ```ts
 * const nonces = new NonceStore({ secret, replay: etcdReplaySet({ endpoints: 'http://127.0.0.1:2379' }) });
 * ```
 */
export function etcdReplaySet(options: EtcdReplayOptions): ReplaySet {
  const endpoints = (typeof options.endpoints === 'string' ? [options.endpoints] : [...(options.endpoints ?? [])]).map((e) => String(e).replace(/\/+$/, ''));
  if (endpoints.length === 0 || endpoints.some((e) => !/^https?:\/\/[^/]+$/.test(e))) throw new VmkitError('ARG_RANGE', 'options.endpoints must be etcd client URLs (http://host:port)');
  const prefix = options.prefix ?? '/vmkit/attest/nonce/';
  const timeoutMs = options.timeoutMs ?? 2000;
  const f = options.fetch ?? globalThis.fetch;
  const now = options.now ?? Date.now;
  const headers = { 'content-type': 'application/json', ...options.headers };
  const leases = new Map<number, Promise<string>>(); // bucket → lease id
  let current = 0;
  let closed = false;
  const enc = new TextEncoder();
  const b64 = (s: string): string => {
    let bin = '';
    for (const b of enc.encode(s)) bin += String.fromCharCode(b);
    return btoa(bin);
  };

  const post = async (path: string, body: unknown, retryAny: boolean): Promise<Record<string, unknown>> => {
    if (closed) throw new VmkitError('INVALID_STATE', 'the nonce replay set is closed');
    let last: unknown;
    for (let i = 0; i < endpoints.length; i++) {
      const idx = (current + i) % endpoints.length;
      const url = endpoints[idx]! + path;
      const ctl = new AbortController();
      const timer = setTimeout(() => ctl.abort(), timeoutMs);
      try {
        const r = await f(url, { method: 'POST', headers, body: JSON.stringify(body), signal: ctl.signal });
        const text = await r.text();
        if (text.length > MAX_RESPONSE) throw new VmkitError('NETWORK', `etcd at ${url}: response of ${text.length} characters`);
        const o = JSON.parse(text) as unknown;
        if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new VmkitError('NETWORK', `etcd at ${url}: not a JSON object`);
        const rec = o as Record<string, unknown>;
        if (r.status < 200 || r.status > 299 || rec.error !== undefined) throw new VmkitError('NETWORK', `etcd at ${url}: HTTP ${r.status}: ${String(rec.message ?? rec.error ?? '').slice(0, 200)}`);
        current = idx;
        return rec;
      } catch (e) {
        last = e;
        // A txn whose answer was lost may have been applied: retrying it elsewhere could
        // report a replay that was in fact our own claim. Only a refused connection moves on.
        const refused = /ECONNREFUSED/.test(String((e as { cause?: { code?: string } }).cause?.code ?? ''));
        if (!retryAny && !refused) break;
      } finally {
        clearTimeout(timer);
      }
    }
    // Fail closed: no answer from etcd is no acceptance (503 from the service).
    throw new VmkitError('INVALID_STATE', `nonce replay set: etcd did not answer (${last instanceof Error ? last.message.slice(0, 200) : String(last)})`, { cause: last });
  };

  const lease = (bucket: number): Promise<string> => {
    let p = leases.get(bucket);
    if (!p) {
      const ttl = Math.max(1, Math.ceil(((bucket + 1) * BUCKET_MS - now()) / 1000) + 2);
      p = post('/v3/lease/grant', { TTL: String(ttl) }, true).then((r) => {
        if (typeof r.ID !== 'string' || !/^[0-9]{1,19}$/.test(r.ID)) throw new VmkitError('INVALID_STATE', 'nonce replay set: etcd granted no lease id');
        return r.ID;
      });
      p.catch(() => leases.delete(bucket));
      leases.set(bucket, p);
      // Buckets whose nonces have all expired need no lease entry here any more.
      const old = Math.floor(now() / BUCKET_MS) - 1;
      for (const b of leases.keys()) if (b < old) leases.delete(b);
    }
    return p;
  };

  return {
    async claim(id: string, expiresAt: number): Promise<boolean> {
      if (typeof id !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(id)) throw new VmkitError('ARG_RANGE', 'id must be a base64url nonce id');
      if (!Number.isFinite(expiresAt)) throw new VmkitError('ARG_RANGE', 'expiresAt must be a time in ms');
      const key = b64(prefix + id);
      const L = await lease(Math.floor(expiresAt / BUCKET_MS));
      const r = await post('/v3/kv/txn', {
        compare: [{ key, result: 'EQUAL', target: 'CREATE', create_revision: '0' }],
        success: [{ request_put: { key, value: b64('1'), lease: L } }],
        failure: [],
      }, false);
      // The gateway omits false booleans: a failed compare has no `succeeded`.
      return r.succeeded === true;
    },
    close(): void {
      closed = true;
      leases.clear();
    },
  };
}
