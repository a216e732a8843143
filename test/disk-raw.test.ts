// raw images through the format registry, on memory stores (Node and Chromium): the
// block-device contract, the one extent raw maps to, no backing files.
import { describe, expect, it } from 'vitest';
import { MemoryProvider } from '../bindings/disk/backends/memory.js';
import { createImage, openImage } from '../bindings/disk/image.js';
import { mapExtents } from '../bindings/disk/device.js';
import { blockDeviceContract } from './_block-device-contract.js';

blockDeviceContract('raw');

describe('raw images', () => {
  it('maps as one data extent at host offset 0', async () => {
    const provider = new MemoryProvider();
    await createImage('d.img', { provider, format: 'raw', size: 8192 });
    const dev = await openImage('d.img', { provider });
    await dev.write(512, new Uint8Array(1024).fill(1));
    expect(await mapExtents(dev)).toEqual([{ offset: 0, length: 8192, kind: 'data', depth: 0, hostOffset: 0 }]);
    await dev.close();
  });
  it('refuses a backing file', async () => {
    const provider = new MemoryProvider();
    await createImage('b.img', { provider, format: 'raw', size: 4096 });
    await expect(createImage('t.img', { provider, format: 'raw', backing: 'b.img' })).rejects.toMatchObject({ code: 'UNSUPPORTED' });
  });
});
