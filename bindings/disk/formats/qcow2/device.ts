/**
 * A qcow2 image as a block device: reads through L1 → L2 → cluster (normal,
 * zero, compressed, extended-L2 subclusters) and down the backing chain;
 * writes allocate clusters at the end of the file with refcount 1 and the
 * COPIED flag (runs of whole clusters in one storage write), and turn whole
 * zero clusters (found by the core's zero scan) into zero clusters.
 *
 * Metadata (L1, L2 tables, refcount blocks) is cached write-back and written
 * in dependency order: refcount increments, then L2 tables, then L1 entries,
 * then the decrements of clusters those tables stopped pointing at. Every
 * prefix of that order is an image with leaks at most, never a corruption. In
 * `writethrough` mode (the default) the metadata of a request is written
 * before it completes, so a completed write survives the process dying; in
 * `writeback` mode (what QEMU's qcow2 driver does) only `flush` promises that.
 * Layout: QEMU's docs/interop/qcow2.txt.
 * @module
 */
import { VmkitError } from '../../../errors.js';
import type { Storage } from '../../backends/storage.js';
import { checkRange, type BlockDevice, type BlockExtent, type ByteLength, type ByteOffset } from '../../device.js';
import type { WriteGuard } from '../../_guard.js';
import { deflateRaw, inflateRaw } from '../../_inflate.js';
import { zstdCluster } from '../../_zstd.js';
import { zeroGranules } from '../../_sectors.js';
import { _backingStatus, _checkWritable, _closeLayer, _Queue, _readBacking, _readFresh, _readRuns, _statusRun } from '../_device.js';
import type { ImageDevice, ImageInfo } from '../types.js';
import { encodeQcow2Header, type Qcow2Header } from './header.js';
import { decodeL2, encodeL2, entryOffset, HI_COPIED, LO_ZERO, Refcounts, type L2Entry } from './metadata.js';

// L2 tables kept in memory: at most 64, and at most 8 MiB of them (clusters go up to 2 MiB).
const L2_CACHE_BYTES = 8 << 20;

/**
 * When a device writes its cached metadata: `writethrough` before each write
 * request completes, `writeback` on `flush` (and when the cache is full).
 */
export type CacheMode = 'writethrough' | 'writeback';

/** What one lookup found: a run of equal kind inside one cluster. */
interface Piece {
  kind: 'unallocated' | 'zero' | 'normal' | 'compressed';
  /** Host offset of the first byte (normal only; for zero: of a preallocated cluster, or 0). */
  host: number;
  /** Bytes of the run from the asked offset (to the end of the cluster or subcluster run). */
  len: number;
  entry: L2Entry;
}

/**
 * An open qcow2 image. Get one from `open()` in `formats/qcow2/index.ts` or
 * from `openImage()`.
 *
 * @example
 * ```ts
 * const dev = await openImage('vm.qcow2');
 * await dev.write(0, new Uint8Array(65536).fill(1));
 * await dev.close();
 * ```
 */
export class Qcow2Device implements ImageDevice {
  readonly format = 'qcow2' as const;
  readonly alignment = 512;
  readonly size: number;
  readonly readOnly: boolean;
  readonly storage: Storage;
  readonly backing: BlockDevice | undefined;
  readonly backingFile: string | undefined;
  readonly backingFormat: string | undefined;
  /** The parsed header (kept current when the refcount table moves). */
  readonly header: Qcow2Header;
  private readonly cs: number;
  private readonly ext: boolean;
  private readonly l2Entries: number;
  private readonly sub: number;
  private readonly l1: DataView;
  private readonly l2cache = new Map<number, Uint8Array>();
  /** Byte range [lo, hi) of each cached L2 table (by host offset) not yet written. */
  private readonly l2dirty = new Map<number, [number, number]>();
  /** Range [lo, hi) of L1 entries not yet written. */
  private l1dirty: [number, number] | undefined;
  private mode: CacheMode = 'writethrough';
  /** The L2 table of the last cache hit (most recently used already). */
  private lastL2 = -1;
  private refs: Refcounts | undefined;
  private fileSize: number;
  private readonly guard: WriteGuard | undefined;
  private lastCompressed: { host: number; data: Uint8Array } | undefined;
  private readonly queue = new _Queue();
  /** Next free byte for compressed data (inside the last compressed host cluster), 0 = none. */
  private compEnd = 0;
  private closed = false;

  /** @internal */
  constructor(storage: Storage, h: Qcow2Header, l1: Uint8Array, fileSize: number, readOnly: boolean, backing: BlockDevice | undefined, guard: WriteGuard | undefined) {
    this.storage = storage;
    this.header = h;
    this.size = h.size;
    this.readOnly = readOnly;
    this.backing = backing;
    this.backingFile = h.backingFile;
    this.backingFormat = h.backingFormat;
    this.cs = 2 ** h.clusterBits;
    this.ext = h.extendedL2;
    this.l2Entries = this.cs / (this.ext ? 16 : 8);
    this.sub = this.ext ? this.cs / 32 : this.cs;
    this.l1 = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
    this.fileSize = fileSize;
    this.guard = guard;
  }

  private corrupt(msg: string, offset: number): VmkitError {
    return new VmkitError('CORRUPT', `qcow2 ${this.storage.name}: ${msg} (at byte ${offset})`, { offset, path: this.storage.name });
  }

