/**
 * The streaming checkpoint writer: pages in (any order, or by a dirty
 * bitmap), compressed by the core's staging buffer, written as one storage
 * block per buffer fill; `finish()` writes the index and then the footer.
 * Format: docs/checkpoint-format.md.
 * @module
 */
import { checkGeneration, withCore, type Core } from '../../core.js';
import { check } from '../../_status.js';
import { VmkitError } from '../../errors.js';
import { abytes, aint, aoneOf } from '../../_utils.js';
import type { PageSource } from '../types.js';
import { STAGING_ENTRY, closeStaging, compressBound, xxh32Of } from './_codec.js';
import {
  BLOCK_ALIGN,
  CHECKPOINT_VERSION,
  CODECS,
  DEFAULT_BLOCK_SIZE,
  FOOTER_SIZE,
  HEADER_SIZE,
  MAX_BLOCK_SIZE,
  MAX_PAGES,
  NO_BLOCK,
  PAGE_ABSENT,
  PAGE_LZ4,
  PAGE_RAW,
  PAGE_WORDS,
  PAGE_ZERO,
  READ_VERSIONS,
  encodeFooter,
  encodeHeader,
  encodeIndex,
  toHex,
  validPageSize,
  type BlockEntry,
  type CheckpointCodec,
  type CheckpointHeader,
} from './format.js';
import { fileSink, type CheckpointSink } from './io.js';

/**
 * Options of {@link CheckpointWriter.create}.
 *
 * @example
 * ```ts
 * const w = await CheckpointWriter.create('vm.ckpt', { guestSize: 1n << 30n, codec: 'lz4', sync: true });
 * ```
 */
export interface CheckpointWriterOptions {
  /** Bytes of guest memory (a whole number of pages). */
  guestSize: bigint | number;
  /** Bytes per page (default 4096). */
  pageSize?: number;
  /** Storage block size: the staging buffer, one write each (default 1 MiB). */
  blockSize?: number;
  /** 'lz4' (default) or 'none' (pages stored raw; zero pages still skipped). */
  codec?: CheckpointCodec;
  /**
   * LZ4's page search: 'fast' (default) or 'dense' — a hash-chain search as
   * LZ4HC's (4 candidates, lazy matching): on a real guest 7.6% smaller
   * records for ~4.5× the compression CPU. Either way the records are plain
   * LZ4 blocks; a reader cannot tell them apart.
   */
  search?: 'fast' | 'dense';
  /** Makes this a diff checkpoint of `parent` (pages not written are read from it). */
  parent?: { path: string; id: string };
  /** fdatasync before the footer, so a power cut cannot leave a footer over missing data. */
  sync?: boolean;
  /** The checkpoint's id (32 hex digits; default random). Fixing it makes saves reproducible byte for byte. */
  id?: string;
  /** SHA-256 (hex) of the core build to record; default: computed from dist/core.wasm when readable, else zeros. */
  coreBuild?: string;
  /**
   * Format version to write (default {@link CHECKPOINT_VERSION}, 3). Version 2
   * (the page table unpacked, 16 bytes per page) and version 1 (one checksum
   * per block, no page checksums) are for older readers; a vmkit reader reads
   * all three.
   */
  formatVersion?: number;
}

/**
 * What a finished save did.
 *
 * @example
 * ```ts
 * const { pages, zeroPages, lz4Pages, storedBytes }: CheckpointStats = await w.finish();
 * ```
 */
export interface CheckpointStats {
  pages: number;
  /** Pages given to the writer (a page written twice counts twice). */
  pagesWritten: number;
  zeroPages: number;
  rawPages: number;
  lz4Pages: number;
  /** Pages left to the parent (diff checkpoints). */
  absentPages: number;
  blocks: number;
  /** Write calls for storage blocks (one per block). */
  blockWrites: number;
  /** Write calls in all (blocks + header + index + footer). */
  writes: number;
  /** Bytes of stored page data (before alignment). */
  storedBytes: number;
  fileBytes: number;
  id: string;
}

