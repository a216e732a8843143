/**
 * VHDX structures (little-endian), as Microsoft's *VHDX Format
 * Specification* 1.0 describes them and QEMU's block/vhdx.c reads and
 * writes them: the file type identifier (`vhdxfile`), the two headers
 * (`head`, CRC-32C, sequence number, log GUID), the two region tables
 * (`regi`, CRC-32C, BAT and metadata regions), the metadata table
 * (`metadata`: file parameters, virtual disk size, logical and physical
 * sector size, disk ID, parent locator) and BAT entries. docs/vhdx.md.
 * @module
 */
import { VmkitError } from '../../../errors.js';

/** Offsets of the fixed structures. */
export const VHDX_HEADER1: number = 64 << 10;
/** Second header. */
export const VHDX_HEADER2: number = 128 << 10;
/** First region table. */
export const VHDX_REGION1: number = 192 << 10;
/** Second region table. */
export const VHDX_REGION2: number = 256 << 10;
/** Bytes of a header (checksummed). */
export const VHDX_HEADER_SIZE = 4096;
/** Bytes of a region table (checksummed). */
export const VHDX_REGION_SIZE: number = 64 << 10;
/** 1 MiB: the unit of BAT offsets and of region alignment. */
export const MiB: number = 1 << 20;

/** BAT payload block states (bits 0–2 of an entry). */
export const PAYLOAD_NOT_PRESENT = 0;
/** Contents undefined (read as zeroes by QEMU). */
export const PAYLOAD_UNDEFINED = 1;
/** Reads as zeroes. */
export const PAYLOAD_ZERO = 2;
/** Unmapped (trimmed): reads as zeroes. */
export const PAYLOAD_UNMAPPED = 3;
/** All sectors in this file, at the entry's offset. */
export const PAYLOAD_FULLY_PRESENT = 6;
/** Some sectors in this file, others in the parent (differencing disks; see the sector bitmap). */
export const PAYLOAD_PARTIALLY_PRESENT = 7;
/** Sector bitmap BAT entry state: the bitmap block is in the file. */
export const SB_BLOCK_PRESENT = 6;

/**
 * A GUID as its 16 stored bytes (the first three fields little-endian, as
 * Windows stores them) from its text form.
 *
 * @example
 * ```ts
 * guidBytes('2DC27766-F623-4200-9D64-115E9BFD4A08'); // the BAT region's GUID as stored
 * ```
 */
export function guidBytes(s: string): Uint8Array {
  const h = s.replace(/-/g, '');
  const b = new Uint8Array(16);
  for (let i = 0; i < 16; i++) b[i] = parseInt(h.slice(i * 2, i * 2 + 2), 16);
  const swap = (a: number, n: number): void => {
    b.subarray(a, a + n).reverse();
  };
  swap(0, 4);
  swap(4, 2);
  swap(6, 2);
  return b;
}

/** Region and metadata item GUIDs (as stored). */
export const GUID: Readonly<Record<'bat' | 'metadata' | 'fileParameters' | 'virtualDiskSize' | 'virtualDiskId' | 'logicalSectorSize' | 'physicalSectorSize' | 'parentLocator', Uint8Array>> = {
  bat: guidBytes('2DC27766-F623-4200-9D64-115E9BFD4A08'),
  metadata: guidBytes('8B7CA206-4790-4B9A-B8FE-575F050F886E'),
  fileParameters: guidBytes('CAA16737-FA36-4D43-B3B6-33F0AA44E76B'),
  virtualDiskSize: guidBytes('2FA54224-CD1B-4876-B211-5DBED83BF4B8'),
  virtualDiskId: guidBytes('BECA12AB-B2E6-4523-93EF-C309E000C746'),
  logicalSectorSize: guidBytes('8141BF1D-A96F-4709-BA47-F233A8FAAB5F'),
  physicalSectorSize: guidBytes('CDA348C7-445D-4471-9CC9-E9885251C556'),
  parentLocator: guidBytes('A8D35F2D-B30B-454D-ABF7-D3D84834AB0C'),
};