  /** The L2 table offset of L1 entry `i` (0 = none), checked against the file. */
  private l2Offset(i: number): number {
    if (i >= this.header.l1Size) return 0;
    const off = entryOffset(this.l1.getUint32(i * 8), this.l1.getUint32(i * 8 + 4));
    if (off === 0) return 0;
    const at = this.header.l1TableOffset + i * 8;
    if (off % this.cs !== 0) throw this.corrupt(`L2 table offset ${off} is not cluster aligned`, at);
    if (off + this.cs > this.fileSize) throw this.corrupt(`L2 table at ${off} is past the end of the file (${this.fileSize})`, at);
    if (this.overlapsMetadata(off)) throw this.corrupt(`L2 table at ${off} overlaps the header, L1 or refcount table`, at);
    return off;
  }

  /** True when the cluster at `host` holds the header, the L1 table or the refcount table (QEMU's overlap check, for the fixed structures). */
  private overlapsMetadata(host: number): boolean {
    const h = this.header;
    const end = host + this.cs;
    if (host < this.cs) return true;
    if (h.l1Size > 0 && host < h.l1TableOffset + h.l1Size * 8 && end > h.l1TableOffset) return true;
    // (No object per call: this runs on every cluster lookup.)
    const rtOff = this.refs ? this.refs.tableOffset : h.refcountTableOffset;
    const rtLen = (this.refs ? this.refs.tableClusters : h.refcountTableClusters) * this.cs;
    return host < rtOff + rtLen && end > rtOff;
  }

  private async l2Table(off: number): Promise<Uint8Array> {
    let t = this.l2cache.get(off);
    if (t) {
      // Most lookups hit the table of the previous one: keep that off the LRU bookkeeping.
      if (this.lastL2 === off) return t;
      this.lastL2 = off;
      this.l2cache.delete(off);
      this.l2cache.set(off, t);
      return t;
    }
    t = new Uint8Array(this.cs);
    await this.storage.readInto(off, t);
    // Evict the least recently used clean table; dirty ones stay until written back.
    if (this.l2cache.size >= this.maxL2) {
      for (const k of this.l2cache.keys()) {
        if (this.l2dirty.has(k)) continue;
        this.l2cache.delete(k);
        break;
      }
    }
    // Another reader may have loaded (and a writer changed) it while we read.
    const raced = this.l2cache.get(off);
    if (raced) return raced;
    this.l2cache.set(off, t);
    return t;
  }

  private get maxL2(): number {
    return Math.max(4, Math.min(64, L2_CACHE_BYTES / this.cs));
  }

  /** Notes that bytes [lo, hi) of the L2 table at `l2` changed in memory. */
  private markL2(l2: number, table: Uint8Array, lo: number, hi: number): void {
    if (this.l2cache.get(l2) !== table) this.l2cache.set(l2, table);
    const d = this.l2dirty.get(l2);
    if (d) {
      if (lo < d[0]) d[0] = lo;
      if (hi > d[1]) d[1] = hi;
    } else this.l2dirty.set(l2, [lo, hi]);
  }

  /** Sets L1 entry `i` to `off` (COPIED) in memory. */
  private setL1(i: number, off: number): void {
    this.l1.setUint32(i * 8, HI_COPIED | Math.floor(off / 2 ** 32));
    this.l1.setUint32(i * 8 + 4, off % 2 ** 32);
    const d = this.l1dirty;
    this.l1dirty = d ? [Math.min(d[0], i), Math.max(d[1], i + 1)] : [i, i + 1];
  }

  /**
   * Writes the cached metadata in dependency order (see the module comment):
   * refcounts → L2 tables → L1 → deferred decrements. No fsync: `flush` adds it.
   */
  private async writeback(): Promise<void> {
    const r = this.refs;
    if (!r || (r.dirtyBlocks === 0 && this.l2dirty.size === 0 && !this.l1dirty && r.pendingFrees === 0)) return;
    await r.writeDirty();
    for (const [off, [lo, hi]] of [...this.l2dirty].sort((a, b) => a[0] - b[0])) {
      const t = this.l2cache.get(off)!;
      await this.storage.write(off + lo, t.subarray(lo, hi));
      this.l2dirty.delete(off);
    }
    const d = this.l1dirty;
    if (d) {
      await this.storage.write(this.header.l1TableOffset + d[0] * 8, new Uint8Array(this.l1.buffer, this.l1.byteOffset + d[0] * 8, (d[1] - d[0]) * 8).slice());
      this.l1dirty = undefined;
    }
    if (r.pendingFrees > 0) await r.applyFrees();
  }

  /** After a request: write back now (writethrough), or when the cache holds too much. */
  private async afterRequest(): Promise<void> {
    const r = this.refs;
    if (!r) return;
    if (this.mode === 'writethrough' || this.l2dirty.size >= this.maxL2 || r.dirtyBlocks >= r.maxBlocks || r.pendingFrees >= 4096) await this.writeback();
  }

  /** Runs a request that changes the image, in order with the others, and writes back after it. */
  private mutate<T>(op: 'write' | 'discard', fn: (r: Refcounts) => Promise<T>): Promise<T> {
    return this.queue.run(async () => {
      const r = await this.writable(op);
      let out: T;
      try {
        out = await fn(r);
      } catch (e) {
        // What the request changed before failing is consistent: write it back with the rest.
        await this.afterRequest().catch(() => {});
        throw e;
      }
      await this.afterRequest();
      return out;
    });
  }

