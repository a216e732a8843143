/**
 * Tour chapter: virtual disks. Make a qcow2 base and an overlay on it (in
 * memory), write through the overlay, and look at what each layer holds:
 * the map `qemu-img map` would print and the consistency check.
 * @module
 */
import { MemoryProvider } from '../disk/backends/memory.js';
import { mapExtents, toQemuMap } from '../disk/device.js';
import { checkImage, createImage, openImage } from '../disk/image.js';

/**
 * Runs the chapter, printing through `log`.
 *
 * @example
 * ```ts
 * // `npm start` (bindings/bin/tour.ts) runs every chapter this way; the tour is not part of the package's exports.
 * import { chapter } from '../tour/disk.js';
 * await chapter(console.log);
 * ```
 */
export async function chapter(log: (s: string) => void): Promise<void> {
  const provider = new MemoryProvider();
  await createImage('base.qcow2', { provider, size: 4 << 20 });
  const base = await openImage('base.qcow2', { provider });
  await base.write(0, new Uint8Array(1 << 20).fill(0x11));
  await base.close();
  log('base.qcow2: 4 MiB, first 1 MiB written with 0x11');

  await createImage('delta.qcow2', { provider, backing: 'base.qcow2' });
  const disk = await openImage('delta.qcow2', { provider });
  await disk.write(512 << 10, new Uint8Array(64 << 10).fill(0x22));
  await disk.write(2 << 20, new Uint8Array(128 << 10)); // zeroes: become zero clusters, no data
  log(`delta.qcow2 over ${disk.backingFile}: wrote 64 KiB of 0x22 at 512 KiB and 128 KiB of zeroes at 2 MiB`);
  const b = await disk.read(512 << 10, 512);
  log(`read at 512 KiB → 0x${b[0]!.toString(16)} (from the delta); at 0 → 0x${(await disk.read(0, 512))[0]!.toString(16)} (from the base)`);
  log('map (as qemu-img map --output=json):');
  for (const e of toQemuMap(await mapExtents(disk))) log('  ' + JSON.stringify(e));
  await disk.close();
  const r = await checkImage('delta.qcow2', { provider });
  log(`check: ${r.corruptions} corruptions, ${r.leaks} leaks, ${r.allocatedClusters} of ${r.totalClusters} clusters allocated`);
}
