/**
 * A qcow2 image as a block device: reads through L1 → L2 → cluster (normal,
 * zero, compressed, extended-L2 subclusters) and down the backing chain;
 * writes allocate clusters at the end of the file with refcount 1 and the
 * COPIED flag (runs of whole clusters in one storage write), and turn whole
 * zero clusters (found by the core's zero scan) into zero clusters.
 *
 * This module is the device: requests, their order, the cache mode and what
 * a write does to a cluster. Beside it, `_cache.ts` holds the metadata (L1,
 * L2 tables, refcounts) cached write-back and writes it back in dependency
 * order; `_compressed.ts` reads and packs compressed clusters;
 * `_subclusters.ts` handles extended L2 entries; `metadata.ts` encodes and
 * decodes entries. In `writethrough` mode (the default) the metadata of a
 * request is written before it completes, so a completed write survives the
 * process dying; in `writeback` mode (what QEMU's qcow2 driver does) only
 * `flush` promises that.
 * Layout: QEMU's docs/interop/qcow2.txt.
 * @module
 */
import { VmkitError } from '../../../errors.js';
import type { Storage } from '../../backends/storage.js';
import { checkRange, type BlockDevice, type BlockExtent, type ByteLength, type ByteOffset } from '../../device.js';
import type { WriteGuard } from '../../_guard.js';
import { deflateRaw } from '../../_inflate.js';
import { zstdCompress } from '../../_zstd.js';
import { zeroGranules } from '../../_sectors.js';
import { _backingStatus, _checkWritable, _closeLayer, _Queue, _readBacking, _readRuns, _statusRun } from '../_device.js';
import { _LayerDevice } from '../_layer.js';
import type { ImageInfo } from '../types.js';
import { _MetadataCache, type _L2Slot } from './_cache.js';
import { _CompressedClusters } from './_compressed.js';
import { _subclusterBytes, _subclusterRun, _writeSubclusters, type _SubclusterDevice } from './_subclusters.js';
import { encodeQcow2Header, type Qcow2Header } from './header.js';
import { decodeL2, HI_COPIED, LO_ZERO, type L2Entry, type Refcounts } from './metadata.js';

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
export class Qcow2Device extends _LayerDevice {
  readonly format = 'qcow2' as const;
  /** The parsed header (kept current when the refcount table moves). */
  readonly header: Qcow2Header;
  /** L1, L2 and refcount metadata, cached write-back. */
  private readonly meta: _MetadataCache;
  private readonly compressed: _CompressedClusters;
  private readonly cs: number;
  private readonly ext: boolean;
  private readonly l2Entries: number;
  private mode: CacheMode = 'writethrough';
  private readonly guard: WriteGuard | undefined;
  private readonly queue = new _Queue();
  /**
   * Requests that change metadata, queued or running. While there is one, every write takes the
   * queue; while there is none, a write to clusters it can overwrite in place skips it (see write()).
   */
  private mutations = 0;
  /** In-place writes in flight outside the queue; a mutation waits for them to end first. */
  private direct = 0;
  private directIdle: (() => void) | undefined;
  /** What the subcluster writer needs of this device. */
  private readonly subDev: _SubclusterDevice;
  /**
   * Where guest data clusters live: this file, or the external data file
   * (`data_file`), where a cluster's host offset is its guest offset and no
   * refcount covers it. A stand-in that refuses every call when the image has
   * a data file it was opened without.
   */
  private readonly data: Storage;
  /** The data file is not this file. */
  private readonly external: boolean;

