/**
 * Owner records on the wire and on disk: parsing that refuses corrupt or
 * hostile metadata (wrong types, absurd sizes, epochs past 2^53, unknown
 * versions) and the lease arithmetic every store and the handoff share.
 * The format is in docs/ownership.md.
 * @module
 */
import { VmkitError } from '../../errors.js';
import type { OwnerIdentity, OwnerRecord, OwnerState } from './types.js';

/**
 * The record version this build writes (2: version 1 plus the disk's release
 * secret). It reads versions 1 and 2; a version-1 record gets a secret the
 * next time a holder takes the disk.
 * @example
 * if (rec.version !== OWNER_RECORD_VERSION) console.log('written by an older vmkit; upgraded at the next take');
 */
export const OWNER_RECORD_VERSION = 2;
/**
 * A release secret: 32 random bytes, base64url without padding (43 characters).
 * @example
 * if (!OWNER_SECRET_PATTERN.test(s)) throw new Error('not a release secret');
 */
export const OWNER_SECRET_PATTERN: RegExp = /^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$/;
/**
 * Largest serialized record accepted (a record is ~300 bytes; anything near this is hostile).
 * @example
 * if (bytes.length > MAX_RECORD_BYTES) reject();
 */
export const MAX_RECORD_BYTES: number = 16 * 1024;
/**
 * Longest id, host, endpoint or disk name accepted.
 * @example
 * const id = name.slice(0, MAX_NAME_CHARS);
 */
export const MAX_NAME_CHARS = 1024;
/**
 * Longest lease a record may grant (from its `updatedAt`): one hour. A record
 * promising more is refused, so that a hostile or buggy writer cannot lock a
 * disk away for years.
 * @example
 * await openOwned('vm.raw', { as: 'a', leaseMs: MAX_LEASE_MS }); // the longest lease allowed
 */
export const MAX_LEASE_MS = 3_600_000;

const STATES: readonly OwnerState[] = ['owned', 'releasing', 'free'];
const RECORD_KEYS = new Set(['version', 'disk', 'epoch', 'state', 'owner', 'leaseExpiresAt', 'updatedAt', 'secret']);
const OWNER_KEYS = new Set(['id', 'host', 'pid', 'endpoint']);

function corrupt(what: string, path: string | undefined): VmkitError {
  return new VmkitError('CORRUPT', `owner record${path ? ` of ${path}` : ''}: ${what}`, path === undefined ? {} : { path });
}

function str(v: unknown, name: string, path: string | undefined, allowEmpty = false): string {
  if (typeof v !== 'string') throw corrupt(`${name} must be a string, got ${typeof v}`, path);
  if (v.length > MAX_NAME_CHARS) throw new VmkitError('LIMIT', `owner record${path ? ` of ${path}` : ''}: ${name} is ${v.length} chars (max ${MAX_NAME_CHARS})`, path === undefined ? {} : { path });
  if (!allowEmpty && v.length === 0) throw corrupt(`${name} is empty`, path);
  return v;
}

// Epochs, pids and times are non-negative safe integers: a value past 2^53 would
// compare wrongly (2^53 + 1 === 2^53 in a double) and break the fencing order.
function uint(v: unknown, name: string, path: string | undefined): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw corrupt(`${name} must be an integer, got ${JSON.stringify(v)}`, path);
  if (v < 0 || !Number.isSafeInteger(v)) {
    throw new VmkitError('LIMIT', `owner record${path ? ` of ${path}` : ''}: ${name} ${v} is outside 0..2^53-1`, path === undefined ? {} : { path });
  }
  return v;
}

function plainObject(v: unknown, name: string, path: string | undefined): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw corrupt(`${name} must be an object`, path);
  return v as Record<string, unknown>;
}

/**
 * Validates an owner identity (from a record or a release request).
 *
 * @example
 * ```ts
 * const who = validateIdentity({ id: 'vm-1', host: 'a', pid: 42 });
 * ```
 */
export function validateIdentity(v: unknown, path?: string): OwnerIdentity {
  const o = plainObject(v, 'owner', path);
  for (const k of Object.keys(o)) if (!OWNER_KEYS.has(k)) throw corrupt(`unknown owner field ${JSON.stringify(k.slice(0, 64))}`, path);
  const id = str(o.id, 'owner.id', path);
  const host = str(o.host, 'owner.host', path, true);
  const pid = uint(o.pid, 'owner.pid', path);
  if (o.endpoint === undefined) return { id, host, pid };
  return { id, host, pid, endpoint: str(o.endpoint, 'owner.endpoint', path) };
}

/**
 * Validates a decoded record: every field typed and bounded, version 1 or 2
 * (2 carries `secret`, 1 has none), `owned`/`releasing` records name an owner,
 * the lease is at most {@link MAX_LEASE_MS} past `updatedAt`. Throws CORRUPT,
 * LIMIT or UNSUPPORTED (another version).
 *
 * @example
 * ```ts
 * const rec = validateRecord(JSON.parse(text), 'vm.qcow2');
 * ```
 */
