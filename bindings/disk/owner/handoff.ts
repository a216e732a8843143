/**
 * The ownership handoff: open a disk by reading its owner record, asking a
 * live owner to release it, taking the next epoch by compare-and-swap and
 * opening the image behind a write guard that fences this holder as soon as
 * its epoch stops being current. The owner side answers release requests:
 * it drains in-flight writes, flushes, closes and writes the record `free`.
 * The sequence, the invariants and the failure cases are in docs/ownership.md.
 * The opener's decisions are the pure `nextStep` (`_step.ts`); this module
 * carries them out. The holder is `_holder.ts`, the write guards `_guard.ts`.
 * @module
 */
import { VmkitError, isVmkitError } from '../../errors.js';
import { openImage, type OpenImageOptions } from '../image.js';
import { fileProvider } from '../backends/file.js';
import type { ImageDevice } from '../formats/types.js';
import { _within } from './_deadline.js';
import { _guardedProvider, _OwnedDevice } from './_guard.js';
import { _Holder, _monotonic as monotonic } from './_holder.js';
import { nextStep, pollMs } from './_step.js';
import { RELEASE_DENIED, ReleaseAuthenticator, newOwnerSecret, releaseRequestFor } from './auth.js';
import { FileOwnerStore } from './file-store.js';
import { httpTransport, inProcessTransport, type ReleaseReply, type ReleaseRequest, type ReleaseTransport } from './transport.js';
import type { OwnedDisk, OwnedOpen, OwnerIdentity, OwnerRecord, OwnerSnapshot, OwnerStore } from './types.js';
import type { WriteGuard } from '../_guard.js';
import type { StorageProvider } from '../backends/storage.js';

export type { OwnedDisk, OwnedOpen, ReleaseOutcome } from './types.js';

/**
 * Default lease: 10 s, renewed every third of it.
 * @example
 * await openOwned('vm.raw', { as: 'a', leaseMs: DEFAULT_LEASE_MS / 2 });
 */
export const DEFAULT_LEASE_MS = 10_000;
/**
 * Default clock difference tolerated between hosts (see docs/ownership.md, clock skew).
 * @example
 * await openOwned('vm.raw', { as: 'a', maxSkewMs: 4 * DEFAULT_MAX_SKEW_MS }); // hosts without NTP
 */
export const DEFAULT_MAX_SKEW_MS = 1_000;

/**
 * Options of {@link openOwned}.
 * @example
 * const o: OpenOwnedOptions = { as: 'vm-17', serve: '127.0.0.1:7070', leaseMs: 5000, onReleaseRequest: () => (busy ? 'backup running' : undefined) };
 */
export interface OpenOwnedOptions {
  /** Who opens: an id (host and pid are filled in) or a full identity. */
  as: string | OwnerIdentity;
  /** Where owner records live (default: a {@link FileOwnerStore} sidecar next to the disk). */
  store?: OwnerStore;
  /** How release requests travel, both ways (default: HTTP). */
  transport?: ReleaseTransport;
  /**
   * Where this holder answers release requests (transport-specific; HTTP
   * `host:port`, default `127.0.0.1:0`; off loopback only with TLS or
   * `insecure`, see `createHttpTransport`). `false`: do not serve — openers
   * must then wait for the lease to run out.
   */
  serve?: string | false;
  /** Lease length in ms (default {@link DEFAULT_LEASE_MS}; 100 ms … 1 h). */
  leaseMs?: number;
  /** Clock difference tolerated between hosts in ms (default {@link DEFAULT_MAX_SKEW_MS}). */
  maxSkewMs?: number;
  /** Longest wait for a live owner that cannot be reached or is draining, in ms (default: 2 leases). */
  waitMs?: number;
  /** Timeout of one release request in ms (default 5000). */
  requestTimeoutMs?: number;
  /** The disk's name in the store (default: the path as given). */
  name?: string;
  /** How to open the image (provider, format); the guard is added by the handoff. */
  image?: Omit<OpenImageOptions, 'guard'>;
  /**
   * Opens what is held instead of `openImage(diskPath)`: called once the epoch is
   * taken, with the holder's guard and a storage provider whose writable storage
   * checks it before every write. Everything it writes must go through them (a
   * live disk whose jobs create, rename and remove layers: `vmkit disk serve
   * --as --control`). `image` is ignored when it is given.
   */
  open?: (held: { guard: WriteGuard; provider: StorageProvider }) => Promise<OwnedOpen>;
  /**
   * The owner's policy for release requests: return a reason to refuse (the
   * opener reports it as VmkitError REFUSED), or nothing to release.
   */
  onReleaseRequest?: (req: ReleaseRequest) => string | undefined | void | Promise<string | undefined | void>;
  /** Wall clock in ms (default `Date.now`); tests use it to simulate clock skew. */
  now?: () => number;
  /** Cancels the open while it waits. */
  signal?: AbortSignal;
}

