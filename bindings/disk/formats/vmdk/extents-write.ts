/**
 * Writing VMDKs as `qemu-img create -f vmdk -o subformat=` lays them out:
 * the hosted sparse extent (a monolithicSparse file, or one extent of a
 * twoGbMaxExtentSparse disk), and descriptor files with their extents
 * (`monolithicFlat`, `twoGbMaxExtentFlat`, `twoGbMaxExtentSparse`), plus a
 * writer over such a disk's extents for `convertImage`. docs/vmdk.md.
 *
 * ```
 * NAME.vmdk (text)                      extents beside it, end to end = the disk
 * # Disk DescriptorFile                 monolithicFlat:        NAME-flat.vmdk  (raw, whole disk)
 * createType="twoGbMaxExtentSparse"     twoGbMaxExtentFlat:    NAME-f001.vmdk, NAME-f002.vmdk, … (raw, 2 GiB each)
 * RW 4194304 SPARSE "NAME-s001.vmdk"    twoGbMaxExtentSparse:  NAME-s001.vmdk, … (hosted sparse extents of
 * RW 2097152 SPARSE "NAME-s002.vmdk"                           2 GiB each, no descriptor text inside)
 * ```
 * @module
 */
import { VmkitError } from '../../../errors.js';
import type { Storage } from '../../backends/storage.js';
import { checkRange, type BlockDevice, type ByteOffset } from '../../device.js';
import { CID_NOPARENT, encodeDescriptor, randomCid } from './descriptor.js';
import { encodeVmdkHeader, FLAG_NL_DETECT, FLAG_RGD, FLAG_ZERO_GRAIN, geometry, type VmdkHeader } from './header.js';

/**
 * The descriptor-file layouts vmkit writes.
 *
 * @example
 * ```ts
 * const sub: DescriptorSubformat = 'twoGbMaxExtentSparse';
 * ```
 */
export type DescriptorSubformat = 'monolithicFlat' | 'twoGbMaxExtentFlat' | 'twoGbMaxExtentSparse';

/** Bytes per extent of the split layouts (QEMU's and VMware's 2 GiB). */
export const SPLIT_EXTENT_BYTES: number = 2 ** 31;

/** One extent of a new descriptor disk. */
interface NewExtent {
  file: string;
  sectors: number;
  type: 'FLAT' | 'SPARSE';
}

/**
 * Lays out a hosted sparse extent: header, descriptor area (20 sectors; the
 * text in it when given), redundant grain directory and tables, grain
 * directory and tables, grains from the first grain boundary on — QEMU's
 * `vmdk_init_extent` layout.
 *
 * @example
 * ```ts
 * await writeSparseLayout(storage, { sectors: 2048, grainSize: 65536, zeroedGrain: false });
 * ```
 * @internal
 */
export async function writeSparseLayout(storage: Storage, o: { sectors: number; grainSize: number; zeroedGrain: boolean; text?: Uint8Array }): Promise<void> {
  const grainSize = o.grainSize / 512;
  const h: VmdkHeader = {
    version: o.zeroedGrain ? 2 : 1,
    flags: FLAG_NL_DETECT | FLAG_RGD | (o.zeroedGrain ? FLAG_ZERO_GRAIN : 0),
    capacity: o.sectors,
    grainSize,
    descriptorOffset: 1,
    descriptorSize: 20,
    numGTEsPerGT: 512,
    rgdOffset: 21,
    gdOffset: 0,
    overHead: 0,
    uncleanShutdown: 0,
    compressAlgorithm: 0,
  };
  const g = geometry(h);
  const gdSectors = g.gdBytes / 512;
  const gtSectors = g.gtBytes / 512;
  h.gdOffset = h.rgdOffset + gdSectors + gtSectors * g.gdEntries;
  h.overHead = Math.ceil((h.gdOffset + gdSectors + gtSectors * g.gdEntries) / grainSize) * grainSize;
  await storage.truncate(0);
  await storage.truncate(h.overHead * 512);
  await storage.write(0, encodeVmdkHeader(h));
  if (o.text) await storage.write(512, o.text);
  // Both directories point at their pre-allocated (zeroed) tables, as QEMU and VMware lay them out.
  for (const gdOff of [h.rgdOffset, h.gdOffset]) {
    const dir = new Uint8Array(g.gdBytes);
    const dv = new DataView(dir.buffer);
    for (let i = 0; i < g.gdEntries; i++) dv.setUint32(i * 4, gdOff + gdSectors + i * gtSectors, true);
    await storage.write(gdOff * 512, dir);
  }
}

