// qcow2 writes to allocated clusters skip the device's queue (they change no
// metadata) while allocating writes, discards and zero writes stay ordered.
// Hostile mix: waves of concurrent, overlapping 4 KiB and 64 KiB writes over
// allocated and unallocated clusters, with discards and zero writes of
// clusters being written in place at the same moment, every storage write
// held back a random few milliseconds so requests land out of issue order.
// Each 4 KiB block carries its own index in its tag, so data that landed in
// another guest cluster's storage shows. Afterwards `qemu-img check` is
// clean and every block reads back (through qemu-img and vmkit) whole and as
// one of the writes its last wave sent it. The storage sees more than one
// write in flight at once: the in-place path was taken (through the queue
// alone it never does).
import { describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { needTool } from './_tools.js';
import { qemuCheck, qemuIo, qemuRaw, qimg, vmkitRaw } from './_qemu-img.js';
import { openImage } from '../bindings/disk/image.js';
import { fileProvider } from '../bindings/disk/backends/file.js';
import type { Storage, StorageProvider } from '../bindings/disk/backends/storage.js';
import type { Qcow2Device } from '../bindings/disk/formats/qcow2/device.js';

const hasQemu = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
const K4 = 4096;
const CLUSTER = 65536;
const SIZE = 8 << 20;
const BLOCKS = SIZE / K4;

/** A 4 KiB block tagged with its index and a version (never all zero). */
function tagged(block: number, version: number): Uint8Array {
  const b = new Uint8Array(K4);
  new Uint32Array(b.buffer).fill(((block & 0xffff) << 16) | (version & 0xffff) | 0x80000000);
  return b;
}
const tagOf = (img: Uint8Array, block: number): number => new DataView(img.buffer, img.byteOffset + block * K4).getUint32(0, true);
/** The tag a block holds when it is uniform, else NaN (a torn or mixed block). */
function uniformTag(img: Uint8Array, block: number): number {
  const w = new Uint32Array(img.buffer, img.byteOffset + block * K4, K4 / 4);
  const t = w[0]!;
  for (let i = 1; i < w.length; i++) if (w[i] !== t) return NaN;
  return t;
}

/**
 * Counts writes in flight at once on the image file, and holds each for a random few
 * milliseconds first: an in-place write then often lands after requests issued later (a
 * discard, the allocation that reuses the cluster it freed), the race the queue must exclude.
 */
function countingProvider(stats: { inflight: number; max: number }, rnd: (n: number) => number): StorageProvider {
  return {
    ...fileProvider,
    open: async (name, o) => {
      const s = await fileProvider.open(name, o);
      const wrapped: Storage = Object.create(s) as Storage;
      wrapped.write = async (off, data) => {
        stats.max = Math.max(stats.max, ++stats.inflight);
        try {
          await new Promise((r) => setTimeout(r, rnd(4)));
          await s.write(off, data);
        } finally {
          stats.inflight--;
        }
      };
      return wrapped;
    },
    resolve: fileProvider.resolve,
    relative: fileProvider.relative,
    create: fileProvider.create,
  };
}

describe.skipIf(!hasQemu)('qcow2 in-place writes outside the queue', () => {
  it('waves of concurrent overlapping writes, allocations, discards and zero writes: qemu-img check clean, every block one of its last wave', async () => {
    const d = await mkdtemp(join(tmpdir(), 'vmkit-qcow2-inplace-'));
    const file = join(d, 'x.qcow2');
    qimg('create', '-q', '-f', 'qcow2', file, String(SIZE));
    // Every other cluster allocated to start with.
    const allowed: Set<number>[] = Array.from({ length: BLOCKS }, () => new Set([0]));
    const cmds: string[] = [];
    for (let c = 0; c < SIZE / CLUSTER; c += 2) cmds.push(`write -P 0x${(0x10 + (c % 64)).toString(16)} ${c * CLUSTER} ${CLUSTER}`);
    qemuIo('qcow2', file, ...cmds);
    for (let c = 0; c < SIZE / CLUSTER; c += 2) {
      const v = 0x10 + (c % 64);
      for (let k = 0; k < CLUSTER / K4; k++) allowed[c * (CLUSTER / K4) + k] = new Set([v * 0x01010101]);
    }
    let seed = 0x12345678;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return (seed >>> 8) % n;
    };
    const stats = { inflight: 0, max: 0 };
    // Writethrough (the default): each discard's free is applied at once, so the next allocation reuses the cluster.
    const dev = (await openImage(file, { provider: countingProvider(stats, rnd) })) as Qcow2Device;
    let version = 1;
    for (let wave = 0; wave < 40; wave++) {
      const touched = new Map<number, Set<number>>();
      const put = (block: number, tag: number): void => {
        (touched.get(block) ?? touched.set(block, new Set()).get(block)!).add(tag);
      };
      const ops: Promise<void>[] = [];
      // Mostly 4 KiB writes into a few hot clusters (overlaps guaranteed), some whole clusters,
      // some discards and zero writes of clusters those writes hit.
      const hot = Array.from({ length: 4 }, () => rnd(SIZE / CLUSTER));
      for (let i = 0; i < 48; i++) {
        const kind = rnd(20);
        const c = rnd(3) === 0 ? rnd(SIZE / CLUSTER) : hot[rnd(hot.length)]!;
        const v = version++ & 0x7fff;
        if (kind < 14) {
          const b = c * (CLUSTER / K4) + rnd(CLUSTER / K4);
          const data = tagged(b, v);
          put(b, tagOf(data, 0));
          ops.push(dev.write(b * K4, data));
        } else if (kind < 17) {
          const data = new Uint8Array(CLUSTER);
          for (let k = 0; k < CLUSTER / K4; k++) {
            const b = c * (CLUSTER / K4) + k;
            data.set(tagged(b, v), k * K4);
            put(b, tagOf(tagged(b, v), 0));
          }
          ops.push(dev.write(c * CLUSTER, data));
        } else if (kind < 19) {
          for (let k = 0; k < CLUSTER / K4; k++) put(c * (CLUSTER / K4) + k, 0);
          ops.push(dev.discard(c * CLUSTER, CLUSTER));
        } else {
          for (let k = 0; k < CLUSTER / K4; k++) put(c * (CLUSTER / K4) + k, 0);
          ops.push(dev.writeZeroes(c * CLUSTER, CLUSTER));
        }
      }
      await Promise.all(ops);
      for (const [b, tags] of touched) allowed[b] = tags;
      if (wave % 10 === 9) await dev.flush();
    }
    await dev.close();
    expect(stats.max, 'no two storage writes were ever in flight at once: the in-place path never ran').toBeGreaterThan(1);
    expect(qemuCheck(file)).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
    for (const img of [await qemuRaw(file), await vmkitRaw(file)]) {
      const bad: string[] = [];
      for (let b = 0; b < BLOCKS && bad.length < 5; b++) {
        const t = uniformTag(img, b);
        if (!allowed[b]!.has(t)) bad.push(`block ${b}: ${t.toString(16)} not in {${[...allowed[b]!].map((x) => x.toString(16)).join(',')}}`);
      }
      expect(bad).toEqual([]);
    }
    await rm(d, { recursive: true, force: true });
  }, 120_000);
});
