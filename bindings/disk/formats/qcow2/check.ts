/**
 * `check` for qcow2, as `qemu-img check` does it: walk every structure that
 * references clusters (header, L1 and refcount tables, refcount blocks, L2
 * tables, data and compressed clusters, internal snapshots' tables), count
 * the references per host cluster, and compare with the stored refcounts.
 * Stored < found is a corruption (a cluster could be reused while in use);
 * stored > found is a leak (space lost). Also: misaligned or past-EOF
 * entries, wrong COPIED flags (on compressed clusters: any), L1 entries with
 * flags but no table (corruptions).
 * @module
 */
import { VmkitError } from '../../../errors.js';
import { readAt, type Storage } from '../../backends/storage.js';
import type { CheckReport, FormatCheckOptions } from '../types.js';
import { AUTOCLEAR_BITMAPS, EXT_BITMAPS, readHeader } from './header.js';
import { decodeL2, entryOffset, HI_COPIED, readEntry, writeEntry } from './metadata.js';

const MAX_CHECK_CLUSTERS = 2 ** 28;

/**
 * Checks a qcow2 store; with `repairLeaks` lowers the refcounts of leaked
 * clusters to the references found.
 *
 * @example
 * ```ts
 * const r = await check(await FileStorage.open('vm.qcow2', { readOnly: true }));
 * console.log(r.corruptions, r.leaks);
 * ```
 */
