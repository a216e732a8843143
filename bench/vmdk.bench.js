// VMDK throughput (docs/vmdk.md): vmkit's monolithicSparse device against QEMU's own tools on the
// same images, in the same run, all from the page cache (files in a temporary folder):
//  1. sequential read of a two-layer chain (base + delta, both written by qemu-io) in 1 MiB
//     requests: vmkit vs `qemu-img bench` and `qemu-img convert` to a null target;
//  2. 4 KiB reads of the chain: vmkit (random and strided) vs `qemu-img bench -s 4k` (strided);
//  3. 4 KiB writes to allocated grains, and 4 KiB writes that allocate grains in a fresh delta
//     (copy-on-write of a whole grain from the parent): vmkit vs `qemu-img bench -w`.
// QEMU figures include its process start (a few ms), measured on enough I/O to amortize it.
import { mkdtempSync, rmSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadCore, hasTool, runTool as q, timeRunsCpu as timeIt, rateTable as table, parityNotes, qemuChain } from './_lib.js';

/** The headline rows of RESULTS.md's opening table (bench/_summary.js): rows of this suite's own tables. */
export const SUMMARY = [
  { what: "VMDK sequential 1 MiB reads of a chain", section: "Sequential read of a 128 MiB two-layer chain (MB/s)", vmkit: "vmkit readInto 1 MiB, page-aligned buffer (sync I/O)", peer: "qemu-img bench -d 1 -s 1M" },
  { what: "VMDK 4 KiB writes allocating grains", section: "2048 × 4 KiB writes allocating 64 KiB grains in a fresh delta (IOPS)", vmkit: "vmkit allocating 4K write (sync I/O)", peer: "qemu-img bench -w -s 4k -S 64k (allocating)" },
];

const MiB = 2 ** 20;
const TITLE = 'vmdk: monolithicSparse read/write vs qemu-img';

