/**
 * VMDK descriptor files with separate extents: `monolithicFlat`, `vmfs`
 * (ESXi: one FLAT/VMFS extent), `twoGbMaxExtentFlat` and
 * `twoGbMaxExtentSparse` (VMware Workstation's split disks), and deltas of
 * them (`parentFileNameHint`). The disk is the extents end to end: FLAT and
 * VMFS extents are byte ranges of raw files, SPARSE extents hosted sparse
 * extent files (read by the monolithicSparse code), ZERO extents zeroes.
 * Extent files are opened through the registry, relative to the descriptor.
 * Read-only. docs/vmdk.md.
 * @module
 */
import { VmkitError } from '../../../errors.js';
import { readAt, type Storage } from '../../backends/storage.js';
import { checkRange, type BlockDevice, type BlockExtent, type ByteLength, type ByteOffset } from '../../device.js';
import { _backingStatus, _readBacking } from '../_device.js';
import { _ReadOnlyLayer } from '../_layer.js';
import type { FormatOpenOptions, ImageDevice, ImageInfo } from '../types.js';
import { parseDescriptor, type VmdkDescriptor } from './descriptor.js';

/** Largest descriptor file vmkit reads. */
const MAX_DESCRIPTOR_FILE: number = 1 << 20;

/** One extent as opened. @internal */
interface Extent {
  /** Guest byte offset of its first byte. */
  start: number;
  bytes: number;
  kind: 'flat' | 'sparse' | 'zero';
  dev: BlockDevice | undefined;
  /** Byte offset into a flat extent's file. */
  fileOffset: number;
}

/**
 * Reads and parses a descriptor file (text starting `# Disk DescriptorFile`).
 *
 * @example
 * ```ts
 * const d = await readDescriptorFile(storage);
 * console.log(d.createType, d.extents.length);
 * ```
 */
export async function readDescriptorFile(storage: Storage): Promise<{ descriptor: VmdkDescriptor; text: string }> {
  const size = await storage.size();
  if (size > MAX_DESCRIPTOR_FILE) throw new VmkitError('LIMIT', `vmdk ${storage.name}: a descriptor file of ${size} bytes`, { offset: 0, path: storage.name });
  const raw = await readAt(storage, 0, size);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(raw);
  } catch {
    throw new VmkitError('CORRUPT', `vmdk ${storage.name}: the descriptor is not UTF-8 text`, { offset: 0, path: storage.name });
  }
  return { descriptor: parseDescriptor(text, 0, storage.name), text };
}

/**
 * Opens a descriptor file and its extents (and parent) through
 * `opts.openBacking`. Without it (`openImage(…, { noBacking: true })`, for
 * `info`) the device knows its size and descriptor but refuses reads.
 *
 * @example
 * ```ts
 * const dev = await openExtents(storage, opts);
 * ```
 */