export async function check(storage: Storage, opts: FormatCheckOptions = {}): Promise<CheckReport> {
  const { header: h, fileSize } = await readHeader(storage);
  if (h.autoclear & AUTOCLEAR_BITMAPS && h.otherExtensions.some((e) => e.type === EXT_BITMAPS)) {
    throw new VmkitError('UNSUPPORTED', `qcow2 ${storage.name}: checking images with persistent bitmaps`, { path: storage.name });
  }
  const cs = 2 ** h.clusterBits;
  const ext = h.extendedL2;
  const dataFile = h.dataFile !== undefined;
  const nClusters = Math.ceil(fileSize / cs);
  if (nClusters > MAX_CHECK_CLUSTERS) throw new VmkitError('LIMIT', `qcow2 ${storage.name}: ${nClusters} clusters is too many to check`, { path: storage.name });
  const refs = new Uint32Array(nClusters);
  const report: CheckReport = { format: 'qcow2', filename: storage.name, corruptions: 0, leaks: 0, checkErrors: 0, messages: [] };
  const corrupt = (message: string, offset?: number): void => {
    report.corruptions++;
    report.messages.push({ severity: 'corruption', message, ...(offset !== undefined ? { offset } : {}) });
  };
  /** Counts one reference to each cluster of [off, off + len). */
  const inc = (off: number, len: number, what: string, at: number): boolean => {
    if (off % cs !== 0 && what !== 'compressed data') {
      corrupt(`${what} at ${off} is not cluster aligned (entry at ${at})`, at);
      return false;
    }
    const first = Math.floor(off / cs);
    const last = Math.floor((off + Math.max(len, 1) - 1) / cs);
    for (let c = first; c <= last; c++) {
      if (c >= nClusters) {
        corrupt(`${what} at ${c * cs} is past the end of the file (entry at ${at})`, at);
        return false;
      }
      refs[c]!++;
    }
    return true;
  };

  inc(0, cs, 'header', 0);
  if (h.l1Size) inc(h.l1TableOffset, h.l1Size * 8, 'L1 table', 40);
  inc(h.refcountTableOffset, h.refcountTableClusters * cs, 'refcount table', 48);

  // Refcount blocks.
  const rt = await readAt(storage, h.refcountTableOffset, h.refcountTableClusters * cs);
  const rtv = new DataView(rt.buffer);
  const blocks: number[] = [];
  for (let i = 0; i < rt.length / 8; i++) {
    const hi = rtv.getUint32(i * 8);
    const lo = rtv.getUint32(i * 8 + 4);
    const off = hi * 2 ** 32 + lo;
    const at = h.refcountTableOffset + i * 8;
    if (off === 0) {
      blocks.push(0);
      continue;
    }
    if (off % cs !== 0 || off >= fileSize) {
      corrupt(`refcount block ${i} at ${off} is misaligned or past the end of the file`, at);
      blocks.push(0);
      continue;
    }
    inc(off, cs, 'refcount block', at);
    blocks.push(off);
  }

  // Active L1 (COPIED flags checked later against stored refcounts) and snapshots.
  const copiedChecks: { host: number; copied: boolean; at: number; what: string }[] = [];
  let allocated = 0;
  let compressed = 0;
  let fragmented = 0;
  const walkL1 = async (l1Off: number, l1Size: number, active: boolean): Promise<void> => {
    const l1 = await readAt(storage, l1Off, l1Size * 8);
    const l1v = new DataView(l1.buffer);
    let prevHost = -1;
    for (let i = 0; i < l1Size; i++) {
      const hi = l1v.getUint32(i * 8);
      const lo = l1v.getUint32(i * 8 + 4);
      const l2 = entryOffset(hi, lo);
      const at = l1Off + i * 8;
      if (l2 === 0) {
        // Flags without a table: qemu-img check reports it (it walks cluster 0 as that L2 table).
        if (hi !== 0 || lo !== 0) corrupt(`L1 entry ${i} has flags (0x${hi.toString(16).padStart(8, '0')}${lo.toString(16).padStart(8, '0')}) but no L2 table`, at);
        continue;
      }
      // Bits 0-8 and 56-62 of an L1 entry are reserved (qcow2.txt): QEMU reports them.
      if ((lo & 0x1ff) !== 0 || (hi & 0x7f00_0000) !== 0) corrupt(`L1 entry ${i} has reserved bits set`, at);
      if (!inc(l2, cs, 'L2 table', at)) continue;
      if (active) copiedChecks.push({ host: l2, copied: (hi & HI_COPIED) !== 0, at, what: `L2 table (L1 index ${i})` });
      const t = await readAt(storage, l2, cs);
      const tv = new DataView(t.buffer);
      const n = cs / (ext ? 16 : 8);
      for (let j = 0; j < n; j++) {
        const eat = l2 + j * (ext ? 16 : 8);
        const e = decodeL2(tv, j, ext, h.clusterBits, dataFile);
        if (e.kind !== 'compressed') {
          // Reserved: bits 1-8 and 56-61. Bit 0 of an extended entry is reserved by the spec too, but
          // qemu-img check (7.2) does not report it, so neither do we: the two checks must agree.
          const hi = tv.getUint32(j * (ext ? 16 : 8));
          const lo = tv.getUint32(j * (ext ? 16 : 8) + 4);
          if ((lo & 0x1fe) !== 0 || (hi & 0x3f00_0000) !== 0) corrupt(`L2 entry ${j} has reserved bits set`, eat);
        }
        if (ext && (e.alloc & e.zeroes) !== 0) corrupt(`L2 entry ${j} marks subclusters both allocated and zero`, eat);
        if (e.kind === 'compressed' && dataFile) {
          corrupt(`L2 entry ${j}: a compressed cluster in an image with an external data file`, eat);
          continue;
        }
        if (e.kind === 'compressed') {
          // A compressed cluster is never written in place, so COPIED (refcount 1, writable) is wrong on it.
          if (tv.getUint32(j * (ext ? 16 : 8)) & HI_COPIED) corrupt(`L2 entry ${j}: the COPIED flag is set on a compressed cluster`, eat);
          if (inc(e.host, e.csize, 'compressed data', eat) && active) {
            allocated++;
            compressed++;
            fragmented++; // as qemu-img: compressed clusters are fragmented by nature (sub-cluster I/O)
          }
          continue;
        }
        if (e.kind !== 'normal' && e.host === 0) {
          if (ext && e.alloc !== 0) corrupt(`L2 entry ${j} has allocated subclusters but no host cluster`, eat);
          continue;
        }
        if (dataFile) {
          // Clusters of the data file: no refcounts to hold them, any offset there is valid (aligned).
          if (e.host % cs !== 0) corrupt(`data cluster at ${e.host} is not cluster aligned (entry at ${eat})`, eat);
          else if (active) {
            allocated++;
            if (prevHost >= 0 && e.host !== prevHost + cs) fragmented++;
            prevHost = e.host;
          }
          continue;
        }
        if (!inc(e.host, cs, 'data cluster', eat)) continue;
        if (active) {
          copiedChecks.push({ host: e.host, copied: e.copied, at: eat, what: 'data cluster' });
          // Zero clusters that keep their allocation count too, as in qemu-img (QCOW2_CLUSTER_ZERO_ALLOC).
          allocated++;
          if (prevHost >= 0 && e.host !== prevHost + cs) fragmented++;
          prevHost = e.host;
        }
      }
    }
  };
  await walkL1(h.l1TableOffset, h.l1Size, true);

  if (h.nbSnapshots > 0) {
    const hdr = await readAt(storage, h.snapshotsOffset, Math.min(fileSize - h.snapshotsOffset, h.nbSnapshots * 1100 + 64));
    const sv = new DataView(hdr.buffer);
    let p = 0;
    for (let s = 0; s < h.nbSnapshots; s++) {
      if (p + 40 > hdr.length) {
        corrupt(`snapshot table entry ${s} runs past the end of the file`, h.snapshotsOffset + p);
        break;
      }
      const l1Off = Number(sv.getBigUint64(p));
      const l1Size = sv.getUint32(p + 8);
      const idLen = sv.getUint16(p + 12);
      const nameLen = sv.getUint16(p + 14);
      const extra = sv.getUint32(p + 36);
      const at = h.snapshotsOffset + p;
      if (l1Size * 8 > 32 << 20 || l1Off % cs !== 0 || l1Off + l1Size * 8 > fileSize) corrupt(`snapshot ${s} L1 table at ${l1Off} is invalid`, at);
      else if (l1Size > 0 && inc(l1Off, l1Size * 8, 'snapshot L1 table', at)) await walkL1(l1Off, l1Size, false);
      p += Math.ceil((40 + extra + idLen + nameLen) / 8) * 8;
    }
    inc(h.snapshotsOffset, p, 'snapshot table', 64);
  }

  // Stored refcounts against the references found.
  const bits = 2 ** h.refcountOrder;
  const perBlock = (cs * 8) / bits;
  const stored = async (c: number): Promise<{ v: number; block: Uint8Array | undefined; bi: number }> => {
    const bi = Math.floor(c / perBlock);
    const off = blocks[bi];
    if (!off) return { v: 0, block: undefined, bi };
    const b = await cachedBlock(off);
    return { v: readEntry(b, c % perBlock, bits), block: b, bi };
  };
  const blockCache = new Map<number, Uint8Array>();
  const cachedBlock = async (off: number): Promise<Uint8Array> => {
    let b = blockCache.get(off);
    if (!b) {
      b = await readAt(storage, off, cs);
      blockCache.set(off, b);
      if (blockCache.size > 64) blockCache.delete(blockCache.keys().next().value!);
    }
    return b;
  };
  let highest = -1;
  const limit = Math.max(nClusters, 0);
  const storedOf = new Map<number, number>();
  let leaksFixed = 0;
  for (let c = 0; c < limit; c++) {
    const { v, block, bi } = await stored(c);
    const r = refs[c]!;
    if (r > 0) highest = c;
    if (v !== r) storedOf.set(c, v);
    if (v < r) corrupt(`cluster ${c} (at ${c * cs}) refcount=${v} reference=${r}`, c * cs);
    else if (v > r) {
      report.leaks++;
      report.messages.push({ severity: 'leak', message: `leaked cluster ${c} (at ${c * cs}) refcount=${v} reference=${r}`, offset: c * cs });
      if (opts.repairLeaks && block) {
        const e = c % perBlock;
        writeEntry(block, e, bits, r);
        const bs = Math.floor((e * bits) / 8);
        await storage.write(blocks[bi]! + bs, block.subarray(bs, bs + Math.max(1, bits / 8)));
        leaksFixed++;
      }
    }
  }
  // Refcounts of clusters past the end of the file are not reported (qemu-img check does not:
  // nothing can reference them, and allocation skips them).
  for (const x of copiedChecks) {
    const c = x.host / cs;
    const v = storedOf.get(c) ?? refs[c]!;
    if ((v === 1) !== x.copied) corrupt(`${x.what} at ${x.host}: COPIED flag is ${x.copied ? 'set' : 'clear'} but refcount=${v}`, x.at);
  }
  if (opts.repairLeaks) {
    report.leaksFixed = leaksFixed;
    report.leaks -= leaksFixed;
    await storage.flush();
  }
  report.imageEndOffset = (highest + 1) * cs;
  report.totalClusters = Math.ceil(h.size / cs);
  report.allocatedClusters = allocated;
  report.fragmentedClusters = fragmented;
  report.compressedClusters = compressed;
  return report;
}
