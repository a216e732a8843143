// `convertImage` / `vmkit disk convert` between every pair of formats vmkit
// writes, against qemu-img: a qcow2 chain QEMU wrote converts to qcow2,
// VMDK (sparse and streamOptimized), VHD (dynamic and fixed), VHDX (dynamic
// and fixed) and raw, each comparing equal to the source with `qemu-img
// compare` (and passing `qemu-img check` where QEMU checks the format); the
// results convert back to qcow2 equal again.
import { describe, expect, it } from 'vitest';
import { tempPaths } from './_tmp.js';
import { needTool } from './_tools.js';
import { qemuCheck, qemuIo, qimg } from './_qemu-img.js';
import { convertImage, copyData } from '../bindings/disk/convert.js';
import { openImage } from '../bindings/disk/image.js';
import type { BlockDevice } from '../bindings/disk/device.js';
import { command } from '../bindings/cli/commands/disk.js';

const hasQemu = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
const p = tempPaths('vmkit-convert-');
const QEMU_FMT: Record<string, string> = { qcow2: 'qcow2', vmdk: 'vmdk', vhd: 'vpc', vhdx: 'vhdx', raw: 'raw' };

describe.skipIf(!hasQemu)('disk convert', () => {

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

  it('many chunks in flight: a chain of interleaved data, zero, compressed and unallocated extents converts equal, writes ordered or not', async () => {
    const MiB = 1024 * 1024;
    const size = 40 * MiB;
    qimg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', p('ib.qcow2'), String(size));
    const base: string[] = [];
    const top: string[] = [];
    // Extents of odd lengths that straddle the 1 MiB chunks: data, zeroes written as data,
    // zero clusters, compressed clusters, and gaps left unallocated in both layers.
    let off = 0;
    for (let i = 0; off < size - 3 * MiB; i++) {
      const len = ((i * 7919) % 23) * 64 * 1024 + 64 * 1024;
      const k = i % 5;
      if (k === 0) base.push(`write -P ${(0x10 + i) & 0xff} ${off} ${len}`);
      else if (k === 1) base.push(`write -P 0 ${off} ${len}`);
      else if (k === 2) base.push(`write -c -P ${(0x40 + i) & 0xff} ${off} 65536`);
      else if (k === 3) base.push(`write -P ${(0x80 + i) & 0xff} ${off} ${len}`, `write -z ${off + 4096} ${Math.min(len - 4096, 128 * 1024)}`);
      off += len + (i % 3) * 192 * 1024;
    }
    qemuIo('qcow2', p('ib.qcow2'), ...base);
    qimg('create', '-q', '-f', 'qcow2', '-b', 'ib.qcow2', '-F', 'qcow2', p('it.qcow2'));
    for (let i = 0; i < 30; i++) {
      const at = ((i * 1_299_709) % (size / 4096 - 64)) * 4096;
      top.push(i % 4 === 0 ? `write -z ${at} ${(i % 7) * 4096 + 4096}` : `write -P ${(0xc0 + i) & 0xff} ${at} ${(i % 9) * 8192 + 512}`);
    }
    qemuIo('qcow2', p('it.qcow2'), ...top);
    // The source counts its reads in flight: the copy must really keep several going.
    const src = await openImage(p('it.qcow2'), { readOnly: true });
    let now = 0;
    let most = 0;
    const counted = new Proxy(src, {
      get(t, k, r) {
        if (k !== 'readInto') return Reflect.get(t, k, r) as unknown;
        return async (o: number, d: Uint8Array) => {
          most = Math.max(most, ++now);
          try {
            // A little latency, different per chunk, so reads complete out of order.
            await new Promise((res) => setTimeout(res, (o / MiB) % 3));
            await t.readInto(o, d);
          } finally {
            now--;
          }
        };
      },
    }) as BlockDevice;
    try {
      for (const [fmt, ordered, inFlight] of [['qcow2', false, 16], ['qcow2', true, 64], ['vmdk', true, 8], ['vhdx', false, 3], ['raw', false, 1]] as const) {
        const out = p(`inflight-${fmt}-${String(ordered)}-${inFlight}.img`);
        await convertImage(p('it.qcow2'), out, { format: fmt });
        // The same copy again through the counting source, into a fresh image.
        const again = p(`inflight-${fmt}-${String(ordered)}-${inFlight}-copy.img`);
        const { loadFormat } = await import('../bindings/disk/image.js');
        const { fileProvider } = await import('../bindings/disk/backends/file.js');
        const st = await fileProvider.create(again);
        const m = await loadFormat(fmt);
        await m.create(st, { size } as Parameters<typeof m.create>[1]);
        await st.close();
        const dst = await openImage(again, { format: fmt });
        most = 0;
        try {
          await copyData(counted, dst, { ordered, inFlight });
        } finally {
          await dst.close();
        }
        if (inFlight === 1) expect(most).toBe(1);
        if (inFlight > 1) expect(most, `${fmt} inFlight ${inFlight}`).toBeGreaterThan(1);
        expect(most).toBeLessThanOrEqual(inFlight);
        for (const f of [out, again]) {
          qimg('compare', '-q', '-f', 'qcow2', '-F', QEMU_FMT[fmt]!, p('it.qcow2'), f);
          if (fmt !== 'raw') expect(qemuCheck(f), f).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
        }
      }
    } finally {
      await src.close();
    }
  });

  it('a failing read stops the copy with its error and leaves nothing running', async () => {
    const src = await openImage(p('top.qcow2'), { readOnly: true });
    let now = 0;
    let after = 0;
    let failed = false;
    const bad = new Proxy(src, {
      get(t, k, r) {
        if (k !== 'readInto') return Reflect.get(t, k, r) as unknown;
        return async (o: number, d: Uint8Array) => {
          if (failed) after++;
          now++;
          try {
            await new Promise((res) => setTimeout(res, 2));
            if (o >= 10 * 1024 * 1024) {
              failed = true;
              throw new Error('disk gone');
            }
            await t.readInto(o, d);
          } finally {
            now--;
          }
        };
      },
    }) as BlockDevice;
    const { fileProvider } = await import('../bindings/disk/backends/file.js');
    const { loadFormat } = await import('../bindings/disk/image.js');
    const st = await fileProvider.create(p('fail.qcow2'));
    const m = await loadFormat('qcow2');
    await m.create(st, { size: src.size } as Parameters<typeof m.create>[1]);
    await st.close();
    const dst = await openImage(p('fail.qcow2'), { format: 'qcow2' });
    try {
      await expect(copyData(bad, dst, { inFlight: 4 })).rejects.toThrow('disk gone');
      expect(now).toBe(0);
      // Once a read failed, no more chunks are started (those in flight finish).
      expect(after).toBeLessThan(4);
      await expect(copyData(src, dst, { inFlight: 0 })).rejects.toMatchObject({ code: 'ARG_RANGE' });
    } finally {
      await dst.close();
      await src.close();
    }
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

  it('-t unsafe skips every flush of the output (as qemu-img convert by default), writeback makes it durable; both equal', async () => {
    const { syncFileProvider } = await import('../bindings/disk/backends/file.js');
    let flushes = 0;
    const counting = {
      ...syncFileProvider,
      create: async (n: string) => {
        const st = await syncFileProvider.create(n);
        const f = st.flush.bind(st);
        st.flush = async () => {
          flushes++;
          await f();
        };
        return st;
      },
      open: async (n: string, o: { readOnly: boolean }) => {
        const st = await syncFileProvider.open(n, o);
        const f = st.flush.bind(st);
        st.flush = async () => {
          flushes++;
          await f();
        };
        return st;
      },
    };
    for (const [fmt, sub] of [['qcow2', undefined], ['vhdx', undefined], ['vmdk', 'streamOptimized']] as const) {
      flushes = 0;
      await convertImage(p('top.qcow2'), p(`unsafe.${fmt}`), { format: fmt, provider: counting, cache: 'unsafe', ...(sub ? { subformat: sub } : {}) });
      expect(flushes, fmt).toBe(0);
      qimg('compare', '-q', '-f', 'qcow2', '-F', fmt, p('top.qcow2'), p(`unsafe.${fmt}`));
      await convertImage(p('top.qcow2'), p(`safe.${fmt}`), { format: fmt, provider: counting, ...(sub ? { subformat: sub } : {}) });
      expect(flushes, fmt).toBeGreaterThan(0);
    }
    expect(qemuCheck(p('unsafe.qcow2'))).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
    await expect(convertImage(p('top.qcow2'), p('bad-cache.qcow2'), { cache: 'none' as 'unsafe' })).rejects.toMatchObject({ code: 'ARG_RANGE' });
  });

  it('vmkit disk convert -O vhdx runs in-process and reports', async () => {
    let out = '';
    const io = { stdout: { write: (s: string) => ((out += s), true) }, stderr: { write: () => true } } as unknown as Parameters<NonNullable<typeof command.run.convert>>[1];
    expect(await command.run.convert!([p('top.qcow2'), p('cli.vhdx'), '-O', 'vhdx', '--json'], io)).toBe(0);
    expect(JSON.parse(out)).toMatchObject({ format: 'vhdx', size: 24 * 1024 * 1024 });
    qimg('compare', '-q', '-f', 'qcow2', '-F', 'vhdx', p('top.qcow2'), p('cli.vhdx'));
    expect(await command.run.convert!([p('top.qcow2'), p('cli2.vmdk'), '-O', 'vmdk', '--in-flight', '2'], io)).toBe(0);
    qimg('compare', '-q', '-f', 'qcow2', '-F', 'vmdk', p('top.qcow2'), p('cli2.vmdk'));
    for (const bad of ['0', '65', 'x'])
      await expect(command.run.convert!([p('top.qcow2'), p(`cli-bad-${bad}.qcow2`), '--in-flight', bad], io)).rejects.toMatchObject({ code: 'ARG_RANGE' });
    // Refused before anything is made.
    const { existsSync } = await import('node:fs');
    expect(existsSync(p('cli-bad-0.qcow2'))).toBe(false);
  });
});
