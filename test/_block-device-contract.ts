// The contract every image format keeps as a BlockDevice (raw, qcow2, VMDK, and
// any format to come), on memory storage so it runs in Node and Chromium: create,
// probe, write and read back, zeroes, bounds, read-only opens, a random sequence
// of writes, zeroes and discards that reads back as a byte model says (across
// reopen and, where the format has backing files, through a chain), extents
// that cover the disk, and a clean check after all of it.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MemoryProvider } from '../bindings/disk/backends/memory.js';
import { createImage, openImage, probeFormat, checkImage } from '../bindings/disk/image.js';
import { mapExtents } from '../bindings/disk/device.js';
import type { FormatName } from '../bindings/disk/formats/types.js';

/** True when two byte arrays are equal (toEqual on megabytes is far too slow). */
function same(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
const fill = (n: number, v: number): Uint8Array => new Uint8Array(n).fill(v);

/** What a format offers beyond the common ground. */
export interface BlockDeviceContractOptions {
  /** Cluster (grain) sizes to create with; none: the format has no such option. */
  clusterSizes?: number[];
  /** The format can have a backing file. */
  backing?: boolean;
  /** fast-check runs of the model test. */
  runs?: number;
}

/** Registers the block-device contract for `format`. */
export function blockDeviceContract(format: FormatName, opts: BlockDeviceContractOptions = {}): void {
  const name = `d.${format === 'raw' ? 'img' : format}`;
  const cluster = (gs: number | undefined): { clusterSize?: number } => (gs === undefined ? {} : { clusterSize: gs });
  describe(`block device contract: ${format}`, () => {
    it('creates, probes, writes, reads back, zeroes; refuses reads past the end and writes when read-only; checks clean', async () => {
      const provider = new MemoryProvider();
      await createImage(name, { provider, format, size: 8192 });
      expect(await probeFormat(provider.stores.get(name)!)).toBe(format);
      const dev = await openImage(name, { provider });
      expect(dev.format).toBe(format);
      expect(dev.size).toBe(8192);
      const data = new Uint8Array(1024).map((_, i) => i & 255);
      await dev.write(512, data);
      expect(await dev.read(512, 1024)).toEqual(data);
      await dev.writeZeroes(1024, 512);
      expect((await dev.read(1024, 512)).every((b) => b === 0)).toBe(true);
      expect((await dev.read(512, 512))).toEqual(data.subarray(0, 512));
      await expect(dev.read(8000, 512)).rejects.toMatchObject({ code: 'ARG_RANGE' });
      await dev.flush();
      await dev.close();
      const ro = await openImage(name, { provider, readOnly: true });
      await expect(ro.write(0, new Uint8Array(512))).rejects.toMatchObject({ code: 'INVALID_STATE' });
      expect((await ro.info()).virtualSize).toBe(8192);
      expect(await ro.read(512, 512)).toEqual(data.subarray(0, 512));
      await ro.close();
      expect((await checkImage(name, { provider })).corruptions).toBe(0);
    });

    it('random writes, zeroes and discards read back as a model says, across reopen' + (opts.backing ? ' and through a chain' : ''), async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.constantFrom(...(opts.clusterSizes ?? [undefined])),
          opts.backing ? fc.boolean() : fc.constant(false),
          fc.array(fc.record({ sector: fc.nat(1023), n: fc.integer({ min: 1, max: 200 }), v: fc.integer({ min: 0, max: 255 }), op: fc.constantFrom('w', 'w', 'z', 'd') }), { maxLength: 15 }),
          async (gs, withParent, ops) => {
            const provider = new MemoryProvider();
            const size = 1024 * 512;
            const model = new Uint8Array(size);
            const [p, t] = [`p.${format}`, `t.${format}`];
            if (withParent) {
              await createImage(p, { provider, format, size, ...cluster(gs) });
              const pd = await openImage(p, { provider });
              await pd.write(8192, fill(100000 - (100000 % 512), 0x44));
              model.fill(0x44, 8192, 8192 + 100000 - (100000 % 512));
              await pd.close();
              await createImage(t, { provider, format, backing: p, ...cluster(gs) });
            } else await createImage(t, { provider, format, size, ...cluster(gs) });
            const dev = await openImage(t, { provider });
            for (const o of ops) {
              const n = Math.min(o.n, 1024 - o.sector) * 512;
              const at = o.sector * 512;
              if (o.op === 'w') await dev.write(at, fill(n, o.v));
              else if (o.op === 'z') await dev.writeZeroes(at, n);
              else await dev.discard(at, n);
              model.fill(o.op === 'w' ? o.v : 0, at, at + n);
            }
            expect(same(await dev.read(0, size), model)).toBe(true);
            await dev.close();
            const again = await openImage(t, { provider, readOnly: true });
            expect(same(await again.read(0, size), model)).toBe(true);
            const ext = await mapExtents(again);
            expect(ext.reduce((s, e) => s + e.length, 0)).toBe(size);
            await again.close();
            const r = await checkImage(t, { provider });
            expect(r.corruptions).toBe(0);
          },
        ),
        { numRuns: opts.runs ?? 25 },
      );
    });
  });
}