  /**
   * The cache mode (see {@link CacheMode}); `writethrough` when opened.
   *
   * @example
   * ```ts
   * await dev.setCacheMode('writeback'); // a bulk copy: metadata written on flush
   * await copyEverything(dev);
   * await dev.setCacheMode('writethrough'); // writes back first
   * ```
   */
  async setCacheMode(mode: CacheMode): Promise<void> {
    if (mode !== 'writethrough' && mode !== 'writeback') throw new VmkitError('ARG_RANGE', `setCacheMode: unknown mode ${String(mode)}`);
    await this.queue.run(async () => {
      if (mode === 'writethrough' && !this.readOnly && !this.closed) await this.writeback();
      this.mode = mode;
    });
  }

  /** The current cache mode. */
  get cacheMode(): CacheMode {
    return this.mode;
  }

  /** A DataView of an L2 table, the last one's reused (lookups mostly hit the same table). */
  private view(t: Uint8Array): DataView {
    if (this.viewOf !== t) {
      this.viewOf = t;
      this.lastView = new DataView(t.buffer, t.byteOffset, t.byteLength);
    }
    return this.lastView!;
  }
  private viewOf: Uint8Array | undefined;
  private lastView: DataView | undefined;

  /** Decodes and validates the L2 entry of the guest cluster holding `pos`. */
  private async entry(pos: number): Promise<{ e: L2Entry; l2: number; idx: number }> {
    const gc = Math.floor(pos / this.cs);
    const l1i = Math.floor(gc / this.l2Entries);
    const idx = gc % this.l2Entries;
    const l2 = this.l2Offset(l1i);
    if (l2 === 0) return { e: { kind: 'unallocated', host: 0, copied: false, csize: 0, alloc: 0, zeroes: 0 }, l2: 0, idx };
    const t = await this.l2Table(l2);
    const e = decodeL2(this.view(t), idx, this.ext, this.header.clusterBits);
    const at = l2 + idx * (this.ext ? 16 : 8);
    if (e.kind === 'compressed') {
      if (e.host >= this.fileSize) throw this.corrupt(`compressed cluster at ${e.host} is past the end of the file`, at);
      if (this.ext && (e.alloc | e.zeroes) !== 0) throw this.corrupt('compressed cluster with a subcluster bitmap', at);
    } else if (e.host !== 0) {
      if (e.host % this.cs !== 0) throw this.corrupt(`data cluster offset ${e.host} is not cluster aligned`, at);
      if (e.host >= this.fileSize) throw this.corrupt(`data cluster at ${e.host} is past the end of the file (${this.fileSize})`, at);
      if (this.overlapsMetadata(e.host)) throw this.corrupt(`data cluster at ${e.host} overlaps the header, L1 or refcount table`, at);
    }
    if (this.ext && (e.alloc & e.zeroes) !== 0) throw this.corrupt('subcluster both allocated and zero', at);
    if (this.ext && e.alloc !== 0 && e.host === 0) throw this.corrupt('allocated subclusters without a host cluster', at);
    return { e, l2, idx };
  }

  /** The run of equal status starting at `pos`, within its cluster. */
  private async piece(pos: number): Promise<Piece> {
    const { e, l2, idx } = await this.entry(pos);
    if (l2 === 0) {
      // No L2 table: the whole range of this L1 entry is unallocated (terabyte disks map fast).
      const span = this.cs * this.l2Entries;
      return { kind: 'unallocated', host: 0, len: (Math.floor(pos / span) + 1) * span - pos, entry: e };
    }
    const inC = pos % this.cs;
    const toEnd = this.cs - inC;
    if (e.kind === 'compressed') return { kind: 'compressed', host: e.host, len: toEnd, entry: e };
    if (!this.ext) {
      if (e.kind === 'normal') return { kind: 'normal', host: e.host + inC, len: toEnd, entry: e };
      if (e.host !== 0) return { kind: e.kind, host: e.host + inC, len: toEnd, entry: e }; // a zero cluster that keeps its allocation
      // Unallocated and (plain) zero clusters run on over the following entries that say the
      // same, so a sparse overlay reads its backing file in long runs, not cluster by cluster.
      const dv = this.view(await this.l2Table(l2));
      const want = e.kind === 'zero' ? LO_ZERO : 0;
      let j = idx + 1;
      while (j < this.l2Entries && (dv.getUint32(j * 8) & ~HI_COPIED) === 0 && (dv.getUint32(j * 8 + 4) & ~0x1fe) === want) j++;
      return { kind: e.kind, host: 0, len: toEnd + (j - idx - 1) * this.cs, entry: e };
    }
    const s0 = Math.floor(inC / this.sub);
    const kindOf = (s: number): Piece['kind'] => ((e.alloc >>> s) & 1 ? 'normal' : (e.zeroes >>> s) & 1 ? 'zero' : 'unallocated');
    const k = kindOf(s0);
    let s = s0 + 1;
    while (s < 32 && kindOf(s) === k) s++;
    const len = s * this.sub - inC;
    // Zero and unallocated subclusters of an allocated cluster keep its host offset (qemu-img map prints it).
    return { kind: k, host: e.host !== 0 ? e.host + inC : 0, len, entry: e };
  }

