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
 * const dev = await openStorage(new BlobStorage(input.files[0]));
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
  async size(): Promise<number> {
    return this.blob.size;
  }
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
  async write(): Promise<void> {
    throw new VmkitError('INVALID_STATE', `${this.name} is a read-only Blob`, { path: this.name });
  }
  async truncate(): Promise<void> {
    throw new VmkitError('INVALID_STATE', `${this.name} is a read-only Blob`, { path: this.name });
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}
