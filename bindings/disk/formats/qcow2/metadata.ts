/**
 * qcow2 metadata: L1/L2 entry decoding (standard, compressed and extended L2
 * entries) and refcounts of any width (refcount_order 0..6). Shared by the
 * device (reads and writes) and `check` (which recounts everything).
 * @module
 */
import { VmkitError } from '../../../errors.js';
import type { Storage } from '../../backends/storage.js';

/** Bit 63 of L1/L2 entries: the refcount of the cluster is exactly one. */
export const HI_COPIED = 0x8000_0000;
/** Bit 62 of L2 entries: compressed cluster. */
export const HI_COMPRESSED = 0x4000_0000;
/** Bit 0 of L2 entries (v3, no extended L2): the cluster reads as zeroes. */
export const LO_ZERO = 1;
const TWO32 = 2 ** 32;

/** What an L2 entry says about one guest cluster (or subcluster). */
export type ClusterKind = 'unallocated' | 'zero' | 'normal' | 'compressed';

/** A decoded L2 entry. */
export interface L2Entry {
  kind: ClusterKind;
  /** Host offset of the cluster (0 when none; for compressed: the byte offset of the data). */
  host: number;
  copied: boolean;
  /** Compressed data length in bytes (compressed only). */
  csize: number;
  /** Extended L2: allocation bits (bit i = subcluster i holds data) and zero bits. */
  alloc: number;
  zeroes: number;
}

/**
 * Reads the host offset stored in bits 9..55 of an L1/L2 entry split in two
 * 32-bit halves.
 * @internal
 */
export function entryOffset(hi: number, lo: number): number {
  return (hi & 0x00ff_ffff) * TWO32 + (lo >>> 9) * 512;
}

/**
 * Decodes L2 entry `i` of `table` (extended entries are 16 bytes).
 *
 * The TypeScript home of the L2 entry layout: the device (through its
 * metadata cache) and `check` decode here. The core has one more decoder,
 * `backupPlanL2` in assembly/backup_plan.ts, which turns a whole table into
 * copy ops in one call for a consolidation; it stays there because a call
 * across the boundary per entry, with the table copied into core memory,
 * would cost the lookup path more than this decode does. The bits are the
 * same on both sides (bit 63 COPIED, bit 62 compressed, bits 9..55 the host
 * offset, bit 0 zero; extended: zero bitmap then allocation bitmap), and
 * test/qcow2-l2-decoders.test.ts holds the two to one meaning on random tables.
 * With `dataFile` (the image keeps its data in an external file) an offset
 * of 0 with COPIED is a data cluster; the core's plan is not used for such
 * images (bindings/disk/backup/_plan.ts `isL2Layer`).
 * @internal
 */
export function decodeL2(table: DataView, i: number, ext: boolean, clusterBits: number, dataFile: boolean = false): L2Entry {
  const o = i * (ext ? 16 : 8);
  const hi = table.getUint32(o);
  const lo = table.getUint32(o + 4);
  const copied = (hi & HI_COPIED) !== 0;
  const e: L2Entry = { kind: 'unallocated', host: 0, copied, csize: 0, alloc: 0, zeroes: 0 };
  if (ext) {
    e.zeroes = table.getUint32(o + 8);
    e.alloc = table.getUint32(o + 12);
  }
  if (hi & HI_COMPRESSED) {
    // x = 62 - (cluster_bits - 8) bits of offset, then the count of extra sectors.
    const v = (BigInt(hi & 0x3fff_ffff) << 32n) | BigInt(lo);
    const x = BigInt(70 - clusterBits);
    e.kind = 'compressed';
    e.host = Number(v & ((1n << x) - 1n));
    const sectors = Number(v >> x) + 1;
    e.csize = sectors * 512 - (e.host & 511);
    return e;
  }
  e.host = entryOffset(hi, lo);
  if (!ext && lo & LO_ZERO) e.kind = 'zero';
  // Offset 0 is a cluster of an external data file (guest cluster 0's); there COPIED tells it from
  // unallocated, as every data-file cluster has "refcount 1" (qcow2.txt, QEMU's qcow2_get_cluster_type).
  else if (e.host !== 0 || (dataFile && copied)) e.kind = 'normal';
  return e;
}

/**
 * Encodes a standard L2 entry (host offset, COPIED, zero flag) into `table` at
 * index `i`, with the extended bitmap when `ext`.
 * @internal
 */