export async function run(ctx) {
  if (!hasTool('qemu-img') || !hasTool('qemu-io')) return { title: TITLE, sections: [], notes: ['skipped: qemu-utils is not installed'] };
  await loadCore();
  const { openImage } = await import('../dist/disk/image.js');
  const { syncFileProvider } = await import('../dist/disk/backends/file.js');
  const { alignedBuffer } = await import('../dist/disk/index.js');
  const size = ctx.quick ? 32 * MiB : 128 * MiB;
  const reps = ctx.quick ? 3 : 7;
  const nRandom = ctx.quick ? 2000 : 10000;
  const dir = mkdtempSync(join(tmpdir(), 'vmkit-bench-vmdk-'));
  try {
    ctx.log(`building a ${size / MiB} MiB vmdk chain`);
    const { base, top } = qemuChain(dir, { format: 'vmdk', size });

    // 1. Sequential read of the chain.
    const dev = await openImage(top, { readOnly: true });
    const sdev = await openImage(top, { readOnly: true, provider: syncFileProvider });
    const buf = new Uint8Array(MiB);
    const abuf = alignedBuffer(MiB);
    const seqOf = (d, b = buf) => async () => {
      for (let off = 0; off < size; off += MiB) await d.readInto(off, b);
    };
    await seqOf(dev)();
    const seq = [
      { name: 'vmkit readInto 1 MiB', ...(await timeIt(reps, seqOf(dev))), amount: size },
      { name: 'vmkit readInto 1 MiB (sync I/O)', ...(await timeIt(reps, seqOf(sdev))), amount: size },
      { name: 'vmkit readInto 1 MiB, page-aligned buffer', ...(await timeIt(reps, seqOf(dev, abuf))), amount: size },
      { name: 'vmkit readInto 1 MiB, page-aligned buffer (sync I/O)', ...(await timeIt(reps, seqOf(sdev, abuf))), amount: size },
      { name: 'qemu-img bench -d 1 -s 1M', ...(await timeIt(reps, () => q('qemu-img', ['bench', '-d', '1', '-c', String(size / MiB), '-s', '1M', '-f', 'vmdk', top]))), amount: size },
      {
        name: 'qemu-img convert → null-co',
        ...(await timeIt(reps, () => q('qemu-img', ['convert', '-n', '--image-opts', `driver=vmdk,file.filename=${top}`, '--target-image-opts', `driver=null-co,size=${size}`]))),
        amount: size,
      },
    ];
    // 2. 4 KiB reads.
    const step = 257 * 4096;
    const b4 = new Uint8Array(4096);
    let r = 1;
    const randOf = (d) => async () => {
      for (let i = 0; i < nRandom; i++) {
        r = (Math.imul(r, 1103515245) + 12345) >>> 0;
        await d.readInto((r % (size / 4096)) * 4096, b4);
      }
    };
    const strideOf = (d) => async () => {
      let off = 0;
      for (let i = 0; i < nRandom; i++) {
        await d.readInto(off, b4);
        off = (off + step) % size;
      }
    };
    const rd = [
      { name: 'vmkit random 4K read', ...(await timeIt(reps, randOf(dev))), amount: nRandom },
      { name: 'vmkit random 4K read (sync I/O)', ...(await timeIt(reps, randOf(sdev))), amount: nRandom },
      { name: 'vmkit strided 4K read (sync I/O)', ...(await timeIt(reps, strideOf(sdev))), amount: nRandom },
      { name: 'qemu-img bench -d 1 -s 4k (strided)', ...(await timeIt(reps, () => q('qemu-img', ['bench', '-d', '1', '-c', String(nRandom), '-s', '4k', '-S', String(step), '-f', 'vmdk', top]))), amount: nRandom },
    ];
    await dev.close();
    await sdev.close();

    // 3a. 4 KiB writes to allocated grains (copies of the fully written base).
    const w4 = new Uint8Array(4096).fill(0x5a);
    const wv = join(dir, 'wv.vmdk');
    const wq = join(dir, 'wq.vmdk');
    copyFileSync(base, wv);
    copyFileSync(base, wq);
    const wdev = await openImage(wv, { provider: syncFileProvider });
    const strideW = (d) => async () => {
      let off = 0;
      for (let i = 0; i < nRandom; i++) {
        await d.write(off, w4);
        off = (off + step) % size;
      }
    };
    const wr = [
      {
        name: 'vmkit random 4K write (sync I/O)',
        ...(await timeIt(reps, async () => {
          for (let i = 0; i < nRandom; i++) {
            r = (Math.imul(r, 1103515245) + 12345) >>> 0;
            await wdev.write((r % (size / 4096)) * 4096, w4);
          }
        })),
        amount: nRandom,
      },
      { name: 'vmkit strided 4K write (sync I/O)', ...(await timeIt(reps, strideW(wdev))), amount: nRandom },
      { name: 'qemu-img bench -w -d 1 -s 4k (strided)', ...(await timeIt(reps, () => q('qemu-img', ['bench', '-w', '-d', '1', '-c', String(nRandom), '-s', '4k', '-S', String(step), '-f', 'vmdk', wq]))), amount: nRandom },
    ];
    await wdev.close();

    // 3b. Allocating 4 KiB writes: every write lands in a new grain of a fresh delta over the base
    // (read 64 KiB of the parent, write the whole grain, update both grain tables).
    const nAlloc = Math.min(nRandom, size / 65536);
    const av = join(dir, 'av.vmdk');
    const aq = join(dir, 'aq.vmdk');
    let adev;
    const fresh = (f) => () => {
      rmSync(f, { force: true });
      q('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', f], dir);
    };
    const alloc = [
      {
        name: 'vmkit allocating 4K write (sync I/O)',
        ...(await timeIt(
          reps,
          async () => {
            for (let i = 0; i < nAlloc; i++) await adev.write(i * 65536, w4);
            await adev.close();
          },
          async () => {
            fresh(av)();
            adev = await openImage(av, { provider: syncFileProvider });
          },
        )),
        amount: nAlloc,
      },
      {
        name: 'qemu-img bench -w -s 4k -S 64k (allocating)',
        ...(await timeIt(reps, () => q('qemu-img', ['bench', '-w', '-d', '1', '-c', String(nAlloc), '-s', '4k', '-S', '64k', '-f', 'vmdk', aq], dir), fresh(aq))),
        amount: nAlloc,
      },
    ];
    return {
      summary: SUMMARY,
      title: TITLE,
      sections: [
        { heading: `Sequential read of a ${size / MiB} MiB two-layer chain (MB/s)`, markdown: table(seq, 'bytes') },
        { heading: `${nRandom} × 4 KiB reads of the chain (IOPS)`, markdown: table(rd, 'ops') },
        { heading: `${nRandom} × 4 KiB writes to allocated grains (IOPS)`, markdown: table(wr, 'ops') },
        { heading: `${nAlloc} × 4 KiB writes allocating 64 KiB grains in a fresh delta (IOPS)`, markdown: table(alloc, 'ops') },
      ],
      notes: [
        ...parityNotes(seq, 'qemu-img bench -d 1 -s 1M', { default: 'the libuv thread-pool round trips (one per run of contiguous grains) and, into a plain Node buffer, the bounce copy (see alignedBuffer)' }),
        ...parityNotes(rd, 'qemu-img bench -d 1 -s 4k (strided)', { default: 'one libuv thread-pool round trip (~30 µs) per request at queue depth 1; with sync I/O the same code is above parity' }),
        ...parityNotes(wr, 'qemu-img bench -w -d 1 -s 4k (strided)'),
        ...parityNotes(alloc, 'qemu-img bench -w -s 4k -S 64k (allocating)'),
        'Medians of ' + reps + ' runs; files in the page cache; vmkit awaits each request (queue depth 1).',
        '"sync I/O" is syncFileProvider (readSync/writeSync; what `vmkit disk` uses); the others use node:fs callbacks on the descriptor (libuv thread pool).',
        'QEMU runs include its process start; qemu-img bench has no random pattern, so its 4 KiB runs are strided (step 257 × 4 KiB), vmkit runs both. The allocating runs include closing the image (flush).',
        'CPU/run is this process (every thread, the libuv pool too) or the peer process: where a single-threaded row\'s wall time is well above its CPU time, it waited for a core (a loaded machine), and the CPU ratio is the better guide to parity.',
      ],
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