  /**
   * Reads `length` bytes at `offset` (multiples of 512).
   *
   * @example
   * ```ts
   * const dev = await openImage('vm.qcow2');
   * const mbr = await dev.read(0, 512); // falls through to the backing chain where unallocated
   * ```
   */
  read(offset: ByteOffset, length: ByteLength): Promise<Uint8Array> {
    return _readFresh(this, offset, length);
  }

  /**
   * Reads `dst.length` bytes at `offset` into `dst`.
   *
   * @example
   * ```ts
   * const buf = new Uint8Array(1 << 20);
   * await dev.readInto(0, buf); // no allocation per read
   * ```
   */
  async readInto(offset: ByteOffset, dst: Uint8Array): Promise<void> {
    checkRange(this, offset, dst.length, 'read');
    await _readRuns(this.storage, offset, dst, (pos) => this.piece(pos), (p) => p.kind === 'normal', (p, pos, d) => {
      if (p.kind === 'compressed') return this.readCompressed(p.entry, pos, d);
      if (p.kind !== 'zero') return _readBacking(this.backing, pos, d);
      d.fill(0);
      return undefined;
      // Unallocated runs come from the backing layer, the gaps between them merged (see _readRuns).
    }, { backing: this.backing, isBacking: (p) => p.kind === 'unallocated' });
  }

  private async readCompressed(e: L2Entry, pos: number, d: Uint8Array): Promise<void> {
    const c = await this.compressed(e, pos);
    const inC = pos % this.cs;
    d.set(c.subarray(inC, inC + d.length));
  }

  private async compressed(e: L2Entry, pos: number): Promise<Uint8Array> {
    if (this.lastCompressed?.host === e.host) return this.lastCompressed.data;
    if (this.header.compressionType > 1) {
      throw new VmkitError('UNSUPPORTED', `qcow2 ${this.storage.name}: compression type ${this.header.compressionType}`, { offset: 104, path: this.storage.name });
    }
    const len = Math.min(e.csize, this.fileSize - e.host);
    const raw = new Uint8Array(len);
    await this.storage.readInto(e.host, raw);
    if (this.header.compressionType === 1) {
      const data = zstdCluster(raw, this.cs, e.host, this.storage.name);
      this.lastCompressed = { host: e.host, data };
      return data;
    }
    const data = await inflateRaw(raw, this.cs, e.host, this.storage.name).catch((err: unknown) => {
      throw err instanceof VmkitError ? err : this.corrupt(`compressed cluster for guest offset ${pos} does not inflate`, e.host);
    });
    this.lastCompressed = { host: e.host, data };
    return data;
  }

  /**
   * Status of the run starting at `offset` (at most `length` bytes).
   *
   * @example
   * ```ts
   * const e = await dev.blockStatus(0, dev.size);
   * console.log(e.kind, e.length, e.depth); // one run of equal status, as qemu-img map
   * ```
   */
  async blockStatus(offset: ByteOffset, length: ByteLength): Promise<BlockExtent> {
    // Extend over following clusters of the same kind (contiguous host for data).
    const { first, len } = await _statusRun(this, offset, length, (o) => this.piece(o), (a, p, n) => {
      if (p.kind !== a.kind || a.kind === 'compressed') return false;
      // Runs with a host offset (data; zero clusters and subclusters that keep an allocation, as
      // qemu-img map prints them) go on only while it is contiguous; runs without one, while it is absent.
      return a.host === 0 ? p.host === 0 : p.host === a.host + n;
    });
    if (first.kind === 'unallocated') {
      // Unallocated subclusters of an allocated cluster, nothing below: qemu-img map prints the cluster's host offset.
      if (first.host !== 0 && !this.backing) return { offset, length: len, kind: 'unallocated', depth: 0, hostOffset: first.host };
      return _backingStatus(this.backing, offset, len);
    }
    if (first.kind === 'zero') return { offset, length: len, kind: 'zero', depth: 0, ...(first.host !== 0 ? { hostOffset: first.host } : {}) };
    if (first.kind === 'compressed') return { offset, length: len, kind: 'data', depth: 0, compressed: true };
    return { offset, length: len, kind: 'data', depth: 0, hostOffset: first.host };
  }

  /**
   * Calls `fn` with each L2 table of this layer in guest order: the guest
   * offset the table starts at and its bytes as this device sees them (its
   * cache, tables not yet written back included), or undefined where the L1
   * entry has no table. For one-pass scans such as a consolidation's
   * allocation map (bindings/disk/backup); `fn` must not keep `table`.
   *
   * @example
   * ```ts
   * let tables = 0;
   * await dev.forEachL2Table((guest, table) => void (table && tables++));
   * ```
   */
  async forEachL2Table(fn: (guestOffset: number, table: Uint8Array | undefined) => void): Promise<void> {
    const span = this.cs * this.l2Entries;
    const n = Math.ceil(this.size / span);
    for (let i = 0; i < n; i++) {
      const l2 = this.l2Offset(i);
      fn(i * span, l2 === 0 ? undefined : await this.l2Table(l2));
    }
  }

  // ---- writes ----

