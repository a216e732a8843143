/**
 * The checkpoint reader: random access to pages (a {@link PageSource} for the
 * lazy guest memory), full restores, and the facts `vmkit checkpoint inspect`
 * prints. In a version 2 file a page costs one read of its own record (a run
 * of pages one read of their records' span), checked by the record's
 * checksum and decoded in core memory; a full restore to a file reads whole
 * blocks. Version 1 files (one checksum per block) are read a block at a
 * time through a small LRU cache of checked blocks. Diff checkpoints open
 * their parent chain and read absent pages from it.
 * Format: docs/checkpoint-format.md.
 * @module
 */
import { checkGeneration, core, coreFailure, withCore, withScratch, type Core } from '../../core.js';
import { check } from '../../_status.js';
import { VmkitError } from '../../errors.js';
import { abytes, aint } from '../../_utils.js';
import type { PageSource } from '../types.js';
import { STAGING_ENTRY, xxh32Of } from './_codec.js';
import {
  FOOTER_SIZE,
  HEADER_SIZE,
  MAX_CHAIN_DEPTH,
  PAGE_ABSENT,
  PAGE_RAW,
  PAGE_WORDS,
  PAGE_ZERO,
  decodeFooter,
  decodeHeader,
  decodeIndex,
  type BlockEntry,
  type CheckpointFooter,
  type CheckpointHeader,
} from './format.js';
import { fileSource, memorySource, nodeFs, type CheckpointSource } from './io.js';
import { httpSource, isHttpUrl, type HttpSourceOptions } from './http.js';

/**
 * Options of {@link CheckpointReader.open}.
 *
 * @example
 * ```ts
 * const r = await CheckpointReader.open('diff.ckpt', { cacheBlocks: 32, parents: true });
 * ```
 */
export interface CheckpointReaderOptions {
  /** Checked blocks kept in memory for version 1 files (default 8; version 2 files read pages, not blocks). */
  cacheBlocks?: number;
  /**
   * Let `readPagesInto`/`readPage` read a version 2 file's page records with
   * the source's `readSync` (default true when it has one). One positioned
   * read of a few KiB from the page cache costs a couple of µs, the thread
   * pool's round trip of an async read ~30 µs; but a sync read blocks the
   * event loop while the kernel fetches it (a cold disk): set false for a
   * checkpoint on slow storage read by a busy server.
   */
  syncReads?: boolean;
  /** Open the parent chain of a diff checkpoint (default true; without it, absent pages throw NOT_FOUND). */
  parents?: boolean;
  /** Maps a parent path from a header to what to open (default: relative to the child's directory). */
  resolveParent?: (parentPath: string, childPath: string | undefined) => string | URL | Uint8Array | CheckpointSource;
  /** How an `http(s)` URL is read (timeouts, retries, cache, `AbortSignal`): see {@link httpSource}. */
  http?: HttpSourceOptions;
}

/**
 * What a checkpoint holds (`vmkit checkpoint inspect`).
 *
 * @example
 * ```ts
 * const { diff, chain, storedPages, fileBytes }: CheckpointInfo = r.info();
 * ```
 */
export interface CheckpointInfo {
  version: number;
  id: string;
  parentId: string;
  parentPath: string;
  diff: boolean;
  codec: string;
  pageSize: number;
  guestSize: bigint;
  blockSize: number;
  coreBuild: string;
  pages: number;
  zeroPages: number;
  storedPages: number;
  rawPages: number;
  lz4Pages: number;
  absentPages: number;
  blocks: number;
  /** Write calls the save made for blocks (one per block). */
  blockWrites: number;
  storedBytes: number;
  indexBytes: number;
  fileBytes: number;
  /** Ids from this checkpoint to the root of its chain. */
  chain: string[];
}

/**
 * I/O a reader did so far.
 *
 * @example
 * ```ts
 * await r.readPage(0);
 * const { blockReads, bytesRead, cacheHits }: CheckpointReadStats = r.stats;
 * ```
 */
export interface CheckpointReadStats {
  /** Read calls for page data (whole blocks or spans of page records). */
  reads: number;
  /** Of those, whole storage blocks. */
  blockReads: number;
  /** Bytes of page data read. */
  bytesRead: number;
  /** Block lookups served by the cache. */
  cacheHits: number;
}

const RUN_PAGES = 64;
/** Pages per slab of {@link CheckpointReader.readPage}'s results. */
const SLAB_PAGES = 64;

/** What {@link CheckpointReader.readPageInto} returns on its synchronous path: one promise, never a new one. */
const RESOLVED: Promise<void> = Promise.resolve();
/** The core's status for a record that does not match its checksum (assembly/_errors.ts). */
const E_INTEGRITY = -8;
/**
 * {@link CheckpointReader.prefetchRuns}: records at most this many bytes
 * apart share one range request. A round trip costs far more than 64 KiB of
 * bandwidth on any link where it matters (64 KiB is 0.5 ms at 1 Gbit/s, a
 * round trip to object storage 1-20 ms), so skipping less is not worth a request.
 */
const COALESCE_GAP = 64 << 10;
/** {@link CheckpointReader.prefetchRuns}: the largest merged request (bounded by the source's cache anyway). */
const COALESCE_MAX = 4 << 20;
/** {@link CheckpointReader.prefetchRuns}: at most one request per this many bytes of pages asked for. */
const REQUEST_PER = 64 << 10;
/** Zero runs at least this long are left as holes by a restore to a file, not written. */
const HOLE_PAGES = 16;
/** A remote restore merges the record spans of consecutive windows into requests of up to this many bytes. */
const RESTORE_MERGE = 2 << 20;
/** …when the gap between one window's records and the next's is at most this. */
const RESTORE_GAP = 64 << 10;

/** The reader's buffers in core memory: which block (and which byte span of it) `block` holds. */
interface CoreBufs {
  gen: number;
  block: number;
  entries: number;
  out: number;
  loaded: number;
  lo: number;
  hi: number;
  /** View of `entries` (remade when core memory grows). */
  ent: Uint32Array;
  /** Views of the whole core memory and of one page at `out` (remade when it grows: a grown memory detaches them). */
  mem: Uint8Array;
  outPage: Uint8Array;
}

function dirname(p: string): string {
  const i = p.lastIndexOf('/');
  return i < 0 ? '.' : i === 0 ? '/' : p.slice(0, i);
}