export async function openExtents(storage: Storage, opts: FormatOpenOptions): Promise<VmdkExtentsDevice> {
  const { descriptor: d, text } = await readDescriptorFile(storage);
  const lineAt = (type: string, file: string | undefined): number => {
    const i = text.indexOf(file !== undefined ? `"${file}"` : type);
    return i < 0 ? 0 : text.lastIndexOf('\n', i) + 1;
  };
  const ct = d.createType;
  if (ct === undefined || !/^(monolithicFlat|vmfs|twoGbMaxExtentFlat|twoGbMaxExtentSparse|monolithicSparse|vmfsSparse|vmfsThin|custom)$/.test(ct)) {
    throw new VmkitError('UNSUPPORTED', `vmdk ${storage.name}: createType ${ct ?? '(none)'} in a descriptor file`, { offset: Math.max(0, text.indexOf('createType')), path: storage.name });
  }
  if (d.extents.length === 0) throw new VmkitError('CORRUPT', `vmdk ${storage.name}: a descriptor file with no extent`, { offset: 0, path: storage.name });
  for (const e of d.extents) {
    if (!/^(FLAT|VMFS|SPARSE|ZERO)$/.test(e.type)) {
      throw new VmkitError('UNSUPPORTED', `vmdk ${storage.name}: ${e.type} extents (${e.type === 'VMFSSPARSE' ? "ESXi's COWD delta" : e.type === 'SESPARSE' ? "ESXi's SEsparse delta" : 'unknown kind'})`, {
        offset: lineAt(e.type, e.file),
        path: storage.name,
      });
    }
    if (e.type !== 'ZERO' && e.file === undefined) throw new VmkitError('CORRUPT', `vmdk ${storage.name}: a ${e.type} extent without a file`, { offset: lineAt(e.type, undefined), path: storage.name });
    // A FLAT extent is any file read as guest data: only files beside the descriptor (or below it),
    // so a crafted descriptor cannot hand its reader /etc/shadow (VMware and ESXi write plain names).
    if (e.file !== undefined && (/^([\\/]|[A-Za-z]:)/.test(e.file) || e.file.split(/[\\/]/).includes('..'))) {
      throw new VmkitError('UNSUPPORTED', `vmdk ${storage.name}: extent file ${e.file} is outside the descriptor's folder`, { offset: lineAt(e.type, e.file), path: storage.name });
    }
  }
  const extents: Extent[] = [];
  let pos = 0;
  let backing: BlockDevice | undefined;
  const opened: BlockDevice[] = [];
  try {
    for (const e of d.extents) {
      const bytes = e.sectors * 512;
      // Every byte offset of the disk a safe integer (node:fs and the block-device API refuse others).
      if (!Number.isSafeInteger(pos + bytes) || !Number.isSafeInteger((e.offset ?? 0) * 512 + bytes)) {
        throw new VmkitError('LIMIT', `vmdk ${storage.name}: extents of more than ${Number.MAX_SAFE_INTEGER} bytes`, { offset: lineAt(e.type, e.file), path: storage.name });
      }
      let dev: BlockDevice | undefined;
      const kind = e.type === 'ZERO' ? 'zero' : e.type === 'SPARSE' ? 'sparse' : 'flat';
      const fileOffset = (e.offset ?? 0) * 512;
      if (kind !== 'zero' && opts.openBacking) {
        dev = await opts.openBacking(e.file!, kind === 'sparse' ? 'vmdk' : 'raw');
        opened.push(dev);
        const need = kind === 'sparse' ? bytes : fileOffset + bytes;
        if (dev.size < need) {
          throw new VmkitError('CORRUPT', `vmdk ${storage.name}: extent ${e.file} holds ${dev.size} bytes, the descriptor needs ${need}`, { offset: lineAt(e.type, e.file), path: storage.name });
        }
      }
      extents.push({ start: pos, bytes, kind, dev, fileOffset });
      pos += bytes;
    }
    if (d.parentFileNameHint !== undefined && opts.openBacking) {
      backing = await opts.openBacking(d.parentFileNameHint, 'vmdk');
      opened.push(backing);
      const pc = (backing as { cid?: number }).cid;
      if (backing.format === 'vmdk' && pc !== undefined && pc !== d.parentCid) {
        throw new VmkitError('INTEGRITY', `vmdk ${storage.name}: parentCID ${d.parentCid.toString(16)} does not match the CID ${pc.toString(16)} of ${d.parentFileNameHint} (the parent changed after this delta was made)`, {
          offset: Math.max(0, text.indexOf('parentCID')),
          path: storage.name,
        });
      }
      if (backing.size !== pos) throw new VmkitError('CORRUPT', `vmdk ${storage.name}: size ${pos} differs from the parent's ${backing.size}`, { offset: 0, path: storage.name });
    }
  } catch (err) {
    for (const o of opened) await o.close().catch(() => {});
    throw err;
  }
  return new VmdkExtentsDevice(storage, d, extents, pos, backing, opts.openBacking !== undefined);
}

/**
 * A VMDK made of a descriptor file and extent files, read-only.
 *
 * @example
 * ```ts
 * const dev = await openImage('esxi-disk.vmdk'); // descriptor + esxi-disk-flat.vmdk
 * const mbr = await dev.read(0, 512);
 * ```
 */
export class VmdkExtentsDevice extends _ReadOnlyLayer {
  readonly format = 'vmdk' as const;
  readonly descriptor: VmdkDescriptor;
  private readonly extents: Extent[];
  private readonly withExtents: boolean;

  constructor(storage: Storage, d: VmdkDescriptor, extents: Extent[], size: number, backing: BlockDevice | undefined, withExtents: boolean) {
    super({ storage, size, backing, backingFile: d.parentFileNameHint, backingFormat: d.parentFileNameHint !== undefined ? 'vmdk' : undefined });
    this.descriptor = d;
    this.extents = extents;
    this.withExtents = withExtents;
  }

