/**
 * The remote machine's side of attestation: fetch a nonce, send the evidence
 * with it, and verify the signed result (EAR) before believing it — signature
 * against the service's JWKS (or a pinned key), nonce echoed, not expired.
 * Runs wherever `fetch` does (Node, browsers, workers).
 *
 * ```
 *  attest({ serviceUrl, evidence })
 *    GET  {serviceUrl}/nonce                  → { nonce }
 *    POST {serviceUrl}/attest {nonce,evidence} → { ear }
 *    GET  {serviceUrl}/.well-known/jwks.json  → { keys }     (skipped when `jwks` is pinned)
 *    verifyEar(ear, keys, { nonce })          → status, claims
 * ```
 * docs/attest-service.md has the protocol.
 * @module
 */
import type { JSONWebKeySet } from 'jose';
import { VmkitError } from '../errors.js';
import type { Evidence } from './appraise.js';
import { verifyEar, type EarVerificationKey, type VerifiedEar } from './ear.js';

/**
 * Options shared by the client calls.
 *
 * @example
 * ```ts
 * const { nonce } = await fetchNonce('http://attest.example:8080', { timeoutMs: 5000 });
 * ```
 */
export interface ClientOptions {
  /** The fetch to use (default `globalThis.fetch`). */
  fetch?: typeof fetch;
  /** Cancels the calls. */
  signal?: AbortSignal;
  /** Per-call timeout in milliseconds (default 30 000) → TIMEOUT. */
  timeoutMs?: number;
  /** Largest response body accepted (default 32 MiB) → LIMIT. */
  maxResponseBytes?: number;
}

/**
 * Options of {@link attest}.
 *
 * @example
 * ```ts
 * const r = await attest({ serviceUrl: 'http://attest.example:8080', evidence, jwks: await loadEarPublicKey(jwksJson) });
 * ```
 */
export interface AttestOptions extends ClientOptions {
  /** Base URL of the service (`http://host:port`, with or without a path prefix). */
  serviceUrl: string;
  /** What the machine runs (docs/attest-service.md). */
  evidence: Evidence;
  /**
   * The service's key(s), obtained out of band (recommended). Without it the
   * JWKS is fetched from the service itself, which only proves the result came
   * from whoever answers at `serviceUrl`.
   */
  jwks?: EarVerificationKey;
  /** Clock tolerance for the EAR's times, in seconds (default 30). */
  clockTolerance?: number;
}

/**
 * A verified attestation result.
 *
 * @example
 * ```ts
 * const { affirmed, status, token }: AttestResult = await attest({ serviceUrl, evidence, jwks });
 * if (!affirmed) console.error('not trusted:', status);
 * else console.log(token); // hand the signed EAR to relying parties
 * ```
 */
export interface AttestResult extends VerifiedEar {
  /** The signed EAR (compact JWS), to pass on to relying parties. */
  token: string;
  /** The nonce it answers. */
  nonce: string;
  /** True only when the overall status is `affirming`. */
  affirmed: boolean;
}

function base(url: string): string {
  if (typeof url !== 'string') throw new VmkitError('ARG_TYPE', 'serviceUrl must be a string');
  let u: URL;
  try {
    u = new URL(url);
  } catch (cause) {
    throw new VmkitError('ARG_RANGE', `serviceUrl ${JSON.stringify(url)} is not a URL`, { cause });
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new VmkitError('ARG_RANGE', `serviceUrl must be http(s), got ${u.protocol}`);
  return u.href.replace(/\/+$/, '');
}

async function readCapped(res: Response, max: number, url: string): Promise<string> {
  const len = Number(res.headers.get('content-length') ?? NaN);
  if (Number.isFinite(len) && len > max) throw new VmkitError('LIMIT', `${url}: response of ${len} bytes is over ${max}`, { path: url });
  if (!res.body) return '';
  const reader = res.body.getReader();
  const parts: Uint8Array[] = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.length;
    if (n > max) {
      await reader.cancel().catch(() => {});
      throw new VmkitError('LIMIT', `${url}: response over ${max} bytes`, { path: url });
    }
    parts.push(value);
  }
  const all = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    all.set(p, o);
    o += p.length;
  }
  return new TextDecoder().decode(all);
}

/** True when `e` (or a cause of it) is a connection reset or closed under the request. */
function _connectionDropped(e: unknown): boolean {
  for (let c = e as { code?: unknown; cause?: unknown } | undefined, i = 0; c && i < 5; c = c.cause as typeof c, i++) {
    if (c.code === 'ECONNRESET' || c.code === 'EPIPE' || c.code === 'UND_ERR_SOCKET') return true;
  }
  return false;
}