/**
 * Reads a checkpoint file (or bytes) page by page or whole.
 * @example
 * ```ts
 * import { init, CheckpointReader } from 'vmkit/memory';
 * await init();
 * const r = await CheckpointReader.open('/tmp/vm.ckpt');
 * const page = await r.readPage(0x100);     // one read of that page's record (a few KiB)
 * await r.restoreTo('/tmp/mem.bin');         // full restore
 * await r.close();
 * ```
 */
export class CheckpointReader implements PageSource {
  /** The checked header. */
  readonly header: CheckpointHeader;
  /** Bytes per page. */
  readonly pageSize: number;
  /** Pages in the guest. */
  readonly pageCount: number;
  /** The parent of a diff checkpoint (when opened). */
  readonly parent: CheckpointReader | undefined;
  private readonly src: CheckpointSource;
  private readonly footer: CheckpointFooter;
  private readonly blocks: BlockEntry[];
  private readonly pages: Uint32Array;
  private readonly cache = new Map<number, Uint8Array>();
  private readonly cacheMax: number;
  /** Version 2 and later: pages carry their own checksums and are read record by record. */
  private readonly perPage: boolean;
  private readonly syncReads: boolean;
  /** A full version 2 checkpoint read synchronously: every page is in this file (no parent to await) and read without a promise. */
  private readonly syncPages: boolean;
  private readonly counters: CheckpointReadStats = { reads: 0, blockReads: 0, bytesRead: 0, cacheHits: 0 };
  private core: CoreBufs | undefined;
  private closed = false;

  private constructor(
    src: CheckpointSource,
    header: CheckpointHeader,
    footer: CheckpointFooter,
    index: { blocks: BlockEntry[]; pages: Uint32Array },
    parent: CheckpointReader | undefined,
    cacheMax: number,
    syncReads: boolean,
  ) {
    this.src = src;
    this.header = header;
    this.footer = footer;
    this.blocks = index.blocks;
    this.pages = index.pages;
    this.parent = parent;
    this.pageSize = header.pageSize;
    this.pageCount = index.pages.length / PAGE_WORDS;
    this.cacheMax = cacheMax;
    this.perPage = header.version >= 2;
    this.syncReads = syncReads && src.readSync !== undefined;
    this.syncPages = this.perPage && this.syncReads && !header.diff;
  }

  /**
   * Opens and checks a checkpoint: header, footer (a save that did not finish
   * has none: CORRUPT), index checksum and every index entry; then its parent
   * chain. Allocates nothing larger than the file's own index.
   * @example
   * ```ts
   * const r = await CheckpointReader.open(bytes); // or a path, or a CheckpointSource
   * ```
   * @throws {VmkitError} NOT_FOUND / IO: the file cannot be read; CORRUPT: a malformed header, index or footer (with its offset); INTEGRITY: a checksum does not match; UNSUPPORTED: another format version or build; LIMIT: an index past its bound.
   */
  static async open(target: string | URL | Uint8Array | CheckpointSource, options: CheckpointReaderOptions = {}): Promise<CheckpointReader> {
    return CheckpointReader.openAt(target, options, new Set(), 0);
  }

  private static async openAt(
    target: string | URL | Uint8Array | CheckpointSource,
    options: CheckpointReaderOptions,
    seen: Set<string>,
    depth: number,
  ): Promise<CheckpointReader> {
    const cacheMax = options.cacheBlocks ?? 8;
    aint(cacheMax, 'cacheBlocks', 1, 4096);
    const src = isHttpUrl(target)
      ? await httpSource(target, options.http)
      : typeof target === 'string'
        ? await fileSource(target)
        : target instanceof Uint8Array
          ? memorySource(target)
          : (target as CheckpointSource);
    try {
      if (src.size < HEADER_SIZE + FOOTER_SIZE) {
        throw new VmkitError('CORRUPT', `checkpoint: incomplete (${src.size} bytes, shorter than header and footer)`);
      }
      const hb = new Uint8Array(HEADER_SIZE);
      await src.read(0, hb);
      const header = decodeHeader(hb);
      const fb = new Uint8Array(FOOTER_SIZE);
      await src.read(src.size - FOOTER_SIZE, fb);
      const footer = decodeFooter(fb, src.size, header);
      const ib = new Uint8Array(footer.indexLength);
      await src.read(footer.indexOffset, ib);
      const index = decodeIndex(ib, header, footer);
      if (seen.has(header.id)) throw new VmkitError('LIMIT', `checkpoint chain loops at ${header.id}`);
      seen.add(header.id);
      let parent: CheckpointReader | undefined;
      if (header.diff && options.parents !== false) {
        if (depth + 1 > MAX_CHAIN_DEPTH) throw new VmkitError('LIMIT', `checkpoint chain deeper than ${MAX_CHAIN_DEPTH}`);
        const childPath = typeof target === 'string' ? target : target instanceof URL ? target.href : undefined;
        // A remote child's parent is resolved as a relative URL against the child's.
        const pt =
          options.resolveParent?.(header.parentPath, childPath) ??
          (childPath !== undefined && isHttpUrl(childPath) && header.parentPath !== ''
            ? new URL(header.parentPath, childPath).href
            : header.parentPath.startsWith('/') || childPath === undefined
              ? header.parentPath
              : `${dirname(childPath)}/${header.parentPath}`);
        if (pt === '') throw new VmkitError('NOT_FOUND', 'diff checkpoint names no parent path');
        parent = await CheckpointReader.openAt(pt, options, seen, depth + 1);
        if (parent.header.id !== header.parentId) {
          await parent.close();
          throw new VmkitError('INTEGRITY', `parent ${header.parentPath} is checkpoint ${parent.header.id}, expected ${header.parentId}`);
        }
        if (parent.header.pageSize !== header.pageSize || parent.header.guestSize !== header.guestSize) {
          await parent.close();
          throw new VmkitError('CORRUPT', 'parent checkpoint has another page or guest size');
        }
      }
      return new CheckpointReader(src, header, footer, index, parent, cacheMax, options.syncReads !== false);
    } catch (e) {
      await src.close();
      throw e;
    }
  }

  /**
   * Where this file's machine-state section lies (docs/checkpoint-format.md,
   * "Machine state"), padded to 4096 bytes, or undefined when it has none.
   * @example
   * ```ts
   * const s = reader.stateSection; // { offset, length } or undefined
   * ```
   */
  get stateSection(): { offset: number; length: number } | undefined {
    const n = this.footer.statePages ?? 0;
    if (n === 0) return undefined;
    return { offset: this.footer.indexOffset - n * 4096, length: n * 4096 };
  }