const WINDOW_PAGES = 256;

type NodeCrypto = typeof import('node:crypto');
let nodeCrypto: NodeCrypto | undefined;

function randomId(): string {
  const b = new Uint8Array(16);
  // node:crypto when loaded (Node): the global WebCrypto costs ~10 ms to set up on first use.
  if (nodeCrypto) nodeCrypto.randomFillSync(b);
  else crypto.getRandomValues(b);
  return toHex(b);
}

let buildHash: string | undefined;
async function coreBuildHash(): Promise<string> {
  if (buildHash !== undefined) return buildHash;
  buildHash = '0'.repeat(64);
  try {
    const url = new URL('../../core.wasm', import.meta.url);
    if (url.protocol === 'file:') {
      const fsName = 'node:fs';
      const cryptoName = 'node:crypto';
      const fs = (await import(/* @vite-ignore */ fsName)) as typeof import('node:fs');
      nodeCrypto = (await import(/* @vite-ignore */ cryptoName)) as NodeCrypto;
      buildHash = nodeCrypto.createHash('sha256').update(fs.readFileSync(url)).digest('hex');
    }
  } catch {
    // No core.wasm next to the bindings (tests run from sources): recorded as zeros.
  }
  return buildHash;
}

/**
 * Writes a checkpoint. Create, give it pages (`writePages`, `writeDirty`),
 * then `finish()`; until the footer is written the file is rejected by readers.
 * @example
 * ```ts
 * import { init, CheckpointWriter } from 'vmkit/memory';
 * await init();
 * const w = await CheckpointWriter.create('/tmp/vm.ckpt', { guestSize: mem.length });
 * await w.writePages(0, mem);            // any page order, any run length
 * const stats = await w.finish();         // stats.blockWrites: one per storage block
 * ```
 */
export class CheckpointWriter {
  /** The header this writer wrote. */
  readonly header: CheckpointHeader;
  /** LZ4's page search this writer uses (its `search` option; parallel saves compress with it too). */
  readonly search: 'fast' | 'dense';
  private readonly sink: CheckpointSink;
  private readonly opts: CheckpointWriterOptions;
  private readonly pageCount: number;
  private readonly pages: Uint32Array;
  private readonly blocks: BlockEntry[] = [];
  private readonly gen: number;
  private stager: number;
  private input: number;
  private entries: number;
  private next = HEADER_SIZE;
  private writes = 0;
  private storedBytes = 0;
  private pagesWritten = 0;
  private state: 'open' | 'finished' | 'failed' = 'open';
  private busy = false;
  private outBuf: Uint8Array | undefined;
  /** Block being packed from records compressed elsewhere (parallel saves), and its bytes used. */
  private pack: Uint8Array | undefined;
  private packUsed = 0;
  /** File offset of the machine-state section once started (-1: none). */
  private stateStart = -1;

  private constructor(sink: CheckpointSink, header: CheckpointHeader, opts: CheckpointWriterOptions, c: Core) {
    this.sink = sink;
    this.header = header;
    this.opts = opts;
    this.search = opts.search ?? 'fast';
    this.pageCount = Number(header.guestSize / BigInt(header.pageSize));
    this.pages = new Uint32Array(this.pageCount * PAGE_WORDS);
    // Pages never written: zero in a full checkpoint, absent (parent's) in a diff.
    const kind = header.diff ? PAGE_ABSENT : PAGE_ZERO;
    for (let p = 0; p < this.pageCount; p++) {
      this.pages[PAGE_WORDS * p] = NO_BLOCK;
      this.pages[PAGE_WORDS * p + 2] = kind << 28;
    }
    this.gen = c.generation;
    const e = c.exports;
    const codec = stagerCodec(header.codec, this.search);
    this.stager = check(e.stagingOpen(header.blockSize, header.pageSize, codec), 'checkpoint staging open');
    try {
      this.input = c.alloc(WINDOW_PAGES * header.pageSize);
      this.entries = c.alloc(WINDOW_PAGES * STAGING_ENTRY);
    } catch (err) {
      e.stagingClose(this.stager);
      throw err;
    }
  }

