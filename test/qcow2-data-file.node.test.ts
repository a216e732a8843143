// qcow2 with an external data file (`data_file`, `data_file_raw`) against
// qemu-img: images qemu-img and qemu-io make read back equal to `qemu-img
// convert -O raw` and map as `qemu-img map`; images vmkit makes and writes
// pass `qemu-img check`, compare equal to a raw copy with the same writes and
// map as qemu-img maps them; a raw data file is itself that raw copy. Names
// outside the image's folder, a missing data file and compressed clusters are
// refused naming the byte; damaged images fail only with a VmkitError.
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { mkdtemp, rm, readFile, writeFile } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { needTool } from './_tools.js';
import { diff, mergeMap, vmkitRaw } from './_qemu-img.js';
import { damagedImageRound } from './_damaged-image.js';
import { checkImage, createImage, openImage } from '../bindings/disk/image.js';
import { mapExtents, toQemuMap, type QemuMapEntry } from '../bindings/disk/device.js';
import { MemoryProvider, MemoryStorage } from '../bindings/disk/backends/memory.js';
import type { Qcow2Device } from '../bindings/disk/formats/qcow2/device.js';
import { command } from '../bindings/cli/commands/disk.js';

const hasQemu = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
let dir = '';
const p = (n: string): string => join(dir, n);
const MiB = 1 << 20;

