/**
 * The etcd owner store: one key per disk under a prefix, on etcd v3 through
 * its JSON gRPC gateway (`POST /v3/kv/range`, `POST /v3/kv/txn`, keys and
 * values base64) over `fetch` — no dependency, and it runs in browsers too.
 * The choice against the `etcd3` npm client is argued in docs/ownership.md
 * ("etcd store").
 *
 * ```
 * key   = prefix + disk            (UTF-8 bytes; prefix defaults to "/vmkit/owner/")
 * value = the record's JSON        (bindings/disk/owner/record.ts, ≤ 16 KiB)
 * revision (opaque to callers) = the key's mod_revision, as a decimal string
 * read = range(key)                → { record, revision: mod_revision } or { null, null }
 * CAS  = txn(if mod_revision(key) == expected      (create_revision == 0 when expected is null)
 *            then put(key, value))  → the txn's header.revision (the new mod_revision), or null
 * ```
 *
 * Everything etcd returns is checked (status, JSON shape, decimal revisions,
 * the key echoed back, base64, the record itself): a broken or hostile server
 * or value gives a `VmkitError`, never a half-parsed record. Every request has
 * a deadline, so an etcd that is down gives `NETWORK` and one that hangs gives
 * `TIMEOUT`, never a hang.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { readCapped } from '../../_bytes.js';
import { encodeRecord, parseRecord, MAX_RECORD_BYTES } from './record.js';
import type { OwnerRecord, OwnerSnapshot, OwnerStore } from './types.js';

/**
 * Options of {@link etcdStore}.
 * @example
 * ```ts
 * const opts: EtcdStoreOptions = { endpoints: ['http://10.0.0.1:2379', 'http://10.0.0.2:2379'], prefix: '/lab/owners/', timeoutMs: 2000 };
 * ```
 */
export interface EtcdStoreOptions {
  /** Client URLs of the cluster (`http://127.0.0.1:2379`); tried in order, the last one that answered first. */
  readonly endpoints: string | readonly string[];
  /** Key prefix (default `/vmkit/owner/`); the disk name follows it verbatim. */
  readonly prefix?: string;
  /** Deadline of one request in ms (default 3000). A txn that times out has an unknown outcome: read again. */
  readonly timeoutMs?: number;
  /** Extra request headers (e.g. `Authorization` with a token from `/v3/auth/authenticate`). */
  readonly headers?: Readonly<Record<string, string>>;
  /** The `fetch` to use (default: the global one). */
  readonly fetch?: typeof fetch;
}

/** Largest gateway response read (a range of one key with a ≤ 16 KiB value is far smaller, even in base64). */
const _MAX_RESPONSE_BYTES = 256 * 1024;
const _DECIMAL = /^(0|[1-9][0-9]{0,18})$/;
const _INT64_MAX = 0x7fff_ffff_ffff_ffffn;

/**
 * An {@link OwnerStore} on etcd v3. Safe across processes and hosts: etcd's
 * txn is linearizable, so of many concurrent `compareAndSwap`s against the same
 * revision exactly one succeeds.
 *
 * @example
 * ```ts
 * import { etcdStore } from 'vmkit/disk';
 * const store = etcdStore({ endpoints: ['http://10.0.0.1:2379', 'http://10.0.0.2:2379'] });
 * const { record, revision } = await store.read('pool/vm-17.qcow2');
 * await store.close();
 * ```
 */
export function etcdStore(options: EtcdStoreOptions): EtcdOwnerStore {
  return new EtcdOwnerStore(options);
}

/**
 * The class behind {@link etcdStore} (exported for `instanceof` and typing).
 *
 * @example
 * ```ts
 * const store = new EtcdOwnerStore({ endpoints: 'http://127.0.0.1:2379', prefix: '/lab/owners/' });
 * const rev = await store.compareAndSwap('vm.raw', null, record); // null: someone created it first
 * ```
 */
export class EtcdOwnerStore implements OwnerStore {
  readonly kind: string = 'etcd';
  /** The key prefix in use. */
  readonly prefix: string;
  private readonly _endpoints: readonly string[];
  private readonly _timeoutMs: number;
  private readonly _headers: Record<string, string>;
  private readonly _fetch: typeof fetch;
  private readonly _closing = new AbortController();
  /** Index of the endpoint that answered last (tried first). */
  private _current = 0;
  private _closed = false;

