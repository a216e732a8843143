/**
 * The metadata cache of an open qcow2 image: the L1 table in memory, L2
 * tables read on demand and kept write-back (LRU, dirty ones pinned), the
 * refcounts (`Refcounts`, loaded on the first change), and the end of the
 * file. It validates every entry it hands out against the file (alignment,
 * bounds, overlap with the fixed metadata) and writes its changes back in
 * dependency order: refcount increments, then L2 tables, then L1 entries,
 * then the decrements of clusters those tables stopped pointing at. Every
 * prefix of that order is an image with leaks at most, never a corruption.
 *
 * The device (device.ts) decides what to change and when to write back; this
 * module knows only tables and entries, never guest data.
 * @module
 */
import { VmkitError } from '../../../errors.js';
import type { Storage } from '../../backends/storage.js';
import type { Qcow2Header } from './header.js';
import { decodeL2, encodeL2, entryOffset, HI_COPIED, Refcounts, type L2Entry } from './metadata.js';

// L2 tables kept in memory: at most 64, and at most 8 MiB of them (clusters go up to 2 MiB).
const L2_CACHE_BYTES = 8 << 20;

/** An L2 table and the index of one entry in it, as the writers use it. @internal */
export interface _L2Slot {
  /** Host offset of the table. */
  l2: number;
  idx: number;
  table: Uint8Array;
}

/**
 * L1, L2 and refcount metadata of one image, cached write-back.
 *
 * @example
 * ```ts
 * const meta = new _MetadataCache(storage, header, l1Bytes, fileSize);
 * const { e } = await meta.entry(guestOffset);
 * ```
 * @internal
 */
export class _MetadataCache {
  readonly storage: Storage;
  /** The parsed header (kept current when the refcount table moves). */
  readonly header: Qcow2Header;
  /** Cluster size in bytes. */
  readonly cs: number;
  /** Extended L2 entries (32 subclusters per cluster). */
  readonly ext: boolean;
  /** Guest data lives in an external data file: host offsets are offsets there, with no refcounts. */
  readonly dataFile: boolean;
  /** Entries per L2 table. */
  readonly l2Entries: number;
  /** Subcluster size (the cluster size without extended L2). */
  readonly sub: number;
  /** Bytes the file holds (or will, once pending writes land); entries past it are corrupt. */
  fileSize: number;
  /** Loaded on the first change (see {@link refcounts}). */
  refs: Refcounts | undefined;
  private readonly l1: DataView;
  private readonly l2cache = new Map<number, Uint8Array>();
  /** Byte range [lo, hi) of each cached L2 table (by host offset) not yet written. */
  private readonly l2dirty = new Map<number, [number, number]>();
  /** Range [lo, hi) of L1 entries not yet written. */
  private l1dirty: [number, number] | undefined;
  /** The L2 table of the last cache hit (most recently used already). */
  private lastL2 = -1;
  private viewOf: Uint8Array | undefined;
  private lastView: DataView | undefined;

  constructor(storage: Storage, h: Qcow2Header, l1: Uint8Array, fileSize: number) {
    this.storage = storage;
    this.header = h;
    this.cs = 2 ** h.clusterBits;
    this.ext = h.extendedL2;
    this.dataFile = h.dataFile !== undefined;
    this.l2Entries = this.cs / (this.ext ? 16 : 8);
    this.sub = this.ext ? this.cs / 32 : this.cs;
    this.l1 = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
    this.fileSize = fileSize;
  }

  /** A CORRUPT error naming the image and the byte at fault. */
  corrupt(msg: string, offset: number): VmkitError {
    return new VmkitError('CORRUPT', `qcow2 ${this.storage.name}: ${msg} (at byte ${offset})`, { offset, path: this.storage.name });
  }

