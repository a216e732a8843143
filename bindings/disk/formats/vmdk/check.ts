/**
 * `check` for VMDK sparse extents: what `qemu-img check` reports for VMDK
 * (grains past the end of the file) plus what VMware's consistency check
 * looks at: grain tables outside the file or over the header and
 * descriptor, grains shared by two entries or overlapping each other or a
 * grain table, and redundant grain tables that disagree with the primary.
 * @module
 */
import { VmkitError } from '../../../errors.js';
import { readAt, type Storage } from '../../backends/storage.js';
import type { CheckReport, FormatCheckOptions } from '../types.js';
import { decodeU32s } from './_grain-tables.js';
import { FLAG_COMPRESS, FLAG_RGD, FLAG_ZERO_GRAIN, geometry } from './header.js';
import { checkStream } from './stream.js';
import { readHeader } from './_read-header.js';

/** Most grains `check` tracks (2^26 × 4 bytes of offsets: 4 TiB of 64 KiB grains). */
const MAX_CHECK_GRAINS = 2 ** 26;

/**
 * Checks a VMDK store (read-only: VMDK has no refcounts, so no leaks to repair).
 *
 * @example
 * ```ts
 * const r = await check(await FileStorage.open('disk.vmdk', { readOnly: true }));
 * console.log(r.corruptions, r.messages);
 * ```
 */
export async function check(storage: Storage, _opts: FormatCheckOptions = {}): Promise<CheckReport> {
  const { header: h, fileSize } = await readHeader(storage);
  if (h.flags & FLAG_COMPRESS) return checkStream(storage, h, fileSize);
  const g = geometry(h);
  const report: CheckReport = { format: 'vmdk', filename: storage.name, corruptions: 0, leaks: 0, checkErrors: 0, messages: [] };
  const corrupt = (message: string, offset?: number): void => {
    report.corruptions++;
    if (report.messages.length < 1000) report.messages.push({ severity: 'corruption', message, ...(offset !== undefined ? { offset } : {}) });
  };
  const metaEnd = Math.max(512, h.descriptorSize > 0 ? (h.descriptorOffset + h.descriptorSize) * 512 : 512);
  const zeroGrain = (h.flags & FLAG_ZERO_GRAIN) !== 0;
  const gd = decodeU32s(await readAt(storage, h.gdOffset * 512, g.gdEntries * 4), g.gdEntries);
  const rgd = h.flags & FLAG_RGD ? decodeU32s(await readAt(storage, h.rgdOffset * 512, g.gdEntries * 4), g.gdEntries) : undefined;
  const n = h.numGTEsPerGT;
  const gtBytes = n * 4;
  // Byte ranges of metadata grains must not overlap: [start, end) per table.
  const meta: [number, number, string][] = [[0, metaEnd, 'header and descriptor']];
  meta.push([h.gdOffset * 512, h.gdOffset * 512 + g.gdEntries * 4, 'grain directory']);
  if (rgd) meta.push([h.rgdOffset * 512, h.rgdOffset * 512 + g.gdEntries * 4, 'redundant grain directory']);
  const tableOk = (sec: number, at: number, what: string): boolean => {
    if (sec * 512 < metaEnd) {
      corrupt(`${what} at ${sec * 512} overlaps the header or descriptor (entry at ${at})`, at);
      return false;
    }
    if (sec * 512 + gtBytes > fileSize) {
      corrupt(`${what} at ${sec * 512} is past the end of the file (entry at ${at})`, at);
      return false;
    }
    meta.push([sec * 512, sec * 512 + gtBytes, what]);
    return true;
  };
  const grainHosts: number[] = [];
  let allocated = 0;
  let fragmented = 0;
  let end = metaEnd;
  for (let i = 0; i < g.gdEntries; i++) {
    const sec = gd[i]!;
    const rsec = rgd?.[i] ?? 0;
    const at = h.gdOffset * 512 + i * 4;
    if (rgd && (sec === 0) !== (rsec === 0)) corrupt(`grain directory entry ${i}: one of the two directories has no table`, at);
    if (sec === 0) continue;
    if (!tableOk(sec, at, `grain table ${i}`)) continue;
    end = Math.max(end, sec * 512 + gtBytes);
    const t = decodeU32s(await readAt(storage, sec * 512, gtBytes), n);
    let r: Uint32Array | undefined;
    if (rsec !== 0 && tableOk(rsec, h.rgdOffset * 512 + i * 4, `redundant grain table ${i}`)) {
      r = decodeU32s(await readAt(storage, rsec * 512, gtBytes), n);
      end = Math.max(end, rsec * 512 + gtBytes);
    }
    let prevHost = -1;
    for (let j = 0; j < n; j++) {
      const e = t[j]!;
      const eAt = sec * 512 + j * 4;
      if (r && r[j] !== e) corrupt(`grain table ${i} entry ${j} is ${e} but the redundant copy says ${r[j]}`, eAt);
      if (e === 0 || (e === 1 && zeroGrain)) continue;
      const grain = i * n + j;
      if (grain >= g.grains) {
        corrupt(`grain table ${i} entry ${j} maps a grain past the capacity`, eAt);
        continue;
      }
      const host = e * 512;
      if (host < metaEnd) {
        corrupt(`grain for guest offset ${grain * g.grainBytes} at ${host} overlaps the header or descriptor (entry at ${eAt})`, eAt);
        continue;
      }
      if (host + g.grainBytes > fileSize) {
        corrupt(`grain for guest offset ${grain * g.grainBytes} at ${host} is past the end of the file (entry at ${eAt})`, eAt);
        continue;
      }
      if (grainHosts.length >= MAX_CHECK_GRAINS) throw new VmkitError('LIMIT', `vmdk ${storage.name}: too many grains to check`, { path: storage.name });
      grainHosts.push(host);
      allocated++;
      if (prevHost >= 0 && host !== prevHost + g.grainBytes) fragmented++;
      prevHost = host;
      end = Math.max(end, host + g.grainBytes);
    }
  }
  // Grains against each other and against metadata: sort and sweep.
  const hosts = Float64Array.from(grainHosts).sort();
  for (let k = 1; k < hosts.length; k++) {
    if (hosts[k]! < hosts[k - 1]! + g.grainBytes) {
      corrupt(
        hosts[k] === hosts[k - 1] ? `grain at ${hosts[k]} is used twice` : `grains at ${hosts[k - 1]} and ${hosts[k]} overlap`,
        hosts[k],
      );
    }
  }
  meta.sort((a, b) => a[0] - b[0]);
  for (let k = 1; k < meta.length; k++) {
    const a = meta[k - 1]!;
    const b = meta[k]!;
    if (b[0] < a[1]) corrupt(`${b[2]} at ${b[0]} overlaps ${a[2]} at ${a[0]}`, b[0]);
  }
  for (const [s, e, what] of meta) {
    // Binary search for a grain overlapping [s, e).
    let lo = 0;
    let hi = hosts.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (hosts[mid]! + g.grainBytes <= s) lo = mid + 1;
      else hi = mid;
    }
    if (lo < hosts.length && hosts[lo]! < e) corrupt(`grain at ${hosts[lo]} overlaps the ${what} at ${s}`, hosts[lo]);
  }
  report.imageEndOffset = Math.max(end, Math.min(h.overHead * 512, fileSize));
  report.totalClusters = g.grains;
  report.allocatedClusters = allocated;
  report.fragmentedClusters = fragmented;
  return report;
}