  /**
   * Reads `dst.length` bytes of the machine-state section from `position`
   * (relative to the section's start).
   * @example
   * ```ts
   * const head = new Uint8Array(64); await reader.readState(0, head);
   * ```
   */
  async readState(position: number, dst: Uint8Array): Promise<void> {
    const s = this.stateSection;
    if (!s) throw new VmkitError('NOT_FOUND', 'checkpoint has no machine-state section');
    aint(position, 'position', 0, s.length);
    if (position + dst.length > s.length) throw new VmkitError('ARG_RANGE', 'read past the machine-state section');
    if (this.src.readSync) this.src.readSync(s.offset + position, dst);
    else await this.src.read(s.offset + position, dst);
  }

  /** Bytes of guest memory. */
  get guestSize(): bigint {
    return this.header.guestSize;
  }

  /** I/O done so far (this checkpoint only, not its parents). */
  get stats(): CheckpointReadStats {
    return { ...this.counters };
  }

  /**
   * Facts about the checkpoint (page kinds, blocks, sizes, the chain).
   * @example
   * ```ts
   * const { pages, zeroPages, storedPages, blocks, fileBytes } = r.info();
   * ```
   */
  info(): CheckpointInfo {
    const h = this.header;
    const i: CheckpointInfo = {
      version: h.version,
      id: h.id,
      parentId: h.parentId,
      parentPath: h.parentPath,
      diff: h.diff,
      codec: h.codec,
      pageSize: h.pageSize,
      guestSize: h.guestSize,
      blockSize: h.blockSize,
      coreBuild: h.coreBuild,
      pages: this.pageCount,
      zeroPages: 0,
      storedPages: 0,
      rawPages: 0,
      lz4Pages: 0,
      absentPages: 0,
      blocks: this.blocks.length,
      blockWrites: this.blocks.length,
      storedBytes: this.blocks.reduce((a, b) => a + b.length, 0),
      indexBytes: this.footer.indexLength,
      fileBytes: this.src.size,
      chain: [],
    };
    for (let p = 0; p < this.pageCount; p++) {
      const k = this.pages[PAGE_WORDS * p + 2]! >>> 28;
      if (k === PAGE_ZERO) i.zeroPages++;
      else if (k === PAGE_ABSENT) i.absentPages++;
      else if (k === PAGE_RAW) i.rawPages++;
      else i.lz4Pages++;
    }
    i.storedPages = i.rawPages + i.lz4Pages;
    for (let r: CheckpointReader | undefined = this; r; r = r.parent) i.chain.push(r.header.id);
    return i;
  }

  /**
   * The storage block holding `page` (numbered across the chain: this file's
   * blocks first, then the parent's), or -1 for a zero page.
   * @example
   * ```ts
   * const sameRead = r.blockOf(a) === r.blockOf(b) && r.blockOf(a) >= 0; // one read serves both
   * ```
   */
  blockOf(page: number): number {
    aint(page, 'page', 0, this.pageCount - 1);
    const k = this.pages[PAGE_WORDS * page + 2]! >>> 28;
    if (k === PAGE_ZERO) return -1;
    if (k === PAGE_ABSENT) {
      if (!this.parent) return -1;
      const b = this.parent.blockOf(page);
      return b < 0 ? b : this.blocks.length + b;
    }
    return this.pages[PAGE_WORDS * page]!;
  }

  private checkRange(first: number, count: number, dst: Uint8Array): void {
    if (this.closed) throw new VmkitError('INVALID_STATE', 'checkpoint reader is closed');
    aint(first, 'first', 0, this.pageCount);
    aint(count, 'count', 0, this.pageCount - first);
    abytes(dst, 'dst');
    if (dst.length < count * this.pageSize) {
      throw new VmkitError('OUTPUT_TOO_SMALL', `dst has room for ${dst.length} bytes, needs ${count * this.pageSize}`);
    }
  }

  /** Pages of zeros (PAGE_ZERO here) from `p`, before `end`. */
  private zeroRun(p: number, end: number): number {
    const pg = this.pages;
    let q = p;
    while (q < end && pg[PAGE_WORDS * q + 2]! >>> 28 === PAGE_ZERO) q++;
    return q - p;
  }

  /** Kind and block of the run {@link nextRun} found last. */
  private runKind = 0;
  private runBlock = 0;

  /**
   * Splits [first, first+count) into runs: zero, absent, or stored in one
   * block. Returns the length of the run from `p`; its kind and block are
   * left in runKind and runBlock (no object per run: this is the path of
   * every lazy page read).
   */
  private nextRun(p: number, end: number): number {
    const pg = this.pages;
    const kind = pg[PAGE_WORDS * p + 2]! >>> 28;
    const block = pg[PAGE_WORDS * p]!;
    let q = p + 1;
    if (kind === PAGE_ZERO || kind === PAGE_ABSENT) {
      while (q < end && pg[PAGE_WORDS * q + 2]! >>> 28 === kind) q++;
    } else if (this.perPage) {
      // One read for the run: its records' span, with short zero gaps
      // (decoded as zeros) inside; it stops where the span would grow past
      // twice the bytes of the records in it (pages saved out of order lie
      // apart), so a read never costs more than twice what it uses.
      let lo = pg[PAGE_WORDS * p + 1]!;
      let hi = lo + (pg[PAGE_WORDS * p + 2]! & 0x0fffffff);
      let sum = hi - lo;
      let last = q;
      while (q < end && q - p < RUN_PAGES) {
        const w = pg[PAGE_WORDS * q + 2]!;
        if (w >>> 28 === PAGE_ZERO && q - last < HOLE_PAGES - 1) {
          q++;
          continue;
        }
        if (w >>> 28 < PAGE_RAW || pg[PAGE_WORDS * q]! !== block) break;
        const off = pg[PAGE_WORDS * q + 1]!;
        const len = w & 0x0fffffff;
        const nlo = Math.min(lo, off);
        const nhi = Math.max(hi, off + len);
        if (nhi - nlo > 2 * (sum + len)) break;
        lo = nlo;
        hi = nhi;
        sum += len;
        last = ++q;
      }
      q = last;
    } else {
      while (q < end && q - p < RUN_PAGES && pg[PAGE_WORDS * q]! === block && pg[PAGE_WORDS * q + 2]! >>> 28 >= PAGE_RAW) q++;
    }
    this.runKind = kind;
    this.runBlock = block;
    return q - p;
  }

