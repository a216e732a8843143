// Lazy guest memory over a raw image file (Node): positioned reads, one per
// run, the file never loaded whole.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LazyGuestMemory, bufferPages, createPolicy, gpa, imagePages } from '../bindings/memory/index.js';

describe('lazy guest memory over a raw image file', () => {
  it('faults pages in from the file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmkit-prefetch-'));
    try {
      const img = new Uint8Array(32 * 4096);
      for (let i = 0; i < img.length; i += 4096) img.fill(i / 4096 + 1, i, i + 4096);
      const path = join(dir, 'mem.raw');
      writeFileSync(path, img);
      const src = await imagePages(path);
      const mem = await LazyGuestMemory.open(src, { policy: createPolicy('physical', { back: 1, ahead: 1 }) });
      const b = new Uint8Array(3);
      await mem.read(gpa(10 * 4096 + 4095), b.subarray(0, 2)); // pages 10 and 11
      mem.readSync(gpa(31 * 4096), b.subarray(2));
      expect(Array.from(b)).toEqual([11, 12, 32]);
      // Page 10 faults with 9..11 (one read); 11 is then a hit; 31 faults with 30 (one read).
      const s = mem.stats();
      expect([s.faults, s.prefetchHits, s.sourceReads, s.bytesRead, mem.residentCount()]).toEqual([2, 1, 2, 5 * 4096, 5]);
      mem.close();
      src.close();
      await expect(imagePages(join(dir, 'nope'))).rejects.toThrow(expect.objectContaining({ code: 'NOT_FOUND' }));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('rejects an image that is not a positive whole number of pages, naming its size', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmkit-prefetch-'));
    try {
      // A truncated dump: two whole pages and 100 bytes of a third. Reading it as two
      // pages would silently lose the tail; the guest would never see those bytes.
      const partial = join(dir, 'partial.raw');
      writeFileSync(partial, new Uint8Array(2 * 4096 + 100).fill(7));
      await expect(imagePages(partial)).rejects.toThrow(expect.objectContaining({ code: 'ARG_RANGE', message: expect.stringContaining('8292 bytes') }));
      const empty = join(dir, 'empty.raw');
      writeFileSync(empty, new Uint8Array(0));
      await expect(imagePages(empty)).rejects.toThrow(expect.objectContaining({ code: 'ARG_RANGE', message: expect.stringContaining('0 bytes') }));
      // Whole pages of another size are fine; the page count is exact.
      const src = await imagePages(partial, 2 * 4096 + 100);
      expect(src.pageCount).toBe(1);
      const page = new Uint8Array(2 * 4096 + 100);
      src.readPagesIntoSync(0, 1, page);
      expect(page.every((b) => b === 7)).toBe(true);
      expect(() => src.readPagesIntoSync(1, 1, page)).toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
      // A destination too small for the pages asked for throws before any read.
      expect(() => src.readPagesIntoSync(0, 1, page.subarray(1))).toThrow(expect.objectContaining({ code: 'OUTPUT_TOO_SMALL' }));
      src.close();
      const mem = bufferPages(new Uint8Array(2 * 4096));
      expect(() => mem.readPagesIntoSync(0, 2, new Uint8Array(4096))).toThrow(expect.objectContaining({ code: 'OUTPUT_TOO_SMALL' }));
      expect(() => mem.readPagesIntoSync(0.5, 1, new Uint8Array(4096))).toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
      await expect(imagePages(partial, 0)).rejects.toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
