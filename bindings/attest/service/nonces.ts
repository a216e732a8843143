/**
 * Single-use nonces for the attestation service: fresh, short-lived,
 * unforgeable and bounded in memory.
 *
 * ```
 * nonce = base64url( id[16] ‖ expiry-ms[8, big-endian] ‖ HMAC-SHA256(secret, id ‖ expiry)[0..16] )
 *
 * issue():   random id → outstanding (Map id → expiry, insertion order = expiry order)
 * consume(): decode → MAC recomputed, compared in constant time → expiry checked
 *            → id deleted from outstanding (a second consume finds nothing: replay refused)
 * ```
 *
 * The MAC means a forged or altered nonce is refused before any table
 * lookup, and the comparison never leaks how many bytes matched. The table
 * holds at most `maxOutstanding` ids; expired ids are dropped from its front
 * (every nonce has the same TTL, so insertion order is expiry order). Each
 * client (the caller's key: the service uses the peer's IPv4 address or IPv6
 * /64) holds at most `maxPerClient` of them, so one client's flood cannot
 * fill the table for everyone (100 000 nonces from one address used to lock
 * every other client out for the nonce lifetime).
 * @module
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { VmkitError } from '../../errors.js';
import type { ReplaySet } from './replay.js';

/**
 * Options of {@link NonceStore}.
 *
 * @example
 * ```ts
 * const store = new NonceStore({ ttlMs: 30_000, maxPerClient: 100 });
 * ```
 */
export interface NonceStoreOptions {
  /** How long a nonce stays valid, in milliseconds (default 60 000). */
  ttlMs?: number;
  /** Most nonces outstanding at once (default 100 000, about 6 MB). */
  maxOutstanding?: number;
  /** Most nonces outstanding for one client key (default 1 000); beyond it LIMIT (429 from the service). */
  maxPerClient?: number;
  /** Clock (tests). */
  now?: () => number;
  /**
   * MAC key (default: 32 random bytes per store). Replicas behind one load
   * balancer share it (`--nonce-secret-file`), so each accepts the others' nonces.
   */
  secret?: Uint8Array;
  /**
   * The used-nonce set shared by replicas (see `etcdReplaySet`). With it a
   * nonce is accepted when its MAC and expiry hold and nobody claimed it
   * before, whichever replica issued it; without it, only nonces issued by
   * this store and not yet used are (the in-process table).
   */
  replay?: ReplaySet;
}

const ID = 16;
const MAC = 16;
const RAW = ID + 8 + MAC;

/**
 * Why a nonce was refused (stable strings, echoed in refusals).
 *
 * @example
 * ```ts
 * const why: NonceRefusal | undefined = await store.redeem(nonce);
 * if (why === 'unknown-or-replayed') console.log('replay');
 * ```
 */
export type NonceRefusal = 'malformed' | 'forged' | 'expired' | 'unknown-or-replayed';

/**
 * A client holding `maxPerClient` nonces asked for another: LIMIT, answered 429 by the service.
 *
 * @example
 * ```ts
 * try { store.issue(clientKey(req)); } catch (e) { if (e instanceof NonceQuotaError) res.statusCode = e.httpStatus; }
 * ```
 */
export class NonceQuotaError extends VmkitError {
  /** The HTTP status the service answers with. */
  readonly httpStatus = 429;
  constructor(max: number) {
    super('LIMIT', `this client holds ${max} unused nonces already; use or let them expire`);
  }
}

/**
 * Issues and consumes single-use nonces.
 *
 * @example
 * ```ts
 * const nonces = new NonceStore({ ttlMs: 30_000 });
 * const n = nonces.issue();          // hand to the client
 * nonces.consume(n);                 // undefined: accepted (once)
 * nonces.consume(n);                 // 'unknown-or-replayed'
 * ```
 */
export class NonceStore {
  /** Nonce lifetime in milliseconds. */
  readonly ttlMs: number;
  /** Most nonces outstanding at once. */
  readonly maxOutstanding: number;
  /** Most nonces outstanding for one client key. */
  readonly maxPerClient: number;
  private readonly now: () => number;
  private readonly secret: Uint8Array;
  private readonly live = new Map<string, { exp: number; client: string }>(); // id (base64url) → expiry ms, holder
  private readonly perClient = new Map<string, number>(); // client key → nonces outstanding
  /** Counters for metrics (`quota`: issues refused because the client held `maxPerClient`). */
  readonly stats: { issued: number; accepted: number; quota: number; refused: Record<NonceRefusal, number> } = {
    issued: 0,
    accepted: 0,
    quota: 0,
    refused: { malformed: 0, forged: 0, expired: 0, 'unknown-or-replayed': 0 },
  };

  constructor(options: NonceStoreOptions = {}) {
    this.ttlMs = options.ttlMs ?? 60_000;
    this.maxOutstanding = options.maxOutstanding ?? 100_000;
    this.maxPerClient = options.maxPerClient ?? 1000;
    if (!Number.isSafeInteger(this.maxPerClient) || this.maxPerClient < 1) throw new VmkitError('ARG_RANGE', 'maxPerClient must be a positive integer');
    if (!(this.ttlMs > 0) || !Number.isFinite(this.ttlMs)) throw new VmkitError('ARG_RANGE', 'ttlMs must be a positive number');
    if (!Number.isSafeInteger(this.maxOutstanding) || this.maxOutstanding < 1) throw new VmkitError('ARG_RANGE', 'maxOutstanding must be a positive integer');
    this.now = options.now ?? Date.now;
    this.secret = options.secret ?? randomBytes(32);
    if (!(this.secret instanceof Uint8Array) || this.secret.length < 16) throw new VmkitError('ARG_RANGE', 'secret must be at least 16 bytes');
    this.replay = options.replay;
  }