export function validateRecord(v: unknown, path?: string): OwnerRecord {
  const o = plainObject(v, 'record', path);
  if (o.version !== 1 && o.version !== 2) {
    if (typeof o.version === 'number' && Number.isInteger(o.version)) {
      throw new VmkitError('UNSUPPORTED', `owner record${path ? ` of ${path}` : ''}: version ${o.version} (this build reads versions 1 and ${OWNER_RECORD_VERSION})`, path === undefined ? {} : { path });
    }
    throw corrupt(`version must be 1 or ${OWNER_RECORD_VERSION}, got ${JSON.stringify(o.version)?.slice(0, 64)}`, path);
  }
  const version: 1 | 2 = o.version;
  for (const k of Object.keys(o)) if (!RECORD_KEYS.has(k)) throw corrupt(`unknown field ${JSON.stringify(k.slice(0, 64))}`, path);
  const disk = str(o.disk, 'disk', path);
  const epoch = uint(o.epoch, 'epoch', path);
  if (typeof o.state !== 'string' || !(STATES as readonly string[]).includes(o.state)) {
    throw corrupt(`state must be one of ${STATES.join(', ')}, got ${JSON.stringify(o.state)?.slice(0, 64)}`, path);
  }
  const state = o.state as OwnerState;
  const leaseExpiresAt = uint(o.leaseExpiresAt, 'leaseExpiresAt', path);
  const updatedAt = uint(o.updatedAt, 'updatedAt', path);
  if (leaseExpiresAt > updatedAt + MAX_LEASE_MS) {
    throw new VmkitError('LIMIT', `owner record${path ? ` of ${path}` : ''}: lease runs ${leaseExpiresAt - updatedAt} ms past its write (max ${MAX_LEASE_MS})`, path === undefined ? {} : { path });
  }
  const owner = o.owner === undefined ? undefined : validateIdentity(o.owner, path);
  if (state !== 'free' && owner === undefined) throw corrupt(`state ${state} without an owner`, path);
  // Version 2 exists for the secret: it always has one, version 1 never (an old
  // reader would take an unknown field for corruption). The value is never echoed.
  if (version === 2 && (typeof o.secret !== 'string' || !OWNER_SECRET_PATTERN.test(o.secret))) throw corrupt('version 2 needs a secret of 43 base64url characters (32 bytes)', path);
  if (version === 1 && o.secret !== undefined) throw corrupt('a version 1 record has no secret', path);
  const base: OwnerRecord = owner === undefined ? { version, disk, epoch, state, leaseExpiresAt, updatedAt } : { version, disk, epoch, state, owner, leaseExpiresAt, updatedAt };
  return version === 2 ? { ...base, secret: o.secret as string } : base;
}

/**
 * Parses a serialized record (UTF-8 JSON bytes or text), refusing anything
 * larger than {@link MAX_RECORD_BYTES} before it is decoded.
 *
 * @example
 * ```ts
 * const rec = parseRecord(await fs.readFile('vm.raw.owner/r-000000000000001.json'));
 * ```
 */
export function parseRecord(data: Uint8Array | string, path?: string): OwnerRecord {
  const size = typeof data === 'string' ? data.length : data.length;
  if (size > MAX_RECORD_BYTES) throw new VmkitError('LIMIT', `owner record${path ? ` of ${path}` : ''} is ${size} bytes (max ${MAX_RECORD_BYTES})`, path === undefined ? {} : { path });
  let text: string;
  try {
    text = typeof data === 'string' ? data : new TextDecoder('utf-8', { fatal: true }).decode(data);
  } catch (e) {
    throw new VmkitError('CORRUPT', `owner record${path ? ` of ${path}` : ''} is not UTF-8`, { cause: e, ...(path === undefined ? {} : { path }) });
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new VmkitError('CORRUPT', `owner record${path ? ` of ${path}` : ''} is not JSON: ${(e as Error).message}`, { cause: e, ...(path === undefined ? {} : { path }) });
  }
  return validateRecord(v, path);
}

/**
 * Serializes a record (validated first, so a store never writes what it would refuse to read).
 *
 * @example
 * ```ts
 * const bytes = encodeRecord(rec);
 * ```
 */
export function encodeRecord(rec: OwnerRecord): Uint8Array {
  const r = validateRecord(rec);
  // Fixed key order: records are diffable and byte-stable.
  const o: Record<string, unknown> = { version: r.version, disk: r.disk, epoch: r.epoch, state: r.state };
  if (r.owner) o.owner = r.owner.endpoint === undefined ? { id: r.owner.id, host: r.owner.host, pid: r.owner.pid } : { ...r.owner };
  o.leaseExpiresAt = r.leaseExpiresAt;
  o.updatedAt = r.updatedAt;
  if (r.secret !== undefined) o.secret = r.secret;
  return new TextEncoder().encode(JSON.stringify(o) + '\n');
}

/**
 * True when the record's lease is alive by the reader's clock `now`, allowing
 * `maxSkewMs` of clock difference in the holder's favour (a reader never
 * declares a lease dead before `leaseExpiresAt + maxSkewMs`).
 *
 * @example
 * ```ts
 * if (rec.state !== 'free' && leaseAlive(rec, Date.now(), 1000)) askToRelease(rec.owner);
 * ```
 */
export function leaseAlive(rec: OwnerRecord, now: number, maxSkewMs: number): boolean {
  return rec.state !== 'free' && now <= rec.leaseExpiresAt + maxSkewMs;
}
