/**
 * VHDX log replay (MS-VHDX 2.3): a header whose log GUID is not zero says
 * metadata updates may sit in the log without having reached their place.
 * The log is a circular buffer of 4 KiB sectors holding entries:
 *
 * ```
 * entry = [ header + descriptors ][ descriptors … ][ data sector ][ data sector ] …
 *   header (64 B): "loge" | CRC-32C of the whole entry | entry length | tail (offset of the
 *                  sequence's first entry) | sequence number (u64) | descriptor count |
 *                  reserved | log GUID (16 B) | flushed file offset | last file offset
 *   descriptor (32 B): "desc" | trailing 4 B | leading 8 B | file offset | sequence number
 *                      "zero" | reserved    | length      | file offset | sequence number
 *   data sector (4 KiB): "data" | sequence high | 4084 bytes | sequence low
 *   a "desc" writes 4 KiB at its file offset: leading 8 B, the sector's 4084, trailing 4 B
 * ```
 *
 * The active sequence ends at the valid entry with the highest sequence
 * number (the head) and starts at the entry its tail names; every entry
 * between must be valid with consecutive numbers. Valid: signature, this
 * file's log GUID, a length of whole sectors inside the log, a checksum
 * that matches, descriptors and data sectors carrying the entry's number.
 * Replay writes every descriptor in order and grows the file to the last
 * file offset. QEMU's block/vhdx-log.c was the reference read; it skips the
 * tail check (its own logs hold one entry at a time). docs/vhdx.md.
 * @module
 */
import { VmkitError } from '../../../errors.js';
import { readAt, type Storage } from '../../backends/storage.js';
import { crc32c, MiB, type VhdxHeader } from './header.js';

/** Largest log vmkit reads (the spec allows any multiple of 1 MiB; Hyper-V and QEMU write 1 MiB). */
export const MAX_LOG_BYTES: number = 64 * MiB;
/** Most zeroes one replay writes (zero descriptors): past it the replay is LIMIT. */
const MAX_ZERO_BYTES: number = 1 << 30;
const SECTOR = 4096;

/** One write of a replay: 4 KiB of `data`, or `zeroes` bytes of zeroes, at `offset`. */
export interface LogWrite {
  offset: number;
  data?: Uint8Array;
  zeroes?: number;
}

/** What replaying the log does. */
export interface LogReplay {
  writes: LogWrite[];
  /** The file grows to this many bytes (0: no growth). */
  size: number;
  /** Entries replayed and where the sequence starts in the file (for messages). */
  entries: number;
  at: number;
}

interface Entry {
  pos: number;
  seq: bigint;
  tail: number;
  length: number;
  flushed: number;
  last: number;
  writes: LogWrite[];
}

/**
 * Reads the log of `header` (the current header, at `hAt`) and returns what
 * replaying its active sequence writes, or undefined when it holds no valid
 * entry (an empty log). Bad geometry is CORRUPT at the header field; a
 * sequence whose tail is not valid, or whose flushed file offset is past the
 * end of the file (a truncated file), is CORRUPT at the entry.
 *
 * @example
 * ```ts
 * const r = await readLog(storage, header, VHDX_HEADER1, await storage.size());
 * if (r) await applyLog(storage, r);
 * ```
 * @internal
 */
