/**
 * The transmission phase of one NBD connection: requests read off the wire
 * and served concurrently (the protocol lets replies go out of order), with
 * the work and memory a client can cause bounded: at most `maxPayload` bytes
 * per request, `inflightBytes` of reads and writes in flight, and no new
 * request read while the socket's send buffer is over that too (a client
 * that stops reading replies stops being served, it cannot grow the server).
 * @module
 * @internal
 */
import { isVmkitError } from '../../errors.js';
import type { BlockDevice } from '../device.js';
import type { _Inbox } from './_inbox.js';
import {
  CMD,
  CMD_FLAG,
  NBD_ERR,
  REPLY_FLAG_DONE,
  REPLY_TYPE,
  REQUEST_BYTES,
  REQUEST_MAGIC,
  STATE_HOLE,
  STATE_ZERO,
  CHUNK_BYTES,
  SIMPLE_REPLY_BYTES,
  blockStatusChunk,
  chunkHeader,
  dataChunkHeader,
  decodeRequest,
  putDataChunkHeader,
  putSimpleReply,
  errorChunk,
  holeChunk,
  simpleReply,
  type NbdRequest,
} from './_protocol.js';

/** What option haggling agreed, and what the transmission phase needs. */
export interface _Agreed {
  device: BlockDevice;
  readOnly: boolean;
  structured: boolean;
  /** Selected metadata contexts by id. */
  contexts: Map<number, 'allocation' | 'depth'>;
  /** The client asked for NBD_INFO_BLOCK_SIZE with NBD_OPT_GO: it promised aligned requests. */
  blockSizeAgreed: boolean;
  /** Fast zeroing: the format writes zeroes as metadata (qcow2), not data. */
  fastZero: boolean;
}

/** The send side: the current stream (plain or TLS). */
export interface _Writer {
  write(parts: readonly Uint8Array[]): void;
  /** Bytes queued in the stream and not yet sent. */
  pending(): number;
  /** Resolves once the stream's queue has drained (or the stream is gone). */
  drained(): Promise<void>;
}

/** Limits of one connection. */
export interface _Limits {
  maxPayload: number;
  inflightBytes: number;
  maxInflight: number;
  maxExtents: number;
}

/** A request the client broke the protocol with badly enough that the connection ends (hard disconnect). */
export class _ProtocolViolation extends Error {
  constructor(why: string) {
    super(why);
    this.name = '_ProtocolViolation';
  }
}

const SECTOR = 512;
const MAX_DESC = 0xffff_fe00; // a 32-bit descriptor length, sector-aligned
const ZEROES = new Uint8Array(1 << 20);

// Flags each command may carry (FUA is valid on every command once SEND_FUA is advertised).
const ALLOWED: Record<number, number> = {
  [CMD.READ]: CMD_FLAG.FUA | CMD_FLAG.DF,
  [CMD.WRITE]: CMD_FLAG.FUA,
  [CMD.FLUSH]: CMD_FLAG.FUA,
  [CMD.TRIM]: CMD_FLAG.FUA,
  [CMD.CACHE]: CMD_FLAG.FUA,
  [CMD.WRITE_ZEROES]: CMD_FLAG.FUA | CMD_FLAG.NO_HOLE | CMD_FLAG.FAST_ZERO,
  [CMD.BLOCK_STATUS]: CMD_FLAG.FUA | CMD_FLAG.REQ_ONE,
};

/** An NBD error for a request, with the message structured replies carry. */
class _Reply extends Error {
  readonly errno: number;
  constructor(errno: number, message: string) {
    super(message);
    this.errno = errno;
  }
}

// Node's Buffer.allocUnsafe where it exists (this module runs in Node; the fallback keeps it loadable elsewhere).
const _unzeroed: (n: number) => Uint8Array = (globalThis as { Buffer?: { allocUnsafeSlow(n: number): Uint8Array } }).Buffer
  ? (n) => (globalThis as unknown as { Buffer: { allocUnsafeSlow(n: number): Uint8Array } }).Buffer.allocUnsafeSlow(n)
  : (n) => new Uint8Array(n);

