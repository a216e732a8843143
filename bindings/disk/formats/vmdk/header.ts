/**
 * The VMDK hosted sparse extent header (the first 512 bytes of a
 * monolithicSparse file, little-endian), as VMware's "Virtual Disk Format
 * 1.1" describes it and QEMU's block/vmdk.c reads it: magic `KDMV`,
 * version 1 (2 and 3 read the same way), grain size, grain directory and
 * redundant grain directory, embedded descriptor. docs/vmdk.md.
 * @module
 */
import { VmkitError } from '../../../errors.js';

/** `KDMV` read as a little-endian u32. */
export const VMDK_MAGIC = 0x564d444b;
/** Bytes of the sparse extent header. */
export const VMDK_HEADER_SIZE = 512;
/** The newline-detection bytes are valid. */
export const FLAG_NL_DETECT: number = 1 << 0;
/** A redundant grain directory (and tables) is kept. */
export const FLAG_RGD: number = 1 << 1;
/** A grain table entry of 1 means "reads as zeroes" (QEMU's zeroed_grain, version ≥ 2). */
export const FLAG_ZERO_GRAIN: number = 1 << 2;
/** Grains are deflate-compressed (streamOptimized). */
export const FLAG_COMPRESS: number = 1 << 16;
/** Grains and metadata are preceded by markers (streamOptimized). */
export const FLAG_MARKER: number = 1 << 17;
/** gdOffset of a streamOptimized image whose directory is in the footer. */
export const GD_AT_END = 0xffff_ffff_ffff_ffffn;
/** Largest grain directory vmkit loads (32 MiB: 8 M tables, far past 2 TiB of 64 KiB grains). */
export const MAX_GD_BYTES: number = 32 << 20;
/** Largest grain vmkit accepts, in sectors (32 MiB; QEMU refuses above 1 GiB). */
export const MAX_GRAIN_SECTORS: number = 1 << 16;
/** Largest grain table, in entries (the spec fixes 512). */
export const MAX_GTES_PER_GT: number = 1 << 16;
/** Largest capacity vmkit opens, in sectors: every byte offset below it is a safe integer. */
export const MAX_CAPACITY_SECTORS: number = Math.floor(Number.MAX_SAFE_INTEGER / 512);
/** Largest embedded descriptor vmkit reads, in bytes. */
export const MAX_DESCRIPTOR_BYTES: number = 1 << 20;

/** A parsed sparse extent header. Offsets and sizes are in 512-byte sectors, as stored. */
export interface VmdkHeader {
  version: number;
  flags: number;
  /** Virtual size in sectors. */
  capacity: number;
  /** Sectors per grain (a power of two). */
  grainSize: number;
  descriptorOffset: number;
  descriptorSize: number;
  /** Entries per grain table (512 in every image VMware or QEMU writes). */
  numGTEsPerGT: number;
  /** Redundant grain directory (0 when FLAG_RGD is clear). */
  rgdOffset: number;
  gdOffset: number;
  /** Sectors of metadata before the first grain (rounded up to a grain). */
  overHead: number;
  uncleanShutdown: number;
  compressAlgorithm: number;
}

/** Sizes that follow from a header. @internal */
export interface VmdkGeometry {
  grainBytes: number;
  /** Grains that cover the capacity. */
  grains: number;
  /** Grain tables (= grain directory entries). */
  gdEntries: number;
  /** Bytes of one grain table as stored (a whole number of sectors). */
  gtBytes: number;
  /** Bytes of one grain directory as stored (a whole number of sectors). */
  gdBytes: number;
}

/**
 * The derived sizes of a header (grain bytes, number of grains, grain tables).
 *
 * @example
 * ```ts
 * geometry(h).gdEntries; // grain tables the directory holds
 * ```
 */
