// raw images through the format registry, on memory stores (Node and Chromium).
import { describe, expect, it } from 'vitest';
import { MemoryProvider } from '../bindings/disk/backends/memory.js';
import { createImage, openImage, probeFormat, checkImage } from '../bindings/disk/image.js';
import { mapExtents } from '../bindings/disk/device.js';

describe('raw images', () => {
  it('creates, writes, reads back and maps as data', async () => {
    const provider = new MemoryProvider();
    await createImage('d.img', { provider, format: 'raw', size: 8192 });
    expect(await probeFormat(provider.stores.get('d.img')!)).toBe('raw');
    const dev = await openImage('d.img', { provider });
    expect(dev.format).toBe('raw');
    expect(dev.size).toBe(8192);
    const data = new Uint8Array(1024).map((_, i) => i & 255);
    await dev.write(512, data);
    expect(await dev.read(512, 1024)).toEqual(data);
    await dev.writeZeroes(1024, 512);
    expect((await dev.read(1024, 512)).every((b) => b === 0)).toBe(true);
    expect(await mapExtents(dev)).toEqual([{ offset: 0, length: 8192, kind: 'data', depth: 0, hostOffset: 0 }]);
    await expect(dev.read(8000, 512)).rejects.toMatchObject({ code: 'ARG_RANGE' });
    await dev.close();
    const ro = await openImage('d.img', { provider, readOnly: true });
    await expect(ro.write(0, new Uint8Array(512))).rejects.toMatchObject({ code: 'INVALID_STATE' });
    expect((await ro.info()).virtualSize).toBe(8192);
    await ro.close();
    expect((await checkImage('d.img', { provider })).corruptions).toBe(0);
  });
  it('refuses a backing file', async () => {
    const provider = new MemoryProvider();
    await createImage('b.img', { provider, format: 'raw', size: 4096 });
    await expect(createImage('t.img', { provider, format: 'raw', backing: 'b.img' })).rejects.toMatchObject({ code: 'UNSUPPORTED' });
  });
});
