/**
 * Page sources for lazy guest memory: a buffer, and a raw memory image file
 * read in place (Node). A checkpoint (`CheckpointReader`) is the third kind.
 * Every read checks that its pages lie inside the source and that the
 * destination holds them.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { aint } from '../../_utils.js';
import type { PageSource } from '../types.js';
import { nodeModule } from '../../_node.js';

// The boundary checks of every page source's read: whole pages inside the source, and a
// destination that holds them.
function checkPages(first: number, count: number, pageCount: number, pageSize: number, dst: Uint8Array): void {
  if (!Number.isInteger(first) || !Number.isInteger(count) || first < 0 || count < 0 || first + count > pageCount) {
    throw new VmkitError('ARG_RANGE', `pages [${first}, ${first + count}) outside ${pageCount}`);
  }
  if (dst.length < count * pageSize) throw new VmkitError('OUTPUT_TOO_SMALL', `dst holds ${dst.length} bytes, ${count} pages need ${count * pageSize}`);
}

/**
 * A page source over a buffer (an in-memory image).
 * @example
 * const src = bufferPages(new Uint8Array(16 * 4096));
 * src.pageCount; // 16
 */
export function bufferPages(buf: Uint8Array | ArrayBuffer, pageSize: number = 4096): PageSource & { readPagesIntoSync(first: number, count: number, dst: Uint8Array): void } {
  const b = buf instanceof Uint8Array ? buf : new Uint8Array(buf);
  aint(pageSize, 'pageSize', 1);
  if (b.length % pageSize !== 0) throw new VmkitError('ARG_RANGE', `image of ${b.length} bytes is not a whole number of ${pageSize}-byte pages`);
  const pageCount = b.length / pageSize;
  const readSync = (first: number, count: number, dst: Uint8Array): void => {
    checkPages(first, count, pageCount, pageSize, dst);
    dst.set(b.subarray(first * pageSize, (first + count) * pageSize));
  };
  return {
    pageSize,
    pageCount,
    readPagesIntoSync: readSync,
    readPagesInto: async (first, count, dst) => readSync(first, count, dst),
  };
}

/**
 * A page source over a raw memory image file (Node: positioned reads; the
 * file is never loaded whole). Close it when done. The image must be a
 * positive whole number of pages (ARG_RANGE naming its size otherwise);
 * NOT_FOUND when it does not exist, IO when it cannot be read.
 * @example
 * const src = await imagePages('/tmp/guest.mem');
 * src.close();
 */
export async function imagePages(path: string, pageSize: number = 4096): Promise<PageSource & { readPagesIntoSync(first: number, count: number, dst: Uint8Array): void; close(): void }> {
  // nodeModule hides node:fs from bundlers: browser builds of vmkit/memory do not resolve it.
  const fs = await nodeModule<typeof import('node:fs')>('node:fs');
  return _filePages(fs, path, pageSize);
}

/** The synchronous node:fs calls {@link _filePages} makes. @internal */
export type _PageFs = Pick<typeof import('node:fs'), 'openSync' | 'fstatSync' | 'readSync' | 'closeSync'>;

/**
 * The one implementation behind {@link imagePages} and the CLI's raw images:
 * `fs` is passed in so this module never imports node:fs (the library loads
 * it on first use, the CLI has it already and stays synchronous).
 *
 * A partial last page is rejected rather than zero-padded or dropped: QEMU's
 * raw memory dumps (`pmemsave`, `dump-guest-memory` raw) are whole pages, so a
 * tail is the sign of a truncated or wrong file, and restoring a guest from it
 * would hand the guest memory that was never in the image (padding) or lose
 * bytes that were (dropping) without anyone noticing.
 * @internal
 * @example
 * ```ts
 * import * as fs from 'node:fs';
 * const src = _filePages(fs, 'mem.raw', 4096);
 * try { src.readPagesIntoSync(0, 1, page); } finally { src.close(); }
 * ```
 */
export function _filePages(fs: _PageFs, path: string, pageSize: number): PageSource & { readPagesIntoSync(first: number, count: number, dst: Uint8Array): void; close(): void } {
  aint(pageSize, 'pageSize', 1);
  let fd: number;
  let size: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException)?.code === 'ENOENT' ? 'NOT_FOUND' : 'IO';
    throw new VmkitError(code, `${path}: ${(e as Error).message}`, { cause: e, path });
  }
  try {
    size = fs.fstatSync(fd).size;
  } catch (e) {
    fs.closeSync(fd);
    throw new VmkitError('IO', `${path}: ${(e as Error).message}`, { cause: e, path });
  }
  if (size === 0 || size % pageSize !== 0) {
    fs.closeSync(fd);
    throw new VmkitError('ARG_RANGE', `${path}: a memory image must be a positive whole number of ${pageSize}-byte pages (it has ${size} bytes)`, { path });
  }
  const pageCount = size / pageSize;
  const readSync = (first: number, count: number, dst: Uint8Array): void => {
    checkPages(first, count, pageCount, pageSize, dst);
    const want = count * pageSize;
    const at = first * pageSize;
    for (let done = 0; done < want; ) {
      // 0 before the end: the file shrank since it was opened.
      const n = fs.readSync(fd, dst, done, want - done, at + done);
      if (n <= 0) throw new VmkitError('IO', `${path}: short read at ${at + done}`, { path, offset: at + done });
      done += n;
    }
  };
  return {
    pageSize,
    pageCount,
    readPagesIntoSync: readSync,
    readPagesInto: async (first, count, dst) => readSync(first, count, dst),
    close: () => fs.closeSync(fd),
  };
}