  /**
   * Creates a checkpoint at `target` (a file path in Node, or a sink) and
   * writes its header.
   * @example
   * ```ts
   * const w = await CheckpointWriter.create('vm.ckpt', { guestSize: 256n << 20n, blockSize: 1 << 20 });
   * ```
   * @throws {VmkitError} ARG_TYPE / ARG_RANGE: a bad option (named: guestSize, pageSize, blockSize…); LIMIT: a guest or block past its bound; IO: the file cannot be created.
   */
  static async create(target: string | CheckpointSink, options: CheckpointWriterOptions): Promise<CheckpointWriter> {
    const pageSize = options.pageSize ?? 4096;
    if (!validPageSize(pageSize)) throw new VmkitError('ARG_RANGE', `pageSize must be a power of two in [512, 65536], got ${pageSize}`);
    const guestSize = typeof options.guestSize === 'bigint' ? options.guestSize : BigInt(options.guestSize);
    if (guestSize <= 0n || guestSize % BigInt(pageSize) !== 0n) {
      throw new VmkitError('ARG_RANGE', `guestSize must be a positive multiple of the page size, got ${guestSize}`);
    }
    if (guestSize / BigInt(pageSize) > BigInt(MAX_PAGES)) throw new VmkitError('LIMIT', `more than ${MAX_PAGES} pages`);
    const blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE;
    aint(blockSize, 'blockSize', compressBound(pageSize), MAX_BLOCK_SIZE);
    const codec = aoneOf(options.codec ?? 'lz4', 'codec', ['lz4', 'none'] as const);
    aoneOf(options.search ?? 'fast', 'search', ['fast', 'dense'] as const);
    if (options.parent && !/^[0-9a-f]{32}$/.test(options.parent.id)) throw new VmkitError('ARG_RANGE', 'parent.id must be 32 hex digits');
    if (options.id !== undefined && !/^[0-9a-f]{32}$/.test(options.id)) throw new VmkitError('ARG_RANGE', 'id must be 32 hex digits');
    const version = options.formatVersion ?? CHECKPOINT_VERSION;
    if (!READ_VERSIONS.includes(version)) throw new VmkitError('ARG_RANGE', `formatVersion must be one of ${READ_VERSIONS.join(', ')}, got ${version}`);
    const coreBuild = options.coreBuild ?? (await coreBuildHash());
    const header: CheckpointHeader = {
      version,
      pageSize,
      codec,
      blockSize,
      guestSize,
      diff: options.parent !== undefined,
      id: options.id ?? randomId(),
      parentId: options.parent?.id ?? '',
      parentPath: options.parent?.path ?? '',
      coreBuild,
    };
    const headerBytes = encodeHeader(header);
    const sink = typeof target === 'string' ? await fileSink(target) : target;
    let w: CheckpointWriter;
    try {
      w = withCore((c) => new CheckpointWriter(sink, header, options, c));
    } catch (e) {
      await sink.close();
      throw e;
    }
    try {
      await sink.write(headerBytes, 0);
      w.writes++;
    } catch (e) {
      await w.abort();
      throw e;
    }
    return w;
  }

  /** Pages in the guest. */
  get pageTotal(): number {
    return this.pageCount;
  }

  private enter(): Core {
    if (this.state !== 'open') throw new VmkitError('INVALID_STATE', `checkpoint writer is ${this.state}`);
    if (this.busy) throw new VmkitError('INVALID_STATE', 'checkpoint writer: one call at a time (await the previous one)');
    return checkGeneration(this.gen, 'checkpoint writer');
  }

