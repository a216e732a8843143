// Node file storage: positional I/O, read-only opening, missing files.
import { describe, expect, it } from 'vitest';
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileStorage, fileProvider, syncFileProvider } from '../bindings/disk/backends/file.js';
import { readAt } from '../bindings/disk/backends/storage.js';

describe('FileStorage', () => {
  it('writes and reads at offsets, grows, truncates, and refuses writes read-only', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vmkit-file-'));
    try {
      const p = join(dir, 'a.img');
      const s = await FileStorage.create(p);
      await s.write(4096, new Uint8Array([1, 2, 3]));
      expect(await s.size()).toBe(4099);
      expect([...(await readAt(s, 4095, 6))]).toEqual([0, 1, 2, 3, 0, 0]);
      await s.truncate(8192);
      await s.flush();
      await s.close();
      const bytes = await readFile(p);
      expect(bytes.length).toBe(8192);
      expect(bytes[4098]).toBe(3);
      const ro = await FileStorage.open(p, { readOnly: true });
      await expect(ro.write(0, new Uint8Array([1]))).rejects.toMatchObject({ code: 'INVALID_STATE' });
      expect((await readAt(ro, 4096, 1))[0]).toBe(1);
      await ro.close();
      await expect(FileStorage.open(join(dir, 'missing'))).rejects.toMatchObject({ code: 'NOT_FOUND' });
      await writeFile(join(dir, 'b.img'), new Uint8Array([42]));
      const b = await fileProvider.open(fileProvider.resolve(p, 'b.img'), { readOnly: true });
      expect((await readAt(b, 0, 1))[0]).toBe(42);
      await b.close();
      expect(fileProvider.relative(p, join(dir, 'b.img'))).toBe('b.img');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
  it('sync I/O reads and writes the same bytes as the thread pool', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vmkit-file-'));
    try {
      const p = join(dir, 's.img');
      const s = await syncFileProvider.create(p);
      await s.write(1000, new Uint8Array([4, 5, 6]));
      await s.close();
      const a = await fileProvider.open(p, { readOnly: true });
      expect([...(await readAt(a, 999, 5))]).toEqual([0, 4, 5, 6, 0]);
      await a.close();
      const b = await syncFileProvider.open(p, { readOnly: false });
      await b.write(1001, new Uint8Array([9]));
      expect([...(await readAt(b, 999, 5))]).toEqual([0, 4, 9, 6, 0]);
      await b.close();
      await expect(syncFileProvider.open(join(dir, 'none'), { readOnly: true })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
