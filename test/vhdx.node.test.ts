// VHDX against qemu-img / qemu-io: dynamic and fixed images QEMU wrote read
// back equal to `qemu-img convert -O raw`; images vmkit creates and writes
// pass `qemu-img check` and compare equal to a raw copy with the same
// writes; QEMU and vmkit write into each other's images; a damaged header
// falls back to the other one; a differencing disk without its parent
// locator is refused at its flag.
import { describe, expect, it } from 'vitest';
import { tempPaths } from './_tmp.js';
import { writeFile, readFile } from 'node:fs/promises';
import fc from 'fast-check';
import { needTool } from './_tools.js';
import { diff, qemuCheck, qemuIo, qemuRaw, qimg, vmkitRaw } from './_qemu-img.js';
import { openImage, createImage, checkImage } from '../bindings/disk/image.js';
import { FileStorage } from '../bindings/disk/backends/file.js';
import { create as createVhdx, readLayout, type VhdxCreateOptions } from '../bindings/disk/formats/vhdx/index.js';
import { crc32c, encodeHeader, parseHeader, VHDX_HEADER1, VHDX_HEADER2 } from '../bindings/disk/formats/vhdx/header.js';
import { VmkitError } from '../bindings/errors.js';

const hasQemu = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
const p = tempPaths('vmkit-vhdx-');
const fill = (n: number, v: number): Uint8Array => new Uint8Array(n).fill(v);

describe('crc32c', () => {
  it('is CRC-32C (Castagnoli)', () => {
    expect(crc32c(new TextEncoder().encode('123456789'))).toBe(0xe3069283);
    expect(crc32c(new Uint8Array(32))).toBe(0x8a9136aa); // RFC 3720 B.4: 32 bytes of zeroes
  });
});

