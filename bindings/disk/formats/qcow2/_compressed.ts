/**
 * Compressed clusters of a qcow2 image: reading one (deflate, or zstd for
 * images with compression type 1), keeping the last one inflated (sequential
 * reads hit it once per sector run), and writing new ones packed back to back
 * in host clusters as `qemu-img convert -c` does, each host cluster counted
 * once per compressed cluster that touches it.
 *
 * ```
 * │◄──────── host cluster k ────────►│◄──── host cluster k+1 ────►│
 * │ A (deflated) │ B │ C (deflated, crossing) ──────│ next ─►       │
 *   refcount(k) = 3 (A, B, C); refcount(k+1) = 1 (C); "next" is where
 *   the following compressed cluster goes while k+1 is the file's end
 * ```
 * @module
 */
import { VmkitError } from '../../../errors.js';
import { inflateRaw } from '../../_inflate.js';
import type { _L2Slot, _MetadataCache } from './_cache.js';
import { encodeCompressedL2, type L2Entry, type Refcounts } from './metadata.js';

/**
 * The compressed clusters of one image: its read cache and its write cursor.
 *
 * @example
 * ```ts
 * const comp = new _CompressedClusters(meta);
 * await comp.readInto(entry, guestOffset, dst);
 * ```
 * @internal
 */
export class _CompressedClusters {
  private readonly meta: _MetadataCache;
  /** The last cluster inflated, by the host offset of its compressed data. */
  private last: { host: number; data: Uint8Array } | undefined;
  /** Next free byte for compressed data (inside the last compressed host cluster), 0 = none. */
  private end = 0;

  constructor(meta: _MetadataCache) {
    this.meta = meta;
  }

  /** Copies the bytes of the compressed cluster `e` from guest offset `pos` on into `d` (inside the cluster). */
  async readInto(e: L2Entry, pos: number, d: Uint8Array): Promise<void> {
    const c = await this.cluster(e, pos);
    const inC = pos % this.meta.cs;
    d.set(c.subarray(inC, inC + d.length));
  }

  /** The inflated guest cluster of entry `e` (shared: callers copy before changing it). */
  async cluster(e: L2Entry, pos: number): Promise<Uint8Array> {
    if (this.last?.host === e.host) return this.last.data;
    const { header, storage, cs } = this.meta;
    if (header.compressionType > 1) {
      throw new VmkitError('UNSUPPORTED', `qcow2 ${storage.name}: compression type ${header.compressionType}`, { offset: 104, path: storage.name });
    }
    const len = Math.min(e.csize, this.meta.fileSize - e.host);
    const raw = new Uint8Array(len);
    await storage.readInto(e.host, raw);
    if (header.compressionType === 1) {
      // Loaded on the first zstd cluster: fzstd is the largest module an image open would load.
      const { zstdCluster } = await import('../../_zstd.js');
      const data = zstdCluster(raw, cs, e.host, storage.name);
      this.last = { host: e.host, data };
      return data;
    }
    const data = await inflateRaw(raw, cs, e.host, storage.name).catch((err: unknown) => {
      throw err instanceof VmkitError ? err : this.meta.corrupt(`compressed cluster for guest offset ${pos} does not inflate`, e.host);
    });
    this.last = { host: e.host, data };
    return data;
  }

  /** Drops one reference to each host cluster the compressed data of `e` touches. */
  release(e: L2Entry, r: Refcounts): void {
    const cs = this.meta.cs;
    const first = Math.floor(e.host / cs) * cs;
    const last = Math.floor((e.host + e.csize - 1) / cs) * cs;
    for (let c = first; c <= last; c += cs) r.free(c);
    if (this.last?.host === e.host) this.last = undefined;
  }

  /**
   * Writes the compressed data `z` of one guest cluster after the last one
   * and points the slot's entry at it (the caller releases what the entry held).
   */
  async store(s: _L2Slot, z: Uint8Array, r: Refcounts): Promise<void> {
    const meta = this.meta;
    const host = await this.space(z.length, r);
    await meta.storage.write(host, z);
    meta.fileSize = Math.max(meta.fileSize, host + z.length);
    encodeCompressedL2(new DataView(s.table.buffer, s.table.byteOffset, s.table.byteLength), s.idx, meta.header.clusterBits, host, z.length);
    meta.markL2(s.l2, s.table, s.idx * 8, s.idx * 8 + 8);
  }

  /** Byte space for `len` bytes of compressed data, refcounted once per host cluster it touches. */
  private async space(len: number, r: Refcounts): Promise<number> {
    const cs = this.meta.cs;
    let start = this.end;
    const clusterOf = (b: number): number => Math.floor(b / cs) * cs;
    // Continue in the current compressed cluster only while the clusters after it are the file's end.
    if (start === 0 || start % cs === 0 || (clusterOf(start + len - 1) > clusterOf(start) && r.fileEnd !== clusterOf(start) + cs)) {
      start = await this.meta.alloc(r);
    } else await r.add(clusterOf(start), 1);
    for (let c = clusterOf(start) + cs; c <= clusterOf(start + len - 1); c += cs) {
      const got = await this.meta.alloc(r);
      if (got !== c) throw new VmkitError('CORRUPT', `qcow2 ${this.meta.storage.name}: compressed data allocation is not contiguous`, { offset: got });
    }
    this.end = start + len;
    if (this.end % cs === 0) this.end = 0;
    return start;
  }
}