/** The NBD error value for an exception from the block layer. */
export function _errnoOf(e: unknown): number {
  if (e instanceof _Reply) return e.errno;
  if (isVmkitError(e)) {
    switch (e.code) {
      case 'FENCED':
        return NBD_ERR.EPERM;
      case 'ARG_RANGE':
      case 'ARG_TYPE':
        return NBD_ERR.EINVAL;
      case 'INVALID_STATE':
        return NBD_ERR.ESHUTDOWN;
      case 'LIMIT':
        return NBD_ERR.ENOSPC;
      case 'IO': {
        const c = (e.cause as { code?: string } | undefined)?.code;
        return c === 'ENOSPC' || c === 'EDQUOT' || c === 'EFBIG' ? NBD_ERR.ENOSPC : NBD_ERR.EIO;
      }
      default:
        return NBD_ERR.EIO;
    }
  }
  return NBD_ERR.EIO;
}

/**
 * A readers–writer gate: ordinary requests share it; a request that must
 * read-modify-write a partial sector (a client that did not agree to the
 * block size) holds it alone, so no other write lands between its read and
 * its write.
 */
class _Gate {
  private shared = 0;
  private exclusive = false;
  private readonly waiters: { excl: boolean; go: () => void }[] = [];

  async run<T>(excl: boolean, f: () => Promise<T>): Promise<T> {
    if (this.exclusive || (excl && this.shared > 0) || this.waiters.length > 0) {
      await new Promise<void>((go) => this.waiters.push({ excl, go }));
    } else if (excl) this.exclusive = true;
    else this.shared++;
    try {
      return await f();
    } finally {
      if (excl) this.exclusive = false;
      else this.shared--;
      this.admit();
    }
  }

  private admit(): void {
    while (this.waiters.length > 0 && !this.exclusive) {
      const w = this.waiters[0]!;
      if (w.excl) {
        if (this.shared > 0) return;
        this.waiters.shift();
        this.exclusive = true;
        w.go();
        return;
      }
      this.waiters.shift();
      this.shared++;
      w.go();
    }
  }
}

/** The transmission phase of one connection. */
export class _Session {
  private inflight = 0;
  private inflightBytes = 0;
  private readonly settled = new Set<Promise<void>>();
  private slot: (() => void) | undefined;
  private readonly gate = new _Gate();
  private stopping = false;
  /** Counts by command name, for the server's stats. */
  readonly counts = { requests: 0, errors: 0, bytesRead: 0, bytesWritten: 0 };

  private readonly a: _Agreed;
  private readonly inbox: _Inbox;
  private readonly out: _Writer;
  private readonly lim: _Limits;

  constructor(a: _Agreed, inbox: _Inbox, out: _Writer, lim: _Limits) {
    this.a = a;
    this.inbox = inbox;
    this.out = out;
    this.lim = lim;
  }

  /** Stops reading new requests; those in flight still get their replies. */
  stop(): void {
    this.stopping = true;
    this.inbox.end(new Error('the server is shutting down'));
  }

  /**
   * Serves requests until the client disconnects (NBD_CMD_DISC or EOF) or the
   * server stops; then waits for the replies of those in flight.
   * Throws {@link _ProtocolViolation} when the client broke the framing.
   */
  async run(): Promise<'disc' | 'eof' | 'stopped'> {
    let how: 'disc' | 'eof' | 'stopped' = 'eof';
    try {
      for (;;) {
        if (this.stopping) {
          how = 'stopped';
          break;
        }
        await this.roomForOne();
        let h: Uint8Array;
        try {
          h = await this.inbox.take(REQUEST_BYTES);
        } catch {
          how = this.stopping ? 'stopped' : 'eof';
          break;
        }
        const magic = (h[0]! << 24) | (h[1]! << 16) | (h[2]! << 8) | h[3]!;
        if (magic >>> 0 !== REQUEST_MAGIC) throw new _ProtocolViolation(`bad request magic 0x${(magic >>> 0).toString(16)}`);
        const req = decodeRequest(h);
        let payload: Uint8Array | undefined;
        if (req.type === CMD.WRITE) {
          // The payload follows the header whatever we think of the request; past the
          // largest we accept, skipping it would still cost the bandwidth: hang up instead.
          if (req.length > this.lim.maxPayload) throw new _ProtocolViolation(`write of ${req.length} bytes is over the maximum payload ${this.lim.maxPayload}`);
          try {
            payload = await this.inbox.take(req.length);
          } catch (e) {
            // Stopped while the payload was arriving: the write was never taken (no reply; a client
            // with reconnect sends it again), not a broken client.
            if (this.stopping) {
              how = 'stopped';
              break;
            }
            throw e;
          }
        }
        if (req.type === CMD.DISC) {
          how = 'disc';
          break;
        }
        this.counts.requests++;
        const cost = req.type === CMD.READ || req.type === CMD.WRITE ? Math.min(req.length, this.lim.maxPayload) : 0;
        this.inflight++;
        this.inflightBytes += cost;
        const p: Promise<void> = this.serve(req, payload).finally(() => {
          this.inflight--;
          this.inflightBytes -= cost;
          this.settled.delete(p);
          const s = this.slot;
          this.slot = undefined;
          s?.();
        });
        this.settled.add(p);
      }
    } finally {
      await Promise.all([...this.settled]);
    }
    return how;
  }

