/**
 * Option haggling of the fixed newstyle handshake: what a client may ask
 * before it enters transmission (export list, export info, structured
 * replies, metadata contexts, TLS), answered as doc/proto.md says, with the
 * bytes and options a client can send before transmission bounded.
 * @module
 * @internal
 */
import type { BlockDevice } from '../device.js';
import type { _Inbox } from './_inbox.js';
import {
  CTX_ALLOCATION,
  CTX_DEPTH,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  INFO,
  NBDMAGIC,
  OPT,
  REP,
  TF,
  cat,
  optionReply,
  str,
  u32,
  utf8,
} from './_protocol.js';
import { _ProtocolViolation, type _Agreed } from './_transmission.js';

/** One export as the handshake offers it. */
export interface _Export {
  name: string;
  description?: string;
  device: BlockDevice;
  readOnly: boolean;
}

/** What the handshake needs from the connection and the server. */
export interface _HandshakeIO {
  inbox: _Inbox;
  write(parts: readonly Uint8Array[]): void;
  /** Upgrades the connection to TLS (after the ACK went out); undefined when the server has no TLS. */
  startTls: (() => Promise<void>) | undefined;
  /** TLS is required before anything but STARTTLS and ABORT (FORCEDTLS). */
  tlsRequired: boolean;
  /** The export for a name ('' is the default export), or undefined. */
  lookup(name: string): _Export | undefined;
  exports(): _Export[];
  /** True while the server is shutting down (options are refused with ERR_SHUTDOWN). */
  shuttingDown(): boolean;
  /** Largest option data accepted (bigger ones are skipped and answered ERR_TOO_BIG). */
  maxOptionBytes: number;
  /** Most options one connection may send before the server hangs up. */
  maxOptions: number;
  /** Minimum, preferred and maximum block sizes to advertise. */
  blockSize: readonly [number, number, number];
}

/** Transmission flags of an export for this connection's state. */
export function _transmissionFlags(e: _Export, structured: boolean): number {
  let f = TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_FUA | TF.SEND_CACHE | TF.CAN_MULTI_CONN;
  if (structured) f |= TF.SEND_DF;
  if (e.readOnly) f |= TF.READ_ONLY;
  // FAST_ZERO is advertised whatever the format: a fast zero it cannot do fails at once with ENOTSUP.
  else f |= TF.SEND_TRIM | TF.SEND_WRITE_ZEROES | TF.SEND_FAST_ZERO;
  return f;
}

/** Whether the format zeroes by metadata (qcow2's zero flag), so FAST_ZERO can succeed. */
export function _fastZero(d: BlockDevice): boolean {
  return d.format === 'qcow2';
}

class _Bad extends Error {}

// A cursor over an option's data that fails with ERR_INVALID on a short read.
class _Cursor {
  private p = 0;
  private readonly b: Uint8Array;
  constructor(b: Uint8Array) {
    this.b = b;
  }
  get left(): number {
    return this.b.length - this.p;
  }
  u16(): number {
    if (this.left < 2) throw new _Bad('option data too short');
    const v = (this.b[this.p]! << 8) | this.b[this.p + 1]!;
    this.p += 2;
    return v;
  }
  u32(): number {
    if (this.left < 4) throw new _Bad('option data too short');
    const v = new DataView(this.b.buffer, this.b.byteOffset + this.p, 4).getUint32(0);
    this.p += 4;
    return v;
  }
  string(n: number): string {
    if (n > this.left || n > 4096) throw new _Bad(`string of ${n} bytes does not fit the option`);
    const s = str(this.b.subarray(this.p, this.p + n));
    this.p += n;
    if (s === null) throw new _Bad('string is not UTF-8 without NUL');
    return s;
  }
}

/**
 * Runs the handshake. Returns what was agreed for transmission, or null when
 * the client aborted or closed (a soft or hard disconnect during haggling).
 * Throws {@link _ProtocolViolation} when the server must hang up.
 */