  /** The content ID (a delta made on this disk records it). */
  get cid(): number | undefined {
    return this.descriptor.cid;
  }

  private extentAt(pos: number): Extent {
    if (!this.withExtents) throw new VmkitError('UNSUPPORTED', `vmdk ${this.storage.name}: opened without its extent files (noBacking)`, { path: this.storage.name });
    let lo = 0;
    let hi = this.extents.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.extents[mid]!.start <= pos) lo = mid;
      else hi = mid - 1;
    }
    return this.extents[lo]!;
  }

  /**
   * Reads `dst.length` bytes at `offset` into `dst`, across extents.
   *
   * @example
   * ```ts
   * await dev.readInto(0, new Uint8Array(1 << 20));
   * ```
   */
  async readInto(offset: ByteOffset, dst: Uint8Array): Promise<void> {
    checkRange(this, offset, dst.length, 'read');
    this.checkOpen('read');
    let pos = offset;
    const end = offset + dst.length;
    while (pos < end) {
      const e = this.extentAt(pos);
      const n = Math.min(end, e.start + e.bytes) - pos;
      const d = dst.subarray(pos - offset, pos - offset + n);
      const rel = pos - e.start;
      if (e.kind === 'zero') d.fill(0);
      else if (e.kind === 'flat') await e.dev!.readInto(e.fileOffset + rel, d);
      else {
        await e.dev!.readInto(rel, d);
        // A sparse extent's unallocated grains are the parent's (the extent was opened alone).
        if (this.backing) {
          let p = 0;
          while (p < n) {
            const st = await e.dev!.blockStatus(rel + p, n - p);
            if (st.kind === 'unallocated') await _readBacking(this.backing, pos + p, d.subarray(p, p + st.length));
            p += st.length;
          }
        }
      }
      pos += n;
    }
  }

  /**
   * Status of the run starting at `offset`, within one extent (host
   * offsets are left out: they are in the extent files).
   *
   * @example
   * ```ts
   * const e = await dev.blockStatus(0, dev.size);
   * ```
   */
  async blockStatus(offset: ByteOffset, length: ByteLength): Promise<BlockExtent> {
    checkRange(this, offset, length, 'blockStatus');
    if (length === 0) throw new VmkitError('ARG_RANGE', 'blockStatus: length must be > 0', { offset });
    const e = this.extentAt(offset);
    const n = Math.min(length, e.start + e.bytes - offset);
    if (e.kind === 'zero') return { offset, length: n, kind: 'zero', depth: 0 };
    if (e.kind === 'flat') return { offset, length: n, kind: 'data', depth: 0 };
    const st = await e.dev!.blockStatus(offset - e.start, n);
    if (st.kind === 'unallocated') return _backingStatus(this.backing, offset, st.length);
    return { offset, length: st.length, kind: st.kind, depth: 0, ...(st.compressed ? { compressed: true } : {}) };
  }

  protected refusal(op: string): VmkitError {
    return new VmkitError('UNSUPPORTED', `${op}: ${this.storage.name} is a VMDK with separate extent files, which vmkit reads only`, { path: this.storage.name });
  }

  /**
   * Facts for `vmkit disk info`.
   *
   * @example
   * ```ts
   * (await dev.info()).specific?.createType; // 'twoGbMaxExtentSparse'
   * ```
   */
  async info(): Promise<ImageInfo> {
    let allocated = 0;
    for (const e of this.extents) {
      if (e.kind === 'flat') allocated += e.bytes;
      else if (e.kind === 'sparse' && e.dev) allocated += (await (e.dev as ImageDevice).info()).allocatedBytes;
    }
    const specific: Record<string, string | number | boolean> = { createType: this.descriptor.createType ?? '', extents: this.extents.length };
    if (this.descriptor.cid !== undefined) specific.cid = this.descriptor.cid.toString(16).padStart(8, '0');
    return this.layerInfo({ allocatedBytes: allocated, specific });
  }

  /**
   * Closes the descriptor, the extent files and the parent.
   *
   * @example
   * ```ts
   * await dev.close();
   * ```
   */
  override async close(): Promise<void> {
    if (this.closed) return;
    for (const e of this.extents) await e.dev?.close().catch(() => {});
    await super.close();
  }
}
