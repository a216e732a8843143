// VMDK (monolithicSparse) against QEMU's own tools: images and deltas that
// qemu-img/qemu-io write read back identically through vmkit (and map agrees
// with qemu-img map); images and deltas vmkit writes pass `qemu-img check`,
// `qemu-img compare` and `qemu-img info --backing-chain`; CID/parentCID links
// hold on both sides; random write sequences on twin images end identical.
import { describe, expect, it } from 'vitest';
import { tempPaths } from './_tmp.js';
import { execFileSync } from 'node:child_process';
import { rm, readFile, writeFile } from 'node:fs/promises';
import fc from 'fast-check';
import { needTool } from './_tools.js';
import { diff, mergeMap, qemuCheck, qemuIo, qemuRaw, qimg, vmkitRaw } from './_qemu-img.js';
import { openImage, createImage, checkImage } from '../bindings/disk/image.js';
import { mapExtents, toQemuMap, type QemuMapEntry } from '../bindings/disk/device.js';
import { FileStorage } from '../bindings/disk/backends/file.js';
import { create as createVmdk, readHeader, VmdkDevice } from '../bindings/disk/formats/vmdk/index.js';
import { VmkitError } from '../bindings/errors.js';

const hasQemu = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
const p = tempPaths('vmkit-vmdk-');
const qio = (file: string, ...cmds: string[]): void => qemuIo('vmdk', file, ...cmds);
const cidOf = async (file: string): Promise<{ cid: number | undefined; parentCid: number | undefined }> => {
  const s = await FileStorage.open(file, { readOnly: true });
  try {
    const { descriptor } = await readHeader(s);
    return { cid: descriptor?.cid, parentCid: descriptor?.parentCid };
  } finally {
    await s.close();
  }
};
const fill = (n: number, v: number): Uint8Array => new Uint8Array(n).fill(v);