  private readonly replay: ReplaySet | undefined;

  /**
   * Consumes `nonce` as {@link NonceStore.consume} does, or, with a shared
   * replay set, by claiming it there (once across every replica). Rejects with
   * INVALID_STATE when the replay set cannot answer (fail closed).
   * @example `const refusal = await store.redeem(body.nonce);`
   */
  async redeem(nonce: unknown): Promise<NonceRefusal | undefined> {
    if (!this.replay) return this.consume(nonce);
    const r = this.authentic(nonce);
    if (typeof r === 'string') {
      this.stats.refused[r]++;
      return r;
    }
    this.drop(r.id); // issued here: its place in this client's quota is free again
    if (!(await this.replay.claim(r.id, r.exp))) {
      this.stats.refused['unknown-or-replayed']++;
      return 'unknown-or-replayed';
    }
    this.stats.accepted++;
    return undefined;
  }

  // Format, MAC and expiry: what any holder of the secret can check.
  private authentic(nonce: unknown): NonceRefusal | { id: string; exp: number } {
    if (typeof nonce !== 'string' || nonce.length !== 54 || !/^[A-Za-z0-9_-]+$/.test(nonce)) return 'malformed';
    const raw = Buffer.from(nonce, 'base64url');
    if (raw.length !== RAW) return 'malformed';
    if (!timingSafeEqual(this.mac(raw), raw.subarray(ID + 8))) return 'forged';
    const exp = Number(raw.readBigUInt64BE(ID));
    const id = raw.subarray(0, ID).toString('base64url');
    if (exp <= this.now()) {
      this.drop(id);
      return 'expired';
    }
    return { id, exp };
  }

  /** Nonces issued and neither consumed nor expired (expired ones may linger until the next call). */
  get outstanding(): number {
    return this.live.size;
  }

  private mac(raw: Uint8Array): Buffer {
    return createHmac('sha256', this.secret).update(raw.subarray(0, ID + 8)).digest().subarray(0, MAC);
  }

  /** Clients holding nonces now. */
  get clients(): number {
    return this.perClient.size;
  }

  /** The most nonces one client holds now (a client near `maxPerClient` is flooding). */
  get maxHeld(): number {
    let m = 0;
    for (const n of this.perClient.values()) if (n > m) m = n;
    return m;
  }

  private drop(id: string): boolean {
    const e = this.live.get(id);
    if (!e) return false;
    this.live.delete(id);
    const n = this.perClient.get(e.client)! - 1;
    if (n === 0) this.perClient.delete(e.client);
    else this.perClient.set(e.client, n);
    return true;
  }

  private purge(now: number): void {
    for (const [id, e] of this.live) {
      if (e.exp > now) break;
      this.drop(id);
    }
  }

  // Random ids come from a pool refilled 4 KiB at a time: one CSPRNG call per 256 nonces
  // instead of one each (a call costs a system call; per nonce it was a tenth of the
  // service's time under load). Bytes are used once and never leave this store.
  private pool = Buffer.alloc(0);
  private poolAt = 0;
  private randomInto(dst: Buffer): void {
    if (this.poolAt + ID > this.pool.length) {
      this.pool = randomBytes(ID * 256);
      this.poolAt = 0;
    }
    this.pool.copy(dst, 0, this.poolAt, this.poolAt + ID);
    this.pool.fill(0, this.poolAt, this.poolAt + ID);
    this.poolAt += ID;
  }

  /**
   * A fresh nonce (54 base64url characters) for `client` (any key naming the
   * caller; default one shared key). Throws {@link NonceQuotaError} (LIMIT)
   * when that client holds `maxPerClient` unexpired nonces, LIMIT when
   * `maxOutstanding` are out in all (the service answers 429 and 503).
   * @example `const { nonce, expires } = store.issueWithExpiry('192.0.2.7');`
   */
  issueWithExpiry(client: string = ''): { nonce: string; expires: Date } {
    const now = this.now();
    this.purge(now);
    const held = this.perClient.get(client) ?? 0;
    if (held >= this.maxPerClient) {
      this.stats.quota++;
      throw new NonceQuotaError(this.maxPerClient);
    }
    if (this.live.size >= this.maxOutstanding) {
      throw new VmkitError('LIMIT', `too many outstanding nonces (${this.maxOutstanding}); retry later`);
    }
    const raw = Buffer.alloc(RAW);
    this.randomInto(raw);
    const exp = now + this.ttlMs;
    raw.writeBigUInt64BE(BigInt(exp), ID);
    this.mac(raw).copy(raw, ID + 8);
    this.live.set(raw.subarray(0, ID).toString('base64url'), { exp, client });
    this.perClient.set(client, held + 1);
    this.stats.issued++;
    return { nonce: raw.toString('base64url'), expires: new Date(exp) };
  }

  /** {@link NonceStore.issueWithExpiry} without the expiry. @example `const n = store.issue();` */
  issue(client?: string): string {
    return this.issueWithExpiry(client).nonce;
  }

  /**
   * Consumes `nonce`: undefined when it was issued here, unexpired and never
   * consumed before; otherwise the reason it is refused. Never throws.
   * @example `if (store.consume(n) !== undefined) refuse();`
   */
  consume(nonce: unknown): NonceRefusal | undefined {
    const r = this.check(nonce);
    if (r) this.stats.refused[r]++;
    else this.stats.accepted++;
    return r;
  }

  private check(nonce: unknown): NonceRefusal | undefined {
    const r = this.authentic(nonce);
    if (typeof r === 'string') return r;
    if (!this.drop(r.id)) return 'unknown-or-replayed';
    return undefined;
  }
}
