// Node file storage: positional I/O, read-only opening, missing files.
import { describe, expect, it } from 'vitest';
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileStorage, fileProvider, syncFileProvider, _aliases } from '../bindings/disk/backends/file.js';
import { createImage, openImage } from '../bindings/disk/image.js';
import { alignedBuffer, readAt } from '../bindings/disk/backends/storage.js';

describe('FileStorage', () => {
  it('writes and reads at offsets, grows, truncates, and refuses writes read-only', async () => {
    await inTmp(async (dir) => {
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
    });
  });
  it('read() returns a page-aligned plain Uint8Array holding what readInto reads, with no stale bytes around it', async () => {
    await inTmp(async (dir) => {
      const p = join(dir, 'r.qcow2');
      await createImage(p, { size: 4 << 20 });
      const w = await openImage(p);
      const data = new Uint8Array(3 << 20).map((_, i) => (i * 7 + 1) & 0xff);
      await w.write(512 * 1024, data);
      await w.close();
      const dev = await openImage(p, { readOnly: true });
      try {
        for (const [off, len] of [[0, 4 << 20], [512 * 1024 - 4096, 1 << 20], [0, 4096]] as const) {
          const got = await dev.read(off, len);
          const want = new Uint8Array(len);
          await dev.readInto(off, want);
          expect(Object.getPrototypeOf(got)).toBe(Uint8Array.prototype); // not a Buffer: slice() copies
          expect(got).toEqual(want);
          const whole = new Uint8Array(got.buffer);
          // The slack of a large one is zero (uninitialized memory never shows through .buffer).
          expect(whole.subarray(0, got.byteOffset).every((b) => b === 0)).toBe(true);
          expect(whole.subarray(got.byteOffset + got.length).every((b) => b === 0)).toBe(true);
        }
      } finally {
        await dev.close();
      }
    });
  });
  it('sync I/O reads and writes the same bytes as the thread pool', async () => {
    await inTmp(async (dir) => {
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
    });
  });
  it('large reads into big buffers (the page-aligned bounce path) land every byte where a direct read does, concurrently and past the end', async () => {
    await inTmp(async (dir) => {
      const p = join(dir, 'big.img');
      const data = pattern(3 * 2 ** 20 + 777);
      await writeFile(p, data);
      for (const provider of [fileProvider, syncFileProvider]) {
        const s = await provider.open(p, { readOnly: true });
        const big = new Uint8Array(2 ** 22);
        // Destination offsets 1-31 bytes on either side of the file offset modulo a page (those
        // that bounce), and others that go straight in; lengths across several bounce slots.
        const cases: [number, number, number][] = [];
        for (const off of [0, 4096, 65536 + 512, 2 ** 20 + 4000]) for (const d of [0, 8, 16, 24, 40, 4080, 4095]) cases.push([off, (off % 4096) + d, 1300 * 1024 + d]);
        let bounced = 0;
        for (const [off, at, len] of cases) {
          big.fill(0xee);
          const view = big.subarray(at, at + len);
          if (_aliases(view, off)) bounced++;
          await s.readInto(off, view);
          expect(view).toEqual(data.subarray(off, off + len));
          expect(big[at - 1] ?? 0xee).toBe(0xee);
          expect(big[at + len]).toBe(0xee);
        }
        expect(bounced).toBeGreaterThan(4);
        expect(bounced).toBeLessThan(cases.length);
        // Concurrent reads into disjoint parts of one buffer: more than there are bounce slots.
        big.fill(0);
        const n = 40;
        const w = 90_000;
        await Promise.all(Array.from({ length: n }, (_, i) => s.readInto(i * 70_000 + 16, big.subarray(i * 100_000 + 32, i * 100_000 + 32 + w))));
        for (let i = 0; i < n; i++) expect(big.subarray(i * 100_000 + 32, i * 100_000 + 32 + w)).toEqual(data.subarray(i * 70_000 + 16, i * 70_000 + 16 + w));
        // Past the end: the tail reads as zero.
        big.fill(0xee);
        const tail = big.subarray(16, 16 + 100_000);
        await s.readInto(data.length - 40_000, tail);
        expect(tail.subarray(0, 40_000)).toEqual(data.subarray(data.length - 40_000));
        expect(tail.subarray(40_000).every((b) => b === 0)).toBe(true);
        // A page-aligned buffer takes the direct path and reads the same.
        const al = alignedBuffer(2 ** 20);
        expect(_aliases(al, 0)).toBe(false);
        await s.readInto(8192, al);
        expect(al).toEqual(data.subarray(8192, 8192 + 2 ** 20));
        await s.close();
      }
    });
  });
  it('a read in flight when the file closes completes whole; requests after close throw INVALID_STATE', async () => {
    await inTmp(async (dir) => {
      const p = join(dir, 'c.img');
      const data = pattern(6 * 2 ** 20);
      await writeFile(p, data);
      for (const provider of [fileProvider, syncFileProvider]) {
        const s = await provider.open(p, { readOnly: false });
        // Bounced (several slot-sized round trips) and direct, both racing the close.
        const bounced = new Uint8Array(2 ** 23).subarray(8, 8 + 5 * 2 ** 20);
        expect(_aliases(bounced, 0)).toBe(true);
        const direct = alignedBuffer(5 * 2 ** 20);
        const reads = [s.readInto(0, bounced), s.readInto(4096, direct)];
        const closed = s.close();
        await expect(s.readInto(0, new Uint8Array(512))).rejects.toMatchObject({ code: 'INVALID_STATE' });
        await Promise.all(reads);
        expect(bounced).toEqual(data.subarray(0, 5 * 2 ** 20));
        expect(direct).toEqual(data.subarray(4096, 4096 + 5 * 2 ** 20));
        await closed;
        await s.close();
        for (const op of [() => s.readInto(0, new Uint8Array(2 ** 20)), () => s.write(0, new Uint8Array(1)), () => s.size(), () => s.truncate(0), () => s.flush()]) {
          await expect(op()).rejects.toMatchObject({ code: 'INVALID_STATE' });
        }
      }
      // Through an image: a device read racing its close gets either all the bytes or INVALID_STATE.
      const dev = await openImage(p, { format: 'raw', readOnly: true });
      const buf = new Uint8Array(2 ** 22).subarray(16, 16 + 3 * 2 ** 20);
      const r = dev.readInto(0, buf);
      await dev.close();
      await r;
      expect(buf).toEqual(data.subarray(0, 3 * 2 ** 20));
      await expect(dev.readInto(0, new Uint8Array(512))).rejects.toMatchObject({ code: 'INVALID_STATE' });
      // A qcow2 image whose file was closed under it (as fencing drops a stale owner's file).
      const q = join(dir, 'c.qcow2');
      await createImage(q, { format: 'qcow2', size: 2 ** 22 });
      const w = await openImage(q);
      await w.write(0, data.subarray(0, 2 ** 20));
      await w.close();
      const storage = await fileProvider.open(q, { readOnly: true });
      const qdev = await openImage(q, { readOnly: true, provider: { ...fileProvider, open: async () => storage } });
      await storage.close();
      await expect(qdev.readInto(0, new Uint8Array(2 ** 20))).rejects.toMatchObject({ code: 'INVALID_STATE' });
    });
  });
});

function pattern(n: number): Uint8Array {
  const data = new Uint8Array(n);
  let x = 7;
  for (let i = 0; i < n; i++) data[i] = (x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 24;
  return data;
}

/** Runs `fn` in a fresh temporary folder, removed afterwards. */
async function inTmp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'vmkit-file-'));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
