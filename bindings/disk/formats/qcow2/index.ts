/**
 * qcow2 (version 3 read/write, version 2 read): the format module the
 * registry loads (see ../types.ts for the contract). docs/qcow2.md.
 * @module
 */
import { VmkitError } from '../../../errors.js';
import { readAt, type Storage } from '../../backends/storage.js';
import type { BlockDevice } from '../../device.js';
import type { FormatCheckOptions, FormatCreateOptions, FormatName, FormatOpenOptions, CheckReport, ImageFormatModule } from '../types.js';
import { Qcow2Device } from './device.js';
import { AUTOCLEAR_DATA_FILE_RAW, encodeQcow2Header, INCOMPAT_COMPRESSION, INCOMPAT_DATA_FILE, INCOMPAT_EXTL2, MAX_BACKING_NAME, MAX_L1_BYTES, QCOW2_MAGIC, readHeader, type Qcow2Header } from './header.js';
import { HI_COPIED, writeEntry } from './metadata.js';

export { Qcow2Device } from './device.js';
export { readHeader } from './header.js';

/**
 * True when `head` starts with the qcow2 magic `QFI\xfb`.
 *
 * @example
 * ```ts
 * probe(new Uint8Array([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3])); // true
 * ```
 */
export function probe(head: Uint8Array): boolean {
  return head.length >= 8 && ((head[0]! << 24) | (head[1]! << 16) | (head[2]! << 8) | head[3]!) >>> 0 === QCOW2_MAGIC;
}

/**
 * Opens a qcow2 image (and, through `opts.openBacking`, its backing chain).
 *
 * @example
 * ```ts
 * const dev = await open(await FileStorage.open('vm.qcow2'), { readOnly: true });
 * ```
 */
export async function open(storage: Storage, opts: FormatOpenOptions = {}): Promise<Qcow2Device> {
  const { header: h, fileSize } = await readHeader(storage);
  const readOnly = opts.readOnly === true || storage.readOnly;
  if (!readOnly && h.version === 2) {
    throw new VmkitError('UNSUPPORTED', `qcow2 ${storage.name}: version 2 images open read-only (qemu-img amend -o compat=1.1 upgrades them)`, { offset: 4, path: storage.name });
  }
  if (h.incompatible & 1n && !readOnly) {
    // Lazy refcounts: the stored refcounts may be stale until QEMU repairs them.
    throw new VmkitError('INVALID_STATE', `qcow2 ${storage.name}: the image is dirty (lazy refcounts); repair it with qemu-img check -r all or open read-only`, { offset: 72, path: storage.name });
  }
  if (h.incompatible & 2n && !readOnly) {
    throw new VmkitError('CORRUPT', `qcow2 ${storage.name}: the image is marked corrupt (open read-only, or repair it)`, { offset: 72, path: storage.name });
  }
  const l1 = await readAt(storage, h.l1TableOffset, h.l1Size * 8);
  let data: Storage | undefined;
  if (h.dataFile !== undefined) {
    checkDataFileName(h.dataFile, storage.name, h.dataFileAt ?? 72);
    if (opts.openDataFile) data = await opts.openDataFile(h.dataFile, readOnly);
    else if (!readOnly) throw new VmkitError('ARG_RANGE', `qcow2 ${storage.name}: its external data file ${h.dataFile} must be opened with it to write (openDataFile)`, { path: storage.name });
  }
  try {
    return await openLayer(storage, h, l1, fileSize, readOnly, opts, data);
  } catch (e) {
    await data?.close().catch(() => {});
    throw e;
  }
}

async function openLayer(storage: Storage, h: Qcow2Header, l1: Uint8Array, fileSize: number, readOnly: boolean, opts: FormatOpenOptions, data: Storage | undefined): Promise<Qcow2Device> {
  let backing: BlockDevice | undefined;
  if (h.backingFile !== undefined && opts.openBacking) {
    const bf = h.backingFormat;
    const fmt = bf === 'qcow2' || bf === 'raw' || bf === 'vmdk' ? (bf as FormatName) : bf === 'vpc' ? 'vhd' : bf === 'vhdx' ? 'vhdx' : undefined;
    if (bf !== undefined && fmt === undefined) {
      throw new VmkitError('UNSUPPORTED', `qcow2 ${storage.name}: backing format ${bf}`, { path: storage.name });
    }
    backing = await opts.openBacking(h.backingFile, fmt);
  }
  return new Qcow2Device(storage, h, l1, fileSize, readOnly, backing, opts.guard, data);
}

