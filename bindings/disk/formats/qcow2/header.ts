/**
 * The qcow2 header (version 2 and 3) and its extensions: parsing with every
 * bound checked against the file, and encoding for create and for changing
 * the backing file. Layout and field meanings: QEMU's docs/interop/qcow2.txt
 * (see docs/qcow2.md). All numbers are big-endian.
 * @module
 */
import { VmkitError } from '../../../errors.js';
import { u64ToOffset } from '../../device.js';
import { readAt, type Storage } from '../../backends/storage.js';

/** "QFI\xfb". */
export const QCOW2_MAGIC: number = 0x514649fb;
/** Header extension types. */
export const EXT_END: number = 0;
export const EXT_BACKING_FORMAT: number = 0xe2792aca;
export const EXT_FEATURE_TABLE: number = 0x6803f857;
export const EXT_BITMAPS: number = 0x23852875;
export const EXT_CRYPTO: number = 0x0537be77;
export const EXT_DATA_FILE: number = 0x44415441;

/** Incompatible feature bits. */
export const INCOMPAT_DIRTY: bigint = 1n << 0n;
export const INCOMPAT_CORRUPT: bigint = 1n << 1n;
export const INCOMPAT_DATA_FILE: bigint = 1n << 2n;
export const INCOMPAT_COMPRESSION: bigint = 1n << 3n;
export const INCOMPAT_EXTL2: bigint = 1n << 4n;
const INCOMPAT_KNOWN: bigint = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
/** Autoclear bit 0: bitmaps extension is consistent. */
export const AUTOCLEAR_BITMAPS: bigint = 1n << 0n;
/** Autoclear bit 1: the external data file reads as a raw image (guest offset = host offset, always allocated). */
export const AUTOCLEAR_DATA_FILE_RAW: bigint = 1n << 1n;

/** Largest L1 table QEMU accepts (32 MiB), and refcount table (8 MiB). */
export const MAX_L1_BYTES: number = 32 << 20;
export const MAX_REFTABLE_BYTES: number = 8 << 20;
/** Longest backing file name (qcow2.txt: must not be longer than 1023 bytes). */
export const MAX_BACKING_NAME: number = 1023;

/** A parsed qcow2 header. Offsets are numbers (checked < 2^53). */
export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  /** Virtual size in bytes. */
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatible: bigint;
  compatible: bigint;
  autoclear: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
  /** The backing file name as stored (relative to this image), if any. */
  backingFile: string | undefined;
  /** The backing-format extension (`qcow2`, `raw`, …), if present. */
  backingFormat: string | undefined;
  /** Extensions vmkit does not interpret, kept so a rewrite preserves them. */
  otherExtensions: { type: number; data: Uint8Array }[];
  /** True when the image uses extended L2 entries (subclusters). */
  extendedL2: boolean;
  /**
   * The external data file's name as stored (relative to this image), when the
   * image keeps its guest data there (incompatible bit 2): L2 entries then
   * hold offsets into that file, and its clusters have no refcounts.
   */
  dataFile?: string | undefined;
  /** Autoclear bit 1: the data file is a raw image of the disk (`data_file_raw=on`). */
  dataFileRaw?: boolean;
  /** Byte offset of the data file's name in the header (for errors). */
  dataFileAt?: number;
}

function corrupt(msg: string, offset: number, path?: string): VmkitError {
  return new VmkitError('CORRUPT', `qcow2: ${msg} (at byte ${offset})`, { offset, ...(path ? { path } : {}) });
}

/**
 * Parses and validates the header in `buf` (the first cluster of the file, or
 * at least its first 4 KiB plus what the extensions need). `fileSize` bounds
 * every table offset.
 *
 * @example
 * ```ts
 * const h = parseQcow2Header(await readAt(storage, 0, 65536), await storage.size());
 * ```
 */
