/**
 * raw images: the virtual disk is the file, byte for byte. Every range is
 * data at depth 0 at the same host offset (vmkit cannot see holes portably,
 * so unlike `qemu-img map` it does not report sparse runs as zero). The
 * virtual size is the file size rounded up to 512, as QEMU's block layer counts
 * whole sectors: the tail past the file's end reads as zero.
 * @module
 */
import { VmkitError } from '../../../errors.js';
import type { Storage } from '../../backends/storage.js';
import { checkRange, type BlockExtent, type ByteLength, type ByteOffset } from '../../device.js';
import type { WriteGuard } from '../../_guard.js';
import { _readFresh } from '../_device.js';
import type { FormatCreateOptions, FormatOpenOptions, ImageDevice, ImageFormatModule, ImageInfo } from '../types.js';

/**
 * A raw image as a block device.
 *
 * @example
 * ```ts
 * const dev = await open(await FileStorage.open('disk.img'));
 * ```
 */
export class RawDevice implements ImageDevice {
  readonly format = 'raw' as const;
  readonly alignment = 512;
  readonly backing: undefined = undefined;
  readonly backingFile: undefined = undefined;
  readonly backingFormat: undefined = undefined;
  readonly size: number;
  readonly readOnly: boolean;
  readonly storage: Storage;
  private readonly guard: WriteGuard | undefined;

  constructor(storage: Storage, size: number, readOnly: boolean, guard?: WriteGuard) {
    this.storage = storage;
    this.size = size;
    this.readOnly = readOnly;
    this.guard = guard;
  }
  read(offset: ByteOffset, length: ByteLength): Promise<Uint8Array> {
    return _readFresh(this, offset, length);
  }
  async readInto(offset: ByteOffset, dst: Uint8Array): Promise<void> {
    checkRange(this, offset, dst.length, 'read');
    await this.storage.readInto(offset, dst);
  }
  private async writable(op: 'write' | 'flush' | 'discard'): Promise<void> {
    if (this.readOnly) throw new VmkitError('INVALID_STATE', `${op}: ${this.storage.name} is open read-only`, { path: this.storage.name });
    await this.guard?.check(op);
  }
  async write(offset: ByteOffset, data: Uint8Array): Promise<void> {
    checkRange(this, offset, data.length, 'write');
    await this.writable('write');
    await this.storage.write(offset, data);
  }
  async writeZeroes(offset: ByteOffset, length: ByteLength): Promise<void> {
    checkRange(this, offset, length, 'writeZeroes');
    await this.writable('write');
    const chunk = new Uint8Array(Math.min(length, 1 << 20));
    for (let p = 0; p < length; p += chunk.length) await this.storage.write(offset + p, chunk.subarray(0, Math.min(chunk.length, length - p)));
  }
  async discard(offset: ByteOffset, length: ByteLength): Promise<void> {
    // A raw file cannot drop storage portably; discard keeps QEMU's guarantee-free semantics
    // only after zeroing, so callers relying on "reads as zero" stay right.
    await this.writeZeroes(offset, length);
  }
  async flush(): Promise<void> {
    if (this.readOnly) return;
    await this.guard?.check('flush');
    await this.storage.flush();
  }
  async blockStatus(offset: ByteOffset, length: ByteLength): Promise<BlockExtent> {
    checkRange(this, offset, length, 'blockStatus');
    if (length === 0) throw new VmkitError('ARG_RANGE', 'blockStatus: length must be > 0');
    return { offset, length, kind: 'data', depth: 0, hostOffset: offset };
  }
  async info(): Promise<ImageInfo> {
    const fileSize = await this.storage.size();
    return { format: 'raw', virtualSize: this.size, fileSize, allocatedBytes: fileSize };
  }
  async close(): Promise<void> {
    await this.flush().catch(() => {});
    await this.storage.close();
  }
}

/**
 * Any file can be raw: the registry tries it last.
 *
 * @example
 * ```ts
 * probe(new Uint8Array(512)); // true
 * ```
 */
export function probe(_head: Uint8Array): boolean {
  return true;
}

/**
 * Opens a raw image.
 *
 * @example
 * ```ts
 * const dev = await open(new MemoryStorage('d', new Uint8Array(4096)));
 * ```
 */
export async function open(storage: Storage, opts: FormatOpenOptions = {}): Promise<RawDevice> {
  // QEMU rounds up (total_sectors = DIV_ROUND_UP(length, 512)); rounding down lost a tail's bytes.
  const size = Math.ceil((await storage.size()) / 512) * 512;
  return new RawDevice(storage, size, opts.readOnly === true || storage.readOnly, opts.guard);
}

/**
 * Creates a raw image of `opts.size` bytes (sparse where the store allows).
 *
 * @example
 * ```ts
 * await create(await FileStorage.create('disk.img'), { size: 1 << 30 });
 * ```
 */
export async function create(storage: Storage, opts: FormatCreateOptions): Promise<void> {
  if (opts.backing !== undefined) throw new VmkitError('UNSUPPORTED', 'raw images have no backing file', { path: storage.name });
  await storage.truncate(opts.size);
}

/**
 * The raw format module for the registry.
 *
 * @example
 * ```ts
 * const dev = await format.open(storage, { readOnly: true });
 * ```
 */
export const format: ImageFormatModule = { name: 'raw', probe, open, create };