// QEMU opens a data file by the name in the header relative to its working directory (vmkit:
// relative to the image), so the peers run in the images' folder, with bare names.
const base = (f: string): string => f.slice(dir.length + 1);
const qimg = (...args: string[]): string => execFileSync('qemu-img', args.map((a) => (a.startsWith(dir + '/') ? base(a) : a)), { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const qemuIo = (f: string, ...cmds: string[]): string => execFileSync('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), base(f)], { cwd: dir, encoding: 'utf8' });
async function qemuRaw(f: string): Promise<Uint8Array> {
  qimg('convert', '-f', 'qcow2', '-O', 'raw', f, p('q-out.raw'));
  const b = new Uint8Array(await readFile(p('q-out.raw')));
  await rm(p('q-out.raw'));
  return b;
}
function qemuCheck(f: string): { corruptions: number; leaks: number; checkErrors: number } {
  const j = JSON.parse(qimg('check', '--output=json', f)) as { corruptions?: number; leaks?: number; 'check-errors'?: number };
  return { corruptions: j.corruptions ?? 0, leaks: j.leaks ?? 0, checkErrors: j['check-errors'] ?? 0 };
}

/** qemu-img map of `file`, merged, beside vmkit's. */
async function maps(file: string): Promise<{ qemu: QemuMapEntry[]; vmkit: QemuMapEntry[] }> {
  const qemu = mergeMap(JSON.parse(qimg('map', '--output=json', file)) as QemuMapEntry[]);
  const dev = await openImage(file, { readOnly: true });
  try {
    return { qemu, vmkit: mergeMap(toQemuMap(await mapExtents(dev))) };
  } finally {
    await dev.close();
  }
}

/** A deterministic pattern of `n` bytes. */
function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

describe.skipIf(!hasQemu)('qcow2 external data files', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmkit-datafile-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  for (const raw of [false, true]) {
    it(`reads and maps what qemu-img makes (data_file_raw=${raw ? 'on' : 'off'})`, async () => {
      const f = p(`q-${raw}.qcow2`);
      qimg('create', '-f', 'qcow2', '-o', `data_file=q-${raw}.data${raw ? ',data_file_raw=on' : ''},cluster_size=65536`, f, '8M');
      qemuIo(f, 'write -P 0xaa 1M 64k', 'write -P 0xbb 4k 4k', 'write -z 2M 128k', 'write -P 0xcc 3M 200k', 'discard 3M 64k');
      const q = await qemuRaw(f);
      expect(diff(await vmkitRaw(f), q)).toBe(-1);
      const m = await maps(f);
      expect(m.vmkit).toEqual(m.qemu);
      const dev = await openImage(f, { readOnly: true });
      expect((await dev.info()).specific).toMatchObject({ dataFile: `q-${raw}.data`, dataFileRaw: raw });
      await dev.close();
      const c = await checkImage(f);
      expect([c.corruptions, c.leaks, c.checkErrors]).toEqual([0, 0, 0]);
    });
  }

  for (const raw of [false, true]) {
    it(`writes images qemu-img checks, compares and maps equal (data_file_raw=${raw ? 'on' : 'off'})`, async () => {
      const f = p(`v-${raw}.qcow2`);
      const ref = new Uint8Array(6 * MiB + 4096);
      await createImage(f, { size: ref.length, dataFile: `v-${raw}.data`, dataFileRaw: raw, clusterSize: 65536 });
      const dev = (await openImage(f)) as Qcow2Device;
      // Whole clusters, partial ones, runs across clusters, zeroes, discards, the last partial cluster.
      const writes: [number, Uint8Array][] = [
        [0, pattern(4096, 1)],
        [MiB, pattern(3 * 65536, 2)],
        [MiB + 70144, pattern(9216, 3)],
        [4 * MiB - 512, pattern(1024, 4)],
        [6 * MiB, pattern(4096, 5)],
        [2 * MiB, new Uint8Array(65536)],
      ];
      for (const [o, d] of writes) {
        await dev.write(o, d);
        ref.set(d, o);
      }
      await dev.writeZeroes(MiB + 65536, 65536);
      ref.fill(0, MiB + 65536, MiB + 131072);
      await dev.discard(0, 65536);
      ref.fill(0, 0, 65536);
      await dev.setCacheMode('writeback');
      const bulk = pattern(MiB, 6);
      await dev.write(5 * MiB - 65536, bulk);
      ref.set(bulk, 5 * MiB - 65536);
      await dev.close();
      await writeFile(p(`v-${raw}.ref`), ref);
      expect(qemuCheck(f)).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
      qimg('compare', '-f', 'qcow2', '-F', 'raw', f, p(`v-${raw}.ref`));
      expect(diff(await vmkitRaw(f), ref)).toBe(-1);
      const m = await maps(f);
      expect(m.vmkit).toEqual(m.qemu);
      const info = JSON.parse(qimg('info', '--output=json', f)) as { 'format-specific': { data: Record<string, unknown> } };
      expect(info['format-specific'].data).toMatchObject({ 'data-file': `v-${raw}.data`, 'data-file-raw': raw });
      // The qcow2 file holds metadata only.
      const c = await checkImage(f);
      expect([c.corruptions, c.leaks]).toEqual([0, 0]);
      expect(c.imageEndOffset).toBeLessThan(10 * 65536);
      // A raw data file is the disk.
      if (raw) expect(diff(new Uint8Array(await readFile(p(`v-${raw}.data`))).subarray(0, ref.length), ref)).toBe(-1);
    });
  }

  it('writes into an image qemu-img made; qemu-io reads what vmkit wrote', async () => {
    const f = p('mix.qcow2');
    qimg('create', '-f', 'qcow2', '-o', 'data_file=mix.data', f, '4M');
    qemuIo(f, 'write -P 0x11 0 128k');
    const dev = await openImage(f);
    await dev.write(65536 + 512, new Uint8Array(512).fill(0x22));
    await dev.write(3 * MiB, new Uint8Array(65536).fill(0x33));
    await dev.close();
    expect(qemuCheck(f)).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
    const out = qemuIo(f, 'read -P 0x22 66048 512', 'read -P 0x11 0 65536', 'read -P 0x11 66560 64000', 'read -P 0x33 3M 64k', 'read -P 0 2M 64k');
    expect(out).toMatch(/read 512\/512 bytes/);
    expect(out).not.toMatch(/Pattern verification failed/);
  });

  it('vmkit disk create --data-file [--data-file-raw] makes what qemu-img info reads', async () => {
    let out = '';
    const io = { stdout: { write: (t: string) => ((out += t), true) }, stderr: { write: () => true } } as unknown as Parameters<NonNullable<typeof command.run.create>>[1];
    expect(await command.run.create!([p('cli.qcow2'), '--size', '2M', '--data-file', 'cli.data', '--data-file-raw', '--json'], io)).toBe(0);
    expect(JSON.parse(out)).toMatchObject({ format: 'qcow2', specific: { dataFile: 'cli.data', dataFileRaw: true } });
    const info = JSON.parse(qimg('info', '--output=json', p('cli.qcow2'))) as { 'format-specific': { data: Record<string, unknown> } };
    expect(info['format-specific'].data).toMatchObject({ 'data-file': 'cli.data', 'data-file-raw': true });
    expect(qemuCheck(p('cli.qcow2'))).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
    await expect(command.run.create!([p('cli2.qcow2'), '--size', '2M', '--data-file-raw'], io)).rejects.toMatchObject({ code: 'ARG_RANGE' });
  });

  it('refuses a data file outside the folder, a missing one and compressed clusters, naming the byte', async () => {
    const f = p('abs.qcow2');
    qimg('create', '-f', 'qcow2', '-o', `data_file=${p('abs.data')}`, f, '1M');
    const bytes = new Uint8Array(await readFile(f));
    const at = Buffer.from(bytes).indexOf(Buffer.from(p('abs.data')));
    await expect(openImage(f, { readOnly: true })).rejects.toMatchObject({ code: 'UNSUPPORTED', offset: at });
    qimg('create', '-f', 'qcow2', '-o', 'data_file=gone.data', p('gone.qcow2'), '1M');
    await rm(p('gone.data'));
    await expect(openImage(p('gone.qcow2'), { readOnly: true })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    // A compressed entry (bit 62) in the L2 table of a data-file image.
    qimg('create', '-f', 'qcow2', '-o', 'data_file=c.data', p('c.qcow2'), '1M');
    qemuIo(p('c.qcow2'), 'write -P 1 0 64k');
    const c = new Uint8Array(await readFile(p('c.qcow2')));
    const dv = new DataView(c.buffer);
    const l1 = Number(dv.getBigUint64(40));
    const l2 = Number(dv.getBigUint64(l1) & 0x00ff_ffff_ffff_fe00n);
    dv.setBigUint64(l2, (1n << 62n) | 0x50000n);
    await writeFile(p('c.qcow2'), c);
    await expect(vmkitRaw(p('c.qcow2'))).rejects.toMatchObject({ code: 'CORRUPT', offset: l2 });
    expect((await checkImage(p('c.qcow2'))).messages.some((m) => m.offset === l2 && /compressed/.test(m.message))).toBe(true);
  });
});

describe('qcow2 external data files under corrupted input', () => {
  it('opening, reading, mapping, writing and checking fail only with VmkitError', async () => {
    for (const raw of [false, true]) {
      const provider = new MemoryProvider();
      await createImage('top.qcow2', { provider, size: MiB, clusterSize: 16384, dataFile: 'top.data', dataFileRaw: raw });
      const t = await openImage('top.qcow2', { provider });
      await t.write(4096, new Uint8Array(4096).fill(1));
      await t.writeZeroes(32768, 16384);
      await t.write(500 << 10, new Uint8Array(40960).fill(3));
      await t.close();
      const bytes = provider.stores.get('top.qcow2')!.bytes().slice();
      await fc.assert(
        fc.asyncProperty(fc.array(fc.record({ at: fc.nat(bytes.length - 1), v: fc.nat(255) }), { minLength: 1, maxLength: 6 }), async (muts) => {
          const b = bytes.slice();
          for (const m of muts) b[m.at] = m.v;
          provider.stores.set('bad.qcow2', new MemoryStorage('bad.qcow2', b));
          await damagedImageRound(provider, 'bad.qcow2', {
            read: MiB,
            map: MiB,
            write: async (dev) => {
              await dev.write(0, new Uint8Array(20480).fill(9));
              await dev.writeZeroes(16384, 16384);
            },
          });
        }),
        { numRuns: 150 },
      );
    }
  });
});
