/**
 * Device plumbing the image formats share (qcow2, VMDK, raw): `read` on top
 * of `readInto`, reading through a map of pieces with contiguous host runs
 * coalesced, the backing-layer fallback for reads and block status, the
 * queue that runs a device's changing requests one at a time, and the check
 * that a device may take them.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { _uninitBuffer, type Storage } from '../backends/storage.js';
import { checkRange, type BlockDevice, type BlockExtent } from '../device.js';

/** What a format's lookup found at a guest offset: a run of `len` bytes of one kind. @internal */
export interface _Piece {
  kind: string;
  /** Host offset of the first byte (for pieces read from the file). */
  host: number;
  len: number;
}

/**
 * `read` on top of `readInto`: a fresh buffer of `length` bytes, page-aligned
 * and not zero-filled first when large (`readInto` writes every byte of it).
 *
 * @example
 * ```ts
 * read(o: number, n: number) { return _readFresh(this, o, n); }
 * ```
 * @internal
 */
export async function _readFresh(dev: { readInto(offset: number, dst: Uint8Array): Promise<void> }, offset: number, length: number): Promise<Uint8Array> {
  const b = _uninitBuffer(length);
  await dev.readInto(offset, b);
  return b;
}

/**
 * Masked data a single backing read may cover between two backing runs: the
 * backing copies those bytes only for the overlay to overwrite them. Measured
 * on page-cached files (bench/disk.bench.js): a page-cache copy runs at ~4
 * GB/s on the bench machine (64 KiB in ~15 µs), about what one more
 * thread-pool round trip costs when several are in flight; with blocking I/O
 * the merge costs a little (the copies and the backing's status lookup).
 */
const _MERGE_MASKED = 64 * 1024;

/** Awaits every promise, then throws the first failure (nothing is left running into a buffer). */
async function _settleAll(ps: Promise<void>[]): Promise<void> {
  const r = await Promise.allSettled(ps);
  for (const x of r) if (x.status === 'rejected') throw x.reason;
}

/**
 * Fills `dst` with the guest bytes from `offset`. `piece(pos)` maps a guest
 * offset to a run; runs that `isData` says live in this file are read from
 * `storage`, one call per stretch of contiguous host bytes; any other run goes
 * to `other`, which fills it itself (zeroes, inflated data) or returns a
 * promise (a backing read). Storage calls and those promises run concurrently,
 * at most 32 at a time, and none is left running into `dst` on return or throw.
 *
 * With `merge`, runs that `merge.isBacking` marks are read from `merge.backing`
 * here, and backing runs separated only by a little of this layer's data
 * (at most {@link _MERGE_MASKED} between two) become one backing read when
 * the backing layer says the whole span is one stretch of its file (or zero):
 * this layer's data is then read over it once it is in place. An overlay
 * that covers its base sparsely (a VM's delta disk) costs one backing round
 * trip per request instead of one per gap.
 *
 * @example
 * ```ts
 * await _readRuns(this.storage, offset, dst, (pos) => this.piece(pos), (p) => p.kind === 'data', (p, pos, d) => {
 *   if (p.kind !== 'zero') return _readBacking(this.backing, pos, d);
 *   d.fill(0);
 * });
 * ```
 * @internal
 */
