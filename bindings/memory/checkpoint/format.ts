/**
 * The vmkit checkpoint file format (docs/checkpoint-format.md): constants,
 * the header, index and footer codecs, and the checks a reader applies to
 * each before trusting a single offset.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { compressBound, xxh32Of } from './_codec.js';
import { checkPackedFraming, packGroups, packPageTable, unpackPageTable } from './_packed-index.js';
import { toHex } from '../../_hex.js';

export { toHex };

/**
 * "VMKITCKP": first 8 bytes of every checkpoint.
 *
 * @example
 * ```ts
 * const isCheckpoint = new TextDecoder().decode(bytes.subarray(0, 8)) === CHECKPOINT_MAGIC;
 * ```
 */
export const CHECKPOINT_MAGIC = 'VMKITCKP';
/** "VMKINDEX": first 8 bytes of the index. */
export const INDEX_MAGIC = 'VMKINDEX';
/** "VMKCKEND": first 8 bytes of the footer (the last 64 bytes of the file). */
export const FOOTER_MAGIC = 'VMKCKEND';
/**
 * Format version this code writes (it reads this one, 2 and 1).
 * Version 2 added a checksum per stored page to the page index, so a reader
 * can read and check one page without its block; version 3 packs the page
 * table (a quarter of version 2's on a real guest), the rest unchanged.
 *
 * @example
 * ```ts
 * if (r.info().version !== CHECKPOINT_VERSION) console.warn('written by an older vmkit');
 * ```
 */
export const CHECKPOINT_VERSION = 3;
/** Format versions this code reads. */
export const READ_VERSIONS: readonly number[] = [1, 2, 3];
/**
 * u32 words per page in a decoded page table, whatever the file's version:
 * block, offset in block, kind << 28 | length, xxHash32 of the record (0 in version 1 files).
 */
export const PAGE_WORDS = 4;
/** Header bytes; also the alignment of every storage block and of the index. */
export const HEADER_SIZE = 4096;
/** Alignment of storage blocks and the index. */
export const BLOCK_ALIGN = 4096;
/** Footer bytes. */
export const FOOTER_SIZE = 64;
/** Largest storage block. */
export const MAX_BLOCK_SIZE: number = 64 << 20;
/**
 * Default storage block (staging buffer) size.
 *
 * @example
 * ```ts
 * const w = await CheckpointWriter.create('vm.ckpt', { guestSize, blockSize: 4 * DEFAULT_BLOCK_SIZE });
 * ```
 */
export const DEFAULT_BLOCK_SIZE: number = 1 << 20;
/** Most pages a checkpoint may describe (8 TiB of 4 KiB pages). */
export const MAX_PAGES: number = 2 ** 31;
/** Longest parent path stored in the header. */
export const MAX_PARENT_PATH = 1024;
/** Deepest chain of diff checkpoints a reader follows. */
export const MAX_CHAIN_DEPTH = 64;

/** Page kinds in the page index. */
export const PAGE_ABSENT = 0;
/** A page of zeros (not stored). */
export const PAGE_ZERO = 1;
/** A page stored uncompressed. */
export const PAGE_RAW = 2;
/** A page stored as one LZ4 block. */
export const PAGE_LZ4 = 3;
/** Block field of a page that has no block. */
export const NO_BLOCK = 0xffffffff;

/** Codec numbers in the header. */
export const CODECS = { none: 0, lz4: 1 } as const;
/**
 * A codec name.
 *
 * @example
 * ```ts
 * const codec: CheckpointCodec = 'none'; // store pages raw
 * const w = await CheckpointWriter.create('vm.ckpt', { guestSize, codec });
 * ```
 */
export type CheckpointCodec = keyof typeof CODECS;

/**
 * The fixed fields of a checkpoint header.
 *
 * @example
 * ```ts
 * const { version, pageSize, diff, parentPath }: CheckpointHeader = reader.header;
 * ```
 */
