/**
 * VMDK monolithicSparse (hosted sparse extent, versions 1–3; VMware's delta
 * disks): the format module the registry loads (see ../types.ts for the
 * contract). docs/vmdk.md.
 * @module
 */
import { VmkitError } from '../../../errors.js';
import { readAt, type Storage } from '../../backends/storage.js';
import type { BlockDevice } from '../../device.js';
import type { CheckReport, FormatCheckOptions, FormatCreateOptions, FormatOpenOptions, ImageFormatModule } from '../types.js';
import { check as checkVmdk } from './check.js';
import { CID_NOPARENT, encodeDescriptor, randomCid, withCid, type VmdkDescriptor } from './descriptor.js';
import { decodeU32s } from './_grain-tables.js';
import { VmdkDevice } from './device.js';
import { FLAG_COMPRESS, FLAG_RGD, geometry, type VmdkHeader } from './header.js';
import { createDescriptorImage, writeSparseLayout, type DescriptorSubformat } from './extents-write.js';
import { VmdkStreamDevice } from './stream.js';
import { openExtents, VmdkExtentsDevice } from './extents.js';

import { probe, readHeader } from './_read-header.js';

export { probe, readHeader } from './_read-header.js';
export { VmdkDevice } from './device.js';
export { VmdkStreamDevice } from './stream.js';
export { VmdkExtentsDevice } from './extents.js';
export { writeStream, type WriteStreamOptions } from './stream-write.js';


/**
 * Opens a monolithicSparse VMDK (and, through `opts.openBacking`, the
 * parent named by `parentFileNameHint`). A delta whose `parentCID` differs
 * from its parent's CID (the parent changed after the delta was made) is
 * refused with INTEGRITY, as VMware and QEMU refuse it.
 *
 * @example
 * ```ts
 * const dev = await open(await FileStorage.open('delta.vmdk'), { readOnly: true });
 * ```
 */
export async function open(storage: Storage, opts: FormatOpenOptions = {}): Promise<VmdkDevice | VmdkStreamDevice | VmdkExtentsDevice> {
  // A text descriptor with separate extent files (monolithicFlat, vmfs, twoGbMaxExtent*): extents.ts.
  if ((await storage.size()) >= 21 && probe(await readAt(storage, 0, 21)) && (await readAt(storage, 0, 1))[0] === 0x23) return openExtents(storage, opts);
  const { header: h, descriptor: d, fileSize } = await readHeader(storage);
  if (h.flags & FLAG_COMPRESS) return openStream(storage, h, d, fileSize, opts);
  const readOnly = opts.readOnly === true || storage.readOnly;
  if (!readOnly && h.version === 3) {
    // QEMU writes version 3 only read-only too: its extra semantics are not documented.
    throw new VmkitError('UNSUPPORTED', `vmdk ${storage.name}: version 3 images open read-only`, { offset: 4, path: storage.name });
  }
  const g = geometry(h);
  const gd = decodeU32s(await readAt(storage, h.gdOffset * 512, g.gdEntries * 4), g.gdEntries);
  const rgd = h.flags & FLAG_RGD ? decodeU32s(await readAt(storage, h.rgdOffset * 512, g.gdEntries * 4), g.gdEntries) : undefined;
  let backing: BlockDevice | undefined;
  if (d?.parentFileNameHint !== undefined && opts.openBacking) {
    backing = await opts.openBacking(d.parentFileNameHint, 'vmdk');
    try {
      const parent = backing as Partial<VmdkDevice>;
      if (backing.format === 'vmdk' && parent.cid !== undefined && parent.cid !== d.parentCid) {
        throw new VmkitError(
          'INTEGRITY',
          `vmdk ${storage.name}: parentCID ${d.parentCid.toString(16)} does not match the CID ${parent.cid.toString(16)} of ${d.parentFileNameHint} (the parent changed after this delta was made)`,
          { path: storage.name },
        );
      }
      if (backing.size !== h.capacity * 512) {
        throw new VmkitError('CORRUPT', `vmdk ${storage.name}: capacity ${h.capacity * 512} differs from the parent's ${backing.size}`, { offset: 12, path: storage.name });
      }
    } catch (e) {
      await backing.close().catch(() => {});
      throw e;
    }
  }
  return new VmdkDevice(storage, h, d, gd, rgd, fileSize, readOnly, backing, opts.guard);
}