  /**
   * The runs of a read of pages [first, first + count) into `dst` that need
   * reading, with `out` the part of `dst` each fills: zero runs are filled
   * here (the sync and async reads share this walk and differ only in how
   * they fetch).
   */
  private *pieces(first: number, count: number, dst: Uint8Array): Generator<{ kind: number; block: number; page: number; n: number; out: Uint8Array }> {
    this.checkRange(first, count, dst);
    const ps = this.pageSize;
    const end = first + count;
    for (let p = first; p < end; ) {
      const n = this.nextRun(p, end);
      const kind = this.runKind;
      const block = this.runBlock;
      const out = dst.subarray((p - first) * ps, (p - first + n) * ps);
      if (kind === PAGE_ZERO) out.fill(0);
      else yield { kind, block, page: p, n, out };
      p += n;
    }
  }

  /** The parent to read page `p` (absent here) from; NOT_FOUND when it is not open. */
  private parentFor(p: number): CheckpointReader {
    if (!this.parent) throw new VmkitError('NOT_FOUND', `page ${p} is in the parent checkpoint, which is not open`);
    return this.parent;
  }

  private fromCache(b: number): Uint8Array | undefined {
    const hit = this.cache.get(b);
    if (hit) {
      this.counters.cacheHits++;
      this.cache.delete(b);
      this.cache.set(b, hit); // most recently used last
    }
    return hit;
  }

  private admit(b: number, bytes: Uint8Array): Uint8Array {
    const bl = this.blocks[b]!;
    this.counters.reads++;
    this.counters.blockReads++;
    this.counters.bytesRead += bl.length;
    if (xxh32Of(bytes) !== bl.checksum) {
      throw new VmkitError('INTEGRITY', `checkpoint: block ${b} checksum mismatch`, { offset: bl.offset });
    }
    this.cache.set(b, bytes);
    while (this.cache.size > this.cacheMax) this.cache.delete(this.cache.keys().next().value as number);
    return bytes;
  }

  private blockSync(b: number): Uint8Array {
    const hit = this.fromCache(b);
    if (hit) return hit;
    if (!this.src.readSync) throw new VmkitError('UNSUPPORTED', 'this checkpoint source has no synchronous reads');
    const bl = this.blocks[b]!;
    const bytes = new Uint8Array(bl.length);
    this.src.readSync(bl.offset, bytes);
    return this.admit(b, bytes);
  }

  private async blockAsync(b: number): Promise<Uint8Array> {
    const hit = this.fromCache(b);
    if (hit) return hit;
    const bl = this.blocks[b]!;
    const bytes = new Uint8Array(bl.length);
    await this.src.read(bl.offset, bytes);
    return this.admit(b, bytes);
  }

  /** Sets spanLo/spanHi to the byte span of block-relative offsets holding the records of pages [p, p + n). */
  private setSpan(p: number, n: number): void {
    let lo = Infinity;
    let hi = 0;
    for (let i = 0; i < n; i++) {
      const w = this.pages[PAGE_WORDS * (p + i) + 2]!;
      if (w >>> 28 < PAGE_RAW) continue; // a zero page inside a run: no record
      const off = this.pages[PAGE_WORDS * (p + i) + 1]!;
      const end = off + (w & 0x0fffffff);
      if (off < lo) lo = off;
      if (end > hi) hi = end;
    }
    this.spanLo = lo;
    this.spanHi = hi;
  }

  private spanLo = 0;
  private spanHi = 0;

  /**
   * Version 2: the records of pages [p, p + n) (all in block `b`) in one
   * positioned read straight into core memory (none when the last span read
   * holds them), checked record by record and decoded into `dst`.
   */
  private readRecordsSync(b: number, p: number, n: number, dst: Uint8Array, at: number): void {
    const read = this.src.readSync;
    if (!read) throw new VmkitError('UNSUPPORTED', 'this checkpoint source has no synchronous reads');
    this.setSpan(p, n);
    const lo = this.spanLo;
    const hi = this.spanHi;
    withCore((c) => {
      const k = this.coreBufs(c);
      if (k.loaded !== b || lo < k.lo || hi > k.hi) {
        k.loaded = -1;
        read.call(this.src, this.blocks[b]!.offset + lo, c.u8().subarray(k.block, k.block + hi - lo));
        this.counters.reads++;
        this.counters.bytesRead += hi - lo;
        k.loaded = b;
        k.lo = lo;
        k.hi = hi;
      } else this.counters.cacheHits++;
      this.decodeRun(c, k, b, p, n, k.out);
      dst.set(c.u8().subarray(k.out, k.out + n * this.pageSize), at);
    });
  }

  /**
   * {@link readRecordsSync} for one stored page, without the run walk: the
   * path of a lazy page fault (one read of the record, one core call).
   */
  private readOneSync(p: number, dst: Uint8Array): void {
    const src = this.src;
    if (src.readSync === undefined) throw new VmkitError('UNSUPPORTED', 'this checkpoint source has no synchronous reads');
    const pg = this.pages;
    const at = PAGE_WORDS * p;
    const b = pg[at]!;
    const off = pg[at + 1]!;
    const w = pg[at + 2]!;
    const len = w & 0x0fffffff;
    // The lazy fault path: no closure, no view made per call (views are remade only
    // when core memory grows), the record read straight into core memory.
    const c = core();
    let k = this.core;
    if (k === undefined || k.gen !== c.generation) k = this.coreBufs(c);
    if (k.mem.byteLength === 0) this.remakeViews(c, k);
    let r: number;
    try {
      if (k.loaded !== b || off < k.lo || off + len > k.hi) {
        k.loaded = -1;
        src.readSync(this.blocks[b]!.offset + off, k.mem.subarray(k.block, k.block + len));
        this.counters.reads++;
        this.counters.bytesRead += len;
        k.loaded = b;
        k.lo = off;
        k.hi = off + len;
      } else this.counters.cacheHits++;
      const ent = k.ent;
      ent[0] = w >>> 28;
      ent[1] = off - k.lo;
      ent[2] = len;
      ent[3] = pg[at + 3]!;
      r = c.exports.stagingExtract(k.block, k.hi - k.lo, k.entries, 1, this.pageSize, k.out, 1);
    } catch (e) {
      throw coreFailure(e);
    }
    if (r < 0) this.decodeFailed(k, r, b, p, 1);
    dst.set(k.outPage);
  }

  /** Views of core memory for {@link CoreBufs}, after the memory grew (or when first made). */
  private remakeViews(c: Core, k: CoreBufs): void {
    const buf = c.exports.memory.buffer;
    k.mem = new Uint8Array(buf);
    k.ent = new Uint32Array(buf, k.entries, RUN_PAGES * 4);
    k.outPage = new Uint8Array(buf, k.out, this.pageSize);
  }