  constructor(options: EtcdStoreOptions) {
    if (typeof options !== 'object' || options === null) throw new VmkitError('ARG_TYPE', 'options must be an object');
    const eps = typeof options.endpoints === 'string' ? [options.endpoints] : options.endpoints;
    if (!Array.isArray(eps) || eps.length === 0) throw new VmkitError('ARG_RANGE', 'options.endpoints must name at least one etcd client URL');
    this._endpoints = eps.map((e, i) => {
      let u: URL;
      try {
        u = new URL(String(e));
      } catch {
        throw new VmkitError('ARG_RANGE', `options.endpoints[${i}] is not a URL: ${JSON.stringify(String(e)).slice(0, 200)}`);
      }
      if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new VmkitError('ARG_RANGE', `options.endpoints[${i}] must be http: or https:, got ${u.protocol}`);
      return u.href.replace(/\/+$/, '');
    });
    const prefix = options.prefix ?? '/vmkit/owner/';
    if (typeof prefix !== 'string' || prefix.length === 0) throw new VmkitError('ARG_RANGE', 'options.prefix must be a non-empty string');
    this.prefix = prefix;
    const t = options.timeoutMs ?? 3000;
    if (typeof t !== 'number' || !Number.isFinite(t) || t <= 0) throw new VmkitError('ARG_RANGE', `options.timeoutMs must be a positive number, got ${String(t)}`);
    this._timeoutMs = t;
    this._headers = { 'content-type': 'application/json', ...(options.headers ?? {}) };
    const f = options.fetch ?? globalThis.fetch;
    if (typeof f !== 'function') throw new VmkitError('ARG_TYPE', 'options.fetch must be a function (no global fetch here)');
    this._fetch = f;
  }

  /**
   * Reads the disk's record and its revision (the key's `mod_revision`).
   *
   * @example
   * ```ts
   * const { record, revision } = await store.read('vm.raw'); // { null, null } when the disk has no record
   * ```
   */
  async read(disk: string): Promise<OwnerSnapshot> {
    const key = this._key(disk);
    const res = await this._call('/v3/kv/range', { key }, disk, true);
    _header(res, disk);
    const kvs = res.kvs;
    if (kvs === undefined) return { record: null, revision: null };
    if (!Array.isArray(kvs) || kvs.length > 1) throw _bad(disk, `range returned ${Array.isArray(kvs) ? kvs.length : typeof kvs} kvs for one key`);
    if (kvs.length === 0) return { record: null, revision: null };
    const kv = kvs[0] as Record<string, unknown> | null;
    if (typeof kv !== 'object' || kv === null) throw _bad(disk, 'range returned a kv that is not an object');
    if (kv.key !== key) throw _bad(disk, 'range returned another key than the one asked for');
    const rev = _decimal(kv.mod_revision, 'mod_revision', disk);
    if (rev === '0') throw _bad(disk, 'mod_revision 0 on an existing key');
    // An empty value is omitted by the gateway: a key that exists with no bytes is a corrupt record.
    const value = kv.value === undefined ? '' : kv.value;
    if (typeof value !== 'string') throw _bad(disk, 'value is not a base64 string');
    if (value.length > Math.ceil((MAX_RECORD_BYTES * 4) / 3) + 4) {
      throw new VmkitError('LIMIT', `owner record of ${disk} in etcd is ${Math.floor((value.length * 3) / 4)} bytes (max ${MAX_RECORD_BYTES})`, { path: disk });
    }
    let bytes: Uint8Array;
    try {
      bytes = _unb64(value);
    } catch (e) {
      throw new VmkitError('CORRUPT', `owner record of ${disk} in etcd: value is not base64`, { path: disk, cause: e });
    }
    const record = parseRecord(bytes, disk);
    if (record.disk !== disk) throw new VmkitError('CORRUPT', `owner record under ${JSON.stringify(disk)} in etcd names another disk (${JSON.stringify(record.disk).slice(0, 200)})`, { path: disk });
    return { record, revision: rev };
  }

