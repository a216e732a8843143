/**
 * A shared page store (Node): checkpoints of many guests in one directory,
 * each page stored once by the SHA-256 of its contents, so guests booted from
 * the same image share their identical pages. A checkpoint in the store is an
 * index of page hashes; garbage collection drops pages no index uses and is
 * safe against saves running at the same time. Layout and protocol:
 * docs/checkpoint-format.md ("Shared page store").
 *
 * ```
 *  <store>/STORE                      "vmkit-page-store 1"
 *  <store>/pages/ab/ab12…(64 hex)     one page: kind byte (2 raw, 3 LZ4) + record
 *  <store>/checkpoints/<name>.vmkidx  "VMKSTIDX" index: SHA-256 per page (zeros: zero page)
 *  <store>/refs/<save-id>.refs        a save's page hashes, written before it looks at any page
 *  <store>/gc.lock                    the running collection (one at a time)
 * ```
 * @module
 */
import { VmkitError } from '../../errors.js';
import { aint } from '../../_utils.js';
import type { PageSource } from '../types.js';
import { lz4CompressBlock, lz4DecompressBlockInto } from './lz4.js';
import { nodeFs } from './io.js';

/** Index magic. */
const IDX_MAGIC = 'VMKSTIDX';
/** Index header bytes (the per-page hashes follow; a SHA-256 of everything before ends the file). */
const IDX_HEADER = 48;
const HASH = 32;
const STORE_TAG = 'vmkit-page-store 1\n';
const KIND_RAW = 2;
const KIND_LZ4 = 3;
/** A collection lock or a save's refs older than this belong to a process that died (default 1 h). */
const DEFAULT_STALE_MS = 3_600_000;

type Fs = typeof import('node:fs');
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