  /** {@link readRecordsSync} through the source's asynchronous read (into a buffer of the span's size, then core memory). */
  private async readRecordsAsync(b: number, p: number, n: number, dst: Uint8Array): Promise<void> {
    this.setSpan(p, n);
    const lo = this.spanLo;
    const hi = this.spanHi;
    // A remote source lends its cached span: one copy (into core memory) instead of two.
    let bytes: Uint8Array;
    if (this.src.readView) bytes = await this.src.readView(this.blocks[b]!.offset + lo, hi - lo);
    else await this.src.read(this.blocks[b]!.offset + lo, (bytes = new Uint8Array(hi - lo)));
    this.counters.reads++;
    this.counters.bytesRead += hi - lo;
    withCore((c) => {
      const k = this.coreBufs(c);
      c.u8().set(bytes, k.block);
      k.loaded = b;
      k.lo = lo;
      k.hi = hi;
      this.decodeRun(c, k, b, p, n, k.out);
      dst.set(c.u8().subarray(k.out, k.out + n * this.pageSize));
    });
  }

  /** Version 1: decodes `n` pages from `p` (all in block `b`, whose bytes are `bytes`) into dst. */
  private extract(b: number, bytes: Uint8Array, p: number, n: number, dst: Uint8Array): void {
    withCore((c) => {
      const k = this.coreBufs(c);
      // Only the byte span of these pages goes into core memory: a lazy read
      // of one page from a cached 1 MiB block copies a few KiB, not the block.
      this.setSpan(p, n);
      const lo = this.spanLo;
      const hi = this.spanHi;
      if (k.loaded !== b || lo < k.lo || hi > k.hi) {
        c.u8().set(bytes.subarray(lo, hi), k.block);
        k.loaded = b;
        k.lo = lo;
        k.hi = hi;
      }
      this.decodeRun(c, k, b, p, n, k.out);
      dst.set(c.u8().subarray(k.out, k.out + n * this.pageSize));
    });
  }

  /**
   * Decodes `n` pages from `p` out of the block span in `k` into core memory
   * at `out`; in a version 2 file the core checks each record against its
   * checksum first.
   */
  private decodeRun(c: Core, k: CoreBufs, b: number, p: number, n: number, out: number): void {
    if (k.ent.buffer !== c.u8().buffer) k.ent = new Uint32Array(c.u8().buffer, k.entries, RUN_PAGES * 4);
    const ent = k.ent;
    const pg = this.pages;
    for (let i = 0; i < n; i++) {
      const at = PAGE_WORDS * (p + i);
      const w = pg[at + 2]!;
      ent[4 * i] = w >>> 28;
      ent[4 * i + 1] = w >>> 28 < PAGE_RAW ? 0 : pg[at + 1]! - k.lo;
      ent[4 * i + 2] = w & 0x0fffffff;
      ent[4 * i + 3] = pg[at + 3]!;
    }
    const r = c.exports.stagingExtract(k.block, k.hi - k.lo, k.entries, n, this.pageSize, out, this.perPage ? 1 : 0);
    if (r < 0) this.decodeFailed(k, r, b, p, n);
  }

  /** Throws for status `r` of a failed stagingExtract of pages [p, p + n) of block `b` (the core span is forgotten). */
  private decodeFailed(k: CoreBufs, r: number, b: number, p: number, n: number): never {
    k.loaded = -1;
    const at = this.blocks[b]!.offset + k.lo;
    const pages = n === 1 ? `page ${p}` : `pages ${p}..${p + n - 1}`;
    if (r === E_INTEGRITY) throw new VmkitError('INTEGRITY', `checkpoint: a record of ${pages} does not match its checksum (block ${b})`, { offset: at });
    if (r === -3) throw new VmkitError('CORRUPT', `checkpoint: ${pages} ${n === 1 ? 'does' : 'do'} not decode (block ${b})`, { offset: at });
    check(r, 'checkpoint extract');
    throw new VmkitError('CORRUPT', `checkpoint extract: status ${r}`);
  }

  private coreBufs(c: Core): CoreBufs {
    if (!this.core || this.core.gen !== c.generation) {
      const block = c.alloc(this.header.blockSize);
      const entries = c.alloc(RUN_PAGES * STAGING_ENTRY);
      const out = c.alloc(RUN_PAGES * this.pageSize);
      const none = new Uint8Array(0);
      this.core = { gen: c.generation, block, entries, out, loaded: -1, lo: 0, hi: 0, ent: new Uint32Array(0), mem: none, outPage: none };
      this.remakeViews(c, this.core);
    }
    return this.core;
  }

  /**
   * Reads pages `[first, first + count)` into `dst` synchronously.
   * @example
   * ```ts
   * const dst = new Uint8Array(16 * 4096);
   * r.readPagesIntoSync(0x100, 16, dst);
   * ```
   */
  readPagesIntoSync(first: number, count: number, dst: Uint8Array): void {
    if (!this.perPage) {
      for (const r of this.pieces(first, count, dst)) {
        if (r.kind === PAGE_ABSENT) this.parentFor(r.page).readPagesIntoSync(r.page, r.n, r.out);
        else this.extract(r.block, this.blockSync(r.block), r.page, r.n, r.out);
      }
      return;
    }
    // Version 2: the walk of pieces() without its objects (the lazy page read path).
    this.checkRange(first, count, dst);
    if (count === 1 && this.pages[PAGE_WORDS * first + 2]! >>> 28 >= PAGE_RAW) return this.readOneSync(first, dst);
    const ps = this.pageSize;
    const end = first + count;
    for (let p = first; p < end; ) {
      const n = this.nextRun(p, end);
      const at = (p - first) * ps;
      if (this.runKind === PAGE_ZERO) dst.fill(0, at, at + n * ps);
      else if (this.runKind === PAGE_ABSENT) this.parentFor(p).readPagesIntoSync(p, n, dst.subarray(at, at + n * ps));
      else this.readRecordsSync(this.runBlock, p, n, dst, at);
      p += n;
    }
  }

  /**
   * Reads pages `[first, first + count)` into `dst` (PageSource).
   * @example
   * ```ts
   * await r.readPagesInto(0, 256, new Uint8Array(256 * 4096));
   * ```
   */
  async readPagesInto(first: number, count: number, dst: Uint8Array): Promise<void> {
    // A full version 2 checkpoint with synchronous reads has no absent pages to await.
    if (this.syncPages) return this.readPagesIntoSync(first, count, dst);
    for (const r of this.pieces(first, count, dst)) {
      if (r.kind === PAGE_ABSENT) await this.parentFor(r.page).readPagesInto(r.page, r.n, r.out);
      else if (!this.perPage) this.extract(r.block, await this.blockAsync(r.block), r.page, r.n, r.out);
      else if (this.syncReads) this.readRecordsSync(r.block, r.page, r.n, r.out, 0);
      else await this.readRecordsAsync(r.block, r.page, r.n, r.out);
    }
  }