export function parseQcow2Header(buf: Uint8Array, fileSize: number, path?: string): Qcow2Header {
  if (buf.length < 72) throw corrupt('file too short for a header', 0, path);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const u64 = (at: number, what: string): number => u64ToOffset(dv.getBigUint64(at), what, at, path);
  if (dv.getUint32(0) !== QCOW2_MAGIC) throw corrupt('bad magic', 0, path);
  const version = dv.getUint32(4);
  if (version !== 2 && version !== 3) {
    throw new VmkitError('UNSUPPORTED', `qcow2 version ${version} (vmkit reads 2 and 3)`, { offset: 4, ...(path ? { path } : {}) });
  }
  const clusterBits = dv.getUint32(20);
  if (clusterBits < 9 || clusterBits > 21) throw corrupt(`cluster_bits ${clusterBits} outside 9..21`, 20, path);
  const cs = 2 ** clusterBits;
  const size = u64(24, 'virtual size');
  if (size > 2 ** 52) throw new VmkitError('LIMIT', `qcow2: virtual size ${size} is absurd`, { offset: 24, ...(path ? { path } : {}) });
  const h: Qcow2Header = {
    version,
    backingFileOffset: u64(8, 'backing_file_offset'),
    backingFileSize: dv.getUint32(16),
    clusterBits,
    size,
    cryptMethod: dv.getUint32(32),
    l1Size: dv.getUint32(36),
    l1TableOffset: u64(40, 'l1_table_offset'),
    refcountTableOffset: u64(48, 'refcount_table_offset'),
    refcountTableClusters: dv.getUint32(56),
    nbSnapshots: dv.getUint32(60),
    snapshotsOffset: u64(64, 'snapshots_offset'),
    incompatible: 0n,
    compatible: 0n,
    autoclear: 0n,
    refcountOrder: 4,
    headerLength: 72,
    compressionType: 0,
    backingFile: undefined,
    backingFormat: undefined,
    otherExtensions: [],
    extendedL2: false,
  };
  if (version === 3) {
    if (buf.length < 104) throw corrupt('file too short for a version 3 header', 0, path);
    h.incompatible = dv.getBigUint64(72);
    h.compatible = dv.getBigUint64(80);
    h.autoclear = dv.getBigUint64(88);
    h.refcountOrder = dv.getUint32(96);
    h.headerLength = dv.getUint32(100);
    if (h.headerLength < 104 || h.headerLength > cs || h.headerLength > buf.length) {
      throw corrupt(`header_length ${h.headerLength} out of range`, 100, path);
    }
    if (h.headerLength > 104) h.compressionType = buf[104]!;
  }
  if (h.refcountOrder > 6) throw corrupt(`refcount_order ${h.refcountOrder} > 6`, 96, path);
  const unknown = h.incompatible & ~INCOMPAT_KNOWN;
  if (unknown) throw new VmkitError('UNSUPPORTED', `qcow2: unknown incompatible features 0x${unknown.toString(16)}`, { offset: 72, ...(path ? { path } : {}) });
  if (h.cryptMethod !== 0) throw new VmkitError('UNSUPPORTED', `qcow2: encryption method ${h.cryptMethod}`, { offset: 32, ...(path ? { path } : {}) });
  if ((h.incompatible & INCOMPAT_COMPRESSION) !== 0n) {
    if (h.compressionType === 0) throw corrupt('compression-type bit set with zlib compression', 104, path);
  } else if (h.compressionType !== 0) throw corrupt(`compression type ${h.compressionType} without its feature bit`, 104, path);
  h.extendedL2 = (h.incompatible & INCOMPAT_EXTL2) !== 0n;
  if (h.extendedL2 && clusterBits < 14) throw corrupt('extended L2 entries need clusters of 16 KiB or more', 20, path);

  // Tables: aligned, inside the file, of sane size.
  const l2Entries = cs / (h.extendedL2 ? 16 : 8);
  const needL1 = Math.ceil(size / (cs * l2Entries));
  if (h.l1Size < needL1) throw corrupt(`L1 table of ${h.l1Size} entries cannot map ${size} bytes`, 36, path);
  if (h.l1Size * 8 > MAX_L1_BYTES) throw new VmkitError('LIMIT', `qcow2: L1 table of ${h.l1Size} entries is too large`, { offset: 36, ...(path ? { path } : {}) });
  checkTable(h.l1TableOffset, h.l1Size * 8, cs, fileSize, 'L1 table', 40, path, h.l1Size > 0);
  if (h.refcountTableClusters * cs > MAX_REFTABLE_BYTES) throw new VmkitError('LIMIT', `qcow2: refcount table of ${h.refcountTableClusters} clusters is too large`, { offset: 56, ...(path ? { path } : {}) });
  checkTable(h.refcountTableOffset, h.refcountTableClusters * cs, cs, fileSize, 'refcount table', 48, path, true);
  if (h.refcountTableClusters === 0) throw corrupt('no refcount table', 56, path);
  if (h.nbSnapshots > 65536) throw new VmkitError('LIMIT', `qcow2: ${h.nbSnapshots} snapshots`, { offset: 60, ...(path ? { path } : {}) });
  if (h.nbSnapshots > 0) checkTable(h.snapshotsOffset, 1, cs, fileSize, 'snapshot table', 64, path, true);

  // Extensions: from the end of the header to the end of the first cluster.
  let p = version === 3 ? h.headerLength : 72;
  const limit = Math.min(cs, buf.length);
  for (let guard = 0; ; guard++) {
    if (p + 8 > limit) break; // no end marker before the cluster end: tolerate (v2 images may have none)
    const type = dv.getUint32(p);
    const len = dv.getUint32(p + 4);
    if (type === EXT_END) break;
    if (guard > 1000 || p + 8 + len > limit) throw corrupt(`header extension 0x${type.toString(16)} runs past the first cluster`, p, path);
    const data = buf.slice(p + 8, p + 8 + len);
    if (type === EXT_BACKING_FORMAT) h.backingFormat = new TextDecoder().decode(data);
    else if (type === EXT_DATA_FILE && h.incompatible & INCOMPAT_DATA_FILE) {
      if (len === 0 || len > MAX_BACKING_NAME) throw corrupt(`external data file name of ${len} bytes`, p + 4, path);
      h.dataFile = new TextDecoder().decode(data);
      h.dataFileAt = p + 8;
    }
    else if (type === EXT_CRYPTO) throw new VmkitError('UNSUPPORTED', 'qcow2: encrypted image', { offset: p, ...(path ? { path } : {}) });
    else if (type !== EXT_FEATURE_TABLE) h.otherExtensions.push({ type, data });
    p += 8 + Math.ceil(len / 8) * 8;
  }
  if (h.incompatible & INCOMPAT_DATA_FILE) {
    // QEMU then needs the name on its command line (-o data-file=…); vmkit takes it from the header only.
    if (h.dataFile === undefined) throw new VmkitError('UNSUPPORTED', 'qcow2: an external data file whose name the header does not record', { offset: 72, ...(path ? { path } : {}) });
    h.dataFileRaw = (h.autoclear & AUTOCLEAR_DATA_FILE_RAW) !== 0n;
  } else if (h.autoclear & AUTOCLEAR_DATA_FILE_RAW) throw corrupt('the raw-external-data bit is set without an external data file', 88, path);
  if (h.backingFileOffset !== 0) {
    if (h.backingFileSize === 0 || h.backingFileSize > MAX_BACKING_NAME) throw corrupt(`backing file name of ${h.backingFileSize} bytes`, 16, path);
    if (h.backingFileOffset + h.backingFileSize > Math.min(cs, buf.length) || h.backingFileOffset + h.backingFileSize > fileSize) {
      throw corrupt('backing file name outside the first cluster', 8, path);
    }
    h.backingFile = new TextDecoder().decode(buf.subarray(h.backingFileOffset, h.backingFileOffset + h.backingFileSize));
  }
  return h;
}