  /**
   * Runs the body of a public call: one call at a time, and a call that fails
   * part way leaves the writer `failed` (what it wrote is not a checkpoint).
   */
  private async exclusive<T>(body: (c: Core) => Promise<T>): Promise<T> {
    const c = this.enter();
    this.busy = true;
    try {
      return await body(c);
    } catch (e) {
      this.state = 'failed';
      throw e;
    } finally {
      this.busy = false;
    }
  }

  /**
   * Adds pages `[first, first + data.length / pageSize)`. Any order; a page
   * written again replaces the earlier copy (whose bytes stay in the file).
   * @example
   * ```ts
   * await w.writePages(0x100, page); // one 4 KiB page at page number 0x100
   * ```
   */
  async writePages(first: number, data: Uint8Array): Promise<void> {
    abytes(data, 'data');
    const ps = this.header.pageSize;
    if (data.length % ps !== 0) throw new VmkitError('ARG_RANGE', `data must be whole pages of ${ps} bytes, got ${data.length}`);
    const count = data.length / ps;
    aint(first, 'first', 0, this.pageCount - count);
    await this.stagePages(first, count, (at, n, dst) => dst.set(data.subarray((at - first) * ps, (at - first + n) * ps)));
  }

  /**
   * Adds the pages a dirty bitmap marks (bit `p % 8` of byte `p / 8`, LSB
   * first, set = dirty), read from `source` in runs.
   * @example
   * ```ts
   * await w.writeDirty(bitmap, guestMemory); // a diff checkpoint's pages
   * ```
   */
  async writeDirty(bitmap: Uint8Array, source: PageSource): Promise<number> {
    abytes(bitmap, 'bitmap');
    if (bitmap.length * 8 < this.pageCount) throw new VmkitError('ARG_RANGE', `bitmap has ${bitmap.length * 8} bits for ${this.pageCount} pages`);
    if (source.pageSize !== this.header.pageSize) throw new VmkitError('ARG_RANGE', 'source page size differs from the checkpoint');
    const ps = this.header.pageSize;
    const buf = new Uint8Array(WINDOW_PAGES * ps);
    let written = 0;
    let p = 0;
    const dirty = (i: number): boolean => ((bitmap[i >>> 3]! >>> (i & 7)) & 1) === 1;
    while (p < this.pageCount) {
      if (!dirty(p)) {
        p++;
        continue;
      }
      let q = p + 1;
      while (q < this.pageCount && q - p < WINDOW_PAGES && dirty(q)) q++;
      const view = buf.subarray(0, (q - p) * ps);
      if (source.readPagesIntoSync) source.readPagesIntoSync(p, q - p, view);
      else await source.readPagesInto(p, q - p, view);
      await this.writePages(p, view);
      written += q - p;
      p = q;
    }
    return written;
  }

  /**
   * Adds pages `[first, first + count)` that `read` copies straight into the
   * writer's window in core memory (no intermediate copy: a file read lands
   * where the compressor reads). `read(page, n, dst)` must fill `dst` with
   * pages `[page, page + n)` synchronously and must not call vmkit (the view
   * is of core memory).
   * @example
   * ```ts
   * await w.writePagesFromSync(0, pages, (p, n, dst) => readSync(fd, dst, 0, dst.length, p * 4096));
   * ```
   */
  async writePagesFromSync(first: number, count: number, read: (page: number, count: number, dst: Uint8Array) => void): Promise<void> {
    aint(count, 'count', 0, this.pageCount);
    aint(first, 'first', 0, this.pageCount - count);
    if (typeof read !== 'function') throw new VmkitError('ARG_TYPE', 'read must be a function');
    await this.stagePages(first, count, read);
  }