  private async writable(op: 'write' | 'flush' | 'discard'): Promise<Refcounts> {
    _checkWritable(this.storage.name, this.closed, this.readOnly, op);
    await this.guard?.check(op);
    if (!this.refs) {
      const h = this.header;
      const end = Math.ceil(this.fileSize / this.cs) * this.cs;
      const r = await Refcounts.load(this.storage, this.cs, h.refcountOrder, h.refcountTableOffset, h.refcountTableClusters, this.fileSize, end);
      r.onTableMoved = async (off, clusters) => {
        h.refcountTableOffset = off;
        h.refcountTableClusters = clusters;
        const b = new Uint8Array(12);
        const dv = new DataView(b.buffer);
        dv.setBigUint64(0, BigInt(off));
        dv.setUint32(8, clusters);
        await this.storage.write(48, b);
        await this.storage.flush();
      };
      this.refs = r;
    }
    return this.refs;
  }

  private async alloc(r: Refcounts): Promise<number> {
    const off = r.take();
    await r.set(off, 1);
    if (r.fileEnd > this.fileSize) this.fileSize = r.fileEnd;
    return off;
  }

  /** The L2 table for guest cluster `gc`, allocated (and L1 updated) when `create`. */
  private async l2For(gc: number, r: Refcounts): Promise<{ l2: number; idx: number; table: Uint8Array }> {
    const l1i = Math.floor(gc / this.l2Entries);
    const idx = gc % this.l2Entries;
    let l2 = this.l2Offset(l1i);
    if (l2 === 0) {
      // A new table: written whole (before L1 links it) at the next write-back.
      l2 = await this.alloc(r);
      const t = new Uint8Array(this.cs);
      this.markL2(l2, t, 0, this.cs);
      this.setL1(l1i, l2);
      return { l2, idx, table: t };
    }
    if ((this.l1.getUint32(l1i * 8) & HI_COPIED) === 0) return this.unshareL2(l1i, l2, idx, r);
    return { l2, idx, table: await this.l2Table(l2) };
  }

  /**
   * An L2 table without COPIED is shared with an internal snapshot: copy it to
   * a new cluster for the active L1 (its data clusters already count one
   * reference per L1 that reaches them, as QEMU counts them) and drop one
   * reference to the old table.
   */
  private async unshareL2(l1i: number, old: number, idx: number, r: Refcounts): Promise<{ l2: number; idx: number; table: Uint8Array }> {
    // An upper bound (deferred decrements not applied): at worst a needless copy.
    const rc = await r.get(old);
    const src = await this.l2Table(old);
    if (rc <= 1) {
      // Not shared after all (a stale flag): set it.
      this.setL1(l1i, old);
      return { l2: old, idx, table: src };
    }
    const l2 = await this.alloc(r);
    const t = src.slice();
    this.markL2(l2, t, 0, this.cs);
    this.setL1(l1i, l2);
    r.free(old);
    return { l2, idx, table: t };
  }

  private async setEntry(l2: number, idx: number, table: Uint8Array, host: number, copied: boolean, zero: boolean, alloc: number = 0, zeroes: number = 0): Promise<void> {
    const es = this.ext ? 16 : 8;
    encodeL2(new DataView(table.buffer, table.byteOffset, table.byteLength), idx, this.ext, host, copied, zero && !this.ext, alloc, zeroes);
    this.markL2(l2, table, idx * es, idx * es + es);
  }

  /** Drops this layer's reference to the storage of an entry (normal or compressed). */
  private async release(e: L2Entry, r: Refcounts): Promise<void> {
    if (e.kind === 'compressed') {
      const first = Math.floor(e.host / this.cs) * this.cs;
      const last = Math.floor((e.host + e.csize - 1) / this.cs) * this.cs;
      for (let c = first; c <= last; c += this.cs) r.free(c);
      if (this.lastCompressed?.host === e.host) this.lastCompressed = undefined;
    } else if (e.host !== 0) r.free(e.host);
  }

  /**
   * Writes `data` at `offset` (allocating clusters/grains as needed).
   *
   * @example
   * ```ts
   * await dev.write(1 << 20, new Uint8Array(4096).fill(0xaa));
   * ```
   */
  async write(offset: ByteOffset, data: Uint8Array): Promise<void> {
    checkRange(this, offset, data.length, 'write');
    if (this.header.version === 2) throw new VmkitError('UNSUPPORTED', `qcow2 ${this.storage.name}: writing version 2 images (upgrade with qemu-img amend -o compat=1.1)`);
    return this.mutate('write', async (r) => {
      let pos = offset;
      const end = offset + data.length;
      // Whole clusters whose host clusters follow each other (in place, or freshly allocated at
      // the end of the file) form a run written with one storage call; their L2 entries are set
      // once the data is written, so no reader sees an entry before its data.
      let runPos = 0;
      let runHost = 0;
      let runLen = 0;
      const items: { l2: number; idx: number; table: Uint8Array; host: number; e: L2Entry }[] = [];
      const flushRun = async (): Promise<void> => {
        if (runLen === 0) return;
        await this.storage.write(runHost, data.subarray(runPos - offset, runPos - offset + runLen));
        this.fileSize = Math.max(this.fileSize, runHost + runLen);
        for (const it of items) {
          if (it.e.kind === 'normal' && it.e.copied && it.e.host === it.host) continue; // in place
          await this.setEntry(it.l2, it.idx, it.table, it.host, true, false);
          if (it.e.host !== it.host) await this.release(it.e, r);
        }
        items.length = 0;
        runLen = 0;
      };
      while (pos < end) {
        const cEnd = Math.min(end, (Math.floor(pos / this.cs) + 1) * this.cs);
        const chunk = data.subarray(pos - offset, cEnd - offset);
        if (this.ext || chunk.length !== this.cs || (!leadsWithData(chunk) && (zeroGranules(chunk, this.cs)[0]! & 1) === 1)) {
          await flushRun();
          await this.writeInCluster(pos, chunk, r);
        } else {
          const gc = pos / this.cs;
          const { l2, idx, table } = await this.l2For(gc, r);
          const e = decodeL2(new DataView(table.buffer, table.byteOffset, table.byteLength), idx, false, this.header.clusterBits);
          // Reuse the host cluster when only this layer holds it (data, or a preallocated zero cluster).
          const reuse = (e.kind === 'normal' || e.kind === 'zero') && e.host !== 0 && e.copied;
          if (reuse && runLen > 0 && e.host !== runHost + runLen) await flushRun();
          const host = reuse ? e.host : await this.alloc(r);
          if (runLen > 0 && host !== runHost + runLen) await flushRun();
          if (runLen === 0) {
            runPos = pos;
            runHost = host;
          }
          runLen += this.cs;
          items.push({ l2, idx, table, host, e });
        }
        pos = cEnd;
      }
      await flushRun();
    });
  }