export async function readLog(storage: Storage, header: VhdxHeader, hAt: number, fileSize: number): Promise<LogReplay | undefined> {
  const name = storage.name;
  const len = header.logLength;
  const base = header.logOffset;
  if (base < MiB || base % MiB !== 0 || len === 0 || len % MiB !== 0 || base + len > fileSize) {
    throw new VmkitError('CORRUPT', `vhdx ${name}: log at ${base} (${len} bytes) is not 1 MiB aligned or outside the file`, { offset: hAt + 68, path: name });
  }
  if (header.logVersion !== 0) throw new VmkitError('UNSUPPORTED', `vhdx ${name}: log version ${header.logVersion} (only 0)`, { offset: hAt + 64, path: name });
  if (len > MAX_LOG_BYTES) throw new VmkitError('LIMIT', `vhdx ${name}: a log of ${len} bytes (vmkit replays at most ${MAX_LOG_BYTES})`, { offset: hAt + 68, path: name });
  const log = await readAt(storage, base, len);
  const entries = new Map<number, Entry>();
  let head: Entry | undefined;
  for (let pos = 0; pos < len; pos += SECTOR) {
    const e = parseEntry(log, pos, header.logGuid);
    if (!e) continue;
    entries.set(pos, e);
    if (!head || e.seq > head.seq) head = e;
  }
  if (!head) return undefined;
  // From the head's tail to the head, entry after entry with consecutive numbers.
  const seqn: Entry[] = [];
  let at = head.tail;
  for (let guard = 0; ; guard++) {
    const e = entries.get(at);
    if (!e || guard > len / SECTOR || (seqn.length > 0 && e.seq !== seqn[seqn.length - 1]!.seq + 1n)) {
      throw new VmkitError('CORRUPT', `vhdx ${name}: the log's active sequence (head at ${base + head.pos}) does not run back to its tail at ${base + head.tail}`, { offset: base + at, path: name });
    }
    seqn.push(e);
    if (e === head) break;
    at = (at + e.length) % len;
  }
  const writes: LogWrite[] = [];
  let size = 0;
  let zeroes = 0;
  for (const e of seqn) {
    if (e.flushed > fileSize) {
      throw new VmkitError('CORRUPT', `vhdx ${name}: the log entry at ${base + e.pos} was written when the file held ${e.flushed} bytes; it holds ${fileSize} (truncated)`, { offset: base + e.pos + 48, path: name });
    }
    const limit = Math.max(fileSize, e.last);
    for (const w of e.writes) {
      const n = w.data ? SECTOR : w.zeroes!;
      // Metadata lives past the header section (1 MiB); the log never rewrites itself.
      if (w.offset < MiB || w.offset + n > limit || (w.offset < base + len && w.offset + n > base)) {
        throw new VmkitError('CORRUPT', `vhdx ${name}: the log entry at ${base + e.pos} writes [${w.offset}, ${w.offset + n}), outside the file's metadata`, { offset: base + e.pos, path: name });
      }
      if (w.zeroes !== undefined && (zeroes += w.zeroes) > MAX_ZERO_BYTES) {
        throw new VmkitError('LIMIT', `vhdx ${name}: the log zeroes more than ${MAX_ZERO_BYTES} bytes`, { offset: base + e.pos, path: name });
      }
      writes.push(w);
    }
    if (e.last > size) size = e.last;
  }
  return { writes, size: size > fileSize ? Math.ceil(size / MiB) * MiB : 0, entries: seqn.length, at: base + seqn[0]!.pos };
}

/** The entry at `pos` of the log, or undefined when it is not a valid entry of `guid`. */
function parseEntry(log: Uint8Array, pos: number, guid: Uint8Array): Entry | undefined {
  const len = log.length;
  const dv = new DataView(log.buffer, log.byteOffset, log.byteLength);
  if (dv.getUint32(pos, true) !== 0x65676f6c) return undefined; // "loge"
  const length = dv.getUint32(pos + 8, true);
  const tail = dv.getUint32(pos + 12, true);
  const seq = dv.getBigUint64(pos + 16, true);
  const count = dv.getUint32(pos + 24, true);
  if (length === 0 || length % SECTOR !== 0 || length > len || tail % SECTOR !== 0 || tail >= len || seq === 0n) return undefined;
  for (let i = 0; i < 16; i++) if (log[pos + 32 + i] !== guid[i]) return undefined;
  const descSectors = Math.ceil((count + 2) / 128);
  if (count > length / 32 || descSectors > length / SECTOR) return undefined;
  // The entry's sectors, wrapping at the end of the log.
  const entry = new Uint8Array(length);
  for (let s = 0; s < length / SECTOR; s++) {
    const from = (pos + s * SECTOR) % len;
    entry.set(log.subarray(from, from + SECTOR), s * SECTOR);
  }
  if (crc32c(entry, 4) !== dv.getUint32(pos + 4, true)) return undefined;
  const ev = new DataView(entry.buffer);
  const flushed = Number(ev.getBigUint64(48, true));
  const last = Number(ev.getBigUint64(56, true));
  if (!Number.isSafeInteger(flushed) || !Number.isSafeInteger(last)) return undefined;
  const writes: LogWrite[] = [];
  let data = descSectors;
  for (let i = 0; i < count; i++) {
    const d = 64 + i * 32;
    const sig = ev.getUint32(d, true);
    const offset = Number(ev.getBigUint64(d + 16, true));
    if (ev.getBigUint64(d + 24, true) !== seq || !Number.isSafeInteger(offset) || offset % SECTOR !== 0) return undefined;
    if (sig === 0x6f72657a) {
      // "zero"
      const n = Number(ev.getBigUint64(d + 8, true));
      if (!Number.isSafeInteger(n) || n % SECTOR !== 0) return undefined;
      writes.push({ offset, zeroes: n });
    } else if (sig === 0x63736564) {
      // "desc": its data sector is the next one after the descriptors.
      if (data >= length / SECTOR) return undefined;
      const s = data++ * SECTOR;
      if (ev.getUint32(s, true) !== 0x61746164) return undefined; // "data"
      const sseq = (BigInt(ev.getUint32(s + 4, true)) << 32n) | BigInt(ev.getUint32(s + 4092, true));
      if (sseq !== seq) return undefined;
      const out = new Uint8Array(SECTOR);
      out.set(entry.subarray(d + 8, d + 16), 0);
      out.set(entry.subarray(s + 8, s + 4092), 8);
      out.set(entry.subarray(d + 4, d + 8), 4092);
      writes.push({ offset, data: out });
    } else return undefined;
  }
  return { pos, seq, tail, length, flushed, last, writes };
}