function checkTable(off: number, bytes: number, cs: number, fileSize: number, what: string, field: number, path: string | undefined, required: boolean): void {
  if (!required) return;
  if (off === 0 || off % cs !== 0) throw corrupt(`${what} offset ${off} is not a non-zero multiple of the cluster size`, field, path);
  if (off + bytes > fileSize) throw corrupt(`${what} at ${off} (+${bytes}) is past the end of the file (${fileSize})`, field, path);
}

/**
 * Encodes a version 3 header with its extensions (backing format, feature
 * names, kept unknown ones) and the backing file name after them. The result
 * fits in the first cluster; it is the bytes to write at offset 0.
 *
 * @example
 * ```ts
 * await storage.write(0, encodeQcow2Header({ ...h, backingFile: 'base.qcow2', backingFormat: 'qcow2' }));
 * ```
 */
export function encodeQcow2Header(h: Qcow2Header): Uint8Array {
  const cs = 2 ** h.clusterBits;
  const enc = new TextEncoder();
  const exts: { type: number; data: Uint8Array }[] = [];
  // The data file's name first, as QEMU writes it.
  if (h.dataFile !== undefined) exts.push({ type: EXT_DATA_FILE, data: enc.encode(h.dataFile) });
  if (h.backingFile !== undefined && h.backingFormat !== undefined) exts.push({ type: EXT_BACKING_FORMAT, data: enc.encode(h.backingFormat) });
  exts.push({ type: EXT_FEATURE_TABLE, data: featureTable() });
  exts.push(...h.otherExtensions);
  const headerLength = 112;
  let len = headerLength;
  for (const e of exts) len += 8 + Math.ceil(e.data.length / 8) * 8;
  len += 8; // end marker
  const name = h.backingFile !== undefined ? enc.encode(h.backingFile) : undefined;
  if (name && (name.length === 0 || name.length > MAX_BACKING_NAME)) throw new VmkitError('ARG_RANGE', `backing file name must be 1..${MAX_BACKING_NAME} bytes`);
  const total = len + (name?.length ?? 0);
  if (total > cs) throw new VmkitError('LIMIT', `qcow2 header (${total} bytes) does not fit in one cluster of ${cs}`);
  const b = new Uint8Array(total);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, QCOW2_MAGIC);
  dv.setUint32(4, 3);
  dv.setBigUint64(8, name ? BigInt(len) : 0n);
  dv.setUint32(16, name?.length ?? 0);
  dv.setUint32(20, h.clusterBits);
  dv.setBigUint64(24, BigInt(h.size));
  dv.setUint32(32, 0);
  dv.setUint32(36, h.l1Size);
  dv.setBigUint64(40, BigInt(h.l1TableOffset));
  dv.setBigUint64(48, BigInt(h.refcountTableOffset));
  dv.setUint32(56, h.refcountTableClusters);
  dv.setUint32(60, h.nbSnapshots);
  dv.setBigUint64(64, BigInt(h.snapshotsOffset));
  dv.setBigUint64(72, h.incompatible);
  dv.setBigUint64(80, h.compatible);
  dv.setBigUint64(88, h.autoclear);
  dv.setUint32(96, h.refcountOrder);
  dv.setUint32(100, headerLength);
  b[104] = h.compressionType;
  let p = headerLength;
  for (const e of exts) {
    dv.setUint32(p, e.type);
    dv.setUint32(p + 4, e.data.length);
    b.set(e.data, p + 8);
    p += 8 + Math.ceil(e.data.length / 8) * 8;
  }
  p += 8; // end marker (zeroes)
  if (name) b.set(name, p);
  return b;
}

