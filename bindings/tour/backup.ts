/**
 * Tour chapter: live backup. Snapshot a disk, back it up while a "guest"
 * keeps writing, then consolidate the delta into the base with the mirror
 * driver — and check the result against what the guest wrote.
 * @module
 */
import { backup, consolidate, LiveDisk, MemoryChainOps, snapshot } from '../disk/backup/index.js';

const MiB = 2 ** 20;

function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function fmt(n: number): string {
  return `${(n / MiB).toFixed(1)} MiB`;
}

/**
 * Runs the chapter, printing through `log`.
 *
 * @example
 * ```ts
 * // `npm start` (bindings/bin/tour.ts) runs every chapter this way; the tour is not part of the package's exports.
 * import { chapter } from '../tour/backup.js';
 * await chapter(console.log);
 * ```
 */
export async function chapter(log: (s: string) => void): Promise<void> {
  const size = 64 * MiB;
  const ops = new MemoryChainOps();
  await ops.create('vm.qcow2', size, 'qcow2');
  const disk = await LiveDisk.open('vm.qcow2', ops);
  const truth = new Uint8Array(size); // what the guest believes its disk holds
  let seed = 42;
  const rand = (): number => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const guestWrite = async (): Promise<void> => {
    const len = (1 + Math.floor(rand() * 16)) * 4096;
    const off = Math.floor(rand() * ((size - len) / 4096)) * 4096;
    const data = new Uint8Array(len).fill(1 + Math.floor(rand() * 255));
    await disk.write(off, data);
    truth.set(data, off);
  };
  for (let i = 0; i < 400; i++) await guestWrite();
  log(`disk vm.qcow2: ${fmt(size)} virtual, ${fmt(ops.allocated('vm.qcow2'))} allocated`);

  const snap = await snapshot(disk);
  const frozenTruth = truth.slice();
  log(`snapshot: ${snap.frozen} frozen, guest now writes to ${snap.delta}`);

  // A guest that writes at full speed while the jobs run.
  let running = true;
  let writes = 0;
  const guest = (async () => {
    while (running) {
      await guestWrite();
      writes++;
    }
  })();

  const b0 = performance.now();
  const b = await backup(snap.image, 'backup.raw', { ops, format: 'raw' }).done;
  const backupMs = performance.now() - b0;
  const img = await ops.open('backup.raw', { readOnly: true });
  const same = equal(await img.read(0, size), frozenTruth);
  log(`backup: ${fmt(b.copiedBytes)} copied in ${backupMs.toFixed(0)} ms while the guest made ${writes} writes; backup equals the point-in-time image: ${same}`);
  await snap.image.close();

  const w0 = writes;
  const job = await consolidate(disk, { into: 'base' });
  const res = await job.done;
  running = false;
  await guest;
  const now = await disk.read(0, size);
  const ok = equal(now, truth);
  log(
    `consolidate into base: ${fmt(res.planned)} planned, ${fmt(res.copiedBytes)} copied, ${fmt(res.skippedBytes)} skipped (already mirrored), ` +
      `${res.mirroredWrites} guest writes mirrored (${writes - w0} during the job), ${res.recopiedBytes} bytes copied twice, ${res.elapsedMs} ms`,
  );
  log(`active layer now ${disk.path}; delta gone: ${!(await ops.exists(snap.delta))}; disk equals what the guest wrote: ${ok}`);
  await disk.close();
}