/** Opens a streamOptimized VMDK (read-only whatever `opts.readOnly` says: see stream.ts). */
async function openStream(storage: Storage, h: VmdkHeader, d: VmdkDescriptor | undefined, fileSize: number, opts: FormatOpenOptions): Promise<VmdkStreamDevice> {
  const g = geometry(h);
  if (h.gdOffset < 1 || h.gdOffset * 512 + g.gdEntries * 4 > fileSize) {
    throw new VmkitError('CORRUPT', `vmdk ${storage.name}: grain directory at ${h.gdOffset * 512} is outside the file`, { offset: 56, path: storage.name });
  }
  const gd = decodeU32s(await readAt(storage, h.gdOffset * 512, g.gdEntries * 4), g.gdEntries);
  let backing: BlockDevice | undefined;
  if (d?.parentFileNameHint !== undefined && opts.openBacking) backing = await opts.openBacking(d.parentFileNameHint, 'vmdk');
  if (backing && backing.size !== h.capacity * 512) {
    await backing.close().catch(() => {});
    throw new VmkitError('CORRUPT', `vmdk ${storage.name}: capacity ${h.capacity * 512} differs from the parent's ${backing.size}`, { offset: 12, path: storage.name });
  }
  return new VmdkStreamDevice(storage, h, d, gd, fileSize, backing);
}

/** Options of {@link create} beyond the registry's. */
export interface VmdkCreateOptions extends FormatCreateOptions {
  /** Version 2 with zeroed grains (GTE 1 reads as zeroes; QEMU's `zeroed_grain=on`). */
  zeroedGrain?: boolean;
  /** Adapter type recorded in the disk database (default ide). */
  adapterType?: 'ide' | 'buslogic' | 'lsilogic' | 'legacyESX';
  /**
   * `monolithicSparse` (default: one file), or a descriptor file with extent
   * files beside it as `qemu-img create -o subformat=` makes them:
   * `monolithicFlat` (`NAME-flat.vmdk`), `twoGbMaxExtentFlat`
   * (`NAME-f001.vmdk`, … of 2 GiB) or `twoGbMaxExtentSparse` (`NAME-s001.vmdk`, …).
   */
  subformat?: 'monolithicSparse' | DescriptorSubformat;
}

/**
 * Creates an empty monolithicSparse VMDK laid out as QEMU lays it out:
 * header, descriptor (20 sectors), redundant grain directory and tables,
 * grain directory and tables, grains from the first grain boundary on. With
 * `opts.backing` it is a delta: `parentFileNameHint` names the parent and
 * `parentCID` is the parent's CID (`opts.backingDevice`, which must be a
 * VMDK of the same size).
 *
 * @example
 * ```ts
 * await create(await FileStorage.create('base.vmdk'), { size: 1 << 30 });
 * ```
 */
