/**
 * The VHD (Virtual PC / Hyper-V "vpc") footer and dynamic disk header, both
 * big-endian, as Microsoft's *Virtual Hard Disk Image Format Specification*
 * describes them and QEMU's block/vpc.c reads and writes them: the 512-byte
 * footer (`conectix`, at the end of every VHD and also at offset 0 of a
 * dynamic or differencing one), the 1024-byte dynamic header (`cxsparse`,
 * block size, block allocation table, parent name and locators), the
 * one's-complement checksum, and QEMU's CHS geometry and size rules.
 * docs/vhd.md.
 * @module
 */
import { VmkitError } from '../../../errors.js';

/** Bytes of the footer. */
export const VHD_FOOTER_SIZE = 512;
/** Bytes of the dynamic disk header. */
export const VHD_DYN_HEADER_SIZE = 1024;
/** Disk types (footer offset 60). */
export const VHD_FIXED = 2;
/** A dynamic (sparse) disk. */
export const VHD_DYNAMIC = 3;
/** A differencing disk (a dynamic disk over a parent). */
export const VHD_DIFFERENCING = 4;
/** A BAT entry of an unallocated block. */
export const BAT_UNUSED = 0xffff_ffff;
/** Largest CHS geometry: 65535 cylinders × 16 heads × 255 sectors (QEMU's VHD_MAX_GEOMETRY). */
export const VHD_MAX_GEOMETRY: number = 65535 * 16 * 255;
/** Largest virtual size in sectors QEMU accepts (2040 GiB). */
export const VHD_MAX_SECTORS = 0xff00_0000;
/** Seconds from the Unix epoch to 2000-01-01 00:00:00 UTC (VHD timestamps count from there). */
export const VHD_TIMESTAMP_BASE = 946684800;
/** Most BAT entries vmkit loads (4 M entries: 8 TiB of 2 MiB blocks, past QEMU's 2040 GiB). */
export const MAX_BAT_ENTRIES: number = 1 << 22;
/** Largest block vmkit accepts (256 MiB; Hyper-V writes 2 MiB, QEMU 2 MiB). */
export const MAX_BLOCK_SIZE: number = 1 << 28;

/** A parsed footer. */
export interface VhdFooter {
  features: number;
  version: number;
  /** Byte offset of the dynamic header, or -1 (all ones) for a fixed disk. */
  dataOffset: number;
  /** Seconds since 2000-01-01 UTC. */
  timestamp: number;
  /** Four bytes naming the writer (`qemu`, `qem2`, `win `, `vpc `, `d2v `, …). */
  creatorApp: string;
  creatorVersion: number;
  creatorOs: number;
  originalSize: number;
  currentSize: number;
  cylinders: number;
  heads: number;
  sectorsPerCylinder: number;
  type: number;
  checksum: number;
  uuid: Uint8Array;
  savedState: number;
}

/** One parent locator entry of a dynamic header. */
export interface VhdParentLocator {
  /** Platform code as four characters (`W2ku`, `W2ru`, `Wi2k`, `Wi2r`, `Mac `, `MacX`), or `''` for an empty slot. */
  platform: string;
  /** Bytes reserved for the locator data (the spec stores sectors; see {@link parseDynHeader}). */
  dataSpace: number;
  dataLength: number;
  dataOffset: number;
}

/** A parsed dynamic disk header. */
export interface VhdDynHeader {
  tableOffset: number;
  version: number;
  maxTableEntries: number;
  blockSize: number;
  checksum: number;
  parentUuid: Uint8Array;
  parentTimestamp: number;
  /** Parent's file name as stored (UTF-16BE, NUL-terminated). */
  parentName: string;
  locators: VhdParentLocator[];
}

/**
 * Bytes of a block's sector bitmap, padded to a sector (QEMU's bitmap_size).
 *
 * @example
 * ```ts
 * bitmapBytes(2 << 20); // 512
 * ```
 */
export function bitmapBytes(blockSize: number): number {
  return Math.ceil(blockSize / (8 * 512) / 512) * 512;
}

/**
 * The VHD checksum: the one's complement of the byte sum of `b` with the
 * 4-byte checksum field at `at` counted as zeroes.
 *
 * @example
 * ```ts
 * const ok = vhdChecksum(footerBytes, 64) === new DataView(footerBytes.buffer).getUint32(64);
 * ```
 */
