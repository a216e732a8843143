/**
 * Proof on release requests: a holder lets go only for a requester that can
 * read the disk's owner record. The record (version 2) carries a per-disk
 * secret; a request carries the time it was made, a random nonce and an
 * HMAC-SHA256 with that secret over all of it. The holder accepts a request
 * whose MAC verifies (compared in constant time by WebCrypto), whose time is
 * within its window of its own clock, and whose MAC it has not seen before in
 * that window. Every refusal is the same answer: it names no disk, epoch or
 * holder, and does not say which check failed.
 *
 * ```
 * mac = base64url(HMAC-SHA256(key = base64url-decode(record.secret),
 *         UTF-8(JSON.stringify(["vmkit-release-v1", disk, epoch,
 *               requester.id, requester.host, requester.pid, requester.endpoint ?? null,
 *               time, nonce]))))
 * ```
 *
 * WebCrypto only (no `node:crypto`): the in-process and MessagePort transports
 * run in browsers too. The threat model is in docs/ownership.md.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { OWNER_SECRET_PATTERN } from './record.js';
import type { ReleaseReply, ReleaseRequest } from './transport.js';
import type { OwnerIdentity, OwnerRecord } from './types.js';

/**
 * The answer to every request that fails authentication (and to requests
 * reaching a process that holds nothing yet): it says nothing of the disk.
 * @example
 * if (!(await auth.accept(req, secret))) return RELEASE_DENIED;
 */
export const RELEASE_DENIED: ReleaseReply = Object.freeze({ ok: false, code: 'DENIED', reason: 'release request not authenticated' });

/**
 * Most MACs a holder remembers (only requests that passed the MAC check are
 * remembered, so only holders of the secret can fill it; past it, requests
 * are refused until old ones leave the window, never forgotten early).
 * @example
 * new ReleaseAuthenticator({ windowMs: 6000, maxRemembered: RELEASE_REPLAY_CAPACITY });
 */
export const RELEASE_REPLAY_CAPACITY = 4096;

const DOMAIN = 'vmkit-release-v1';
const NONCE = /^[A-Za-z0-9_-]{22}$/;
const MAC = /^[A-Za-z0-9_-]{43}$/;

function b64url(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function unb64url(s: string): Uint8Array {
  const bin = atob(s.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (s.length % 4)) % 4));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function subtle(): SubtleCrypto {
  const s = globalThis.crypto?.subtle;
  if (!s) throw new VmkitError('UNSUPPORTED', 'release requests need WebCrypto (crypto.subtle): a secure context in browsers');
  return s;
}

/**
 * A fresh release secret (32 random bytes, base64url): what a take writes
 * into a record that has none.
 *
 * @example
 * ```ts
 * const record = { ...old, version: 2, secret: old.secret ?? newOwnerSecret() };
 * ```
 */
export function newOwnerSecret(): string {
  const b = new Uint8Array(32);
  globalThis.crypto.getRandomValues(b);
  return b64url(b);
}

function macInput(req: ReleaseRequest, time: number, nonce: string): Uint8Array {
  const r = req.requester;
  return new TextEncoder().encode(JSON.stringify([DOMAIN, req.disk, req.epoch, r.id, r.host, r.pid, r.endpoint ?? null, time, nonce]));
}