/** The extents QEMU makes for `subformat` on a disk of `size` bytes whose descriptor is `name`. */
function extentsOf(name: string, subformat: DescriptorSubformat, size: number): NewExtent[] {
  const base = name.replace(/\.vmdk$/i, '');
  if (subformat === 'monolithicFlat') return [{ file: `${base}-flat.vmdk`, sectors: size / 512, type: 'FLAT' }];
  const out: NewExtent[] = [];
  const type = subformat === 'twoGbMaxExtentFlat' ? 'FLAT' : 'SPARSE';
  const letter = type === 'FLAT' ? 'f' : 's';
  // At least one extent, even for an empty disk (QEMU writes one).
  for (let at = 0, i = 1; at < size || i === 1; at += SPLIT_EXTENT_BYTES, i++) {
    out.push({ file: `${base}-${letter}${String(i).padStart(3, '0')}.vmdk`, sectors: Math.min(SPLIT_EXTENT_BYTES, size - at) / 512, type });
  }
  return out;
}

/**
 * Creates a descriptor file (in `storage`) and its extent files (through
 * `createFile`, named as the descriptor names them), as `qemu-img create -f
 * vmdk -o subformat=SUB` does: flat extents sparse files of their size,
 * sparse extents hosted sparse extents with an empty descriptor area.
 *
 * @example
 * ```ts
 * await createDescriptorImage(storage, { size: 8 << 30, subformat: 'twoGbMaxExtentSparse', grainSize: 65536, createFile });
 * ```
 */
export async function createDescriptorImage(
  storage: Storage,
  o: { size: number; subformat: DescriptorSubformat; grainSize: number; createFile: (name: string) => Promise<Storage>; adapterType?: string },
): Promise<void> {
  if (o.subformat !== 'monolithicFlat' && o.subformat !== 'twoGbMaxExtentFlat' && o.subformat !== 'twoGbMaxExtentSparse') {
    throw new VmkitError('ARG_RANGE', `vmdk subformat ${String(o.subformat)} is not one of monolithicSparse, monolithicFlat, twoGbMaxExtentFlat, twoGbMaxExtentSparse`);
  }
  const name = storage.name.split(/[\\/]/).pop() ?? storage.name;
  const extents = extentsOf(name, o.subformat, o.size);
  for (const e of extents) {
    const st = await o.createFile(e.file);
    try {
      if (e.type === 'FLAT') {
        await st.truncate(0);
        await st.truncate(e.sectors * 512);
      } else await writeSparseLayout(st, { sectors: e.sectors, grainSize: o.grainSize, zeroedGrain: false });
      await st.flush();
    } finally {
      await st.close();
    }
  }
  const text = encodeDescriptor({
    cid: randomCid(),
    parentCid: CID_NOPARENT,
    createType: o.subformat,
    sectors: o.size / 512,
    extentFile: name,
    extents: extents.map((e) => `RW ${e.sectors} ${e.type} "${e.file}"${e.type === 'FLAT' ? ' 0' : ''}`),
    ...(o.adapterType ? { adapterType: o.adapterType } : {}),
  });
  await storage.truncate(0);
  await storage.write(0, new TextEncoder().encode(text));
}

/** One extent as the writer holds it. */
interface WriterExtent {
  start: number;
  bytes: number;
  /** A flat extent's file (data at offset 0 on), or a sparse extent's device. */
  flat?: Storage;
  sparse?: BlockDevice;
}

