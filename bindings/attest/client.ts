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
import { readCapped as readStream } from '../_bytes.js';
import { worst, type AppraisalSummary, type ArStatus, type Evidence, type ItemVerdict } from './appraise.js';
import { verifyEar, type EarSubmod, type EarVerificationKey, type VerifiedEar } from './ear.js';
import type { InstalledEvidence } from './installed.js';
import { parseImaLine } from './ima.js';
import type { ImaEvidence } from './evidence.js';

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
  return new TextDecoder().decode(await readStream(res.body, max, () => new VmkitError('LIMIT', `${url}: response over ${max} bytes`, { path: url })));
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

/**
 * Options of {@link attestInstalled}.
 *
 * @example
 * ```ts
 * const o: AttestInstalledOptions = { serviceUrl: 'http://attest:8080', installed: await collectInstalled(), jwks, partBytes: 4 << 20 };
 * ```
 */
export interface AttestInstalledOptions extends ClientOptions {
  serviceUrl: string;
  /** The machine's evidence (installed.ts `collectInstalled`). */
  installed: InstalledEvidence;
  /** The service's key(s), obtained out of band (recommended); else fetched from the service. */
  jwks?: EarVerificationKey;
  /** Largest part sent in one request, bytes of JSON (default 4 MiB; the service's limit is 16 MiB). */
  partBytes?: number;
  /** A part whose packages were not all fetched within the service's budget is sent again, at most this many times (default 20). */
  maxRounds?: number;
  /**
   * The machine's IMA log (with the quoted PCR 10 when there is one), sent
   * after the parts with the owners of the measured files: each measured
   * file is appraised against its package's signed file digests
   * (machine-ima.ts), in a `vmkit-machine-ima` EAR of its own.
   */
  ima?: ImaEvidence;
  /** Called after each part's answer. */
  onPart?: (done: number, parts: number) => void;
  clockTolerance?: number;
}

/**
 * The result of {@link attestInstalled}: each part's signed EAR, and their
 * `vmkit-machine` appraisals added up.
 *
 * @example
 * ```ts
 * const r: InstalledResult = await attestInstalled({ serviceUrl, installed });
 * console.log(r.status, r.categories.affirmed, r.items.filter((i) => i.status !== 'affirming').length);
 * ```
 */
export interface InstalledResult {
  /** The worst status of the parts. */
  status: ArStatus;
  /** File counts per category, over all parts. */
  categories: Record<string, number>;
  summary: AppraisalSummary;
  /** Every listed item of every part (non-affirmed files; packages with their provenance). */
  items: ItemVerdict[];
  /** The signed EARs, one per part (the IMA log's last). */
  tokens: string[];
  /** The IMA log's appraisal, when one was sent (its status is part of `status`). */
  ima?: NonNullable<EarSubmod['vmkit.appraisal']> & { status: ArStatus };
  affirmed: boolean;
}

/**
 * The IMA request's evidence: every package (so that the service knows its
 * version) with only the files the log measures, by the path they are at.
 * @example `const owners = _imaOwners(installed, log);`
 */
export function _imaOwners(ev: InstalledEvidence, log: string): InstalledEvidence {
  const measured = new Set<string>();
  let n = 0;
  for (const line of log.split('\n')) {
    n++;
    try {
      const e = parseImaLine(line, n);
      if (e) measured.add(e.path);
    } catch {
      // the service verifies the log and reports its faults
    }
  }
  return { packages: ev.packages.map((p) => ({ ...p, files: p.files.filter((f) => measured.has(f.at ?? f.path)).map((f) => ({ path: f.path, ...(f.at ? { at: f.at } : {}), ...(f.conffile ? { conffile: true as const } : {}) })) })), unowned: [] };
}

/**
 * Splits installed-package evidence into parts of at most `partBytes` of
 * JSON each (a package is never split; a package larger than a part goes alone).
 * @example `splitInstalled(await collectInstalled(), 4 << 20).length`
 */
export function splitInstalled(ev: InstalledEvidence, partBytes: number = 4 << 20): InstalledEvidence[] {
  if (!Number.isInteger(partBytes) || partBytes < 1024) throw new VmkitError('ARG_RANGE', 'partBytes must be an integer ≥ 1024');
  const parts: InstalledEvidence[] = [];
  let cur: InstalledEvidence = { packages: [], unowned: [] };
  let size = 0;
  const flush = (): void => {
    if (cur.packages.length || cur.unowned.length) parts.push(cur);
    cur = { packages: [], unowned: [] };
    size = 0;
  };
  for (const p of ev.packages) {
    const n = JSON.stringify(p).length + 1;
    if (size + n > partBytes) flush();
    cur.packages.push(p);
    size += n;
  }
  for (const u of ev.unowned) {
    const n = JSON.stringify(u).length + 1;
    if (size + n > partBytes) flush();
    cur.unowned.push(u);
    size += n;
  }
  flush();
  if (parts.length === 0) parts.push({ packages: [], unowned: [] });
  return parts;
}