  /** Writes `data` (inside one cluster) at `pos`. */
  private async writeInCluster(pos: number, data: Uint8Array, r: Refcounts): Promise<void> {
    const gc = Math.floor(pos / this.cs);
    const cStart = gc * this.cs;
    const inC = pos - cStart;
    // Whole granules (cluster, or subclusters) of zeroes become zero entries.
    // (Extended L2 scans its span of subclusters below; a partial standard cluster is data.)
    if (!this.ext && data.length === this.cs && !leadsWithData(data) && (zeroGranules(data, this.cs)[0]! & 1) === 1) {
      return this.zeroCluster(gc, r, false);
    }
    const { l2, idx, table } = await this.l2For(gc, r);
    const e = decodeL2(new DataView(table.buffer, table.byteOffset, table.byteLength), idx, this.ext, this.header.clusterBits);
    if (!this.ext) {
      if (e.kind === 'normal' && e.copied) {
        await this.storage.write(e.host + inC, data);
        return;
      }
      // New cluster: the old contents around the write, then the write.
      const buf = data.length === this.cs ? data : await this.clusterContents(cStart, e);
      if (buf !== data) buf.set(data, inC);
      if (e.kind === 'zero' && e.host !== 0 && e.copied) {
        await this.storage.write(e.host, buf);
        await this.setEntry(l2, idx, table, e.host, true, false);
        return;
      }
      const host = await this.alloc(r);
      await this.storage.write(host, buf);
      this.fileSize = Math.max(this.fileSize, host + this.cs);
      await this.setEntry(l2, idx, table, host, true, false);
      await this.release(e, r);
      return;
    }
    // Extended L2: subclusters [s0, s1) are touched.
    const s0 = Math.floor(inC / this.sub);
    const s1 = Math.ceil((inC + data.length) / this.sub);
    let alloc = e.kind === 'compressed' ? 0 : e.alloc;
    let zeroes = e.kind === 'compressed' ? 0 : e.zeroes;
    let host = e.kind === 'normal' || (e.kind !== 'compressed' && e.host !== 0) ? e.host : 0;
    let old: L2Entry | undefined;
    if (e.kind === 'compressed' || (host !== 0 && !e.copied)) {
      // Decompress / unshare: the whole cluster becomes a new normal one.
      const buf = await this.clusterContents(cStart, e);
      buf.set(data, inC);
      old = e;
      host = await this.alloc(r);
      await this.storage.write(host, buf);
      this.fileSize = Math.max(this.fileSize, host + this.cs);
      alloc = 0xffff_ffff;
      zeroes = 0;
      await this.setEntry(l2, idx, table, host, true, false, alloc, zeroes);
      await this.release(old, r);
      return;
    }
    // Partial subclusters at the edges take their old contents.
    const spanStart = cStart + s0 * this.sub;
    const spanLen = (s1 - s0) * this.sub;
    let span = data;
    if (spanStart !== pos || spanLen !== data.length) {
      span = new Uint8Array(spanLen);
      // The last subcluster may run past the end of a disk whose size is not a multiple of it.
      await this.readInto(spanStart, span.subarray(0, Math.min(spanLen, this.size - spanStart)));
      span.set(data, pos - spanStart);
    }
    const spanZero = zeroGranules(span, this.sub);
    let needData = false;
    for (let s = s0; s < s1; s++) {
      const bit = 1 << s;
      if ((spanZero[(s - s0) >> 3]! >> ((s - s0) & 7)) & 1) {
        zeroes = (zeroes | bit) >>> 0;
        alloc = (alloc & ~bit) >>> 0;
      } else {
        needData = true;
        alloc = (alloc | bit) >>> 0;
        zeroes = (zeroes & ~bit) >>> 0;
      }
    }
    if (needData && host === 0) {
      host = await this.alloc(r);
      this.fileSize = Math.max(this.fileSize, host + this.cs);
      // Unwritten subclusters of a fresh cluster are never read (their alloc bit is 0).
      await this.storage.truncate(Math.max(await this.storage.size(), host + this.cs));
    }
    if (needData) await this.storage.write(host + s0 * this.sub, span);
    if (alloc === 0 && host !== 0 && e.kind === 'normal') {
      // Every subcluster is zero or unallocated now: free the host cluster.
      await this.setEntry(l2, idx, table, 0, false, false, 0, zeroes);
      r.free(host);
      return;
    }
    await this.setEntry(l2, idx, table, host, host !== 0, false, alloc, zeroes);
  }

