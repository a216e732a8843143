/**
 * Subclusters of qcow2 images with extended L2 entries (incompatible feature
 * bit 4): each 16-byte entry holds the host cluster and two 32-bit bitmaps,
 * one bit per subcluster (cluster / 32 bytes) saying whether it holds data
 * (`alloc`) or reads as zeroes (`zeroes`); neither bit = unallocated (the
 * backing file answers).
 *
 * ```
 *  bytes 0..7: host offset | COPIED    bytes 8..11: zeroes   bytes 12..15: alloc
 *  subcluster:   0  1  2  3 … 31
 *  alloc bit:    1  1  0  0 … 0    → data at host + s·sub
 *  zeroes bit:   0  0  1  0 … 0    → zeroes; subcluster 3…: unallocated
 * ```
 * Layout: QEMU's docs/interop/qcow2.txt, "Extended L2 Entries".
 * @module
 */
import type { Storage } from '../../backends/storage.js';
import { zeroGranules } from '../../_sectors.js';
import type { _L2Slot, _MetadataCache } from './_cache.js';
import type { ClusterKind, L2Entry, Refcounts } from './metadata.js';

/**
 * The run of equal kind from byte `inC` of the cluster of extended entry `e`
 * (not compressed) to the end of that run of subclusters.
 *
 * @example
 * ```ts
 * const { kind, len } = _subclusterRun(e, pos % cs, cs / 32);
 * ```
 * @internal
 */
export function _subclusterRun(e: L2Entry, inC: number, sub: number): { kind: ClusterKind; host: number; len: number } {
  const s0 = Math.floor(inC / sub);
  const kindOf = (s: number): ClusterKind => ((e.alloc >>> s) & 1 ? 'normal' : (e.zeroes >>> s) & 1 ? 'zero' : 'unallocated');
  const k = kindOf(s0);
  let s = s0 + 1;
  while (s < 32 && kindOf(s) === k) s++;
  // Zero and unallocated subclusters of an allocated cluster keep its host offset (qemu-img map prints it).
  return { kind: k, host: e.host !== 0 ? e.host + inC : 0, len: s * sub - inC };
}

/**
 * Bytes of data an extended entry holds (its allocated subclusters).
 *
 * @example
 * ```ts
 * allocated += _subclusterBytes(e.alloc, cs / 32);
 * ```
 * @internal
 */
export function _subclusterBytes(alloc: number, sub: number): number {
  let n = 0;
  for (let x = alloc >>> 0; x; x &= x - 1) n++;
  return n * sub;
}

/** What a subcluster write needs of the device around it. @internal */
export interface _SubclusterDevice {
  readonly meta: _MetadataCache;
  readonly storage: Storage;
  /** Guest size in bytes. */
  readonly size: number;
  /** Reads guest bytes (the old contents around a partial write). */
  readInto(offset: number, dst: Uint8Array): Promise<void>;
  /** What guest cluster `cStart` with entry `e` reads as now (a fresh cluster-sized buffer). */
  clusterContents(cStart: number, e: L2Entry): Promise<Uint8Array>;
  /** Drops this layer's reference to what `e` points at. */
  release(e: L2Entry, r: Refcounts): void;
}

/**
 * Writes `data` at guest offset `pos` inside the cluster of `slot` (entry
 * `e`): subclusters wholly zero become zero subclusters, the others data (the
 * partial ones at the edges take their old contents); a compressed or shared
 * cluster becomes a new whole one first; a cluster left with no data
 * subcluster gives its host cluster back.
 *
 * @example
 * ```ts
 * await _writeSubclusters(dev, slot, meta.decode(slot), pos, data, refs);
 * ```
 * @internal
 */
export async function _writeSubclusters(dev: _SubclusterDevice, s: _L2Slot, e: L2Entry, pos: number, data: Uint8Array, r: Refcounts): Promise<void> {
  const meta = dev.meta;
  const { cs, sub } = meta;
  const cStart = Math.floor(pos / cs) * cs;
  const inC = pos - cStart;
  // Subclusters [s0, s1) are touched.
  const s0 = Math.floor(inC / sub);
  const s1 = Math.ceil((inC + data.length) / sub);
  let alloc = e.kind === 'compressed' ? 0 : e.alloc;
  let zeroes = e.kind === 'compressed' ? 0 : e.zeroes;
  let host = e.kind === 'normal' || (e.kind !== 'compressed' && e.host !== 0) ? e.host : 0;
  if (e.kind === 'compressed' || (host !== 0 && !e.copied)) {
    // Decompress / unshare: the whole cluster becomes a new normal one.
    const buf = await dev.clusterContents(cStart, e);
    buf.set(data, inC);
    host = await meta.alloc(r);
    await dev.storage.write(host, buf);
    meta.fileSize = Math.max(meta.fileSize, host + cs);
    meta.setEntry(s, host, true, false, 0xffff_ffff, 0);
    dev.release(e, r);
    return;
  }
  // Partial subclusters at the edges take their old contents.
  const spanStart = cStart + s0 * sub;
  const spanLen = (s1 - s0) * sub;
  let span = data;
  if (spanStart !== pos || spanLen !== data.length) {
    span = new Uint8Array(spanLen);
    // The last subcluster may run past the end of a disk whose size is not a multiple of it.
    await dev.readInto(spanStart, span.subarray(0, Math.min(spanLen, dev.size - spanStart)));
    span.set(data, pos - spanStart);
  }
  const spanZero = zeroGranules(span, sub);
  let needData = false;
  for (let k = s0; k < s1; k++) {
    const bit = 1 << k;
    if ((spanZero[(k - s0) >> 3]! >> ((k - s0) & 7)) & 1) {
      zeroes = (zeroes | bit) >>> 0;
      alloc = (alloc & ~bit) >>> 0;
    } else {
      needData = true;
      alloc = (alloc | bit) >>> 0;
      zeroes = (zeroes & ~bit) >>> 0;
    }
  }
  if (needData && host === 0) {
    host = await meta.alloc(r);
    meta.fileSize = Math.max(meta.fileSize, host + cs);
    // Unwritten subclusters of a fresh cluster are never read (their alloc bit is 0).
    await dev.storage.truncate(Math.max(await dev.storage.size(), host + cs));
  }
  if (needData) await dev.storage.write(host + s0 * sub, span);
  if (alloc === 0 && host !== 0 && e.kind === 'normal') {
    // Every subcluster is zero or unallocated now: free the host cluster.
    meta.setEntry(s, 0, false, false, 0, zeroes);
    r.free(host);
    return;
  }
  meta.setEntry(s, host, host !== 0, false, alloc, zeroes);
}