export async function create(storage: Storage, opts: VmdkCreateOptions): Promise<void> {
  const size = opts.size;
  if (!Number.isSafeInteger(size) || size < 0 || size % 512 !== 0) throw new VmkitError('ARG_RANGE', `vmdk size ${size} must be a non-negative multiple of 512`);
  if (size > 2 ** 41) throw new VmkitError('LIMIT', `vmdk size ${size}: monolithicSparse images hold at most 2 TiB (32-bit sector offsets)`);
  const gs = opts.clusterSize ?? 65536;
  if (!Number.isSafeInteger(gs) || gs < 4096 || gs > 1 << 20 || (gs & (gs - 1)) !== 0) {
    throw new VmkitError('ARG_RANGE', `vmdk grain size ${gs} must be a power of two in 4 KiB..1 MiB`);
  }
  if (opts.extendedL2) throw new VmkitError('UNSUPPORTED', 'vmdk has no extended L2 entries');
  let parentCid = CID_NOPARENT;
  if (opts.backing !== undefined) {
    if (opts.backingFormat !== undefined && opts.backingFormat !== 'vmdk') {
      throw new VmkitError('UNSUPPORTED', `a vmdk delta needs a vmdk parent, not ${opts.backingFormat}`, { path: storage.name });
    }
    const b = opts.backingDevice as (BlockDevice & { cid?: number }) | undefined;
    if (b) {
      if (b.format !== 'vmdk') throw new VmkitError('UNSUPPORTED', `a vmdk delta needs a vmdk parent, not ${b.format}`, { path: storage.name });
      if (b.size !== size) throw new VmkitError('ARG_RANGE', `a vmdk delta has its parent's size (${b.size}), not ${size}`, { path: storage.name });
      if (b.cid !== undefined) parentCid = b.cid;
    }
  }
  const name = storage.name.split(/[\\/]/).pop() ?? storage.name;
  const sub = opts.subformat ?? 'monolithicSparse';
  if (sub !== 'monolithicSparse') {
    if (opts.backing !== undefined) throw new VmkitError('UNSUPPORTED', `vmdk: a ${sub} delta (vmkit makes monolithicSparse deltas)`, { path: storage.name });
    if (!opts.createFile) throw new VmkitError('ARG_RANGE', `vmdk ${sub}: its extent files need createFile (createImage passes it)`);
    await createDescriptorImage(storage, { size, subformat: sub, grainSize: gs, createFile: opts.createFile, ...(opts.adapterType ? { adapterType: opts.adapterType } : {}) });
    return;
  }
  const text = new TextEncoder().encode(
    encodeDescriptor({
      cid: randomCid(),
      parentCid,
      createType: 'monolithicSparse',
      ...(opts.backing !== undefined ? { parentFileNameHint: opts.backing } : {}),
      sectors: size / 512,
      extentFile: name,
      ...(opts.adapterType ? { adapterType: opts.adapterType } : {}),
    }),
  );
  if (text.length > 20 * 512) throw new VmkitError('ARG_RANGE', 'vmdk: the backing file name is too long for the descriptor');
  await writeSparseLayout(storage, { sectors: size / 512, grainSize: gs, zeroedGrain: opts.zeroedGrain === true, text });
}

/**
 * Re-links a delta to its parent: sets the delta's `parentCID` to `cid` (the
 * parent's CID now), leaving every other descriptor line as written. Use it
 * only when the parent was written with content the delta hides anyway — a
 * consolidation that copies the delta's own grains into the parent — so the
 * chain reads the same; VMware's consolidation does the same. Without it, a
 * delta whose parent changed opens with INTEGRITY (in vmkit and in QEMU).
 *
 * @example
 * ```ts
 * const { descriptor } = await readHeader(baseStorage);
 * await setParentCid(deltaStorage, descriptor!.cid!);
 * ```
 */
export async function setParentCid(storage: Storage, cid: number): Promise<void> {
  if (!Number.isInteger(cid) || cid < 0 || cid > 0xffff_ffff) throw new VmkitError('ARG_RANGE', `CID ${cid} is not a 32-bit value`);
  const { header: h, descriptor: d } = await readHeader(storage);
  if (!d || h.descriptorSize === 0) throw new VmkitError('UNSUPPORTED', `vmdk ${storage.name}: no embedded descriptor`, { path: storage.name });
  const text = new TextEncoder().encode(withCid(d, cid, 'parentCID'));
  const area = h.descriptorSize * 512;
  if (text.length > area) throw new VmkitError('LIMIT', `vmdk ${storage.name}: the descriptor no longer fits its ${area} bytes`, { offset: h.descriptorOffset * 512, path: storage.name });
  const buf = new Uint8Array(area);
  buf.set(text);
  await storage.write(h.descriptorOffset * 512, buf);
}

/**
 * Checks a VMDK's metadata: grain tables and grains outside the file or over
 * the header, grains used twice or overlapping, and redundant tables that
 * disagree with the primary ones.
 *
 * @example
 * ```ts
 * const r = await check(await FileStorage.open('disk.vmdk', { readOnly: true }));
 * ```
 */
export function check(storage: Storage, opts: FormatCheckOptions = {}): Promise<CheckReport> {
  return checkVmdk(storage, opts);
}

/**
 * The VMDK format module for the registry.
 *
 * @example
 * ```ts
 * if (format.probe(head)) dev = await format.open(storage);
 * ```
 */
export const format: ImageFormatModule = { name: 'vmdk', probe, open, create, check };