const eq = (a: Uint8Array, b: Uint8Array): boolean => a.length === b.length && a.every((x, i) => x === b[i]);

let table: Uint32Array | undefined;
/**
 * CRC-32C (Castagnoli, reflected 0x82F63B78) of `b`, with the 4 bytes at
 * `skip` (a checksum field) counted as zeroes.
 *
 * @example
 * ```ts
 * crc32c(new TextEncoder().encode('123456789')); // 0xe3069283
 * ```
 */
export function crc32c(b: Uint8Array, skip = -1): number {
  if (!table) {
    table = new Uint32Array(256);
    for (let i = 0; i < 256; i++) {
      let c = i;
      for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
      table[i] = c >>> 0;
    }
  }
  let c = 0xffffffff;
  for (let i = 0; i < b.length; i++) {
    const x = skip >= 0 && i >= skip && i < skip + 4 ? 0 : b[i]!;
    c = table[(c ^ x) & 0xff]! ^ (c >>> 8);
  }
  return (c ^ 0xffffffff) >>> 0;
}

/** A parsed header. */
export interface VhdxHeader {
  sequenceNumber: bigint;
  fileWriteGuid: Uint8Array;
  dataWriteGuid: Uint8Array;
  logGuid: Uint8Array;
  logVersion: number;
  version: number;
  logLength: number;
  logOffset: number;
}

/**
 * Parses a header, or returns undefined when its signature or CRC-32C is
 * wrong (the other header is then used, as the spec says).
 *
 * @example
 * ```ts
 * const h = parseHeader(await readAt(storage, VHDX_HEADER1, 4096));
 * ```
 */
export function parseHeader(b: Uint8Array): VhdxHeader | undefined {
  if (b.length < VHDX_HEADER_SIZE) return undefined;
  const dv = new DataView(b.buffer, b.byteOffset, VHDX_HEADER_SIZE);
  if (dv.getUint32(0, true) !== 0x64616568) return undefined; // "head"
  if (crc32c(b.subarray(0, VHDX_HEADER_SIZE), 4) !== dv.getUint32(4, true)) return undefined;
  return {
    sequenceNumber: dv.getBigUint64(8, true),
    fileWriteGuid: b.slice(16, 32),
    dataWriteGuid: b.slice(32, 48),
    logGuid: b.slice(48, 64),
    logVersion: dv.getUint16(64, true),
    version: dv.getUint16(66, true),
    logLength: dv.getUint32(68, true),
    logOffset: Number(dv.getBigUint64(72, true)),
  };
}

/**
 * Encodes a header with its CRC-32C.
 *
 * @example
 * ```ts
 * await storage.write(VHDX_HEADER2, encodeHeader({ ...h, sequenceNumber: h.sequenceNumber + 1n }));
 * ```
 */
export function encodeHeader(h: VhdxHeader): Uint8Array {
  const b = new Uint8Array(VHDX_HEADER_SIZE);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, 0x64616568, true);
  dv.setBigUint64(8, h.sequenceNumber, true);
  b.set(h.fileWriteGuid, 16);
  b.set(h.dataWriteGuid, 32);
  b.set(h.logGuid, 48);
  dv.setUint16(64, h.logVersion, true);
  dv.setUint16(66, h.version, true);
  dv.setUint32(68, h.logLength, true);
  dv.setBigUint64(72, BigInt(h.logOffset), true);
  dv.setUint32(4, crc32c(b, 4), true);
  return b;
}

/** One region table entry. */
export interface VhdxRegion {
  guid: Uint8Array;
  offset: number;
  length: number;
  required: boolean;
}

/**
 * Parses a region table, or undefined when its signature or CRC-32C is
 * wrong. An entry count over 2047 is CORRUPT at `at + 8`.
 *
 * @example
 * ```ts
 * const regions = parseRegionTable(await readAt(storage, VHDX_REGION1, 65536), VHDX_REGION1, storage.name);
 * ```
 */