/**
 * A data file is any file read as guest data: only files beside the image (or below it), so a
 * crafted image cannot hand its reader /etc/shadow (the rule VMDK extent files follow). QEMU
 * follows any name; `qemu-img create -o data_file=` records the name it is given, so give it one
 * relative to the image.
 */
function checkDataFileName(name: string, image: string, at: number): void {
  if (/^([\\/]|[A-Za-z]:)/.test(name) || name.split(/[\\/]/).includes('..') || name.includes('\0')) {
    throw new VmkitError('UNSUPPORTED', `qcow2 ${image}: external data file ${name} is outside the image's folder`, { offset: at, path: image });
  }
}

/**
 * Creates an empty version 3 image (an overlay when `opts.backing` is set):
 * header, refcount table, refcount blocks and L1 table, each counted once.
 *
 * @example
 * ```ts
 * await create(await FileStorage.create('top.qcow2'), { size: 1 << 30, backing: 'base.qcow2', backingFormat: 'qcow2' });
 * ```
 */
export async function create(storage: Storage, opts: FormatCreateOptions): Promise<void> {
  const cs = opts.clusterSize ?? 65536;
  const clusterBits = Math.log2(cs);
  if (!Number.isInteger(clusterBits) || clusterBits < 9 || clusterBits > 21) throw new VmkitError('ARG_RANGE', `cluster size ${cs} must be a power of two in 512..2 MiB`);
  const ext = opts.extendedL2 === true;
  if (ext && clusterBits < 14) throw new VmkitError('ARG_RANGE', 'extended L2 entries need clusters of 16 KiB or more');
  const size = opts.size;
  if (!Number.isSafeInteger(size) || size < 0 || size % 512 !== 0 || size > 2 ** 52) throw new VmkitError('ARG_RANGE', `qcow2 size ${size} must be a multiple of 512 below 2^52`);
  const l2Entries = cs / (ext ? 16 : 8);
  const l1Size = Math.ceil(size / (cs * l2Entries));
  if (l1Size * 8 > MAX_L1_BYTES) throw new VmkitError('LIMIT', `qcow2: ${size} bytes need an L1 table over 32 MiB; use larger clusters`);
  const l1Clusters = Math.max(1, Math.ceil((l1Size * 8) / cs));
  const bits = opts.refcountBits ?? 16;
  const refOrder = Math.log2(bits);
  if (!Number.isInteger(refOrder) || refOrder < 0 || refOrder > 6) throw new VmkitError('ARG_RANGE', `refcount bits ${bits} must be a power of two in 1..64`);
  const perBlock = (cs * 8) / bits;
  const ct = opts.compressionType ?? 'zlib';
  if (ct !== 'zlib' && ct !== 'zstd') throw new VmkitError('ARG_RANGE', `compressionType must be zlib or zstd, got ${String(ct)}`);
  const dataFile = opts.dataFile;
  const raw = dataFile !== undefined && opts.dataFileRaw === true;
  if (dataFile !== undefined) {
    if (dataFile.length === 0 || new TextEncoder().encode(dataFile).length > MAX_BACKING_NAME) throw new VmkitError('ARG_RANGE', `dataFile: a name of 1..${MAX_BACKING_NAME} bytes`);
    if (!opts.createFile) throw new VmkitError('ARG_RANGE', 'dataFile needs createFile (createImage passes it)');
    if (ext) throw new VmkitError('UNSUPPORTED', 'qcow2: extended L2 entries with an external data file');
    if (raw && opts.backing !== undefined) throw new VmkitError('ARG_RANGE', 'dataFileRaw: a raw data file is the whole disk; it cannot have a backing file');
  } else if (opts.dataFileRaw) throw new VmkitError('ARG_RANGE', 'dataFileRaw needs dataFile');
  // A raw data file's clusters are all allocated up front, at their guest offsets (QEMU's
  // preallocation=metadata, which it forces with data_file_raw): one L2 table per L1 entry.
  const l2Clusters = raw ? l1Size : 0;
  // Header, refcount table, refcount blocks, L1 (and L2): grow until the refcounts cover themselves.
  let rtClusters = 1;
  let rbBlocks = 1;
  for (;;) {
    const total = 1 + rtClusters + rbBlocks + l1Clusters + l2Clusters;
    const nb = Math.ceil(total / perBlock);
    const nt = Math.ceil((nb * 8) / cs);
    if (nb === rbBlocks && nt === rtClusters) break;
    rbBlocks = nb;
    rtClusters = nt;
  }
  const rtOff = cs;
  const rbOff = rtOff + rtClusters * cs;
  const l1Off = rbOff + rbBlocks * cs;
  const l2Off = l1Off + l1Clusters * cs;
  const total = 1 + rtClusters + rbBlocks + l1Clusters + l2Clusters;
  const h: Qcow2Header = {
    version: 3,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits,
    size,
    cryptMethod: 0,
    l1Size,
    l1TableOffset: l1Off,
    refcountTableOffset: rtOff,
    refcountTableClusters: rtClusters,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatible: (ext ? INCOMPAT_EXTL2 : 0n) | (dataFile !== undefined ? INCOMPAT_DATA_FILE : 0n) | (ct === 'zstd' ? INCOMPAT_COMPRESSION : 0n),
    compatible: 0n,
    autoclear: raw ? AUTOCLEAR_DATA_FILE_RAW : 0n,
    refcountOrder: refOrder,
    headerLength: 112,
    compressionType: ct === 'zstd' ? 1 : 0,
    backingFile: opts.backing,
    backingFormat: opts.backing !== undefined ? opts.backingFormat : undefined,
    otherExtensions: [],
    extendedL2: ext,
    dataFile,
    dataFileRaw: raw,
  };
  const img = new Uint8Array(total * cs);
  img.set(encodeQcow2Header(h), 0);
  const dv = new DataView(img.buffer);
  for (let b = 0; b < rbBlocks; b++) dv.setBigUint64(rtOff + b * 8, BigInt(rbOff + b * cs));
  for (let c = 0; c < total; c++) {
    const bi = Math.floor(c / perBlock);
    writeEntry(img.subarray(rbOff + bi * cs, rbOff + (bi + 1) * cs), c % perBlock, bits, 1);
  }
  const guestClusters = Math.ceil(size / cs);
  for (let t = 0; t < l2Clusters; t++) {
    dv.setUint32(l1Off + t * 8, HI_COPIED | Math.floor((l2Off + t * cs) / 2 ** 32));
    dv.setUint32(l1Off + t * 8 + 4, (l2Off + t * cs) % 2 ** 32);
    for (let i = 0; i < l2Entries && t * l2Entries + i < guestClusters; i++) {
      const host = (t * l2Entries + i) * cs;
      dv.setUint32(l2Off + t * cs + i * 8, HI_COPIED | Math.floor(host / 2 ** 32));
      dv.setUint32(l2Off + t * cs + i * 8 + 4, host % 2 ** 32);
    }
  }
  if (dataFile !== undefined) {
    // The data file as QEMU leaves it: the disk's size, zeroes (sparse where the store can be).
    const d = await opts.createFile!(dataFile);
    try {
      await d.truncate(0);
      await d.truncate(size);
      await d.flush();
    } finally {
      await d.close();
    }
  }
  await storage.truncate(0);
  await storage.write(0, img);
}

/**
 * Checks a qcow2 image's metadata as `qemu-img check` does: every cluster's
 * refcount against the references found, entries past the end of the file,
 * misaligned offsets and COPIED flags.
 *
 * @example
 * ```ts
 * const r = await check(await FileStorage.open('vm.qcow2', { readOnly: true }));
 * ```
 */
export async function check(storage: Storage, opts: FormatCheckOptions = {}): Promise<CheckReport> {
  // Loaded when a check runs: opening an image does not need it.
  return (await import('./check.js')).check(storage, opts);
}

/**
 * The qcow2 format module for the registry.
 *
 * @example
 * ```ts
 * if (format.probe(head)) dev = await format.open(storage);
 * ```
 */
export const format: ImageFormatModule = { name: 'qcow2', probe, open, create, check };
