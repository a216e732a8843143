// VMDK streamOptimized against qemu-img: what `qemu-img convert -O vmdk -o
// subformat=streamOptimized` makes reads back equal to `qemu-img convert -O
// raw`; a stream laid out as VMware's OVF tools write it (grain directory
// and tables behind markers at the end, header in a footer, end-of-stream
// marker) reads equal to what QEMU reads from it; a stream opens read-only;
// damage is refused with the offset.
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { deflateSync } from 'node:zlib';
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { needTool } from './_tools.js';
import { damagedImageRound } from './_damaged-image.js';
import { diff, qemuCheck, qemuIo, qemuRaw, qimg, vmkitRaw } from './_qemu-img.js';
import { openImage, checkImage } from '../bindings/disk/image.js';
import { MemoryProvider, MemoryStorage } from '../bindings/disk/backends/memory.js';
import fc from 'fast-check';
import { mapExtents } from '../bindings/disk/device.js';
import { writeStream } from '../bindings/disk/formats/vmdk/index.js';
import { FileStorage } from '../bindings/disk/backends/file.js';
import { encodeVmdkHeader, FLAG_COMPRESS, FLAG_MARKER, FLAG_NL_DETECT } from '../bindings/disk/formats/vmdk/header.js';

const hasQemu = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
let dir = '';
const p = (n: string): string => join(dir, n);

/** A streamOptimized file as VMware writes it, holding `disk` (grains of 64 KiB; all-zero grains left out). */
function vmwareStream(disk: Uint8Array, name: string): Uint8Array {
  const gs = 128;
  const gb = gs * 512;
  const capacity = disk.length / 512;
  const grains = Math.ceil(disk.length / gb);
  const gdEntries = Math.ceil(grains / 512);
  const parts: Uint8Array[] = [];
  let sec = 0;
  const push = (b: Uint8Array): number => {
    const padded = new Uint8Array(Math.ceil(b.length / 512) * 512);
    padded.set(b);
    parts.push(padded);
    const at = sec;
    sec += padded.length / 512;
    return at;
  };
  const hdr = (gdOffset: bigint): Uint8Array => {
    const b = encodeVmdkHeader({
      version: 3, flags: FLAG_NL_DETECT | FLAG_COMPRESS | FLAG_MARKER, capacity, grainSize: gs, descriptorOffset: 1, descriptorSize: 2,
      numGTEsPerGT: 512, rgdOffset: 0, gdOffset: 0, overHead: 128, uncleanShutdown: 0, compressAlgorithm: 1,
    });
    new DataView(b.buffer).setBigUint64(56, gdOffset, true);
    return b;
  };
  const marker = (sectors: number, type: number): Uint8Array => {
    const m = new Uint8Array(512);
    const dv = new DataView(m.buffer);
    dv.setBigUint64(0, BigInt(sectors), true);
    dv.setUint32(12, type, true);
    return m;
  };
  push(hdr(0xffff_ffff_ffff_ffffn));
  const desc = `# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="streamOptimized"\n\n# Extent description\nRDONLY ${capacity} SPARSE "${name}"\n\n# The Disk Data Base\n#DDB\nddb.adapterType = "lsilogic"\n`;
  push(new TextEncoder().encode(desc).slice(0, 1024));
  while (sec < 128) push(new Uint8Array(512));
  const gte = new Uint32Array(gdEntries * 512);
  for (let g = 0; g < grains; g++) {
    const data = disk.subarray(g * gb, Math.min((g + 1) * gb, disk.length));
    if (data.every((x) => x === 0)) continue;
    const z = deflateSync(data);
    const m = new Uint8Array(12 + z.length);
    const dv = new DataView(m.buffer);
    dv.setBigUint64(0, BigInt(g * gs), true);
    dv.setUint32(8, z.length, true);
    m.set(z, 12);
    gte[g] = push(m);
  }
  const gd = new Uint32Array(gdEntries);
  for (let t = 0; t < gdEntries; t++) {
    push(marker(4, 1));
    gd[t] = push(new Uint8Array(gte.buffer, t * 2048, 2048).slice());
  }
  push(marker(Math.ceil((gdEntries * 4) / 512), 2));
  const gdAt = push(new Uint8Array(gd.buffer).slice());
  push(marker(1, 3));
  push(hdr(BigInt(gdAt)));
  push(marker(0, 0));
  const out = new Uint8Array(sec * 512);
  let o = 0;
  for (const b of parts) {
    out.set(b, o);
    o += b.length;
  }
  return out;
}