let hostName: string | undefined;
async function localHost(): Promise<string> {
  if (hostName !== undefined) return hostName;
  try {
    const name = 'node:os';
    hostName = ((await import(/* @vite-ignore */ name)) as typeof import('node:os')).hostname();
  } catch {
    hostName = typeof navigator !== 'undefined' ? 'browser' : 'unknown';
  }
  return hostName;
}

/**
 * Fills in host and pid for an id (or validates a full identity).
 *
 * @example
 * ```ts
 * const me = await ownerIdentity('vm-1'); // { id: 'vm-1', host: 'node-a', pid: 4242 }
 * ```
 */
export async function ownerIdentity(as: string | OwnerIdentity): Promise<OwnerIdentity> {
  if (typeof as === 'string') {
    if (as.length === 0 || as.length > 1024) throw new VmkitError('ARG_RANGE', 'as: owner id must be 1..1024 chars');
    return { id: as, host: await localHost(), pid: typeof process !== 'undefined' ? process.pid : 0 };
  }
  if (typeof as !== 'object' || as === null || typeof as.id !== 'string' || as.id.length === 0) throw new VmkitError('ARG_TYPE', 'as must be an owner id or an OwnerIdentity');
  return { id: as.id, host: as.host, pid: as.pid };
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new VmkitError('CANCELLED', 'open cancelled'));
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(new VmkitError('CANCELLED', 'open cancelled'));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function posInt(v: number | undefined, name: string, def: number, min: number, max: number): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) throw new VmkitError('ARG_RANGE', `${name} must be an integer in ${min}..${max}, got ${v}`);
  return v;
}

function pickTransport(endpoint: string, preferred: ReleaseTransport): ReleaseTransport | undefined {
  for (const t of [preferred, httpTransport, inProcessTransport]) if (t.handles(endpoint)) return t;
  return undefined;
}

/**
 * Opens `diskPath` as its owner (the method of docs/ownership.md): reads the
 * owner record; asks a live owner to release (it drains, flushes, closes and
 * writes `free`, or refuses → VmkitError REFUSED); waits for an unreachable
 * owner's lease to run out (up to `waitMs`, then TIMEOUT); takes the next
 * epoch by compare-and-swap; opens the image behind a guard that throws FENCED
 * once another holder owns a newer epoch. Serves release requests while held.
 *
 * @example
 * ```ts
 * import { createHttpTransport, openOwned } from 'vmkit/disk';
 * import { readFile } from 'node:fs/promises';
 * // Other hosts reach the release endpoint over HTTPS (plain HTTP serves loopback only).
 * const transport = createHttpTransport({ tls: { cert: await readFile('node-a.crt'), key: await readFile('node-a.key') } });
 * const d = await openOwned('vm.qcow2', { as: 'vm-17', serve: '0.0.0.0:7070', transport });
 * console.log(`holding epoch ${d.epoch}, release requests at ${d.endpoint}`);
 * await d.device.write(0, new Uint8Array(4096));
 * const { reason } = await d.done; // 'requested' when another host took it over
 * ```
 * @throws {VmkitError} ARG_TYPE / ARG_RANGE: a bad option (named); REFUSED: the holder refused to let go (its reason in the message); TIMEOUT: the disk did not become free within `waitMs`, or the store did not answer; CONFLICT: lost a race for the record too many times; CORRUPT / LIMIT / UNSUPPORTED: the owner record is malformed, out of bounds or from a newer version; NETWORK: the store is unreachable; CANCELLED: `signal` aborted; and what openImage throws.
 */
