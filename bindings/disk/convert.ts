/**
 * Converting an image (with its backing chain, as the guest sees it) into a
 * new image of any format vmkit writes, as `qemu-img convert`: only data
 * runs of the source are read and written (zero and unallocated runs stay
 * holes), all-zero chunks are skipped, and a VMDK can be made
 * streamOptimized (an OVA's disk).
 * @module
 */
import { VmkitError } from '../errors.js';
import { fileProvider } from './backends/file.js';
import type { StorageProvider } from './backends/storage.js';
import type { BlockDevice } from './device.js';
import { isAllZero } from './_sectors.js';
import { loadFormat, openImage } from './image.js';
import type { FormatName } from './formats/types.js';

/** Options of {@link convertImage}. */
export interface ConvertOptions {
  /** Output format (default qcow2). */
  format?: FormatName;
  /**
   * Format variant: `streamOptimized` (vmdk), `fixed`/`dynamic` (vhd,
   * vhdx); the format's default when absent.
   */
  subformat?: string;
  /** Cluster, grain or block size of the output. */
  clusterSize?: number;
  /** Where images live (default: Node files). */
  provider?: StorageProvider;
}

/** Bytes copied per request. */
const CHUNK = 1 << 20;

/**
 * Copies the guest contents of `src` to `dst` (the same size), data runs
 * only; returns the bytes written.
 *
 * @example
 * ```ts
 * const n = await copyData(await openImage('a.qcow2', { readOnly: true }), await openImage('b.vhdx'));
 * ```
 */
export async function copyData(src: BlockDevice, dst: BlockDevice): Promise<number> {
  if (dst.size !== src.size) throw new VmkitError('ARG_RANGE', `copyData: the destination holds ${dst.size} bytes, the source ${src.size}`);
  const buf = new Uint8Array(CHUNK);
  let written = 0;
  let pos = 0;
  while (pos < src.size) {
    // Skip zero and unallocated runs whole; copy data in chunks of up to 1 MiB however many
    // extents make them up (compressed clusters and grains are one extent each).
    const st = await src.blockStatus(pos, Math.min(src.size - pos, 1 << 30));
    if (st.kind !== 'data') {
      pos += st.length;
      continue;
    }
    let end = pos + st.length;
    while (end - pos < CHUNK && end < src.size) {
      const nx = await src.blockStatus(end, Math.min(src.size - end, CHUNK));
      if (nx.kind !== 'data') break;
      end += nx.length;
    }
    for (let p = pos; p < end; p += CHUNK) {
      const d = buf.subarray(0, Math.min(CHUNK, end - p));
      await src.readInto(p, d);
      if (isAllZero(d)) continue;
      await dst.write(p, d);
      written += d.length;
    }
    pos = end;
  }
  await dst.flush();
  return written;
}

/**
 * Converts the image `from` (its whole chain) to a new image `to`.
 *
 * @example
 * ```ts
 * await convertImage('vm.qcow2', 'vm.vhdx', { format: 'vhdx' });
 * await convertImage('vm.qcow2', 'disk1.vmdk', { format: 'vmdk', subformat: 'streamOptimized' });
 * ```
 */
export async function convertImage(from: string, to: string, opts: ConvertOptions = {}): Promise<{ format: FormatName; size: number; bytesWritten: number }> {
  const provider = opts.provider ?? fileProvider;
  const format = opts.format ?? 'qcow2';
  const sub = opts.subformat;
  const subs: Record<string, readonly string[]> = { vmdk: ['monolithicSparse', 'streamOptimized'], vhd: ['dynamic', 'fixed'], vhdx: ['dynamic', 'fixed'] };
  if (sub !== undefined && !(subs[format] ?? []).includes(sub)) {
    throw new VmkitError('ARG_RANGE', `subformat ${JSON.stringify(sub)} is not one of ${format}'s (${(subs[format] ?? []).join(', ') || 'none'})`);
  }
  const src = await openImage(from, { provider, readOnly: true });
  try {
    if (src.size % 512 !== 0) throw new VmkitError('ARG_RANGE', `${from}: size ${src.size} is not a multiple of 512`);
    const storage = await provider.create(to);
    try {
      if (format === 'vmdk' && sub === 'streamOptimized') {
        const { writeStream } = await import('./formats/vmdk/stream-write.js');
        const n = await writeStream(src, storage, opts.clusterSize ? { grainSize: opts.clusterSize } : {});
        return { format, size: src.size, bytesWritten: n };
      }
      const m = await loadFormat(format);
      await m.create(storage, { size: src.size, ...(opts.clusterSize ? { clusterSize: opts.clusterSize } : {}), ...(sub ? { subformat: sub } : {}) } as Parameters<typeof m.create>[1]);
      await storage.flush();
    } finally {
      await storage.close();
    }
    const dst = await openImage(to, { provider, format });
    try {
      const n = await copyData(src, dst);
      return { format, size: dst.size, bytesWritten: n };
    } finally {
      await dst.close();
    }
  } finally {
    await src.close();
  }
}
