// VMDK descriptor files with separate extents against qemu-img / qemu-io:
// monolithicFlat, twoGbMaxExtentFlat and twoGbMaxExtentSparse images QEMU
// made and wrote (across the 2 GiB extent boundary) read back as QEMU reads
// them; an ESXi-style vmfs descriptor over a flat file; a Workstation-style
// delta over a split disk reads through its parent; ESXi delta kinds and
// writes are refused by name.
import { describe, expect, it } from 'vitest';
import { tempPaths } from './_tmp.js';
import { rm, writeFile, readFile } from 'node:fs/promises';
import { openSync, readSync, closeSync } from 'node:fs';
import { needTool } from './_tools.js';
import { diff, qemuIo, qemuRaw, qimg, vmkitRaw } from './_qemu-img.js';
import { openImage } from '../bindings/disk/image.js';
import { mapExtents } from '../bindings/disk/device.js';

const hasQemu = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
const p = tempPaths('vmkit-vmdkx-');

/** Bytes [off, off+len) of a raw file. */
function slice(file: string, off: number, len: number): Uint8Array {
  const fd = openSync(file, 'r');
  try {
    const b = new Uint8Array(len);
    readSync(fd, b, 0, len, off);
    return b;
  } finally {
    closeSync(fd);
  }
}

describe.skipIf(!hasQemu)('vmdk with separate extents', () => {

  it('monolithicFlat and a hand-written vmfs descriptor read as QEMU reads them', async () => {
    qimg('create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', p('f.vmdk'), '10M');
    qemuIo('vmdk', p('f.vmdk'), 'write -P 0xab 0 64k', 'write -P 0x33 5M 1M', 'write -P 0x77 10481664 4096');
    const ours = await vmkitRaw(p('f.vmdk'));
    expect(diff(ours, await qemuRaw(p('f.vmdk'), 'vmdk'))).toBe(-1);
    expect(ours[5 << 20]).toBe(0x33);
    // ESXi: createType "vmfs", extent type VMFS, the flat file beside it (here 1 MiB into a bigger file).
    const flat = new Uint8Array(12 << 20);
    flat.set(new Uint8Array(await readFile(p('f-flat.vmdk'))), 1 << 20);
    await writeFile(p('esx-flat.vmdk'), flat);
    await writeFile(p('esx.vmdk'), `# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="vmfs"\n\n# Extent description\nRW 20480 VMFS "esx-flat.vmdk" 2048\n\n# The Disk Data Base\n#DDB\nddb.adapterType = "lsilogic"\n`);
    expect(diff(await vmkitRaw(p('esx.vmdk')), ours)).toBe(-1);
    const dev = await openImage(p('esx.vmdk'));
    expect([dev.format, dev.readOnly, (await dev.info()).specific?.createType]).toEqual(['vmdk', true, 'vmfs']);
    await expect(dev.write(0, new Uint8Array(512))).rejects.toMatchObject({ code: 'UNSUPPORTED' });
    await dev.close();
  });

  it('twoGbMaxExtentSparse and twoGbMaxExtentFlat: writes across the extent boundary read back as QEMU reads them', async () => {
    const two = 2 ** 31;
    for (const sub of ['twoGbMaxExtentSparse', 'twoGbMaxExtentFlat']) {
      const f = p(`${sub}.vmdk`);
      qimg('create', '-q', '-f', 'vmdk', '-o', `subformat=${sub}`, f, '2100M');
      qemuIo('vmdk', f, 'write -P 0xab 0 64k', `write -P 0x5a ${two - 65536} 131072`, `write -P 0x77 ${2100 * 1048576 - 4096} 4096`);
      const out = p(`${sub}.raw`);
      qimg('convert', '-f', 'vmdk', '-O', 'raw', f, out);
      const dev = await openImage(f, { readOnly: true });
      try {
        expect(dev.size).toBe(2100 * 1048576);
        for (const at of [0, two - (1 << 20), two, dev.size - (1 << 20)]) {
          expect(diff(await dev.read(at, 1 << 20), slice(out, at, 1 << 20)), `${sub} at ${at}`).toBe(-1);
        }
        if (sub === 'twoGbMaxExtentSparse') {
          const m = await mapExtents(dev);
          const data = m.filter((e) => e.kind === 'data').map((e) => [e.offset, e.length]);
          expect(data).toEqual([[0, 65536], [two - 65536, 131072], [2100 * 1048576 - 65536, 65536]]);
        }
      } finally {
        await dev.close();
      }
      await rm(out);
    }
  });

  it('a delta over a split sparse disk reads through it; ESXi delta extents are refused by name', async () => {
    qimg('create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', p('base.vmdk'), '64M');
    qemuIo('vmdk', p('base.vmdk'), 'write -P 0x61 0 4M', 'write -P 0x62 60M 4M');
    qimg('create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', '-b', 'base.vmdk', '-F', 'vmdk', p('delta.vmdk'));
    qemuIo('vmdk', p('delta.vmdk'), 'write -P 0x71 1M 4096', 'write -P 0x72 62M 1M');
    const ours = await vmkitRaw(p('delta.vmdk'));
    expect(diff(ours, await qemuRaw(p('delta.vmdk'), 'vmdk'))).toBe(-1);
    expect([ours[0], ours[1 << 20], ours[(62 << 20) + 5], ours[(60 << 20) + 5]]).toEqual([0x61, 0x71, 0x72, 0x62]);
    const dev = await openImage(p('delta.vmdk'), { readOnly: true });
    expect(dev.backingFile).toBe('base.vmdk');
    expect((await mapExtents(dev)).some((e) => e.depth === 1 && e.kind === 'data')).toBe(true);
    await dev.close();
    const text = `# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=fffffffe\ncreateType="vmfsSparse"\nparentFileNameHint="esx.vmdk"\n\n# Extent description\nRW 20480 VMFSSPARSE "x-delta.vmdk"\n`;
    await writeFile(p('x.vmdk'), text);
    await expect(openImage(p('x.vmdk'))).rejects.toMatchObject({ code: 'UNSUPPORTED', offset: text.indexOf('RW 20480') });
    // A flat extent naming a file outside the descriptor's folder is not read as guest data.
    for (const name of ['/etc/passwd', '../x-flat.vmdk', 'sub/../../y']) {
      const t = `# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n# Extent description\nRW 8 FLAT "${name}" 0\n`;
      await writeFile(p('evil.vmdk'), t);
      await expect(openImage(p('evil.vmdk'), { readOnly: true })).rejects.toMatchObject({ code: 'UNSUPPORTED', offset: t.indexOf('RW 8') });
    }
  });
});