  // Waits until one more request fits the in-flight bounds and the client reads its replies.
  private async roomForOne(): Promise<void> {
    for (;;) {
      if (this.inflight > 0 && (this.inflight >= this.lim.maxInflight || this.inflightBytes >= this.lim.inflightBytes)) {
        await new Promise<void>((r) => (this.slot = r));
        continue;
      }
      if (this.out.pending() > this.lim.inflightBytes) {
        await this.out.drained();
        continue;
      }
      return;
    }
  }

  private async serve(req: NbdRequest, payload: Uint8Array | undefined): Promise<void> {
    try {
      await this.dispatch(req, payload);
    } catch (e) {
      this.counts.errors++;
      this.fail(req, _errnoOf(e), (e as Error)?.message ?? String(e));
    }
  }

  private fail(req: NbdRequest, errno: number, message: string): void {
    if (this.a.structured) this.out.write([errorChunk(req.cookie, errno, message)]);
    else this.out.write([simpleReply(req.cookie, errno)]);
  }

  private ok(req: NbdRequest): void {
    if (this.a.structured) this.out.write([chunkHeader(req.cookie, REPLY_FLAG_DONE, REPLY_TYPE.NONE, 0)]);
    else this.out.write([simpleReply(req.cookie, 0)]);
  }

  // Checks flags, bounds and alignment; returns the range as numbers.
  private check(req: NbdRequest): { off: number; len: number; aligned: boolean } {
    const allowed = ALLOWED[req.type];
    if (allowed === undefined) throw new _Reply(NBD_ERR.EINVAL, `unknown command ${req.type}`);
    if ((req.flags & ~allowed) !== 0) throw new _Reply(NBD_ERR.EINVAL, `flags 0x${req.flags.toString(16)} are not valid for command ${req.type}`);
    if (req.type === CMD.READ && req.flags & CMD_FLAG.DF && !this.a.structured) throw new _Reply(NBD_ERR.EINVAL, 'DF without structured replies');
    if (req.type === CMD.FLUSH) return { off: 0, len: 0, aligned: true };
    const size = this.a.device.size;
    const writing = req.type === CMD.WRITE || req.type === CMD.WRITE_ZEROES || req.type === CMD.TRIM;
    if (writing && this.a.readOnly) throw new _Reply(NBD_ERR.EPERM, 'the export is read-only');
    if (!req.offsetSafe || req.offset + req.length > size) {
      throw new _Reply(req.type === CMD.WRITE || req.type === CMD.WRITE_ZEROES ? NBD_ERR.ENOSPC : NBD_ERR.EINVAL, `[${req.offset}, +${req.length}) is past the end of the export (${size})`);
    }
    const off = req.offset;
    const aligned = off % SECTOR === 0 && req.length % SECTOR === 0;
    if (!aligned && this.a.blockSizeAgreed) throw new _Reply(NBD_ERR.EINVAL, `offset ${off} / length ${req.length} not aligned to the advertised minimum block size ${SECTOR}`);
    return { off, len: req.length, aligned };
  }

