/**
 * The numbers of the NBD protocol (the NBD project's doc/proto.md: fixed
 * newstyle handshake, structured replies, metadata contexts) and the builders
 * of the server's messages. Everything on the wire is big-endian.
 * @module
 * @internal
 */
import { concatBytes } from '../../_bytes.js';

/** `NBDMAGIC`, the first 8 bytes a server sends. */
export const NBDMAGIC: bigint = 0x4e42444d41474943n;
/** `IHAVEOPT`: the server's second magic, and the magic of every option the client sends. */
export const IHAVEOPT: bigint = 0x49484156454f5054n;
/** Magic of an option reply. */
export const REPLY_MAGIC: bigint = 0x3e889045565a9n;
/** Magic of a transmission request. */
export const REQUEST_MAGIC = 0x25609513;
/** Magic of a simple reply. */
export const SIMPLE_REPLY_MAGIC = 0x67446698;
/** Magic of a structured reply chunk. */
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server → client). */
export const FLAG_FIXED_NEWSTYLE = 1;
export const FLAG_NO_ZEROES = 2;
/** Client flags. */
export const FLAG_C_FIXED_NEWSTYLE = 1;
export const FLAG_C_NO_ZEROES = 2;

/** Transmission flags. */
export const TF = {
  HAS_FLAGS: 1,
  READ_ONLY: 2,
  SEND_FLUSH: 4,
  SEND_FUA: 8,
  ROTATIONAL: 16,
  SEND_TRIM: 32,
  SEND_WRITE_ZEROES: 64,
  SEND_DF: 128,
  CAN_MULTI_CONN: 256,
  SEND_CACHE: 1024,
  SEND_FAST_ZERO: 2048,
} as const;

/** Options (client → server during haggling). */
export const OPT = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

/** Option reply types; errors have bit 31 set. */
export const REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_PLATFORM: 0x80000004,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_BLOCK_SIZE_REQD: 0x80000008,
  ERR_TOO_BIG: 0x80000009,
} as const;

/** `NBD_REP_INFO` types. */
export const INFO = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

/** Commands. */
export const CMD = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

/** Command flags. */
export const CMD_FLAG = {
  FUA: 1,
  NO_HOLE: 2,
  DF: 4,
  REQ_ONE: 8,
  FAST_ZERO: 16,
} as const;

/** Structured reply chunk types and flags. */
export const REPLY_FLAG_DONE = 1;
export const REPLY_TYPE = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;

/** `base:allocation` status flags. */
export const STATE_HOLE = 1;
export const STATE_ZERO = 2;

/** Error values of replies. */
export const NBD_ERR = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

/** Metadata contexts this server offers. */
export const CTX_ALLOCATION = 'base:allocation';
export const CTX_DEPTH = 'qemu:allocation-depth';

/** Bytes of a request header. */
export const REQUEST_BYTES = 28;
/** Bytes of a simple reply header. */
export const SIMPLE_REPLY_BYTES = 16;
/** Bytes of a structured reply chunk header. */
export const CHUNK_BYTES = 20;

/** A parsed transmission request. */
export interface NbdRequest {
  flags: number;
  type: number;
  /** The client's cookie ("handle"): its 8 bytes, echoed verbatim (no bigint per request). */
  cookie: Uint8Array;
  /** Byte offset into the export; exact only when `offsetSafe` (hostile input can exceed 2^53). */
  offset: number;
  offsetSafe: boolean;
  length: number;
}

const u32at = (b: Uint8Array, i: number): number => ((b[i]! << 24) | (b[i + 1]! << 16) | (b[i + 2]! << 8) | b[i + 3]!) >>> 0;
function put32(b: Uint8Array, i: number, v: number): void {
  b[i] = v >>> 24;
  b[i + 1] = v >>> 16;
  b[i + 2] = v >>> 8;
  b[i + 3] = v;
}
function put16(b: Uint8Array, i: number, v: number): void {
  b[i] = v >>> 8;
  b[i + 1] = v;
}
/** Writes a safe non-negative integer as a big-endian u64. */
function put64(b: Uint8Array, i: number, v: number): void {
  put32(b, i, Math.floor(v / 4294967296));
  put32(b, i + 4, v >>> 0);
}

/** Decodes a 28-byte request header (the magic already checked by the caller). */
export function decodeRequest(b: Uint8Array): NbdRequest {
  const hi = u32at(b, 16);
  return {
    flags: (b[4]! << 8) | b[5]!,
    type: (b[6]! << 8) | b[7]!,
    cookie: b.slice(8, 16),
    offset: hi * 4294967296 + u32at(b, 20),
    offsetSafe: hi < 0x200000,
    length: u32at(b, 24),
  };
}

/** An option reply: header plus `data`. */
export function optionReply(option: number, type: number, data: Uint8Array = EMPTY): Uint8Array {
  const b = new Uint8Array(20 + data.length);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, REPLY_MAGIC);
  v.setUint32(8, option);
  v.setUint32(12, type);
  v.setUint32(16, data.length);
  b.set(data, 20);
  return b;
}