export function vhdChecksum(b: Uint8Array, at: number): number {
  let s = 0;
  for (let i = 0; i < b.length; i++) if (i < at || i >= at + 4) s += b[i]!;
  return ~s >>> 0;
}

const ascii = (b: Uint8Array, at: number, n: number): string => String.fromCharCode(...b.subarray(at, at + n));
const u64 = (dv: DataView, at: number): number => {
  const hi = dv.getUint32(at);
  const lo = dv.getUint32(at + 4);
  if (hi === 0xffff_ffff && lo === 0xffff_ffff) return -1;
  return hi * 2 ** 32 + lo;
};
const setU64 = (dv: DataView, at: number, v: number): void => {
  if (v < 0) {
    dv.setUint32(at, 0xffff_ffff);
    dv.setUint32(at + 4, 0xffff_ffff);
    return;
  }
  dv.setUint32(at, Math.floor(v / 2 ** 32));
  dv.setUint32(at + 4, v >>> 0);
};

/**
 * True when `b` has the footer cookie `conectix` at `at`.
 *
 * @example
 * ```ts
 * if (hasCookie(head)) console.log('a dynamic or differencing VHD');
 * ```
 */
export function hasCookie(b: Uint8Array, at = 0): boolean {
  return b.length >= at + 8 && ascii(b, at, 8) === 'conectix';
}

/**
 * Parses a 512-byte footer found at byte `at` of `name`. A wrong cookie or
 * checksum is CORRUPT at `at` (QEMU refuses a bad checksum too).
 *
 * @example
 * ```ts
 * const f = parseFooter(await readAt(storage, size - 512, 512), size - 512, storage.name);
 * ```
 */
export function parseFooter(b: Uint8Array, at: number, name: string): VhdFooter {
  if (b.length < VHD_FOOTER_SIZE || !hasCookie(b)) throw new VmkitError('CORRUPT', `vhd ${name}: no footer cookie "conectix"`, { offset: at, path: name });
  const dv = new DataView(b.buffer, b.byteOffset, VHD_FOOTER_SIZE);
  const f: VhdFooter = {
    features: dv.getUint32(8),
    version: dv.getUint32(12),
    dataOffset: u64(dv, 16),
    timestamp: dv.getUint32(24),
    creatorApp: ascii(b, 28, 4),
    creatorVersion: dv.getUint32(32),
    creatorOs: dv.getUint32(36),
    originalSize: u64(dv, 40),
    currentSize: u64(dv, 48),
    cylinders: dv.getUint16(56),
    heads: b[58]!,
    sectorsPerCylinder: b[59]!,
    type: dv.getUint32(60),
    checksum: dv.getUint32(64),
    uuid: b.slice(68, 84),
    savedState: b[84]!,
  };
  if (vhdChecksum(b.subarray(0, VHD_FOOTER_SIZE), 64) !== f.checksum) {
    throw new VmkitError('INTEGRITY', `vhd ${name}: footer checksum ${f.checksum.toString(16)} is wrong`, { offset: at + 64, path: name });
  }
  if (f.type !== VHD_FIXED && f.type !== VHD_DYNAMIC && f.type !== VHD_DIFFERENCING) {
    throw new VmkitError('UNSUPPORTED', `vhd ${name}: disk type ${f.type} (only fixed 2, dynamic 3, differencing 4)`, { offset: at + 60, path: name });
  }
  if (f.currentSize < 0 || f.currentSize % 512 !== 0) {
    throw new VmkitError('CORRUPT', `vhd ${name}: current size ${f.currentSize} is not a multiple of 512`, { offset: at + 48, path: name });
  }
  return f;
}

/**
 * Encodes a footer (the checksum is computed here).
 *
 * @example
 * ```ts
 * await storage.write(end, encodeFooter(footer));
 * ```
 */
export function encodeFooter(f: VhdFooter): Uint8Array {
  const b = new Uint8Array(VHD_FOOTER_SIZE);
  const dv = new DataView(b.buffer);
  for (let i = 0; i < 8; i++) b[i] = 'conectix'.charCodeAt(i);
  dv.setUint32(8, f.features);
  dv.setUint32(12, f.version);
  setU64(dv, 16, f.dataOffset);
  dv.setUint32(24, f.timestamp);
  for (let i = 0; i < 4; i++) b[28 + i] = f.creatorApp.charCodeAt(i) & 0xff;
  dv.setUint32(32, f.creatorVersion);
  dv.setUint32(36, f.creatorOs);
  setU64(dv, 40, f.originalSize);
  setU64(dv, 48, f.currentSize);
  dv.setUint16(56, f.cylinders);
  b[58] = f.heads;
  b[59] = f.sectorsPerCylinder;
  dv.setUint32(60, f.type);
  b.set(f.uuid.subarray(0, 16), 68);
  b[84] = f.savedState;
  f.checksum = vhdChecksum(b, 64);
  dv.setUint32(64, f.checksum);
  return b;
}