  /** The slab {@link readPage} cuts pages from, and the bytes of it handed out. */
  private slab: ArrayBuffer | undefined;
  private slabUsed = 0;

  /**
   * One page as a new array: a view of its own `pageSize` bytes of a
   * 64-page slab that later pages share (as Node's Buffer pool does; an
   * ArrayBuffer per page cost more than the read itself). `page.slice()`
   * copies it out of the slab. {@link readPageInto} reads into the caller's
   * buffer and allocates nothing.
   * @example
   * ```ts
   * const page = await r.readPage(42);
   * ```
   */
  readPage(page: number): Promise<Uint8Array> {
    const ps = this.pageSize;
    if (!this.slab || this.slabUsed + ps > this.slab.byteLength) {
      this.slab = new ArrayBuffer(SLAB_PAGES * ps);
      this.slabUsed = 0;
    }
    const dst = new Uint8Array(this.slab, this.slabUsed, ps);
    this.slabUsed += ps;
    // Not an async function: on the synchronous path the only promise made is the result's.
    if (!this.syncPages) return this.readPagesInto(page, 1, dst).then(() => dst);
    try {
      this.readPagesIntoSync(page, 1, dst);
    } catch (e) {
      return Promise.reject(e);
    }
    return Promise.resolve(dst);
  }

  /**
   * Reads one page into `dst` (at least `pageSize` bytes): the lazy fault
   * path with nothing allocated per page. Where the page can be read
   * synchronously (a full version 2 checkpoint in a file or in memory) it is
   * in `dst` when the call returns, and the promise returned is one shared,
   * already resolved promise; errors come as a rejected promise either way.
   * @example
   * ```ts
   * const dst = new Uint8Array(4096);
   * await r.readPageInto(42, dst);
   * ```
   */
  readPageInto(page: number, dst: Uint8Array): Promise<void> {
    if (!this.syncPages) return this.readPagesInto(page, 1, dst);
    try {
      this.readPagesIntoSync(page, 1, dst);
    } catch (e) {
      return Promise.reject(e);
    }
    return RESOLVED;
  }

  /**
   * The file byte span `[lo, hi)` from the first to the end of the last
   * stored record of pages `[first, first + n)` in this file (not its
   * parents), or undefined when it stores none of them.
   */
  private recordSpan(first: number, n: number): [number, number] | undefined {
    let lo = Infinity;
    let hi = -1;
    for (let p = first; p < first + n; p++) {
      const at = PAGE_WORDS * p;
      const w = this.pages[at + 2]!;
      if (w >>> 28 < PAGE_RAW) continue;
      const o = this.blocks[this.pages[at]!]!.offset + this.pages[at + 1]!;
      if (o < lo) lo = o;
      if (o + (w & 0x0fffffff) > hi) hi = o + (w & 0x0fffffff);
    }
    return hi < 0 ? undefined : [lo, hi];
  }

  /**
   * Starts fetching the records of `runs` (`first, count` pairs) from a
   * remote source (a no-op for local ones). The byte spans of the runs'
   * records, in this file and in each parent, are sorted; spans at most
   * {@link COALESCE_GAP} apart are merged; then the smallest gaps left are
   * bridged until there is at most one request per 64 KiB of pages the runs
   * hold (bridging the smallest gaps first wastes the fewest bytes for that
   * many requests), never past {@link COALESCE_MAX} bytes a request. Each
   * merged span is one request, all in flight at once; the reads of the runs
   * that follow find their bytes in the source's cache.
   * @example
   * ```ts
   * r.prefetchRuns(Uint32Array.of(100, 8, 4000, 16)); // one or two range requests
   * ```
   */
  prefetchRuns(runs: Uint32Array): void {
    let pages = 0;
    for (let i = 1; i < runs.length; i += 2) pages += runs[i]!;
    const budget = Math.max(1, Math.ceil((pages * this.pageSize) / REQUEST_PER));
    for (let r: CheckpointReader | undefined = this; r; r = r.parent) {
      const src = r.src;
      if (!src.prefetch || r.closed) continue;
      const raw: [number, number][] = [];
      for (let i = 0; i + 1 < runs.length; i += 2) {
        const first = runs[i]!;
        const n = runs[i + 1]!;
        if (first >= r.pageCount || n === 0) continue;
        const s = r.recordSpan(first, Math.min(n, r.pageCount - first));
        if (s && s[1] - s[0] <= COALESCE_MAX) raw.push(s);
      }
      raw.sort((a, b) => a[0] - b[0]);
      const spans: [number, number][] = [];
      for (const s of raw) {
        const cur = spans[spans.length - 1];
        if (cur && s[0] <= cur[1] + COALESCE_GAP && Math.max(cur[1], s[1]) - cur[0] <= COALESCE_MAX) cur[1] = Math.max(cur[1], s[1]);
        else spans.push([s[0], s[1]]);
      }
      // Groups of spans are intervals of indices: left[] is valid at each group's right end, right[] at its left end.
      const n = spans.length;
      const left = Array.from({ length: n }, (_, i) => i);
      const right = left.slice();
      const bridged = new Uint8Array(n);
      let groups = n;
      if (groups > budget) {
        const gaps = Array.from({ length: n - 1 }, (_, i) => i).sort((a, b) => spans[a + 1]![0] - spans[a]![1] - (spans[b + 1]![0] - spans[b]![1]));
        for (const g of gaps) {
          if (groups <= budget) break;
          const L = left[g]!;
          const R = right[g + 1]!;
          if (spans[R]![1] - spans[L]![0] > COALESCE_MAX) continue;
          right[L] = R;
          left[R] = L;
          bridged[g] = 1;
          groups--;
        }
      }
      for (let i = 0; i < n; ) {
        let j = i;
        while (j < n - 1 && bridged[j]) j++;
        src.prefetch(spans[i]![0], spans[j]![1] - spans[i]![0]);
        i = j + 1;
      }
    }
  }

  /** True when this checkpoint and every parent can be read synchronously. */
  private hasSyncReads(): boolean {
    for (let r: CheckpointReader | undefined = this; r; r = r.parent) if (!r.src.readSync) return false;
    return true;
  }