export async function _negotiate(io: _HandshakeIO): Promise<{ agreed: _Agreed; exportName: string } | null> {
  const hello = new Uint8Array(18);
  const hv = new DataView(hello.buffer);
  hv.setBigUint64(0, NBDMAGIC);
  hv.setBigUint64(8, IHAVEOPT);
  hv.setUint16(16, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
  io.write([hello]);
  const cf = new DataView((await io.inbox.take(4)).slice().buffer).getUint32(0);
  if ((cf & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)) !== 0) throw new _ProtocolViolation(`unknown client flags 0x${cf.toString(16)}`);
  const noZeroes = (cf & FLAG_C_NO_ZEROES) !== 0;

  let tls = false;
  let structured = false;
  let contexts = new Map<number, 'allocation' | 'depth'>();
  let contextsFor: string | undefined;
  // Transmission with export `e`: the metadata contexts count only if they were set for this export.
  const enter = (e: _Export, blockSizeAgreed: boolean): { agreed: _Agreed; exportName: string } => ({
    exportName: e.name,
    agreed: {
      device: e.device,
      readOnly: e.readOnly,
      structured,
      contexts: contextsFor !== undefined && io.lookup(contextsFor) === e ? contexts : new Map(),
      blockSizeAgreed,
      fastZero: _fastZero(e.device),
    },
  });
  for (let count = 0; ; count++) {
    if (count >= io.maxOptions) throw new _ProtocolViolation(`more than ${io.maxOptions} options`);
    const h = await io.inbox.take(16);
    const hv2 = new DataView(h.buffer, h.byteOffset, 16);
    if (hv2.getBigUint64(0) !== IHAVEOPT) throw new _ProtocolViolation('bad option magic');
    const opt = hv2.getUint32(8);
    const len = hv2.getUint32(12);
    const reply = (type: number, data?: Uint8Array): void => io.write([optionReply(opt, type, data)]);
    const err = (type: number, msg: string): void => reply(type, utf8(msg.slice(0, 1024)));
    if (len > io.maxOptionBytes) {
      if (opt === OPT.EXPORT_NAME) throw new _ProtocolViolation(`export name of ${len} bytes`);
      await io.inbox.skip(len);
      err(REP.ERR_TOO_BIG, `option data of ${len} bytes is over ${io.maxOptionBytes}`);
      continue;
    }
    const data = await io.inbox.take(len);
    if (opt === OPT.ABORT) {
      reply(REP.ACK);
      return null;
    }
    if (io.shuttingDown()) {
      if (opt === OPT.EXPORT_NAME) throw new _ProtocolViolation('shutting down');
      err(REP.ERR_SHUTDOWN, 'the server is shutting down');
      continue;
    }
    if (io.tlsRequired && !tls && opt !== OPT.STARTTLS) {
      if (opt === OPT.EXPORT_NAME) throw new _ProtocolViolation('NBD_OPT_EXPORT_NAME before TLS on a TLS-only server');
      err(REP.ERR_TLS_REQD, 'this server requires TLS (NBD_OPT_STARTTLS) first');
      continue;
    }
    try {
      const c = new _Cursor(data);
      switch (opt) {
        case OPT.STARTTLS: {
          if (len !== 0) throw new _Bad('STARTTLS takes no data');
          if (!io.startTls) {
            err(REP.ERR_POLICY, 'this server does not offer TLS');
            break;
          }
          if (tls) throw new _Bad('TLS is already running');
          if (io.inbox.buffered !== 0) throw new _ProtocolViolation('data after NBD_OPT_STARTTLS before its reply');
          reply(REP.ACK);
          await io.startTls();
          tls = true;
          // Nothing negotiated before TLS survives it (doc/proto.md, NBD_OPT_STARTTLS).
          structured = false;
          contexts = new Map();
          contextsFor = undefined;
          break;
        }
        case OPT.LIST: {
          if (len !== 0) throw new _Bad('LIST takes no data');
          for (const e of io.exports()) {
            const n = utf8(e.name);
            reply(REP.SERVER, cat(u32(n.length), n));
          }
          reply(REP.ACK);
          break;
        }
        case OPT.STRUCTURED_REPLY: {
          if (len !== 0) throw new _Bad('STRUCTURED_REPLY takes no data');
          structured = true;
          reply(REP.ACK);
          break;
        }
        case OPT.LIST_META_CONTEXT:
        case OPT.SET_META_CONTEXT: {
          if (!structured) throw new _Bad('metadata contexts need structured replies first');
          const name = c.string(c.u32());
          const nq = c.u32();
          if (nq > 64) {
            err(REP.ERR_TOO_BIG, `${nq} queries; at most 64`);
            if (opt === OPT.SET_META_CONTEXT) contexts = new Map();
            break;
          }
          const queries: string[] = [];
          for (let i = 0; i < nq; i++) queries.push(c.string(c.u32()));
          if (c.left !== 0) throw new _Bad('trailing bytes after the queries');
          const e = io.lookup(name);
          if (opt === OPT.SET_META_CONTEXT) {
            contexts = new Map();
            contextsFor = undefined;
          }
          if (!e) {
            err(REP.ERR_UNKNOWN, `no export named ${JSON.stringify(name)}`);
            break;
          }
          const found = new Set<string>();
          for (const q of queries) {
            if (!q.includes(':')) throw new _Bad(`query ${JSON.stringify(q)} has no namespace`);
            if (opt === OPT.LIST_META_CONTEXT && q === 'base:') found.add(CTX_ALLOCATION);
            else if (opt === OPT.LIST_META_CONTEXT && q === 'qemu:') found.add(CTX_DEPTH);
            else if (q === CTX_ALLOCATION || q === CTX_DEPTH) found.add(q);
          }
          if (opt === OPT.LIST_META_CONTEXT) {
            if (nq === 0) found.add(CTX_ALLOCATION).add(CTX_DEPTH);
            for (const f of found) reply(REP.META_CONTEXT, cat(u32(0), utf8(f)));
          } else {
            for (const f of [CTX_ALLOCATION, CTX_DEPTH]) {
              if (!found.has(f)) continue;
              const id = f === CTX_ALLOCATION ? 1 : 2;
              contexts.set(id, f === CTX_ALLOCATION ? 'allocation' : 'depth');
              reply(REP.META_CONTEXT, cat(u32(id), utf8(f)));
            }
            contextsFor = name;
          }
          reply(REP.ACK);
          break;
        }
        case OPT.INFO:
        case OPT.GO: {
          const name = c.string(c.u32());
          const n = c.u16();
          if (c.left !== 2 * n) throw new _Bad('information request list does not match the option length');
          const wanted = new Set<number>();
          for (let i = 0; i < n; i++) wanted.add(c.u16());
          const e = io.lookup(name);
          if (!e) {
            err(REP.ERR_UNKNOWN, `no export named ${JSON.stringify(name)}`);
            break;
          }
          const flags = _transmissionFlags(e, structured);
          const ex = new Uint8Array(12);
          const xv = new DataView(ex.buffer);
          xv.setUint16(0, INFO.EXPORT);
          xv.setBigUint64(2, BigInt(e.device.size));
          xv.setUint16(10, flags);
          reply(REP.INFO, ex);
          if (wanted.has(INFO.NAME)) reply(REP.INFO, cat(new Uint8Array([0, INFO.NAME]), utf8(e.name)));
          if (wanted.has(INFO.DESCRIPTION) && e.description) reply(REP.INFO, cat(new Uint8Array([0, INFO.DESCRIPTION]), utf8(e.description)));
          // Always sent: a client that did not ask still learns the preferred and maximum sizes.
          const bs = new Uint8Array(14);
          const bv = new DataView(bs.buffer);
          bv.setUint16(0, INFO.BLOCK_SIZE);
          bv.setUint32(2, io.blockSize[0]);
          bv.setUint32(6, io.blockSize[1]);
          bv.setUint32(10, io.blockSize[2]);
          reply(REP.INFO, bs);
          reply(REP.ACK);
          if (opt === OPT.GO) {
            return enter(e, wanted.has(INFO.BLOCK_SIZE));
          }
          break;
        }
        case OPT.EXPORT_NAME: {
          const name = str(data);
          const e = name === null ? undefined : io.lookup(name);
          if (!e) throw new _ProtocolViolation(`NBD_OPT_EXPORT_NAME for an unknown export`);
          const tail = new Uint8Array(noZeroes ? 10 : 134);
          const tv = new DataView(tail.buffer);
          tv.setBigUint64(0, BigInt(e.device.size));
          tv.setUint16(8, _transmissionFlags(e, structured));
          io.write([tail]);
          return enter(e, false);
        }
        default:
          err(REP.ERR_UNSUP, `option ${opt} is not supported`);
      }
    } catch (e) {
      if (!(e instanceof _Bad)) throw e;
      err(REP.ERR_INVALID, e.message);
    }
  }
}