  /**
   * Writes `next` only if the key's `mod_revision` still equals `expected`
   * (null: only if the key does not exist). Resolves to the new revision, or
   * null when another writer came first.
   *
   * @example
   * ```ts
   * const snap = await store.read('vm.raw');
   * const rev = await store.compareAndSwap('vm.raw', snap.revision, { ...snap.record!, epoch: snap.record!.epoch + 1 });
   * if (rev === null) console.log('lost the race; read again');
   * ```
   */
  async compareAndSwap(disk: string, expected: string | null, next: OwnerRecord): Promise<string | null> {
    const key = this._key(disk);
    if (expected !== null && (typeof expected !== 'string' || !_DECIMAL.test(expected) || expected === '0' || BigInt(expected) > _INT64_MAX)) {
      throw new VmkitError('ARG_RANGE', `expected must be an etcd revision (a decimal string) or null, got ${JSON.stringify(expected)?.slice(0, 64)}`);
    }
    let value: Uint8Array;
    try {
      value = encodeRecord(next);
    } catch (e) {
      if (e instanceof VmkitError) throw new VmkitError('ARG_RANGE', `next is not a valid owner record: ${e.message}`, { cause: e, path: disk });
      throw e;
    }
    if (next.disk !== disk) throw new VmkitError('ARG_RANGE', `next.disk (${JSON.stringify(next.disk).slice(0, 200)}) must be the disk written (${JSON.stringify(disk).slice(0, 200)})`, { path: disk });
    const compare =
      expected === null
        ? { key, result: 'EQUAL', target: 'CREATE', create_revision: '0' }
        : { key, result: 'EQUAL', target: 'MOD', mod_revision: expected };
    const res = await this._call('/v3/kv/txn', { compare: [compare], success: [{ request_put: { key, value: _b64(value) } }], failure: [] }, disk, false);
    const rev = _header(res, disk);
    // The gateway omits false booleans: a failed compare has no `succeeded` at all.
    if (res.succeeded === undefined || res.succeeded === false) return null;
    if (res.succeeded !== true) throw _bad(disk, 'txn.succeeded is not a boolean');
    if (!Array.isArray(res.responses) || res.responses.length !== 1) throw _bad(disk, 'a successful txn must carry one put response');
    return rev;
  }

  /**
   * Aborts requests in flight (they reject with `CANCELLED`); later calls throw `INVALID_STATE`.
   *
   * @example
   * ```ts
   * await store.close();
   * ```
   */
  async close(): Promise<void> {
    if (this._closed) return;
    this._closed = true;
    this._closing.abort();
  }

  private _key(disk: string): string {
    if (this._closed) throw new VmkitError('INVALID_STATE', 'etcd owner store is closed');
    if (typeof disk !== 'string' || disk.length === 0) throw new VmkitError('ARG_TYPE', `disk must be a non-empty string, got ${typeof disk}`);
    return _b64(new TextEncoder().encode(this.prefix + disk));
  }

  /**
   * POSTs to the gateway with a deadline. `idempotent` requests (range) move on
   * to the next endpoint after any network failure; a txn does so only when the
   * connection was refused (it certainly was not applied), since a txn retried
   * after a lost answer could report a lost race that it actually won.
   */
  private async _call(path: string, body: unknown, disk: string, idempotent: boolean): Promise<Record<string, unknown>> {
    const payload = JSON.stringify(body);
    const n = this._endpoints.length;
    let lastErr: VmkitError | undefined;
    for (let i = 0; i < n; i++) {
      const idx = (this._current + i) % n;
      const base = this._endpoints[idx]!;
      try {
        const out = await this._post(base + path, payload, disk);
        this._current = idx;
        return out;
      } catch (e) {
        if (!(e instanceof VmkitError)) throw e;
        lastErr = e;
        const refused = e.code === 'NETWORK' && _isRefused(e.cause);
        if (e.code === 'CANCELLED' || !(refused || (idempotent && (e.code === 'NETWORK' || e.code === 'TIMEOUT')))) throw e;
      }
    }
    throw lastErr!;
  }