// Feature name table: lets `qemu-img info` name the bits (48 bytes per entry).
function featureTable(): Uint8Array {
  const names: [number, number, string][] = [
    [0, 0, 'dirty bit'],
    [0, 1, 'corrupt bit'],
    [0, 2, 'external data file'],
    [0, 3, 'compression type'],
    [0, 4, 'extended L2 entries'],
    [1, 0, 'lazy refcounts'],
    [2, 0, 'bitmaps'],
    [2, 1, 'raw external data'],
  ];
  const t = new Uint8Array(names.length * 48);
  const enc = new TextEncoder();
  names.forEach(([type, bit, name], i) => {
    t[i * 48] = type;
    t[i * 48 + 1] = bit;
    t.set(enc.encode(name), i * 48 + 2);
  });
  return t;
}

/**
 * Reads and validates the header of a qcow2 store.
 *
 * @example
 * ```ts
 * const h = await readHeader(storage);
 * console.log(h.size, h.backingFile);
 * ```
 */
export async function readHeader(storage: Storage): Promise<{ header: Qcow2Header; fileSize: number }> {
  const fileSize = await storage.size();
  const head = await readAt(storage, 0, Math.min(fileSize, 1 << 21));
  // The first cluster holds the header and its extensions.
  const header = parseQcow2Header(head, fileSize, storage.name);
  return { header, fileSize };
}
