// VHD (QEMU's vpc) against qemu-img / qemu-io: fixed and dynamic images QEMU
// writes read back equal to `qemu-img convert -O raw`, maps agree with
// `qemu-img map`; images vmkit writes compare equal to a raw copy with the
// same writes (`qemu-img compare`; qemu-img has no check for vpc) and QEMU
// reads their geometry and size as vmkit wrote them; differencing disks
// (which QEMU cannot open as such) read through their parent; a fixed VHD is
// probed by its footer, a raw image is not taken for one.
import { describe, expect, it } from 'vitest';
import { tempPaths } from './_tmp.js';
import { writeFile, readFile } from 'node:fs/promises';
import fc from 'fast-check';
import { needTool } from './_tools.js';
import { diff, mergeMap, qemuIo, qemuRaw, qimg, vmkitRaw } from './_qemu-img.js';
import { openImage, createImage, checkImage, probeFormat } from '../bindings/disk/image.js';
import { mapExtents, toQemuMap, type QemuMapEntry } from '../bindings/disk/device.js';
import { FileStorage } from '../bindings/disk/backends/file.js';
import { create as createVhd, readHeaders, type VhdCreateOptions } from '../bindings/disk/formats/vhd/index.js';
import { chsGeometry, roundedSize } from '../bindings/disk/formats/vhd/header.js';
import { VmkitError } from '../bindings/errors.js';

const hasQemu = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
const p = tempPaths('vmkit-vhd-');
const fill = (n: number, v: number): Uint8Array => new Uint8Array(n).fill(v);
const qinfo = (f: string): { format: string; 'virtual-size': number } => JSON.parse(qimg('info', '--output=json', '-f', 'vpc', f)) as { format: string; 'virtual-size': number };

