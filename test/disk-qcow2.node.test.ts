// qcow2 against QEMU's own tools: images qemu-img/qemu-io write read back
// identically through vmkit; images vmkit writes pass `qemu-img check` and
// `qemu-img compare`; `map` agrees with `qemu-img map --output=json`.
import { describe, expect, it } from 'vitest';
import { tempPaths } from './_tmp.js';
import { execFileSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import fc from 'fast-check';
import { needTool } from './_tools.js';
import { diff, mergeMap, qemuCheck, qemuIo, qemuRaw, qimg, vmkitRaw } from './_qemu-img.js';
import { openImage, createImage, checkImage } from '../bindings/disk/image.js';
import { mapExtents, toQemuMap, type QemuMapEntry } from '../bindings/disk/device.js';
import type { Qcow2Device } from '../bindings/disk/formats/qcow2/device.js';

const hasQemu = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
const p = tempPaths('vmkit-qcow2-');
const qio = (file: string, ...cmds: string[]): void => qemuIo('qcow2', file, ...cmds);
/** qemu map with data clusters that are file holes folded into data (vmkit cannot see holes). */
function normalize(m: QemuMapEntry[]): QemuMapEntry[] {
  return mergeMap(m.map((x) => ({ ...x, zero: x.data ? false : x.zero })));
}

describe.skipIf(!hasQemu)('qcow2 against qemu-img / qemu-io', () => {

  it('reads a chain QEMU wrote exactly, and map agrees with qemu-img map', async () => {
    qimg('create', '-q', '-f', 'qcow2', p('base.qcow2'), '4M');
    qio(p('base.qcow2'), 'write -P 0xaa 0 64k', 'write -P 0x55 100k 8k', 'write -z 1M 128k', 'write -P 0x33 2M 1M');
    qimg('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', p('mid.qcow2'));
    qio(p('mid.qcow2'), 'write -P 0x11 32k 64k', 'write -z 2M 64k', 'discard 3M 64k');
    qimg('create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', p('top.qcow2'));
    qio(p('top.qcow2'), 'write -P 0x77 512 1k', 'write -P 0x99 3900k 4k');
    expect(diff(await vmkitRaw(p('top.qcow2')), await qemuRaw(p('top.qcow2')))).toBe(-1);
    const dev = await openImage(p('top.qcow2'), { readOnly: true });
    const ours = toQemuMap(await mapExtents(dev));
    await dev.close();
    const theirs = JSON.parse(qimg('map', '--output=json', p('top.qcow2'))) as QemuMapEntry[];
    expect(normalize(ours)).toEqual(normalize(theirs));
  });

  it('writes images that pass qemu-img check and compare equal to a raw reference (property)', async () => {
    const size = 2 << 20;
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            kind: fc.constantFrom('write', 'write', 'zero', 'discard'),
            sector: fc.integer({ min: 0, max: size / 512 - 1 }),
            sectors: fc.integer({ min: 1, max: 300 }),
            byte: fc.integer({ min: 0, max: 255 }),
          }),
          { minLength: 1, maxLength: 12 },
        ),
        fc.boolean(),
        fc.constantFrom(false, false, true),
        async (ops, overlay, ext) => {
          const x = ext ? { extendedL2: true, clusterSize: 65536 } : {};
          const xo = ext ? ['-o', 'extended_l2=on'] : [];
          const n = run++;
          const img = p(`w${n}.qcow2`);
          const ref = new Uint8Array(size);
          if (overlay) {
            qimg('create', '-q', '-f', 'qcow2', p(`b${n}.qcow2`), String(size));
            qio(p(`b${n}.qcow2`), 'write -P 0x5a 0 1M', 'write -P 0xa5 1536k 256k');
            ref.fill(0x5a, 0, 1 << 20);
            ref.fill(0xa5, 1536 << 10, 1792 << 10);
            await createImage(img, { backing: `b${n}.qcow2`, ...x });
          } else await createImage(img, { size, ...x });
          // The twin: the same image made and written by QEMU (discard → write -z: QEMU's
          // discard leaves partial clusters as they were, vmkit's zeroes them).
          const twin = p(`t${n}.qcow2`);
          if (overlay) qimg('create', '-q', '-f', 'qcow2', ...xo, '-b', `b${n}.qcow2`, '-F', 'qcow2', twin);
          else qimg('create', '-q', '-f', 'qcow2', ...xo, twin, String(size));
          const cmds: string[] = [];
          const before = overlay ? await readFile(p(`b${n}.qcow2`)) : undefined;
          const dev = await openImage(img);
          for (const o of ops) {
            const off = o.sector * 512;
            const len = Math.min(o.sectors * 512, size - off);
            cmds.push(o.kind === 'write' ? `write -P ${o.byte} ${off} ${len}` : `write -z ${off} ${len}`);
            if (o.kind === 'write') {
              const d = new Uint8Array(len).fill(o.byte);
              await dev.write(off, d);
              ref.set(d, off);
            } else {
              await (o.kind === 'zero' ? dev.writeZeroes(off, len) : dev.discard(off, len));
              ref.fill(0, off, off + len);
            }
          }
          expect(diff(await dev.read(0, size), ref)).toBe(-1);
          await dev.close();
          const c = qemuCheck(img);
          expect(c.corruptions ?? 0).toBe(0);
          expect(c.leaks ?? 0).toBe(0);
          const mine = await checkImage(img);
          expect([mine.corruptions, mine.leaks]).toEqual([0, 0]);
          await writeFile(p(`r${n}.raw`), ref);
          execFileSync('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'raw', img, p(`r${n}.raw`)]);
          qio(twin, ...cmds);
          execFileSync('qemu-img', ['compare', '-q', img, twin]);
          if (before) expect(Buffer.compare(await readFile(p(`b${n}.qcow2`)), before)).toBe(0);
        },
      ),
      { numRuns: 40 },
    );
  }, 240_000); // 40 runs of qemu-img create/check/compare + qemu-io: ~8 s alone, past 60 s on a machine at load 15

  it('reads compressed clusters (qemu-img convert -c) and rewrites over them consistently', async () => {
    const size = 1 << 20;
    const raw = new Uint8Array(size);
    for (let i = 0; i < size; i++) raw[i] = (i * 7 + (i >> 9)) & 0xff; // compressible but not trivial
    raw.fill(0, 256 << 10, 384 << 10);
    await writeFile(p('c.raw'), raw);
    qimg('convert', '-q', '-c', '-f', 'raw', '-O', 'qcow2', p('c.raw'), p('c.qcow2'));
    const dev = await openImage(p('c.qcow2'));
    const ext = await mapExtents(dev);
    expect(ext.some((e) => e.compressed)).toBe(true);
    expect(normalize(toQemuMap(ext))).toEqual(normalize(JSON.parse(qimg('map', '--output=json', p('c.qcow2'))) as QemuMapEntry[]));
    expect(diff(await dev.read(0, size), raw)).toBe(-1);
    const patch = new Uint8Array(4096).fill(0xee);
    await dev.write(70 * 1024, patch);
    raw.set(patch, 70 * 1024);
    await dev.write(512 << 10, new Uint8Array(64 << 10).fill(3));
    raw.fill(3, 512 << 10, 576 << 10);
    expect(diff(await dev.read(0, size), raw)).toBe(-1);
    await dev.close();
    expect(qemuCheck(p('c.qcow2'))).toMatchObject({ corruptions: 0, leaks: 0 });
    expect((await checkImage(p('c.qcow2'))).compressedClusters).toBeGreaterThan(0);
    await writeFile(p('c2.raw'), raw);
    execFileSync('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'raw', p('c.qcow2'), p('c2.raw')]);
  });

  it('reads and writes extended L2 images (subclusters) as QEMU does', async () => {
    qimg('create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=64k', p('xb.qcow2'), '2M');
    qio(p('xb.qcow2'), 'write -P 0x21 0 96k', 'write -P 0x22 130k 3k', 'write -z 300k 8k');
    qimg('create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=64k', '-b', 'xb.qcow2', '-F', 'qcow2', p('xt.qcow2'));
    qio(p('xt.qcow2'), 'write -P 0x31 4k 2k', 'write -P 0x32 62k 6k', 'write -z 128k 4k');
    expect(diff(await vmkitRaw(p('xt.qcow2')), await qemuRaw(p('xt.qcow2')))).toBe(-1);
    let dev = await openImage(p('xt.qcow2'), { readOnly: true });
    const ours = toQemuMap(await mapExtents(dev));
    await dev.close();
    expect(normalize(ours)).toEqual(normalize(JSON.parse(qimg('map', '--output=json', p('xt.qcow2'))) as QemuMapEntry[]));
    // vmkit writes: partial subclusters, zero subclusters, whole clusters.
    const expected = await qemuRaw(p('xt.qcow2'));
    dev = await openImage(p('xt.qcow2'));
    const w = async (off: number, len: number, v: number): Promise<void> => {
      const d = new Uint8Array(len).fill(v);
      await dev.write(off, d);
      expected.set(d, off);
    };
    await w(1024, 1024, 0x41);
    await w(140 << 10, 10 << 10, 0);
    await w(200 << 10, 3 << 10, 0x42);
    await w(1 << 20, 64 << 10, 0x43);
    await dev.writeZeroes(64 << 10, 64 << 10);
    expected.fill(0, 64 << 10, 128 << 10);
    expect(diff(await dev.read(0, dev.size), expected)).toBe(-1);
    await dev.close();
    expect(qemuCheck(p('xt.qcow2'))).toMatchObject({ corruptions: 0, leaks: 0 });
    expect(diff(await qemuRaw(p('xt.qcow2')), expected)).toBe(-1);
    // An extended-L2 image vmkit creates.
    await createImage(p('xv.qcow2'), { size: 1 << 20, extendedL2: true, clusterSize: 32768 });
    dev = await openImage(p('xv.qcow2'));
    await dev.write(5120, new Uint8Array(2048).fill(9));
    await dev.close();
    expect(qemuCheck(p('xv.qcow2'))).toMatchObject({ corruptions: 0, leaks: 0 });
    const q = await qemuRaw(p('xv.qcow2'));
    expect([q[5119], q[5120], q[7167], q[7168]]).toEqual([0, 9, 9, 0]);
  });

  it('check finds what qemu-img check finds: leaks and corruptions', async () => {
    await createImage(p('k.qcow2'), { size: 1 << 20 });
    const dev = await openImage(p('k.qcow2'));
    await dev.write(0, new Uint8Array(65536).fill(1));
    await dev.close();
    const h = await readFile(p('k.qcow2'));
    // Refcount block is the third cluster; bump the data cluster's refcount (leak) and zero the L1 table's (corruption).
    const dv = new DataView(h.buffer, h.byteOffset);
    const rb = 2 * 65536;
    const l1Cluster = Number(dv.getBigUint64(40)) / 65536;
    const l1e = Number(dv.getBigUint64(Number(dv.getBigUint64(40))) & 0x00ff_ffff_ffff_fe00n);
    const l2e = Number(dv.getBigUint64(l1e) & 0x00ff_ffff_ffff_fe00n);
    dv.setUint16(rb + (l2e / 65536) * 2, 2);
    dv.setUint16(rb + l1Cluster * 2, 0);
    await writeFile(p('k.qcow2'), h);
    const theirs = qemuCheck(p('k.qcow2'));
    const mine = await checkImage(p('k.qcow2'));
    expect(mine.leaks).toBe(theirs.leaks ?? 0);
    expect(mine.corruptions).toBeGreaterThan(0);
    expect(theirs.corruptions ?? 0).toBeGreaterThan(0);
    // Repair only the leak; the corruption stays.
    const r = await checkImage(p('k.qcow2'), { repairLeaks: true });
    expect(r.leaksFixed).toBe(1);
    expect((await checkImage(p('k.qcow2'))).leaks).toBe(0);
  });

  it('refuses backing loops and absurd depth, and never writes a backing layer', async () => {
    qimg('create', '-q', '-f', 'qcow2', p('la.qcow2'), '1M');
    qimg('create', '-q', '-f', 'qcow2', '-b', 'la.qcow2', '-F', 'qcow2', p('lb.qcow2'));
    qimg('rebase', '-u', '-b', 'lb.qcow2', '-F', 'qcow2', p('la.qcow2'));
    await expect(openImage(p('lb.qcow2'))).rejects.toMatchObject({ code: 'LIMIT' });
    await expect(openImage(p('la.qcow2'), { readOnly: true })).rejects.toMatchObject({ code: 'LIMIT' });
    qimg('create', '-q', '-f', 'qcow2', p('d0.qcow2'), '1M');
    for (let i = 1; i <= 5; i++) qimg('create', '-q', '-f', 'qcow2', '-b', `d${i - 1}.qcow2`, '-F', 'qcow2', p(`d${i}.qcow2`));
    await expect(openImage(p('d5.qcow2'), { maxDepth: 3 })).rejects.toMatchObject({ code: 'LIMIT' });
    const dev = await openImage(p('d5.qcow2'));
    expect(dev.backing?.readOnly).toBe(true);
    await expect(dev.backing!.write(0, new Uint8Array(512))).rejects.toMatchObject({ code: 'INVALID_STATE' });
    await dev.close();
  });

  it('grows the refcount table when the file outgrows it (512-byte clusters)', async () => {
    await createImage(p('g.qcow2'), { size: 32 << 20, clusterSize: 512 });
    const dev = await openImage(p('g.qcow2'));
    const tableBefore = (dev as unknown as { header: { refcountTableOffset: number } }).header.refcountTableOffset;
    const chunk = new Uint8Array(256 << 10);
    for (let i = 0; i < chunk.length; i++) chunk[i] = (i >> 9) + 1;
    const ref = new Uint8Array(32 << 20);
    for (let off = 0; off < (9 << 20); off += chunk.length) {
      await dev.write(off * 3 % (32 << 20), chunk);
      ref.set(chunk, off * 3 % (32 << 20));
    }
    expect((dev as unknown as { header: { refcountTableOffset: number } }).header.refcountTableOffset).not.toBe(tableBefore);
    await dev.close();
    expect(qemuCheck(p('g.qcow2'))).toMatchObject({ corruptions: 0, leaks: 0 });
    expect(await checkImage(p('g.qcow2'))).toMatchObject({ corruptions: 0, leaks: 0 });
    await writeFile(p('g.raw'), ref);
    execFileSync('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'raw', p('g.qcow2'), p('g.raw')]);
  });

  it('opens and writes a 4 TiB disk sparsely', async () => {
    const size = 4 * 2 ** 40;
    await createImage(p('big.qcow2'), { size });
    const dev = await openImage(p('big.qcow2'));
    await dev.write(size - 512, new Uint8Array(512).fill(0xfe));
    await dev.write(2 ** 41 + 4096, new Uint8Array(4096).fill(0xfd));
    expect((await dev.read(size - 1024, 1024))[1023]).toBe(0xfe);
    const m = await mapExtents(dev);
    expect(m.filter((e) => e.kind === 'data').map((e) => [e.offset, e.length])).toEqual([
      [2 ** 41, 65536],
      [size - 65536, 65536],
    ]);
    await dev.close();
    expect(normalize(JSON.parse(qimg('map', '--output=json', p('big.qcow2'))) as QemuMapEntry[]).filter((e) => e.data).map((e) => [e.start, e.length])).toEqual([
      [2 ** 41, 65536],
      [size - 65536, 65536],
    ]);
    expect(JSON.parse(qimg('info', '--output=json', p('big.qcow2')))['virtual-size']).toBe(size);
    expect(qemuCheck(p('big.qcow2'))).toMatchObject({ corruptions: 0, leaks: 0 });
    execFileSync('qemu-io', ['-c', `read -P 0xfe ${size - 512} 512`, '-c', `read -P 0xfd ${2 ** 41 + 4096} 4096`, p('big.qcow2')]);
  });

  it('reads version 2 images (read-only); reads, writes and checks images with internal snapshots as QEMU does', async () => {
    qimg('create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', p('v2.qcow2'), '2M');
    qio(p('v2.qcow2'), 'write -P 0x61 0 70k', 'write -P 0x62 1M 4k');
    expect(diff(await vmkitRaw(p('v2.qcow2')), await qemuRaw(p('v2.qcow2')))).toBe(-1);
    await expect(openImage(p('v2.qcow2'))).rejects.toMatchObject({ code: 'UNSUPPORTED' });
    expect(await checkImage(p('v2.qcow2'))).toMatchObject({ corruptions: 0, leaks: 0 });
    qimg('create', '-q', '-f', 'qcow2', p('snap.qcow2'), '2M');
    qio(p('snap.qcow2'), 'write -P 0x71 0 128k');
    qimg('snapshot', '-c', 's1', p('snap.qcow2'));
    qio(p('snap.qcow2'), 'write -P 0x72 64k 64k', 'write -P 0x73 1M 64k');
    expect(diff(await vmkitRaw(p('snap.qcow2')), await qemuRaw(p('snap.qcow2')))).toBe(-1);
    const r = await checkImage(p('snap.qcow2'));
    expect([r.corruptions, r.leaks]).toEqual([0, 0]);
    expect(qemuCheck(p('snap.qcow2'))).toMatchObject({ corruptions: 0, leaks: 0 });
    // Writing shares nothing with the snapshot: shared L2 tables and clusters are copied.
    const atSnapshot = await qemuRaw(p('snap.qcow2')); // the contents snapshot s2 records
    qimg('snapshot', '-c', 's2', p('snap.qcow2'));
    const dev = await openImage(p('snap.qcow2'));
    await dev.write(0, new Uint8Array(4096).fill(0x81));
    await dev.write(1 << 20, new Uint8Array(65536).fill(0x82));
    await dev.writeZeroes(64 << 10, 64 << 10);
    await dev.write(1536 << 10, new Uint8Array(512).fill(0x83));
    const now = await dev.read(0, dev.size);
    await dev.close();
    expect(qemuCheck(p('snap.qcow2'))).toMatchObject({ corruptions: 0, leaks: 0 });
    expect(await checkImage(p('snap.qcow2'))).toMatchObject({ corruptions: 0, leaks: 0 });
    expect(diff(await qemuRaw(p('snap.qcow2')), now)).toBe(-1);
    qimg('snapshot', '-a', 's2', p('snap.qcow2'));
    expect(diff(await qemuRaw(p('snap.qcow2')), atSnapshot)).toBe(-1);
    expect(qemuCheck(p('snap.qcow2'))).toMatchObject({ corruptions: 0, leaks: 0 });
  });

  it('writes images with other refcount widths and metadata preallocation that QEMU made', async () => {
    for (const opts of ['refcount_bits=1', 'refcount_bits=64', 'preallocation=metadata', 'cluster_size=4096,refcount_bits=8']) {
      const f = p(`o-${opts.replace(/[=,]/g, '_')}.qcow2`);
      qimg('create', '-q', '-f', 'qcow2', '-o', opts, f, '3M');
      qio(f, 'write -P 0x13 64k 64k');
      const dev = await openImage(f);
      await dev.write(4096, new Uint8Array(8192).fill(0x14));
      await dev.write(2 << 20, new Uint8Array(200 << 10).fill(0x15));
      await dev.writeZeroes(64 << 10, 64 << 10);
      const mine = await dev.read(0, dev.size);
      const m = toQemuMap(await mapExtents(dev));
      await dev.close();
      expect(qemuCheck(f), opts).toMatchObject({ corruptions: 0, leaks: 0 });
      expect(await checkImage(f)).toMatchObject({ corruptions: 0, leaks: 0 });
      expect(diff(mine, await qemuRaw(f))).toBe(-1);
      expect(normalize(m), opts).toEqual(normalize(JSON.parse(qimg('map', '--output=json', f)) as QemuMapEntry[]));
    }
  });

  it('stacks a qcow2 overlay on a raw base', async () => {
    qimg('create', '-q', '-f', 'raw', p('rb.raw'), '1M');
    execFileSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5c 0 1M', p('rb.raw')]);
    await createImage(p('rt.qcow2'), { backing: 'rb.raw' });
    expect(JSON.parse(qimg('info', '--output=json', p('rt.qcow2')))['backing-filename-format']).toBe('raw');
    const dev = await openImage(p('rt.qcow2'));
    expect(dev.backing?.format).toBe('raw');
    await dev.write(4096, new Uint8Array(4096).fill(0x5d));
    await dev.close();
    expect(diff(await vmkitRaw(p('rt.qcow2')), await qemuRaw(p('rt.qcow2')))).toBe(-1);
    expect((await qemuRaw(p('rt.qcow2')))[4096]).toBe(0x5d);
    expect(qemuCheck(p('rt.qcow2'))).toMatchObject({ corruptions: 0, leaks: 0 });
  });

  it('writes compressed clusters that QEMU reads, maps and checks', async () => {
    const size = 2 << 20;
    await createImage(p('wc.qcow2'), { size });
    const dev = (await openImage(p('wc.qcow2'))) as Qcow2Device;
    const ref = new Uint8Array(size);
    for (let i = 0; i < size; i++) ref[i] = ((i >> 10) * 13 + (i & 7)) & 0xff;
    ref.fill(0, 512 << 10, 640 << 10); // zero clusters stay zero clusters
    const noise = new Uint8Array(65536);
    let s = 7;
    for (let i = 0; i < noise.length; i++) noise[i] = (s = (Math.imul(s, 1103515245) + 12345) >>> 0) >>> 24;
    ref.set(noise, 1 << 20); // incompressible: written plainly
    await dev.writeCompressed(0, ref);
    expect(await dev.blockStatus(0, 65536)).toMatchObject({ kind: 'data', compressed: true });
    expect(await dev.blockStatus(512 << 10, 65536)).toMatchObject({ kind: 'zero' });
    expect((await dev.blockStatus(1 << 20, 65536)).compressed).toBeUndefined();
    expect(diff(await dev.read(0, size), ref)).toBe(-1);
    // Overwrite parts of compressed clusters: they are decompressed into new clusters.
    await dev.write(65536 + 4096, new Uint8Array(512).fill(0xab));
    ref.fill(0xab, 65536 + 4096, 65536 + 4608);
    await dev.writeCompressed(3 * 65536, ref.subarray(0, 65536));
    ref.copyWithin(3 * 65536, 0, 65536);
    await dev.close();
    expect(qemuCheck(p('wc.qcow2'))).toMatchObject({ corruptions: 0, leaks: 0 });
    expect(await checkImage(p('wc.qcow2'))).toMatchObject({ corruptions: 0, leaks: 0 });
    await writeFile(p('wc.raw'), ref);
    execFileSync('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'raw', p('wc.qcow2'), p('wc.raw')]);
    const info = JSON.parse(qimg('check', '--output=json', p('wc.qcow2'))) as { 'compressed-clusters'?: number };
    expect(info['compressed-clusters']).toBeGreaterThan(10);
  });
});