describe.skipIf(!hasQemu)('vmdk streamOptimized', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmkit-vmdks-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads what qemu-img convert -o subformat=streamOptimized makes, from qcow2 and raw sources', async () => {
    qimg('create', '-q', '-f', 'qcow2', p('src.qcow2'), '20M');
    qemuIo('qcow2', p('src.qcow2'), 'write -P 0xab 0 64k', 'write -P 0x55 100k 8k', 'write -P 0x33 2M 3M', 'write -P 0x77 20967424 4096', 'write -z 8M 1M');
    // A source with incompressible data too.
    const raw = new Uint8Array(await qemuRaw(p('src.qcow2'), 'qcow2'));
    for (let i = 12 << 20; i < (13 << 20); i++) raw[i] = (i * 2654435761) >>> 24;
    await writeFile(p('src.raw'), raw);
    for (const [src, fmt] of [['src.qcow2', 'qcow2'], ['src.raw', 'raw']] as const) {
      const out = p(`${fmt}.stream.vmdk`);
      qimg('convert', '-f', fmt, '-O', 'vmdk', '-o', 'subformat=streamOptimized', p(src), out);
      const ours = await vmkitRaw(out);
      expect(diff(ours, await qemuRaw(out, 'vmdk')), fmt).toBe(-1);
      expect(diff(ours, await qemuRaw(p(src), fmt)), fmt).toBe(-1);
      expect((await checkImage(out)).corruptions).toBe(0);
      const dev = await openImage(out);
      expect(dev.readOnly).toBe(true);
      await expect(dev.write(0, new Uint8Array(512))).rejects.toMatchObject({ code: 'UNSUPPORTED' });
      const m = await mapExtents(dev);
      expect(m.some((e) => e.kind === 'data' && e.compressed)).toBe(true);
      expect((await dev.info()).specific?.createType).toBe('streamOptimized');
      await dev.close();
    }
  });

  it('reads a VMware-style stream (directory at the end, header in the footer) as QEMU reads it', async () => {
    const disk = new Uint8Array(3 * 1024 * 1024 + 512 * 5);
    disk.fill(0x11, 0, 70000);
    disk.fill(0x22, 1 << 20, (1 << 20) + 4096);
    for (let i = 2 << 20; i < disk.length; i += 7) disk[i] = i & 0xff;
    await writeFile(p('vmw.vmdk'), vmwareStream(disk, 'vmw.vmdk'));
    const theirs = await qemuRaw(p('vmw.vmdk'), 'vmdk');
    expect(diff(theirs, disk)).toBe(-1); // the fixture is what QEMU also reads
    expect(diff(await vmkitRaw(p('vmw.vmdk')), disk)).toBe(-1);
    expect((await checkImage(p('vmw.vmdk'))).corruptions).toBe(0);
    // A damaged grain marker (its sector number) is refused at the marker.
    const b = new Uint8Array(await readFile(p('vmw.vmdk')));
    const firstGrain = 128 * 512;
    b[firstGrain]! ^= 0x80;
    await writeFile(p('bad.vmdk'), b);
    await expect(vmkitRaw(p('bad.vmdk'))).rejects.toMatchObject({ code: 'CORRUPT', offset: firstGrain });
    expect((await checkImage(p('bad.vmdk'))).corruptions).toBe(1);
    // A lost footer is refused at its place.
    await writeFile(p('nofoot.vmdk'), b.subarray(0, b.length - 1536));
    await expect(vmkitRaw(p('nofoot.vmdk'))).rejects.toMatchObject({ code: 'CORRUPT' });
    expect(qemuCheck(p('vmw.vmdk')).corruptions).toBe(0);
  });
});