export function encodeL2(table: DataView, i: number, ext: boolean, host: number, copied: boolean, zero: boolean, alloc: number = 0, zeroes: number = 0): void {
  const o = i * (ext ? 16 : 8);
  table.setUint32(o, (copied ? HI_COPIED : 0) | Math.floor(host / TWO32));
  table.setUint32(o + 4, ((host % TWO32) | (zero ? LO_ZERO : 0)) >>> 0);
  if (ext) {
    table.setUint32(o + 8, zeroes >>> 0);
    table.setUint32(o + 12, alloc >>> 0);
  }
}

/**
 * Encodes a compressed-cluster L2 entry (standard L2 only) into `table` at
 * index `i`: `len` bytes of compressed data from host byte `host`, stored as
 * the offset and the count of 512-byte sectors after the first one.
 * @internal
 */
export function encodeCompressedL2(table: DataView, i: number, clusterBits: number, host: number, len: number): void {
  const x = 62 - (clusterBits - 8);
  const extra = Math.floor((host + len - 1) / 512) - Math.floor(host / 512);
  table.setBigUint64(i * 8, (1n << 62n) | (BigInt(extra) << BigInt(x)) | BigInt(host));
}

/**
 * Refcounts of an image: the refcount table in memory, refcount blocks read on
 * demand and cached write-back. New refcount blocks and a larger table are
 * allocated at the end of the file (via `take`).
 *
 * Crash safety rests on what the cache may hold (QEMU orders its caches the
 * same way): a cached block holds only changes that are safe to write at any
 * moment (increments, and decrements whose last reference is already gone from
 * disk), so `writeDirty` may run whenever the device likes. A decrement whose
 * reference is still on disk (a cluster an L2 entry stopped pointing at) waits
 * in `free` until the device has written the tables that dropped it, then
 * `applyFrees` moves it into the blocks. On disk a refcount is therefore never
 * below the references to it: a crash leaks, never corrupts.
 * @internal
 */
export class Refcounts {
  readonly cs: number;
  readonly bits: number;
  /** Entries per refcount block. */
  readonly perBlock: number;
  table: number[];
  tableOffset: number;
  tableClusters: number;
  private readonly blocks = new Map<number, Uint8Array>();
  /** Byte range [lo, hi) of each cached block that differs from the disk. */
  private readonly dirty = new Map<number, [number, number]>();
  /** Deferred decrements: cluster offset → count. */
  private readonly frees = new Map<number, number>();
  private readonly storage: Storage;
  /** Next free cluster-aligned host offset (the device owns it). */
  fileEnd: number;
  /** Called after the table moves, to rewrite the header fields. */
  onTableMoved: ((offset: number, clusters: number) => Promise<void>) | undefined;

  constructor(storage: Storage, cs: number, order: number, table: number[], tableOffset: number, tableClusters: number, fileEnd: number) {
    this.storage = storage;
    this.cs = cs;
    this.bits = 2 ** order;
    this.perBlock = (cs * 8) / this.bits;
    this.table = table;
    this.tableOffset = tableOffset;
    this.tableClusters = tableClusters;
    this.fileEnd = fileEnd;
  }

  /** Loads the refcount table of an image. */
  static async load(storage: Storage, cs: number, order: number, offset: number, clusters: number, fileSize: number, fileEnd: number): Promise<Refcounts> {
    const raw = new Uint8Array(clusters * cs);
    await storage.readInto(offset, raw);
    const dv = new DataView(raw.buffer);
    const table: number[] = [];
    for (let i = 0; i < clusters * cs / 8; i++) {
      const hi = dv.getUint32(i * 8);
      const lo = dv.getUint32(i * 8 + 4);
      const off = hi * TWO32 + (lo >>> 9) * 512;
      if (off !== 0 && (off % cs !== 0 || off + cs > fileSize || hi > 0x001f_ffff)) {
        throw new VmkitError('CORRUPT', `qcow2: refcount block ${i} at ${off} is misaligned or past the end of the file`, { offset: offset + i * 8, path: storage.name });
      }
      table.push(off);
    }
    return new Refcounts(storage, cs, order, table, offset, clusters, fileEnd);
  }

  private async block(i: number): Promise<Uint8Array> {
    let b = this.blocks.get(i);
    if (!b) {
      b = new Uint8Array(this.cs);
      await this.storage.readInto(this.table[i]!, b);
      // At most 256 blocks and 8 MiB of them; dirty ones stay until written (the device
      // writes back when too many are dirty, so the cache stays bounded).
      if (this.blocks.size >= this.maxBlocks) {
        for (const k of this.blocks.keys()) {
          if (this.dirty.has(k)) continue;
          this.blocks.delete(k);
          break;
        }
      }
      this.blocks.set(i, b);
    }
    return b;
  }

