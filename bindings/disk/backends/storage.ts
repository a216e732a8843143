/**
 * The byte store under an image format: positional reads and writes on a
 * file, a memory buffer, a browser Blob or an OPFS file. Formats see only
 * this interface, so every format runs on every backend.
 * @module
 */
import { VmkitError } from '../../errors.js';

/**
 * A random-access byte store (an image file). Offsets are safe integers.
 *
 * @example
 * ```ts
 * import { MemoryStorage, type Storage } from 'vmkit/disk';
 * const s: Storage = new MemoryStorage('scratch');
 * await s.write(4096, new Uint8Array([0xeb, 0x63]));
 * console.log(await s.size()); // 4098
 * ```
 */
export interface Storage {
  /** Name of the store (a path, a blob name), used in error messages and to resolve backing files. */
  readonly name: string;
  /** True when writes are refused. */
  readonly readOnly: boolean;
  /** Current length in bytes. */
  size(): Promise<number>;
  /** Reads `dst.length` bytes at `offset`; bytes past the end read as zero. */
  readInto(offset: number, dst: Uint8Array): Promise<void>;
  /** Writes `data` at `offset`, growing the store when it writes past the end. */
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Sets the length (grow with zeroes or shrink). */
  truncate(size: number): Promise<void>;
  /** Makes completed writes durable. */
  flush(): Promise<void>;
  /** Releases the store. */
  close(): Promise<void>;
}

/**
 * Opens stores by name: how a format finds its backing file. `resolve` turns a
 * backing-file name stored in an image (relative to that image) into a name
 * `open` accepts.
 *
 * @example
 * ```ts
 * import { MemoryProvider, createImage, openImage } from 'vmkit/disk';
 * const provider = new MemoryProvider(); // or fileProvider, new OpfsProvider(dir)
 * await createImage('base.qcow2', { size: 1 << 20, provider });
 * const dev = await openImage('base.qcow2', { provider });
 * ```
 */
export interface StorageProvider {
  /** Opens an existing store. Throws NOT_FOUND when there is none. */
  open(name: string, opts: { readOnly: boolean }): Promise<Storage>;
  /** Creates (or truncates) a store for writing. */
  create(name: string): Promise<Storage>;
  /** The name of `rel` as seen from the image `from` (a sibling path for files). */
  resolve(from: string, rel: string): string;
  /** `target` written relative to the folder of `from`, for storing in a header. */
  relative(from: string, target: string): string;
}

/**
 * Reads `length` bytes at `offset` from a store.
 *
 * @example
 * ```ts
 * const header = await readAt(storage, 0, 512);
 * ```
 */
export async function readAt(s: Storage, offset: number, length: number): Promise<Uint8Array> {
  const b = new Uint8Array(length);
  await s.readInto(offset, b);
  return b;
}

/** Throws INVALID_STATE when the store is read-only. @internal */
export function assertWritable(s: { readOnly: boolean; name: string }, op: string): void {
  if (s.readOnly) throw new VmkitError('INVALID_STATE', `${op}: ${s.name} is open read-only`, { path: s.name });
}

/** Where glibc puts the data of a chunk it maps itself (Node's ArrayBuffers of 128 KiB and up), modulo a page. @internal */
export const _MMAP_HEAD: number = 16;
/** Buffers from this size up are (likely) mapped by glibc itself. @internal */
export const _MMAP_MIN: number = 128 * 1024;

/**
 * A page-aligned buffer for a read that fills every byte of it, without the
 * zero fill: in Node, memory from `Buffer.allocUnsafeSlow` (a fresh zeroed
 * 1 MiB array costs a page fault and a clear per page, more than the read
 * that overwrites it); elsewhere, and for small lengths, {@link alignedBuffer}.
 * A plain Uint8Array view (not a Buffer: `slice` copies); the slack around it
 * in `.buffer` is zeroed, so no stale memory shows through. Only for a
 * destination the caller then fills whole (a device's `readInto`).
 *
 * @example
 * ```ts
 * const b = _uninitBuffer(1 << 20);
 * await dev.readInto(0, b); // every byte written: nothing uninitialized survives
 * ```
 * @internal
 */
export function _uninitBuffer(length: number): Uint8Array {
  const B = (globalThis as { Buffer?: { allocUnsafeSlow(n: number): Uint8Array } }).Buffer;
  if (!B || length + 4096 < _MMAP_MIN) return alignedBuffer(length);
  const raw = B.allocUnsafeSlow(length + 4096);
  const at = 4096 - _MMAP_HEAD;
  const v = new Uint8Array(raw.buffer, raw.byteOffset, raw.length);
  v.fill(0, 0, at);
  v.fill(0, at + length);
  return new Uint8Array(raw.buffer, raw.byteOffset + at, length);
}

/**
 * A zeroed buffer for large reads: where Node's allocator is glibc's (Linux),
 * it starts on a page boundary, as QEMU aligns its I/O buffers. A page-cache
 * read into a plain `new Uint8Array(n)` of 128 KiB or more (which glibc puts
 * 16 bytes past a page) hits a ~5x slower kernel copy, which file storage
 * avoids by reading through a bounce buffer and copying; into this buffer it
 * reads directly. It is a view into a slightly larger ArrayBuffer (mind
 * `byteOffset` when wrapping its `.buffer`); small lengths get a plain array.
 *
 * @example
 * ```ts
 * import { alignedBuffer, openImage } from 'vmkit/disk';
 * const dev = await openImage('vm.qcow2', { readOnly: true });
 * const buf = alignedBuffer(1 << 20);
 * for (let off = 0; off < dev.size; off += buf.length) await dev.readInto(off, buf);
 * ```
 */
export function alignedBuffer(length: number): Uint8Array {
  if (length + 4096 < _MMAP_MIN) return new Uint8Array(length);
  // glibc maps chunks this large itself and puts their data 16 bytes (its chunk head) past a page.
  return new Uint8Array(new ArrayBuffer(length + 4096), 4096 - _MMAP_HEAD, length);
}