  /** The L2 table offset of L1 entry `i` (0 = none), checked against the file. */
  l2Offset(i: number): number {
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

  /** The L2 table at host offset `off`, from the cache or the file. */
  async l2Table(off: number): Promise<Uint8Array> {
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

  /** A DataView of an L2 table, the last one's reused (lookups mostly hit the same table). */
  view(t: Uint8Array): DataView {
    if (this.viewOf !== t) {
      this.viewOf = t;
      this.lastView = new DataView(t.buffer, t.byteOffset, t.byteLength);
    }
    return this.lastView!;
  }

  /** Decodes and validates the L2 entry of the guest cluster holding `pos` (`l2` = 0: no table). */
  async entry(pos: number): Promise<{ e: L2Entry; l2: number; idx: number }> {
    const gc = Math.floor(pos / this.cs);
    const l1i = Math.floor(gc / this.l2Entries);
    const idx = gc % this.l2Entries;
    const l2 = this.l2Offset(l1i);
    if (l2 === 0) return { e: { kind: 'unallocated', host: 0, copied: false, csize: 0, alloc: 0, zeroes: 0 }, l2: 0, idx };
    const t = await this.l2Table(l2);
    const e = decodeL2(this.view(t), idx, this.ext, this.header.clusterBits, this.dataFile);
    const at = l2 + idx * (this.ext ? 16 : 8);
    if (e.kind === 'compressed') {
      // QEMU neither writes nor reads them there: the data file is a plain array of clusters.
      if (this.dataFile) throw this.corrupt('compressed cluster in an image with an external data file', at);
      if (e.host >= this.fileSize) throw this.corrupt(`compressed cluster at ${e.host} is past the end of the file`, at);
      if (this.ext && (e.alloc | e.zeroes) !== 0) throw this.corrupt('compressed cluster with a subcluster bitmap', at);
    } else if (e.host !== 0) {
      if (e.host % this.cs !== 0) throw this.corrupt(`data cluster offset ${e.host} is not cluster aligned`, at);
      // In a data file any offset is a cluster of it (past its end reads as zeroes, as QEMU reads it).
      if (!this.dataFile && e.host >= this.fileSize) throw this.corrupt(`data cluster at ${e.host} is past the end of the file (${this.fileSize})`, at);
      if (!this.dataFile && this.overlapsMetadata(e.host)) throw this.corrupt(`data cluster at ${e.host} overlaps the header, L1 or refcount table`, at);
    }
    if (this.ext && (e.alloc & e.zeroes) !== 0) throw this.corrupt('subcluster both allocated and zero', at);
    if (this.ext && e.alloc !== 0 && e.host === 0 && !this.dataFile) throw this.corrupt('allocated subclusters without a host cluster', at);
    return { e, l2, idx };
  }

  /**
   * The host offset of the data cluster holding `pos` when a write there needs
   * no metadata change: a standard entry, `normal` with COPIED (only this
   * layer holds the cluster), its L2 table cached and reached through an L1
   * entry with COPIED. Otherwise -1 (the caller takes the ordered path, which
   * also reports a corrupt entry). Synchronous: nothing changes under it.
   */
  inPlaceHost(pos: number): number {
    if (this.ext) return -1;
    const gc = Math.floor(pos / this.cs);
    const l1i = Math.floor(gc / this.l2Entries);
    if (l1i >= this.header.l1Size || (this.l1.getUint32(l1i * 8) & HI_COPIED) === 0) return -1;
    let l2: number;
    try {
      l2 = this.l2Offset(l1i);
    } catch {
      return -1;
    }
    const t = l2 === 0 ? undefined : this.l2cache.get(l2);
    if (!t) return -1;
    const e = decodeL2(this.view(t), gc % this.l2Entries, false, this.header.clusterBits, this.dataFile);
    if (e.kind !== 'normal' || !e.copied || e.host % this.cs !== 0) return -1;
    if (!this.dataFile && (e.host + this.cs > this.fileSize || this.overlapsMetadata(e.host))) return -1;
    return e.host;
  }

  /** Decodes entry `idx` of a table a writer holds (its own copy: no validation needed). */
  decode(s: _L2Slot): L2Entry {
    return decodeL2(new DataView(s.table.buffer, s.table.byteOffset, s.table.byteLength), s.idx, this.ext, this.header.clusterBits, this.dataFile);
  }

  // ---- changes ----

  /** Notes that bytes [lo, hi) of the L2 table at `l2` changed in memory. */
  markL2(l2: number, table: Uint8Array, lo: number, hi: number): void {
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

  /** Sets the L2 entry of a slot (standard, or extended with its bitmaps) and marks it dirty. */
  setEntry(s: _L2Slot, host: number, copied: boolean, zero: boolean, alloc: number = 0, zeroes: number = 0): void {
    const es = this.ext ? 16 : 8;
    encodeL2(new DataView(s.table.buffer, s.table.byteOffset, s.table.byteLength), s.idx, this.ext, host, copied, zero && !this.ext, alloc, zeroes);
    this.markL2(s.l2, s.table, s.idx * es, s.idx * es + es);
  }

  /** The refcounts, loaded on first use; moving the refcount table rewrites the header fields. */
  async refcounts(): Promise<Refcounts> {
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

  /** A new cluster at the end of the file, refcount 1. */
  async alloc(r: Refcounts): Promise<number> {
    const off = r.take();
    await r.set(off, 1);
    if (r.fileEnd > this.fileSize) this.fileSize = r.fileEnd;
    return off;
  }

  /** The L2 table for guest cluster `gc`, allocated (and L1 updated) when there is none, unshared when shared. */
  async l2For(gc: number, r: Refcounts): Promise<_L2Slot> {
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
  private async unshareL2(l1i: number, old: number, idx: number, r: Refcounts): Promise<_L2Slot> {
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

  // ---- write-back ----

  /** True when the cache holds more than it should keep (write back now, whatever the mode). */
  get full(): boolean {
    const r = this.refs;
    return !!r && (this.l2dirty.size >= this.maxL2 || r.dirtyBlocks >= r.maxBlocks || r.pendingFrees >= 4096);
  }

  /**
   * Writes the cached metadata in dependency order (see the module comment):
   * refcounts → L2 tables → L1 → deferred decrements. No fsync: the device's `flush` adds it.
   */
  async writeback(): Promise<void> {
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
}
