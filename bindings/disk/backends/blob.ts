/**
 * A browser `File` or `Blob` as a read-only {@link Storage} (an image the
 * user picked): reads slice the blob, writes are refused.
 * @module
 */
import { VmkitError } from '../../errors.js';
import type { Storage } from './storage.js';

/**
 * A read-only store over a Blob.
 *
 * @example
 * ```ts
 * const s = new BlobStorage(input.files[0]);
 * const dev = await (await loadFormat(await probeFormat(s))).open(s, { readOnly: true });
 * ```
 */
export class BlobStorage implements Storage {
  readonly name: string;
  readonly readOnly = true;
  private readonly blob: Blob;
  constructor(blob: Blob, name?: string) {
    this.blob = blob;
    this.name = name ?? ((blob as File).name || 'blob');
  }
  /**
   * The Blob's size in bytes.
   *
   * @example
   * ```ts
   * const n = await new BlobStorage(file).size(); // file.size
   * ```
   */
  async size(): Promise<number> {
    return this.blob.size;
  }
  /**
   * Reads `dst.length` bytes at `offset` from the Blob; bytes past the end read as zero.
   *
   * @example
   * ```ts
   * const head = new Uint8Array(512);
   * await blobStorage.readInto(0, head); // bytes past the end read as zero
   * ```
   */
  async readInto(offset: number, dst: Uint8Array): Promise<void> {
    const end = Math.min(this.blob.size, offset + dst.length);
    let n = 0;
    if (offset < end) {
      const b = new Uint8Array(await this.blob.slice(offset, end).arrayBuffer());
      dst.set(b);
      n = b.length;
    }
    if (n < dst.length) dst.fill(0, n);
  }
  /**
   * Always throws INVALID_STATE: a Blob is read-only.
   *
   * @example
   * ```ts
   * await blobStorage.write(); // throws VmkitError INVALID_STATE: a Blob is read-only
   * ```
   */
  async write(): Promise<void> {
    throw new VmkitError('INVALID_STATE', `${this.name} is a read-only Blob`, { path: this.name });
  }
  /**
   * Always throws INVALID_STATE: a Blob is read-only.
   *
   * @example
   * ```ts
   * await blobStorage.truncate(); // throws VmkitError INVALID_STATE
   * ```
   */
  async truncate(): Promise<void> {
    throw new VmkitError('INVALID_STATE', `${this.name} is a read-only Blob`, { path: this.name });
  }
  /**
   * Nothing to do (read-only).
   *
   * @example
   * ```ts
   * await blobStorage.flush(); // nothing to do
   * ```
   */
  async flush(): Promise<void> {}
  /**
   * Nothing to release.
   *
   * @example
   * ```ts
   * await blobStorage.close(); // nothing to release
   * ```
   */
  async close(): Promise<void> {}
}