export interface CheckpointHeader {
  version: number;
  pageSize: number;
  codec: CheckpointCodec;
  /** Largest stored block (the writer's staging buffer size). */
  blockSize: number;
  guestSize: bigint;
  /** True for a diff checkpoint (pages absent here are read from the parent). */
  diff: boolean;
  /** 16 random bytes naming this checkpoint, hex. */
  id: string;
  /** The parent's id (hex), or '' for a full checkpoint. */
  parentId: string;
  /** The parent's path as the writer was given it ('' for none). */
  parentPath: string;
  /** SHA-256 of the core.wasm that wrote the file (hex), or zeros when unknown. */
  coreBuild: string;
}

/** The footer: where the index is and how to check it. */
export interface CheckpointFooter {
  indexOffset: number;
  indexLength: number;
  id: string;
  indexChecksum: number;
  blockCount: number;
  fileLength: number;
  /**
   * 4096-byte units of the optional machine-state section that ends where
   * the index starts (footer bytes 56..59; 0: none). Readers before it
   * ignore these bytes (reserved, covered by the footer checksum).
   */
  statePages?: number;
}

/** One stored block: where it is, its length and its xxHash32. */
export interface BlockEntry {
  offset: number;
  length: number;
  checksum: number;
}

const te = new TextEncoder();
const td = new TextDecoder('utf-8', { fatal: false });

function corrupt(msg: string, offset?: number): never {
  throw new VmkitError('CORRUPT', `checkpoint: ${msg}`, offset === undefined ? {} : { offset });
}

function integrity(msg: string, offset?: number): never {
  throw new VmkitError('INTEGRITY', `checkpoint: ${msg}`, offset === undefined ? {} : { offset });
}