  private async dispatch(req: NbdRequest, payload: Uint8Array | undefined): Promise<void> {
    const { off, len, aligned } = this.check(req);
    const dev = this.a.device;
    const fua = (req.flags & CMD_FLAG.FUA) !== 0;
    switch (req.type) {
      case CMD.READ:
        if (len > this.lim.maxPayload) throw new _Reply(NBD_ERR.EOVERFLOW, `read of ${len} bytes is over the maximum payload ${this.lim.maxPayload}`);
        return this.gate.run(false, () => this.read(req, off, len, aligned));
      case CMD.WRITE:
        await this.gate.run(!aligned, () => (aligned ? dev.write(off, payload!) : this.patch(off, payload!)));
        this.counts.bytesWritten += len;
        if (fua) await dev.flush();
        return this.ok(req);
      case CMD.FLUSH:
        await dev.flush();
        return this.ok(req);
      case CMD.TRIM: {
        // A hint: only whole sectors inside the range are discarded.
        const a = Math.ceil(off / SECTOR) * SECTOR;
        const b = Math.floor((off + len) / SECTOR) * SECTOR;
        if (b > a) await this.gate.run(false, () => dev.discard(a, b - a));
        if (fua) await dev.flush();
        return this.ok(req);
      }
      case CMD.WRITE_ZEROES: {
        const noHole = (req.flags & CMD_FLAG.NO_HOLE) !== 0;
        if (req.flags & CMD_FLAG.FAST_ZERO && (!this.a.fastZero || noHole || !aligned)) {
          throw new _Reply(NBD_ERR.ENOTSUP, 'zeroing this range is no faster than writing it');
        }
        await this.gate.run(!aligned, () => this.zero(off, len, noHole, aligned));
        if (fua) await dev.flush();
        return this.ok(req);
      }
      case CMD.BLOCK_STATUS:
        if (!this.a.structured || this.a.contexts.size === 0) throw new _Reply(NBD_ERR.EINVAL, 'no metadata context was selected');
        if (len === 0) throw new _Reply(NBD_ERR.EINVAL, 'block status of 0 bytes');
        return this.gate.run(false, () => this.status(req, off, len));
      case CMD.CACHE:
        // A hint the protocol lets a server ignore: nothing here caches beyond the format's metadata.
        return this.ok(req);
    }
  }

  private async read(req: NbdRequest, off: number, len: number, aligned: boolean): Promise<void> {
    const dev = this.a.device;
    if (len === 0) return this.ok(req);
    if (!aligned) {
      const a = Math.floor(off / SECTOR) * SECTOR;
      const b = Math.ceil((off + len) / SECTOR) * SECTOR;
      const wide = new Uint8Array(b - a);
      await dev.readInto(a, wide);
      return this.sendData(req, off, wide.subarray(off - a, off - a + len));
    }
    if (!this.a.structured || req.flags & CMD_FLAG.DF) return this.readWhole(req, off, len);
    // Structured: holes as OFFSET_HOLE chunks, data read and sent as OFFSET_DATA.
    const parts: Uint8Array[] = [];
    let pos = off;
    const end = off + len;
    while (pos < end) {
      const e = await dev.blockStatus(pos, end - pos);
      const n = Math.min(e.length, end - pos);
      if (!(n > 0)) throw new _Reply(NBD_ERR.EIO, `block status at ${pos} returned an empty run`);
      if (pos === off && n === len && e.kind === 'data') return this.readWhole(req, off, len);
      if (e.kind === 'data') {
        const d = new Uint8Array(n);
        await dev.readInto(pos, d);
        parts.push(dataChunkHeader(req.cookie, 0, pos, n), d);
      } else parts.push(holeChunk(req.cookie, 0, pos, n));
      pos += n;
    }
    this.counts.bytesRead += len;
    parts.push(chunkHeader(req.cookie, REPLY_FLAG_DONE, REPLY_TYPE.NONE, 0));
    this.out.write(parts);
  }

  // The whole range as one reply message: header and data in one unzeroed buffer, the data read
  // straight into it (no zero fill, no second buffer, one write to the socket).
  private async readWhole(req: NbdRequest, off: number, len: number): Promise<void> {
    const h = this.a.structured ? CHUNK_BYTES + 8 : SIMPLE_REPLY_BYTES;
    const msg = _unzeroed(h + len);
    await this.a.device.readInto(off, msg.subarray(h));
    if (this.a.structured) putDataChunkHeader(msg, 0, req.cookie, REPLY_FLAG_DONE, off, len);
    else putSimpleReply(msg, 0, req.cookie, 0);
    this.counts.bytesRead += len;
    this.out.write([msg]);
  }