  /**
   * Writes whole clusters compressed (raw deflate), as `qemu-img convert -c`
   * does: compressed clusters are packed back to back in host clusters; a
   * cluster that does not shrink is written normally, a zero one becomes a
   * zero cluster. `offset` is cluster aligned; `data` is whole clusters (or
   * ends at the end of the disk).
   *
   * @example
   * ```ts
   * await dev.writeCompressed(0, new Uint8Array(65536).fill(7));
   * ```
   */
  async writeCompressed(offset: ByteOffset, data: Uint8Array): Promise<void> {
    checkRange(this, offset, data.length, 'writeCompressed');
    if (offset % this.cs !== 0 || (data.length % this.cs !== 0 && offset + data.length !== this.size)) {
      throw new VmkitError('ARG_RANGE', `writeCompressed: [${offset}, ${offset + data.length}) must be whole clusters of ${this.cs}`, { offset });
    }
    if (this.ext) throw new VmkitError('UNSUPPORTED', 'writeCompressed: compressed clusters in extended-L2 images');
    if (this.header.compressionType !== 0) throw new VmkitError('UNSUPPORTED', `writeCompressed: ${this.storage.name} takes zstd clusters; vmkit compresses with deflate only`, { offset: 104, path: this.storage.name });
    if (this.header.version === 2) throw new VmkitError('UNSUPPORTED', `qcow2 ${this.storage.name}: writing version 2 images`);
    for (let p = 0; p < data.length; p += this.cs) {
      const chunk = data.subarray(p, Math.min(data.length, p + this.cs));
      const full = chunk.length === this.cs ? chunk : (() => {
        const b = new Uint8Array(this.cs);
        b.set(chunk);
        return b;
      })();
      const z = await deflateRaw(full);
      // Not worth it (or all zero): the ordinary path.
      if (z.length >= this.cs - 512 || chunk.length < this.cs) {
        await this.write(offset + p, chunk);
        continue;
      }
      await this.mutate('write', async (r) => {
        const gc = (offset + p) / this.cs;
        const zm = zeroGranules(full, this.cs);
        if (zm[0]! & 1) return this.zeroCluster(gc, r, false);
        const { l2, idx, table } = await this.l2For(gc, r);
        const old = decodeL2(new DataView(table.buffer, table.byteOffset, table.byteLength), idx, false, this.header.clusterBits);
        const host = await this.compressedSpace(z.length, r);
        await this.storage.write(host, z);
        this.fileSize = Math.max(this.fileSize, host + z.length);
        const x = 62 - (this.header.clusterBits - 8);
        const extra = Math.floor((host + z.length - 1) / 512) - Math.floor(host / 512);
        const v = (1n << 62n) | (BigInt(extra) << BigInt(x)) | BigInt(host);
        const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
        dv.setBigUint64(idx * 8, v);
        this.markL2(l2, table, idx * 8, idx * 8 + 8);
        await this.release(old, r);
      });
    }
  }

  /** Byte space for `len` bytes of compressed data, refcounted once per host cluster it touches. */
  private async compressedSpace(len: number, r: Refcounts): Promise<number> {
    let start = this.compEnd;
    const clusterOf = (b: number): number => Math.floor(b / this.cs) * this.cs;
    // Continue in the current compressed cluster only while the clusters after it are the file's end.
    if (start === 0 || start % this.cs === 0 || (clusterOf(start + len - 1) > clusterOf(start) && r.fileEnd !== clusterOf(start) + this.cs)) {
      start = await this.alloc(r);
    } else await r.add(clusterOf(start), 1);
    for (let c = clusterOf(start) + this.cs; c <= clusterOf(start + len - 1); c += this.cs) {
      const got = await this.alloc(r);
      if (got !== c) throw new VmkitError('CORRUPT', `qcow2 ${this.storage.name}: compressed data allocation is not contiguous`, { offset: got });
    }
    this.compEnd = start + len;
    if (this.compEnd % this.cs === 0) this.compEnd = 0;
    return start;
  }

  /** What guest cluster `cStart` reads as now (a fresh buffer). */
  private async clusterContents(cStart: number, e: L2Entry): Promise<Uint8Array> {
    if (e.kind === 'compressed') return (await this.compressed(e, cStart)).slice();
    const n = Math.min(this.cs, this.size - cStart);
    const b = new Uint8Array(this.cs);
    if (e.kind === 'zero') return b;
    await this.readInto(cStart, b.subarray(0, n));
    return b;
  }