export async function _readRuns<P extends _Piece>(
  storage: Storage,
  offset: number,
  dst: Uint8Array,
  piece: (pos: number) => Promise<P>,
  isData: (p: P) => boolean,
  other: (p: P, pos: number, d: Uint8Array) => Promise<void> | void,
  merge?: { backing: BlockDevice | undefined; isBacking: (p: P) => boolean },
): Promise<void> {
  // One run covers the request (a 4 KiB read, mostly): no plan, no bookkeeping.
  const p0 = await piece(offset);
  if (p0.len >= dst.length) {
    if (isData(p0)) return storage.readInto(p0.host, dst);
    if (merge?.isBacking(p0)) return _readBacking(merge.backing, offset, dst);
    const r = other(p0, offset, dst);
    if (r) await r;
    return;
  }
  let first: P | undefined = p0;
  let pos = offset;
  const end = offset + dst.length;
  let runHost = -1;
  let runDst = 0;
  let runLen = 0;
  // The open span of backing runs: guest [spanStart, spanEnd), its runs as (pos, len) pairs and
  // the data runs of this layer inside it as (host, dst, len) triples; `held` are data runs
  // after spanEnd that join the span if another backing run follows soon enough.
  let spanStart = -1;
  let spanEnd = 0;
  let gaps: number[] = [];
  let masked: number[] = [];
  let held: number[] = [];
  let heldBytes = 0;
  const pending: Promise<void>[] = [];
  const issue = async (p: Promise<void>): Promise<void> => {
    // Handled from now on: a run that fails while the loop awaits the next piece is reported by
    // _settleAll below, not first as an unhandled rejection (which ends a Node process).
    p.catch(() => {});
    pending.push(p);
    if (pending.length >= 32) await Promise.all(pending.splice(0));
  };
  const readData = (host: number, d: number, len: number): Promise<void> => storage.readInto(host, dst.subarray(d, d + len));
  const backingRun = (at: number, len: number): Promise<void> => _readBacking(merge?.backing, at, dst.subarray(at - offset, at - offset + len));
  const closeSpan = async (): Promise<void> => {
    if (spanStart >= 0) {
      if (gaps.length === 2) await issue(backingRun(gaps[0]!, gaps[1]!));
      else await issue(_readSpan(merge!.backing, spanStart, spanEnd, gaps, masked, readData, backingRun, offset, dst));
      spanStart = -1;
      gaps = [];
      masked = [];
    }
    for (let i = 0; i < held.length; i += 3) await issue(readData(held[i]!, held[i + 1]!, held[i + 2]!));
    held = [];
    heldBytes = 0;
  };
  const flushRun = async (): Promise<void> => {
    if (runLen === 0) return;
    if (spanStart >= 0 && heldBytes + runLen <= _MERGE_MASKED) {
      held.push(runHost, runDst, runLen);
      heldBytes += runLen;
    } else {
      await closeSpan();
      await issue(readData(runHost, runDst, runLen));
    }
    runLen = 0;
  };
  try {
    while (pos < end) {
      const p = first ?? (await piece(pos));
      first = undefined;
      const n = Math.min(p.len, end - pos);
      const d = pos - offset;
      if (isData(p)) {
        if (runLen > 0 && runHost + runLen === p.host && runDst + runLen === d) runLen += n;
        else {
          await flushRun();
          runHost = p.host;
          runDst = d;
          runLen = n;
        }
      } else if (merge?.isBacking(p)) {
        await flushRun();
        // At most 32 data runs inside one span: they are read concurrently once the span is in.
        if (spanStart >= 0 && spanEnd + heldBytes === pos && masked.length + held.length <= 96) {
          for (const x of held) masked.push(x);
          held = [];
          heldBytes = 0;
        } else {
          await closeSpan();
          spanStart = pos;
        }
        gaps.push(pos, n);
        spanEnd = pos + n;
      } else {
        await flushRun();
        await closeSpan();
        const r = other(p, pos, dst.subarray(d, d + n));
        if (r) await issue(r);
      }
      pos += n;
    }
    await flushRun();
    await closeSpan();
  } finally {
    await _settleAll(pending);
  }
}

/**
 * Reads a span of backing runs with this layer's data runs between them:
 * one backing read of the whole span and then the data over it when the
 * backing layer holds the span as one stretch of its file (or as zeroes),
 * else each run on its own.
 */
async function _readSpan(
  backing: BlockDevice | undefined,
  start: number,
  end: number,
  gaps: number[],
  masked: number[],
  readData: (host: number, d: number, len: number) => Promise<void>,
  backingRun: (at: number, len: number) => Promise<void>,
  offset: number,
  dst: Uint8Array,
): Promise<void> {
  let one = false;
  if (backing && end <= backing.size) {
    const st = await backing.blockStatus(start, end - start);
    one = st.length >= end - start && !(st.kind === 'data' && (st.hostOffset === undefined || st.compressed === true));
  }
  const data = (): Promise<void>[] => {
    const ps: Promise<void>[] = [];
    for (let i = 0; i < masked.length; i += 3) ps.push(readData(masked[i]!, masked[i + 1]!, masked[i + 2]!));
    return ps;
  };
  if (one) {
    await backing!.readInto(start, dst.subarray(start - offset, end - offset));
    await _settleAll(data());
    return;
  }
  const ps = data();
  for (let i = 0; i < gaps.length; i += 2) ps.push(backingRun(gaps[i]!, gaps[i + 1]!));
  await _settleAll(ps);
}

/**
 * Reads what the backing layer holds at `pos` into `dst`; zeroes where there
 * is no backing layer or it ends (a backing file whose size is not sector
 * aligned cannot be read past its end).
 *
 * @example
 * ```ts
 * await _readBacking(this.backing, pos, dst);
 * ```
 * @internal
 */
