/**
 * Tour chapter: disk ownership. Two holders in this process hand an
 * in-memory raw disk to each other through release requests (in-process
 * transport, memory store); a request without the disk's secret is refused;
 * a refusal comes back with its reason; a holder
 * whose epoch was taken while it could not be asked is fenced on its next flush.
 * @module
 */
import { MemoryProvider } from '../disk/backends/memory.js';
import { createImage } from '../disk/image.js';
import { MemoryOwnerStore } from '../disk/owner/memory-store.js';
import { inProcessTransport } from '../disk/owner/transport.js';
import { openOwned, type OpenOwnedOptions } from '../disk/owner/handoff.js';
import { VmkitError } from '../errors.js';

/**
 * Runs the chapter, printing through `log`.
 *
 * @example
 * ```ts
 * // `npm start` (bindings/bin/tour.ts) runs every chapter this way; the tour is not part of the package's exports.
 * import { chapter } from '../tour/owner.js';
 * await chapter(console.log);
 * ```
 */
export async function chapter(log: (s: string) => void): Promise<void> {
  const provider = new MemoryProvider();
  await createImage('vm.raw', { provider, format: 'raw', size: 1 << 20 });
  const store = new MemoryOwnerStore();
  const opts = (id: string, more: Partial<OpenOwnedOptions> = {}): OpenOwnedOptions => ({
    as: { id, host: 'tour', pid: 0 },
    store,
    transport: inProcessTransport,
    serve: `tour-${id}-${Math.random().toString(36).slice(2)}`,
    image: { provider, format: 'raw' },
    leaseMs: 5000,
    ...more,
  });

  const a = await openOwned('vm.raw', opts('alpha'));
  await a.device.write(0, new Uint8Array(512).fill(0xaa));
  log(`alpha holds vm.raw at epoch ${a.epoch} (release requests at ${a.endpoint}); wrote sector 0`);
  // Release requests prove they can read the owner record (an HMAC with the disk's secret): a forged one is refused.
  const forged = await inProcessTransport.request(a.endpoint!, { disk: 'vm.raw', epoch: a.epoch, requester: { id: 'mallory', host: 'tour', pid: 0 } }, 1000);
  log(`mallory asks without the disk's secret → ${forged.ok ? 'released' : `${forged.code}: ${forged.reason}`}; alpha keeps the disk`);

  const t0 = performance.now();
  const b = await openOwned('vm.raw', opts('beta', { onReleaseRequest: (r) => (r.requester.id === 'gamma' ? 'gamma must wait for the nightly backup' : undefined) }));
  const out = await a.done;
  log(`beta asked alpha to release: alpha drained, flushed, wrote free (${out.reason}); beta took epoch ${b.epoch} in ${(performance.now() - t0).toFixed(1)} ms`);
  log(`beta reads sector 0 → 0x${(await b.device.read(0, 512))[0]!.toString(16)} (alpha's write survived the handoff)`);
  try {
    await a.device.write(0, new Uint8Array(512));
  } catch (e) {
    log(`alpha writes again → ${(e as VmkitError).code}: ${(e as VmkitError).message}`);
  }
  try {
    await openOwned('vm.raw', opts('gamma'));
  } catch (e) {
    log(`gamma asks beta → ${(e as VmkitError).code}: ${(e as VmkitError).message}`);
  }
  await b.release();

  // A holder nobody can ask (no endpoint), and an opener whose clock runs an hour ahead:
  // the lease looks dead to it, so it takes the next epoch; the old holder's next flush
  // checks the store and finds out.
  const c = await openOwned('vm.raw', opts('delta', { serve: false }));
  const d = await openOwned('vm.raw', opts('epsilon', { now: () => Date.now() + 3_600_000 }));
  log(`delta held epoch ${c.epoch} without an endpoint; epsilon (clock +1 h) saw its lease as expired and took epoch ${d.epoch}`);
  try {
    await c.device.flush();
  } catch (e) {
    log(`delta flushes → ${(e as VmkitError).code} (fenced: ${c.fenced})`);
  }
  await d.release();
  const rec = (await store.read('vm.raw')).record!;
  log(`record now: ${rec.state} at epoch ${rec.epoch}, last held by ${rec.owner?.id}`);
}