/**
 * The guest size of a VHD as QEMU computes it: cylinders × heads × sectors
 * for images written by Virtual PC and by QEMU without `force_size`
 * (creator `vpc `, `qemu`, any unknown one), the footer's current size for
 * Hyper-V (`win `), `qem2` (QEMU with `force_size`), `d2v `, `tap\0` and
 * `CTXS`, and whenever the geometry is the largest one (65535×16×255).
 *
 * @example
 * ```ts
 * const size = virtualSize(footer); // bytes
 * ```
 */
export function virtualSize(f: VhdFooter): number {
  const chs = f.cylinders * f.heads * f.sectorsPerCylinder;
  const useSize = ['win ', 'qem2', 'd2v ', 'CTXS', 'tap\0'].includes(f.creatorApp) || chs === VHD_MAX_GEOMETRY;
  return useSize ? f.currentSize : chs * 512;
}

/**
 * CHS geometry for `totalSectors` by the VHD specification's algorithm,
 * with QEMU's extension past 127 GiB (16 heads × 255 sectors per track).
 * The product may be below `totalSectors` (it rounds down).
 *
 * @example
 * ```ts
 * const { cylinders, heads, sectorsPerCylinder } = chsGeometry(20480);
 * ```
 */
export function chsGeometry(totalSectors: number): { cylinders: number; heads: number; sectorsPerCylinder: number } {
  const ts = Math.min(totalSectors, VHD_MAX_GEOMETRY);
  let spc: number;
  let heads: number;
  let ch: number;
  if (ts >= 65535 * 16 * 63) {
    spc = 255;
    heads = 16;
    ch = Math.floor(ts / spc);
  } else {
    spc = 17;
    ch = Math.floor(ts / spc);
    heads = Math.max(4, Math.ceil(ch / 1024));
    if (ch >= heads * 1024 || heads > 16) {
      spc = 31;
      heads = 16;
      ch = Math.floor(ts / spc);
    }
    if (ch >= heads * 1024) {
      spc = 63;
      heads = 16;
      ch = Math.floor(ts / spc);
    }
  }
  // QEMU keeps heads in a byte and cylinders×heads in a u32; neither wraps at these sizes.
  return { cylinders: Math.floor(ch / heads), heads, sectorsPerCylinder: spc };
}

/**
 * The size QEMU gives a new VHD of `size` bytes and the geometry it records:
 * without `forceSize` the smallest CHS geometry holding at least `size`
 * (the image is rounded up to it, as `qemu-img create -f vpc` does), and the
 * largest geometry with the exact size past what CHS can address; with
 * `forceSize` the largest geometry and the exact size.
 *
 * @example
 * ```ts
 * roundedSize(10 << 20, false).size; // 10 MiB rounded up to a CHS multiple
 * ```
 */
export function roundedSize(size: number, forceSize: boolean): { size: number; cylinders: number; heads: number; sectorsPerCylinder: number } {
  const sectors = Math.ceil(size / 512);
  let g = { cylinders: 65535, heads: 16, sectorsPerCylinder: 255 };
  if (!forceSize) {
    const total = Math.min(VHD_MAX_GEOMETRY, sectors);
    g = { cylinders: 0, heads: 0, sectorsPerCylinder: 0 };
    for (let i = 0; total > g.cylinders * g.heads * g.sectorsPerCylinder; i++) g = chsGeometry(total + i);
  }
  const chs = g.cylinders * g.heads * g.sectorsPerCylinder;
  if (chs === VHD_MAX_GEOMETRY) {
    if (sectors > VHD_MAX_SECTORS) throw new VmkitError('LIMIT', `vhd size ${size}: VHD holds at most 2040 GiB`);
    return { size: sectors * 512, ...g };
  }
  return { size: chs * 512, ...g };
}

/**
 * Parses the 1024-byte dynamic header at byte `at` of `name`.
 *
 * @example
 * ```ts
 * const d = parseDynHeader(await readAt(storage, footer.dataOffset, 1024), footer.dataOffset, storage.name);
 * ```
 */
