/**
 * The attestation service: a `node:http` server that hands out nonces,
 * appraises what a remote machine says it runs against the verified
 * metadata of package repositories, and answers with a signed EAR.
 *
 * ```
 * client                                   service
 *   GET  /nonce ───────────────────────►   NonceStore.issue()         (single use, TTL, bounded)
 *   POST /attest {nonce, digests,       ►   body ≤ limit (streamed) → validate → nonce consumed
 *        packages, ima, pcr10}              → appraise(evidence, SourceSet) → sign EAR (EdDSA)
 *        ◄──────────────────────────────   { token, ear }
 *   GET  /.well-known/jwks.json ───────►   verifier public key(s)
 *   GET  /healthz, /metrics             ►   sources' state, counters, latency
 *                                           SourceSet refreshes sources on a timer (ETag /
 *                                           If-Modified-Since, Valid-Until); a verified index
 *                                           replaces the old one at once, a failed refresh keeps it
 * ```
 *
 * No framework: the surface is five routes, and `node:http` gives direct
 * control over body limits, timeouts and connection shutdown.
 * @module
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { VmkitError } from '../../errors.js';
import { hexInto, digestLength } from '../index-store.js';
import type { Digest, DigestAlgorithm } from '../types.js';
import { _appraiseSliced, _verifyEvidenceIma, parseEvidence, type Appraisal, type AppraiseEvidenceOptions, type Evidence, type EvidencePackage } from '../appraise.js';
import { availableParallelism } from 'node:os';
import { AppraisePool, type PoolJob, type PoolKind } from './_pool.js';
import { _SmallFirst } from './_turns.js';
import { _unpack } from './_packed.js';
import { NonceQuotaError, NonceStore, type NonceRefusal, type NonceStoreOptions } from './nonces.js';
import { SourceSet } from './refresh.js';
import { clientKey, readBody, sendError, sendJson } from './_http.js';
import { OnDemandFiles, appraiseInstalled, parseInstalled, type AppraiseInstalledOptions, type OnDemandFilesOptions } from '../machine.js';
import { appraiseMachineIma } from '../machine-ima.js';

/**
 * A JSON Web Key Set (what `GET /jwks` answers).
 *
 * @example
 * ```ts
 * const jwks: Jwks = await (await fetch('http://127.0.0.1:8080/jwks')).json();
 * await verifyEar(token, await loadEarPublicKey(jwks.keys[0]!));
 * ```
 */
export interface Jwks {
  keys: Record<string, unknown>[];
}

/**
 * The verifier the service delegates to: appraisal (vmkit/attest appraise)
 * and EAR signing (vmkit/attest ear). Pluggable so the HTTP layer can be
 * tested and embedded on its own.
 *
 * @example
 * ```ts
 * const base = await createVerifier({ keyFile: 'ear.pem' });
 * const strict: Verifier = { ...base, appraise: (ev, idx, signal) => base.appraise(ev, idx, signal) };
 * new AttestService({ sources, verifier: strict });
 * ```
 */
export interface Verifier {
  /** Appraises evidence against the repositories' reference values. */
  appraise(evidence: Evidence, index: SourceSet, signal?: AbortSignal): Promise<Appraisal> | Appraisal;
  /** Signs the appraisal as an EAR JWT echoing `nonce`. */
  sign(appraisal: Appraisal, nonce: string): Promise<string> | string;
  /** The public keys relying parties verify tokens with. */
  jwks(): Promise<Jwks> | Jwks;
  /**
   * The options `appraise` applies (createVerifier's). When present, large
   * requests are parsed and their IMA logs verified on pool workers with these
   * options, and appraised here in slices; a verifier without them appraises
   * every request itself.
   */
  readonly appraiseOptions?: AppraiseEvidenceOptions;
}

/**
 * Options of {@link AttestService}.
 *
 * @example
 * ```ts
 * const opts: AttestServiceOptions = { sources, verifier: await createVerifier({ keyFile: 'ear.pem' }) };
 * const svc = new AttestService(opts);
 * ```
 */