/**
 * Writes a replay into `storage` (descriptors in order, then the growth),
 * and makes it durable. The caller then clears the log GUID in the headers.
 *
 * @example
 * ```ts
 * await applyLog(storage, replay);
 * ```
 * @internal
 */
export async function applyLog(storage: Storage, r: LogReplay): Promise<void> {
  const zero = new Uint8Array(Math.min(MiB, r.writes.reduce((m, w) => Math.max(m, w.zeroes ?? 0), 0)));
  for (const w of r.writes) {
    if (w.data) await storage.write(w.offset, w.data);
    else for (let o = 0; o < w.zeroes!; o += zero.length) await storage.write(w.offset + o, zero.subarray(0, Math.min(zero.length, w.zeroes! - o)));
  }
  if (r.size > (await storage.size())) await storage.truncate(r.size);
  await storage.flush();
}

/**
 * A read-only view of `inner` as it reads once `r` is replayed, for opening
 * a dirty VHDX read-only without changing it (QEMU refuses that; the spec
 * asks for a replay in memory).
 *
 * @example
 * ```ts
 * const view = new _ReplayedStorage(storage, replay);
 * ```
 * @internal
 */
export class _ReplayedStorage implements Storage {
  readonly readOnly = true;
  private readonly inner: Storage;
  private readonly writes: LogWrite[];
  private readonly grown: number;

  constructor(inner: Storage, r: LogReplay) {
    this.inner = inner;
    this.writes = r.writes;
    this.grown = r.size;
  }

  get name(): string {
    return this.inner.name;
  }

  async size(): Promise<number> {
    return Math.max(await this.inner.size(), this.grown);
  }

  async readInto(offset: number, dst: Uint8Array): Promise<void> {
    await this.inner.readInto(offset, dst);
    const end = offset + dst.length;
    // In replay order: a later write over the same bytes wins, as on disk.
    for (const w of this.writes) {
      const n = w.data ? SECTOR : w.zeroes!;
      if (w.offset >= end || w.offset + n <= offset) continue;
      const lo = Math.max(offset, w.offset);
      const hi = Math.min(end, w.offset + n);
      if (w.data) dst.set(w.data.subarray(lo - w.offset, hi - w.offset), lo - offset);
      else dst.fill(0, lo - offset, hi - offset);
    }
  }

  write(): Promise<void> {
    return Promise.reject(new VmkitError('INVALID_STATE', `write: ${this.name} is open read-only (its log is replayed in memory)`, { path: this.name }));
  }

  truncate(): Promise<void> {
    return this.write();
  }

  async flush(): Promise<void> {}

  close(): Promise<void> {
    return this.inner.close();
  }
}
