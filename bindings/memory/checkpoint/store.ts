/**
 * A shared page store: checkpoints of many guests in one directory or at one
 * URL, guest memory cut into frames (16 pages, 64 KiB, by default) each
 * stored once by the SHA-256 of its contents, so guests booted from the same
 * image share their identical frames. All-zero frames are not stored. A
 * checkpoint in the store is an index of frame hashes; garbage collection
 * drops frames no index uses and is safe against saves running at the same
 * time. Layout and protocol: docs/checkpoint-format.md ("Shared page store").
 *
 * ```
 *  <store>/STORE                       "vmkit-page-store 2"
 *  <store>/frames/ab/ab12…(64 hex)     one frame: kind byte (2 raw, 3 LZ4) + data
 *  <store>/checkpoints/<name>.vmkidx   "VMKSTIDX" index: SHA-256 per frame (zeros: zero frame)
 *  <store>/refs/<save-id>.refs         a save's frame hashes, written before it looks at any frame
 *  <store>/gc.lock                     the running collection (one at a time)
 * ```
 *
 * Why frames and not pages: on a fleet of real guests (bench/checkpoint-store.bench.js)
 * 64 KiB frames shared as much as single pages did (the pages that differ come in
 * physically contiguous runs), with a sixteenth of the objects, of the index and
 * of the requests a store at a URL needs, and LZ4 compresses a frame better than
 * its pages one by one.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { aint } from '../../_utils.js';
import type { PageSource } from '../types.js';
import { lz4CompressBlock, lz4DecompressBlockInto } from './lz4.js';
import { _dirBackend, type _StoreBackend } from './_store-backend.js';
import { _httpBackend, type HttpStoreOptions } from './store-http.js';
import { isHttpUrl } from './http.js';

/** Index magic. */
const IDX_MAGIC = 'VMKSTIDX';
/** Index header bytes (the per-frame hashes follow; a SHA-256 of everything before ends the file). */
const IDX_HEADER = 48;
const HASH = 32;
const PS = 4096;
const STORE_TAG = 'vmkit-page-store 2\n';
const KIND_RAW = 2;
const KIND_LZ4 = 3;
/** A collection lock or a save's refs older than this belong to a process that died (default 1 h). */
const DEFAULT_STALE_MS = 3_600_000;
/** Default frame: 16 pages. */
const DEFAULT_FRAME_PAGES = 16;
/** Object requests a store keeps in flight (a URL store's round trips overlap; a directory's are synchronous anyway). */
const IN_FLIGHT = 16;

type Crypto = typeof import('node:crypto');
let cryptoMod: Crypto | undefined;
async function nodeCrypto(): Promise<Crypto> {
  if (!cryptoMod) {
    const name = 'node:crypto';
    cryptoMod = (await import(/* @vite-ignore */ name)) as Crypto;
  }
  return cryptoMod;
}

function hex(b: Uint8Array): string {
  let s = '';
  for (const x of b) s += x.toString(16).padStart(2, '0');
  return s;
}

/** A page of zeros to compare against (Node's Buffer.compare is a memcmp: ~10× a JS loop over mostly-zero guest memory). */
const ZERO_PAGE = new Uint8Array(PS);
const NodeBuffer = (globalThis as { Buffer?: { compare(a: Uint8Array, b: Uint8Array): number } }).Buffer;