export interface AttestServiceOptions {
  /** The repositories (see `openSource`). */
  sources: SourceSet;
  /** Appraisal and signing. */
  verifier: Verifier;
  /** Nonce lifetime and bounds. */
  nonces?: NonceStoreOptions;
  /** Largest request body, bytes (default 16 MiB: room for an IMA log). */
  maxJsonBytes?: number;
  /** Request bytes held at once across all requests; beyond it new bodies get 503 (default 256 MiB). */
  maxBufferedBytes?: number;
  /** Most digests plus packages in one request (default 100 000). */
  maxItems?: number;
  /** Attestations appraised at once; more get 503 (default 256). */
  maxInFlight?: number;
  /**
   * Large requests (bodies over `largeBodyBytes`: IMA logs, long lists) in
   * flight at once; more get 503 (default 4 per worker, 2 without workers).
   * They are parsed and verified on the pool's workers (`workers` of them at
   * a time, the rest waiting for one) and appraised here in slices that give
   * the event loop back, so small requests and `/healthz` keep being answered.
   */
  maxLargeInFlight?: number;
  /** What counts as a large request body, bytes (default 64 KiB). */
  largeBodyBytes?: number;
  /**
   * Large requests one client (IPv4 address, IPv6 /64) has in flight at once;
   * more get 429 (default 1): one client cannot hold every worker, and the
   * workers' queue holds at most this many jobs per client, so large requests
   * of different clients take turns.
   */
  maxLargePerClient?: number;
  /** Most open connections (default 1024). */
  maxConnections?: number;
  /** Whole-request timeout, ms (default 30 000). */
  requestTimeoutMs?: number;
  /**
   * Appraisal worker threads for large requests (default: one per core but
   * one, at least one: a core stays for the event loop and the collector's
   * threads; 0 = none, large requests are then appraised on the event loop in
   * slices). Used when the verifier exposes `appraiseOptions` (createVerifier does).
   */
  workers?: number;
  /**
   * How much lower the workers' CPU priority is than the event loop's (Linux
   * nice increment, default 10; 0 = the same): on a busy machine the loop, and
   * so every small request, goes first.
   */
  workerNice?: number;
  /**
   * Small requests first (default true): while any small request is in
   * flight, the workers' and the event loop's work on large requests waits,
   * for at most three quarters of the time and 50 ms at once (_turns.ts), so
   * that a client sending large requests back to back costs the others
   * little latency. False: large work runs beside small requests (the
   * workers at their lower priority only).
   */
  smallFirst?: boolean;
  /**
   * What the appraisal workers are. `processes` (the default on Linux):
   * child processes, each in a session of its own, so the scheduler puts it
   * in an autogroup of its own at nice `workerNice`, and the kernel gives it
   * mostly the CPU time the service's own session does not want (garbage
   * collection included, which a thread's nice value does not reach).
   * `threads` (elsewhere): node:worker_threads at a lower nice value, giving
   * way to small requests at checkpoints (`smallFirst`).
   */
  pool?: PoolKind;
  /**
   * Whole-machine attestation (`POST /attest/installed`, machine.ts): where
   * packages' file digests are cached, how many are fetched at once, the
   * per-request budgets and the unowned-file policy.
   */
  installed?: OnDemandFilesOptions & AppraiseInstalledOptions & { /** Files per request (default 200 000). */ maxFiles?: number };
}

const ALGS: ReadonlySet<string> = new Set(['md5', 'sha1', 'sha256', 'sha384', 'sha512', 'sm3']);

function fail(code: 'ARG_TYPE' | 'ARG_RANGE', what: string): never {
  throw new VmkitError(code, what);
}

function str(v: unknown, what: string, max: number): string {
  if (typeof v !== 'string') fail('ARG_TYPE', `${what} must be a string`);
  if (v.length === 0 || v.length > max) fail('ARG_RANGE', `${what} must be 1..${max} characters`);
  return v;
}

/**
 * Parses a command-line digest `alg:hex` (bare hex is SHA-256).
 * @example `parseDigestArg('sha256:' + 'ab'.repeat(32)).alg // 'sha256'`
 */