  private async _post(url: string, payload: string, disk: string): Promise<Record<string, unknown>> {
    // One controller per request, aborted by the deadline or by close(): cheaper than
    // AbortSignal.any + AbortSignal.timeout, and it runs in browsers that lack AbortSignal.any.
    const ctl = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      ctl.abort();
    }, this._timeoutMs);
    const onClose = (): void => ctl.abort();
    this._closing.signal.addEventListener('abort', onClose, { once: true });
    let text: string;
    let status: number;
    try {
      const r = await this._fetch(url, { method: 'POST', headers: this._headers, body: payload, signal: ctl.signal });
      status = r.status;
      text = await _readCapped(r, _MAX_RESPONSE_BYTES, disk);
    } catch (e) {
      if (e instanceof VmkitError) throw e;
      if (this._closing.signal.aborted) throw new VmkitError('CANCELLED', `etcd request for ${disk} cancelled: the store was closed`, { path: disk, cause: e });
      if (timedOut) {
        throw new VmkitError('TIMEOUT', `etcd at ${url} did not answer within ${this._timeoutMs} ms (disk ${disk}; a compare-and-swap's outcome is unknown: read again)`, { path: disk, cause: e });
      }
      throw new VmkitError('NETWORK', `etcd at ${url} is unreachable (disk ${disk}): ${_msg(e)}`, { path: disk, cause: e });
    } finally {
      clearTimeout(timer);
      this._closing.signal.removeEventListener('abort', onClose);
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new VmkitError('NETWORK', `etcd at ${url} answered HTTP ${status} with a body that is not JSON (disk ${disk})`, { path: disk, cause: e });
    }
    if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new VmkitError('NETWORK', `etcd at ${url} answered HTTP ${status} with JSON that is not an object (disk ${disk})`, { path: disk });
    const o = json as Record<string, unknown>;
    if (status < 200 || status > 299 || o.error !== undefined) {
      // A gRPC status: 4 deadline exceeded, 7/16 permission denied/unauthenticated, others are failures.
      const grpc = typeof o.code === 'number' ? o.code : -1;
      const why = String(o.message ?? o.error ?? `HTTP ${status}`).slice(0, 300);
      const code = grpc === 4 ? 'TIMEOUT' : grpc === 7 || grpc === 16 ? 'REFUSED' : 'NETWORK';
      throw new VmkitError(code, `etcd at ${url} failed (disk ${disk}): HTTP ${status}, gRPC ${grpc}: ${why}`, { path: disk });
    }
    return o;
  }
}

/** Validates a response header; returns its revision. */
function _header(res: Record<string, unknown>, disk: string): string {
  const h = res.header as Record<string, unknown> | undefined;
  if (typeof h !== 'object' || h === null) throw _bad(disk, 'response has no header');
  return _decimal(h.revision, 'header.revision', disk);
}

function _decimal(v: unknown, name: string, disk: string): string {
  // int64 fields are decimal strings in the gateway's JSON; anything past 2^63 or not decimal is not etcd.
  if (typeof v !== 'string' || !_DECIMAL.test(v) || BigInt(v) > _INT64_MAX) throw _bad(disk, `${name} is not a decimal revision: ${JSON.stringify(v)?.slice(0, 64)}`);
  return v;
}

function _bad(disk: string, what: string): VmkitError {
  return new VmkitError('NETWORK', `etcd answered a malformed response (disk ${disk}): ${what}`, { path: disk });
}

function _isRefused(cause: unknown): boolean {
  // undici: TypeError('fetch failed', { cause: Error { code: 'ECONNREFUSED' } }), possibly nested in an AggregateError.
  for (let c: unknown = cause, depth = 0; c && depth < 4; c = (c as { cause?: unknown }).cause, depth++) {
    const code = (c as { code?: unknown }).code;
    if (code === 'ECONNREFUSED') return true;
    const errs = (c as { errors?: unknown }).errors;
    if (Array.isArray(errs) && errs.some((x) => (x as { code?: unknown })?.code === 'ECONNREFUSED')) return true;
  }
  return false;
}

function _msg(e: unknown): string {
  const parts: string[] = [];
  for (let c: unknown = e, depth = 0; c && depth < 4; c = (c as { cause?: unknown }).cause, depth++) {
    const m = (c as { message?: unknown }).message;
    const code = (c as { code?: unknown }).code;
    parts.push(typeof code === 'string' ? `${String(m)} (${code})` : String(m));
  }
  return parts.join(': ').slice(0, 300);
}

async function _readCapped(r: Response, max: number, disk: string): Promise<string> {
  const len = Number(r.headers.get('content-length') ?? NaN);
  if (len > max) throw new VmkitError('LIMIT', `etcd response for ${disk} is ${len} bytes (max ${max})`, { path: disk });
  if (!r.body) return '';
  return new TextDecoder().decode(await readCapped(r.body, max, () => new VmkitError('LIMIT', `etcd response for ${disk} exceeds ${max} bytes`, { path: disk })));
}

function _b64(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function _unb64(s: string): Uint8Array {
  // atob accepts whitespace and missing padding; etcd's encoder never emits either.
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4 !== 0) throw new Error('not canonical base64');
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