export async function openOwned(diskPath: string, opts: OpenOwnedOptions): Promise<OwnedDisk> {
  if (typeof diskPath !== 'string' || diskPath.length === 0) throw new VmkitError('ARG_TYPE', 'diskPath must be a non-empty string');
  if (typeof opts !== 'object' || opts === null) throw new VmkitError('ARG_TYPE', 'openOwned needs options with at least { as }');
  const leaseMs = posInt(opts.leaseMs, 'leaseMs', DEFAULT_LEASE_MS, 100, 3_600_000);
  const maxSkewMs = posInt(opts.maxSkewMs, 'maxSkewMs', DEFAULT_MAX_SKEW_MS, 0, 600_000);
  const waitMs = posInt(opts.waitMs, 'waitMs', 2 * leaseMs, 0, 24 * 3_600_000);
  const requestTimeoutMs = posInt(opts.requestTimeoutMs, 'requestTimeoutMs', 5000, 1, 600_000);
  const store = opts.store ?? new FileOwnerStore();
  const transport = opts.transport ?? httpTransport;
  const now = opts.now ?? Date.now;
  const disk = opts.name ?? diskPath;
  const me0 = await ownerIdentity(opts.as);

  // Serve before taking the disk: the endpoint goes into the record we write.
  // Until the holder exists there is no secret, so every request is DENIED.
  // A request's time may differ from ours by the skew plus its sender's timeout.
  let holder: _Holder | undefined;
  const auth = new ReleaseAuthenticator({ windowMs: maxSkewMs + requestTimeoutMs, now });
  const server =
    opts.serve === false
      ? undefined
      : await transport.serve(opts.serve, async (req) => (holder && (await auth.accept(req, holder.secret)) ? holder.onRequest(req) : RELEASE_DENIED));
  const me: OwnerIdentity = server ? { ...me0, endpoint: server.endpoint } : me0;
  const deadline = monotonic() + waitMs;
  // Every wait below is bounded (docs/ownership.md, deadlines): a store call by what is left of the
  // open's deadline (at least one request's timeout), a release request by its timeout — also when
  // the transport's own timer cannot fire (an HTTP `fetch` that never settles, its unref'd timer).
  const bound = (): number => Math.max(deadline + requestTimeoutMs - monotonic(), requestTimeoutMs);
  const read = (): Promise<OwnerSnapshot> => _within(store.read(disk), bound(), () => `reading the owner record of ${disk}`);
  const ask = (t: ReleaseTransport, endpoint: string, req: ReleaseRequest, ms: number): Promise<ReleaseReply> =>
    _within(Promise.resolve().then(() => t.request(endpoint, req, ms)), ms, () => `release request to ${endpoint}`);
  // The executor of nextStep (_step.ts): read the record, decide, carry the step out. Every step
  // ends in a holder, an error, or another round ('again' at once, 'wait' after a poll).
  let lastWhy = '';
  try {
    for (let round = 0; ; round++) {
      if (opts.signal?.aborted) throw new VmkitError('CANCELLED', `open of ${disk} cancelled`);
      // Every path below either takes the disk or loops; under endless contention
      // (each release goes to someone else) the wait is bounded too.
      if (round > 0 && monotonic() > deadline + requestTimeoutMs) {
        throw new VmkitError('TIMEOUT', `${disk}: not taken after ${waitMs} ms${lastWhy ? `; last: ${lastWhy}` : ' (others kept winning it)'}`, { path: disk });
      }
      const snap = await read();
      const r = snap.record;
      const wall = now();
      let next: _Holder | 'again' | 'wait';
      switch (nextStep(r, wall, maxSkewMs)) {
        case 'exhausted':
          throw new VmkitError('LIMIT', `${disk}: epoch ${r!.epoch} cannot grow further`, { path: disk });
        case 'ask':
          next = await askOwner(r!);
          break;
        case 'wait':
          lastWhy = r!.state === 'releasing' ? `owner ${r!.owner?.id} is releasing` : `owner ${r!.owner?.id} serves no release endpoint`;
          next = 'wait';
          break;
        case 'probe-expired':
          next = (await probeExpired(r!)) ?? (await takeFrom(snap));
          break;
        case 'take':
          next = await takeFrom(snap);
          break;
      }
      if (next === 'again') continue;
      if (next === 'wait') {
        await waitOut(r!, wall);
        continue;
      }
      return next;
    }
  } catch (e) {
    await server?.close().catch(() => {});
    throw e;
  }

  // 'ask': a live owner serves a release endpoint. It lets go ('again', or the disk taken from the
  // revision it wrote), refuses (REFUSED), answers CONFLICT ('again' shortly), or cannot be reached ('wait').
  async function askOwner(r: OwnerRecord): Promise<_Holder | 'again' | 'wait'> {
    const owner = r.owner!;
    const endpoint = owner.endpoint!;
    const t = pickTransport(endpoint, transport);
    if (!t) {
      lastWhy = `no transport reaches owner ${owner.id} at ${endpoint}`;
      return 'wait';
    }
    let reply: ReleaseReply | undefined;
    try {
      reply = await ask(t, endpoint, await releaseRequestFor(r, me, now()), requestTimeoutMs);
    } catch (e) {
      if (!isVmkitError(e, 'NETWORK') && !isVmkitError(e, 'TIMEOUT')) throw e;
      lastWhy = `owner ${owner.id} at ${endpoint} is unreachable (${e.message})`;
    }
    if (reply?.ok) {
      // The owner wrote `free` at the epoch we asked about and told us its revision:
      // take over from it directly (a CAS; if anything changed since, read again).
      if (reply.revision !== undefined && reply.epoch === r.epoch) {
        const h = await take(reply.revision, r.epoch, r.secret);
        if (h) return h;
      }
      return 'again';
    }
    if (reply && reply.code === 'REFUSED') {
      throw new VmkitError('REFUSED', `${disk}: owner ${owner.id} (epoch ${r.epoch}) refused to release: ${reply.reason}`, { path: disk });
    }
    if (reply && reply.code === 'CONFLICT') {
      // The record moved on since we read it (or the holder was fenced): read again.
      lastWhy = `owner ${owner.id} answered: ${reply.reason}`;
      if (monotonic() > deadline) throw new VmkitError('TIMEOUT', `${disk}: gave up after ${waitMs} ms; last: ${lastWhy}`, { path: disk });
      await sleep(2, opts.signal);
      return 'again';
    }
    if (reply) lastWhy = `owner ${owner.id} answered ${reply.code}: ${reply.reason}`;
    return 'wait';
  }

  // 'probe-expired': the lease looks dead by our clock. If the owner still answers, our clock (or
  // its) is off: ask rather than take (docs/ownership.md, clock skew). undefined: take it.
  async function probeExpired(r: OwnerRecord): Promise<'again' | undefined> {
    const owner = r.owner!;
    const endpoint = owner.endpoint!;
    const t = pickTransport(endpoint, transport);
    if (!t) return undefined;
    let reply: ReleaseReply | undefined;
    try {
      reply = await ask(t, endpoint, await releaseRequestFor(r, me, now()), Math.min(requestTimeoutMs, Math.max(100, leaseMs / 4)));
    } catch {
      // Unreachable with an expired lease: a dead owner. Take over.
    }
    if (reply?.ok) return 'again';
    if (reply && reply.code === 'REFUSED') {
      throw new VmkitError('REFUSED', `${disk}: owner ${owner.id} (epoch ${r.epoch}) refused to release: ${reply.reason} (its lease looks expired by this clock: check clock skew)`, { path: disk });
    }
    return undefined;
  }

  // 'wait': live but not releasable now: poll until it frees, its lease runs out, or we give up.
  async function waitOut(r: OwnerRecord, wall: number): Promise<void> {
    const left = deadline - monotonic();
    if (left <= 0) {
      throw new VmkitError(
        'TIMEOUT',
        `${disk}: ${lastWhy || 'the owner holds it'}; its lease runs until ${new Date(r.leaseExpiresAt).toISOString()} (+${maxSkewMs} ms skew allowance, this clock reads ${new Date(wall).toISOString()}); waited ${waitMs} ms`,
        { path: disk },
      );
    }
    await sleep(Math.max(1, Math.min(left, pollMs(r, wall, maxSkewMs))), opts.signal);
  }

  // 'take': free, absent, or dead: the next epoch by CAS ('again' when another opener won it).
  async function takeFrom(snap: OwnerSnapshot): Promise<_Holder | 'again'> {
    const r = snap.record;
    const h = await take(snap.revision, r?.epoch ?? 0, r?.secret);
    if (!h) {
      if (monotonic() > deadline) throw new VmkitError('TIMEOUT', `${disk}: lost every compare-and-swap for ${waitMs} ms`, { path: disk });
      return 'again';
    }
    return h;
  }

  // Writes us as owner at `prevEpoch + 1` if the record is still at `expected`, then opens the image.
  // The disk keeps its secret; a record without one (version 1, or none yet) gets a fresh one.
  async function take(expected: string | null, prevEpoch: number, secret: string | undefined): Promise<_Holder | null> {
    const epoch = prevEpoch + 1;
    const t0 = monotonic();
    const w = now();
    const record: OwnerRecord = { version: 2, disk, epoch, state: 'owned', owner: me, leaseExpiresAt: w + leaseMs, updatedAt: w, secret: secret ?? newOwnerSecret() };
    // A CAS that timed out has an unknown outcome: openOwned fails with TIMEOUT, and a retry finds
    // the record naming a holder that never started, asks it (nobody answers) and waits out its lease.
    const rev = await _within(store.compareAndSwap(disk, expected, record), bound(), () => `taking epoch ${epoch} of ${disk}`);
    if (rev === null) return null;
    const h = new _Holder(disk, record, me, store, rev, t0, leaseMs, now, opts.onReleaseRequest, requestTimeoutMs);
    h.endpoint = server?.endpoint;
    h.server = server;
    // Requests from now on reach the holder; they wait until the image is open.
    holder = h;
    h.startRenewal();
    let dev: OwnedOpen;
    const opening = opts.open
      ? opts.open({ guard: h, provider: _guardedProvider(opts.image?.provider ?? fileProvider, h) })
      : openImage(diskPath, { ...opts.image, provider: _guardedProvider(opts.image?.provider ?? fileProvider, h), guard: h }).then(_imageOpen);
    try {
      dev = await _within(opening, bound(), () => `opening ${diskPath}`);
    } catch (e) {
      // An open that finishes after its deadline is closed (the holder has let go: nothing is flushed).
      opening.then((late) => late.close().catch(() => {}), () => {});
      h.opened(false);
      await h.giveUp({ reason: 'released' }).catch(() => {});
      throw e;
    }
    h.inner = dev;
    h.device = new _OwnedDevice(h, dev.device);
    h.opened(true);
    return h;
  }
}

