// VMDK in memory (Node and Chromium): a random-write model, chains with
// read-only parents and CID links, `check` on damaged metadata, and the
// header, descriptor and device under corrupted input (fast-check): every
// failure is a VmkitError with a stable code and an offset.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MemoryProvider, MemoryStorage } from '../bindings/disk/backends/memory.js';
import { createImage, openImage, checkImage, probeFormat } from '../bindings/disk/image.js';
import { mapExtents } from '../bindings/disk/device.js';
import { encodeVmdkHeader, parseVmdkHeader, geometry, type VmdkHeader } from '../bindings/disk/formats/vmdk/header.js';
import { encodeDescriptor, parseDescriptor, CID_NOPARENT } from '../bindings/disk/formats/vmdk/descriptor.js';
import { probe, readHeader, type VmdkDevice } from '../bindings/disk/formats/vmdk/index.js';
import { VmkitError } from '../bindings/errors.js';
import { blockDeviceContract } from './_block-device-contract.js';
import { DAMAGE_CODES, vmkitOnly } from './_damaged-image.js';

// Random writes, zeroes and discards against a model, across reopen and through a chain.
blockDeviceContract('vmdk', { clusterSizes: [4096, 16384, 65536], backing: true });

const CODES = DAMAGE_CODES;
function errOf(fn: () => unknown): VmkitError {
  try {
    fn();
  } catch (e) {
    if (e instanceof VmkitError) return e;
    throw e;
  }
  throw new Error('expected a VmkitError');
}
/** True when two byte arrays are equal (toEqual on megabytes is far too slow). */
function same(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
const fill = (n: number, v: number): Uint8Array => new Uint8Array(n).fill(v);
const u32 = (b: Uint8Array, at: number): number => new DataView(b.buffer, b.byteOffset).getUint32(at, true);
const setU32 = (b: Uint8Array, at: number, v: number): void => new DataView(b.buffer, b.byteOffset).setUint32(at, v, true);

/** A base with data and a delta over it, in memory. */
async function sample(): Promise<{ provider: MemoryProvider; base: Uint8Array; top: Uint8Array }> {
  const provider = new MemoryProvider();
  await createImage('base.vmdk', { provider, format: 'vmdk', size: 1 << 20, clusterSize: 16384 });
  const b = await openImage('base.vmdk', { provider });
  await b.write(0, fill(40960, 7));
  await b.close();
  await createImage('top.vmdk', { provider, format: 'vmdk', backing: 'base.vmdk', clusterSize: 16384 });
  const t = await openImage('top.vmdk', { provider });
  await t.write(4096, fill(4096, 1));
  await t.write(500 << 10, fill(40960, 3));
  await t.close();
  return { provider, base: provider.stores.get('base.vmdk')!.bytes().slice(), top: provider.stores.get('top.vmdk')!.bytes().slice() };
}

describe('vmdk in memory', () => {
  it('probes KDMV and text descriptors, nothing else', async () => {
    expect(probe(new TextEncoder().encode('KDMV\x01\0\0\0'))).toBe(true);
    expect(probe(new TextEncoder().encode('# Disk DescriptorFile\nversion=1\n'))).toBe(true);
    expect(probe(new Uint8Array([0x51, 0x46, 0x49, 0xfb]))).toBe(false);
    expect(probe(new Uint8Array(512))).toBe(false);
    const { provider } = await sample();
    expect(await probeFormat(await provider.open('top.vmdk', { readOnly: true }))).toBe('vmdk');
    const desc = new MemoryStorage('d.vmdk', new TextEncoder().encode('# Disk DescriptorFile\nversion=1\nCID=1\n'));
    provider.stores.set('d.vmdk', desc);
    await expect(openImage('d.vmdk', { provider })).rejects.toMatchObject({ code: 'UNSUPPORTED' });
  });

  it('keeps CID links: parentCID is the parent CID at create, the CID changes on the first write only', async () => {
    const { provider } = await sample();
    const cids = async (n: string): Promise<[number | undefined, number | undefined]> => {
      const d = (await readHeader(await provider.open(n, { readOnly: true }))).descriptor;
      return [d?.cid, d?.parentCid];
    };
    const [bc, bp] = await cids('base.vmdk');
    const [tc, tp] = await cids('top.vmdk');
    expect(bp).toBe(CID_NOPARENT);
    expect(tp).toBe(bc);
    const t = (await openImage('top.vmdk', { provider })) as VmdkDevice;
    expect(t.backing?.readOnly).toBe(true);
    await expect(t.backing!.write(0, new Uint8Array(512))).rejects.toMatchObject({ code: 'INVALID_STATE' });
    await t.read(0, 4096);
    await t.flush();
    expect((await cids('top.vmdk'))[0]).toBe(tc); // reads and flushes do not change the CID
    await t.write(0, fill(512, 9));
    const after = t.cid;
    await t.write(512, fill(512, 9));
    expect(t.cid).toBe(after);
    await t.close();
    const [tc2, tp2] = await cids('top.vmdk');
    expect(tc2).toBe(after);
    expect(tc2).not.toBe(tc);
    expect(tp2).toBe(bc);
    // Writing the parent breaks the link.
    const b = await openImage('base.vmdk', { provider });
    await b.writeZeroes(0, 512);
    await b.close();
    await expect(openImage('top.vmdk', { provider })).rejects.toMatchObject({ code: 'INTEGRITY' });
  });

  it('refuses deltas of another size or another format as parent', async () => {
    const provider = new MemoryProvider();
    await createImage('q.qcow2', { provider, size: 1 << 20 });
    await expect(createImage('x.vmdk', { provider, format: 'vmdk', backing: 'q.qcow2' })).rejects.toMatchObject({ code: 'UNSUPPORTED' });
    await createImage('b.vmdk', { provider, format: 'vmdk', size: 1 << 20 });
    await expect(createImage('y.vmdk', { provider, format: 'vmdk', backing: 'b.vmdk', size: 2 << 20 })).rejects.toMatchObject({ code: 'ARG_RANGE' });
    await expect(createImage('z.vmdk', { provider, format: 'vmdk', size: 2 ** 42 })).rejects.toMatchObject({ code: 'LIMIT' });
    await expect(createImage('z.vmdk', { provider, format: 'vmdk', size: 1 << 20, clusterSize: 3000 })).rejects.toMatchObject({ code: 'ARG_RANGE' });
  });

  it('bad headers name the field: magic, version, capacity, directories, grain size', async () => {
    const { top } = await sample();
    const h = top.slice(0, 512);
    const fileSize = top.length;
    expect(parseVmdkHeader(h, fileSize).capacity).toBe(2048);
    const bad = (edit: (b: Uint8Array) => void, size: number = fileSize): VmkitError => {
      const b = h.slice();
      edit(b);
      return errOf(() => parseVmdkHeader(b, size));
    };
    expect(bad((b) => (b[0] = 0))).toMatchObject({ code: 'CORRUPT', offset: 0 });
    expect(bad((b) => setU32(b, 4, 4))).toMatchObject({ code: 'UNSUPPORTED', offset: 4 });
    expect(bad((b) => setU32(b, 16, 0x7fffffff))).toMatchObject({ code: 'LIMIT', offset: 12 });
    expect(bad((b) => setU32(b, 12, 0xffffffff))).toMatchObject({ code: 'CORRUPT', offset: 56 }); // 2 TiB: the directory runs past the end
    expect(bad((b) => setU32(b, 16, 0x100))).toMatchObject({ code: 'LIMIT', offset: 12 }); // 512 TiB of 16 KiB grains: a 256 MiB directory
    expect(bad((b) => setU32(b, 20, 100))).toMatchObject({ code: 'CORRUPT', offset: 20 });
    expect(bad((b) => setU32(b, 56, 1 << 30))).toMatchObject({ code: 'CORRUPT', offset: 56 });
    expect(bad((b) => setU32(b, 48, 1 << 30))).toMatchObject({ code: 'CORRUPT', offset: 48 });
    expect(bad((b) => (b[75] = 0x0a))).toMatchObject({ code: 'CORRUPT', offset: 73 });
    expect(bad((b) => setU32(b, 8, u32(b, 8) | 0x10000))).toMatchObject({ code: 'UNSUPPORTED', offset: 8 });
    expect(bad(() => {}, 4096)).toMatchObject({ code: 'CORRUPT' });
  });

  it('entries past the end of the file or over the header fail reads with the entry offset, and check reports them', async () => {
    const { provider, top } = await sample();
    const h = parseVmdkHeader(top.subarray(0, 512), top.length);
    const gtSec = u32(top, h.gdOffset * 512);
    const gt = gtSec * 512;
    const rgt = u32(top, h.rgdOffset * 512) * 512;
    // Entry 0 of grain table 0 maps guest 0..16K (the 4 KiB write at 4096).
    expect(u32(top, gt)).toBeGreaterThan(0);
    const put = async (b: Uint8Array): Promise<void> => {
      provider.stores.set('bad.vmdk', new MemoryStorage('bad.vmdk', b));
    };
    const past = top.slice();
    setU32(past, gt, 1 << 20);
    await put(past);
    const d = await openImage('bad.vmdk', { provider, noBacking: true, readOnly: true });
    await expect(d.read(0, 512)).rejects.toMatchObject({ code: 'CORRUPT', offset: gt });
    await d.close();
    let r = await checkImage('bad.vmdk', { provider });
    expect(r.corruptions).toBeGreaterThanOrEqual(1);
    expect(r.messages.some((m) => /past the end/.test(m.message) && m.offset === gt)).toBe(true);

    const dup = top.slice();
    const e0 = u32(top, gt);
    const e1 = u32(top, gt + 4 * 31); // the 40 KiB write at 500 KiB starts in grain 31
    expect(e1).toBeGreaterThan(0);
    setU32(dup, gt + 4 * 31, e0);
    setU32(dup, rgt + 4 * 31, e0);
    await put(dup);
    r = await checkImage('bad.vmdk', { provider });
    expect(r.messages.some((m) => /used twice/.test(m.message))).toBe(true);

    const overlap = top.slice();
    setU32(overlap, gt, gtSec); // a grain over its own grain table
    setU32(overlap, rgt, gtSec);
    await put(overlap);
    r = await checkImage('bad.vmdk', { provider });
    expect(r.messages.some((m) => /overlaps the grain table/.test(m.message))).toBe(true);

    const mismatch = top.slice();
    setU32(mismatch, rgt, 0);
    await put(mismatch);
    r = await checkImage('bad.vmdk', { provider });
    expect(r.corruptions).toBe(1);
    expect(r.messages[0]!.message).toMatch(/redundant copy/);

    const gdPast = top.slice();
    setU32(gdPast, h.gdOffset * 512, 1 << 24);
    await put(gdPast);
    const g = await openImage('bad.vmdk', { provider, noBacking: true, readOnly: true });
    await expect(g.read(0, 512)).rejects.toMatchObject({ code: 'CORRUPT', offset: h.gdOffset * 512 });
    await g.close();

    expect((await checkImage('top.vmdk', { provider })).corruptions).toBe(0);
  });

  it('the header parser accepts or refuses with a VmkitError (fuzz)', () => {
    const good: VmdkHeader = {
      version: 1, flags: 3, capacity: 2 ** 31, grainSize: 128, descriptorOffset: 1, descriptorSize: 20, numGTEsPerGT: 512,
      rgdOffset: 21, gdOffset: 300, overHead: 640, uncleanShutdown: 0, compressAlgorithm: 0,
    };
    const enc = encodeVmdkHeader(good);
    expect(parseVmdkHeader(enc, 1 << 30)).toEqual(good);
    expect(geometry(good).gdEntries).toBe(2 ** 31 / 128 / 512);
    fc.assert(
      fc.property(fc.array(fc.record({ at: fc.nat(511), v: fc.nat(255) }), { minLength: 1, maxLength: 8 }), fc.nat(2 ** 40), (muts, fileSize) => {
        const b = enc.slice();
        for (const m of muts) b[m.at] = m.v;
        try {
          const h = parseVmdkHeader(b, fileSize);
          const g = geometry(h);
          expect(g.gdBytes).toBeLessThanOrEqual(32 << 20);
          expect(h.gdOffset * 512 + g.gdEntries * 4).toBeLessThanOrEqual(fileSize);
        } catch (e) {
          if (!(e instanceof VmkitError) || !CODES.has(e.code) || e.offset === undefined) throw e;
        }
      }),
      { numRuns: 2000 },
    );
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 600 }), (b) => {
        try {
          parseVmdkHeader(b, 1 << 20);
        } catch (e) {
          if (!(e instanceof VmkitError)) throw e;
        }
      }),
    );
  });

  it('the descriptor parser accepts or refuses with CORRUPT and an offset (fuzz)', () => {
    const text = encodeDescriptor({ cid: 0xdeadbeef, parentCid: 0x1234, createType: 'monolithicSparse', parentFileNameHint: 'base.vmdk', sectors: 2048, extentFile: 't.vmdk' });
    const d = parseDescriptor(text + '\0\0\0', 512);
    expect([d.cid, d.parentCid, d.createType, d.parentFileNameHint, d.extents[0]]).toEqual([0xdeadbeef, 0x1234, 'monolithicSparse', 'base.vmdk', { access: 'RW', sectors: 2048, type: 'SPARSE', file: 't.vmdk' }]);
    expect(d.fields.get('ddb.adapterType')).toBe('ide');
    expect(errOf(() => parseDescriptor('# x\nCID=zz\n', 512))).toMatchObject({ code: 'CORRUPT', offset: 516 });
    expect(errOf(() => parseDescriptor('version=1\n\x01garbage\n', 512))).toMatchObject({ code: 'CORRUPT', offset: 522 });
    expect(errOf(() => parseDescriptor('version=1\nparentCID=ffffffff\n'))).toMatchObject({ code: 'CORRUPT' });
    const lines = text.split('\n');
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string({ maxLength: 300 }),
          fc.tuple(fc.nat(lines.length - 1), fc.string({ maxLength: 40 })).map(([i, s]) => lines.map((l, k) => (k === i ? s : l)).join('\n')),
          fc.tuple(fc.nat(text.length - 1), fc.string({ minLength: 1, maxLength: 3 })).map(([i, s]) => text.slice(0, i) + s + text.slice(i + s.length)),
        ),
        (t) => {
          try {
            const r = parseDescriptor(t, 512);
            if (r.cid !== undefined) expect(r.cid).toBeLessThanOrEqual(0xffffffff);
          } catch (e) {
            if (!(e instanceof VmkitError) || e.code !== 'CORRUPT' || e.offset === undefined || Number(e.offset) < 512) throw e;
          }
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('a corrupted image opens, reads, maps and checks with VmkitErrors only (fuzz)', async () => {
    const { base, top } = await sample();
    const h = parseVmdkHeader(top.subarray(0, 512), top.length);
    const gt = u32(top, h.gdOffset * 512) * 512;
    // Mutations land in the header, the descriptor, both directories and the first grain table.
    const hot = fc.oneof(fc.nat(511), fc.integer({ min: 512, max: 1024 }), fc.integer({ min: h.rgdOffset * 512, max: h.rgdOffset * 512 + 15 }), fc.integer({ min: h.gdOffset * 512, max: h.gdOffset * 512 + 15 }), fc.integer({ min: gt, max: gt + 2047 }));
    await fc.assert(
      fc.asyncProperty(fc.array(fc.record({ at: hot, v: fc.nat(255) }), { minLength: 1, maxLength: 6 }), fc.boolean(), async (muts, write) => {
        const b = top.slice();
        for (const m of muts) b[m.at] = m.v;
        const provider = new MemoryProvider();
        provider.stores.set('base.vmdk', new MemoryStorage('base.vmdk', base.slice()));
        provider.stores.set('top.vmdk', new MemoryStorage('top.vmdk', b));
        await vmkitOnly(async () => {
          const dev = await openImage('top.vmdk', { provider, readOnly: !write });
          try {
            await vmkitOnly(() => dev.read(0, Math.min(dev.size, 2 << 20)));
            await vmkitOnly(() => mapExtents(dev, 0, Math.min(dev.size, 64 << 20)));
            await vmkitOnly(() => dev.info());
            if (write) await vmkitOnly(() => dev.write(0, fill(16384, 5)));
          } finally {
            await dev.close();
          }
        });
        await vmkitOnly(() => checkImage('top.vmdk', { provider }));
        expect(same(provider.stores.get('base.vmdk')!.bytes(), base)).toBe(true); // the parent is never written
      }),
      { numRuns: 150 },
    );
  });
});
