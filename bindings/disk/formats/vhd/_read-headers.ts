/**
 * Reads a VHD's footer, dynamic header and BAT: shared by the format's entry
 * (index.ts) and its check (check.ts), so that neither imports the other.
 * @module
 * @internal
 */
import { VmkitError } from '../../../errors.js';
import { readAt, type Storage } from '../../backends/storage.js';
import { BAT_UNUSED, VHD_DYNAMIC, VHD_DYN_HEADER_SIZE, VHD_FIXED, VHD_FOOTER_SIZE, VHD_MAX_SECTORS, bitmapBytes, hasCookie, parseDynHeader, parseFooter, virtualSize, type VhdDynHeader, type VhdFooter } from './header.js';

/** What {@link readHeaders} found. */
export interface VhdHeaders {
  footer: VhdFooter;
  footerBytes: Uint8Array;
  /** Byte offset the footer was read from (0 for dynamic disks' copy, the end for fixed ones). */
  footerAt: number;
  dyn: VhdDynHeader | undefined;
  bat: Uint32Array | undefined;
  size: number;
  fileSize: number;
  /** First byte past the last block (where the trailing footer is). */
  freeOffset: number;
  /** First byte a block may use (past the headers and the BAT). */
  metaEnd: number;
}

/**
 * Reads and validates the footer, the dynamic header and the BAT of a VHD
 * (the footer copy at offset 0 first, as QEMU, else the one at the end).
 *
 * @example
 * ```ts
 * const { footer, dyn, size } = await readHeaders(storage);
 * ```
 */
export async function readHeaders(storage: Storage): Promise<VhdHeaders> {
  const name = storage.name;
  const fileSize = await storage.size();
  if (fileSize < VHD_FOOTER_SIZE) throw new VmkitError('CORRUPT', `vhd ${name}: ${fileSize} bytes is too small for a footer`, { offset: 0, path: name });
  let footerAt = 0;
  let footerBytes = await readAt(storage, 0, VHD_FOOTER_SIZE);
  if (!hasCookie(footerBytes)) {
    footerAt = fileSize - VHD_FOOTER_SIZE;
    footerBytes = await readAt(storage, footerAt, VHD_FOOTER_SIZE);
  }
  const footer = parseFooter(footerBytes, footerAt, name);
  const size = virtualSize(footer);
  if (size / 512 > VHD_MAX_SECTORS) throw new VmkitError('LIMIT', `vhd ${name}: size ${size} is over 2040 GiB`, { offset: footerAt + 48, path: name });
  if (footer.type === VHD_FIXED) {
    if (footerAt === 0) throw new VmkitError('CORRUPT', `vhd ${name}: a fixed disk with its footer at offset 0`, { offset: 60, path: name });
    if (size > footerAt) throw new VmkitError('CORRUPT', `vhd ${name}: size ${size} is past the data (${footerAt} bytes before the footer)`, { offset: footerAt + 48, path: name });
    return { footer, footerBytes, footerAt, dyn: undefined, bat: undefined, size, fileSize, freeOffset: footerAt, metaEnd: 0 };
  }
  if (footerAt !== 0) {
    throw new VmkitError('CORRUPT', `vhd ${name}: a ${footer.type === VHD_DYNAMIC ? 'dynamic' : 'differencing'} disk without its footer copy at offset 0`, { offset: 0, path: name });
  }
  const dynAt = footer.dataOffset;
  if (dynAt < VHD_FOOTER_SIZE || dynAt + VHD_DYN_HEADER_SIZE > fileSize) {
    throw new VmkitError('CORRUPT', `vhd ${name}: dynamic header offset ${dynAt} is outside the file`, { offset: 16, path: name });
  }
  const dyn = parseDynHeader(await readAt(storage, dynAt, VHD_DYN_HEADER_SIZE), dynAt, name);
  const bs = dyn.blockSize;
  if (Math.ceil(size / bs) > dyn.maxTableEntries) {
    throw new VmkitError('CORRUPT', `vhd ${name}: ${dyn.maxTableEntries} BAT entries cover less than the size ${size}`, { offset: dynAt + 28, path: name });
  }
  const batBytes = dyn.maxTableEntries * 4;
  if (dyn.tableOffset < VHD_FOOTER_SIZE || dyn.tableOffset + batBytes > fileSize) {
    throw new VmkitError('CORRUPT', `vhd ${name}: BAT at ${dyn.tableOffset} (${batBytes} bytes) is outside the file`, { offset: dynAt + 16, path: name });
  }
  const raw = await readAt(storage, dyn.tableOffset, batBytes);
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const bat = new Uint32Array(dyn.maxTableEntries);
  const metaEnd = Math.max(dynAt + VHD_DYN_HEADER_SIZE, dyn.tableOffset + batBytes);
  let freeOffset = Math.ceil((dyn.tableOffset + batBytes) / 512) * 512;
  // Parent locator data sits after the BAT in images Hyper-V and vmkit write: new blocks go past it.
  for (const l of dyn.locators) {
    if (l.platform === '' || l.dataOffset < 0 || l.dataOffset >= fileSize) continue;
    // data_space is sectors in the spec and bytes in Hyper-V's images: the larger reading, within the file.
    const end = Math.ceil((l.dataOffset + Math.max(l.dataLength, l.dataSpace)) / 512) * 512;
    freeOffset = Math.max(freeOffset, Math.min(end, Math.floor(fileSize / 512) * 512 - VHD_FOOTER_SIZE));
  }
  const blockBytes = bitmapBytes(bs) + bs;
  for (let i = 0; i < bat.length; i++) {
    const e = dv.getUint32(i * 4);
    bat[i] = e;
    if (e === BAT_UNUSED) continue;
    // As QEMU: a block reaching past the end means a truncated image.
    if (e * 512 + blockBytes > fileSize) {
      throw new VmkitError('CORRUPT', `vhd ${name}: block ${i} at ${e * 512} reaches past the end of the file (${fileSize}): truncated image`, { offset: dyn.tableOffset + i * 4, path: name });
    }
    freeOffset = Math.max(freeOffset, e * 512 + blockBytes);
  }
  return { footer, footerBytes, footerAt, dyn, bat, size, fileSize, freeOffset, metaEnd };
}