describe.skipIf(!hasQemu)('vhd against qemu-img / qemu-io', () => {

  it('reads dynamic and fixed images QEMU wrote exactly; sizes follow the CHS rounding; map agrees', async () => {
    for (const [name, opts, size] of [
      ['dyn.vhd', [], '10M'],
      ['fixed.vhd', ['-o', 'subformat=fixed'], '10M'],
      ['big.vhd', [], '300M'],
      ['exact.vhd', ['-o', 'force_size=on'], '10M'],
      ['exactfixed.vhd', ['-o', 'subformat=fixed,force_size=on'], '5000k'],
    ] as const) {
      qimg('create', '-q', '-f', 'vpc', ...opts, p(name), size);
      const vs = qinfo(p(name))['virtual-size'];
      qemuIo('vpc', p(name), 'write -P 0xab 0 64k', 'write -P 0x55 100k 8k', 'write -P 0x33 2M 1M', `write -P 0x77 ${vs - 4096} 4096`);
      const ours = await vmkitRaw(p(name));
      expect(ours.length, name).toBe(vs);
      expect(ours[0]).toBe(0xab);
      expect(diff(ours, await qemuRaw(p(name), 'vpc')), name).toBe(-1);
      const dev = await openImage(p(name), { readOnly: true });
      try {
        expect(dev.format).toBe('vhd');
        if (!name.includes('fixed')) {
          const theirs = JSON.parse(qimg('map', '--output=json', '-f', 'vpc', p(name))) as QemuMapEntry[];
          expect(mergeMap(toQemuMap(await mapExtents(dev))), name).toEqual(mergeMap(theirs));
        }
      } finally {
        await dev.close();
      }
      expect((await checkImage(p(name))).corruptions, name).toBe(0);
    }
  });

  it('the CHS geometry and rounding are QEMU\'s for many sizes', async () => {
    const sizes = [1, 512 * 17 * 4, 10 << 20, 127 << 20, 1000 << 20, 4 << 30, 127 * 1024 ** 3 + 12345, 200 * 1024 ** 3];
    for (const s of sizes) {
      qimg('create', '-q', '-f', 'vpc', p('g.vhd'), String(s));
      const vs = qinfo(p('g.vhd'))['virtual-size'];
      expect(roundedSize(s, false).size, String(s)).toBe(vs);
      const st = await FileStorage.open(p('g.vhd'), { readOnly: true });
      const { footer } = await readHeaders(st);
      await st.close();
      expect([footer.cylinders, footer.heads, footer.sectorsPerCylinder], String(s)).toEqual(
        Object.values(roundedSize(s, false)).slice(1),
      );
    }
    // The geometry never holds more than asked for (it rounds down).
    fc.assert(fc.property(fc.integer({ min: 1, max: 65535 * 16 * 255 }), (n) => {
      const g = chsGeometry(n);
      return g.cylinders * g.heads * g.sectorsPerCylinder <= n;
    }), { numRuns: 2000 });
  });

  it('images vmkit creates and writes compare equal to a raw copy with the same writes (dynamic and fixed)', async () => {
    for (const sub of ['dynamic', 'fixed'] as const) {
      const name = `mine-${sub}.vhd`;
      const size = 5 * 1024 * 1024 + 512 * 7; // no exact CHS geometry: recorded exactly (qem2)
      const st = await FileStorage.create(p(name));
      await createVhd(st, { size, subformat: sub } as VhdCreateOptions);
      await st.close();
      expect(qinfo(p(name))['virtual-size']).toBe(size);
      const ref = new Uint8Array(size);
      const dev = await openImage(p(name));
      const rnd = fc.sample(fc.record({ at: fc.nat(size / 512 - 1), n: fc.integer({ min: 1, max: 700 }), v: fc.nat(255) }), { numRuns: 40, seed: 21 });
      for (const w of rnd) {
        const n = Math.min(w.n, size / 512 - w.at) * 512;
        const d = fill(n, w.v);
        await dev.write(w.at * 512, d);
        ref.set(d, w.at * 512);
      }
      await dev.write((2 << 20) - 1024, fill(2048, 0x5a)); // across a block boundary
      ref.set(fill(2048, 0x5a), (2 << 20) - 1024);
      await dev.writeZeroes(4 << 20, 65536);
      ref.fill(0, 4 << 20, (4 << 20) + 65536);
      await dev.close();
      await writeFile(p('mine.raw'), ref);
      qimg('compare', '-q', '-f', 'vpc', '-F', 'raw', p(name), p('mine.raw'));
      expect(diff(await vmkitRaw(p(name)), ref)).toBe(-1);
      expect(diff(await qemuRaw(p(name), 'vpc'), ref)).toBe(-1);
      expect((await checkImage(p(name))).corruptions).toBe(0);
      expect(await probeFormat(await FileStorage.open(p(name), { readOnly: true }))).toBe('vhd');
    }
    // A CHS-exact size keeps QEMU's creator and geometry.
    await createImage(p('chs.vhd'), { format: 'vhd', size: roundedSize(10 << 20, false).size });
    expect(qinfo(p('chs.vhd'))['virtual-size']).toBe(roundedSize(10 << 20, false).size);
  });

  it('vmkit writes into images QEMU made, and QEMU into images vmkit made, both read the same', async () => {
    qimg('create', '-q', '-f', 'vpc', p('q.vhd'), '20M');
    qemuIo('vpc', p('q.vhd'), 'write -P 0x21 1M 3M');
    const d = await openImage(p('q.vhd'));
    await d.write(3 << 20, fill(2 << 20, 0x22)); // into QEMU's block and a new one
    await d.write(10 << 20, fill(4096, 0x23));
    await d.close();
    expect(diff(await vmkitRaw(p('q.vhd')), await qemuRaw(p('q.vhd'), 'vpc'))).toBe(-1);
    qemuIo('vpc', p('q.vhd'), 'write -P 0x24 12M 2M', 'write -P 0x25 0 512');
    expect(diff(await vmkitRaw(p('q.vhd')), await qemuRaw(p('q.vhd'), 'vpc'))).toBe(-1);
    expect((await checkImage(p('q.vhd'))).corruptions).toBe(0);
  });

  it('differencing disks read through their parent by the W2ru locator; a changed parent is refused', async () => {
    qimg('create', '-q', '-f', 'vpc', '-o', 'force_size=on', p('base.vhd'), '8M');
    qemuIo('vpc', p('base.vhd'), 'write -P 0x61 0 3M', 'write -P 0x62 6M 1M');
    const ref = await qemuRaw(p('base.vhd'), 'vpc');
    await createImage(p('child.vhd'), { format: 'vhd', backing: 'base.vhd' });
    const c = await openImage(p('child.vhd'));
    expect(c.backingFile).toBe('base.vhd');
    const put = async (off: number, data: Uint8Array): Promise<void> => {
      await c.write(off, data);
      ref.set(data, off);
    };
    await put(512, fill(1024, 0x71)); // a few sectors: the rest of the block stays the parent's
    await put((2 << 20) - 512, fill(4096, 0x72));
    await put(5 << 20, fill(512, 0)); // zeroes over a zero parent range still allocate
    await c.writeZeroes(6 << 20, 4096); // and hide the parent's data
    ref.fill(0, 6 << 20, (6 << 20) + 4096);
    const m = toQemuMap(await mapExtents(c));
    expect(m.some((e) => e.depth === 1 && e.data)).toBe(true);
    await c.close();
    expect(diff(await vmkitRaw(p('child.vhd')), ref)).toBe(-1);
    expect((await checkImage(p('child.vhd'))).corruptions).toBe(0);
    // QEMU has no differencing support: it reads the child as a dynamic disk (its own blocks only).
    expect(qinfo(p('child.vhd')).format).toBe('vpc');
    // The parent was not written; writing it now (a new UUID by re-creating) breaks the link.
    qimg('create', '-q', '-f', 'vpc', '-o', 'force_size=on', p('base.vhd'), '8M');
    await expect(openImage(p('child.vhd'), { readOnly: true })).rejects.toMatchObject({ code: 'INTEGRITY' });
  });

  it('probing: a fixed VHD by its footer, a raw file ending in a foreign footer stays raw, refusals name offsets', async () => {
    qimg('create', '-q', '-f', 'vpc', '-o', 'subformat=fixed', p('pf.vhd'), '1M');
    expect(await probeFormat(await FileStorage.open(p('pf.vhd'), { readOnly: true }))).toBe('vhd');
    // A raw image whose last sector is a VHD footer describing another size is raw.
    const f = new Uint8Array(await readFile(p('pf.vhd')));
    const raw = new Uint8Array(f.length + 4096);
    raw.set(f.subarray(f.length - 512), raw.length - 512);
    await writeFile(p('raw.img'), raw);
    expect(await probeFormat(await FileStorage.open(p('raw.img'), { readOnly: true }))).toBe('raw');
    // A damaged footer checksum is refused with its offset.
    qimg('create', '-q', '-f', 'vpc', p('bad.vhd'), '1M');
    const b = new Uint8Array(await readFile(p('bad.vhd')));
    b[40]! ^= 1;
    await writeFile(p('bad.vhd'), b);
    const e = await openImage(p('bad.vhd'), { format: 'vhd' }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(VmkitError);
    expect((e as VmkitError).offset).toBe(64);
  });
});