export function parseDigestArg(s: string): Digest {
  const colon = s.indexOf(':');
  const [alg, hex] = colon >= 0 ? [s.slice(0, colon).toLowerCase(), s.slice(colon + 1)] : ['sha256', s];
  if (!ALGS.has(alg)) fail('ARG_RANGE', `unknown digest algorithm ${JSON.stringify(alg.slice(0, 16))} (one of ${[...ALGS].join(' ')})`);
  const len = digestLength(alg as DigestAlgorithm);
  const h = hex.toLowerCase();
  if (h.length !== len * 2 || !hexInto(h, new Uint8Array(len))) fail('ARG_RANGE', `a ${alg} digest is ${len * 2} hex characters: ${JSON.stringify(s.slice(0, 80))}`);
  return { alg: alg as DigestAlgorithm, hex: h };
}

/**
 * Parses a command-line package `name=version`.
 * @example `parsePackageArg('hello=2.10-3') // { name: 'hello', version: '2.10-3' }`
 */
export function parsePackageArg(s: string): EvidencePackage {
  const eq = s.indexOf('=');
  if (eq <= 0) fail('ARG_RANGE', `a package is "name=version": ${JSON.stringify(s.slice(0, 80))}`);
  return { name: str(s.slice(0, eq), 'package name', 256), version: str(s.slice(eq + 1), 'package version', 256) };
}

/**
 * Validates a parsed `POST /attest` body (`{ nonce, evidence }`, see
 * docs/attest-service.md) without trusting any of it: the nonce here, the
 * evidence with `parseEvidence` (appraise.ts). Throws ARG_TYPE / ARG_RANGE /
 * LIMIT (more than `maxItems` digests and packages).
 * @example `parseAttestRequest({ nonce: n, evidence: { digests: [{ alg: 'sha256', hex }] } })`
 */
export function parseAttestRequest(body: unknown, maxItems: number = 100_000): { nonce: string; evidence: Evidence } {
  if (!body || typeof body !== 'object' || Array.isArray(body)) fail('ARG_TYPE', 'the request body must be a JSON object { nonce, evidence }');
  const b = body as Record<string, unknown>;
  for (const k of Object.keys(b)) if (k !== 'nonce' && k !== 'evidence') fail('ARG_RANGE', `unknown request field ${JSON.stringify(k.slice(0, 40))}`);
  const nonce = str(b.nonce, 'nonce', 128);
  return { nonce, evidence: parseEvidence(b.evidence, { maxItems }) };
}

// A large request's share of the event loop (its lookups in the index, after a pool worker
// verified it): turns of about a millisecond, 128 items between looks at the clock. A small
// request that arrives meanwhile waits for one such turn, not for the verifier's `yieldMs`
// (5 ms); an extra turn is one setImmediate, microseconds against a millisecond of work.
const MAIN_SLICE_MS = 1;
const MAIN_SLICE_ITEMS = 128;

const ROUTES: ReadonlySet<string> = new Set(['/nonce', '/attest', '/attest/installed', '/.well-known/jwks.json', '/healthz', '/metrics']);

/** A refused nonce: 401 with the reason (docs/attest-service.md). */
class NonceRefused extends VmkitError {
  readonly reason: NonceRefusal;
  constructor(reason: NonceRefusal) {
    super('REFUSED', `nonce refused: ${reason}`);
    this.reason = reason;
  }
}

/** A client over its share of large requests in flight: 429, retry. */
class LargeQuotaError extends VmkitError {
  readonly httpStatus = 429;
  constructor(max: number) {
    super('LIMIT', `this client has ${max} large request${max === 1 ? '' : 's'} in flight already; send the next when it is answered`);
  }
}

/** Latency reservoir: the last N durations, for p50/p99 in /metrics. */
class Latency {
  private readonly buf = new Float64Array(4096);
  private n = 0;
  count = 0;
  sum = 0;
  add(ms: number): void {
    this.buf[this.n++ % this.buf.length] = ms;
    this.count++;
    this.sum += ms;
  }
  quantile(q: number): number {
    const k = Math.min(this.n, this.buf.length);
    if (k === 0) return 0;
    const a = Array.from(this.buf.subarray(0, k)).sort((x, y) => x - y);
    return a[Math.min(k - 1, Math.floor(q * k))]!;
  }
}