function isZero(b: Uint8Array): boolean {
  if (NodeBuffer && b.length % PS === 0) {
    for (let o = 0; o < b.length; o += PS) if (NodeBuffer.compare(b.subarray(o, o + PS), ZERO_PAGE) !== 0) return false;
    return true;
  }
  const w = new Uint32Array(b.buffer, b.byteOffset, b.length >>> 2);
  for (let i = 0; i < w.length; i++) if (w[i] !== 0) return false;
  return true;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Runs `fn` over `items` with at most `limit` in flight; the first failure rejects (after the rest settle). */
async function pool<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed: unknown;
  const worker = async (): Promise<void> => {
    while (next < items.length && failed === undefined) {
      const it = items[next++]!;
      try {
        await fn(it);
      } catch (e) {
        failed ??= e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failed !== undefined) throw failed;
}

/**
 * Options of {@link PageStore.open}.
 * @example
 * ```ts
 * const store = await PageStore.open('/var/lib/vmkit/store', { create: true });
 * ```
 */
export interface PageStoreOptions {
  /** Create the store's layout when it is not there (default false: NOT_FOUND). */
  create?: boolean;
  /** After this long a `gc.lock` or a save's refs file counts as left by a dead process (default 1 h). */
  staleMs?: number;
  /** Pages per stored frame for saves (a power of two, 1–256; default 16). Readers take each index's own. */
  framePages?: number;
  /** How a store at a URL is reached (timeouts, retries, headers, fetch, signal). */
  http?: HttpStoreOptions;
  /**
   * Called between the steps of a save or a collection (tests use it to run
   * one inside the other): `save:refs`, `save:pages`, `gc:marked`, `gc:swept`.
   */
  onStep?: (step: string) => void | Promise<void>;
}

/**
 * What {@link PageStore.save} did.
 * @example
 * ```ts
 * const { pages, zeroPages, frames, newFrames, sharedFrames, bytesWritten } = await store.save('vm1', image);
 * ```
 */
export interface StoreSaveStats {
  pages: number;
  /** Pages that are all zero (wherever they are). */
  zeroPages: number;
  /** Frames of the guest (the last may be shorter). */
  frames: number;
  /** All-zero frames: not stored. */
  zeroFrames: number;
  /** Distinct non-zero frames this save wrote to the store. */
  newFrames: number;
  /** Non-zero frames the store already held (or this save held twice). */
  sharedFrames: number;
  /** Bytes of frame objects written, plus the index. */
  bytesWritten: number;
}

/**
 * What {@link PageStore.gc} did.
 * @example
 * ```ts
 * const { live, removed, kept } = await store.gc();
 * ```
 */
export interface StoreGcStats {
  /** Distinct frames some checkpoint or running save uses. */
  live: number;
  /** Frame objects deleted. */
  removed: number;
  /** Frame objects left (live). */
  kept: number;
}

/**
 * A checkpoint in a store, as a {@link PageSource}. `readPagesIntoSync` is
 * there for a store in a directory.
 * @example
 * ```ts
 * const ck: StoreCheckpoint = await store.openCheckpoint('vm1');
 * const page = new Uint8Array(4096);
 * await ck.readPagesInto(42, 1, page);
 * ```
 */
export interface StoreCheckpoint extends PageSource {
  readonly guestSize: bigint;
  /** Pages per frame of this checkpoint. */
  readonly framePages: number;
  /** Frame objects fetched so far (a URL store: one request each). */
  readonly framesFetched: number;
}

/**
 * A directory or URL of deduplicated frames and the checkpoints indexing them.
 * @example
 * ```ts
 * import { init, PageStore } from 'vmkit/memory';
 * await init();
 * const store = await PageStore.open('/tmp/store', { create: true });
 * await store.save('vm1', image1);
 * await store.save('vm2', image2);               // frames vm1 has already cost nothing
 * const ck = await store.openCheckpoint('vm1');  // a PageSource (lazy memory, restore)
 * await store.remove('vm1'); await store.gc();    // frames only vm1 used are dropped
 * // The same at a URL (nginx with dav_methods PUT DELETE MKCOL and JSON autoindex):
 * const remote = await PageStore.open('http://127.0.0.1:8080/store', { create: true });
 * ```
 */
export class PageStore {
  /** The store's directory or URL. */
  readonly dir: string;
  private readonly be: _StoreBackend;
  private readonly crypto: Crypto;
  private readonly staleMs: number;
  private readonly framePages: number;
  private readonly onStep: ((step: string) => void | Promise<void>) | undefined;

  private constructor(be: _StoreBackend, crypto: Crypto, options: PageStoreOptions) {
    this.dir = be.where;
    this.be = be;
    this.crypto = crypto;
    this.staleMs = options.staleMs ?? DEFAULT_STALE_MS;
    this.framePages = options.framePages ?? DEFAULT_FRAME_PAGES;
    this.onStep = options.onStep;
  }

  /**
   * Opens (or with `create`, makes) a store: a directory, or an `http(s)://` URL.
   * @example
   * ```ts
   * const store = await PageStore.open('/tmp/store', { create: true });
   * ```
   */
  static async open(dir: string, options: PageStoreOptions = {}): Promise<PageStore> {
    if (typeof dir !== 'string' || dir === '') throw new VmkitError('ARG_TYPE', 'dir must be a non-empty path or URL');
    if (options.staleMs !== undefined) aint(options.staleMs, 'staleMs', 1);
    if (options.framePages !== undefined) {
      aint(options.framePages, 'framePages', 1, 256);
      if ((options.framePages & (options.framePages - 1)) !== 0) throw new VmkitError('ARG_RANGE', `framePages must be a power of two, got ${options.framePages}`);
    }
    const be = isHttpUrl(dir) ? _httpBackend(dir, options.http) : await _dirBackend(dir);
    const tag = await be.get('STORE');
    if (tag === undefined) {
      if (!options.create) throw new VmkitError('NOT_FOUND', `${dir}: not a vmkit page store (no STORE)`, { path: dir });
      await be.put('STORE', new TextEncoder().encode(STORE_TAG));
    } else if (new TextDecoder().decode(tag) !== STORE_TAG) {
      throw new VmkitError('UNSUPPORTED', `${dir}: unknown page store version`, { path: dir });
    }
    return new PageStore(be, await nodeCrypto(), options);
  }

  private frameKey(h: string): string {
    return `frames/${h.slice(0, 2)}/${h}`;
  }

  private idxKey(name: string): string {
    if (!/^[A-Za-z0-9._-]{1,200}$/.test(name) || name.startsWith('.')) throw new VmkitError('ARG_RANGE', `checkpoint name must be 1-200 of [A-Za-z0-9._-] not starting with '.', got ${JSON.stringify(name)}`);
    return `checkpoints/${name}.vmkidx`;
  }

  private sha(b: Uint8Array): Uint8Array {
    return this.crypto.createHash('sha256').update(b).digest();
  }

  private async step(name: string): Promise<void> {
    await this.onStep?.(name);
  }

  /** True while a collection holds gc.lock (a lock older than staleMs is a dead collector's and ignored). */
  private async gcRunning(): Promise<boolean> {
    let entries;
    try {
      entries = await this.be.list('');
    } catch (err) {
      // A server without listings cannot run a collection (it needs them): none is running.
      if (err instanceof VmkitError && err.code === 'UNSUPPORTED') return false;
      throw err;
    }
    const e = entries.find((x) => x.name === 'gc.lock');
    return e !== undefined && Date.now() - e.mtimeMs < this.staleMs;
  }

  /**
   * Saves a guest image (bytes, or any page source of 4096-byte pages) as
   * checkpoint `name` (replacing one of that name). Protocol: hash every
   * frame; write the hashes as this save's refs file; write the frames the
   * store lacks; wait out a collection that is running, then check every
   * frame is still there (rewriting one a collection that marked before the
   * refs file existed dropped); write the index; delete the refs file.
   * @example
   * ```ts
   * const st = await store.save('web-3', await imagePages('/tmp/web-3.mem'));
   * ```
   */
  async save(name: string, image: Uint8Array | PageSource): Promise<StoreSaveStats> {
    const idx = this.idxKey(name);
    const src: PageSource =
      image instanceof Uint8Array
        ? {
            pageSize: PS,
            pageCount: image.length / PS,
            readPagesInto: async (f, c, d) => d.set(image.subarray(f * PS, (f + c) * PS)),
          }
        : image;
    if (image instanceof Uint8Array && (image.length === 0 || image.length % PS !== 0)) throw new VmkitError('ARG_RANGE', `image must be a positive whole number of ${PS}-byte pages, has ${image.length} bytes`);
    if (src.pageSize !== PS) throw new VmkitError('ARG_RANGE', `the store holds 4096-byte pages, the source has ${src.pageSize}`);
    const FP = this.framePages;
    const P = src.pageCount;
    const F = Math.ceil(P / FP);
    const hashes = new Uint8Array(F * HASH);
    const st: StoreSaveStats = { pages: P, zeroPages: 0, frames: F, zeroFrames: 0, newFrames: 0, sharedFrames: 0, bytesWritten: 0 };
    // A window of whole frames (256 pages at least).
    const WIN = Math.max(1, Math.floor(256 / FP)) * FP;
    const buf = new Uint8Array(WIN * PS);
    const read = async (p: number, n: number): Promise<Uint8Array> => {
      const v = buf.subarray(0, n * PS);
      if (src.readPagesIntoSync) src.readPagesIntoSync(p, n, v);
      else await src.readPagesInto(p, n, v);
      return v;
    };
    const frameOf = (v: Uint8Array, p: number, f: number): Uint8Array => v.subarray((f * FP - p) * PS, Math.min((f + 1) * FP, P) * PS - p * PS);
    // 1. Hash every frame (zero frames keep the all-zero hash).
    for (let p = 0; p < P; p += WIN) {
      const n = Math.min(WIN, P - p);
      const v = await read(p, n);
      // Each page is scanned once: a frame is zero when all its pages are.
      for (let f = p / FP; f * FP < p + n; f++) {
        const end = Math.min((f + 1) * FP, P);
        let zeros = 0;
        for (let q = f * FP; q < end; q++) if (isZero(v.subarray((q - p) * PS, (q - p + 1) * PS))) zeros++;
        st.zeroPages += zeros;
        if (zeros === end - f * FP) st.zeroFrames++;
        else hashes.set(this.sha(frameOf(v, p, f)), f * HASH);
      }
    }
    // 2. The refs file: from now on a collection that marks keeps these frames.
    const saveId = `${Date.now().toString(36)}-${this.crypto.randomBytes(8).toString('hex')}`;
    const refs = `refs/${saveId}.refs`;
    await this.be.put(refs, hashes);
    try {
      await this.step('save:refs');
      // 3. The frames the store lacks.
      const seen = new Set<string>();
      const pass = async (count: boolean): Promise<void> => {
        for (let p = 0; p < P; p += WIN) {
          const n = Math.min(WIN, P - p);
          const todo: { f: number; h: string }[] = [];
          for (let f = p / FP; f * FP < p + n; f++) {
            const hb = hashes.subarray(f * HASH, (f + 1) * HASH);
            if (isZero(hb)) continue;
            const h = hex(hb);
            if (seen.has(h)) {
              if (count) st.sharedFrames++;
              continue;
            }
            seen.add(h);
            todo.push({ f, h });
          }
          if (todo.length === 0) continue;
          const present = new Map<string, boolean>();
          await pool(todo, IN_FLIGHT, async ({ h }) => void present.set(h, await this.be.has(this.frameKey(h))));
          const missing = todo.filter(({ h }) => !present.get(h));
          if (count) st.sharedFrames += todo.length - missing.length;
          if (missing.length === 0) continue;
          const v = await read(p, n);
          await pool(missing, IN_FLIGHT, async ({ f, h }) => {
            const fr = frameOf(v, p, f);
            // The image must not change under the save: the frame must still hash to what the refs file says.
            if (hex(this.sha(fr)) !== h) throw new VmkitError('INTEGRITY', `frame ${f} (pages ${f * FP}-) changed during the save`);
            const c = lz4CompressBlock(fr);
            let rec: Uint8Array;
            if (c.length < fr.length - fr.length / 16) {
              rec = new Uint8Array(1 + c.length);
              rec[0] = KIND_LZ4;
              rec.set(c, 1);
            } else {
              rec = new Uint8Array(1 + fr.length);
              rec[0] = KIND_RAW;
              rec.set(fr, 1);
            }
            await this.be.put(this.frameKey(h), rec);
            st.bytesWritten += rec.length;
            if (count) st.newFrames++;
          });
        }
      };
      await pass(true);
      await this.step('save:pages');
      // 4. A collection that marked before our refs file existed may be sweeping frames we found present:
      //    wait for it to end, then put back whatever it took.
      while (await this.gcRunning()) await sleep(20);
      seen.clear();
      await pass(false);
      // 5. The index, then the refs file goes (the index keeps the frames now).
      const file = new Uint8Array(IDX_HEADER + F * HASH + HASH);
      const dv = new DataView(file.buffer);
      file.set(new TextEncoder().encode(IDX_MAGIC), 0);
      dv.setUint32(8, 2, true);
      dv.setUint32(12, PS, true);
      dv.setBigUint64(16, BigInt(P) * BigInt(PS), true);
      file.set(this.crypto.randomBytes(16), 24);
      dv.setUint32(40, P, true);
      dv.setUint32(44, FP, true);
      file.set(hashes, IDX_HEADER);
      file.set(this.sha(file.subarray(0, IDX_HEADER + F * HASH)), IDX_HEADER + F * HASH);
      await this.be.put(idx, file);
      st.bytesWritten += file.length;
    } finally {
      await this.be.remove(refs);
    }
    return st;
  }

  /**
   * Names of the checkpoints in the store (a store at a URL needs JSON folder listings).
   * @example
   * ```ts
   * for (const name of await store.list()) console.log(name);
   * ```
   */
  async list(): Promise<string[]> {
    return (await this.be.list('checkpoints'))
      .filter((e) => !e.dir && e.name.endsWith('.vmkidx'))
      .map((e) => e.name.slice(0, -'.vmkidx'.length))
      .sort();
  }

  /**
   * Deletes checkpoint `name` (its frames go at the next {@link gc}).
   * @example
   * ```ts
   * await store.remove('web-3');
   * ```
   */
  async remove(name: string): Promise<void> {
    const k = this.idxKey(name);
    if (!(await this.be.has(k))) throw new VmkitError('NOT_FOUND', `${name}: no such checkpoint in ${this.dir}`, { path: `${this.dir}/${k}` });
    await this.be.remove(k);
  }

  /** Reads and checks an index: its geometry and frame hashes. */
  private async readIndex(name: string): Promise<{ pages: number; framePages: number; hashes: Uint8Array }> {
    const key = this.idxKey(name);
    const path = `${this.dir}/${key}`;
    const b = await this.be.get(key);
    if (b === undefined) throw new VmkitError('NOT_FOUND', `${name}: no such checkpoint in ${this.dir}`, { path });
    if (b.length < IDX_HEADER + HASH || new TextDecoder().decode(b.subarray(0, 8)) !== IDX_MAGIC) throw new VmkitError('CORRUPT', `${path}: not a page store index`, { path, offset: 0 });
    const dv = new DataView(b.buffer, b.byteOffset, b.length);
    if (dv.getUint32(8, true) !== 2) throw new VmkitError('UNSUPPORTED', `${path}: index version ${dv.getUint32(8, true)}`, { path });
    const P = dv.getUint32(40, true);
    const FP = dv.getUint32(44, true);
    if (FP < 1 || FP > 256 || (FP & (FP - 1)) !== 0) throw new VmkitError('CORRUPT', `${path}: ${FP} pages per frame`, { path, offset: 44 });
    const F = Math.ceil(P / FP);
    if (dv.getUint32(12, true) !== PS || dv.getBigUint64(16, true) !== BigInt(P) * BigInt(PS) || b.length !== IDX_HEADER + F * HASH + HASH) {
      throw new VmkitError('CORRUPT', `${path}: index header does not match its length`, { path, offset: 12 });
    }
    const sum = this.sha(b.subarray(0, IDX_HEADER + F * HASH));
    for (let i = 0; i < HASH; i++) if (sum[i] !== b[IDX_HEADER + F * HASH + i]) throw new VmkitError('INTEGRITY', `${path}: index checksum mismatch`, { path });
    return { pages: P, framePages: FP, hashes: b.subarray(IDX_HEADER, IDX_HEADER + F * HASH) };
  }

  /**
   * Opens checkpoint `name` as a {@link PageSource}: each frame is fetched
   * (a URL store: one GET, up to 16 in flight), decoded, and checked against
   * its SHA-256 (INTEGRITY on mismatch; a missing frame is NOT_FOUND); the
   * last few frames are kept decoded. A store in a directory also reads
   * synchronously.
   * @example
   * ```ts
   * const ck = await store.openCheckpoint('web-3');
   * const mem = await LazyGuestMemory.open(ck, { policy: createPolicy('physical') });
   * ```
   */
  async openCheckpoint(name: string): Promise<StoreCheckpoint & { readPagesIntoSync?(first: number, count: number, dst: Uint8Array): void }> {
    const { pages: P, framePages: FP, hashes } = await this.readIndex(name);
    const be = this.be;
    const frameKey = (h: string): string => this.frameKey(h);
    const KEEP = 8;
    const cache = new Map<number, Uint8Array>();
    let fetched = 0;
    const frameLen = (f: number): number => (Math.min((f + 1) * FP, P) - f * FP) * PS;
    /** Decodes and checks a frame object into a new buffer. */
    const decode = (f: number, h: string, rec: Uint8Array | undefined): Uint8Array => {
      const key = frameKey(h);
      const path = `${this.dir}/${key}`;
      if (rec === undefined) throw new VmkitError('NOT_FOUND', `frame ${f} of ${name}: ${h} is missing from the store`, { path });
      const out = new Uint8Array(frameLen(f));
      if (rec[0] === KIND_RAW && rec.length === 1 + out.length) out.set(rec.subarray(1));
      else if (rec[0] === KIND_LZ4) {
        let n: number;
        try {
          n = lz4DecompressBlockInto(rec.subarray(1), out);
        } catch (e) {
          throw new VmkitError('CORRUPT', `frame object ${h} does not decode`, { path, cause: e });
        }
        if (n !== out.length) throw new VmkitError('CORRUPT', `frame object ${h} decodes to ${n} bytes, not ${out.length}`, { path });
      } else throw new VmkitError('CORRUPT', `frame object ${h}: unknown kind ${rec[0]} or length ${rec.length}`, { path });
      if (hex(this.sha(out)) !== h) throw new VmkitError('INTEGRITY', `frame object ${h} does not match its hash`, { path });
      fetched++;
      cache.set(f, out);
      if (cache.size > KEEP) cache.delete(cache.keys().next().value!);
      return out;
    };
    const hashOf = (f: number): string | undefined => {
      const hb = hashes.subarray(f * HASH, (f + 1) * HASH);
      return isZero(hb) ? undefined : hex(hb);
    };
    const check = (first: number, count: number, dst: Uint8Array): void => {
      if (!Number.isInteger(first) || !Number.isInteger(count) || first < 0 || count < 0 || first + count > P) throw new VmkitError('ARG_RANGE', `pages [${first}, ${first + count}) outside ${P}`);
      if (dst.length < count * PS) throw new VmkitError('OUTPUT_TOO_SMALL', `dst holds ${dst.length} bytes, ${count} pages need ${count * PS}`);
    };
    /** Copies pages [first, first+count) of the frames in `frames` (undefined: zero) into dst. */
    const copy = (first: number, count: number, dst: Uint8Array, frame: (f: number) => Uint8Array | undefined): void => {
      for (let p = first; p < first + count; ) {
        const f = Math.floor(p / FP);
        const end = Math.min((f + 1) * FP, first + count);
        const out = dst.subarray((p - first) * PS, (end - first) * PS);
        const fr = frame(f);
        if (fr === undefined) out.fill(0);
        else out.set(fr.subarray((p - f * FP) * PS, (end - f * FP) * PS));
        p = end;
      }
    };
    const src: StoreCheckpoint & { readPagesIntoSync?(first: number, count: number, dst: Uint8Array): void } = {
      pageSize: PS,
      pageCount: P,
      guestSize: BigInt(P) * BigInt(PS),
      framePages: FP,
      get framesFetched() {
        return fetched;
      },
      async readPagesInto(first, count, dst) {
        check(first, count, dst);
        const got = new Map<number, Uint8Array>();
        const need: { f: number; h: string }[] = [];
        for (let f = Math.floor(first / FP); f * FP < first + count; f++) {
          const h = hashOf(f);
          if (h === undefined) continue;
          const c = cache.get(f);
          if (c) got.set(f, c);
          else need.push({ f, h });
        }
        await pool(need, IN_FLIGHT, async ({ f, h }) => void got.set(f, decode(f, h, await be.get(frameKey(h)))));
        copy(first, count, dst, (f) => got.get(f));
      },
    };
    if (be.getSync) {
      const getSync = be.getSync.bind(be);
      src.readPagesIntoSync = (first, count, dst) => {
        check(first, count, dst);
        copy(first, count, dst, (f) => {
          const h = hashOf(f);
          if (h === undefined) return undefined;
          return cache.get(f) ?? decode(f, h, getSync(frameKey(h)));
        });
      };
    }
    return src;
  }

  /**
   * Collects garbage: marks the frames every index and every running save's
   * refs file names, then deletes every other frame object. One collection
   * at a time (`gc.lock`, created exclusively; CONFLICT when another runs).
   * Safe against saves at the same time: a save writes its refs file before
   * it looks for any frame, and waits for a running collection to end before
   * it re-checks its frames and writes its index (see
   * docs/checkpoint-format.md). A store at a URL needs DELETE, MKCOL and
   * JSON folder listings (else UNSUPPORTED).
   * @example
   * ```ts
   * const { removed } = await store.gc();
   * ```
   */
  async gc(): Promise<StoreGcStats> {
    const be = this.be;
    if (!(await be.lock('gc.lock'))) {
      // A lock older than staleMs is a dead collector's: take it over.
      if (await this.gcRunning()) throw new VmkitError('CONFLICT', `${this.dir}: another collection is running (gc.lock)`, { path: `${this.dir}/gc.lock` });
      await be.unlock('gc.lock');
      if (!(await be.lock('gc.lock'))) throw new VmkitError('CONFLICT', `${this.dir}: another collection is running (gc.lock)`, { path: `${this.dir}/gc.lock` });
    }
    try {
      const live = new Set<string>();
      const add = (hashes: Uint8Array): void => {
        for (let i = 0; i + HASH <= hashes.length; i += HASH) {
          const hb = hashes.subarray(i, i + HASH);
          if (!isZero(hb)) live.add(hex(hb));
        }
      };
      // Refs first: a save whose refs file appears after this listing re-checks its frames after we are done.
      for (const e of await be.list('refs')) {
        if (e.dir || !e.name.endsWith('.refs')) continue;
        if (Date.now() - e.mtimeMs > this.staleMs) {
          await be.remove(`refs/${e.name}`); // a save that died
          continue;
        }
        const b = await be.get(`refs/${e.name}`);
        if (b) add(b); // (gone: the save finished meanwhile; its index is listed below)
      }
      for (const name of await this.list()) {
        try {
          add((await this.readIndex(name)).hashes);
        } catch (e) {
          if (e instanceof VmkitError && e.code === 'NOT_FOUND') continue; // removed meanwhile
          throw e; // a damaged index: delete nothing rather than frames it may use
        }
      }
      await this.step('gc:marked');
      let removed = 0;
      let kept = 0;
      for (const d of await be.list('frames')) {
        if (!d.dir) continue;
        const drop: string[] = [];
        for (const e of await be.list(`frames/${d.name}`)) {
          const tmp = e.name.includes('.tmp-');
          if (tmp ? Date.now() - e.mtimeMs > this.staleMs : !live.has(e.name)) drop.push(e.name);
          else if (!tmp) kept++;
        }
        await pool(drop, IN_FLIGHT, async (n) => {
          await be.remove(`frames/${d.name}/${n}`);
          if (!n.includes('.tmp-')) removed++;
        });
      }
      await this.step('gc:swept');
      return { live: live.size, removed, kept };
    } finally {
      await be.unlock('gc.lock');
    }
  }
}