export function parseRegionTable(b: Uint8Array, at: number, name: string): VhdxRegion[] | undefined {
  if (b.length < VHDX_REGION_SIZE) return undefined;
  const dv = new DataView(b.buffer, b.byteOffset, VHDX_REGION_SIZE);
  if (dv.getUint32(0, true) !== 0x69676572) return undefined; // "regi"
  if (crc32c(b.subarray(0, VHDX_REGION_SIZE), 4) !== dv.getUint32(4, true)) return undefined;
  const n = dv.getUint32(8, true);
  if (n > 2047) throw new VmkitError('CORRUPT', `vhdx ${name}: ${n} region table entries (at most 2047)`, { offset: at + 8, path: name });
  const out: VhdxRegion[] = [];
  for (let i = 0; i < n; i++) {
    const o = 16 + i * 32;
    out.push({ guid: b.slice(o, o + 16), offset: Number(dv.getBigUint64(o + 16, true)), length: dv.getUint32(o + 24, true), required: (dv.getUint32(o + 28, true) & 1) !== 0 });
  }
  return out;
}

/**
 * Encodes a region table with its CRC-32C.
 *
 * @example
 * ```ts
 * const t = encodeRegionTable([{ guid: GUID.bat, offset: 2 << 20, length: 1 << 20, required: true }]);
 * ```
 */
export function encodeRegionTable(regions: VhdxRegion[]): Uint8Array {
  const b = new Uint8Array(VHDX_REGION_SIZE);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, 0x69676572, true);
  dv.setUint32(8, regions.length, true);
  regions.forEach((r, i) => {
    const o = 16 + i * 32;
    b.set(r.guid, o);
    dv.setBigUint64(o + 16, BigInt(r.offset), true);
    dv.setUint32(o + 24, r.length, true);
    dv.setUint32(o + 28, r.required ? 1 : 0, true);
  });
  dv.setUint32(4, crc32c(b, 4), true);
  return b;
}

/** The metadata vmkit reads. */
export interface VhdxMetadata {
  blockSize: number;
  leaveBlocksAllocated: boolean;
  hasParent: boolean;
  virtualSize: number;
  logicalSectorSize: number;
  physicalSectorSize: number;
  diskId: Uint8Array;
  /** Byte offset (in the file) of the parent locator item, when present. */
  parentLocatorAt?: number;
  /** The parent locator item's bytes, when present. */
  parentLocator?: Uint8Array;
  /** Byte offset (in the file) of the file parameters item (its flags say HasParent). */
  fileParametersAt?: number;
}

/**
 * Parses the metadata region (`b`, at file offset `at`): the table, then
 * each known item. A required item vmkit does not know is UNSUPPORTED at
 * its table entry; missing or malformed items are CORRUPT at their offset.
 *
 * @example
 * ```ts
 * const md = parseMetadata(await readAt(storage, region.offset, region.length), region.offset, storage.name);
 * ```
 */