/**
 * Writes a descriptor-file VMDK's extents: each write goes to the extent(s)
 * it covers (raw files at the same relative offset, sparse extents through
 * their device). What `convertImage` writes a new `monolithicFlat` /
 * `twoGbMaxExtent*` disk through; open the disk with `openImage` to read it.
 *
 * @example
 * ```ts
 * const w = await VmdkExtentsWriter.open(storage, (f) => provider.open(provider.resolve(path, f), { readOnly: false }), (s) => vmdk.open(s));
 * await w.write(0, data);
 * await w.close();
 * ```
 */
export class VmdkExtentsWriter {
  readonly size: number;
  readonly alignment = 512;
  private readonly extents: WriterExtent[];
  private closed = false;

  private constructor(size: number, extents: WriterExtent[]) {
    this.size = size;
    this.extents = extents;
  }

  /**
   * Opens the extents the descriptor in `storage` names (FLAT with offset 0 and SPARSE only, as vmkit
   * writes them) through `openFile`, sparse ones as devices through `openSparse`.
   *
   * @example
   * ```ts
   * const w = await VmdkExtentsWriter.open(storage, openFile, openSparse);
   * ```
   */
  static async open(storage: Storage, openFile: (name: string) => Promise<Storage>, openSparse: (s: Storage) => Promise<BlockDevice>): Promise<VmdkExtentsWriter> {
    const { readDescriptorFile } = await import('./extents.js');
    const { descriptor: d } = await readDescriptorFile(storage);
    const out: WriterExtent[] = [];
    let pos = 0;
    try {
      for (const e of d.extents) {
        if ((e.type !== 'FLAT' && e.type !== 'SPARSE') || e.file === undefined || (e.offset ?? 0) !== 0) {
          throw new VmkitError('UNSUPPORTED', `vmdk ${storage.name}: writing ${e.type} extents${e.offset ? ' at an offset' : ''}`, { offset: 0, path: storage.name });
        }
        const st = await openFile(e.file);
        const x: WriterExtent = { start: pos, bytes: e.sectors * 512 };
        if (e.type === 'FLAT') x.flat = st;
        else {
          try {
            x.sparse = await openSparse(st);
          } catch (err) {
            await st.close().catch(() => {});
            throw err;
          }
        }
        out.push(x);
        pos += x.bytes;
      }
    } catch (err) {
      for (const x of out) await (x.flat ?? x.sparse)?.close().catch(() => {});
      throw err;
    }
    return new VmdkExtentsWriter(pos, out);
  }

  /**
   * Writes `data` at `offset`, across extents.
   *
   * @example
   * ```ts
   * await w.write(SPLIT_EXTENT_BYTES - 512, new Uint8Array(1024)); // half in each extent
   * ```
   */
  async write(offset: ByteOffset, data: Uint8Array): Promise<void> {
    checkRange(this, offset, data.length, 'write');
    if (this.closed) throw new VmkitError('INVALID_STATE', 'write: the VMDK extents writer is closed');
    let pos = offset;
    const end = offset + data.length;
    let i = 0;
    while (this.extents[i]!.start + this.extents[i]!.bytes <= pos) i++;
    while (pos < end) {
      const e = this.extents[i++]!;
      const n = Math.min(end, e.start + e.bytes) - pos;
      const d = data.subarray(pos - offset, pos - offset + n);
      if (e.flat) await e.flat.write(pos - e.start, d);
      else await e.sparse!.write(pos - e.start, d);
      pos += n;
    }
  }

  /**
   * Makes every extent durable.
   *
   * @example
   * ```ts
   * await w.flush();
   * ```
   */
  async flush(): Promise<void> {
    for (const e of this.extents) await (e.flat ?? e.sparse)!.flush();
  }

  /**
   * Flushes and closes every extent.
   *
   * @example
   * ```ts
   * await w.close();
   * ```
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    let first: unknown;
    for (const e of this.extents) {
      try {
        if (e.flat) await e.flat.flush();
        await (e.flat ?? e.sparse)!.close();
      } catch (err) {
        first ??= err;
      }
    }
    if (first) throw first;
  }
}