  /**
   * Stages pages `[first, first + count)` one window at a time; `fill(page,
   * n, dst)` puts pages `[page, page + n)` into the window.
   */
  private stagePages(first: number, count: number, fill: (page: number, n: number, dst: Uint8Array) => void): Promise<void> {
    return this.exclusive(async () => {
      if (this.stateStart >= 0) throw new VmkitError('INVALID_STATE', 'checkpoint writer: pages after the machine-state section');
      for (let done = 0; done < count; ) {
        const n = Math.min(WINDOW_PAGES, count - done);
        const at = first + done;
        await this.stageWindow(at, n, (dst) => fill(at, n, dst));
        done += n;
      }
      this.pagesWritten += count;
    });
  }

  private async stageWindow(first: number, count: number, fill: (dst: Uint8Array) => void): Promise<void> {
    if (this.packUsed > 0) await this.flushPack();
    let c = checkGeneration(this.gen, 'checkpoint writer');
    const ps0 = this.header.pageSize;
    const view = c.u8().subarray(this.input, this.input + count * ps0);
    fill(view);
    if (view.buffer !== c.u8().buffer || c.generation !== checkGeneration(this.gen, 'checkpoint writer').generation) {
      throw new VmkitError('INVALID_STATE', 'checkpoint writer: core memory changed while filling the window (the reader called vmkit)');
    }
    let done = 0;
    const ps = this.header.pageSize;
    while (done < count) {
      const e = c.exports;
      const n = check(e.stagingAppend(this.stager, this.input + done * ps, count - done, this.entries + done * STAGING_ENTRY), 'checkpoint staging');
      const ent = new Uint32Array(c.u8().buffer, this.entries + done * STAGING_ENTRY, n * 4);
      const blk = this.blocks.length;
      for (let i = 0; i < n; i++) {
        const p = first + done + i;
        const kind = ent[4 * i]!;
        this.pages[PAGE_WORDS * p] = kind === PAGE_ZERO ? NO_BLOCK : blk;
        this.pages[PAGE_WORDS * p + 1] = ent[4 * i + 1]!;
        this.pages[PAGE_WORDS * p + 2] = ((kind << 28) | ent[4 * i + 2]!) >>> 0;
        this.pages[PAGE_WORDS * p + 3] = ent[4 * i + 3]!;
      }
      done += n;
      if (done < count) {
        if (n === 0 && e.stagingUsed(this.stager) === 0) throw new VmkitError('CORE_TRAP', 'staging buffer refuses pages while empty');
        await this.flushBlock();
        c = checkGeneration(this.gen, 'checkpoint writer');
      }
    }
  }

  private async flushBlock(): Promise<void> {
    const sinkSync = this.sink.writeSync?.bind(this.sink);
    const block = withCore((c) => {
      const e = c.exports;
      const used = check(e.stagingUsed(this.stager), 'checkpoint staging');
      if (used === 0) return undefined;
      const ptr = e.stagingBuffer(this.stager);
      // Version 2 checks each record by its own checksum (in the page index): no block checksum.
      const checksum = this.header.version === 1 ? e.xxh32(ptr, used, 0) >>> 0 : 0;
      const padded = Math.ceil(used / BLOCK_ALIGN) * BLOCK_ALIGN;
      if (sinkSync && padded <= this.header.blockSize) {
        // Synchronous sink and the padding fits the stager: write the block
        // straight from core memory (no copy; a sync write cannot outlive the view).
        c.u8().fill(0, ptr + used, ptr + padded);
        sinkSync(c.u8().subarray(ptr, ptr + padded), this.next);
        e.stagingReset(this.stager);
        return { out: undefined, padded, used, checksum };
      }
      // One reused buffer (the write completes before the next flush): a
      // fresh 1 MiB array per block cost more than the copy itself.
      if (!this.outBuf || this.outBuf.length < padded) this.outBuf = new Uint8Array(Math.ceil(this.header.blockSize / BLOCK_ALIGN) * BLOCK_ALIGN);
      const out = this.outBuf.subarray(0, padded);
      out.set(c.u8().subarray(ptr, ptr + used));
      out.fill(0, used);
      e.stagingReset(this.stager);
      return { out, padded, used, checksum };
    });
    if (!block) return;
    const offset = this.next;
    this.blocks.push({ offset, length: block.used, checksum: block.checksum });
    this.next += block.padded;
    this.storedBytes += block.used;
    if (block.out) await this.sink.write(block.out, offset);
    this.writes++;
  }