export async function _readBacking(backing: BlockDevice | undefined, pos: number, dst: Uint8Array): Promise<void> {
  if (!backing || pos >= backing.size) {
    dst.fill(0);
    return;
  }
  const n = Math.min(dst.length, backing.size - pos);
  await backing.readInto(pos, dst.subarray(0, n));
  if (n < dst.length) dst.fill(0, n);
}

/**
 * Block status of a range this layer leaves unallocated: what the backing
 * layer says, one level deeper (or unallocated at depth 0 without one).
 *
 * @example
 * ```ts
 * if (first.kind === 'unallocated') return _backingStatus(this.backing, offset, len);
 * ```
 * @internal
 */
export async function _backingStatus(backing: BlockDevice | undefined, offset: number, len: number): Promise<BlockExtent> {
  if (!backing || offset >= backing.size) return { offset, length: len, kind: 'unallocated', depth: 0 };
  const be = await backing.blockStatus(offset, Math.min(len, Math.floor((backing.size - offset) / 512) * 512 || 512));
  return { ...be, depth: be.depth + 1 };
}

/**
 * Splits `[offset, offset + length)` at multiples of `granule` (a format's
 * cluster, grain or block) and calls `fn` for each piece in order with its
 * position, its length and its offset inside the request.
 *
 * @example
 * ```ts
 * await _eachGranule(offset, data.length, this.blockSize, (pos, len, at) => this.writeInBlock(pos, data.subarray(at, at + len)));
 * ```
 * @internal
 */
export async function _eachGranule(offset: number, length: number, granule: number, fn: (pos: number, len: number, at: number) => Promise<void>): Promise<void> {
  const end = offset + length;
  for (let pos = offset; pos < end; ) {
    const n = Math.min(end - pos, (Math.floor(pos / granule) + 1) * granule - pos);
    await fn(pos, n, pos - offset);
    pos += n;
  }
}

/**
 * Runs requests one at a time, in the order they came (a failed one does not
 * stop the next).
 *
 * @example
 * ```ts
 * private readonly queue = new _Queue();
 * write(o, d) { return this.queue.run(() => this.doWrite(o, d)); }
 * ```
 * @internal
 */
export class _Queue {
  private tail: Promise<unknown> = Promise.resolve();

  /** Runs `fn` after every request queued before it has settled. */
  run<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.tail.then(fn, fn);
    this.tail = p.catch(() => {});
    return p;
  }
}

/**
 * Throws INVALID_STATE when a device may not take a changing request: it is
 * closed, or open read-only.
 *
 * @example
 * ```ts
 * _checkWritable(this.storage.name, this.closed, this.readOnly, 'write');
 * ```
 * @internal
 */
export function _checkWritable(name: string, closed: boolean, readOnly: boolean, op: string): void {
  if (closed) throw new VmkitError('INVALID_STATE', `${op}: ${name} is closed`, { path: name });
  if (readOnly) throw new VmkitError('INVALID_STATE', `${op}: ${name} is open read-only`, { path: name });
}

/**
 * The start of a block-status answer: the piece at `offset` and how far the
 * run of pieces that `joins` it reaches (at most `length` bytes), after
 * checking the range.
 *
 * @example
 * ```ts
 * const { first, len } = await _statusRun(this, offset, length, (o) => this.piece(o), (a, b, n) => b.kind === a.kind);
 * ```
 * @internal
 */
export async function _statusRun<P extends _Piece>(
  dev: { size: number; alignment: number },
  offset: number,
  length: number,
  piece: (pos: number) => Promise<P>,
  joins: (first: P, next: P, len: number) => boolean,
): Promise<{ first: P; len: number }> {
  checkRange(dev, offset, length, 'blockStatus');
  if (length === 0) throw new VmkitError('ARG_RANGE', 'blockStatus: length must be > 0', { offset });
  const first = await piece(offset);
  let len = Math.min(first.len, length);
  while (len < length) {
    const p = await piece(offset + len);
    if (!joins(first, p, len)) break;
    len += Math.min(p.len, length - len);
  }
  return { first, len };
}

/**
 * Closes a layer: `flush`, then (even when the flush fails) `markClosed`, its
 * store and the backing layers below it.
 *
 * @example
 * ```ts
 * if (!this.closed) await _closeLayer(() => this.flush(), () => (this.closed = true), this.storage, this.backing);
 * ```
 * @internal
 */
export async function _closeLayer(flush: () => Promise<void>, markClosed: () => void, storage: Storage, backing: BlockDevice | undefined): Promise<void> {
  try {
    await flush();
  } finally {
    markClosed();
    await storage.close();
    await backing?.close();
  }
}
