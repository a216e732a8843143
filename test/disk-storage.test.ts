// The in-memory image store and the device helpers (runs in Node and Chromium).
import { describe, expect, it } from 'vitest';
import { MemoryStorage, MemoryProvider } from '../bindings/disk/backends/memory.js';
import { readAt } from '../bindings/disk/backends/storage.js';
import { byteToSector, sectorToByte, checkRange, toQemuMap } from '../bindings/disk/device.js';
import { VmkitError } from '../bindings/errors.js';

describe('MemoryStorage', () => {
  it('reads back what was written, zero past the end, and grows', async () => {
    const s = new MemoryStorage('m');
    await s.write(10, new Uint8Array([1, 2, 3]));
    expect(await s.size()).toBe(13);
    expect([...(await readAt(s, 8, 8))]).toEqual([0, 0, 1, 2, 3, 0, 0, 0]);
    await s.write(100_000, new Uint8Array([9]));
    expect(await s.size()).toBe(100_001);
    expect((await readAt(s, 12, 1))[0]).toBe(3);
    await s.truncate(11);
    expect([...(await readAt(s, 10, 3))]).toEqual([1, 0, 0]);
    await s.truncate(20);
    expect([...(await readAt(s, 10, 3))]).toEqual([1, 0, 0]);
  });
  it('refuses writes through a read-only view', async () => {
    const s = new MemoryStorage('m');
    await s.write(0, new Uint8Array([7]));
    const ro = s.readOnlyView();
    expect((await readAt(ro, 0, 1))[0]).toBe(7);
    await expect(ro.write(0, new Uint8Array([1]))).rejects.toMatchObject({ code: 'INVALID_STATE' });
    await expect(ro.truncate(0)).rejects.toBeInstanceOf(VmkitError);
  });
  it('a read-only view sees the later writes of its store, growth included (a backing file written by a commit)', async () => {
    const s = new MemoryStorage('m');
    await s.write(0, new Uint8Array([7]));
    const ro = s.readOnlyView();
    await s.write(0, new Uint8Array([8]));
    await s.write(1 << 20, new Uint8Array([9])); // grows: the store's buffer is replaced
    expect(await ro.size()).toBe((1 << 20) + 1);
    expect([...(await readAt(ro, 0, 1)), ...(await readAt(ro, 1 << 20, 1))]).toEqual([8, 9]);
    expect(ro.bytes().length).toBe((1 << 20) + 1);
  });
  it('the provider finds stores by name and resolves names relative to the overlay', async () => {
    const p = new MemoryProvider();
    const s = await p.create('dir/base.img');
    await s.write(0, new Uint8Array([5]));
    expect(p.resolve('dir/top.img', 'base.img')).toBe('dir/base.img');
    expect(p.resolve('dir/top.img', '/abs.img')).toBe('/abs.img');
    expect(p.relative('dir/top.img', 'dir/base.img')).toBe('base.img');
    const ro = await p.open('dir/base.img', { readOnly: true });
    expect(ro.readOnly).toBe(true);
    expect((await readAt(ro, 0, 1))[0]).toBe(5);
    await expect(p.open('nope', { readOnly: true })).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });
});

describe('device helpers', () => {
  it('converts sectors and bytes, refusing misaligned or unsafe values', () => {
    expect(sectorToByte(8)).toBe(4096);
    expect(byteToSector(4096)).toBe(8);
    expect(() => byteToSector(100)).toThrow(VmkitError);
    expect(() => sectorToByte(2 ** 50)).toThrow(VmkitError);
  });
  it('checks ranges against a device', () => {
    const dev = { size: 4096, alignment: 512 };
    expect(() => checkRange(dev, 0, 4096, 'read')).not.toThrow();
    expect(() => checkRange(dev, 512, 4096, 'read')).toThrow(/past the end/);
    expect(() => checkRange(dev, 1, 512, 'read')).toThrow(/multiples/);
  });
  it('merges qemu map entries that continue each other', () => {
    const m = toQemuMap([
      { offset: 0, length: 512, kind: 'data', depth: 0, hostOffset: 1024 },
      { offset: 512, length: 512, kind: 'data', depth: 0, hostOffset: 1536 },
      { offset: 1024, length: 512, kind: 'zero', depth: 0 },
      { offset: 1536, length: 512, kind: 'unallocated', depth: 1 },
    ]);
    expect(m).toEqual([
      { start: 0, length: 1024, depth: 0, present: true, zero: false, data: true, offset: 1024 },
      { start: 1024, length: 512, depth: 0, present: true, zero: true, data: false },
      { start: 1536, length: 512, depth: 1, present: false, zero: true, data: false },
    ]);
  });
});
