/**
 * Raw guest-physical memory images (as QEMU's `pmemsave` writes them) for the
 * CLI commands that read one: `pagetable` and `prefetch` walk page tables in
 * it (a {@link GuestMemorySource}), `checkpoint save` reads its pages (a
 * {@link PageSource}). All read through positioned reads of one descriptor:
 * guests are larger than this process, so an image is never loaded whole.
 * @module
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { VmkitError } from '../../errors.js';
import type { Gpa, GuestMemorySource, PageSource } from '../../memory/types.js';
import { _filePages } from '../../memory/prefetch/page-sources.js';

/** Window size of the image cache: page tables cluster, so one read serves several tables. */
const WINDOW = 256 << 10;
const WINDOWS = 8;

/**
 * Opens `path` for reading: NOT_FOUND when it does not exist, IO for any
 * other failure.
 * @example
 * ```ts
 * const fd = _openRead('trace.txt');
 * ```
 */
export function _openRead(path: string): number {
  try {
    return openSync(path, 'r');
  } catch (e) {
    throw new VmkitError((e as NodeJS.ErrnoException).code === 'ENOENT' ? 'NOT_FOUND' : 'IO', `${path}: ${(e as Error).message}`, { cause: e, path });
  }
}

/** An open raw image: its size and whole positioned reads. */
export interface _RawImage {
  readonly path: string;
  /** Bytes in the file when it was opened. */
  readonly size: number;
  /** Fills all of `dst` from byte `at` of the file; IO when the file ends first. */
  pread(dst: Uint8Array, at: number): void;
  close(): void;
}

/**
 * Opens a raw image for positioned reads.
 * @example
 * ```ts
 * const img = _openRawImage('mem.raw');
 * try { img.pread(page, 0x1000); } finally { img.close(); }
 * ```
 */
export function _openRawImage(path: string): _RawImage {
  const fd = _openRead(path);
  const size = fstatSync(fd).size;
  return {
    path,
    size,
    pread(dst: Uint8Array, at: number): void {
      for (let done = 0; done < dst.length; ) {
        const n = readSync(fd, dst, done, dst.length - done, at + done);
        if (n === 0) throw new VmkitError('IO', `${path}: short read at ${at + done}`, { path, offset: at + done });
        done += n;
      }
    },
    close: () => closeSync(fd),
  };
}

/**
 * A raw image as a GuestMemorySource for page-table walks, read through a
 * few fixed, aligned windows (least recently used replaced).
 * @example
 * ```ts
 * const memory = _imageMemory('mem.raw');
 * try { AddressSpace.create({ memory, root: cr3 }); } finally { memory.close(); }
 * ```
 */
export function _imageMemory(path: string): GuestMemorySource & { close(): void } {
  const img = _openRawImage(path);
  const size = img.size;
  // Least recently used first; small enough that a linear scan is the fastest lookup.
  const windows: { base: number; buf: Uint8Array; bytes: Uint8Array }[] = [];
  return {
    size: BigInt(size),
    readSync(at: Gpa, dst: Uint8Array): void {
      const off = Number(at);
      // Callers check against `size` first (GuestMemorySource's contract; the walkers
      // zero-fill a frame past it themselves): a read past the end is their bug, so
      // it throws rather than leave the tail of dst holding stale bytes.
      if (off < 0 || off + dst.length > size) {
        throw new VmkitError('ARG_RANGE', `${path}: read of ${dst.length} bytes at 0x${off.toString(16)} outside the image (${size} bytes)`, { path, offset: at });
      }
      if (dst.length === 0) return;
      const base = off - (off % WINDOW);
      // Across a window boundary: one positioned read straight into dst.
      if (off + dst.length > base + WINDOW) return img.pread(dst, off);
      let i = windows.findIndex((w) => w.base === base);
      let w = windows[i];
      if (!w) {
        const buf = windows.length >= WINDOWS ? windows.shift()!.buf : new Uint8Array(WINDOW);
        w = { base, buf, bytes: buf.subarray(0, Math.min(WINDOW, size - base)) };
        img.pread(w.bytes, base);
        i = windows.push(w) - 1;
      }
      if (i !== windows.length - 1) windows.push(...windows.splice(i, 1));
      dst.set(w.bytes.subarray(off - base, off - base + dst.length));
    },
    close: () => img.close(),
  };
}

/**
 * A raw image as a PageSource of `pageSize`-byte pages; ARG_RANGE unless it
 * is a positive whole number of pages. The same reader as vmkit/memory's
 * `imagePages`, synchronous here since the CLI has node:fs already.
 * @example
 * ```ts
 * const src = _imagePages('mem.raw', 4096);
 * try { await w.writePagesFromSync(0, src.pageCount, src.readPagesIntoSync); } finally { src.close(); }
 * ```
 */
export function _imagePages(path: string, pageSize: number): PageSource & { size: number; close(): void; readPagesIntoSync(first: number, count: number, dst: Uint8Array): void } {
  const src = _filePages({ openSync, fstatSync, readSync, closeSync }, path, pageSize);
  return { ...src, size: src.pageCount * pageSize };
}