  /** True when every page of the run is zero through the whole chain. */
  private allZero(first: number, count: number): boolean {
    for (let p = first; p < first + count; p++) {
      const k = this.pages[PAGE_WORDS * p + 2]! >>> 28;
      if (k === PAGE_ZERO) continue;
      if (k === PAGE_ABSENT && this.parent && this.parent.allZero(p, 1)) continue;
      return false;
    }
    return true;
  }

  /**
   * Restores the whole guest memory into a buffer (at least guestSize bytes)
   * or a file (Node; created or truncated, zero runs left as holes).
   * `onProgress(bytesDone)` is called per window.
   * @example
   * ```ts
   * await r.restoreTo('/tmp/mem.bin');
   * const mem = new Uint8Array(Number(r.guestSize)); await r.restoreTo(mem);
   * ```
   */
  async restoreTo(target: string | Uint8Array, options: { onProgress?: (done: number) => void; windowPages?: number } = {}): Promise<void> {
    const win = options.windowPages ?? 1024;
    aint(win, 'windowPages', 1, 1 << 16);
    const ps = this.pageSize;
    // A remote source fetches each window's records in one request, windows ahead of the one decoded in
    // flight at once, up to half its cache: one window at a time would wait a round trip per window.
    const ahead = new Map<CheckpointReader, { next: number; spans: [number, number][] }>();
    const hint = (p: number): void => {
      for (let r: CheckpointReader | undefined = this; r; r = r.parent) {
        if (!r.src.prefetch) continue;
        let a = ahead.get(r);
        if (!a) ahead.set(r, (a = { next: 0, spans: [] }));
        // Spans of windows already decoded no longer count against the budget.
        while (a.spans.length > 0 && a.spans[0]![0] < p) a.spans.shift();
        const budget = Math.max(1, (r.src.prefetchBytes ?? 0) / 2);
        let inFlight = a.spans.reduce((n, s) => n + s[1], 0);
        while (a.next < this.pageCount && (a.next <= p || inFlight < budget)) {
          // The window needed now is fetched alone (its decoding starts sooner); windows ahead whose records
          // follow each other go in one request of up to RESTORE_MERGE bytes: fewer, longer requests keep a
          // long round trip's worth of bytes in flight over the same few connections.
          const now = a.next <= p;
          let lo = -1;
          let hi = -1;
          let last = a.next;
          while (a.next < this.pageCount) {
            const span = r.recordSpan(a.next, Math.min(win, this.pageCount - a.next));
            if (span === undefined) {
              // A window with no records (all zero, or all in the parent): nothing to fetch, merging goes on.
              a.next += win;
              if (now) break;
              continue;
            }
            // Records far apart (pages saved out of order) are read run by run instead.
            const usable = span[1] - span[0] <= 2 * win * ps;
            if (lo >= 0 && (!usable || span[0] < hi || span[0] - hi > RESTORE_GAP || span[1] - lo > RESTORE_MERGE)) break;
            a.next += win;
            if (!usable) break;
            if (lo < 0) lo = span[0];
            hi = span[1];
            last = a.next - win;
            if (now) break;
          }
          if (lo < 0) continue;
          r.src.prefetch(lo, hi - lo);
          a.spans.push([last, hi - lo]);
          inFlight += hi - lo;
        }
      }
    };
    if (target instanceof Uint8Array) {
      if (BigInt(target.length) < this.guestSize) throw new VmkitError('OUTPUT_TOO_SMALL', `target has ${target.length} bytes, the guest ${this.guestSize}`);
      const sync = this.hasSyncReads();
      for (let p = 0; p < this.pageCount; p += win) {
        const n = Math.min(win, this.pageCount - p);
        hint(p);
        const view = target.subarray(p * ps, (p + n) * ps);
        if (sync) this.readPagesIntoSync(p, n, view);
        else await this.readPagesInto(p, n, view);
        options.onProgress?.((p + n) * ps);
      }
      return;
    }
    const fs = await nodeFs();
    let fd: number;
    try {
      fd = fs.openSync(target, 'w');
      fs.ftruncateSync(fd, Number(this.guestSize));
    } catch (e) {
      throw new VmkitError('IO', `${target}: ${(e as Error).message}`, { cause: e, path: target });
    }
    try {
      if (this.hasSyncReads()) {
        this.restoreFileSync(fd, win, options.onProgress, fs);
        return;
      }
      if (this.perPage) {
        await this.restoreFileAsync(fd, win, hint, options.onProgress, fs);
        return;
      }
      const buf = new Uint8Array(win * ps);
      for (let p = 0; p < this.pageCount; p += win) {
        const n = Math.min(win, this.pageCount - p);
        hint(p);
        if (!this.allZero(p, n)) {
          const view = buf.subarray(0, n * ps);
          await this.readPagesInto(p, n, view);
          // Zero runs of HOLE_PAGES or more stay holes, as in the sync path: most of a guest is zeros
          // (69% of the bench's), and writing them cost a remote restore as much as fetching.
          const write = (from: number, to: number): void => {
            const part = view.subarray((from - p) * ps, (to - p) * ps);
            let done = 0;
            while (done < part.length) done += fs.writeSync(fd, part, done, part.length - done, from * ps + done);
          };
          let seg = p;
          for (let q = p; q < p + n; ) {
            const rn = this.zeroRun(q, p + n);
            if (rn >= HOLE_PAGES) {
              if (q > seg) write(seg, q);
              seg = q + rn;
            }
            q += Math.max(rn, 1);
          }
          if (p + n > seg) write(seg, p + n);
        }
        options.onProgress?.((p + n) * ps);
      }
    } finally {
      fs.closeSync(fd);
    }
  }