/** One JSON call: NETWORK / TIMEOUT / CANCELLED on transport, REFUSED on an error status, CORRUPT on a bad body. */
async function call(url: string, opts: ClientOptions, init: RequestInit = {}): Promise<Record<string, unknown>> {
  const f = opts.fetch ?? globalThis.fetch;
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const max = opts.maxResponseBytes ?? 32 << 20;
  const ctl = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    ctl.abort();
  }, timeoutMs);
  const onAbort = (): void => ctl.abort();
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    if (opts.signal?.aborted) throw new VmkitError('CANCELLED', `${url}: cancelled`, { path: url });
    let res: Response;
    let body: string;
    const method = init.method ?? 'GET';
    for (let attempt = 0; ; attempt++) {
      try {
        res = await f(url, { ...init, signal: ctl.signal, headers: { accept: 'application/json', ...(init.headers as Record<string, string> | undefined) } });
        body = await readCapped(res, max, url);
        break;
      } catch (e) {
        if (e instanceof VmkitError) throw e;
        if (timedOut) throw new VmkitError('TIMEOUT', `${method} ${url}: no answer within ${timeoutMs} ms`, { cause: e, path: url });
        if (opts.signal?.aborted) throw new VmkitError('CANCELLED', `${url}: cancelled`, { cause: e, path: url });
        // A kept-alive connection the server closed as it was reused (its idle timeout and ours
        // race, more so on a loaded machine) fails with a reset before any answer: a GET is
        // safe to send again. Twice at most: the pool may hold a second stale connection before
        // it opens a new one. A POST is not retried.
        if (attempt < 2 && method === 'GET' && _connectionDropped(e)) continue;
        throw new VmkitError('NETWORK', `${method} ${url}: ${(e as Error).message}`, { cause: e, path: url });
      }
    }
    let json: unknown;
    try {
      json = body === '' ? undefined : JSON.parse(body);
    } catch (cause) {
      if (res.ok) throw new VmkitError('CORRUPT', `${url}: answer is not JSON`, { cause, path: url });
    }
    if (!res.ok) {
      const err = (typeof json === 'object' && json !== null ? (json as { error?: unknown }).error : undefined) as { code?: unknown; message?: unknown; reason?: unknown } | undefined;
      const detail = [err?.code, err?.reason, err?.message].filter((x) => typeof x === 'string').join(': ');
      throw new VmkitError('REFUSED', `${init.method ?? 'GET'} ${url}: HTTP ${res.status}${detail ? ` (${detail})` : ''}`, { path: url });
    }
    if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new VmkitError('CORRUPT', `${url}: answer is not a JSON object`, { path: url });
    return json as Record<string, unknown>;
  } finally {
    clearTimeout(timer);
    opts.signal?.removeEventListener('abort', onAbort);
  }
}

/**
 * Fetches a fresh nonce (`GET {serviceUrl}/nonce`).
 * @example `const { nonce } = await fetchNonce('http://attest.example:8080')`
 */
export async function fetchNonce(serviceUrl: string, options: ClientOptions = {}): Promise<{ nonce: string; expiresAt?: string }> {
  const b = base(serviceUrl);
  const j = await call(`${b}/nonce`, options);
  if (typeof j.nonce !== 'string' || j.nonce.length === 0 || j.nonce.length > 1024) throw new VmkitError('CORRUPT', `${b}/nonce: no nonce in the answer`, { path: `${b}/nonce` });
  const out: { nonce: string; expiresAt?: string } = { nonce: j.nonce };
  if (typeof j.expiresAt === 'string') out.expiresAt = j.expiresAt;
  return out;
}

/**
 * Fetches the service's public keys (`GET {serviceUrl}/.well-known/jwks.json`).
 * @example `const jwks = await fetchJwks('http://attest.example:8080')`
 */
export async function fetchJwks(serviceUrl: string, options: ClientOptions = {}): Promise<JSONWebKeySet> {
  const b = base(serviceUrl);
  const j = await call(`${b}/.well-known/jwks.json`, options);
  if (!Array.isArray(j.keys) || j.keys.length === 0) throw new VmkitError('CORRUPT', `${b}/.well-known/jwks.json: no keys`, { path: `${b}/.well-known/jwks.json` });
  return j as unknown as JSONWebKeySet;
}

/**
 * Asks the service to attest `evidence` and verifies its answer. Resolves with
 * the verified result whatever its status (check `affirmed`); throws REFUSED
 * when the service refuses the request, INTEGRITY when the result does not
 * verify (signature, nonce, expiry), NETWORK / TIMEOUT / LIMIT / CORRUPT on
 * transport trouble.
 *
 * @example
 * ```ts
 * const r = await attest({ serviceUrl: 'http://attest.example:8080', evidence: { digests: [{ alg: 'sha256', hex, path: '/usr/bin/hello' }] } });
 * if (!r.affirmed) process.exitCode = 1;
 * console.log(r.status, r.token);
 * ```
 * @throws {VmkitError} ARG_TYPE / ARG_RANGE: a bad option (named); NETWORK: the service is unreachable or answered out of protocol; TIMEOUT: no answer in time; REFUSED: the service refused the evidence; CORRUPT: a malformed answer or EAR; LIMIT: an answer past its bound; CANCELLED: `signal` aborted.
 */
export async function attest(options: AttestOptions): Promise<AttestResult> {
  const b = base(options.serviceUrl);
  if (typeof options.evidence !== 'object' || options.evidence === null) throw new VmkitError('ARG_TYPE', 'evidence must be an object');
  const { nonce } = await fetchNonce(b, options);
  const j = await call(`${b}/attest`, options, { method: 'POST', headers: { 'content-type': 'application/json; charset=utf-8' }, body: JSON.stringify({ nonce, evidence: options.evidence }) });
  if (typeof j.ear !== 'string') throw new VmkitError('CORRUPT', `${b}/attest: no ear in the answer`, { path: `${b}/attest` });
  const keys = options.jwks ?? (await fetchJwks(b, options));
  const v = await verifyEar(j.ear, keys, { nonce, ...(options.clockTolerance === undefined ? {} : { clockTolerance: options.clockTolerance }) });
  return { ...v, token: j.ear, nonce, affirmed: v.status === 'affirming' };
}