describe('vmdk descriptor files under corrupted input', () => {
  it('damaged descriptors and extent files fail only with VmkitError', async () => {
    const fc = (await import('fast-check')).default;
    const { MemoryProvider, MemoryStorage } = await import('../bindings/disk/backends/memory.js');
    const { createImage } = await import('../bindings/disk/image.js');
    const { VmkitError } = await import('../bindings/errors.js');
    const provider = new MemoryProvider();
    await createImage('s1.vmdk', { provider, format: 'vmdk', size: 1 << 20 });
    const s = await openImage('s1.vmdk', { provider });
    await s.write(0, new Uint8Array(8192).fill(3));
    await s.close();
    provider.stores.set('flat.img', new MemoryStorage('flat.img', new Uint8Array(1 << 20).fill(4)));
    const text = new TextEncoder().encode(`# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="twoGbMaxExtentSparse"\n\n# Extent description\nRW 2048 SPARSE "s1.vmdk"\nRW 1024 FLAT "flat.img" 1024\nRW 64 ZERO\n`);
    provider.stores.set('d.vmdk', new MemoryStorage('d.vmdk', text.slice()));
    const good = await openImage('d.vmdk', { provider, readOnly: true });
    const all = await good.read(0, good.size);
    expect([good.size, all[0], all[(1 << 20) + 5], all[all.length - 1]]).toEqual([(2048 + 1024 + 64) * 512, 3, 4, 0]);
    await good.close();
    const codes = new Set(['CORRUPT', 'LIMIT', 'UNSUPPORTED', 'INTEGRITY', 'NOT_FOUND', 'ARG_RANGE']);
    await fc.assert(
      fc.asyncProperty(fc.array(fc.record({ at: fc.nat(text.length - 1), v: fc.integer({ min: 32, max: 126 }) }), { minLength: 1, maxLength: 4 }), async (muts) => {
        const b = text.slice();
        for (const m of muts) b[m.at] = m.v;
        provider.stores.set('bad.vmdk', new MemoryStorage('bad.vmdk', b));
        try {
          const dev = await openImage('bad.vmdk', { provider, readOnly: true });
          try {
            await dev.read(0, Math.min(dev.size, 1 << 20));
            await mapExtents(dev);
          } finally {
            await dev.close();
          }
        } catch (e) {
          if (!(e instanceof VmkitError) || !codes.has(e.code)) throw e;
        }
      }),
      { numRuns: 300 },
    );
  });
});