export function parseDynHeader(b: Uint8Array, at: number, name: string): VhdDynHeader {
  if (b.length < VHD_DYN_HEADER_SIZE || ascii(b, 0, 8) !== 'cxsparse') {
    throw new VmkitError('CORRUPT', `vhd ${name}: no dynamic header cookie "cxsparse"`, { offset: at, path: name });
  }
  const dv = new DataView(b.buffer, b.byteOffset, VHD_DYN_HEADER_SIZE);
  const checksum = dv.getUint32(36);
  if (vhdChecksum(b.subarray(0, VHD_DYN_HEADER_SIZE), 36) !== checksum) {
    throw new VmkitError('INTEGRITY', `vhd ${name}: dynamic header checksum ${checksum.toString(16)} is wrong`, { offset: at + 36, path: name });
  }
  const tableOffset = u64(dv, 16);
  const blockSize = dv.getUint32(32);
  if (blockSize < 512 || (blockSize & (blockSize - 1)) !== 0) {
    throw new VmkitError('CORRUPT', `vhd ${name}: block size ${blockSize} is not a power of two of at least 512`, { offset: at + 32, path: name });
  }
  if (blockSize > MAX_BLOCK_SIZE) throw new VmkitError('LIMIT', `vhd ${name}: block size ${blockSize} is over ${MAX_BLOCK_SIZE}`, { offset: at + 32, path: name });
  const maxTableEntries = dv.getUint32(28);
  if (maxTableEntries > MAX_BAT_ENTRIES) {
    throw new VmkitError('LIMIT', `vhd ${name}: ${maxTableEntries} block table entries (at most ${MAX_BAT_ENTRIES})`, { offset: at + 28, path: name });
  }
  if (tableOffset < 0 || tableOffset % 512 !== 0) throw new VmkitError('CORRUPT', `vhd ${name}: block table offset ${tableOffset} is not sector aligned`, { offset: at + 16, path: name });
  let parentName = '';
  for (let i = 0; i < 512; i += 2) {
    const c = dv.getUint16(64 + i);
    if (c === 0) break;
    parentName += String.fromCharCode(c);
  }
  const locators: VhdParentLocator[] = [];
  for (let i = 0; i < 8; i++) {
    const o = 576 + i * 24;
    const code = dv.getUint32(o);
    locators.push({
      platform: code === 0 ? '' : ascii(b, o, 4),
      dataSpace: dv.getUint32(o + 4),
      dataLength: dv.getUint32(o + 8),
      dataOffset: u64(dv, o + 16),
    });
  }
  return {
    tableOffset,
    version: dv.getUint32(24),
    maxTableEntries,
    blockSize,
    checksum,
    parentUuid: b.slice(40, 56),
    parentTimestamp: dv.getUint32(56),
    parentName,
    locators,
  };
}

/**
 * Encodes a dynamic header (checksum computed here). Locator data itself is
 * written by the caller at each locator's `dataOffset`.
 *
 * @example
 * ```ts
 * await storage.write(512, encodeDynHeader(dyn));
 * ```
 */
export function encodeDynHeader(d: VhdDynHeader): Uint8Array {
  const b = new Uint8Array(VHD_DYN_HEADER_SIZE);
  const dv = new DataView(b.buffer);
  for (let i = 0; i < 8; i++) b[i] = 'cxsparse'.charCodeAt(i);
  setU64(dv, 8, -1);
  setU64(dv, 16, d.tableOffset);
  dv.setUint32(24, d.version);
  dv.setUint32(28, d.maxTableEntries);
  dv.setUint32(32, d.blockSize);
  b.set(d.parentUuid.subarray(0, 16), 40);
  dv.setUint32(56, d.parentTimestamp);
  const n = Math.min(d.parentName.length, 255);
  for (let i = 0; i < n; i++) dv.setUint16(64 + i * 2, d.parentName.charCodeAt(i));
  for (let i = 0; i < Math.min(8, d.locators.length); i++) {
    const l = d.locators[i]!;
    const o = 576 + i * 24;
    if (l.platform === '') continue;
    for (let k = 0; k < 4; k++) b[o + k] = l.platform.charCodeAt(k) & 0xff;
    dv.setUint32(o + 4, l.dataSpace);
    dv.setUint32(o + 8, l.dataLength);
    setU64(dv, o + 16, l.dataOffset);
  }
  d.checksum = vhdChecksum(b, 36);
  dv.setUint32(36, d.checksum);
  return b;
}
