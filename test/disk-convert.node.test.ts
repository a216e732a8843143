// `convertImage` / `vmkit disk convert` between every pair of formats vmkit
// writes, against qemu-img: a qcow2 chain QEMU wrote converts to qcow2,
// VMDK (sparse and streamOptimized), VHD (dynamic and fixed), VHDX (dynamic
// and fixed) and raw, each comparing equal to the source with `qemu-img
// compare` (and passing `qemu-img check` where QEMU checks the format); the
// results convert back to qcow2 equal again.
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { needTool } from './_tools.js';
import { qemuCheck, qemuIo, qimg } from './_qemu-img.js';
import { convertImage } from '../bindings/disk/convert.js';
import { command } from '../bindings/cli/commands/disk.js';

const hasQemu = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
let dir = '';
const p = (n: string): string => join(dir, n);
const QEMU_FMT: Record<string, string> = { qcow2: 'qcow2', vmdk: 'vmdk', vhd: 'vpc', vhdx: 'vhdx', raw: 'raw' };

describe.skipIf(!hasQemu)('disk convert', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmkit-convert-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('converts a qcow2 chain to every format and back, equal per qemu-img compare', async () => {
    const size = String(24 * 1024 * 1024);
    qimg('create', '-q', '-f', 'qcow2', p('base.qcow2'), size);
    qemuIo('qcow2', p('base.qcow2'), 'write -P 0x61 0 3M', 'write -P 0x62 10M 1M', 'write -z 11M 1M');
    qimg('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', p('top.qcow2'));
    qemuIo('qcow2', p('top.qcow2'), 'write -P 0x71 1M 4096', 'write -P 0x72 20M 2M', `write -P 0x73 ${24 * 1024 * 1024 - 4096} 4096`);
    const cases: [string, string | undefined][] = [
      ['qcow2', undefined], ['vmdk', undefined], ['vmdk', 'streamOptimized'], ['vhd', 'dynamic'], ['vhd', 'fixed'], ['vhdx', 'dynamic'], ['vhdx', 'fixed'], ['raw', undefined],
    ];
    for (const [fmt, sub] of cases) {
      const out = p(`out-${fmt}-${sub ?? 'default'}.img`);
      const r = await convertImage(p('top.qcow2'), out, { format: fmt as 'qcow2', ...(sub ? { subformat: sub } : {}) });
      expect(r.size, `${fmt}/${sub}`).toBe(24 * 1024 * 1024);
      qimg('compare', '-q', '-f', 'qcow2', '-F', QEMU_FMT[fmt]!, p('top.qcow2'), out);
      if (fmt === 'qcow2' || fmt === 'vmdk' || fmt === 'vhdx') expect(qemuCheck(out), `${fmt}/${sub}`).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
      const back = p(`back-${fmt}-${sub ?? 'default'}.qcow2`);
      await convertImage(out, back, { format: 'qcow2' });
      qimg('compare', '-q', '-f', 'qcow2', '-F', 'qcow2', p('top.qcow2'), back);
    }
    await expect(convertImage(p('top.qcow2'), p('x.img'), { format: 'qcow2', subformat: 'fixed' })).rejects.toMatchObject({ code: 'ARG_RANGE' });
  });

  it('a raw image whose size is not a multiple of 512 keeps its tail, rounded up as qemu-img does', async () => {
    const bytes = new Uint8Array(1000).map((_, i) => (i * 7 + 1) & 0xff);
    const { writeFile, readFile } = await import('node:fs/promises');
    await writeFile(p('odd.img'), bytes);
    const info = JSON.parse(qimg('info', '--output=json', '-f', 'raw', p('odd.img'))) as { 'virtual-size': number };
    const r = await convertImage(p('odd.img'), p('odd-vmkit.raw'), { format: 'raw' });
    expect(r.size).toBe(info['virtual-size']);
    qimg('convert', '-f', 'raw', '-O', 'raw', p('odd.img'), p('odd-qemu.raw'));
    expect(new Uint8Array(await readFile(p('odd-vmkit.raw')))).toEqual(new Uint8Array(await readFile(p('odd-qemu.raw'))));
    await convertImage(p('odd.img'), p('odd.qcow2'), { format: 'qcow2' });
    qimg('compare', '-q', '-f', 'raw', '-F', 'qcow2', p('odd.img'), p('odd.qcow2'));
  });

  it('vmkit disk convert -O vhdx runs in-process and reports', async () => {
    let out = '';
    const io = { stdout: { write: (s: string) => ((out += s), true) }, stderr: { write: () => true } } as unknown as Parameters<NonNullable<typeof command.run.convert>>[1];
    expect(await command.run.convert!([p('top.qcow2'), p('cli.vhdx'), '-O', 'vhdx', '--json'], io)).toBe(0);
    expect(JSON.parse(out)).toMatchObject({ format: 'vhdx', size: 24 * 1024 * 1024 });
    qimg('compare', '-q', '-f', 'qcow2', '-F', 'vhdx', p('top.qcow2'), p('cli.vhdx'));
  });
});