// Keys are imported once per secret (a holder checks every request with the same one).
const keys = new Map<string, Promise<CryptoKey>>();
function keyOf(secret: string): Promise<CryptoKey> {
  if (typeof secret !== 'string' || !OWNER_SECRET_PATTERN.test(secret)) throw new VmkitError('ARG_RANGE', 'secret must be a release secret (43 base64url characters)');
  let k = keys.get(secret);
  if (!k) {
    if (keys.size >= 64) keys.clear();
    k = Promise.resolve(subtle().importKey('raw', unb64url(secret) as Uint8Array<ArrayBuffer>, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign', 'verify']));
    keys.set(secret, k);
  }
  return k;
}

/**
 * Adds the proof to a release request: `time` (ms since 1970 by the
 * requester's clock), a random `nonce` and the `mac` made with the disk's secret.
 *
 * @example
 * ```ts
 * const req = await signReleaseRequest({ disk: 'vm.raw', epoch: 7, requester: me }, record.secret!, Date.now());
 * const reply = await httpTransport.request(record.owner!.endpoint!, req, 5000);
 * ```
 */
export async function signReleaseRequest(req: Pick<ReleaseRequest, 'disk' | 'epoch' | 'requester'>, secret: string, time: number): Promise<ReleaseRequest> {
  if (!Number.isSafeInteger(time) || time < 0) throw new VmkitError('ARG_RANGE', `time must be a non-negative integer of ms, got ${time}`);
  const n = new Uint8Array(16);
  globalThis.crypto.getRandomValues(n);
  const nonce = b64url(n);
  const base = { disk: req.disk, epoch: req.epoch, requester: req.requester };
  const mac = new Uint8Array(await subtle().sign('HMAC', await keyOf(secret), macInput(base, time, nonce) as Uint8Array<ArrayBuffer>));
  return { ...base, time, nonce, mac: b64url(mac) };
}

/**
 * The request an opener sends to the holder named in `record`: signed with
 * the record's secret, or (a version-1 record, written by an older holder
 * that checks no proof) unsigned.
 *
 * @example
 * ```ts
 * const req = await releaseRequestFor(record, me, Date.now());
 * ```
 */
export function releaseRequestFor(record: OwnerRecord, requester: OwnerIdentity, now: number): Promise<ReleaseRequest> {
  const req = { disk: record.disk, epoch: record.epoch, requester };
  return record.secret === undefined ? Promise.resolve(req) : signReleaseRequest(req, record.secret, Math.floor(now));
}

/**
 * Options of {@link ReleaseAuthenticator}.
 * @example
 * const o: ReleaseAuthenticatorOptions = { windowMs: 6000, now: Date.now };
 */
export interface ReleaseAuthenticatorOptions {
  /** Largest difference between a request's time and this clock, either way, in ms. */
  readonly windowMs: number;
  /** This holder's wall clock in ms (default `Date.now`). */
  readonly now?: () => number;
  /** Most MACs remembered at once (default {@link RELEASE_REPLAY_CAPACITY}). */
  readonly maxRemembered?: number;
}

/**
 * The holder's check of release requests: MAC, time window, replay. One per
 * release endpoint (it remembers the MACs it accepted).
 *
 * @example
 * ```ts
 * const auth = new ReleaseAuthenticator({ windowMs: 6000 });
 * const handler = async (req) => ((await auth.accept(req, record.secret)) ? release(req) : RELEASE_DENIED);
 * ```
 */
export class ReleaseAuthenticator {
  private readonly windowMs: number;
  private readonly now: () => number;
  private readonly max: number;
  /** MAC → the time after which its request is outside the window for good. */
  private readonly seen = new Map<string, number>();

  constructor(opts: ReleaseAuthenticatorOptions) {
    if (typeof opts !== 'object' || opts === null) throw new VmkitError('ARG_TYPE', 'options must be an object');
    if (!Number.isSafeInteger(opts.windowMs) || opts.windowMs < 0) throw new VmkitError('ARG_RANGE', `options.windowMs must be a non-negative integer, got ${opts.windowMs}`);
    this.windowMs = opts.windowMs;
    this.now = opts.now ?? Date.now;
    this.max = opts.maxRemembered ?? RELEASE_REPLAY_CAPACITY;
    if (!Number.isSafeInteger(this.max) || this.max < 1) throw new VmkitError('ARG_RANGE', `options.maxRemembered must be a positive integer, got ${this.max}`);
  }

  /** MACs remembered now, expired ones included until a full memory sweeps them (for tests and metrics). */
  get remembered(): number {
    return this.seen.size;
  }

  /**
   * True when `req` carries a valid proof made with `secret` (undefined: this
   * endpoint holds nothing, so nothing is accepted), within the window, not
   * seen before; the MAC is then remembered. The MAC is checked before the
   * time and the replay set, so a request without the secret learns nothing
   * and never enters the set.
   *
   * @example
   * ```ts
   * if (!(await auth.accept(req, holder.secret))) return RELEASE_DENIED;
   * ```
   */
  async accept(req: ReleaseRequest, secret: string | undefined): Promise<boolean> {
    if (secret === undefined || typeof req.mac !== 'string' || typeof req.nonce !== 'string' || typeof req.time !== 'number') return false;
    if (!MAC.test(req.mac) || !NONCE.test(req.nonce) || !Number.isSafeInteger(req.time)) return false;
    // WebCrypto's verify compares the MACs in constant time (Node: CRYPTO_memcmp; browsers: BoringSSL/NSS likewise).
    const ok = await subtle().verify('HMAC', await keyOf(secret), unb64url(req.mac) as Uint8Array<ArrayBuffer>, macInput(req, req.time, req.nonce) as Uint8Array<ArrayBuffer>);
    if (!ok) return false;
    const now = this.now();
    if (Math.abs(now - req.time) > this.windowMs) return false;
    if (this.seen.has(req.mac)) return false;
    // Expired entries need not go at once (their requests fail the time check anyway): sweep only when full.
    if (this.seen.size >= this.max) for (const [m, until] of this.seen) if (until < now) this.seen.delete(m);
    if (this.seen.size >= this.max) return false;
    // Remembered until its time has left the window by this clock: it could not be accepted after that anyway.
    this.seen.set(req.mac, req.time + this.windowMs);
    return true;
  }
}