  /**
   * The full restore to a file without copies through JavaScript: blocks are
   * read straight into core memory, checked there, decoded into a window in
   * core memory, and the window is written from there (synchronous writes,
   * so the view of core memory cannot go stale under the write).
   */
  private restoreFileSync(fd: number, win: number, onProgress: ((done: number) => void) | undefined, fs: typeof import('node:fs')): void {
    const ps = this.pageSize;
    withScratch(win * ps, (_ex, cw, c) => {
      let tmp: Uint8Array | undefined;
      for (let p = 0; p < this.pageCount; p += win) {
        const n = Math.min(win, this.pageCount - p);
        if (!this.allZero(p, n)) {
          // Pages [seg, q) are decoded and not yet written; a long zero run
          // ends a segment and stays a hole (the file was extended with zeros).
          let seg = p;
          const flush = (end: number): void => {
            const from = cw + (seg - p) * ps;
            const len = (end - seg) * ps;
            let done = 0;
            while (done < len) done += fs.writeSync(fd, c.u8().subarray(from + done, from + len), 0, len - done, seg * ps + done);
          };
          for (let q = p; q < p + n; ) {
            const rn = this.nextRun(q, p + n);
            const kind = this.runKind;
            const block = this.runBlock;
            const at = cw + (q - p) * ps;
            if (kind === PAGE_ZERO) {
              if (rn >= HOLE_PAGES) {
                flush(q);
                seg = q + rn;
              } else c.u8().fill(0, at, at + rn * ps);
            } else if (kind === PAGE_ABSENT) {
              const parent = this.parentFor(q);
              tmp ??= new Uint8Array(win * ps);
              const part = tmp.subarray(0, rn * ps);
              parent.readPagesIntoSync(q, rn, part); // may grow core memory: views are taken after
              c.u8().set(part, at);
            } else {
              const k = this.coreBufs(c);
              this.loadBlockInCore(c, k, block);
              this.decodeRun(c, k, block, q, rn, at);
            }
            q += rn;
          }
          flush(p + n);
        }
        onProgress?.((p + n) * ps);
      }
    });
  }

  /**
   * The full restore of a version 2 file to a file through asynchronous
   * reads (a remote source): each run's span is awaited (a window's records
   * are one prefetched request), then checked and decoded straight into a
   * window in core memory, and the window is written from there, as
   * {@link restoreFileSync} does; long zero runs stay holes. The window is a
   * core allocation of its own, not the shared scratch another reader could
   * take during an await; each window's runs are listed before the first
   * await, as a concurrent lazy read reuses `nextRun`'s fields.
   */
  private async restoreFileAsync(
    fd: number,
    win: number,
    hint: (p: number) => void,
    onProgress: ((done: number) => void) | undefined,
    fs: typeof import('node:fs'),
  ): Promise<void> {
    const ps = this.pageSize;
    let c = core();
    const cw = c.alloc(win * ps);
    const gen = c.generation;
    const runs: number[] = [];
    try {
      for (let p = 0; p < this.pageCount; p += win) {
        const n = Math.min(win, this.pageCount - p);
        hint(p);
        if (this.allZero(p, n)) {
          onProgress?.((p + n) * ps);
          continue;
        }
        runs.length = 0;
        for (let q = p; q < p + n; ) {
          const rn = this.nextRun(q, p + n);
          runs.push(q, rn, this.runKind, this.runBlock);
          q += rn;
        }
        // Pages [seg, q) are decoded and not yet written.
        const segs: number[] = [];
        let seg = p;
        for (let i = 0; i < runs.length; i += 4) {
          const q = runs[i]!;
          const rn = runs[i + 1]!;
          const kind = runs[i + 2]!;
          const block = runs[i + 3]!;
          let bytes: Uint8Array | undefined;
          let lo = 0;
          let hi = 0;
          if (kind === PAGE_ABSENT) {
            bytes = new Uint8Array(rn * ps);
            await this.parentFor(q).readPagesInto(q, rn, bytes);
          } else if (kind !== PAGE_ZERO) {
            this.setSpan(q, rn);
            lo = this.spanLo;
            hi = this.spanHi;
            const at = this.blocks[block]!.offset + lo;
            if (this.src.readView) bytes = await this.src.readView(at, hi - lo);
            else await this.src.read(at, (bytes = new Uint8Array(hi - lo)));
            this.counters.reads++;
            this.counters.bytesRead += hi - lo;
          }
          c = core();
          // A trap elsewhere reset the core during the await: the window's allocation is gone.
          if (c.generation !== gen) throw new VmkitError('CORE_TRAP', 'checkpoint restore: the core was reset during the restore');
          const at = cw + (q - p) * ps;
          if (kind === PAGE_ZERO) {
            if (rn >= HOLE_PAGES) {
              if (q > seg) segs.push(seg, q);
              seg = q + rn;
            } else c.u8().fill(0, at, at + rn * ps);
          } else if (kind === PAGE_ABSENT) c.u8().set(bytes!, at);
          else {
            const k = this.coreBufs(c);
            k.loaded = -1;
            c.u8().set(bytes!, k.block);
            k.loaded = block;
            k.lo = lo;
            k.hi = hi;
            this.decodeRun(c, k, block, q, rn, at);
          }
        }
        if (p + n > seg) segs.push(seg, p + n);
        // Written from core memory, synchronously: no await between the view and the write.
        for (let i = 0; i < segs.length; i += 2) {
          const from = cw + (segs[i]! - p) * ps;
          const len = (segs[i + 1]! - segs[i]!) * ps;
          let done = 0;
          while (done < len) done += fs.writeSync(fd, c.u8().subarray(from + done, from + len), 0, len - done, segs[i]! * ps + done);
        }
        onProgress?.((p + n) * ps);
      }
    } finally {
      if (core().generation === gen) core().free(cw);
    }
  }

  /** Puts all of block `b` into the core block buffer: from the cache, or read from the source straight into core memory and checked there. */
  private loadBlockInCore(c: Core, k: CoreBufs, b: number): void {
    const bl = this.blocks[b]!;
    if (k.loaded === b && k.lo === 0 && k.hi === bl.length) return;
    k.loaded = -1;
    const hit = this.fromCache(b);
    if (hit) c.u8().set(hit, k.block);
    else {
      this.src.readSync!(bl.offset, c.u8().subarray(k.block, k.block + bl.length));
      this.counters.reads++;
      this.counters.blockReads++;
      this.counters.bytesRead += bl.length;
      // Version 2 blocks have no checksum of their own: decodeRun checks each record.
      if (!this.perPage && c.exports.xxh32(k.block, bl.length, 0) >>> 0 !== bl.checksum) {
        throw new VmkitError('INTEGRITY', `checkpoint: block ${b} checksum mismatch`, { offset: bl.offset });
      }
    }
    k.loaded = b;
    k.lo = 0;
    k.hi = bl.length;
  }

  /**
   * Closes the file (and the parent chain) and frees the core buffers.
   * @example
   * ```ts
   * await r.close();
   * ```
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.cache.clear();
    if (this.core) {
      try {
        const c = checkGeneration(this.core.gen, 'checkpoint reader');
        c.free(this.core.block);
        c.free(this.core.entries);
        c.free(this.core.out);
      } catch {
        // The core was reset; its memory is gone already.
      }
      this.core = undefined;
    }
    await this.src.close();
    await this.parent?.close();
  }
}