/** Writes a simple reply header at `dst[at]` (the data, if any, follows it on the wire). */
export function putSimpleReply(dst: Uint8Array, at: number, cookie: Uint8Array, error: number): void {
  put32(dst, at, SIMPLE_REPLY_MAGIC);
  put32(dst, at + 4, error);
  dst.set(cookie, at + 8);
}

/** A simple reply header. */
export function simpleReply(cookie: Uint8Array, error: number): Uint8Array {
  const b = new Uint8Array(SIMPLE_REPLY_BYTES);
  putSimpleReply(b, 0, cookie, error);
  return b;
}

/** Writes a structured reply chunk header for a payload of `length` bytes at `dst[at]`. */
export function putChunkHeader(dst: Uint8Array, at: number, cookie: Uint8Array, flags: number, type: number, length: number): void {
  put32(dst, at, STRUCTURED_REPLY_MAGIC);
  put16(dst, at + 4, flags);
  put16(dst, at + 6, type);
  dst.set(cookie, at + 8);
  put32(dst, at + 16, length);
}

/** A structured reply chunk header for a payload of `length` bytes. */
export function chunkHeader(cookie: Uint8Array, flags: number, type: number, length: number): Uint8Array {
  const b = new Uint8Array(CHUNK_BYTES);
  putChunkHeader(b, 0, cookie, flags, type, length);
  return b;
}

/** Writes the header and 8-byte offset of an `OFFSET_DATA` chunk carrying `dataLength` bytes at `dst[at]`. */
export function putDataChunkHeader(dst: Uint8Array, at: number, cookie: Uint8Array, flags: number, offset: number, dataLength: number): void {
  putChunkHeader(dst, at, cookie, flags, REPLY_TYPE.OFFSET_DATA, 8 + dataLength);
  put64(dst, at + CHUNK_BYTES, offset);
}

/** The header plus the 8-byte offset of an `OFFSET_DATA` chunk carrying `dataLength` bytes. */
export function dataChunkHeader(cookie: Uint8Array, flags: number, offset: number, dataLength: number): Uint8Array {
  const b = new Uint8Array(CHUNK_BYTES + 8);
  putDataChunkHeader(b, 0, cookie, flags, offset, dataLength);
  return b;
}

/** A whole `OFFSET_HOLE` chunk. */
export function holeChunk(cookie: Uint8Array, flags: number, offset: number, length: number): Uint8Array {
  const b = new Uint8Array(CHUNK_BYTES + 12);
  putChunkHeader(b, 0, cookie, flags, REPLY_TYPE.OFFSET_HOLE, 12);
  put64(b, CHUNK_BYTES, offset);
  put32(b, CHUNK_BYTES + 8, length);
  return b;
}

/** A whole `ERROR` chunk (final) with a human-readable message (cut to 4096 bytes). */
export function errorChunk(cookie: Uint8Array, error: number, message: string): Uint8Array {
  const msg = utf8(message).subarray(0, 4096);
  const b = new Uint8Array(CHUNK_BYTES + 6 + msg.length);
  putChunkHeader(b, 0, cookie, REPLY_FLAG_DONE, REPLY_TYPE.ERROR, 6 + msg.length);
  put32(b, CHUNK_BYTES, error);
  put16(b, CHUNK_BYTES + 4, msg.length);
  b.set(msg, CHUNK_BYTES + 6);
  return b;
}

/** A whole `BLOCK_STATUS` chunk: context id, then (length, flags) pairs. */
export function blockStatusChunk(cookie: Uint8Array, flags: number, contextId: number, extents: readonly (readonly [number, number])[]): Uint8Array {
  const n = 4 + 8 * extents.length;
  const b = new Uint8Array(CHUNK_BYTES + n);
  putChunkHeader(b, 0, cookie, flags, REPLY_TYPE.BLOCK_STATUS, n);
  put32(b, CHUNK_BYTES, contextId);
  let p = CHUNK_BYTES + 4;
  for (const [len, st] of extents) {
    put32(b, p, len);
    put32(b, p + 4, st);
    p += 8;
  }
  return b;
}

const EMPTY = new Uint8Array(0);
const enc = new TextEncoder();
/** UTF-8 bytes of a string. */
export function utf8(s: string): Uint8Array {
  return enc.encode(s);
}
const dec = new TextDecoder('utf-8', { fatal: true });
/** Decodes a protocol string: UTF-8 without NUL; null when it is not one. */
export function str(b: Uint8Array): string | null {
  try {
    const s = dec.decode(b);
    return s.includes('\0') ? null : s;
  } catch {
    return null;
  }
}

/** Big-endian u32 of a length-prefixed field, for building replies. */
export function u32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n);
  return b;
}

/** Concatenates byte arrays. */
export function cat(...parts: Uint8Array[]): Uint8Array {
  return concatBytes(parts);
}