  private sendData(req: NbdRequest, off: number, data: Uint8Array): void {
    this.counts.bytesRead += data.length;
    if (this.a.structured) this.out.write([dataChunkHeader(req.cookie, REPLY_FLAG_DONE, off, data.length), data]);
    else this.out.write([simpleReply(req.cookie, 0), data]);
  }

  // Read-modify-write of a range that starts or ends inside a sector (gate held exclusively).
  private async patch(off: number, data: Uint8Array): Promise<void> {
    const a = Math.floor(off / SECTOR) * SECTOR;
    const b = Math.ceil((off + data.length) / SECTOR) * SECTOR;
    const wide = new Uint8Array(b - a);
    await this.a.device.readInto(a, wide);
    wide.set(data, off - a);
    await this.a.device.write(a, wide);
  }

  private async zero(off: number, len: number, noHole: boolean, aligned: boolean): Promise<void> {
    const dev = this.a.device;
    if (len === 0) return;
    if (!aligned) {
      // Partial sectors at the edges by read-modify-write, the aligned middle as usual.
      const a = Math.ceil(off / SECTOR) * SECTOR;
      const b = Math.floor((off + len) / SECTOR) * SECTOR;
      if (a > b) return this.patch(off, new Uint8Array(len));
      if (off < a) await this.patch(off, new Uint8Array(a - off));
      if (off + len > b) await this.patch(b, new Uint8Array(off + len - b));
      if (b > a) await this.zero(a, b - a, noHole, true);
      return;
    }
    if (!noHole) return dev.writeZeroes(off, len);
    // NO_HOLE: the range must stay allocated, so real zero bytes are written.
    for (let p = off; p < off + len; p += ZEROES.length) await dev.write(p, ZEROES.subarray(0, Math.min(ZEROES.length, off + len - p)));
  }

  private async status(req: NbdRequest, off: number, len: number): Promise<void> {
    const dev = this.a.device;
    const one = (req.flags & CMD_FLAG.REQ_ONE) !== 0;
    const a = Math.floor(off / SECTOR) * SECTOR;
    const end = Math.min(dev.size, Math.ceil((off + len) / SECTOR) * SECTOR);
    const runs: { len: number; alloc: number; depth: number }[] = [];
    let pos = a;
    let calls = 0;
    // Bounded work per request: at most maxExtents runs (the client asks again from where we stopped).
    while (pos < end && runs.length < this.lim.maxExtents && calls++ < 4 * this.lim.maxExtents) {
      const e = await dev.blockStatus(pos, end - pos);
      const n = Math.min(e.length, end - pos);
      if (!(n > 0)) throw new _Reply(NBD_ERR.EIO, `block status at ${pos} returned an empty run`);
      const alloc = e.kind === 'data' ? 0 : STATE_HOLE | STATE_ZERO;
      const depth = e.kind === 'unallocated' ? 0 : e.depth + 1;
      // The first run starts where the client asked (inside its sector); the last may reach past
      // the request's end to the sector boundary, which the protocol allows without REQ_ONE.
      const start = Math.max(pos, off);
      runs.push({ len: pos + n - start, alloc, depth });
      pos += n;
      if (one) break;
    }
    const parts: Uint8Array[] = [];
    const ids = [...this.a.contexts.entries()];
    ids.forEach(([id, kind], i) => {
      const desc: [number, number][] = [];
      for (const r of runs) {
        const st = kind === 'allocation' ? r.alloc : r.depth;
        const last = desc[desc.length - 1];
        if (last && last[1] === st && last[0] + r.len <= MAX_DESC) last[0] += r.len;
        else {
          let left = r.len;
          while (left > 0) {
            const k = Math.min(left, MAX_DESC);
            desc.push([k, st]);
            left -= k;
          }
        }
        if (one) break;
      }
      if (one) {
        desc.length = 1;
        desc[0]![0] = Math.min(desc[0]![0], len);
      }
      parts.push(blockStatusChunk(req.cookie, i === ids.length - 1 ? REPLY_FLAG_DONE : 0, id, desc));
    });
    this.out.write(parts);
  }
}