/**
 * The attestation service. Routes: `GET /nonce`, `POST /attest`,
 * `GET /.well-known/jwks.json`, `GET /healthz`, `GET /metrics`.
 *
 * @example
 * ```ts
 * const sources = new SourceSet([openSource('deb http://host/debian bookworm main', { keyring })]);
 * await sources.refreshAll({ requireAll: true });
 * const svc = new AttestService({ sources, verifier });
 * const url = await svc.listen(8080, '127.0.0.1');
 * // … later
 * await svc.close();
 * ```
 */
export class AttestService {
  /** The underlying `node:http` server (for `listen` options of your own). */
  readonly server: Server;
  /** The nonces handed out. */
  readonly nonces: NonceStore;
  /** The repositories. */
  readonly sources: SourceSet;
  private readonly verifier: Verifier;
  private readonly limits: { json: number; items: number; inFlight: number; buffered: number; large: number; largePerClient: number; largeBytes: number };
  private buffered = 0;
  private inFlight = 0;
  private largeInFlight = 0;
  /** Large requests in flight per client key (clientKey). */
  private readonly largeByClient = new Map<string, number>();
  private readonly pool: AppraisePool | undefined;
  /** Small requests in flight; large work gives way to them (_turns.ts). */
  private readonly smallFirst = new _SmallFirst();
  private readonly largeTurn: (() => Promise<void>) | undefined;
  private closing = false;
  /** File digests of packages on demand, for whole-machine requests. */
  readonly files: OnDemandFiles;
  private readonly installedOptions: NonNullable<AttestServiceOptions['installed']>;
  private readonly started = Date.now();
  private readonly latency = new Latency();
  private readonly counts = {
    requests: new Map<string, number>(), // "route status" → n
    verdicts: new Map<string, number>(),
  };

  constructor(options: AttestServiceOptions) {
    if (!options || !(options.sources instanceof SourceSet)) throw new VmkitError('ARG_TYPE', 'options.sources must be a SourceSet');
    if (!options.verifier) throw new VmkitError('ARG_TYPE', 'options.verifier is required');
    this.sources = options.sources;
    this.verifier = options.verifier;
    this.nonces = new NonceStore(options.nonces);
    this.installedOptions = options.installed ?? {};
    this.files = new OnDemandFiles(this.sources, this.installedOptions);
    const workers = options.workers ?? Math.max(1, availableParallelism() - 1);
    if (!Number.isSafeInteger(workers) || workers < 0 || workers > 256) throw new VmkitError('ARG_RANGE', 'options.workers must be an integer 0..256');
    if (options.pool !== undefined && options.pool !== 'threads' && options.pool !== 'processes') throw new VmkitError('ARG_RANGE', "options.pool must be 'threads' or 'processes'");
    if (options.maxLargePerClient !== undefined && (!Number.isSafeInteger(options.maxLargePerClient) || options.maxLargePerClient < 1)) {
      throw new VmkitError('ARG_RANGE', 'options.maxLargePerClient must be an integer ≥ 1');
    }
    this.pool = workers > 0 && this.verifier.appraiseOptions ? AppraisePool.open(workers, options.workerNice ?? 10, options.smallFirst === false ? undefined : this.smallFirst.flag, options.pool ?? (process.platform === 'linux' ? 'processes' : 'threads')) : undefined;
    this.largeTurn = options.smallFirst === false ? undefined : () => this.smallFirst.turn();
    this.limits = {
      json: options.maxJsonBytes ?? 16 << 20,
      buffered: options.maxBufferedBytes ?? 256 << 20,
      items: options.maxItems ?? 100_000,
      inFlight: options.maxInFlight ?? 256,
      large: options.maxLargeInFlight ?? (this.pool ? 4 * this.pool.size : 2),
      largePerClient: options.maxLargePerClient ?? 1,
      largeBytes: options.largeBodyBytes ?? 64 << 10,
    };
    this.server = createServer({ requestTimeout: options.requestTimeoutMs ?? 30_000, headersTimeout: 10_000, keepAliveTimeout: 5_000 }, (req, res) => {
      void this.handle(req, res);
    });
    this.server.maxConnections = options.maxConnections ?? 1024;
    this.server.maxHeadersCount = 64;
  }

