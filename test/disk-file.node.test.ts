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
  it('large reads into big buffers (the page-aligned bounce path) land every byte where a direct read does, concurrently and past the end', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vmkit-file-'));
    try {
      const p = join(dir, 'big.img');
      const data = new Uint8Array(3 * 2 ** 20 + 777);
      let x = 7;
      for (let i = 0; i < data.length; i++) data[i] = (x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 24;
      await writeFile(p, data);
      for (const provider of [fileProvider, syncFileProvider]) {
        const s = await provider.open(p, { readOnly: true });
        const big = new Uint8Array(2 ** 21);
        // Destination offsets 1-31 bytes on either side of the file offset modulo a page (those
        // that bounce), and others that go straight in; lengths across several bounce slots.
        const cases: [number, number, number][] = [];
        for (const off of [0, 4096, 65536 + 512, 2 ** 20 + 4000]) for (const d of [0, 8, 16, 24, 40, 4080, 4095]) cases.push([off, (off % 4096) + d, 300 * 1024 + d]);
        for (const [off, at, len] of cases) {
          big.fill(0xee);
          await s.readInto(off, big.subarray(at, at + len));
          expect(big.subarray(at, at + len)).toEqual(data.subarray(off, off + len));
          expect(big[at - 1] ?? 0xee).toBe(0xee);
          expect(big[at + len]).toBe(0xee);
        }
        // Concurrent reads into disjoint parts of one buffer.
        big.fill(0);
        await Promise.all([0, 1, 2, 3].map((i) => s.readInto(i * 400_000 + 16, big.subarray(i * 500_000 + 32, i * 500_000 + 32 + 400_000))));
        for (let i = 0; i < 4; i++) expect(big.subarray(i * 500_000 + 32, i * 500_000 + 400_032)).toEqual(data.subarray(i * 400_000 + 16, i * 400_000 + 400_016));
        // Past the end: the tail reads as zero.
        big.fill(0xee);
        const tail = big.subarray(16, 16 + 100_000);
        await s.readInto(data.length - 40_000, tail);
        expect(tail.subarray(0, 40_000)).toEqual(data.subarray(data.length - 40_000));
        expect(tail.subarray(40_000).every((b) => b === 0)).toBe(true);
        await s.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