export function geometry(h: Pick<VmdkHeader, 'capacity' | 'grainSize' | 'numGTEsPerGT'>): VmdkGeometry {
  const grainBytes = h.grainSize * 512;
  const grains = Math.ceil(h.capacity / h.grainSize);
  const gdEntries = Math.ceil(grains / h.numGTEsPerGT);
  return {
    grainBytes,
    grains,
    gdEntries,
    gtBytes: Math.ceil((h.numGTEsPerGT * 4) / 512) * 512,
    gdBytes: Math.ceil((gdEntries * 4) / 512) * 512,
  };
}

function isPow2(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

/**
 * Parses and validates a sparse extent header: magic, version, grain size,
 * grain directories and descriptor inside the file, capacity that vmkit can
 * address. Throws VmkitError (CORRUPT, UNSUPPORTED, LIMIT) with the offset of
 * the offending field. With `opts.stream`, compressed grains and a grain
 * directory "at the end" (gdOffset then reads 0) are accepted: the
 * streamOptimized reader (stream.ts) handles them.
 *
 * @example
 * ```ts
 * const h = parseVmdkHeader(await readAt(storage, 0, 512), await storage.size(), storage.name);
 * ```
 */
export function parseVmdkHeader(b: Uint8Array, fileSize: number, path?: string, opts: { stream?: boolean } = {}): VmdkHeader {
  const where = path ? { path } : {};
  const corrupt = (msg: string, offset: number): VmkitError =>
    new VmkitError('CORRUPT', `vmdk${path ? ' ' + path : ''}: ${msg}`, { offset, ...where });
  if (b.length < VMDK_HEADER_SIZE) throw corrupt(`header truncated (${b.length} of ${VMDK_HEADER_SIZE} bytes)`, 0);
  const dv = new DataView(b.buffer, b.byteOffset, VMDK_HEADER_SIZE);
  if (dv.getUint32(0, true) !== VMDK_MAGIC) throw corrupt('bad magic (expected KDMV)', 0);
  const version = dv.getUint32(4, true);
  if (version < 1 || version > 3) {
    throw new VmkitError('UNSUPPORTED', `vmdk${path ? ' ' + path : ''}: sparse extent version ${version}`, { offset: 4, ...where });
  }
  const flags = dv.getUint32(8, true);
  const u64 = (at: number, what: string, max: number = Number.MAX_SAFE_INTEGER): number => {
    const v = dv.getBigUint64(at, true);
    if (v > BigInt(max)) throw new VmkitError('LIMIT', `vmdk${path ? ' ' + path : ''}: ${what} ${v} is out of range`, { offset: at, ...where });
    return Number(v);
  };
  const atEnd = dv.getBigUint64(56, true) === GD_AT_END;
  if (atEnd && !opts.stream) {
    throw new VmkitError('UNSUPPORTED', `vmdk${path ? ' ' + path : ''}: streamOptimized images (grain directory in the footer)`, { offset: 56, ...where });
  }
  if (flags & FLAG_COMPRESS && !opts.stream) {
    throw new VmkitError('UNSUPPORTED', `vmdk${path ? ' ' + path : ''}: compressed grains (streamOptimized)`, { offset: 8, ...where });
  }
  const h: VmdkHeader = {
    version,
    flags,
    // Below 2^44 sectors (8 PiB): far past what 32-bit grain offsets can store, and every byte
    // offset of the disk a safe integer (2^44 sectors is 2^53 bytes, which node:fs and the
    // block-device API refuse: a map or convert then failed with ARG_RANGE or IO).
    capacity: u64(12, 'capacity', MAX_CAPACITY_SECTORS),
    grainSize: u64(20, 'grain size', MAX_GRAIN_SECTORS),
    descriptorOffset: u64(28, 'descriptor offset', 2 ** 44),
    descriptorSize: u64(36, 'descriptor size', 2 ** 44),
    numGTEsPerGT: dv.getUint32(44, true),
    rgdOffset: u64(48, 'redundant grain directory offset', 2 ** 44),
    gdOffset: atEnd ? 0 : u64(56, 'grain directory offset', 2 ** 44),
    overHead: u64(64, 'overhead', 2 ** 44),
    uncleanShutdown: b[72]!,
    compressAlgorithm: dv.getUint16(77, true),
  };
  if (!isPow2(h.grainSize)) throw corrupt(`grain size ${h.grainSize} sectors is not a power of two`, 20);
  if (!isPow2(h.numGTEsPerGT) || h.numGTEsPerGT > MAX_GTES_PER_GT) throw corrupt(`${h.numGTEsPerGT} entries per grain table`, 44);
  if (flags & FLAG_NL_DETECT && (b[73] !== 0x0a || b[74] !== 0x20 || b[75] !== 0x0d || b[76] !== 0x0a)) {
    // The file went through a text-mode transfer that rewrote line ends.
    throw corrupt('newline detection bytes are damaged (text-mode transfer?)', 73);
  }
  const g = geometry(h);
  if (g.gdBytes > MAX_GD_BYTES) {
    throw new VmkitError('LIMIT', `vmdk${path ? ' ' + path : ''}: a capacity of ${h.capacity} sectors needs a grain directory of ${g.gdBytes} bytes`, { offset: 12, ...where });
  }
  const inFile = (off: number, bytes: number, at: number, what: string): void => {
    if (off < 1 || off * 512 + bytes > fileSize) throw corrupt(`${what} [${off * 512}, ${off * 512 + bytes}) is outside the file (${fileSize} bytes)`, at);
  };
  if (flags & FLAG_COMPRESS && h.compressAlgorithm !== 1) {
    throw new VmkitError('UNSUPPORTED', `vmdk${path ? ' ' + path : ''}: compression algorithm ${h.compressAlgorithm} (only 1, deflate)`, { offset: 77, ...where });
  }
  if (g.gdEntries > 0 && !atEnd) {
    inFile(h.gdOffset, g.gdEntries * 4, 56, 'grain directory');
    if (flags & FLAG_RGD) inFile(h.rgdOffset, g.gdEntries * 4, 48, 'redundant grain directory');
  }
  if (h.descriptorSize > 0) {
    if (h.descriptorSize * 512 > MAX_DESCRIPTOR_BYTES) {
      throw new VmkitError('LIMIT', `vmdk${path ? ' ' + path : ''}: descriptor of ${h.descriptorSize} sectors`, { offset: 36, ...where });
    }
    inFile(h.descriptorOffset, 1, 28, 'descriptor');
  }
  return h;
}

/**
 * Encodes a header (with the newline-detection bytes QEMU and VMware write).
 *
 * @example
 * ```ts
 * await storage.write(0, encodeVmdkHeader(h));
 * ```
 */
export function encodeVmdkHeader(h: VmdkHeader): Uint8Array {
  const b = new Uint8Array(VMDK_HEADER_SIZE);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, VMDK_MAGIC, true);
  dv.setUint32(4, h.version, true);
  dv.setUint32(8, h.flags, true);
  dv.setBigUint64(12, BigInt(h.capacity), true);
  dv.setBigUint64(20, BigInt(h.grainSize), true);
  dv.setBigUint64(28, BigInt(h.descriptorOffset), true);
  dv.setBigUint64(36, BigInt(h.descriptorSize), true);
  dv.setUint32(44, h.numGTEsPerGT, true);
  dv.setBigUint64(48, BigInt(h.rgdOffset), true);
  dv.setBigUint64(56, BigInt(h.gdOffset), true);
  dv.setBigUint64(64, BigInt(h.overHead), true);
  b[72] = h.uncleanShutdown;
  b[73] = 0x0a;
  b[74] = 0x20;
  b[75] = 0x0d;
  b[76] = 0x0a;
  dv.setUint16(77, h.compressAlgorithm, true);
  return b;
}