function isZero(b: Uint8Array): boolean {
  const w = new Uint32Array(b.buffer, b.byteOffset, b.length >>> 2);
  for (let i = 0; i < w.length; i++) if (w[i] !== 0) return false;
  return true;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Options of {@link PageStore.open}.
 * @example
 * ```ts
 * const store = await PageStore.open('/var/lib/vmkit/store', { create: true });
 * ```
 */
export interface PageStoreOptions {
  /** Create the directory layout when it is not there (default false: NOT_FOUND). */
  create?: boolean;
  /** After this long a `gc.lock` or a save's refs file counts as left by a dead process (default 1 h). */
  staleMs?: number;
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
 * const { pages, zeroPages, newPages, sharedPages, bytesWritten } = await store.save('vm1', image);
 * ```
 */
export interface StoreSaveStats {
  pages: number;
  zeroPages: number;
  /** Distinct non-zero pages this save wrote to the store. */
  newPages: number;
  /** Non-zero pages the store already held (or this save held twice). */
  sharedPages: number;
  /** Bytes of page files written, plus the index. */
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
  /** Distinct pages some checkpoint or running save uses. */
  live: number;
  /** Page files deleted. */
  removed: number;
  /** Page files left (live). */
  kept: number;
}

/**
 * A directory of deduplicated pages and the checkpoints indexing them.
 * @example
 * ```ts
 * import { init, PageStore } from 'vmkit/memory';
 * await init();
 * const store = await PageStore.open('/tmp/store', { create: true });
 * await store.save('vm1', image1);
 * await store.save('vm2', image2);               // pages vm1 has already cost nothing
 * const ck = await store.openCheckpoint('vm1');  // a PageSource (lazy memory, restore)
 * await store.remove('vm1'); await store.gc();    // pages only vm1 used are dropped
 * ```
 */
export class PageStore {
  /** The store's directory. */
  readonly dir: string;
  private readonly fs: Fs;
  private readonly crypto: Crypto;
  private readonly staleMs: number;
  private readonly onStep: ((step: string) => void | Promise<void>) | undefined;

  private constructor(dir: string, fs: Fs, crypto: Crypto, options: PageStoreOptions) {
    this.dir = dir;
    this.fs = fs;
    this.crypto = crypto;
    this.staleMs = options.staleMs ?? DEFAULT_STALE_MS;
    this.onStep = options.onStep;
  }

  /**
   * Opens (or with `create`, makes) a store directory.
   * @example
   * ```ts
   * const store = await PageStore.open('/tmp/store', { create: true });
   * ```
   */
  static async open(dir: string, options: PageStoreOptions = {}): Promise<PageStore> {
    if (typeof dir !== 'string' || dir === '') throw new VmkitError('ARG_TYPE', 'dir must be a non-empty path');
    if (options.staleMs !== undefined) aint(options.staleMs, 'staleMs', 1);
    const fs = await nodeFs();
    const tag = `${dir}/STORE`;
    if (!fs.existsSync(tag)) {
      if (!options.create) throw new VmkitError('NOT_FOUND', `${dir}: not a vmkit page store (no STORE file)`, { path: dir });
      for (const d of ['pages', 'checkpoints', 'refs']) fs.mkdirSync(`${dir}/${d}`, { recursive: true });
      fs.writeFileSync(tag, STORE_TAG);
    } else if (fs.readFileSync(tag, 'utf8') !== STORE_TAG) {
      throw new VmkitError('UNSUPPORTED', `${dir}: unknown page store version`, { path: dir });
    }
    return new PageStore(dir, fs, await nodeCrypto(), options);
  }

  private pagePath(h: string): string {
    return `${this.dir}/pages/${h.slice(0, 2)}/${h}`;
  }

  private idxPath(name: string): string {
    if (!/^[A-Za-z0-9._-]{1,200}$/.test(name) || name.startsWith('.')) throw new VmkitError('ARG_RANGE', `checkpoint name must be 1-200 of [A-Za-z0-9._-] not starting with '.', got ${JSON.stringify(name)}`);
    return `${this.dir}/checkpoints/${name}.vmkidx`;
  }

  /** Writes `data` to `path` through a temporary file and a rename: readers see all of it or nothing. */
  private writeAtomic(path: string, data: Uint8Array | string): void {
    const tmp = `${path}.tmp-${process.pid}-${this.crypto.randomBytes(4).toString('hex')}`;
    try {
      this.fs.writeFileSync(tmp, data);
      this.fs.renameSync(tmp, path);
    } catch (e) {
      try {
        this.fs.rmSync(tmp, { force: true });
      } catch {
        // the write failed already; report that
      }
      throw new VmkitError('IO', `${path}: ${(e as Error).message}`, { cause: e, path });
    }
  }

  private async step(name: string): Promise<void> {
    await this.onStep?.(name);
  }

  /** True while a collection holds gc.lock (a lock older than staleMs is a dead collector's and ignored). */
  private gcRunning(): boolean {
    try {
      return Date.now() - this.fs.statSync(`${this.dir}/gc.lock`).mtimeMs < this.staleMs;
    } catch {
      return false;
    }
  }

  /**
   * Saves a guest image (bytes, or any page source of 4096-byte pages) as
   * checkpoint `name` (replacing one of that name). Protocol: hash every page;
   * write the hashes as this save's refs file; write the pages the store
   * lacks; wait out a collection that is running, then check every page is
   * still there (rewriting one a collection that marked before the refs file
   * existed dropped); write the index; delete the refs file.
   * @example
   * ```ts
   * const st = await store.save('web-3', await imagePages('/tmp/web-3.mem'));
   * ```
   */
  async save(name: string, image: Uint8Array | PageSource): Promise<StoreSaveStats> {
    const idx = this.idxPath(name);
    const PS = 4096;
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
    const P = src.pageCount;
    const hashes = new Uint8Array(P * HASH);
    const st: StoreSaveStats = { pages: P, zeroPages: 0, newPages: 0, sharedPages: 0, bytesWritten: 0 };
    const WIN = 256;
    const buf = new Uint8Array(WIN * PS);
    const read = async (p: number, n: number): Promise<Uint8Array> => {
      const v = buf.subarray(0, n * PS);
      if (src.readPagesIntoSync) src.readPagesIntoSync(p, n, v);
      else await src.readPagesInto(p, n, v);
      return v;
    };
    // 1. Hash every page (zero pages keep the all-zero hash).
    for (let p = 0; p < P; p += WIN) {
      const n = Math.min(WIN, P - p);
      const v = await read(p, n);
      for (let i = 0; i < n; i++) {
        const pg = v.subarray(i * PS, (i + 1) * PS);
        if (isZero(pg)) st.zeroPages++;
        else hashes.set(this.crypto.createHash('sha256').update(pg).digest(), (p + i) * HASH);
      }
    }
    // 2. The refs file: from now on a collection that marks keeps these pages.
    const saveId = `${process.pid}-${this.crypto.randomBytes(8).toString('hex')}`;
    const refs = `${this.dir}/refs/${saveId}.refs`;
    this.writeAtomic(refs, hashes);
    try {
      await this.step('save:refs');
      // 3. The pages the store lacks.
      const seen = new Set<string>();
      const ensure = (h: string, pg: Uint8Array): boolean => {
        const path = this.pagePath(h);
        if (this.fs.existsSync(path)) return false;
        const c = lz4CompressBlock(pg);
        const rec = new Uint8Array(1 + Math.min(c.length, PS));
        if (c.length < PS - PS / 16) {
          rec[0] = KIND_LZ4;
          rec.set(c, 1);
        } else {
          rec[0] = KIND_RAW;
          rec.set(pg, 1);
        }
        this.fs.mkdirSync(`${this.dir}/pages/${h.slice(0, 2)}`, { recursive: true });
        this.writeAtomic(path, rec.subarray(0, rec[0] === KIND_LZ4 ? 1 + c.length : 1 + PS));
        st.bytesWritten += rec[0] === KIND_LZ4 ? 1 + c.length : 1 + PS;
        return true;
      };
      const pass = async (count: boolean): Promise<void> => {
        for (let p = 0; p < P; p += WIN) {
          const n = Math.min(WIN, P - p);
          let v: Uint8Array | undefined;
          for (let i = 0; i < n; i++) {
            const hb = hashes.subarray((p + i) * HASH, (p + i + 1) * HASH);
            if (isZero(hb)) continue;
            const h = hex(hb);
            if (count && seen.has(h)) {
              st.sharedPages++;
              continue;
            }
            seen.add(h);
            if (!count && this.fs.existsSync(this.pagePath(h))) continue;
            v ??= await read(p, n);
            const pg = v.subarray(i * PS, (i + 1) * PS);
            // The image must not change under the save: the page must still hash to what the refs file says.
            if (!count && hex(this.crypto.createHash('sha256').update(pg).digest()) !== h) throw new VmkitError('INTEGRITY', `page ${p + i} changed during the save`);
            const wrote = ensure(h, pg);
            if (count) {
              if (wrote) st.newPages++;
              else st.sharedPages++;
            }
          }
        }
      };
      await pass(true);
      await this.step('save:pages');
      // 4. A collection that marked before our refs file existed may be sweeping pages we found present:
      //    wait for it to end, then put back whatever it took.
      while (this.gcRunning()) await sleep(20);
      seen.clear();
      await pass(false);
      // 5. The index, then the refs file goes (the index keeps the pages now).
      const { createHash } = this.crypto;
      const file = new Uint8Array(IDX_HEADER + P * HASH + HASH);
      const dv = new DataView(file.buffer);
      file.set(new TextEncoder().encode(IDX_MAGIC), 0);
      dv.setUint32(8, 1, true);
      dv.setUint32(12, PS, true);
      dv.setBigUint64(16, BigInt(P) * BigInt(PS), true);
      file.set(this.crypto.randomBytes(16), 24);
      dv.setUint32(40, P, true);
      file.set(hashes, IDX_HEADER);
      file.set(createHash('sha256').update(file.subarray(0, IDX_HEADER + P * HASH)).digest(), IDX_HEADER + P * HASH);
      this.writeAtomic(idx, file);
      st.bytesWritten += file.length;
    } finally {
      this.fs.rmSync(refs, { force: true });
    }
    return st;
  }

  /**
   * Names of the checkpoints in the store.
   * @example
   * ```ts
   * for (const name of store.list()) console.log(name);
   * ```
   */
  list(): string[] {
    return this.fs
      .readdirSync(`${this.dir}/checkpoints`)
      .filter((f) => f.endsWith('.vmkidx'))
      .map((f) => f.slice(0, -'.vmkidx'.length))
      .sort();
  }

  /**
   * Deletes checkpoint `name` (its pages go at the next {@link gc}).
   * @example
   * ```ts
   * await store.remove('web-3');
   * ```
   */
  async remove(name: string): Promise<void> {
    const p = this.idxPath(name);
    if (!this.fs.existsSync(p)) throw new VmkitError('NOT_FOUND', `${name}: no such checkpoint in ${this.dir}`, { path: p });
    this.fs.rmSync(p);
  }

  /** Reads and checks an index file: its page hashes. */
  private readIndex(path: string): { pages: number; hashes: Uint8Array } {
    let b: Uint8Array;
    try {
      b = new Uint8Array(this.fs.readFileSync(path));
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'NOT_FOUND' : 'IO';
      throw new VmkitError(code, `${path}: ${(e as Error).message}`, { cause: e, path });
    }
    if (b.length < IDX_HEADER + HASH || new TextDecoder().decode(b.subarray(0, 8)) !== IDX_MAGIC) throw new VmkitError('CORRUPT', `${path}: not a page store index`, { path, offset: 0 });
    const dv = new DataView(b.buffer, b.byteOffset, b.length);
    if (dv.getUint32(8, true) !== 1) throw new VmkitError('UNSUPPORTED', `${path}: index version ${dv.getUint32(8, true)}`, { path });
    const P = dv.getUint32(40, true);
    if (dv.getUint32(12, true) !== 4096 || dv.getBigUint64(16, true) !== BigInt(P) * 4096n || b.length !== IDX_HEADER + P * HASH + HASH) {
      throw new VmkitError('CORRUPT', `${path}: index header does not match its length`, { path, offset: 12 });
    }
    const sum = this.crypto.createHash('sha256').update(b.subarray(0, IDX_HEADER + P * HASH)).digest();
    if (Buffer.compare(sum, b.subarray(IDX_HEADER + P * HASH)) !== 0) throw new VmkitError('INTEGRITY', `${path}: index checksum mismatch`, { path });
    return { pages: P, hashes: b.subarray(IDX_HEADER, IDX_HEADER + P * HASH) };
  }

  /**
   * Opens checkpoint `name` as a {@link PageSource} (sync and async reads):
   * each page is read from its page file, decoded, and checked against its
   * SHA-256 (INTEGRITY on mismatch; a missing page file is NOT_FOUND).
   * @example
   * ```ts
   * const ck = await store.openCheckpoint('web-3');
   * const mem = await LazyGuestMemory.open(ck, { policy: createPolicy('physical') });
   * ```
   */
  async openCheckpoint(name: string): Promise<PageSource & { readPagesIntoSync(first: number, count: number, dst: Uint8Array): void; readonly guestSize: bigint }> {
    const { pages: P, hashes } = this.readIndex(this.idxPath(name));
    const readSync = (first: number, count: number, dst: Uint8Array): void => {
      if (!Number.isInteger(first) || !Number.isInteger(count) || first < 0 || count < 0 || first + count > P) throw new VmkitError('ARG_RANGE', `pages [${first}, ${first + count}) outside ${P}`);
      if (dst.length < count * 4096) throw new VmkitError('OUTPUT_TOO_SMALL', `dst holds ${dst.length} bytes, ${count} pages need ${count * 4096}`);
      for (let i = 0; i < count; i++) {
        const hb = hashes.subarray((first + i) * HASH, (first + i + 1) * HASH);
        const out = dst.subarray(i * 4096, (i + 1) * 4096);
        if (isZero(hb)) {
          out.fill(0);
          continue;
        }
        const h = hex(hb);
        const path = this.pagePath(h);
        let rec: Uint8Array;
        try {
          rec = new Uint8Array(this.fs.readFileSync(path));
        } catch (e) {
          throw new VmkitError('NOT_FOUND', `page ${first + i} of ${name}: page file ${h} is missing from the store`, { cause: e, path });
        }
        if (rec[0] === KIND_RAW && rec.length === 4097) out.set(rec.subarray(1));
        else if (rec[0] === KIND_LZ4) {
          if (lz4DecompressBlockInto(rec.subarray(1), out) !== 4096) throw new VmkitError('CORRUPT', `page file ${h} does not decode to a page`, { path });
        } else throw new VmkitError('CORRUPT', `page file ${h}: unknown kind ${rec[0]}`, { path });
        if (hex(this.crypto.createHash('sha256').update(out).digest()) !== h) throw new VmkitError('INTEGRITY', `page file ${h} does not match its hash`, { path });
      }
    };
    return {
      pageSize: 4096,
      pageCount: P,
      guestSize: BigInt(P) * 4096n,
      readPagesIntoSync: readSync,
      readPagesInto: async (f, c, d) => readSync(f, c, d),
    };
  }

  /**
   * Collects garbage: marks the pages every index and every running save's
   * refs file names, then deletes every other page file. One collection at a
   * time (`gc.lock`, created exclusively; CONFLICT when another runs). Safe
   * against saves at the same time: a save writes its refs file before it
   * looks for any page, and waits for a running collection to end before it
   * re-checks its pages and writes its index (see docs/checkpoint-format.md).
   * @example
   * ```ts
   * const { removed } = await store.gc();
   * ```
   */
  async gc(): Promise<StoreGcStats> {
    const lock = `${this.dir}/gc.lock`;
    if (this.fs.existsSync(lock) && !this.gcRunning()) this.fs.rmSync(lock, { force: true });
    try {
      this.fs.writeFileSync(lock, `${process.pid}\n`, { flag: 'wx' });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new VmkitError('CONFLICT', `${this.dir}: another collection is running (gc.lock)`, { path: lock });
      throw new VmkitError('IO', `${lock}: ${(e as Error).message}`, { cause: e, path: lock });
    }
    try {
      const live = new Set<string>();
      const add = (hashes: Uint8Array): void => {
        for (let i = 0; i < hashes.length; i += HASH) {
          const hb = hashes.subarray(i, i + HASH);
          if (!isZero(hb)) live.add(hex(hb));
        }
      };
      // Refs first: a save whose refs file appears after this listing re-checks its pages after we are done.
      for (const f of this.fs.readdirSync(`${this.dir}/refs`)) {
        const p = `${this.dir}/refs/${f}`;
        if (!f.endsWith('.refs')) continue;
        let b: Buffer;
        try {
          if (Date.now() - this.fs.statSync(p).mtimeMs > this.staleMs) {
            this.fs.rmSync(p, { force: true }); // a save that died
            continue;
          }
          b = this.fs.readFileSync(p);
        } catch {
          continue; // the save finished meanwhile: its index is listed below
        }
        add(new Uint8Array(b.buffer, b.byteOffset, b.length - (b.length % HASH)));
      }
      for (const name of this.list()) {
        try {
          add(this.readIndex(this.idxPath(name)).hashes);
        } catch (e) {
          if (e instanceof VmkitError && e.code === 'NOT_FOUND') continue; // removed meanwhile
          throw e; // a damaged index: delete nothing rather than pages it may use
        }
      }
      await this.step('gc:marked');
      let removed = 0;
      let kept = 0;
      for (const d of this.fs.readdirSync(`${this.dir}/pages`)) {
        for (const f of this.fs.readdirSync(`${this.dir}/pages/${d}`)) {
          const p = `${this.dir}/pages/${d}/${f}`;
          const tmp = f.includes('.tmp-');
          if (tmp ? Date.now() - this.fs.statSync(p).mtimeMs > this.staleMs : !live.has(f)) {
            this.fs.rmSync(p, { force: true });
            removed++;
          } else if (!tmp) kept++;
        }
      }
      await this.step('gc:swept');
      return { live: live.size, removed, kept };
    } finally {
      this.fs.rmSync(lock, { force: true });
    }
  }
}
