/**
 * Where each package of an APT index has its .deb (Filename) and how big it
 * is, by package id: the Filenames as UTF-8 bytes back to back, decoded only
 * when a package's files are fetched. 63 000 strings held for the life of an
 * index would be copied by every garbage collection; one byte array is not.
 * @module
 */

const _utf8 = new TextDecoder();

/**
 * Filename and Size per package id, in the order packages were added.
 * @internal
 * @example
 * ```ts
 * const pool = new _PoolInfo();
 * pool.add(new TextEncoder().encode('pool/main/h/hello/hello_2.10-3_amd64.deb'), 0, 40, 53080);
 * pool.filename(0); // 'pool/main/h/hello/hello_2.10-3_amd64.deb'
 * ```
 */
export class _PoolInfo {
  private bytes = new Uint8Array(1 << 16);
  private used = 0;
  private ends = new Uint32Array(1024);
  private sizes = new Float64Array(1024);
  private n = 0;

  /** Packages held. */
  get count(): number {
    return this.n;
  }

  /** Adds the next package: its Filename (`len` UTF-8 bytes at `at` in `src`) and Size. */
  add(src: Uint8Array, at: number, len: number, size: number): void {
    if (this.used + len > this.bytes.length) {
      const b = new Uint8Array(Math.max(this.bytes.length * 2, this.used + len));
      b.set(this.bytes.subarray(0, this.used));
      this.bytes = b;
    }
    if (this.n === this.ends.length) {
      const e = new Uint32Array(this.n * 2);
      e.set(this.ends);
      this.ends = e;
      const s = new Float64Array(this.n * 2);
      s.set(this.sizes);
      this.sizes = s;
    }
    const b = this.bytes;
    const o = this.used;
    // Filenames are short: a loop beats a native copy's call.
    for (let i = 0; i < len; i++) b[o + i] = src[at + i]!;
    this.used = o + len;
    this.ends[this.n] = this.used;
    this.sizes[this.n++] = size;
  }

  /** The Filename of package `id`. */
  filename(id: number): string {
    const a = id === 0 ? 0 : this.ends[id - 1]!;
    return _utf8.decode(this.bytes.subarray(a, this.ends[id]!));
  }

  /** The Size of package `id`. */
  size(id: number): number {
    return this.sizes[id]!;
  }
}