  /** Most blocks kept in memory. */
  get maxBlocks(): number {
    return Math.max(4, Math.min(256, (8 << 20) / this.cs));
  }

  /** Blocks with changes not yet written. */
  get dirtyBlocks(): number {
    return this.dirty.size;
  }

  /** Clusters waiting for a deferred decrement. */
  get pendingFrees(): number {
    return this.frees.size;
  }

  private markDirty(bi: number, lo: number, hi: number): void {
    const d = this.dirty.get(bi);
    if (d) {
      if (lo < d[0]) d[0] = lo;
      if (hi > d[1]) d[1] = hi;
    } else this.dirty.set(bi, [lo, hi]);
  }

  /** Writes the changed bytes of every cached block (safe at any time, see the class comment). */
  async writeDirty(): Promise<void> {
    for (const [bi, [lo, hi]] of [...this.dirty].sort((a, b) => this.table[a[0]]! - this.table[b[0]]!)) {
      const b = this.blocks.get(bi)!;
      this.dirty.delete(bi);
      try {
        await this.storage.write(this.table[bi]! + lo, b.subarray(lo, hi));
      } catch (e) {
        this.markDirty(bi, lo, hi);
        throw e;
      }
    }
  }

  /** Writes the block counting the cluster at `off` now (before something on disk links it). */
  private async persist(off: number): Promise<void> {
    const bi = Math.floor(off / this.cs / this.perBlock);
    const d = this.dirty.get(bi);
    if (!d) return;
    this.dirty.delete(bi);
    await this.storage.write(this.table[bi]! + d[0], this.blocks.get(bi)!.subarray(d[0], d[1]));
  }

  /**
   * Drops one reference to the cluster at `off` once the caller has written
   * the metadata that no longer points at it (see `applyFrees`).
   */
  free(off: number): void {
    this.frees.set(off, (this.frees.get(off) ?? 0) + 1);
  }

  /**
   * Applies the deferred decrements to the cached blocks (call only after the
   * tables that dropped the references are on disk), then `writeDirty`.
   */
  async applyFrees(): Promise<void> {
    const all = [...this.frees];
    this.frees.clear();
    for (let i = 0; i < all.length; i++) {
      const [off, n] = all[i]!;
      try {
        await this.add(off, -n);
      } catch (e) {
        for (const [o, m] of all.slice(i)) this.frees.set(o, (this.frees.get(o) ?? 0) + m);
        throw e;
      }
    }
    await this.writeDirty();
  }

  /** Refcount of the cluster at host offset `off` (deferred decrements not applied: an upper bound). */
  async get(off: number): Promise<number> {
    const idx = Math.floor(off / this.cs);
    const bi = Math.floor(idx / this.perBlock);
    if (bi >= this.table.length || this.table[bi] === 0) return 0;
    return readEntry(await this.block(bi), idx % this.perBlock, this.bits);
  }

  /** Sets the refcount of the cluster at `off` (allocating a refcount block when needed). */
  async set(off: number, v: number): Promise<void> {
    const max = this.bits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** this.bits - 1;
    if (v < 0) throw new VmkitError('CORRUPT', `qcow2: refcount of cluster at ${off} would drop below zero`, { offset: off, path: this.storage.name });
    if (v > max) throw new VmkitError('LIMIT', `qcow2: refcount overflow for cluster at ${off} (${this.bits}-bit refcounts)`, { offset: off, path: this.storage.name });
    const idx = Math.floor(off / this.cs);
    const bi = Math.floor(idx / this.perBlock);
    if (bi >= this.table.length || this.table[bi] === 0) {
      if (v === 0) return;
      await this.newBlock(bi);
    }
    const b = await this.block(bi);
    const e = idx % this.perBlock;
    writeEntry(b, e, this.bits, v);
    const byteStart = Math.floor((e * this.bits) / 8);
    this.markDirty(bi, byteStart, byteStart + Math.max(1, this.bits / 8));
  }

  /** Adds `d` to the refcount of the cluster at `off`. */
  async add(off: number, d: number): Promise<void> {
    await this.set(off, (await this.get(off)) + d);
  }

  /** Takes the next cluster at the end of the file, without a refcount. */
  take(): number {
    const off = this.fileEnd;
    this.fileEnd += this.cs;
    return off;
  }

