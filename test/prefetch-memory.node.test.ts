// Lazy guest memory over a raw image file (Node): positioned reads, one per
// run, the file never loaded whole.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LazyGuestMemory, createPolicy, gpa, imagePages } from '../bindings/memory/index.js';

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
});