describe.skipIf(!hasQemu)('vmdk against qemu-img / qemu-io', () => {

  it('reads what QEMU wrote exactly (base and delta), and map agrees with qemu-img map', async () => {
    qimg('create', '-q', '-f', 'vmdk', p('base.vmdk'), '4M');
    qio(p('base.vmdk'), 'write -P 0xab 0 64k', 'write -P 0x55 100k 8k', 'write -P 0x33 2M 1M', 'write -P 0x77 4190208 4096');
    const base = await vmkitRaw(p('base.vmdk'));
    expect(base[0]).toBe(0xab);
    expect(diff(base, await qemuRaw(p('base.vmdk'), 'vmdk'))).toBe(-1);
    qimg('create', '-q', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', p('delta.vmdk'));
    qio(p('delta.vmdk'), 'write -P 0x11 8k 4k', 'write -P 0x22 2M 64k', 'write -P 0x44 3M 100k');
    const top = await vmkitRaw(p('delta.vmdk'));
    expect(diff(top, await qemuRaw(p('delta.vmdk'), 'vmdk'))).toBe(-1);
    expect([top[0], top[8192], top[100 << 10], top[(2 << 20) + 65536]]).toEqual([0xab, 0x11, 0x55, 0x33]);
    const dev = await openImage(p('delta.vmdk'), { readOnly: true });
    try {
      expect(dev.format).toBe('vmdk');
      expect(dev.backingFile).toBe('base.vmdk');
      const ours = toQemuMap(await mapExtents(dev));
      const theirs = JSON.parse(qimg('map', '--output=json', p('delta.vmdk'))) as QemuMapEntry[];
      expect(mergeMap(ours)).toEqual(mergeMap(theirs));
      const info = await dev.info();
      expect(info.allocatedBytes).toBe(65536 * 4); // 8k, 2M, 3M..3M+100k (two grains)
    } finally {
      await dev.close();
    }
  });

  it('images vmkit creates and writes pass qemu-img check and compare equal to the reference', async () => {
    const size = 3 * 1024 * 1024 + 512 * 7; // not a grain multiple
    await createImage(p('mine.vmdk'), { format: 'vmdk', size });
    const ref = new Uint8Array(size);
    const dev = await openImage(p('mine.vmdk'));
    const w = async (off: number, data: Uint8Array): Promise<void> => {
      await dev.write(off, data);
      ref.set(data, off);
    };
    await w(0, fill(4096, 0xab));
    await w(65536 - 512, fill(1024, 0x5a)); // across a grain boundary
    await w(1 << 20, fill(200 << 10, 0x33));
    await w(size - 512, fill(512, 0xee)); // the partial last grain
    await w(4096, fill(4096, 0)); // zeroes into an allocated grain
    await dev.writeZeroes(2 << 20, 65536); // unallocated, no parent: stays unallocated
    await dev.close();
    await writeFile(p('mine.raw'), ref);
    expect(qemuCheck(p('mine.vmdk'))).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
    qimg('compare', '-q', '-f', 'vmdk', '-F', 'raw', p('mine.vmdk'), p('mine.raw'));
    expect(diff(await vmkitRaw(p('mine.vmdk')), ref)).toBe(-1);
    expect((await checkImage(p('mine.vmdk'))).corruptions).toBe(0);
    const info = JSON.parse(qimg('info', '--output=json', p('mine.vmdk'))) as { format: string; 'virtual-size': number; 'format-specific'?: { data?: { 'create-type'?: string } } };
    expect([info.format, info['virtual-size'], info['format-specific']?.data?.['create-type']]).toEqual(['vmdk', size, 'monolithicSparse']);
  });

  it('QEMU creates deltas on vmkit bases and vmkit deltas on QEMU bases; CID links hold on both sides', async () => {
    // vmkit base, QEMU delta
    await createImage(p('vb.vmdk'), { format: 'vmdk', size: 2 << 20 });
    const b = await openImage(p('vb.vmdk'));
    await b.write(0, fill(131072, 0x61));
    await b.close();
    qimg('create', '-q', '-f', 'vmdk', '-b', 'vb.vmdk', '-F', 'vmdk', p('qd.vmdk'));
    const [vb, qd] = [await cidOf(p('vb.vmdk')), await cidOf(p('qd.vmdk'))];
    expect(qd.parentCid).toBe(vb.cid);
    qio(p('qd.vmdk'), 'write -P 0x62 4k 4k');
    expect(diff(await vmkitRaw(p('qd.vmdk')), await qemuRaw(p('qd.vmdk'), 'vmdk'))).toBe(-1);

    // QEMU base, vmkit delta
    qimg('create', '-q', '-f', 'vmdk', p('qb.vmdk'), '2M');
    qio(p('qb.vmdk'), 'write -P 0x71 0 1M');
    await createImage(p('vd.vmdk'), { format: 'vmdk', backing: 'qb.vmdk' });
    const [qb, vd0] = [await cidOf(p('qb.vmdk')), await cidOf(p('vd.vmdk'))];
    expect(vd0.parentCid).toBe(qb.cid);
    const d = await openImage(p('vd.vmdk'));
    expect(d.backing?.readOnly).toBe(true);
    await d.write(512, fill(512, 0x72)); // a partial grain: the rest comes from the parent
    await d.write(1536 << 10, fill(4096, 0x73));
    await d.close();
    const vd1 = await cidOf(p('vd.vmdk'));
    expect(vd1.cid).not.toBe(vd0.cid); // the first write changed the content ID
    expect(vd1.parentCid).toBe(qb.cid);
    expect((await cidOf(p('qb.vmdk'))).cid).toBe(qb.cid); // the parent was never written
    const chain = JSON.parse(qimg('info', '--output=json', '--backing-chain', p('vd.vmdk'))) as { filename: string; format: string; 'backing-filename'?: string }[];
    expect(chain.map((c) => [c.format, c['backing-filename'] ?? null])).toEqual([['vmdk', 'qb.vmdk'], ['vmdk', null]]);
    expect(qemuCheck(p('vd.vmdk'))).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
    const ours = await vmkitRaw(p('vd.vmdk'));
    expect([ours[0], ours[512], ours[1024], ours[1536 << 10], ours[2 << 19]]).toEqual([0x71, 0x72, 0x71, 0x73, 0]);
    await writeFile(p('vd.raw'), ours);
    qimg('compare', '-q', '-f', 'vmdk', '-F', 'raw', p('vd.vmdk'), p('vd.raw'));
    const theirs = JSON.parse(qimg('map', '--output=json', p('vd.vmdk'))) as QemuMapEntry[];
    const dev = await openImage(p('vd.vmdk'), { readOnly: true });
    expect(mergeMap(toQemuMap(await mapExtents(dev)))).toEqual(mergeMap(theirs));
    await dev.close();
  });

  it('a delta whose parent changed is refused, by vmkit as by QEMU', async () => {
    await createImage(p('pb.vmdk'), { format: 'vmdk', size: 1 << 20 });
    await createImage(p('pd.vmdk'), { format: 'vmdk', backing: 'pb.vmdk' });
    const b = await openImage(p('pb.vmdk'));
    await b.write(0, fill(512, 1)); // new CID in the parent
    await b.close();
    await expect(openImage(p('pd.vmdk'), { readOnly: true })).rejects.toMatchObject({ code: 'INTEGRITY' });
    expect(() => qimg('convert', '-f', 'vmdk', '-O', 'raw', p('pd.vmdk'), p('pd.raw'))).toThrow();
    // The delta alone still opens (info, check).
    const only = await openImage(p('pd.vmdk'), { readOnly: true, noBacking: true });
    expect((await only.info()).backingFile).toBe('pb.vmdk');
    await only.close();
  });

  it('zeroed grains (version 2): QEMU writes them and vmkit reads them, and vice versa', async () => {
    qimg('create', '-q', '-f', 'vmdk', p('zb.vmdk'), '1M');
    qio(p('zb.vmdk'), 'write -P 0x5c 0 1M');
    qimg('create', '-q', '-f', 'vmdk', '-o', 'zeroed_grain=on', '-b', 'zb.vmdk', '-F', 'vmdk', p('zd.vmdk'));
    qio(p('zd.vmdk'), 'write -z 0 64k', 'write -z 128k 128k', 'write -P 0x5d 512k 4k');
    const theirs = await qemuRaw(p('zd.vmdk'), 'vmdk');
    expect(diff(await vmkitRaw(p('zd.vmdk')), theirs)).toBe(-1);
    const dev = await openImage(p('zd.vmdk'), { readOnly: true });
    const m = await mapExtents(dev, 0, 65536);
    expect(m).toEqual([{ offset: 0, length: 65536, kind: 'zero', depth: 0 }]);
    await dev.close();
    // vmkit's own zeroed-grain delta.
    const s = await FileStorage.create(p('vz.vmdk'));
    const parent = (await openImage(p('zb.vmdk'), { readOnly: true })) as VmdkDevice;
    await createVmdk(s, { size: 1 << 20, backing: 'zb.vmdk', backingDevice: parent, zeroedGrain: true });
    await s.close();
    await parent.close();
    const v = await openImage(p('vz.vmdk'));
    await v.writeZeroes(65536, 131072);
    await v.write(0, fill(512, 9));
    await v.close();
    const ours = await vmkitRaw(p('vz.vmdk'));
    expect(diff(await qemuRaw(p('vz.vmdk'), 'vmdk'), ours)).toBe(-1);
    expect([ours[0], ours[512], ours[65536], ours[196607], ours[196608]]).toEqual([9, 0x5c, 0, 0, 0x5c]);
    expect(qemuCheck(p('vz.vmdk')).corruptions).toBe(0);
    const fileSize = (await readFile(p('vz.vmdk'))).length;
    // Two zeroed grains cost no space: one grain was allocated (for the 512-byte write).
    expect((await cidOf(p('vz.vmdk'))).parentCid).toBe((await cidOf(p('zb.vmdk'))).cid);
    const vi = await openImage(p('vz.vmdk'), { readOnly: true, noBacking: true });
    expect((await vi.info()).allocatedBytes).toBe(65536);
    expect(fileSize).toBeLessThan(4 * 65536 + 65536 * 2);
    await vi.close();
  });

  it('random write sequences through vmkit and qemu-io on twin deltas end identical', async () => {
    qimg('create', '-q', '-f', 'vmdk', p('tb.vmdk'), '1M');
    qio(p('tb.vmdk'), 'write -P 0x10 0 1M');
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ sector: fc.nat(2047), n: fc.integer({ min: 1, max: 300 }), v: fc.nat(255), zero: fc.boolean() }), { minLength: 1, maxLength: 12 }),
        async (ops) => {
          run++;
          const a = p(`ta${run}.vmdk`);
          const q = p(`tq${run}.vmdk`);
          qimg('create', '-q', '-f', 'vmdk', '-b', 'tb.vmdk', '-F', 'vmdk', q);
          await createImage(a, { format: 'vmdk', backing: 'tb.vmdk' });
          const dev = await openImage(a);
          const cmds: string[] = [];
          for (const o of ops) {
            const n = Math.min(o.n, 2048 - o.sector);
            if (o.zero) {
              await dev.writeZeroes(o.sector * 512, n * 512);
              cmds.push(`write -z ${o.sector * 512} ${n * 512}`);
            } else {
              await dev.write(o.sector * 512, fill(n * 512, o.v));
              cmds.push(`write -P ${o.v} ${o.sector * 512} ${n * 512}`);
            }
          }
          await dev.close();
          qio(q, ...cmds);
          expect(qemuCheck(a).corruptions).toBe(0);
          const [x, y] = [await qemuRaw(a, 'vmdk'), await qemuRaw(q, 'vmdk')];
          expect(diff(x, y)).toBe(-1);
          expect(diff(await vmkitRaw(q), y)).toBe(-1);
          await rm(a);
          await rm(q);
        },
      ),
      { numRuns: 8 },
    );
  });

  it('allocates missing grain tables (directory entry 0) in both directories, readable by QEMU', async () => {
    // 64 MiB of 64 KiB grains: two grain tables. Drop the second from both directories.
    await createImage(p('gt.vmdk'), { format: 'vmdk', size: 64 << 20 });
    const s = await FileStorage.open(p('gt.vmdk'));
    const { header: h } = await readHeader(s);
    await s.write(h.gdOffset * 512 + 4, new Uint8Array(4));
    await s.write(h.rgdOffset * 512 + 4, new Uint8Array(4));
    await s.close();
    const ref = new Uint8Array(64 << 20);
    const dev = await openImage(p('gt.vmdk'));
    expect((await mapExtents(dev)).map((e) => [e.offset, e.kind])).toEqual([[0, 'unallocated']]);
    for (const [off, len, v] of [[40 << 20, 4096, 0x31], [33 << 20, 65536 + 512, 0x32], [1 << 20, 512, 0x33]] as const) {
      await dev.write(off, fill(len, v));
      ref.fill(v, off, off + len);
    }
    await dev.close();
    await writeFile(p('gt.raw'), ref);
    expect(qemuCheck(p('gt.vmdk'))).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
    qimg('compare', '-q', '-f', 'vmdk', '-F', 'raw', p('gt.vmdk'), p('gt.raw'));
    const r = await checkImage(p('gt.vmdk'));
    expect([r.corruptions, r.allocatedClusters]).toEqual([0, 4]);
    const s2 = await FileStorage.open(p('gt.vmdk'), { readOnly: true });
    const b = new Uint8Array(8);
    await s2.readInto(h.gdOffset * 512 + 4, b.subarray(0, 4));
    await s2.readInto(h.rgdOffset * 512 + 4, b.subarray(4, 8));
    await s2.close();
    const dv = new DataView(b.buffer);
    expect(dv.getUint32(0, true)).toBeGreaterThan(h.overHead); // new tables at the end of the file
    expect(dv.getUint32(4, true)).toBeGreaterThan(h.overHead);
    expect(dv.getUint32(4, true)).not.toBe(dv.getUint32(0, true));
  });

  it('refuses parent loops and opens a 1 TiB disk', async () => {
    // A → B → A, by editing the parent hints of two deltas.
    await createImage(p('la.vmdk'), { format: 'vmdk', size: 1 << 20 });
    await createImage(p('lb.vmdk'), { format: 'vmdk', backing: 'la.vmdk' });
    await createImage(p('lc.vmdk'), { format: 'vmdk', backing: 'lb.vmdk' });
    const bytes = new Uint8Array(await readFile(p('lb.vmdk')));
    const text = new TextDecoder().decode(bytes.subarray(512, 512 * 21));
    const fixed = text.replace('parentFileNameHint="la.vmdk"', 'parentFileNameHint="lc.vmdk"');
    bytes.set(new TextEncoder().encode(fixed), 512);
    await writeFile(p('lb.vmdk'), bytes);
    const err = await openImage(p('lc.vmdk'), { readOnly: true }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VmkitError);
    expect((err as VmkitError).code).toBe('LIMIT');

    await createImage(p('big.vmdk'), { format: 'vmdk', size: 2 ** 40 });
    const big = await openImage(p('big.vmdk'));
    await big.write(2 ** 40 - 65536, fill(65536, 0xcd));
    expect((await big.read(2 ** 40 - 512, 512))[0]).toBe(0xcd);
    const m = await mapExtents(big);
    expect(m.map((e) => e.kind)).toEqual(['unallocated', 'data']);
    await big.close();
    expect(qimg('info', p('big.vmdk'))).toMatch(/virtual size: 1 TiB/);
  });
});