  // Crash safety: a block's own refcount is on disk before the table links the block, so a
  // crash at any point leaves at worst a leaked cluster, never a referenced one with refcount 0.
  private async newBlock(bi: number): Promise<void> {
    if (bi >= this.table.length) await this.grow(bi + 1);
    // Growing the table counts the new table's clusters, which may have allocated this very block.
    if (this.table[bi]) return;
    const off = this.take();
    const b = new Uint8Array(this.cs);
    const own = Math.floor(off / this.cs / this.perBlock);
    if (own === bi) writeEntry(b, (off / this.cs) % this.perBlock, this.bits, 1);
    await this.storage.write(off, b);
    if (own !== bi) {
      await this.set(off, 1); // counted in another block (allocated first if need be)
      await this.persist(off); // on disk before the table links the new block
      if (this.table[bi]) {
        // That allocation grew the table and made block `bi` on the way: ours is not needed.
        await this.set(off, 0);
        return;
      }
    }
    this.blocks.set(bi, b);
    this.table[bi] = off;
    await this.writeTableEntry(bi);
  }

  private async writeTableEntry(i: number): Promise<void> {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(this.table[i]!));
    await this.storage.write(this.tableOffset + i * 8, b);
  }

  // Moves the refcount table to a larger one at the end of the file. The new table, the
  // refcounts of its clusters and any refcount block they need are written before the header
  // switches to it; the old table is freed after (a crash in between leaks, never corrupts).
  private async grow(minEntries: number): Promise<void> {
    const entries = Math.max(minEntries + 4, this.table.length * 2);
    const clusters = Math.ceil((entries * 8) / this.cs);
    if (clusters * this.cs > (8 << 20)) throw new VmkitError('LIMIT', 'qcow2: refcount table would exceed 8 MiB', { path: this.storage.name });
    const oldOff = this.tableOffset;
    const oldClusters = this.tableClusters;
    const newOff = this.fileEnd;
    this.fileEnd += clusters * this.cs;
    const table = this.table.slice();
    while (table.length < (clusters * this.cs) / 8) table.push(0);
    const touched = new Map<number, Uint8Array>();
    const need: number[] = [];
    for (let c = 0; c < clusters; c++) need.push(newOff + c * this.cs);
    while (need.length) {
      const off = need.shift()!;
      const idx = off / this.cs;
      const bi = Math.floor(idx / this.perBlock);
      if (bi >= table.length) throw new VmkitError('LIMIT', 'qcow2: refcount table growth outran itself', { path: this.storage.name });
      let blk = touched.get(bi);
      if (!blk) {
        if (table[bi] === 0) {
          table[bi] = this.fileEnd;
          this.fileEnd += this.cs;
          blk = new Uint8Array(this.cs);
          need.push(table[bi]!);
        } else blk = (await this.block(bi)).slice();
        touched.set(bi, blk);
      }
      writeEntry(blk, idx % this.perBlock, this.bits, 1);
    }
    for (const [bi, blk] of touched) await this.storage.write(table[bi]!, blk);
    const raw = new Uint8Array(clusters * this.cs);
    const dv = new DataView(raw.buffer);
    table.forEach((v, i) => dv.setBigUint64(i * 8, BigInt(v)));
    await this.storage.write(newOff, raw);
    await this.storage.flush();
    for (const [bi, blk] of touched) {
      this.blocks.set(bi, blk);
      this.dirty.delete(bi); // written whole above
    }
    this.table = table;
    this.tableOffset = newOff;
    this.tableClusters = clusters;
    await this.onTableMoved?.(newOff, clusters);
    for (let c = 0; c < oldClusters; c++) await this.set(oldOff + c * this.cs, 0);
  }
}

/**
 * Reads refcount entry `e` of a block with `bits`-bit entries (big-endian;
 * sub-byte widths pack from the least significant bit of each byte).
 * @internal
 */
export function readEntry(b: Uint8Array, e: number, bits: number): number {
  if (bits >= 8) {
    const o = (e * bits) / 8;
    let v = 0;
    for (let k = 0; k < bits / 8; k++) v = v * 256 + b[o + k]!;
    return v;
  }
  const bit = e * bits;
  return (b[bit >> 3]! >> (bit & 7)) & ((1 << bits) - 1);
}

/** Writes refcount entry `e`. @internal */
export function writeEntry(b: Uint8Array, e: number, bits: number, v: number): void {
  if (bits >= 8) {
    const o = (e * bits) / 8;
    for (let k = bits / 8 - 1; k >= 0; k--) {
      b[o + k] = v % 256;
      v = Math.floor(v / 256);
    }
    return;
  }
  const bit = e * bits;
  const mask = ((1 << bits) - 1) << (bit & 7);
  b[bit >> 3] = (b[bit >> 3]! & ~mask) | ((v << (bit & 7)) & mask);
}