  /**
   * Internal (parallel saves): adds pages `[first, first + count)` already
   * staged elsewhere: `entries` holds (kind, offset, length, record xxHash32)
   * per page into `bytes`, as `stagingAppend` reports them. Records are packed into blocks
   * with the stager's own rule, so the file equals a single-threaded save.
   * @example
   * ```ts
   * await w._appendCompressed(0, 256, entries, bytes); // from a save worker
   * ```
   */
  async _appendCompressed(first: number, count: number, entries: Uint32Array, bytes: Uint8Array): Promise<void> {
    aint(count, 'count', 0, this.pageCount);
    aint(first, 'first', 0, this.pageCount - count);
    if (entries.length < count * 4) throw new VmkitError('ARG_RANGE', 'entries too short');
    await this.exclusive(async (c) => {
      if (check(c.exports.stagingUsed(this.stager), 'checkpoint staging') > 0) await this.flushBlock();
      const ps = this.header.pageSize;
      const cap = this.header.blockSize;
      const bound = compressBound(ps);
      this.pack ??= new Uint8Array(Math.ceil(cap / BLOCK_ALIGN) * BLOCK_ALIGN);
      for (let i = 0; i < count; i++) {
        const p = first + i;
        const kind = entries[4 * i]!;
        if (kind === PAGE_ZERO) {
          this.pages[PAGE_WORDS * p] = NO_BLOCK;
          this.pages[PAGE_WORDS * p + 1] = 0;
          this.pages[PAGE_WORDS * p + 2] = (PAGE_ZERO << 28) >>> 0;
          this.pages[PAGE_WORDS * p + 3] = 0;
          continue;
        }
        const off = entries[4 * i + 1]!;
        const len = entries[4 * i + 2]!;
        if ((kind !== PAGE_RAW && kind !== PAGE_LZ4) || len === 0 || len > bound || off + len > bytes.length) {
          throw new VmkitError('ARG_RANGE', `bad staged entry for page ${p}`);
        }
        if (cap - this.packUsed < bound) await this.flushPack();
        this.pack.set(bytes.subarray(off, off + len), this.packUsed);
        this.pages[PAGE_WORDS * p] = this.blocks.length;
        this.pages[PAGE_WORDS * p + 1] = this.packUsed;
        this.pages[PAGE_WORDS * p + 2] = ((kind << 28) | len) >>> 0;
        this.pages[PAGE_WORDS * p + 3] = entries[4 * i + 3]!;
        this.packUsed += len;
      }
      this.pagesWritten += count;
    });
  }

  private async flushPack(): Promise<void> {
    const used = this.packUsed;
    if (used === 0 || !this.pack) return;
    const padded = Math.ceil(used / BLOCK_ALIGN) * BLOCK_ALIGN;
    const out = this.pack.subarray(0, padded);
    out.fill(0, used);
    const checksum = this.header.version === 1 ? xxh32Of(out.subarray(0, used)) : 0;
    const offset = this.next;
    this.blocks.push({ offset, length: used, checksum });
    this.next += padded;
    this.storedBytes += used;
    this.packUsed = 0;
    await this.sink.write(out, offset);
    this.writes++;
  }

