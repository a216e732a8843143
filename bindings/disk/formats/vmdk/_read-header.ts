/**
 * The VMDK probe and header reader, shared by the format's entry (index.ts)
 * and its check (check.ts), so that neither imports the other: a sparse
 * extent's header and embedded descriptor, a streamOptimized stream's header
 * (possibly in its footer), or the refusal of a descriptor file here (index.ts
 * opens those through extents.ts).
 * @module
 * @internal
 */
import { VmkitError } from '../../../errors.js';
import { readAt, type Storage } from '../../backends/storage.js';
import { parseDescriptor, type VmdkDescriptor } from './descriptor.js';
import { FLAG_COMPRESS, GD_AT_END, parseVmdkHeader, VMDK_HEADER_SIZE, VMDK_MAGIC, type VmdkHeader } from './header.js';
import { streamHeader } from './stream.js';

/**
 * True when `head` starts with the sparse extent magic `KDMV`, or is a text
 * descriptor (`# Disk DescriptorFile`), which `open` then refuses as
 * UNSUPPORTED rather than letting it pass for a raw image.
 *
 * @example
 * ```ts
 * probe(new TextEncoder().encode('KDMV')); // true
 * ```
 */
export function probe(head: Uint8Array): boolean {
  if (head.length >= 4 && (head[0]! | (head[1]! << 8) | (head[2]! << 16) | (head[3]! << 24)) >>> 0 === VMDK_MAGIC) return true;
  const sig = '# Disk DescriptorFile';
  if (head.length < sig.length) return false;
  for (let i = 0; i < sig.length; i++) if (head[i] !== sig.charCodeAt(i)) return false;
  return true;
}

/**
 * Reads and validates the header and the embedded descriptor of a VMDK store.
 *
 * @example
 * ```ts
 * const { header, descriptor } = await readHeader(storage);
 * console.log(header.capacity * 512, descriptor?.parentFileNameHint);
 * ```
 */
export async function readHeader(storage: Storage): Promise<{ header: VmdkHeader; descriptor: VmdkDescriptor | undefined; fileSize: number }> {
  const fileSize = await storage.size();
  const head = await readAt(storage, 0, Math.min(fileSize, VMDK_HEADER_SIZE));
  if (probe(head) && head[0] === 0x23) {
    throw new VmkitError('UNSUPPORTED', `vmdk ${storage.name}: descriptor files with separate extents (only monolithicSparse)`, { offset: 0, path: storage.name });
  }
  // streamOptimized (compressed grains, maybe a directory in the footer): stream.ts reads its header.
  const hv = head.length >= VMDK_HEADER_SIZE ? new DataView(head.buffer, head.byteOffset, VMDK_HEADER_SIZE) : undefined;
  const isStream = hv !== undefined && hv.getUint32(0, true) === VMDK_MAGIC && ((hv.getUint32(8, true) & FLAG_COMPRESS) !== 0 || hv.getBigUint64(56, true) === GD_AT_END);
  const header = isStream ? await streamHeader(storage, head, fileSize) : parseVmdkHeader(head, fileSize, storage.name);
  let descriptor: VmdkDescriptor | undefined;
  if (header.descriptorSize > 0) {
    const at = header.descriptorOffset * 512;
    const raw = await readAt(storage, at, Math.min(header.descriptorSize * 512, fileSize - at));
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(raw);
    } catch {
      throw new VmkitError('CORRUPT', `vmdk ${storage.name}: the descriptor is not UTF-8 text`, { offset: at, path: storage.name });
    }
    descriptor = parseDescriptor(text, at, storage.name);
    if (descriptor.createType !== undefined && !/^(monolithicSparse|vmfsSparse|twoGbMaxExtentSparse|streamOptimized)$/.test(descriptor.createType)) {
      throw new VmkitError('UNSUPPORTED', `vmdk ${storage.name}: createType ${descriptor.createType} in a sparse extent`, { offset: at, path: storage.name });
    }
    if (descriptor.extents.length > 1) {
      throw new VmkitError('UNSUPPORTED', `vmdk ${storage.name}: ${descriptor.extents.length} extents (only monolithicSparse)`, { offset: at, path: storage.name });
    }
  }
  return { header, descriptor, fileSize };
}
