/**
 * Tour chapter: VMware disks. Make a monolithicSparse VMDK base and a delta
 * on it (in memory), watch the CID / parentCID link that ties them, write
 * through the delta, and see the link refuse a parent that changed.
 * @module
 */
import { MemoryProvider } from '../disk/backends/memory.js';
import { mapExtents, toQemuMap } from '../disk/device.js';
import { readHeader } from '../disk/formats/vmdk/index.js';
import { checkImage, createImage, openImage } from '../disk/image.js';
import { VmkitError } from '../errors.js';

/**
 * Runs the chapter, printing through `log`.
 *
 * @example
 * ```ts
 * // `npm start` (bindings/bin/tour.ts) runs every chapter this way; the tour is not part of the package's exports.
 * import { chapter } from '../tour/vmdk.js';
 * await chapter(console.log);
 * ```
 */
export async function chapter(log: (s: string) => void): Promise<void> {
  const provider = new MemoryProvider();
  const cids = async (name: string): Promise<string> => {
    const d = (await readHeader(await provider.open(name, { readOnly: true }))).descriptor;
    const hex = (n: number | undefined): string => (n ?? 0).toString(16).padStart(8, '0');
    return `CID=${hex(d?.cid)} parentCID=${hex(d?.parentCid)}`;
  };
  await createImage('base.vmdk', { provider, format: 'vmdk', size: 4 << 20 });
  const base = await openImage('base.vmdk', { provider });
  await base.write(0, new Uint8Array(1 << 20).fill(0x11));
  await base.close();
  log(`base.vmdk: 4 MiB monolithicSparse, first 1 MiB written with 0x11 (${await cids('base.vmdk')})`);

  await createImage('delta.vmdk', { provider, format: 'vmdk', backing: 'base.vmdk' });
  log(`delta.vmdk over base.vmdk: ${await cids('delta.vmdk')} — parentCID is the base's CID`);
  const disk = await openImage('delta.vmdk', { provider });
  await disk.write(512 << 10, new Uint8Array(4096).fill(0x22));
  log('wrote 4 KiB of 0x22 at 512 KiB: the delta copied the whole 64 KiB grain from the base first');
  log(`read at 512 KiB → 0x${(await disk.read(512 << 10, 512))[0]!.toString(16)}, at 516 KiB → 0x${(await disk.read(516 << 10, 512))[0]!.toString(16)}`);
  log('map (as qemu-img map --output=json):');
  for (const e of toQemuMap(await mapExtents(disk))) log('  ' + JSON.stringify(e));
  await disk.close();
  log(`after the first write the delta has a new CID: ${await cids('delta.vmdk')}`);
  const r = await checkImage('delta.vmdk', { provider });
  log(`check: ${r.corruptions} corruptions, ${r.allocatedClusters} of ${r.totalClusters} grains allocated`);

  const b2 = await openImage('base.vmdk', { provider });
  await b2.write(0, new Uint8Array(512));
  await b2.close();
  try {
    await openImage('delta.vmdk', { provider });
  } catch (e) {
    if (!(e instanceof VmkitError)) throw e;
    log(`writing the base changed its CID; the delta now refuses to open: ${e.code}`);
  }
}