  /**
   * Appends bytes of the machine-state section (docs/checkpoint-format.md,
   * "Machine state"): the first call flushes the last storage block, and the
   * section starts on a 4096-byte boundary after it; later calls append. No
   * pages may be written after it; `finish()` pads it to 4096 bytes and
   * records its length in the footer.
   * @example
   * ```ts
   * await w.appendState(sectionBytes); // after the last page
   * ```
   */
  async appendState(data: Uint8Array): Promise<void> {
    abytes(data, 'data');
    await this.exclusive(async () => {
      if (this.stateStart < 0) {
        await this.flushBlock();
        await this.flushPack();
        this.stateStart = this.next;
      }
      if (data.length === 0) return;
      const at = this.next;
      this.next += data.length;
      await this.sink.write(data, at);
      this.writes++;
    });
  }

  /**
   * Writes the last block, the index and then the footer; closes the sink.
   * @example
   * ```ts
   * const { blocks, blockWrites, fileBytes } = await w.finish();
   * ```
   */
  finish(): Promise<CheckpointStats> {
    return this.exclusive(async () => {
      await this.flushBlock();
      await this.flushPack();
      let statePages = 0;
      if (this.stateStart >= 0) {
        const end = Math.ceil(this.next / BLOCK_ALIGN) * BLOCK_ALIGN;
        if (end > this.next) await this.sink.write(new Uint8Array(end - this.next), this.next);
        statePages = (end - this.stateStart) / BLOCK_ALIGN;
        if (statePages > 0xffffffff) throw new VmkitError('LIMIT', 'machine-state section over 16 TiB');
        this.next = end;
      }
      const index = encodeIndex(this.blocks, this.pages, this.header.version);
      const indexOffset = this.next;
      const fileLength = indexOffset + index.length + FOOTER_SIZE;
      const footer = encodeFooter({
        indexOffset,
        indexLength: index.length,
        id: this.header.id,
        indexChecksum: xxh32Of(index),
        blockCount: this.blocks.length,
        fileLength,
        statePages,
      });
      await this.sink.write(index, indexOffset);
      this.writes++;
      if (this.opts.sync && this.sink.sync) await this.sink.sync();
      await this.sink.write(footer, indexOffset + index.length);
      this.writes++;
      if (this.opts.sync && this.sink.sync) await this.sink.sync();
      this.state = 'finished';
      this.release();
      await this.sink.close();
      const s: CheckpointStats = {
        pages: this.pageCount,
        pagesWritten: this.pagesWritten,
        zeroPages: 0,
        rawPages: 0,
        lz4Pages: 0,
        absentPages: 0,
        blocks: this.blocks.length,
        blockWrites: this.blocks.length,
        writes: this.writes,
        storedBytes: this.storedBytes,
        fileBytes: fileLength,
        id: this.header.id,
      };
      for (let p = 0; p < this.pageCount; p++) {
        const k = this.pages[PAGE_WORDS * p + 2]! >>> 28;
        if (k === PAGE_ZERO) s.zeroPages++;
        else if (k === PAGE_ABSENT) s.absentPages++;
        else if (k === 2) s.rawPages++;
        else s.lz4Pages++;
      }
      return s;
    });
  }

  /**
   * Gives up: frees the core buffers and closes the sink (the file has no
   * footer, so readers reject it).
   * @example
   * ```ts
   * try { await save(); } catch (e) { await w.abort(); throw e; }
   * ```
   */
  async abort(): Promise<void> {
    if (this.state === 'finished') return;
    this.state = 'failed';
    this.release();
    await this.sink.close();
  }

  private release(): void {
    if (this.stager < 0) return;
    closeStaging(this.gen, this.stager, this.input, this.entries, 'checkpoint writer');
    this.stager = -1;
  }
}

/**
 * The core stager codec for a checkpoint codec and LZ4 search (CODEC_LZ4_DENSE
 * for 'dense'; the file's header says LZ4 either way).
 * @example
 * ```ts
 * stagerCodec('lz4', 'dense'); // 2
 * ```
 */
export function stagerCodec(codec: CheckpointCodec, search: 'fast' | 'dense'): number {
  return codec === 'lz4' && search === 'dense' ? 2 /* the core's CODEC_LZ4_DENSE */ : CODECS[codec];
}
