/**
 * A bounded-memory reader of a QEMU migration stream file: one fixed window,
 * refilled with positioned reads, so a stream of any size is parsed in the
 * same memory. Every error names the section being parsed and the byte
 * offset in the stream.
 * @module
 */
import { VmkitError, type ErrorCode } from '../../../errors.js';

/** Bytes of the read window (also the largest single `bytes()` request). */
export const WINDOW: number = 1 << 20;

type ReadAt = (dst: Uint8Array, position: number) => number;

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

  private readonly readAt: ReadAt;
  /** Bytes in the stream. */
  readonly size: number;

  constructor(readAt: ReadAt, size: number) {
    this.readAt = readAt;
    this.size = size;
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
    this.buf.copyWithin(0, this.pos, this.end);
    this.base += this.pos;
    this.end -= this.pos;
    this.pos = 0;
    const want = Math.min(WINDOW, this.size - this.base);
    while (this.end < want) {
      const got = this.readAt(this.buf.subarray(this.end, want), this.base + this.end);
      if (got <= 0) this.fail('CORRUPT', 'truncated: the file ended early', this.base + this.end);
      this.end += got;
    }
  }

  /** True when every byte has been read. */
  atEnd(): boolean {
    return this.offset >= this.size;
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