describe.skipIf(!hasQemu)('vmdk streamOptimized writing', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmkit-vmdkw-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('streams vmkit writes pass qemu-img check, compare equal to the source, and read back', async () => {
    qimg('create', '-q', '-f', 'qcow2', p('src.qcow2'), String(20 * 1024 * 1024 + 512 * 9));
    qemuIo('qcow2', p('src.qcow2'), 'write -P 0xab 0 64k', 'write -P 0x55 100k 8k', 'write -P 0x33 2M 3M', 'write -P 0x77 20967424 4096', 'write -z 8M 1M');
    const raw = new Uint8Array(await qemuRaw(p('src.qcow2'), 'qcow2'));
    for (let i = 12 << 20; i < (13 << 20); i++) raw[i] = (Math.imul(i, 2654435761) >>> 24) & 0xff;
    raw.fill(0xee, raw.length - 4608); // the partial last grain
    await writeFile(p('src.raw'), raw);
    for (const [src, opts] of [['src.raw', {}], ['src.qcow2', { grainSize: 1 << 20 }]] as const) {
      const dev = await openImage(p(src), { readOnly: true });
      const out = p(`${src}.stream.vmdk`);
      const st = await FileStorage.create(out);
      const n = await writeStream(dev, st, opts);
      await st.close();
      await dev.close();
      expect(n).toBe((await readFile(out)).length);
      expect(qemuCheck(out)).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
      qimg('compare', '-q', '-f', src.endsWith('raw') ? 'raw' : 'qcow2', '-F', 'vmdk', p(src), out);
      const info = JSON.parse(qimg('info', '--output=json', out)) as { 'format-specific'?: { data?: { 'create-type'?: string } } };
      expect(info['format-specific']?.data?.['create-type']).toBe('streamOptimized');
      expect(diff(await vmkitRaw(out), await qemuRaw(p(src)))).toBe(-1);
      expect((await checkImage(out)).corruptions).toBe(0);
    }
    // Smaller than qemu-img's own stream of the same disk, within 5%.
    qimg('convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', p('src.raw'), p('q.vmdk'));
    const [ours, theirs] = [(await readFile(p('src.raw.stream.vmdk'))).length, (await readFile(p('q.vmdk'))).length];
    expect(ours / theirs).toBeLessThan(1.05);
  });
});

describe('vmdk streamOptimized under corrupted input', () => {
  it('opening, reading, mapping and checking damaged streams fail only with VmkitError', async () => {
    const disk = new Uint8Array(2 * 1024 * 1024);
    disk.fill(0x11, 0, 70000);
    for (let i = 1 << 20; i < disk.length; i += 5) disk[i] = i & 0xff;
    const bytes = vmwareStream(disk, 's.vmdk');
    const provider = new MemoryProvider();
    const codes = new Set(['CORRUPT', 'LIMIT', 'UNSUPPORTED', 'INTEGRITY', 'NOT_FOUND']);
    // Header, descriptor, the first grains and the metadata at the end.
    const zones = [[0, 512], [512, 1024], [128 * 512, 4096], [bytes.length - 4096, 4096]] as const;
    await fc.assert(
      fc.asyncProperty(fc.array(fc.record({ z: fc.nat(zones.length - 1), at: fc.nat(4095), v: fc.nat(255) }), { minLength: 1, maxLength: 6 }), async (muts) => {
        const b = bytes.slice();
        for (const m of muts) b[zones[m.z]![0] + (m.at % zones[m.z]![1])] = m.v;
        provider.stores.set('bad.vmdk', new MemoryStorage('bad.vmdk', b));
        await damagedImageRound(provider, 'bad.vmdk', { read: 1 << 20, map: 4 << 20, codes });
      }),
      { numRuns: 300 },
    );
  });
});
