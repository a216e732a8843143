/**
 * The remote reader's bounded local cache: ranges fetched from a checkpoint
 * URL kept in a directory (Node) or in OPFS (browsers), so a second restore
 * of the same checkpoint on the same host reads them locally.
 *
 * ```
 *  <dir>/<32 hex: SHA-256 of url, validator, size>/<position>-<length>
 *  entry: "VMKRANGE" | position u64 | length u64 | xxHash32 of the bytes | 28 zero bytes | key tag (8) | bytes
 * ```
 *
 * An entry is used only under the validator (strong ETag, else
 * Last-Modified) and size the open saw, so a replaced checkpoint never
 * reads another file's bytes; every read checks the entry's header and
 * xxHash32 (damage, a torn or truncated write; an unkeyed hash of any length
 * would not stop someone who can write the directory), and a bad entry is
 * removed and fetched again. The bytes of all entries stay under
 * `maxBytes`: the least recently used go first (in this process by use; at
 * open by modification time, which a hit refreshes in Node).
 * @module
 */
import { VmkitError } from '../../errors.js';
import { aint } from '../../_utils.js';
import { toHex } from '../../_hex.js';
import { _openLocalStore, type _LocalStore } from './_local-store.js';
import { xxh32Of } from './_codec.js';

/**
 * A local cache for {@link httpSource}: `dir` is a filesystem path in Node
 * and a directory of the origin private file system (OPFS) in a browser.
 *
 * @example
 * ```ts
 * const opts: LocalCacheOptions = { dir: '/var/cache/vmkit', maxBytes: 1 << 30 };
 * await CheckpointReader.open(url, { http: { localCache: opts } });
 * ```
 */
export interface LocalCacheOptions {
  /** Where entries live (Node: a path, made if missing; browser: an OPFS path such as `vmkit/cache`). */
  dir: string;
  /** Bound on the bytes of all entries in `dir` (default 1 GiB); the first open of `dir` in a process sets it. */
  maxBytes?: number;
}

const MAGIC = new TextEncoder().encode('VMKRANGE');
const HEAD = 64;

interface Entry {
  sub: string;
  name: string;
  at: number;
  end: number;
  size: number;
}

async function sha256(b: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await globalThis.crypto.subtle.digest('SHA-256', b as Uint8Array<ArrayBuffer>));
}

/** One directory's index: every entry by `sub/name`, in order of use (the first is evicted first). */
class LocalCache {
  readonly store: _LocalStore;
  maxBytes: number;
  private readonly entries = new Map<string, Entry>();
  /** The entries of each checkpoint, and each by its start (a span read again starts where it did). */
  private readonly bySub = new Map<string, Set<Entry>>();
  private readonly byStart = new Map<string, Entry>();
  private total = 0;

  constructor(store: _LocalStore, maxBytes: number) {
    this.store = store;
    this.maxBytes = maxBytes;
  }

  async load(): Promise<void> {
    const listed = await this.store.list();
    listed.sort((a, b) => a.used - b.used);
    for (const e of listed) {
      const [a, n] = e.name.split('-').map(Number) as [number, number];
      this.add({ sub: e.sub, name: e.name, at: a, end: a + n, size: e.size }, false);
    }
    this.evict();
  }

  /** Entries of `sub` holding `[position, end)`. */
  find(sub: string, position: number, end: number): Entry | undefined {
    const s = this.byStart.get(`${sub}/${position}`);
    if (s && end <= s.end) return s;
    for (const e of this.bySub.get(sub) ?? []) if (e.at <= position && end <= e.end) return e;
    return undefined;
  }

  used(e: Entry): void {
    const k = `${e.sub}/${e.name}`;
    this.entries.delete(k);
    this.entries.set(k, e);
    this.store.touch(e.sub, e.name);
  }

  /** Removals in flight (a close waits for them: the bound holds on disk when it returns). */
  readonly removing = new Set<Promise<void>>();

  drop(e: Entry): Promise<void> {
    const k = `${e.sub}/${e.name}`;
    if (this.entries.get(k) === e) {
      this.entries.delete(k);
      this.total -= e.size;
      this.bySub.get(e.sub)?.delete(e);
      if (this.byStart.get(`${e.sub}/${e.at}`) === e) this.byStart.delete(`${e.sub}/${e.at}`);
    }
    const p = this.store.remove(e.sub, e.name).catch(() => {});
    this.removing.add(p);
    void p.finally(() => this.removing.delete(p));
    return p;
  }

  add(e: Entry, evict = true): void {
    const k = `${e.sub}/${e.name}`;
    const old = this.entries.get(k);
    if (old) {
      this.total -= old.size;
      this.bySub.get(old.sub)?.delete(old);
    }
    this.entries.delete(k);
    this.entries.set(k, e);
    let set = this.bySub.get(e.sub);
    if (!set) this.bySub.set(e.sub, (set = new Set()));
    set.add(e);
    this.byStart.set(`${e.sub}/${e.at}`, e);
    this.total += e.size;
    if (evict) this.evict(e);
  }