export function parseMetadata(b: Uint8Array, at: number, name: string): VhdxMetadata {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const bad = (msg: string, off: number): VmkitError => new VmkitError('CORRUPT', `vhdx ${name}: ${msg}`, { offset: at + off, path: name });
  if (b.length < 64 * 1024 || String.fromCharCode(...b.subarray(0, 8)) !== 'metadata') throw bad('no metadata table signature', 0);
  const n = dv.getUint16(10, true);
  if (n > 2047) throw bad(`${n} metadata entries (at most 2047)`, 10);
  const items = new Map<string, { off: number; len: number; entry: number }>();
  const known = Object.entries(GUID).filter(([k]) => k !== 'bat' && k !== 'metadata');
  for (let i = 0; i < n; i++) {
    const e = 32 + i * 32;
    const guid = b.subarray(e, e + 16);
    const off = dv.getUint32(e + 16, true);
    const len = dv.getUint32(e + 20, true);
    const flags = dv.getUint32(e + 24, true);
    const k = known.find(([, g]) => eq(g, guid));
    if (!k) {
      if (flags & 4) throw new VmkitError('UNSUPPORTED', `vhdx ${name}: a required metadata item vmkit does not know`, { offset: at + e, path: name });
      continue;
    }
    if (len > 0 && (off < 64 * 1024 || off + len > b.length)) throw bad(`metadata item at ${off} (${len} bytes) is outside the region`, e + 16);
    items.set(k[0], { off, len, entry: e });
  }
  const item = (k: string, len: number): number => {
    const it = items.get(k);
    if (!it) throw bad(`the ${k} metadata item is missing`, 10);
    if (it.len < len) throw bad(`the ${k} metadata item is ${it.len} bytes, not ${len}`, it.entry + 20);
    return it.off;
  };
  const fp = item('fileParameters', 8);
  const blockSize = dv.getUint32(fp, true);
  const fpFlags = dv.getUint32(fp + 4, true);
  if (blockSize < MiB || blockSize > 256 * MiB || (blockSize & (blockSize - 1)) !== 0) throw bad(`block size ${blockSize} is not a power of two in 1..256 MiB`, fp);
  const vs = item('virtualDiskSize', 8);
  const virtualSize = Number(dv.getBigUint64(vs, true));
  const ls = item('logicalSectorSize', 4);
  const logicalSectorSize = dv.getUint32(ls, true);
  if (logicalSectorSize !== 512 && logicalSectorSize !== 4096) throw bad(`logical sector size ${logicalSectorSize} is not 512 or 4096`, ls);
  const ps = item('physicalSectorSize', 4);
  const physicalSectorSize = dv.getUint32(ps, true);
  if (physicalSectorSize !== 512 && physicalSectorSize !== 4096) throw bad(`physical sector size ${physicalSectorSize} is not 512 or 4096`, ps);
  if (virtualSize % logicalSectorSize !== 0 || virtualSize > 64 * 2 ** 40) throw bad(`virtual size ${virtualSize} is not a multiple of the sector size or over 64 TiB`, vs);
  const id = item('virtualDiskId', 16);
  const pl = items.get('parentLocator');
  return {
    blockSize,
    leaveBlocksAllocated: (fpFlags & 1) !== 0,
    hasParent: (fpFlags & 2) !== 0,
    virtualSize,
    logicalSectorSize,
    physicalSectorSize,
    diskId: b.slice(id, id + 16),
    fileParametersAt: at + fp,
    ...(pl ? { parentLocatorAt: at + pl.off, parentLocator: b.slice(pl.off, pl.off + pl.len) } : {}),
  };
}

/**
 * Encodes a metadata region of `length` bytes: the table and the five items
 * every VHDX has, items from 64 KiB on as QEMU lays them out.
 *
 * @example
 * ```ts
 * const region = encodeMetadata({ blockSize: 8 << 20, leaveBlocksAllocated: false, hasParent: false, virtualSize: 1 << 30, logicalSectorSize: 512, physicalSectorSize: 512, diskId }, 1 << 20);
 * ```
 */
export function encodeMetadata(m: VhdxMetadata, length: number): Uint8Array {
  const b = new Uint8Array(length);
  const dv = new DataView(b.buffer);
  for (let i = 0; i < 8; i++) b[i] = 'metadata'.charCodeAt(i);
  const items: [Uint8Array, number, number, (o: number) => void][] = [
    [GUID.fileParameters, 8, 4, (o) => {
      dv.setUint32(o, m.blockSize, true);
      dv.setUint32(o + 4, (m.leaveBlocksAllocated ? 1 : 0) | (m.hasParent ? 2 : 0), true);
    }],
    [GUID.virtualDiskSize, 8, 6, (o) => dv.setBigUint64(o, BigInt(m.virtualSize), true)],
    [GUID.virtualDiskId, 16, 6, (o) => b.set(m.diskId, o)],
    [GUID.logicalSectorSize, 4, 6, (o) => dv.setUint32(o, m.logicalSectorSize, true)],
    [GUID.physicalSectorSize, 4, 6, (o) => dv.setUint32(o, m.physicalSectorSize, true)],
  ];
  dv.setUint16(10, items.length, true);
  let off = 64 * 1024;
  items.forEach(([g, len, flags, put], i) => {
    const e = 32 + i * 32;
    b.set(g, e);
    dv.setUint32(e + 16, off, true);
    dv.setUint32(e + 20, len, true);
    dv.setUint32(e + 24, flags, true);
    put(off);
    off += len;
  });
  return b;
}