  /**
   * Starts listening; resolves to the base URL. Port 0 picks a free port.
   * @example `const url = await svc.listen(0, '127.0.0.1');`
   */
  listen(port: number = 0, host: string = '127.0.0.1'): Promise<string> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        const a = this.server.address() as AddressInfo;
        const h = a.family === 'IPv6' ? `[${a.address}]` : a.address;
        resolve(`http://${h}:${a.port}`);
      });
    });
  }

  private count(route: string, status: number): void {
    const k = `${route} ${status}`;
    this.counts.requests.set(k, (this.counts.requests.get(k) ?? 0) + 1);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://service');
    const route = `${req.method} ${url.pathname}`;
    let status = 500;
    // Every request is small until its body says otherwise (attest): large work waits for it.
    const turn = { small: true };
    this.smallFirst.enter();
    try {
      switch (route) {
        case 'GET /nonce': {
          if (this.closing) throw new VmkitError('INVALID_STATE', 'the service is shutting down');
          let issued: { nonce: string; expires: Date };
          try {
            issued = this.nonces.issueWithExpiry(clientKey(req.socket.remoteAddress));
          } catch (e) {
            // A client over its own quota: 429. A full nonce table is the service's
            // condition, not the client's fault: 503, retry.
            if (e instanceof NonceQuotaError) throw e;
            throw new VmkitError('INVALID_STATE', (e as Error).message, { cause: e });
          }
          const { nonce, expires } = issued;
          sendJson(res, (status = 200), { nonce, expiresAt: expires.toISOString() });
          break;
        }
        case 'POST /attest':
          status = await this.attest(req, res, url, turn);
          break;
        case 'POST /attest/installed':
          status = await this.attestInstalled(req, res);
          break;
        case 'GET /.well-known/jwks.json':
          sendJson(res, (status = 200), await this.verifier.jwks(), { 'cache-control': 'public, max-age=300' });
          break;
        case 'GET /healthz':
          status = this.sources.anyReady && !this.closing ? 200 : 503;
          sendJson(res, status, this.health());
          break;
        case 'GET /metrics': {
          const body = this.metrics();
          res.writeHead((status = 200), { 'content-type': 'text/plain; version=0.0.4', 'content-length': Buffer.byteLength(body) });
          res.end(body);
          break;
        }
        default: {
          const known = ROUTES.has(url.pathname);
          status = known ? 405 : 404;
          sendJson(res, status, { error: { code: known ? 'ARG_RANGE' : 'NOT_FOUND', message: known ? `${req.method} not allowed on ${url.pathname}` : `no route ${url.pathname}` } });
          // Unread bodies of unknown routes are not worth reading.
          if (req.method !== 'GET' && req.method !== 'HEAD') res.shouldKeepAlive = false;
        }
      }
    } catch (e) {
      // Status mapping: stable VmkitError codes → 4xx for the client's faults, 5xx for ours.
      status = sendError(res, e, !req.complete);
      if (!req.complete) req.resume();
    } finally {
      if (turn.small) this.smallFirst.leave();
    }
    // Only known routes get their own counter: arbitrary paths must not grow the table.
    this.count(ROUTES.has(url.pathname) ? route : `${req.method} other`, status);
  }

  // Both attestation routes: refused while closing, past the in-flight bound, or before any
  // source is loaded; otherwise counted in flight (the caller's finally takes it off).
  private admit(): void {
    if (this.closing) throw new VmkitError('INVALID_STATE', 'the service is shutting down');
    if (this.inFlight >= this.limits.inFlight) throw new VmkitError('INVALID_STATE', `busy: ${this.inFlight} attestations in flight`);
    if (!this.sources.anyReady) throw new VmkitError('INVALID_STATE', 'repository sources are not loaded yet');
    this.inFlight++;
  }

  private async attest(req: IncomingMessage, res: ServerResponse, url: URL, turn: { small: boolean }): Promise<number> {
    this.admit();
    const t0 = performance.now();
    let held = 0;
    let large = false;
    let job: PoolJob | undefined;
    const client = clientKey(req.socket.remoteAddress);
    try {
      const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
      if (type !== 'application/json') throw new VmkitError('UNSUPPORTED', `content-type must be application/json, not ${JSON.stringify(type.slice(0, 60))}`);
      // Bounded while streaming: a body past the limit is refused as soon as it crosses it.
      // Every body counts against one budget, so many large bodies at once cannot exhaust memory.
      // The bytes stay counted until the answer is sent (finally below). A body that grows
      // past largeBodyBytes goes to a pool worker as it arrives (none of it kept here).
      const early: Buffer[] = [];
      try {
        const body = await readBody(req, this.limits.json, (c) => {
          if (this.buffered + c.length > this.limits.buffered) throw new VmkitError('INVALID_STATE', 'busy: too many request bytes in flight');
          this.buffered += c.length;
          held += c.length;
          if (job) {
            job.push(c);
            return 'drop';
          }
          if (!large && held > this.limits.largeBytes) {
            if (this.largeInFlight >= this.limits.large) throw new VmkitError('INVALID_STATE', `busy: ${this.largeInFlight} large requests in flight`);
            if ((this.largeByClient.get(client) ?? 0) >= this.limits.largePerClient) throw new LargeQuotaError(this.limits.largePerClient);
            this.largeByClient.set(client, (this.largeByClient.get(client) ?? 0) + 1);
            this.largeInFlight++;
            large = true;
            // No longer a small request: the large work no longer waits for this one.
            turn.small = false;
            this.smallFirst.leave();
            job = this.startJob();
            if (job) {
              for (const k of early) job.push(k);
              early.length = 0;
              job.push(c);
              return 'drop';
            }
          }
          if (this.pool && !large) early.push(c);
          return undefined;
        });
        let nonce: string;
        let appraisal: Appraisal;
        if (job) {
          nonce = await job.end();
          const refusal = await this.nonces.redeem(nonce);
          if (refusal) throw new NonceRefused(refusal);
          const packed = await job.go();
          job = undefined;
          appraisal = await _appraiseSliced(this.sources, _unpack(packed), { ...this.verifier.appraiseOptions, yieldMs: MAIN_SLICE_MS, slice: MAIN_SLICE_ITEMS, ...(this.largeTurn ? { turn: this.largeTurn } : {}) });
        } else {
          let parsed: unknown;
          try {
            parsed = JSON.parse(body.toString('utf8'));
          } catch (e) {
            throw new VmkitError('CORRUPT', `request body is not JSON: ${(e as Error).message}`, { cause: e });
          }
          let evidence: Evidence;
          ({ nonce, evidence } = parseAttestRequest(parsed, this.limits.items));
          const refusal = await this.nonces.redeem(nonce);
          if (refusal) throw new NonceRefused(refusal);
          appraisal = await this.verifier.appraise(evidence, this.sources);
        }
        const token = await this.verifier.sign(appraisal, nonce);
        this.counts.verdicts.set(appraisal.status, (this.counts.verdicts.get(appraisal.status) ?? 0) + 1);
        sendJson(res, 200, { ear: token });
        return 200;
      } finally {
        job?.abort();
      }
    } finally {
      this.buffered -= held;
      if (large) {
        this.largeInFlight--;
        const n = (this.largeByClient.get(client) ?? 1) - 1;
        if (n > 0) this.largeByClient.set(client, n);
        else this.largeByClient.delete(client);
      }
      this.inFlight--;
      this.latency.add(performance.now() - t0);
    }
  }

  // A whole machine's installed packages (machine.ts): parsed here (one JSON.parse of a
  // bounded body), the nonce redeemed, then file digests from the cache or fetched
  // within the request's budgets, and one `vmkit-machine` submodule signed.
  private async attestInstalled(req: IncomingMessage, res: ServerResponse): Promise<number> {
    this.admit();
    const t0 = performance.now();
    let held = 0;
    try {
      const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
      if (type !== 'application/json') throw new VmkitError('UNSUPPORTED', `content-type must be application/json, not ${JSON.stringify(type.slice(0, 60))}`);
      const body = await readBody(req, this.limits.json, (c) => {
        if (this.buffered + c.length > this.limits.buffered) throw new VmkitError('INVALID_STATE', 'busy: too many request bytes in flight');
        this.buffered += c.length;
        held += c.length;
        return undefined;
      });
      let parsed: unknown;
      try {
        parsed = JSON.parse(body.toString('utf8'));
      } catch (e) {
        throw new VmkitError('CORRUPT', `request body is not JSON: ${(e as Error).message}`, { cause: e });
      }
      if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) fail('ARG_TYPE', 'the request body must be a JSON object { nonce, installed, ima? }');
      const b = parsed as Record<string, unknown>;
      for (const k of Object.keys(b)) if (k !== 'nonce' && k !== 'installed' && k !== 'ima') fail('ARG_RANGE', `unknown request field ${JSON.stringify(k.slice(0, 40))}`);
      const nonce = str(b.nonce, 'nonce', 128);
      const evidence = parseInstalled(b.installed, { maxFiles: this.installedOptions.maxFiles ?? 200_000 });
      // With an IMA log (machine-ima.ts) the packages name only the measured files' owners.
      const ima = b.ima === undefined ? undefined : parseEvidence({ ima: b.ima }, { maxImaLog: this.limits.json }).ima!;
      const refusal = await this.nonces.redeem(nonce);
      if (refusal) throw new NonceRefused(refusal);
      const o = this.verifier.appraiseOptions ?? {};
      const sub = ima
        ? await appraiseMachineIma(this.sources, this.files, evidence, await _verifyEvidenceIma(ima, { ...o, yieldMs: o.yieldMs ?? 10 }), this.installedOptions)
        : await appraiseInstalled(this.sources, this.files, evidence, this.installedOptions);
      const token = await this.verifier.sign({ status: sub.status, submods: { [ima ? 'vmkit-machine-ima' : 'vmkit-machine']: sub } }, nonce);
      this.counts.verdicts.set(sub.status, (this.counts.verdicts.get(sub.status) ?? 0) + 1);
      sendJson(res, 200, { ear: token });
      return 200;
    } finally {
      this.buffered -= held;
      this.inFlight--;
      this.latency.add(performance.now() - t0);
    }
  }

  private startJob(): PoolJob | undefined {
    if (!this.pool) return undefined;
    const o = this.verifier.appraiseOptions ?? {};
    const own = o.excludes === undefined ? undefined : typeof o.excludes === 'function' ? [...o.excludes.patterns] : [...o.excludes];
    return this.pool.start({
      maxItems: this.limits.items,
      ...(o.requestRegex !== undefined ? { requestRegex: o.requestRegex } : {}),
      ...(o.maxExcludeWork !== undefined ? { maxExcludeWork: o.maxExcludeWork } : {}),
      ...(own ? { excludes: own } : {}),
    });
  }

  /** The /healthz document. @example `svc.health().sources[0].packages` */
  health(): { ok: boolean; allSources: boolean; uptimeS: number; inFlight: number; noncesOutstanding: number; sources: ReturnType<SourceSet['status']> } {
    return {
      ok: this.sources.anyReady && !this.closing,
      allSources: this.sources.ready,
      uptimeS: Math.round((Date.now() - this.started) / 1000),
      inFlight: this.inFlight,
      noncesOutstanding: this.nonces.outstanding,
      sources: this.sources.status(),
    };
  }

  /** The /metrics document (Prometheus text format). @example `svc.metrics().includes('vmkit_attest_requests_total')` */
  metrics(): string {
    const l: string[] = [];
    const esc = (s: string): string => s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
    l.push('# TYPE vmkit_attest_requests_total counter');
    for (const [k, n] of this.counts.requests) {
      const [method, path, status] = k.split(' ');
      l.push(`vmkit_attest_requests_total{method="${esc(method!)}",path="${esc(path ?? '')}",status="${status ?? ''}"} ${n}`);
    }
    l.push('# TYPE vmkit_attest_verdicts_total counter');
    for (const [k, n] of this.counts.verdicts) l.push(`vmkit_attest_verdicts_total{status="${esc(k)}"} ${n}`);
    l.push('# TYPE vmkit_attest_latency_ms summary');
    l.push(`vmkit_attest_latency_ms{quantile="0.5"} ${this.latency.quantile(0.5).toFixed(3)}`);
    l.push(`vmkit_attest_latency_ms{quantile="0.99"} ${this.latency.quantile(0.99).toFixed(3)}`);
    l.push(`vmkit_attest_latency_ms_sum ${this.latency.sum.toFixed(3)}`);
    l.push(`vmkit_attest_latency_ms_count ${this.latency.count}`);
    l.push('# TYPE vmkit_attest_in_flight gauge', `vmkit_attest_in_flight ${this.inFlight}`);
    const ns = this.nonces.stats;
    l.push('# TYPE vmkit_attest_nonces_issued_total counter', `vmkit_attest_nonces_issued_total ${ns.issued}`);
    l.push('# TYPE vmkit_attest_nonces_outstanding gauge', `vmkit_attest_nonces_outstanding ${this.nonces.outstanding}`);
    l.push('# TYPE vmkit_attest_nonces_clients gauge', `vmkit_attest_nonces_clients ${this.nonces.clients}`);
    l.push('# TYPE vmkit_attest_nonces_client_max gauge', `vmkit_attest_nonces_client_max ${this.nonces.maxHeld}`);
    l.push('# TYPE vmkit_attest_nonces_per_client_limit gauge', `vmkit_attest_nonces_per_client_limit ${this.nonces.maxPerClient}`);
    l.push('# TYPE vmkit_attest_nonces_quota_refused_total counter', `vmkit_attest_nonces_quota_refused_total ${ns.quota}`);
    l.push('# TYPE vmkit_attest_large_in_flight gauge', `vmkit_attest_large_in_flight ${this.largeInFlight}`);
    l.push('# TYPE vmkit_attest_large_clients gauge', `vmkit_attest_large_clients ${this.largeByClient.size}`);
    l.push('# TYPE vmkit_attest_large_per_client_limit gauge', `vmkit_attest_large_per_client_limit ${this.limits.largePerClient}`);
    l.push('# TYPE vmkit_attest_small_in_flight gauge', `vmkit_attest_small_in_flight ${this.smallFirst.inFlight}`);
    l.push('# TYPE vmkit_attest_workers gauge', `vmkit_attest_workers ${this.pool?.size ?? 0}`);
    l.push('# TYPE vmkit_attest_workers_busy gauge', `vmkit_attest_workers_busy ${this.pool?.busy ?? 0}`);
    l.push('# TYPE vmkit_attest_workers_queued gauge', `vmkit_attest_workers_queued ${this.pool?.queued ?? 0}`);
    l.push('# TYPE vmkit_attest_nonces_refused_total counter');
    for (const [k, n] of Object.entries(ns.refused)) l.push(`vmkit_attest_nonces_refused_total{reason="${k}"} ${n}`);
    l.push('# TYPE vmkit_attest_source_packages gauge');
    const st = this.sources.status();
    for (const s of st) l.push(`vmkit_attest_source_packages{source="${esc(s.id)}"} ${s.packages}`);
    l.push('# TYPE vmkit_attest_source_digests gauge');
    for (const s of st) l.push(`vmkit_attest_source_digests{source="${esc(s.id)}"} ${s.digests}`);
    l.push('# TYPE vmkit_attest_source_refresh_failures_total counter');
    for (const s of st) l.push(`vmkit_attest_source_refresh_failures_total{source="${esc(s.id)}"} ${s.failures}`);
    l.push('# TYPE vmkit_attest_source_last_success_seconds gauge');
    for (const s of st) l.push(`vmkit_attest_source_last_success_seconds{source="${esc(s.id)}"} ${s.lastSuccess ? (s.lastSuccess.getTime() / 1000).toFixed(0) : 0}`);
    return l.join('\n') + '\n';
  }

  /**
   * Stops accepting, lets requests in flight finish (up to `graceMs`), then
   * closes every connection and stops refreshing the sources (and closes them
   * unless `keepSources`).
   * @example `await svc.close({ graceMs: 5000 });`
   */
  async close(options: { graceMs?: number; keepSources?: boolean } = {}): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    const closed = new Promise<void>((r) => this.server.close(() => r()));
    this.server.closeIdleConnections();
    const deadline = Date.now() + (options.graceMs ?? 5000);
    while (this.inFlight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    this.server.closeAllConnections();
    if (this.server.listening) await closed;
    await this.pool?.close();
    if (!options.keepSources) this.sources.close();
  }
}