  /** @internal */
  constructor(
    storage: Storage,
    h: Qcow2Header,
    l1: Uint8Array,
    fileSize: number,
    readOnly: boolean,
    backing: BlockDevice | undefined,
    guard: WriteGuard | undefined,
    dataFile?: Storage,
  ) {
    super({ storage, size: h.size, readOnly, backing, backingFile: h.backingFile, backingFormat: h.backingFormat });
    this.header = h;
    this.external = h.dataFile !== undefined;
    this.data = !this.external ? storage : (dataFile ?? missingDataFile(storage.name, h.dataFile!));
    this.meta = new _MetadataCache(storage, h, l1, fileSize);
    this.compressed = new _CompressedClusters(this.meta);
    this.cs = this.meta.cs;
    this.ext = this.meta.ext;
    this.l2Entries = this.meta.l2Entries;
    this.guard = guard;
    this.subDev = {
      meta: this.meta,
      storage,
      size: this.size,
      readInto: (o, d) => this.readInto(o, d),
      clusterContents: (c, e) => this.clusterContents(c, e),
      release: (e, r) => this.release(e, r),
    };
  }

  /** After a request: write back now (writethrough), or when the cache holds too much. */
  private async afterRequest(): Promise<void> {
    if (!this.meta.refs) return;
    if (this.mode === 'writethrough' || this.meta.full) await this.meta.writeback();
  }

  /** Resolves once no in-place write is in flight. */
  private async directDrained(): Promise<void> {
    while (this.direct > 0) await new Promise<void>((r) => (this.directIdle = r));
  }

  /**
   * Runs a request that changes the image, in order with the others, and writes back after it.
   * From its call on no write skips the queue, and it starts once those that did have ended: a
   * cluster it frees or remaps is never still being written in place.
   */
  private mutate<T>(op: 'write' | 'discard', fn: (r: Refcounts) => Promise<T>): Promise<T> {
    this.mutations++;
    return this.queue.run(async () => {
      try {
        await this.directDrained();
        return await this.mutateNow(op, fn);
      } finally {
        this.mutations--;
      }
    });
  }

  private async mutateNow<T>(op: 'write' | 'discard', fn: (r: Refcounts) => Promise<T>): Promise<T> {
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
  }

  /**
   * The in-place path of write(): when no metadata-changing request is queued and every cluster
   * `data` touches is a data cluster only this layer holds (its L2 table cached), the data goes
   * straight to the file, concurrently with other such writes — no queue, no metadata, as
   * QEMU's qcow2 driver overwrites allocated clusters without its metadata lock. False when the
   * ordered path must take it (an allocation, a zero cluster, a table not cached, a whole cluster
   * of zeroes, which becomes a zero cluster there).
   */
  private async writeInPlace(offset: number, data: Uint8Array): Promise<boolean> {
    if (this.mutations > 0 || this.closed || this.readOnly || this.ext) return false;
    const end = offset + data.length;
    const cs = this.cs;
    // Checked before the lookup: the guard may wait (for the owner store), and what it found
    // must still hold when the storage writes are issued, in the same turn as the lookup.
    await this.guard?.check('write');
    if (this.mutations > 0 || this.closed) return false;
    const first = this.meta.inPlaceHost(offset);
    if (first < 0) return false;
    // One cluster (the common case: 4 KiB guest writes) without an array.
    if (end <= (Math.floor(offset / cs) + 1) * cs) {
      if (data.length === cs && !leadsWithData(data)) return false;
      this.direct++;
      try {
        await this.data.write(first + (offset % cs), data);
      } finally {
        this.directEnd();
      }
      return true;
    }
    const runs: [number, number, number][] = []; // [host, from, to] of data
    for (let pos = offset; pos < end; ) {
      const cEnd = Math.min(end, (Math.floor(pos / cs) + 1) * cs);
      const host = pos === offset ? first : this.meta.inPlaceHost(pos);
      if (host < 0) return false;
      if (cEnd - pos === cs && !leadsWithData(data.subarray(pos - offset, pos - offset + 16))) return false;
      const at = host + (pos % cs);
      const last = runs[runs.length - 1];
      if (last && last[0] + (last[2] - last[1]) === at) last[2] = cEnd - offset;
      else runs.push([at, pos - offset, cEnd - offset]);
      pos = cEnd;
    }
    this.direct++;
    try {
      await Promise.all(runs.map(([host, from, to]) => this.data.write(host, data.subarray(from, to))));
    } finally {
      this.directEnd();
    }
    return true;
  }