/**
 * Payload blocks per sector-bitmap block: 2^23 sectors × the logical
 * sector size over the block size.
 *
 * @example
 * ```ts
 * chunkRatio(8 << 20, 512); // 512
 * ```
 */
export function chunkRatio(blockSize: number, logicalSectorSize: number): number {
  return (2 ** 23 * logicalSectorSize) / blockSize;
}

/**
 * BAT entries of a disk: payload entries with one sector-bitmap entry
 * after every `chunkRatio` of them (for a differencing disk, every chunk
 * has its bitmap entry; otherwise the last chunk's may be left out).
 *
 * @example
 * ```ts
 * batEntries(100 << 20, 8 << 20, 512, false); // 13
 * ```
 */
export function batEntries(virtualSize: number, blockSize: number, logicalSectorSize: number, hasParent: boolean): number {
  const blocks = Math.ceil(virtualSize / blockSize);
  const cr = chunkRatio(blockSize, logicalSectorSize);
  if (blocks === 0) return 0;
  if (hasParent) return Math.ceil(blocks / cr) * (cr + 1);
  return blocks + Math.floor((blocks - 1) / cr);
}

/** The VHDX parent locator type (MS-VHDX 2.6.2.6), as stored. */
export const LOCATOR_VHDX: Uint8Array = guidBytes('B04AEFB7-D19E-4A81-B789-25B8E9445913');

/**
 * The key/value pairs of a parent locator item (`b`, at file offset `at`):
 * a locator type GUID, a count, then (key offset, value offset, key length,
 * value length) entries pointing at UTF-16LE strings inside the item.
 * Anything out of bounds is CORRUPT at its entry; another locator type is
 * UNSUPPORTED.
 *
 * @example
 * ```ts
 * const kv = parseParentLocator(md.parentLocator!, md.parentLocatorAt!, storage.name);
 * kv.get('relative_path'); // '.\\base.vhdx'
 * ```
 */
export function parseParentLocator(b: Uint8Array, at: number, name: string): Map<string, string> {
  const bad = (msg: string, off: number): VmkitError => new VmkitError('CORRUPT', `vhdx ${name}: parent locator: ${msg}`, { offset: at + off, path: name });
  if (b.length < 20) throw bad(`an item of ${b.length} bytes`, 0);
  if (!eq(b.subarray(0, 16), LOCATOR_VHDX)) throw new VmkitError('UNSUPPORTED', `vhdx ${name}: a parent locator of another type than VHDX's`, { offset: at, path: name });
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const n = dv.getUint16(18, true);
  if (20 + n * 12 > b.length) throw bad(`${n} entries do not fit the item`, 18);
  const utf16 = new TextDecoder('utf-16le');
  const out = new Map<string, string>();
  for (let i = 0; i < n; i++) {
    const e = 20 + i * 12;
    const ko = dv.getUint32(e, true);
    const vo = dv.getUint32(e + 4, true);
    const kl = dv.getUint16(e + 8, true);
    const vl = dv.getUint16(e + 10, true);
    if (kl === 0 || vl === 0 || ko + kl > b.length || vo + vl > b.length || kl % 2 !== 0 || vl % 2 !== 0) throw bad(`entry ${i} points outside the item`, e);
    out.set(utf16.decode(b.subarray(ko, ko + kl)), utf16.decode(b.subarray(vo, vo + vl)));
  }
  return out;
}

/**
 * The text form of a stored GUID, `{XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX}` as
 * a parent locator's `parent_linkage` holds it (upper case).
 *
 * @example
 * ```ts
 * guidText(header.dataWriteGuid); // '{6B1A…}'
 * ```
 */
export function guidText(g: Uint8Array): string {
  const h = (a: number, n: number, rev: boolean): string => {
    const x = Array.from(g.subarray(a, a + n));
    if (rev) x.reverse();
    return x.map((v) => v.toString(16).padStart(2, '0')).join('');
  };
  return `{${h(0, 4, true)}-${h(4, 2, true)}-${h(6, 2, true)}-${h(8, 2, false)}-${h(10, 6, false)}}`.toUpperCase();
}
