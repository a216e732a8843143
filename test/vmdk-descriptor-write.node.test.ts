// Writing descriptor-file VMDKs (monolithicFlat, twoGbMaxExtentFlat,
// twoGbMaxExtentSparse) against qemu-img: `createImage` makes the files
// `qemu-img create -o subformat=` makes (names, sizes, descriptor lines),
// and `convertImage` to each subformat reads back equal in `qemu-img
// compare` (data across the 2 GiB extent boundaries and at the tail),
// passes `qemu-img check`, and reads back equal in vmkit.
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { mkdtemp, mkdir, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { needTool } from './_tools.js';
import { qemuIo, qimg } from './_qemu-img.js';
import { convertImage } from '../bindings/disk/convert.js';
import { createImage, openImage } from '../bindings/disk/image.js';

const hasQemu = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
let dir = '';
const p = (...n: string[]): string => join(dir, ...n);
const GiB = 2 ** 30;
const SUBS = ['monolithicFlat', 'twoGbMaxExtentFlat', 'twoGbMaxExtentSparse'] as const;

/** The descriptor's lines without the random CID. */
const lines = (t: string): string[] => t.split('\n').filter((l) => !/^CID=/.test(l));

describe.skipIf(!hasQemu)('descriptor-file VMDKs written', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmkit-vmdkw-'));
    await mkdir(p('q'));
    await mkdir(p('v'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('createImage lays out the files qemu-img create -o subformat= makes', async () => {
    for (const sub of SUBS) {
      qimg('create', '-q', '-f', 'vmdk', '-o', `subformat=${sub}`, p('q', `${sub}.vmdk`), '5G');
      await createImage(p('v', `${sub}.vmdk`), { format: 'vmdk', subformat: sub, size: 5 * GiB });
      const names = async (d: string): Promise<[string, number][]> =>
        // The descriptor's size aside: QEMU prints the CID without leading zeroes (vmkit pads it to 8 digits).
        Promise.all((await readdir(p(d))).filter((f) => f.startsWith(`${sub}.`) || f.startsWith(`${sub}-`)).sort().map(async (f) => [f, f === `${sub}.vmdk` ? 0 : (await stat(p(d, f))).size] as [string, number]));
      expect(await names('v'), sub).toEqual(await names('q'));
      expect(lines(await readFile(p('v', `${sub}.vmdk`), 'utf8')), sub).toEqual(lines(await readFile(p('q', `${sub}.vmdk`), 'utf8')));
      const info = JSON.parse(qimg('info', '--output=json', p('v', `${sub}.vmdk`))) as { 'virtual-size': number; 'format-specific': { data: { 'create-type': string } } };
      expect(info['virtual-size']).toBe(5 * GiB);
      expect(info['format-specific'].data['create-type']).toBe(sub);
    }
  });

  it('convertImage to each subformat reads back equal in qemu-img and vmkit', async () => {
    const src = p('src.qcow2');
    qimg('create', '-q', '-f', 'qcow2', src, `${4 * GiB + 3 * 2 ** 20}`);
    // Data at the start, across each 2 GiB extent boundary, zeroes, and in the last (short) extent's tail.
    qemuIo('qcow2', src, 'write -P 0x11 0 192k', `write -P 0x22 ${2 * GiB - 98304} 196608`, `write -P 0x33 ${4 * GiB - 4096} 8192`, `write -z ${GiB} 1M`, `write -P 0x44 ${4 * GiB + 2 * 2 ** 20} 1M`);
    for (const sub of SUBS) {
      const out = p('v', `c-${sub}.vmdk`);
      const r = await convertImage(src, out, { format: 'vmdk', subformat: sub });
      expect(r.size).toBe(4 * GiB + 3 * 2 ** 20);
      qimg('compare', '-q', '-f', 'qcow2', '-F', 'vmdk', src, out);
      if (sub === 'twoGbMaxExtentSparse') {
        const c = JSON.parse(qimg('check', '--output=json', out)) as { corruptions?: number; leaks?: number };
        expect([c.corruptions ?? 0, c.leaks ?? 0]).toEqual([0, 0]);
      }
      const dev = await openImage(out, { readOnly: true });
      const a = await dev.read(2 * GiB - 98304, 196608);
      const b = await dev.read(4 * GiB + 2 * 2 ** 20, 2 ** 20);
      await dev.close();
      expect(a.every((x) => x === 0x22)).toBe(true);
      expect(b.every((x) => x === 0x44)).toBe(true);
    }
    await expect(convertImage(src, p('v', 'bad.vmdk'), { format: 'vmdk', subformat: 'vmfsSparse' })).rejects.toMatchObject({ code: 'ARG_RANGE' });
  });
});