  private evict(keep?: Entry): void {
    for (const e of this.entries.values()) {
      if (this.total <= this.maxBytes) break;
      if (e !== keep) void this.drop(e);
    }
  }

  get bytes(): number {
    return this.total;
  }
}

const caches = new Map<string, Promise<LocalCache>>();

/**
 * The ranges of one checkpoint (URL, validator, size) in a local cache.
 * `get` answers checked bytes or undefined; `put` stores in the background.
 */
export interface _LocalCacheFile {
  /** Bytes `[position, end)` from an entry that holds them, checked; undefined on a miss or a bad entry (then removed, `corrupt` counted). */
  get(position: number, end: number): Promise<Uint8Array | undefined>;
  /** Stores `bytes` fetched at `position` (best effort: a failed write is dropped). */
  put(position: number, bytes: Uint8Array): void;
  /** Waits for the writes started so far. */
  flush(): Promise<void>;
  /** Bad entries found (and removed) so far. */
  readonly corrupt: number;
  /** Bytes of all entries of the directory. */
  readonly dirBytes: number;
}

/**
 * Opens the cache of `url` in `options.dir`, or answers undefined when the
 * server gave no validator a cached range could be checked against.
 */
export async function _openLocalCacheFile(
  options: LocalCacheOptions,
  url: string,
  etag: string | undefined,
  lastModified: string | undefined,
  size: number,
): Promise<_LocalCacheFile | undefined> {
  if (options === null || typeof options !== 'object') throw new VmkitError('ARG_TYPE', 'localCache must be an object { dir, maxBytes? }');
  const maxBytes = options.maxBytes ?? 1 << 30;
  aint(maxBytes, 'localCache.maxBytes', 0, Number.MAX_SAFE_INTEGER);
  let p = caches.get(options.dir);
  if (!p) {
    p = (async () => {
      const c = new LocalCache(await _openLocalStore(options.dir), maxBytes);
      await c.load();
      return c;
    })();
    caches.set(options.dir, p);
    p.catch(() => caches.delete(options.dir));
  }
  const cache = await p;
  if (maxBytes < cache.maxBytes) cache.maxBytes = maxBytes;
  const validator = etag !== undefined && !etag.startsWith('W/') ? `etag ${etag}` : lastModified !== undefined ? `last-modified ${lastModified}` : undefined;
  if (validator === undefined) return undefined;
  const key = await sha256(new TextEncoder().encode(`${url}\n${validator}\n${size}`));
  const sub = toHex(key.subarray(0, 16));
  const tag = key.subarray(16, 24);
  const writes = new Set<Promise<void>>();
  let corrupt = 0;

  const check = (e: Entry, raw: Uint8Array | undefined): Uint8Array | undefined => {
    if (!raw || raw.length !== HEAD + (e.end - e.at)) return undefined;
    for (let i = 0; i < 8; i++) if (raw[i] !== MAGIC[i] || raw[56 + i] !== tag[i]) return undefined;
    const dv = new DataView(raw.buffer, raw.byteOffset, HEAD);
    if (Number(dv.getBigUint64(8, true)) !== e.at || Number(dv.getBigUint64(16, true)) !== e.end - e.at) return undefined;
    const body = raw.subarray(HEAD);
    return xxh32Of(body) === dv.getUint32(24, true) ? body : undefined;
  };

  return {
    get corrupt() {
      return corrupt;
    },
    get dirBytes() {
      return cache.bytes;
    },
    async get(position, end) {
      const e = cache.find(sub, position, end);
      if (!e) return undefined;
      const raw = await cache.store.read(sub, e.name);
      const body = check(e, raw);
      if (!body) {
        // Missing (another process evicted it) or bad: forget it; only a present, bad entry is counted.
        if (raw) corrupt++;
        await cache.drop(e);
        return undefined;
      }
      cache.used(e);
      return body.subarray(position - e.at, end - e.at);
    },
    put(position, bytes) {
      const n = HEAD + bytes.length;
      if (n > cache.maxBytes || cache.find(sub, position, position + bytes.length)) return;
      const e: Entry = { sub, name: `${position}-${bytes.length}`, at: position, end: position + bytes.length, size: n };
      const w = (async () => {
        const raw = new Uint8Array(n);
        raw.set(MAGIC, 0);
        const dv = new DataView(raw.buffer);
        dv.setBigUint64(8, BigInt(position), true);
        dv.setBigUint64(16, BigInt(bytes.length), true);
        dv.setUint32(24, xxh32Of(bytes), true);
        raw.set(tag, 56);
        raw.set(bytes, HEAD);
        await cache.store.write(sub, e.name, raw);
        cache.add(e);
      })().catch(() => {});
      writes.add(w);
      void w.finally(() => writes.delete(w));
    },
    async flush() {
      while (writes.size || cache.removing.size) await Promise.all([...writes, ...cache.removing]);
    },
  };
}
