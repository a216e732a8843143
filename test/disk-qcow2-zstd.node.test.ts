// qcow2 with compression_type=zstd against qemu-img: images `qemu-img
// convert -c -o compression_type=zstd` makes read back equal to `qemu-img
// convert -O raw` (compressible, incompressible and zero clusters, several
// cluster sizes); ordinary and compressed writes into them pass qemu-img
// check; images vmkit creates with compression_type=zstd and fills with
// compressed clusters pass qemu-img check, compare equal and map compressed;
// a damaged frame is CORRUPT at its host offset.
import { describe, expect, it } from 'vitest';
import { tempPaths } from './_tmp.js';
import { writeFile, readFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { needTool } from './_tools.js';
import { diff, qemuCheck, qemuRaw, qimg, vmkitRaw } from './_qemu-img.js';
import { createImage, openImage } from '../bindings/disk/image.js';
import { mapExtents } from '../bindings/disk/device.js';
import { zstdFrameLength } from '../bindings/disk/_zstd.js';
import type { Qcow2Device } from '../bindings/disk/formats/qcow2/device.js';

const hasQemu = needTool('qemu-img', 'qemu-utils');
const p = tempPaths('vmkit-zstd-');

describe.skipIf(!hasQemu)('qcow2 zstd-compressed clusters', () => {

  it('reads what qemu-img convert -c -o compression_type=zstd makes', async () => {
    const raw = new Uint8Array(6 * 1024 * 1024 + 4096);
    raw.fill(0x41, 0, 300000);
    for (let i = 1 << 20; i < 2 << 20; i++) raw[i] = (Math.imul(i, 2654435761) >>> 24) & 0xff; // incompressible
    for (let i = 3 << 20; i < raw.length; i += 3) raw[i] = i % 251;
    await writeFile(p('src.raw'), raw);
    for (const cs of ['4k', '64k', '2M']) {
      const f = p(`z-${cs}.qcow2`);
      qimg('convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `compression_type=zstd,cluster_size=${cs}`, p('src.raw'), f);
      const ours = await vmkitRaw(f);
      expect(diff(ours, raw), cs).toBe(-1);
      expect(diff(ours, await qemuRaw(f, 'qcow2')), cs).toBe(-1);
      const dev = await openImage(f, { readOnly: true });
      expect((await mapExtents(dev)).some((e) => e.compressed)).toBe(true);
      expect((await dev.info()).specific?.compressionType).toBe('zstd');
      await dev.close();
    }
    // Ordinary writes go in uncompressed; compressed writes as zstd frames.
    const dev = (await openImage(p('z-64k.qcow2'))) as Qcow2Device;
    await dev.write(65536, new Uint8Array(4096).fill(9));
    raw.fill(9, 65536, 65536 + 4096);
    const c = new Uint8Array(65536).fill(0x5a, 0, 40000);
    await dev.writeCompressed(4 << 20, c);
    raw.set(c, 4 << 20);
    await dev.close();
    expect(qemuCheck(p('z-64k.qcow2'))).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
    expect(diff(await qemuRaw(p('z-64k.qcow2'), 'qcow2'), raw)).toBe(-1);
    expect(diff(await vmkitRaw(p('z-64k.qcow2')), raw)).toBe(-1);
  });

  it('writes zstd-compressed clusters that qemu-img checks, compares and maps', async () => {
    const raw = new Uint8Array(3 * 1024 * 1024);
    for (let i = 0; i < raw.length; i++) raw[i] = (i >> 9) % 7 === 0 ? (Math.imul(i, 2654435761) >>> 24) & 0xff : (i * 31) % 17;
    raw.fill(0, 1 << 20, (1 << 20) + 65536); // a zero cluster
    raw.set(randomBytes(65536), 2 << 20); // incompressible
    await writeFile(p('w.raw'), raw);
    const f = p('w.qcow2');
    await createImage(f, { size: raw.length, compressionType: 'zstd' });
    const dev = (await openImage(f)) as Qcow2Device;
    await dev.writeCompressed(0, raw);
    await dev.close();
    expect(qemuCheck(f)).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
    qimg('compare', '-f', 'qcow2', '-F', 'raw', f, p('w.raw'));
    const info = JSON.parse(qimg('info', '--output=json', f)) as { 'format-specific': { data: Record<string, unknown> } };
    expect(info['format-specific'].data['compression-type']).toBe('zstd');
    // qemu-img 7.2 maps a compressed cluster as data with no host offset.
    const map = JSON.parse(qimg('map', '--output=json', f)) as { start: number; length: number; offset?: number; data: boolean; zero: boolean }[];
    const at = (o: number) => map.find((e) => e.start <= o && o < e.start + e.length)!;
    expect(at(0)).toMatchObject({ data: true });
    expect(at(0).offset).toBeUndefined();
    expect(at(1 << 20)).toMatchObject({ zero: true, data: false });
    expect(at(2 << 20).offset).toBeGreaterThan(0); // did not shrink: written plainly
    const d = await openImage(f, { readOnly: true });
    const ext = await mapExtents(d);
    await d.close();
    expect(ext.find((e) => e.offset === 0)?.compressed).toBe(true);
    expect(diff(await vmkitRaw(f), raw)).toBe(-1);
    // The same data compressed by qemu-img at its default level: the files end within a few percent
    // (allocated blocks would measure the file system, not the image).
    qimg('convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'compression_type=zstd', p('w.raw'), p('wq.qcow2'));
    const end = (x: string): number => (JSON.parse(qimg('check', '--output=json', x)) as { 'image-end-offset': number })['image-end-offset'];
    expect(end(f) / end(p('wq.qcow2'))).toBeGreaterThan(0.95);
    expect(end(f) / end(p('wq.qcow2'))).toBeLessThan(1.05);
  });

  it('a damaged frame is CORRUPT at the cluster; frame lengths stop before the padding', async () => {
    const f = p('z-64k.qcow2');
    const dev = await openImage(f, { readOnly: true });
    const first = (await mapExtents(dev)).find((e) => e.compressed)!;
    const dv = (dev as Qcow2Device);
    const st = await dv.blockStatus(first.offset, 512);
    await dev.close();
    expect(st.compressed).toBe(true);
    // Find the frame by its magic in the file and break its first block header.
    const b = new Uint8Array(await readFile(f));
    let at = -1;
    for (let i = 0; i + 4 < b.length; i++) if (b[i] === 0x28 && b[i + 1] === 0xb5 && b[i + 2] === 0x2f && b[i + 3] === 0xfd) { at = i; break; }
    expect(at).toBeGreaterThan(0);
    const len = zstdFrameLength(b.subarray(at, at + 70000));
    expect(len).toBeGreaterThan(6);
    b[at] = 0; // no magic
    await writeFile(p('bad.qcow2'), b);
    await expect(vmkitRaw(p('bad.qcow2'))).rejects.toMatchObject({ code: 'CORRUPT', offset: at });
  });
});

describe('zstd cluster decoding under corrupted input', () => {
  it('frame walking and decoding fail only with VmkitError or -1, never past the cluster', async () => {
    const fc = (await import('fast-check')).default;
    const { zstdCluster } = await import('../bindings/disk/_zstd.js');
    const { VmkitError } = await import('../bindings/errors.js');
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.boolean(), (b, magic) => {
        const x = b.slice();
        if (magic && x.length >= 4) x.set([0x28, 0xb5, 0x2f, 0xfd]);
        const n = zstdFrameLength(x);
        expect(n === -1 || (n > 4 && n <= x.length)).toBe(true);
        try {
          expect(zstdCluster(x, 4096, 0).length).toBe(4096);
        } catch (e) {
          expect(e).toBeInstanceOf(VmkitError);
        }
      }),
      { numRuns: 3000 },
    );
  });
});