function fromHex(s: string, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n && 2 * i + 1 < s.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** True when a page size is a power of two in [512, 65536]. */
export function validPageSize(p: number): boolean {
  return Number.isInteger(p) && p >= 512 && p <= 65536 && (p & (p - 1)) === 0;
}

/** Encodes a header into its 4096 bytes (with its checksum). */
export function encodeHeader(h: CheckpointHeader): Uint8Array {
  const b = new Uint8Array(HEADER_SIZE);
  const v = new DataView(b.buffer);
  b.set(te.encode(CHECKPOINT_MAGIC), 0);
  v.setUint32(8, h.version, true);
  v.setUint32(12, HEADER_SIZE, true);
  v.setUint32(16, h.pageSize, true);
  v.setUint32(20, CODECS[h.codec], true);
  v.setUint32(24, h.blockSize, true);
  v.setUint32(28, BLOCK_ALIGN, true);
  v.setBigUint64(32, h.guestSize, true);
  v.setUint32(40, h.diff ? 1 : 0, true);
  const pp = te.encode(h.parentPath);
  if (pp.length > MAX_PARENT_PATH) throw new VmkitError('ARG_RANGE', `parent path longer than ${MAX_PARENT_PATH} bytes`);
  v.setUint32(44, pp.length, true);
  b.set(fromHex(h.id, 16), 48);
  b.set(fromHex(h.parentId, 16), 64);
  b.set(fromHex(h.coreBuild, 32), 80);
  b.set(pp, 112);
  v.setUint32(HEADER_SIZE - 4, xxh32Of(b.subarray(0, HEADER_SIZE - 4)), true);
  return b;
}

/** Decodes and checks a header (magic, version, checksum, every field's range). */
export function decodeHeader(b: Uint8Array): CheckpointHeader {
  if (b.length < HEADER_SIZE) corrupt('file shorter than its header', 0);
  if (td.decode(b.subarray(0, 8)) !== CHECKPOINT_MAGIC) corrupt('not a vmkit checkpoint (bad magic)', 0);
  const v = new DataView(b.buffer, b.byteOffset, HEADER_SIZE);
  const version = v.getUint32(8, true);
  if (!READ_VERSIONS.includes(version)) throw new VmkitError('UNSUPPORTED', `checkpoint format version ${version}`);
  if (v.getUint32(HEADER_SIZE - 4, true) !== xxh32Of(b.subarray(0, HEADER_SIZE - 4))) integrity('header checksum mismatch', HEADER_SIZE - 4);
  if (v.getUint32(12, true) !== HEADER_SIZE || v.getUint32(28, true) !== BLOCK_ALIGN) corrupt('bad header size or block alignment', 12);
  const pageSize = v.getUint32(16, true);
  if (!validPageSize(pageSize)) corrupt(`bad page size ${pageSize}`, 16);
  const codecNo = v.getUint32(20, true);
  const codec = (Object.keys(CODECS) as CheckpointCodec[]).find((k) => CODECS[k] === codecNo);
  if (!codec) throw new VmkitError('UNSUPPORTED', `checkpoint codec ${codecNo}`);
  const blockSize = v.getUint32(24, true);
  if (blockSize < compressBound(pageSize) || blockSize > MAX_BLOCK_SIZE) corrupt(`bad block size ${blockSize}`, 24);
  const guestSize = v.getBigUint64(32, true);
  if (guestSize % BigInt(pageSize) !== 0n) corrupt('guest size is not a whole number of pages', 32);
  if (guestSize / BigInt(pageSize) > BigInt(MAX_PAGES)) throw new VmkitError('LIMIT', `guest of ${guestSize} bytes has more than ${MAX_PAGES} pages`);
  const flags = v.getUint32(40, true);
  if (flags & ~1) corrupt('unknown header flags', 40);
  const ppLen = v.getUint32(44, true);
  if (ppLen > MAX_PARENT_PATH) corrupt('parent path too long', 44);
  return {
    version,
    pageSize,
    codec,
    blockSize,
    guestSize,
    diff: (flags & 1) !== 0,
    id: toHex(b.subarray(48, 64)),
    parentId: (flags & 1) !== 0 ? toHex(b.subarray(64, 80)) : '',
    parentPath: td.decode(b.subarray(112, 112 + ppLen)),
    coreBuild: toHex(b.subarray(80, 112)),
  };
}

/** Encodes the footer (64 bytes, with its checksum). */
export function encodeFooter(f: CheckpointFooter): Uint8Array {
  const b = new Uint8Array(FOOTER_SIZE);
  const v = new DataView(b.buffer);
  b.set(te.encode(FOOTER_MAGIC), 0);
  v.setBigUint64(8, BigInt(f.indexOffset), true);
  v.setBigUint64(16, BigInt(f.indexLength), true);
  b.set(fromHex(f.id, 16), 24);
  v.setUint32(40, f.indexChecksum, true);
  v.setUint32(44, f.blockCount, true);
  v.setBigUint64(48, BigInt(f.fileLength), true);
  v.setUint32(56, f.statePages ?? 0, true);
  v.setUint32(60, xxh32Of(b.subarray(0, 60)), true);
  return b;
}

/** Decodes and checks a footer against the file's real length and header id. */
export function decodeFooter(b: Uint8Array, fileLength: number, header: CheckpointHeader): CheckpointFooter {
  if (b.length !== FOOTER_SIZE || td.decode(b.subarray(0, 8)) !== FOOTER_MAGIC) {
    corrupt('incomplete checkpoint: no footer (the save did not finish, or the file is truncated)', fileLength - FOOTER_SIZE);
  }
  const v = new DataView(b.buffer, b.byteOffset, FOOTER_SIZE);
  if (v.getUint32(60, true) !== xxh32Of(b.subarray(0, 60))) integrity('footer checksum mismatch', fileLength - 4);
  const big = (o: number): number => {
    const x = v.getBigUint64(o, true);
    if (x > BigInt(Number.MAX_SAFE_INTEGER)) corrupt('footer offset out of range', fileLength - FOOTER_SIZE + o);
    return Number(x);
  };
  const f: CheckpointFooter = {
    indexOffset: big(8),
    indexLength: big(16),
    id: toHex(b.subarray(24, 40)),
    indexChecksum: v.getUint32(40, true),
    blockCount: v.getUint32(44, true),
    fileLength: big(48),
    statePages: v.getUint32(56, true),
  };
  if (f.fileLength !== fileLength) corrupt(`file is ${fileLength} bytes, footer says ${f.fileLength} (truncated or extended)`);
  if (f.id !== header.id) corrupt('footer belongs to another checkpoint');
  const pages = Number(header.guestSize / BigInt(header.pageSize));
  if (f.indexOffset < HEADER_SIZE || f.indexOffset % BLOCK_ALIGN !== 0) corrupt('index offset out of range');
  if (header.version >= 3) {
    // Packed: at least one group header per 65536 pages, at most every group raw.
    const least = 16 + 16 * f.blockCount + 4 * packGroups(pages);
    if (f.indexLength < least || f.indexLength > least + 16 * pages) corrupt('index length does not match its block and page counts');
  } else if (f.indexLength !== indexLength(f.blockCount, pages, header.version)) corrupt('index length does not match its block and page counts');
  if (f.indexOffset + f.indexLength + FOOTER_SIZE !== fileLength) corrupt('index does not end at the footer');
  if (f.statePages! * BLOCK_ALIGN > f.indexOffset - HEADER_SIZE) corrupt('machine-state section out of range', fileLength - FOOTER_SIZE + 56);
  return f;
}

/** Bytes of one page table entry in a file of format `version`. */
export function pageEntryBytes(version: number): number {
  return version === 1 ? 12 : 16;
}

/** Bytes of an index with `blocks` blocks and `pages` pages (format `version`; version 3's packed table: its largest, every group raw). */
export function indexLength(blocks: number, pages: number, version: number = CHECKPOINT_VERSION): number {
  return 16 + 16 * blocks + pageEntryBytes(version) * pages + (version >= 3 ? 4 * packGroups(pages) : 0);
}

/** The decoded index: the block table and the page table ({@link PAGE_WORDS} u32 per page). */
export interface CheckpointIndex {
  blocks: BlockEntry[];
  pages: Uint32Array;
}

/**
 * Encodes an index in format `version` from a page table of {@link PAGE_WORDS}
 * words per page (version 1 drops the record checksums; in version 2 a
 * block's checksum field is reserved, 0).
 */
export function encodeIndex(blocks: readonly BlockEntry[], pages: Uint32Array, version: number = CHECKPOINT_VERSION): Uint8Array {
  const n = pages.length / PAGE_WORDS;
  const packed = version >= 3 ? packPageTable(pages) : undefined;
  const b = new Uint8Array(packed ? 16 + 16 * blocks.length + packed.length : indexLength(blocks.length, n, version));
  const v = new DataView(b.buffer);
  b.set(te.encode(INDEX_MAGIC), 0);
  v.setUint32(8, blocks.length, true);
  v.setUint32(12, n, true);
  let o = 16;
  for (const bl of blocks) {
    v.setBigUint64(o, BigInt(bl.offset), true);
    v.setUint32(o + 8, bl.length, true);
    v.setUint32(o + 12, bl.checksum, true);
    o += 16;
  }
  if (version === 1) {
    for (let p = 0; p < n; p++, o += 12) {
      v.setUint32(o, pages[PAGE_WORDS * p]!, true);
      v.setUint32(o + 4, pages[PAGE_WORDS * p + 1]!, true);
      v.setUint32(o + 8, pages[PAGE_WORDS * p + 2]!, true);
    }
    return b;
  }
  if (packed) {
    b.set(packed, o);
    return b;
  }
  // Little-endian hosts (every wasm host) can copy the page table as is.
  b.set(new Uint8Array(pages.buffer, pages.byteOffset, pages.byteLength), o);
  return b;
}

/**
 * Decodes an index and checks every entry: blocks in ascending, non-overlapping
 * order between the header and the index, each page's kind, block and extent.
 */
export function decodeIndex(b: Uint8Array, header: CheckpointHeader, footer: CheckpointFooter): CheckpointIndex {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (td.decode(b.subarray(0, 8)) !== INDEX_MAGIC) corrupt('bad index magic', footer.indexOffset);
  if (xxh32Of(b) !== footer.indexChecksum) integrity('index checksum mismatch', footer.indexOffset);
  const nb = v.getUint32(8, true);
  const np = v.getUint32(12, true);
  const pagesWanted = Number(header.guestSize / BigInt(header.pageSize));
  const start = 16 + 16 * nb;
  const lengthOk = header.version >= 3 ? start <= b.length : b.length === indexLength(nb, np, header.version);
  if (nb !== footer.blockCount || np !== pagesWanted || !lengthOk) corrupt('index counts do not match the header');
  // Framing first: the page table allocated below is then bounded by the index's length.
  if (header.version >= 3) checkPackedFraming(b.subarray(start), np, footer.indexOffset + start);
  const blocks: BlockEntry[] = new Array(nb);
  let prevEnd = HEADER_SIZE;
  // Blocks end before the machine-state section (when there is one), which ends at the index.
  const dataEnd = footer.indexOffset - (footer.statePages ?? 0) * BLOCK_ALIGN;
  for (let i = 0, o = 16; i < nb; i++, o += 16) {
    const off = Number(v.getBigUint64(o, true));
    const len = v.getUint32(o + 8, true);
    if (off % BLOCK_ALIGN !== 0 || off < prevEnd || len === 0 || len > header.blockSize || off + len > dataEnd) {
      corrupt(`block ${i} lies outside the data area or overlaps another`, footer.indexOffset + o);
    }
    prevEnd = off + len;
    const checksum = v.getUint32(o + 12, true);
    if (header.version !== 1 && checksum !== 0) corrupt(`block ${i} has a checksum (reserved in version ${header.version})`, footer.indexOffset + o + 12);
    blocks[i] = { offset: off, length: len, checksum };
  }
  const pages = new Uint32Array(np * PAGE_WORDS);
  if (header.version === 1) {
    for (let p = 0, o = start; p < np; p++, o += 12) {
      pages[PAGE_WORDS * p] = v.getUint32(o, true);
      pages[PAGE_WORDS * p + 1] = v.getUint32(o + 4, true);
      pages[PAGE_WORDS * p + 2] = v.getUint32(o + 8, true);
    }
  } else if (header.version >= 3) unpackPageTable(b.subarray(start), pages, footer.indexOffset + start);
  else new Uint8Array(pages.buffer).set(b.subarray(start, start + np * 16));
  const bound = compressBound(header.pageSize);
  for (let p = 0; p < np; p++) {
    const blk = pages[PAGE_WORDS * p]!;
    const off = pages[PAGE_WORDS * p + 1]!;
    const kind = pages[PAGE_WORDS * p + 2]! >>> 28;
    const len = pages[PAGE_WORDS * p + 2]! & 0x0fffffff;
    if (kind === PAGE_ZERO) continue;
    if (kind === PAGE_ABSENT) {
      if (!header.diff) corrupt(`page ${p} is absent from a full checkpoint`);
      continue;
    }
    if (kind !== PAGE_RAW && kind !== PAGE_LZ4) corrupt(`page ${p} has unknown kind ${kind}`);
    const bl = blocks[blk];
    if (!bl || off + len > bl.length || (kind === PAGE_RAW ? len !== header.pageSize : len === 0 || len > bound)) {
      corrupt(`page ${p} points outside its block`);
    }
  }
  return { blocks, pages };
}