describe.skipIf(!hasQemu)('vhdx against qemu-img / qemu-io', () => {

  it('reads dynamic and fixed images QEMU wrote exactly (several block and sector sizes)', async () => {
    for (const [name, opts, size] of [
      ['dyn.vhdx', [], '100M'],
      ['fixed.vhdx', ['-o', 'subformat=fixed'], '20M'],
      ['b1.vhdx', ['-o', 'block_size=1M'], '30M'],
      ['nozero.vhdx', ['-o', 'block_state_zero=off'], '20M'],
      ['log2m.vhdx', ['-o', 'log_size=2M,block_size=2M'], '9M'],
    ] as const) {
      qimg('create', '-q', '-f', 'vhdx', ...opts, p(name), size);
      const vs = (JSON.parse(qimg('info', '--output=json', p(name))) as { 'virtual-size': number })['virtual-size'];
      qemuIo('vhdx', p(name), 'write -P 0xab 0 64k', 'write -P 0x55 100k 8k', 'write -P 0x33 2M 1M', `write -P 0x77 ${vs - 4096} 4096`);
      const ours = await vmkitRaw(p(name));
      expect(ours.length, name).toBe(vs);
      expect(ours[0]).toBe(0xab);
      expect(diff(ours, await qemuRaw(p(name), 'vhdx')), name).toBe(-1);
      expect((await checkImage(p(name))).corruptions, name).toBe(0);
      const d = await openImage(p(name), { readOnly: true });
      expect(d.format).toBe('vhdx');
      await d.close();
    }
  });

  it('images vmkit creates and writes pass qemu-img check and compare equal to a raw copy (dynamic and fixed)', async () => {
    for (const sub of ['dynamic', 'fixed'] as const) {
      const name = `mine-${sub}.vhdx`;
      const size = 21 * 1024 * 1024 + 512 * 7; // not a block multiple
      const st = await FileStorage.create(p(name));
      await createVhdx(st, { size, subformat: sub, clusterSize: 2 << 20 } as VhdxCreateOptions);
      await st.close();
      expect(qemuCheck(p(name))).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
      const ref = new Uint8Array(size);
      const dev = await openImage(p(name));
      const rnd = fc.sample(fc.record({ at: fc.nat(size / 512 - 1), n: fc.integer({ min: 1, max: 700 }), v: fc.nat(255) }), { numRuns: 40, seed: 22 });
      for (const w of rnd) {
        const n = Math.min(w.n, size / 512 - w.at) * 512;
        const d = fill(n, w.v);
        await dev.write(w.at * 512, d);
        ref.set(d, w.at * 512);
      }
      await dev.write((2 << 20) - 1024, fill(2048, 0x5a));
      ref.set(fill(2048, 0x5a), (2 << 20) - 1024);
      await dev.writeZeroes(4 << 20, 65536);
      ref.fill(0, 4 << 20, (4 << 20) + 65536);
      await dev.close();
      await writeFile(p('mine.raw'), ref);
      expect(qemuCheck(p(name))).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
      qimg('compare', '-q', '-f', 'vhdx', '-F', 'raw', p(name), p('mine.raw'));
      expect(diff(await vmkitRaw(p(name)), ref)).toBe(-1);
      expect((await checkImage(p(name))).corruptions).toBe(0);
      const info = JSON.parse(qimg('info', '--output=json', p(name))) as { format: string; 'virtual-size': number; 'cluster-size': number };
      expect([info.format, info['virtual-size'], info['cluster-size']]).toEqual(['vhdx', size, 2 << 20]);
    }
    await createImage(p('reg.vhdx'), { format: 'vhdx', size: 64 << 20 });
    expect(qemuCheck(p('reg.vhdx'))).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
  });

  it('vmkit writes into images QEMU made, and QEMU into images vmkit made', async () => {
    qimg('create', '-q', '-f', 'vhdx', p('q.vhdx'), '40M');
    qemuIo('vhdx', p('q.vhdx'), 'write -P 0x21 1M 3M');
    const d = await openImage(p('q.vhdx'));
    await d.write(3 << 20, fill(10 << 20, 0x22));
    await d.close();
    expect(diff(await vmkitRaw(p('q.vhdx')), await qemuRaw(p('q.vhdx'), 'vhdx'))).toBe(-1);
    qemuIo('vhdx', p('q.vhdx'), 'write -P 0x24 30M 2M', 'write -P 0x25 0 512');
    expect(diff(await vmkitRaw(p('q.vhdx')), await qemuRaw(p('q.vhdx'), 'vhdx'))).toBe(-1);
    expect(qemuCheck(p('q.vhdx'))).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
  });

  it('a damaged header falls back to the other; both damaged, a dirty log or a parent are refused with offsets', async () => {
    qimg('create', '-q', '-f', 'vhdx', p('h.vhdx'), '8M');
    qemuIo('vhdx', p('h.vhdx'), 'write -P 0x31 0 1M');
    const good = new Uint8Array(await readFile(p('h.vhdx')));
    const ref = await qemuRaw(p('h.vhdx'), 'vhdx');
    // Damage the header with the higher sequence number: the other one is used.
    const seq = (at: number): bigint => parseHeader(good.subarray(at, at + 4096))!.sequenceNumber;
    const hi = seq(VHDX_HEADER1) > seq(VHDX_HEADER2) ? VHDX_HEADER1 : VHDX_HEADER2;
    const b = good.slice();
    b[hi + 100]! ^= 0xff;
    await writeFile(p('h1.vhdx'), b);
    expect(diff(await vmkitRaw(p('h1.vhdx')), ref)).toBe(-1);
    expect((await checkImage(p('h1.vhdx'))).corruptions).toBe(1);
    const lo = hi === VHDX_HEADER1 ? VHDX_HEADER2 : VHDX_HEADER1;
    b[lo + 100]! ^= 0xff;
    await writeFile(p('h2.vhdx'), b);
    await expect(openImage(p('h2.vhdx'))).rejects.toMatchObject({ code: 'INTEGRITY', offset: VHDX_HEADER1 + 4 });
    // A log GUID and something that looks like an entry of it but does not check (no CRC, no
    // descriptors): not an entry, so the log is empty and nothing is replayed (test/vhdx-log has
    // the replay of real entries).
    const dirty = good.slice();
    const h = parseHeader(dirty.subarray(hi, hi + 4096))!;
    const guid = Uint8Array.from({ length: 16 }, (_, i) => i + 1);
    dirty.set(encodeHeader({ ...h, logGuid: guid }), hi);
    const entry = new DataView(dirty.buffer, h.logOffset, 4096);
    entry.setUint32(0, 0x65676f6c, true); // "loge"
    dirty.set(guid, h.logOffset + 32);
    await writeFile(p('dirty.vhdx'), dirty);
    expect(diff(await vmkitRaw(p('dirty.vhdx')), ref)).toBe(-1);
    // A log GUID without entries of it is clean (Hyper-V leaves the GUID after a clean close).
    dirty.fill(0, h.logOffset, h.logOffset + 4096);
    await writeFile(p('clean.vhdx'), dirty);
    expect(diff(await vmkitRaw(p('clean.vhdx')), ref)).toBe(-1);
    // HasParent in the file parameters but no parent locator: CORRUPT at that flag (test/vhdx-diff reads real ones).
    const st = await FileStorage.open(p('h.vhdx'), { readOnly: true });
    const { metadata } = await readLayout(st);
    await st.close();
    const diffd = good.slice();
    diffd[metadata.fileParametersAt! + 4]! |= 2;
    await writeFile(p('diff.vhdx'), diffd);
    await expect(openImage(p('diff.vhdx'), { readOnly: true })).rejects.toMatchObject({ code: 'CORRUPT', offset: metadata.fileParametersAt! + 4 });
  });
});
