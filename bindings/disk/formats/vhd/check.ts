/**
 * `check` for VHD (QEMU has none for `vpc`): the footer at the end agrees
 * with the copy at offset 0, every BAT entry points inside the file past
 * the headers and the BAT, and no two blocks overlap each other or a parent
 * locator's data.
 * @module
 */
import { readAt, type Storage } from '../../backends/storage.js';
import type { CheckReport, FormatCheckOptions } from '../types.js';
import { BAT_UNUSED, bitmapBytes, VHD_FOOTER_SIZE } from './header.js';
import { readHeaders } from './_read-headers.js';

/**
 * Checks a VHD store (read-only: nothing to repair).
 *
 * @example
 * ```ts
 * const r = await check(await FileStorage.open('disk.vhd', { readOnly: true }));
 * console.log(r.corruptions, r.messages);
 * ```
 */
export async function check(storage: Storage, _opts: FormatCheckOptions = {}): Promise<CheckReport> {
  const h = await readHeaders(storage);
  const report: CheckReport = { format: 'vhd', filename: storage.name, corruptions: 0, leaks: 0, checkErrors: 0, messages: [] };
  const corrupt = (message: string, offset?: number): void => {
    report.corruptions++;
    if (report.messages.length < 1000) report.messages.push({ severity: 'corruption', message, ...(offset !== undefined ? { offset } : {}) });
  };
  if (!h.dyn || !h.bat) {
    report.imageEndOffset = h.fileSize;
    return report;
  }
  const tail = await readAt(storage, h.fileSize - VHD_FOOTER_SIZE, VHD_FOOTER_SIZE);
  if (h.fileSize - VHD_FOOTER_SIZE < h.freeOffset) corrupt(`the last block ends at ${h.freeOffset}, over the trailing footer`, h.fileSize - VHD_FOOTER_SIZE);
  else if (!tail.every((x, i) => x === h.footerBytes[i])) corrupt(`the footer at ${h.fileSize - VHD_FOOTER_SIZE} differs from its copy at 0`, h.fileSize - VHD_FOOTER_SIZE);
  const blockBytes = bitmapBytes(h.dyn.blockSize) + h.dyn.blockSize;
  const used: [number, number, string][] = [];
  for (const l of h.dyn.locators) {
    if (l.platform !== '' && l.dataOffset >= 0 && l.dataLength > 0) used.push([l.dataOffset, l.dataOffset + l.dataLength, `parent locator ${l.platform}`]);
  }
  let allocated = 0;
  let fragmented = 0;
  let prev = -1;
  for (let i = 0; i < h.bat.length; i++) {
    const e = h.bat[i]!;
    if (e === BAT_UNUSED) continue;
    const at = h.dyn.tableOffset + i * 4;
    const host = e * 512;
    if (host < h.metaEnd) {
      corrupt(`block ${i} at ${host} overlaps the headers or the BAT (entry at ${at})`, at);
      continue;
    }
    if (i * h.dyn.blockSize >= h.size) corrupt(`BAT entry ${i} maps a block past the size`, at);
    allocated++;
    if (prev >= 0 && host !== prev + blockBytes) fragmented++;
    prev = host;
    used.push([host, host + blockBytes, `block ${i}`]);
  }
  used.sort((a, b) => a[0] - b[0]);
  for (let k = 1; k < used.length; k++) {
    const a = used[k - 1]!;
    const b = used[k]!;
    if (b[0] < a[1]) corrupt(`${b[2]} at ${b[0]} overlaps ${a[2]} at ${a[0]}`, b[0]);
  }
  report.imageEndOffset = h.freeOffset + VHD_FOOTER_SIZE;
  report.totalClusters = Math.ceil(h.size / h.dyn.blockSize);
  report.allocatedClusters = allocated;
  report.fragmentedClusters = fragmented;
  return report;
}
