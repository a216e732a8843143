// qcow2 on memory stores (Node and Chromium): compressed clusters (zlib in Node,
// DecompressionStream in browsers), chains by name, zero detection, discard,
// the write guard, and the consistency check after every kind of write.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MemoryProvider, MemoryStorage } from '../bindings/disk/backends/memory.js';
import { createImage, openImage, checkImage, loadFormat } from '../bindings/disk/image.js';
import { mapExtents } from '../bindings/disk/device.js';
import { VmkitError } from '../bindings/errors.js';
import type { Qcow2Device } from '../bindings/disk/formats/qcow2/device.js';
import { blockDeviceContract } from './_block-device-contract.js';

blockDeviceContract('qcow2', { clusterSizes: [4096, 65536], backing: true });

/** True when equal (toEqual on a megabyte takes seconds). */
function same(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Index of the first differing word in [from, to), or -1. */
function firstDiff32(a: Uint32Array, b: Uint32Array, from: number, to: number): number {
  for (let i = from; i < to; i++) if (a[i] !== b[i]) return i;
  return -1;
}

async function deflateRaw(b: Uint8Array): Promise<Uint8Array> {
  const cs = new CompressionStream('deflate-raw' as CompressionFormat);
  const out = new Response(new Blob([b as Uint8Array<ArrayBuffer>]).stream().pipeThrough(cs));
  return new Uint8Array(await out.arrayBuffer());
}

describe('qcow2 on memory stores', () => {
  it('reads a compressed cluster and keeps refcounts right when it is overwritten', async () => {
    const provider = new MemoryProvider();
    await createImage('c.qcow2', { provider, size: 256 << 10 });
    const dev0 = await openImage('c.qcow2', { provider });
    await dev0.write(0, new Uint8Array(65536).fill(1)); // allocates the L2 table
    await dev0.close();
    const plain = new Uint8Array(65536).map((_, i) => (i * 31) >> 7);
    const z = await deflateRaw(plain);
    const store = provider.stores.get('c.qcow2')!;
    const bytes = store.bytes();
    const dv = new DataView(bytes.buffer, bytes.byteOffset);
    // Compressed data at an unaligned offset in a new cluster at the end of the file.
    const fileEnd = bytes.length;
    const host = fileEnd + 1000;
    await store.write(host, z);
    await store.truncate(fileEnd + 65536);
    const l1 = Number(dv.getBigUint64(40));
    const l2 = Number(new DataView(store.bytes().buffer).getBigUint64(l1) & 0x00ff_ffff_ffff_fe00n);
    const sectors = Math.floor((host + z.length - 1) / 512) - Math.floor(host / 512);
    const entry = (1n << 62n) | (BigInt(sectors) << 54n) | BigInt(host);
    const e = new Uint8Array(8);
    new DataView(e.buffer).setBigUint64(0, entry);
    await store.write(l2 + 8, e); // guest cluster 1
    // Refcount of the new host cluster (16-bit entries in the block at cluster 2).
    const rc = new Uint8Array([0, 1]);
    await store.write(2 * 65536 + (fileEnd / 65536) * 2, rc);
    expect(await checkImage('c.qcow2', { provider })).toMatchObject({ corruptions: 0, leaks: 0, compressedClusters: 1 });
    const dev = await openImage('c.qcow2', { provider });
    expect(await dev.read(65536, 65536)).toEqual(plain);
    expect((await dev.blockStatus(65536, 65536)).compressed).toBe(true);
    await dev.write(65536 + 512, new Uint8Array(512).fill(9));
    plain.fill(9, 512, 1024);
    expect(await dev.read(65536, 65536)).toEqual(plain);
    expect((await dev.blockStatus(65536, 65536)).compressed).toBeUndefined();
    await dev.close();
    const r = await checkImage('c.qcow2', { provider });
    expect([r.corruptions, r.leaks, r.compressedClusters]).toEqual([0, 0, 0]);
  });

  it('broken compressed data is CORRUPT with the host offset', async () => {
    const provider = new MemoryProvider();
    await createImage('c.qcow2', { provider, size: 128 << 10 });
    const d = await openImage('c.qcow2', { provider });
    await d.write(0, new Uint8Array(512).fill(1));
    await d.close();
    const store = provider.stores.get('c.qcow2')!;
    const b = store.bytes();
    const l1 = Number(new DataView(b.buffer, b.byteOffset).getBigUint64(40));
    const l2 = Number(new DataView(b.buffer, b.byteOffset).getBigUint64(l1) & 0x00ff_ffff_ffff_fe00n);
    const host = b.length;
    await store.write(host, new Uint8Array(512).fill(0xff));
    const e = new Uint8Array(8);
    new DataView(e.buffer).setBigUint64(0, (1n << 62n) | BigInt(host));
    await store.write(l2 + 8, e);
    const dev = await openImage('c.qcow2', { provider, readOnly: true });
    const err = await dev.read(65536, 512).catch((x: unknown) => x);
    expect(err).toBeInstanceOf(VmkitError);
    expect(err).toMatchObject({ code: 'CORRUPT', offset: host });
    await dev.close();
  });

  it('chains by name, zero detection, discard and the write guard', async () => {
    const provider = new MemoryProvider();
    await createImage('vm/base.qcow2', { provider, size: 1 << 20, clusterSize: 4096 });
    const base = await openImage('vm/base.qcow2', { provider });
    await base.write(0, new Uint8Array(1 << 20).fill(0x11));
    await base.close();
    await createImage('vm/top.qcow2', { provider, backing: 'base.qcow2', clusterSize: 4096 });
    const ops: string[] = [];
    let fenced = false;
    const top = await openImage('vm/top.qcow2', {
      provider,
      guard: {
        check(op) {
          ops.push(op);
          if (fenced) throw new VmkitError('FENCED', 'stale owner');
        },
      },
    });
    expect(top.backing?.size).toBe(1 << 20);
    // Whole zero clusters become zero clusters, not data.
    await top.write(0, new Uint8Array(8192));
    expect(await top.blockStatus(0, 8192)).toMatchObject({ kind: 'zero', depth: 0 });
    await top.write(8192, new Uint8Array(4096).fill(0x22));
    expect(await top.blockStatus(8192, 4096)).toMatchObject({ kind: 'data', depth: 0 });
    expect(await top.blockStatus(12288, 4096)).toMatchObject({ kind: 'data', depth: 1 });
    // Discard with a backing file must not let the backing shine through.
    await top.discard(8192, 4096);
    expect((await top.read(8192, 4096)).every((x) => x === 0)).toBe(true);
    expect((await top.read(16384, 512))[0]).toBe(0x11);
    await top.writeZeroes(20480, 1024); // partial cluster: written as data
    const r = await top.read(20480, 2048);
    expect([r[0], r[1023], r[1024]]).toEqual([0, 0, 0x11]);
    expect(ops).toContain('write');
    expect(ops).toContain('discard');
    fenced = true;
    await expect(top.write(0, new Uint8Array(512).fill(1))).rejects.toMatchObject({ code: 'FENCED' });
    fenced = false;
    const ext = await mapExtents(top);
    expect(ext[0]).toMatchObject({ offset: 0, length: 12288, kind: 'zero', depth: 0 }); // the discarded cluster too
    await top.close();
    expect(await checkImage('vm/top.qcow2', { provider })).toMatchObject({ corruptions: 0, leaks: 0 });
    expect(await checkImage('vm/base.qcow2', { provider })).toMatchObject({ corruptions: 0, leaks: 0 });
  });
  it('writes compressed clusters and reads them back (zlib in Node, CompressionStream in browsers)', async () => {
    const provider = new MemoryProvider();
    await createImage('z.qcow2', { provider, size: 1 << 20, clusterSize: 4096 });
    const dev = (await openImage('z.qcow2', { provider })) as Qcow2Device;
    const data = new Uint8Array(1 << 20).map((_, i) => (i >> 6) & 0xff);
    await dev.writeCompressed(0, data);
    expect((await dev.blockStatus(8192, 4096)).compressed).toBe(true);
    expect(same(await dev.read(0, 1 << 20), data)).toBe(true);
    await dev.write(4096 * 10, new Uint8Array(4096).fill(1)); // frees a compressed cluster's share
    data.fill(1, 40960, 45056);
    await dev.close();
    const r = await checkImage('z.qcow2', { provider });
    expect([r.corruptions, r.leaks]).toEqual([0, 0]);
    expect(r.compressedClusters).toBe(255);
    const again = await openImage('z.qcow2', { provider, readOnly: true });
    expect(same(await again.read(0, 1 << 20), data)).toBe(true);
    await again.close();
  });
  it('writes zstd-compressed clusters (compression_type=zstd, the wasm encoder) and reads them back', async () => {
    const provider = new MemoryProvider();
    await createImage('zs.qcow2', { provider, size: 1 << 20, clusterSize: 4096, compressionType: 'zstd' });
    const dev = (await openImage('zs.qcow2', { provider })) as Qcow2Device;
    const data = new Uint8Array(1 << 20).map((_, i) => (i >> 6) & 0xff);
    await dev.writeCompressed(0, data);
    expect((await dev.blockStatus(8192, 4096)).compressed).toBe(true);
    await dev.close();
    const r = await checkImage('zs.qcow2', { provider });
    expect([r.corruptions, r.leaks, r.compressedClusters]).toEqual([0, 0, 256]);
    const again = await openImage('zs.qcow2', { provider, readOnly: true });
    expect(same(await again.read(0, 1 << 20), data)).toBe(true);
    expect((await again.info()).specific?.compressionType).toBe('zstd');
    await again.close();
  });
  it('a crash after any write leaves an image with no corruption (leaks at most) and loses nothing completed (writethrough) or flushed (writeback)', async () => {
    // Power loss: writes after the N-th never reach the store.
    class Crashing extends MemoryStorage {
      left = Infinity;
      override async write(offset: number, data: Uint8Array): Promise<void> {
        if (this.left-- <= 0) throw new Error('power lost');
        return super.write(offset, data);
      }
      override async truncate(size: number): Promise<void> {
        if (this.left-- <= 0) throw new Error('power lost');
        return super.truncate(size);
      }
    }
    const SIZE = 4 << 20;
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ sector: fc.nat(8191), sectors: fc.integer({ min: 1, max: 600 }), kind: fc.constantFrom('w', 'w', 'z', 'd', 'c', 'f') }), { minLength: 1, maxLength: 25 }),
        fc.nat(3000),
        fc.constantFrom(512, 4096, 16384),
        fc.constantFrom('writethrough' as const, 'writeback' as const),
        async (ops, crashAfter, cs, mode) => {
          // 512-byte clusters with 64-bit refcounts soon outgrow the refcount table (it covers
          // 2 MiB of file); 16 KiB ones use extended L2 entries.
          const ext = cs === 16384;
          const provider = new MemoryProvider();
          await createImage('x.qcow2', { provider, size: SIZE, clusterSize: cs, ...(ext ? { extendedL2: true } : cs === 512 ? { refcountBits: 64 } : {}) });
          const store = new Crashing('x.qcow2', provider.stores.get('x.qcow2')!.bytes().slice());
          const dev = (await (await loadFormat('qcow2')).open(store, {})) as Qcow2Device;
          // Bring a 512-byte-cluster file close to what its refcount table covers, so the
          // crash window includes the table's growth.
          if (cs === 512) await dev.write(0, new Uint8Array(1800 << 10).fill(0x7e));
          await dev.setCacheMode(mode);
          // What the image must hold after the crash outside `touched`: in writethrough mode
          // every completed request, in writeback mode what the last flush saw.
          const cur = new Uint8Array(SIZE);
          if (cs === 512) cur.fill(0x7e, 0, 1800 << 10);
          let durable = mode === 'writethrough' ? cur : cur.slice();
          const touched = new Uint8Array(SIZE / 512);
          store.left = crashAfter;
          try {
            for (const o of ops) {
              let off = o.sector * 512;
              let len = Math.min(o.sectors * 512, SIZE - off);
              if (o.kind === 'c') {
                if (ext) continue;
                off = Math.floor(off / cs) * cs;
                len = cs;
              }
              if (mode === 'writethrough') touched.fill(0);
              if (o.kind !== 'f') touched.fill(1, off / 512, (off + len) / 512);
              if (o.kind === 'w') await dev.write(off, new Uint8Array(len).fill(o.sector & 255 | 1));
              else if (o.kind === 'z') await dev.writeZeroes(off, len);
              else if (o.kind === 'd') await dev.discard(off, len);
              else if (o.kind === 'c') await dev.writeCompressed(off, new Uint8Array(cs).fill(o.sectors));
              else await dev.flush();
              if (o.kind === 'w') cur.fill(o.sector & 255 | 1, off, off + len);
              else if (o.kind === 'z' || o.kind === 'd') cur.fill(0, off, off + len);
              else if (o.kind === 'c') cur.fill(o.sectors & 255, off, off + len);
              else if (mode === 'writeback') {
                durable = cur.slice();
                touched.fill(0);
              }
            }
          } catch (e) {
            if ((e as Error).message !== 'power lost') throw e;
          }
          provider.stores.set('after.qcow2', new MemoryStorage('after.qcow2', store.bytes().slice()));
          const r = await checkImage('after.qcow2', { provider });
          expect(r.messages.filter((m) => m.severity !== 'leak')).toEqual([]);
          const again = await openImage('after.qcow2', { provider, readOnly: true });
          const got = await again.read(0, SIZE);
          await again.close();
          const g32 = new Uint32Array(got.buffer, got.byteOffset, SIZE / 4);
          const d32 = new Uint32Array(durable.buffer, durable.byteOffset, SIZE / 4);
          for (let sec = 0; sec < SIZE / 512; ) {
            if (touched[sec]) {
              sec++;
              continue;
            }
            let end = sec;
            while (end < SIZE / 512 && !touched[end]) end++;
            const w = firstDiff32(g32, d32, sec * 128, end * 128);
            if (w >= 0) expect.fail(`${mode}, ${cs}-byte clusters: sector ${Math.floor(w / 128)} lost what was ${mode === 'writethrough' ? 'completed' : 'flushed'} before the crash`);
            sec = end;
          }
        },
      ),
      { numRuns: 100 },
    );
  });
  it('a crash at every write around a refcount table growth leaves no corruption', async () => {
    const provider = new MemoryProvider();
    await createImage('g.qcow2', { provider, size: 4 << 20, clusterSize: 512, refcountBits: 64 });
    const pristine = provider.stores.get('g.qcow2')!.bytes().slice();
    const log: number[] = [];
    const run = async (crashAt: number): Promise<Uint8Array> => {
      let n = 0;
      const store = new (class extends MemoryStorage {
        override async write(offset: number, data: Uint8Array): Promise<void> {
          if (n++ >= crashAt) throw new Error('power lost');
          if (crashAt === Infinity) log.push(offset);
          return super.write(offset, data);
        }
      })('g.qcow2', pristine.slice());
      const dev = await (await loadFormat('qcow2')).open(store, {});
      try {
        for (let i = 0; i < 8; i++) await dev.write(i * (400 << 10), new Uint8Array(300 << 10).fill(i + 1));
      } catch (e) {
        if ((e as Error).message !== 'power lost') throw e;
      }
      return store.bytes().slice();
    };
    await run(Infinity);
    const switchAt = log.indexOf(48); // the header's refcount_table_offset
    expect(switchAt).toBeGreaterThan(0);
    for (let k = switchAt - 40; k <= switchAt + 40; k++) {
      provider.stores.set('c.qcow2', new MemoryStorage('c.qcow2', await run(k)));
      const r = await checkImage('c.qcow2', { provider });
      expect(r.messages.filter((m) => m.severity !== 'leak'), `crash after write ${k}`).toEqual([]);
    }
  });
});
