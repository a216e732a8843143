// Reads through backing chains (qcow2 and VMDK, memory stores): backing runs separated by a
// little overlay data become one backing read when the backing layer holds the span as one
// stretch (_readRuns' merge); what comes back must equal a byte model of the chain whatever
// the layout below (fragmented, zero, compressed or absent), and the merge must actually cut
// the storage reads.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MemoryProvider } from '../bindings/disk/backends/memory.js';
import { createImage, openImage } from '../bindings/disk/image.js';
import type { Storage } from '../bindings/disk/backends/storage.js';

const CS = 4096;

/** Counts readInto calls on a store. */
function countReads(s: Storage): { n: number } {
  const c = { n: 0 };
  const orig = s.readInto.bind(s);
  s.readInto = (o: number, d: Uint8Array) => {
    c.n++;
    return orig(o, d);
  };
  return c;
}

/** Index of the first differing byte, or -1. */
function diff(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

type Op = { layer: number; cluster: number; len: number; kind: 'data' | 'zero' };

describe('reads through a chain', () => {
  it('a sparse overlay on a contiguous base: one backing read per request, not one per gap', async () => {
    const provider = new MemoryProvider();
    const size = 64 * CS;
    await createImage('base.qcow2', { provider, size, clusterSize: CS });
    const base = await openImage('base.qcow2', { provider });
    await base.write(0, new Uint8Array(size).map((_, i) => (i >> 9) & 0xff));
    await base.close();
    await createImage('top.qcow2', { provider, backing: 'base.qcow2', clusterSize: CS });
    const top = await openImage('top.qcow2', { provider });
    // Overlay clusters every fourth cluster, written backwards so their host clusters are not
    // in guest order (no two coalesce into one host read).
    const model = new Uint8Array(size).map((_, i) => (i >> 9) & 0xff);
    for (let c = 60; c >= 0; c -= 4) {
      const d = new Uint8Array(CS).fill(0x80 + c);
      await top.write(c * CS, d);
      model.set(d, c * CS);
    }
    const baseStore = provider.stores.get('base.qcow2')!;
    const topStore = provider.stores.get('top.qcow2')!;
    const b = countReads(baseStore);
    const t = countReads(topStore);
    const got = new Uint8Array(size);
    await top.readInto(0, got);
    expect(diff(got, model)).toBe(-1);
    expect(t.n).toBe(16); // the overlay's 16 clusters
    // Without the merge: 16 gaps, 16 base reads. With it: one span (and its status lookups,
    // which read no storage once the base's L2 table is cached).
    expect(b.n).toBeLessThanOrEqual(2);
    await top.close();
  });

  for (const fmt of ['qcow2', 'vmdk'] as const) {
    it(`${fmt}: random layouts of three layers read back as the model says`, async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.array(
            fc.record({
              layer: fc.integer({ min: 0, max: 2 }),
              cluster: fc.integer({ min: 0, max: 47 }),
              len: fc.integer({ min: 1, max: 6 }),
              kind: fc.constantFrom<Op['kind']>('data', 'data', 'data', 'zero'),
            }),
            { minLength: 1, maxLength: 30 },
          ),
          fc.array(fc.tuple(fc.integer({ min: 0, max: 95 }), fc.integer({ min: 1, max: 40 })), { minLength: 1, maxLength: 8 }),
          async (ops, reads) => {
            const provider = new MemoryProvider();
            // Units of a cluster (qcow2, 4 KiB here) or a grain (VMDK: 64 KiB).
            const U = fmt === 'qcow2' ? CS : 65536;
            const size = 48 * U;
            const names = [`l0.${fmt}`, `l1.${fmt}`, `l2.${fmt}`];
            const model = new Uint8Array(size);
            let serial = 1;
            for (let layer = 0; layer < 3; layer++) {
              await createImage(names[layer]!, {
                provider,
                format: fmt,
                ...(layer === 0 ? { size } : { backing: names[layer - 1]! }),
                ...(fmt === 'qcow2' ? { clusterSize: CS } : {}),
              });
              const dev = await openImage(names[layer]!, { provider });
              for (const op of ops) {
                if (op.layer !== layer) continue;
                const n = Math.min(op.len, 48 - op.cluster) * U;
                const d = op.kind === 'zero' ? new Uint8Array(n) : new Uint8Array(n).map((_, i) => ((serial * 7 + (i >> 9)) & 0xff) | 1);
                serial++;
                await dev.write(op.cluster * U, d);
                model.set(d, op.cluster * U);
              }
              await dev.close();
            }
            const top = await openImage(names[2]!, { provider, readOnly: true });
            for (const [at, n] of reads) {
              const off = (at * U) / 2;
              const len = Math.min((n * U) / 2, size - off);
              if (len <= 0) continue;
              const got = new Uint8Array(len);
              await top.readInto(off, got);
              const i = diff(got, model.subarray(off, off + len));
              if (i >= 0) throw new Error(`read ${off}+${len}: byte ${off + i} is ${got[i]}, model ${model[off + i]}`);
            }
            await top.close();
          },
        ),
        { numRuns: 40 },
      );
    });
  }
});