/**
 * Attests a whole machine: its installed-package evidence sent in bounded
 * parts to `POST /attest/installed`, each with its own nonce and EAR
 * (verified), the appraisals added up. A part with packages the service had
 * not fetched within its per-request budget is sent again (they are cached
 * by then) while that makes progress.
 * @example `const r = await attestInstalled({ serviceUrl: 'http://attest:8080', installed: await collectInstalled({ root: '/' }) });`
 */
export async function attestInstalled(options: AttestInstalledOptions): Promise<InstalledResult> {
  const b = base(options.serviceUrl);
  const parts = splitInstalled(options.installed, options.partBytes ?? 4 << 20);
  const maxRounds = options.maxRounds ?? 20;
  const io: ClientOptions = { ...options, timeoutMs: options.timeoutMs ?? 600_000 };
  const keys = options.jwks ?? (await fetchJwks(b, options));
  const out: InstalledResult = { status: 'none', categories: {}, summary: { items: 0, affirming: 0, warning: 0, contraindicated: 0, none: 0, excluded: 0, omitted: 0 }, items: [], tokens: [], affirmed: false };
  for (let i = 0; i < parts.length; i++) {
    let rec: NonNullable<EarSubmod['vmkit.appraisal']> | undefined;
    let status: ArStatus = 'none';
    let token = '';
    for (let round = 0, lastMissing = Infinity; round < maxRounds; round++) {
      const { nonce } = await fetchNonce(b, options);
      const j = await call(`${b}/attest/installed`, io, { method: 'POST', headers: { 'content-type': 'application/json; charset=utf-8' }, body: JSON.stringify({ nonce, installed: parts[i] }) });
      if (typeof j.ear !== 'string') throw new VmkitError('CORRUPT', `${b}/attest/installed: no ear in the answer`, { path: `${b}/attest/installed` });
      const v = await verifyEar(j.ear, keys, { nonce, ...(options.clockTolerance === undefined ? {} : { clockTolerance: options.clockTolerance }) });
      const sub = v.claims.submods['vmkit-machine'];
      if (!sub?.['vmkit.appraisal']) throw new VmkitError('CORRUPT', `${b}/attest/installed: the EAR has no vmkit-machine appraisal`);
      rec = sub['vmkit.appraisal'];
      status = v.status;
      token = j.ear;
      const missing = rec.categories?.['not-fetched'] ?? 0;
      if (missing === 0 || missing >= lastMissing) break;
      lastMissing = missing;
    }
    out.tokens.push(token);
    out.status = worst(out.status, status);
    for (const [k, n] of Object.entries(rec!.categories ?? {})) out.categories[k] = (out.categories[k] ?? 0) + n;
    for (const k of Object.keys(out.summary) as (keyof AppraisalSummary)[]) out.summary[k] += rec!.summary[k];
    for (const it of rec!.items) out.items.push(it);
    options.onPart?.(i + 1, parts.length);
  }
  if (options.ima) {
    const { nonce } = await fetchNonce(b, options);
    const j = await call(`${b}/attest/installed`, io, { method: 'POST', headers: { 'content-type': 'application/json; charset=utf-8' }, body: JSON.stringify({ nonce, installed: _imaOwners(options.installed, options.ima.log), ima: options.ima }) });
    if (typeof j.ear !== 'string') throw new VmkitError('CORRUPT', `${b}/attest/installed: no ear in the answer`, { path: `${b}/attest/installed` });
    const v = await verifyEar(j.ear, keys, { nonce, ...(options.clockTolerance === undefined ? {} : { clockTolerance: options.clockTolerance }) });
    const rec = v.claims.submods['vmkit-machine-ima']?.['vmkit.appraisal'];
    if (!rec) throw new VmkitError('CORRUPT', `${b}/attest/installed: the EAR has no vmkit-machine-ima appraisal`);
    out.ima = { ...rec, status: v.status };
    out.tokens.push(j.ear);
    out.status = worst(out.status, v.status);
  }
  out.affirmed = out.status === 'affirming';
  return out;
}