/**
 * Reads a disk's owner record (null when it has none).
 *
 * @example
 * ```ts
 * const rec = await readOwner('vm.qcow2');
 * if (rec?.state === 'owned') console.log(`${rec.owner?.id} holds epoch ${rec.epoch}`);
 * ```
 */
export async function readOwner(disk: string, opts: { store?: OwnerStore } = {}): Promise<OwnerRecord | null> {
  return (await (opts.store ?? new FileOwnerStore()).read(disk)).record;
}

/**
 * Asks the current owner of `disk` to release it without taking it (the disk
 * ends `free`). Resolves to the record afterwards; throws REFUSED when the
 * owner says no, TIMEOUT/NETWORK when it cannot be reached.
 *
 * @example
 * ```ts
 * const after = await requestRelease('vm.qcow2', { as: 'operator' });
 * console.log(after?.state); // 'free'
 * ```
 */
export async function requestRelease(
  disk: string,
  opts: { as: string | OwnerIdentity; store?: OwnerStore; transport?: ReleaseTransport; requestTimeoutMs?: number },
): Promise<OwnerRecord | null> {
  const store = opts.store ?? new FileOwnerStore();
  const me = await ownerIdentity(opts.as);
  const timeoutMs = posInt(opts.requestTimeoutMs, 'requestTimeoutMs', 5000, 1, 600_000);
  const { record: r } = await _within(store.read(disk), timeoutMs, () => `reading the owner record of ${disk}`);
  if (!r || r.state === 'free') return r;
  const endpoint = r.owner?.endpoint;
  if (!endpoint) throw new VmkitError('UNSUPPORTED', `${disk}: owner ${r.owner?.id} serves no release endpoint; wait for its lease (${new Date(r.leaseExpiresAt).toISOString()})`, { path: disk });
  const t = pickTransport(endpoint, opts.transport ?? httpTransport);
  if (!t) throw new VmkitError('UNSUPPORTED', `${disk}: no transport reaches ${endpoint}`, { path: disk });
  const req = await releaseRequestFor(r, me, Date.now());
  const reply = await _within(Promise.resolve().then(() => t.request(endpoint, req, timeoutMs)), timeoutMs, () => `release request to ${endpoint}`);
  if (!reply.ok) {
    const why = reply.code === 'DENIED' ? `${reply.reason} (this clock and the owner's differ by more than its window, or the record changed)` : reply.reason;
    throw new VmkitError(reply.code === 'DENIED' ? 'REFUSED' : reply.code, `${disk}: owner ${r.owner?.id} answered: ${why}`, { path: disk });
  }
  return (await _within(store.read(disk), timeoutMs, () => `reading the owner record of ${disk}`)).record;
}

/** An image as an {@link OwnedOpen}: abandoning closes the top layer's storage unflushed. */
function _imageOpen(d: ImageDevice): OwnedOpen {
  return {
    device: d,
    close: () => d.close(),
    abandon: async () => {
      await Promise.all([d.storage.close().catch(() => {}), d.backing?.close().catch(() => {})]);
    },
  };
}