  /** Makes guest cluster `gc` a zero cluster (or unallocated, when `unmap` and nothing shows through). */
  private async zeroCluster(gc: number, r: Refcounts, unmap: boolean): Promise<void> {
    const l1i = Math.floor(gc / this.l2Entries);
    if (this.l2Offset(l1i) === 0 && unmap && !this.backing) return;
    const { l2, idx, table } = await this.l2For(gc, r);
    const e = decodeL2(new DataView(table.buffer, table.byteOffset, table.byteLength), idx, this.ext, this.header.clusterBits);
    const makeUnallocated = unmap && !this.backing;
    if (makeUnallocated) await this.setEntry(l2, idx, table, 0, false, false, 0, 0);
    else if (this.ext) await this.setEntry(l2, idx, table, 0, false, false, 0, 0xffff_ffff);
    else await this.setEntry(l2, idx, table, 0, false, true);
    if (e.kind === 'compressed' || (e.host !== 0 && e.copied)) await this.release(e, r);
    else if (e.host !== 0) await this.release(e, r);
  }

  /**
   * Makes `[offset, offset + length)` read as zeroes.
   *
   * @example
   * ```ts
   * await dev.writeZeroes(0, 1 << 20); // reads as zeroes afterwards
   * ```
   */
  async writeZeroes(offset: ByteOffset, length: ByteLength): Promise<void> {
    checkRange(this, offset, length, 'writeZeroes');
    await this.zeroRange(offset, length, false);
  }

  /**
   * Releases whole clusters in the range; the range then reads as zeroes.
   *
   * @example
   * ```ts
   * await dev.discard(0, 64 << 10); // whole clusters only; the range then reads as zeroes
   * ```
   */
  async discard(offset: ByteOffset, length: ByteLength): Promise<void> {
    checkRange(this, offset, length, 'discard');
    await this.zeroRange(offset, length, true);
  }

  private async zeroRange(offset: number, length: number, unmap: boolean): Promise<void> {
    if (this.header.version === 2) throw new VmkitError('UNSUPPORTED', `qcow2 ${this.storage.name}: writing version 2 images`);
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const cEnd = Math.min(end, (Math.floor(pos / this.cs) + 1) * this.cs);
      if (pos % this.cs === 0 && (cEnd - pos === this.cs || cEnd === this.size)) {
        const gc = pos / this.cs;
        await this.mutate(unmap ? 'discard' : 'write', (r) => this.zeroCluster(gc, r, unmap));
      } else await this.write(pos, new Uint8Array(cEnd - pos));
      pos = cEnd;
    }
  }

  /**
   * Writes back cached metadata and makes completed writes durable.
   *
   * @example
   * ```ts
   * await dev.write(0, data);
   * await dev.flush(); // metadata and data durable
   * ```
   */
  async flush(): Promise<void> {
    if (this.readOnly || this.closed) return;
    await this.queue.run(async () => {
      await this.guard?.check('flush');
      await this.writeback();
    });
    // The fsync runs outside the queue: it covers every write that completed before this
    // flush (and their metadata, just written back), and later writes need not wait for it.
    await this.storage.flush();
  }

  /**
   * Facts for `vmkit disk info` (as `qemu-img info`).
   *
   * @example
   * ```ts
   * const { virtualSize, clusterSize, allocatedBytes } = await dev.info();
   * ```
   */
  async info(): Promise<ImageInfo> {
    let data = 0;
    for (let l1i = 0; l1i < this.header.l1Size; l1i++) {
      const l2 = this.l2Offset(l1i);
      if (!l2) continue;
      const dv = this.view(await this.l2Table(l2));
      for (let i = 0; i < this.l2Entries; i++) {
        const e = decodeL2(dv, i, this.ext, this.header.clusterBits);
        if (e.kind === 'compressed') data += this.cs;
        else if (e.kind === 'normal') data += this.ext ? popcount(e.alloc) * this.sub : this.cs;
      }
    }
    const info: ImageInfo = {
      format: 'qcow2',
      virtualSize: this.size,
      fileSize: await this.storage.size(),
      clusterSize: this.cs,
      allocatedBytes: data,
      specific: {
        version: this.header.version,
        refcountBits: 2 ** this.header.refcountOrder,
        extendedL2: this.ext,
        compressionType: this.header.compressionType === 0 ? 'zlib' : 'zstd',
        snapshots: this.header.nbSnapshots,
      },
    };
    if (this.backingFile !== undefined) info.backingFile = this.backingFile;
    if (this.backingFormat !== undefined) info.backingFormat = this.backingFormat;
    return info;
  }

  /**
   * Flushes (when writable) and closes this layer and its backing chain.
   *
   * @example
   * ```ts
   * await dev.close(); // flushes when writable, closes the backing chain too
   * ```
   */
  async close(): Promise<void> {
    if (this.closed) return;
    await _closeLayer(() => this.flush(), () => (this.closed = true), this.storage, this.backing);
  }

  /** Rewrites the header (e.g. after changing the backing file). @internal */
  async rewriteHeader(): Promise<void> {
    await this.writable('write');
    await this.storage.write(0, encodeQcow2Header(this.header));
  }
}

function popcount(v: number): number {
  let n = 0;
  for (let x = v >>> 0; x; x &= x - 1) n++;
  return n;
}

/** True when `b` has a non-zero byte among its first 16: data for sure, no zero scan needed. */
function leadsWithData(b: Uint8Array): boolean {
  for (let i = 0; i < 16 && i < b.length; i++) if (b[i] !== 0) return true;
  return false;
}
