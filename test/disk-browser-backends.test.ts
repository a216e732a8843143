// Blob (read-only) and the origin-private file system as image stores. Blob
// runs everywhere; OPFS runs where the runtime has it (Chromium), not in Node.
import { describe, expect, it } from 'vitest';
import { BlobStorage } from '../bindings/disk/backends/blob.js';
import { OpfsProvider } from '../bindings/disk/backends/opfs.js';
import { MemoryProvider } from '../bindings/disk/backends/memory.js';
import { checkImage, createImage, loadFormat, openImage } from '../bindings/disk/image.js';

const hasOpfs = typeof navigator !== 'undefined' && typeof navigator.storage?.getDirectory === 'function';
// Skipped in Node only: in the browser project a missing OPFS is a failure, not a silent skip.
const inBrowser = typeof window !== 'undefined' && typeof document !== 'undefined';

describe('browser stores', () => {
  it('opens a qcow2 image from a Blob read-only', async () => {
    const provider = new MemoryProvider();
    await createImage('a.qcow2', { provider, size: 1 << 20 });
    const d = await openImage('a.qcow2', { provider });
    await d.write(4096, new Uint8Array(4096).fill(0x42));
    await d.close();
    const blob = new Blob([provider.stores.get('a.qcow2')!.bytes().slice() as Uint8Array<ArrayBuffer>]);
    const dev = await (await loadFormat('qcow2')).open(new BlobStorage(blob, 'a.qcow2'), {});
    expect(dev.readOnly).toBe(true);
    const r = await dev.read(0, 16384);
    expect([r[4095], r[4096], r[8191], r[8192]]).toEqual([0, 0x42, 0x42, 0]);
    await expect(dev.write(0, new Uint8Array(512))).rejects.toMatchObject({ code: 'INVALID_STATE' });
    await dev.close();
  });

  it.skipIf(!inBrowser)('creates, writes and checks a chain in the origin-private file system', async () => {
    expect(hasOpfs, 'navigator.storage.getDirectory in this browser').toBe(true);
    const root = await navigator.storage.getDirectory();
    const dir = await root.getDirectoryHandle(`vmkit-${Date.now()}`, { create: true });
    const provider = new OpfsProvider(dir);
    await createImage('base.qcow2', { provider, size: 1 << 20 });
    const b = await openImage('base.qcow2', { provider });
    await b.write(0, new Uint8Array(65536).fill(7));
    await b.close();
    await createImage('top.qcow2', { provider, backing: 'base.qcow2' });
    const t = await openImage('top.qcow2', { provider });
    await t.write(65536, new Uint8Array(512).fill(8));
    const r = await t.read(0, 131072);
    expect([r[0], r[65535], r[65536], r[66048]]).toEqual([7, 7, 8, 0]);
    await t.close();
    expect(await checkImage('top.qcow2', { provider })).toMatchObject({ corruptions: 0, leaks: 0 });
    await root.removeEntry(dir.name, { recursive: true });
  });
});