  private directEnd(): void {
    if (--this.direct === 0 && this.directIdle) {
      const f = this.directIdle;
      this.directIdle = undefined;
      f();
    }
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
      if (mode === 'writethrough' && !this.readOnly && !this.closed) await this.meta.writeback();
      this.mode = mode;
    });
  }

  /** The current cache mode. */
  get cacheMode(): CacheMode {
    return this.mode;
  }

  /** The run of equal status starting at `pos`, within its cluster. */
  private async piece(pos: number): Promise<Piece> {
    const { e, l2, idx } = await this.meta.entry(pos);
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
      const dv = this.meta.view(await this.meta.l2Table(l2));
      const want = e.kind === 'zero' ? LO_ZERO : 0;
      let j = idx + 1;
      // (With a data file, offset 0 with COPIED is a data cluster: COPIED must be clear too.)
      const mask = this.external ? -1 : ~HI_COPIED;
      while (j < this.l2Entries && (dv.getUint32(j * 8) & mask) === 0 && (dv.getUint32(j * 8 + 4) & ~0x1fe) === want) j++;
      return { kind: e.kind, host: 0, len: toEnd + (j - idx - 1) * this.cs, entry: e };
    }
    const run = _subclusterRun(e, inC, this.meta.sub);
    return { kind: run.kind, host: run.host, len: run.len, entry: e };
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
    await _readRuns(this.data, offset, dst, (pos) => this.piece(pos), (p) => p.kind === 'normal', (p, pos, d) => {
      if (p.kind === 'compressed') return this.compressed.readInto(p.entry, pos, d);
      if (p.kind !== 'zero') return _readBacking(this.backing, pos, d);
      d.fill(0);
      return undefined;
      // Unallocated runs come from the backing layer, the gaps between them merged (see _readRuns).
    }, { backing: this.backing, isBacking: (p) => p.kind === 'unallocated' });
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
      return a.kind === 'normal' || a.host !== 0 ? p.host === a.host + n : p.host === 0;
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
      const l2 = this.meta.l2Offset(i);
      fn(i * span, l2 === 0 ? undefined : await this.meta.l2Table(l2));
    }
  }

  // ---- writes ----

  private async writable(op: 'write' | 'flush' | 'discard'): Promise<Refcounts> {
    _checkWritable(this.storage.name, this.closed, this.readOnly, op);
    if (this.external && this.ext && op !== 'flush') {
      throw new VmkitError('UNSUPPORTED', `qcow2 ${this.storage.name}: writing extended-L2 images with an external data file (they open read-only)`, { offset: 72, path: this.storage.name });
    }
    await this.guard?.check(op);
    return this.meta.refcounts();
  }

  /** Drops this layer's reference to the storage of an entry (normal or compressed). */
  private release(e: L2Entry, r: Refcounts): void {
    if (this.external) return; // the data file's clusters have no refcounts
    if (e.kind === 'compressed') this.compressed.release(e, r);
    else if (e.host !== 0) r.free(e.host);
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
    if (await this.writeInPlace(offset, data)) return;
    return this.mutate('write', async (r) => {
      let pos = offset;
      const end = offset + data.length;
      // Whole clusters whose host clusters follow each other (in place, or freshly allocated at
      // the end of the file) form a run written with one storage call; their L2 entries are set
      // once the data is written, so no reader sees an entry before its data.
      let runPos = 0;
      let runHost = 0;
      let runLen = 0;
      const items: { s: _L2Slot; host: number; e: L2Entry }[] = [];
      const flushRun = async (): Promise<void> => {
        if (runLen === 0) return;
        await this.data.write(runHost, data.subarray(runPos - offset, runPos - offset + runLen));
        if (!this.external) this.meta.fileSize = Math.max(this.meta.fileSize, runHost + runLen);
        for (const it of items) {
          if (it.e.kind === 'normal' && it.e.copied && it.e.host === it.host) continue; // in place
          this.meta.setEntry(it.s, it.host, true, false);
          if (it.e.host !== it.host) this.release(it.e, r);
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
          const s = await this.meta.l2For(gc, r);
          const e = this.meta.decode(s);
          // Reuse the host cluster when only this layer holds it (data, or a preallocated zero cluster).
          const reuse = (e.kind === 'normal' || e.kind === 'zero') && e.host !== 0 && e.copied;
          if (reuse && runLen > 0 && e.host !== runHost + runLen) await flushRun();
          const host = reuse ? e.host : await this.allocData(gc, r);
          if (runLen > 0 && host !== runHost + runLen) await flushRun();
          if (runLen === 0) {
            runPos = pos;
            runHost = host;
          }
          runLen += this.cs;
          items.push({ s, host, e });
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
    // (Extended L2 scans its span of subclusters; a partial standard cluster is data.)
    if (!this.ext && data.length === this.cs && !leadsWithData(data) && (zeroGranules(data, this.cs)[0]! & 1) === 1) {
      return this.zeroCluster(gc, r, false);
    }
    const s = await this.meta.l2For(gc, r);
    const e = this.meta.decode(s);
    if (this.ext) return _writeSubclusters(this.subDev, s, e, pos, data, r);
    if (e.kind === 'normal' && e.copied) {
      await this.data.write(e.host + inC, data);
      return;
    }
    // New cluster: the old contents around the write, then the write.
    const buf = data.length === this.cs ? data : await this.clusterContents(cStart, e);
    if (buf !== data) buf.set(data, inC);
    if (e.kind === 'zero' && e.host !== 0 && e.copied) {
      await this.data.write(e.host, buf);
      this.meta.setEntry(s, e.host, true, false);
      return;
    }
    const host = await this.allocData(gc, r);
    await this.data.write(host, buf);
    if (!this.external) this.meta.fileSize = Math.max(this.meta.fileSize, host + this.cs);
    this.meta.setEntry(s, host, true, false);
    this.release(e, r);
  }

  /**
   * Writes whole clusters compressed (raw deflate; one zstd frame each in a
   * `compression_type=zstd` image), as `qemu-img convert -c` does: compressed clusters are packed back to back in host clusters; a
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
    if (this.external) throw new VmkitError('UNSUPPORTED', `writeCompressed: ${this.storage.name} keeps its data in an external data file, which holds no compressed clusters`, { offset: 72, path: this.storage.name });
    if (this.header.version === 2) throw new VmkitError('UNSUPPORTED', `qcow2 ${this.storage.name}: writing version 2 images`);
    for (let p = 0; p < data.length; p += this.cs) {
      const chunk = data.subarray(p, Math.min(data.length, p + this.cs));
      const full = chunk.length === this.cs ? chunk : (() => {
        const b = new Uint8Array(this.cs);
        b.set(chunk);
        return b;
      })();
      const z = this.header.compressionType === 1 ? await zstdCompress(full) : await deflateRaw(full);
      // Not worth it (or all zero): the ordinary path.
      if (z.length >= this.cs - 512 || chunk.length < this.cs) {
        await this.write(offset + p, chunk);
        continue;
      }
      await this.mutate('write', async (r) => {
        const gc = (offset + p) / this.cs;
        const zm = zeroGranules(full, this.cs);
        if (zm[0]! & 1) return this.zeroCluster(gc, r, false);
        const s = await this.meta.l2For(gc, r);
        const old = this.meta.decode(s);
        await this.compressed.store(s, z, r);
        this.release(old, r);
      });
    }
  }

  /** What guest cluster `cStart` reads as now (a fresh buffer). */
  private async clusterContents(cStart: number, e: L2Entry): Promise<Uint8Array> {
    if (e.kind === 'compressed') return (await this.compressed.cluster(e, cStart)).slice();
    const n = Math.min(this.cs, this.size - cStart);
    const b = new Uint8Array(this.cs);
    if (e.kind === 'zero') return b;
    await this.readInto(cStart, b.subarray(0, n));
    return b;
  }

  /** Makes guest cluster `gc` a zero cluster (or unallocated, when `unmap` and nothing shows through). */
  private async zeroCluster(gc: number, r: Refcounts, unmap: boolean): Promise<void> {
    const l1i = Math.floor(gc / this.l2Entries);
    if (this.meta.l2Offset(l1i) === 0 && unmap && !this.backing && !this.header.dataFileRaw) return;
    const s = await this.meta.l2For(gc, r);
    const e = this.meta.decode(s);
    if (this.header.dataFileRaw) {
      // The data file must go on reading as the disk: zeroes written there, the cluster kept (as QEMU's write -z).
      const host = gc * this.cs;
      await this.data.write(host, new Uint8Array(Math.min(this.cs, this.size - host)));
      this.meta.setEntry(s, host, true, true);
      return;
    }
    const makeUnallocated = unmap && !this.backing;
    if (makeUnallocated) this.meta.setEntry(s, 0, false, false, 0, 0);
    else if (this.ext) this.meta.setEntry(s, 0, false, false, 0, 0xffff_ffff);
    else this.meta.setEntry(s, 0, false, true);
    this.release(e, r);
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
      await this.meta.writeback();
    });
    // The fsync runs outside the queue: it covers every write that completed before this
    // flush (and their metadata, just written back), and later writes need not wait for it.
    // The data file first: no metadata durable before the data it points at.
    if (this.external) await this.data.flush();
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
      const l2 = this.meta.l2Offset(l1i);
      if (!l2) continue;
      const dv = this.meta.view(await this.meta.l2Table(l2));
      for (let i = 0; i < this.l2Entries; i++) {
        const e = decodeL2(dv, i, this.ext, this.header.clusterBits, this.external);
        if (e.kind === 'compressed') data += this.cs;
        else if (e.kind === 'normal') data += this.ext ? _subclusterBytes(e.alloc, this.meta.sub) : this.cs;
      }
    }
    return this.layerInfo({
      clusterSize: this.cs,
      allocatedBytes: data,
      specific: {
        version: this.header.version,
        refcountBits: 2 ** this.header.refcountOrder,
        extendedL2: this.ext,
        compressionType: this.header.compressionType === 0 ? 'zlib' : 'zstd',
        snapshots: this.header.nbSnapshots,
        ...(this.external ? { dataFile: this.header.dataFile!, dataFileRaw: this.header.dataFileRaw === true } : {}),
      },
    });
  }

  /**
   * Flushes (when writable) and closes this layer and its backing chain; in-place writes still in
   * flight end before the file closes.
   *
   * @example
   * ```ts
   * await dev.close(); // flushes when writable, closes the backing chain too
   * ```
   */
  override async close(): Promise<void> {
    if (this.closed) return;
    try {
      await _closeLayer(() => this.flush().then(() => this.directDrained()), () => (this.closed = true), this.storage, this.backing);
    } finally {
      if (this.external) await this.data.close();
    }
  }

  /**
   * A host cluster for the data of guest cluster `gc`: a new cluster at the end of this file
   * (refcount 1), or with an external data file the guest offset in it (QEMU's layout there,
   * which keeps a raw data file a raw image of the disk).
   */
  private allocData(gc: number, r: Refcounts): Promise<number> | number {
    return this.external ? gc * this.cs : this.meta.alloc(r);
  }

  /** Rewrites the header (e.g. after changing the backing file). @internal */
  async rewriteHeader(): Promise<void> {
    await this.writable('write');
    await this.storage.write(0, encodeQcow2Header(this.header));
  }
}

/** The data store of an image opened without its data file: every use refuses, naming it. */
function missingDataFile(image: string, name: string): Storage {
  const refuse = (): never => {
    throw new VmkitError('UNSUPPORTED', `qcow2 ${image}: opened without its external data file ${name}`, { offset: 72, path: image });
  };
  return { name, readOnly: true, size: refuse, readInto: refuse, write: refuse, truncate: refuse, flush: refuse, close: async () => {} };
}

/** True when `b` has a non-zero byte among its first 16: data for sure, no zero scan needed. */
function leadsWithData(b: Uint8Array): boolean {
  for (let i = 0; i < 16 && i < b.length; i++) if (b[i] !== 0) return true;
  return false;
}
