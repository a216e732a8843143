/**
 * A bounded-memory reader of a QEMU migration stream: one fixed window,
 * refilled with reads at increasing offsets (a file's positioned reads, or a
 * pipe's sequential ones, which ignore the position), so a stream of any
 * size is parsed in the same memory. Every error names the section being
 * parsed and the byte offset in the stream.
 * @module
 */
import { VmkitError, type ErrorCode } from '../../../errors.js';

/** Bytes of the read window (also the largest single `bytes()` request). */
export const WINDOW: number = 1 << 20;

/** Fills `dst` from stream offset `position` (always the offset after the previous read's bytes); 0 at the end. */
export type ReadAt = (dst: Uint8Array, position: number) => number;

/**
 * Sequential big-endian reads over a file through a fixed window.
 * @example
 * ```ts
 * const inp = new _StreamInput((dst, pos) => readSync(fd, dst, 0, dst.length, pos), size);
 * const magic = inp.be32();
 * ```
 */
export class _StreamInput {
  /** What is being parsed, for error messages ("header", "section ram (id 2)"…). */
  where = 'header';
  private readonly buf = new Uint8Array(WINDOW);
  private readonly view = new DataView(this.buf.buffer);
  /** Stream offset of buf[0]. */
  private base = 0;
  private pos = 0;
  private end = 0;

  /** The source returned 0: no byte past `base + end`. */
  private eof = false;

  private readonly readAt: ReadAt;
  /** Bytes in the stream (Infinity: a pipe, known at its end). */
  readonly size: number;

  /** `start`: stream offset of the source's first byte (a stream read from its middle). */
  constructor(readAt: ReadAt, size: number, start: number = 0) {
    this.readAt = readAt;
    this.size = size;
    this.base = start;
  }

  /** Stream offset of the next byte. */
  get offset(): number {
    return this.base + this.pos;
  }

  /** Throws a VmkitError naming the current section and `at` (default: the current offset). */
  fail(code: ErrorCode, msg: string, at: number = this.offset): never {
    throw new VmkitError(code, `QEMU migration stream: ${msg} (${this.where}, byte offset ${at})`, { offset: at });
  }

  /** Makes `n` (≤ WINDOW) bytes available at `pos`, or fails as truncated. */
  private need(n: number): void {
    if (this.end - this.pos >= n) return;
    if (this.offset + n > this.size) this.fail('CORRUPT', `truncated: ${n} bytes needed, ${this.size - this.offset} left`);
    this.fill();
    if (this.end - this.pos < n) this.fail('CORRUPT', 'truncated: the stream ended early', this.base + this.end);
  }

  /** Moves the unread bytes to the window's start and reads until it is full or the source ends. */
  private fill(): void {
    this.buf.copyWithin(0, this.pos, this.end);
    this.base += this.pos;
    this.end -= this.pos;
    this.pos = 0;
    const want = Math.min(WINDOW, this.size - this.base);
    while (this.end < want && !this.eof) {
      const got = this.readAt(this.buf.subarray(this.end, want), this.base + this.end);
      if (got <= 0) this.eof = true;
      else this.end += got;
    }
  }

  /** True when every byte has been read. */
  atEnd(): boolean {
    if (this.pos < this.end) return false;
    if (this.offset >= this.size) return true;
    if (!this.eof) this.fill();
    return this.pos >= this.end;
  }

  /**
   * The stream's first `n` bytes, while they are still in the window (no
   * refill yet): how a pipe's prefix is kept without reading it twice.
   */
  head(n: number): Uint8Array {
    if (this.base !== 0 || n > this.end) this.fail('LIMIT', `stream prefix of ${n} bytes is over the ${WINDOW}-byte window`);
    return this.buf.subarray(0, n);
  }

  /** Passes every unread byte to `sink` in window-sized pieces, to the end of the source; returns how many. */
  drain(sink: (piece: Uint8Array) => void): number {
    let n = 0;
    while (!this.atEnd()) {
      const piece = this.buf.subarray(this.pos, this.end);
      sink(piece);
      n += piece.length;
      this.pos = this.end;
    }
    return n;
  }

  /** The next byte, not consumed (-1 at the end). */
  peek8(): number {
    if (this.atEnd()) return -1;
    this.need(1);
    return this.buf[this.pos]!;
  }

  u8(): number {
    this.need(1);
    return this.buf[this.pos++]!;
  }

  be32(): number {
    this.need(4);
    const v = this.view.getUint32(this.pos);
    this.pos += 4;
    return v;
  }

  be64(): bigint {
    this.need(8);
    const v = this.view.getBigUint64(this.pos);
    this.pos += 8;
    return v;
  }

  /** `n` (≤ WINDOW) bytes, valid until the next read. */
  bytes(n: number): Uint8Array {
    this.need(n);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }

  /** A length-prefixed (u8) string, as QEMU's qemu_get_counted_string. */
  str8(): string {
    const n = this.u8();
    return String.fromCharCode(...this.bytes(n));
  }

  /** Passes the next `n` bytes, in window-sized pieces, to `sink`. */
  take(n: number, sink: (piece: Uint8Array) => void): void {
    while (n > 0) {
      const k = Math.min(n, WINDOW);
      sink(this.bytes(k));
      n -= k;
    }
  }
}
