// `vmkit disk convert` (bindings/disk/convert.ts) against `qemu-img convert` for the pairs of
// issue 21, in the same run, files in the page cache: qcow2 → streamOptimized VMDK, that stream
// → qcow2, and VHDX → qcow2, on a disk with mixed data (compressible text-like runs,
// incompressible runs, zero runs and holes). Output sizes are compared too. Then compressed
// qcow2 writes (zstd with the wasm encoder, deflate with node:zlib) against `qemu-img convert -c`
// on the first sixteenth of that disk.
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadCore, hasTool, runTool as q, timeRunsCpu as timeIt, rateTable as table, parityNotes } from './_lib.js';

const MiB = 2 ** 20;
const TITLE = 'convert: vmkit disk convert vs qemu-img convert';

export async function run(ctx) {
  if (!hasTool('qemu-img') || !hasTool('qemu-io')) return { title: TITLE, sections: [], notes: ['skipped: qemu-utils is not installed'] };
  await loadCore();
  const { convertImage } = await import('../dist/disk/convert.js');
  const { syncFileProvider } = await import('../dist/disk/backends/file.js');
  const { createImage, openImage } = await import('../dist/disk/image.js');
  const size = ctx.quick ? 64 * MiB : 256 * MiB;
  const reps = ctx.quick ? 3 : 9;
  const dir = mkdtempSync(join(tmpdir(), 'vmkit-bench-convert-'));
  const p = (n) => join(dir, n);
  try {
    ctx.log(`building a ${size / MiB} MiB qcow2 with mixed data`);
    // Per 4 MiB: 1 MiB of text-like bytes (compressible), 1 MiB of pseudo-random bytes, 2 MiB of zeroes (holes in the qcow2).
    const { writeFileSync } = await import('node:fs');
    const raw = new Uint8Array(size);
    const words = new TextEncoder().encode('the quick brown fox jumps over the lazy dog 0123456789 ');
    let s = 7;
    for (let o = 0; o < size; o += 4 * MiB) {
      for (let i = 0; i < MiB; i++) raw[o + i] = words[(i + o / MiB) % words.length];
      for (let i = MiB; i < 2 * MiB; i++) {
        s = (Math.imul(s, 1103515245) + 12345) >>> 0;
        raw[o + i] = s >>> 24;
      }
    }
    writeFileSync(p('src.raw'), raw);
    q('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', p('src.raw'), p('src.qcow2')]);
    rmSync(p('src.raw'));
    // Compression is the slow pair (deflate at ~25-40 MB/s): a sixteenth of the disk keeps the suite short.
    const small = size / 16;
    writeFileSync(p('small.raw'), raw.subarray(0, small));
    q('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', p('small.raw'), p('small.qcow2')]);
    rmSync(p('small.raw'));
    q('qemu-img', ['convert', '-O', 'vhdx', p('src.qcow2'), p('src.vhdx')]);
    q('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', p('src.qcow2'), p('src.stream.vmdk')]);
    const rm = (f) => () => rmSync(f, { force: true });
    const vmkit = (from, to, opts) => () => convertImage(from, to, { provider: syncFileProvider, ...opts });
    // What `qemu-img convert -c` does, through the API: 1 MiB chunks in guest order, each written
    // with writeCompressed (zero chunks skipped), metadata written back at the end.
    const compressTo = (from, to, compressionType) => async () => {
      await createImage(to, { size: small, compressionType, provider: syncFileProvider, durable: false });
      const src = await openImage(from, { provider: syncFileProvider, readOnly: true });
      const dst = await openImage(to, { provider: syncFileProvider });
      await dst.setCacheMode('writeback');
      const buf = new Uint8Array(MiB);
      for (let o = 0; o < src.size; o += MiB) {
        await src.readInto(o, buf);
        if (buf.some((x) => x !== 0)) await dst.writeCompressed(o, buf);
      }
      await dst.close();
      await src.close();
    };
    const pairs = [
      {
        heading: 'qcow2 → streamOptimized VMDK',
        cause: 'both deflate each 64 KiB grain on one thread (CPU within a few % of each other); vmkit also fdatasyncs the output, qemu-img (default -t unsafe) does not; a streamOptimized VMDK is written in one sequential pass, so chunks in flight do not apply',
        rows: [
          { name: 'vmkit disk convert -O vmdk --subformat streamOptimized', fn: vmkit(p('src.qcow2'), p('v.vmdk'), { format: 'vmdk', subformat: 'streamOptimized' }), out: p('v.vmdk') },
          { name: 'qemu-img convert -O vmdk -o subformat=streamOptimized', fn: () => q('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', p('src.qcow2'), p('q.vmdk')]), out: p('q.vmdk') },
        ],
      },
      {
        heading: 'streamOptimized VMDK → qcow2',
        cause: 'vmkit fdatasyncs the output (every 16 MiB beside the copy, and at the end), qemu-img (default -t unsafe) does not: see the -t writeback row; the rest is wall time above CPU on the loaded machine, where chunks in flight gain nothing with sync file I/O (the --in-flight 1 row)',
        rows: [
          { name: 'vmkit disk convert -O qcow2', fn: vmkit(p('src.stream.vmdk'), p('v.qcow2'), { format: 'qcow2' }), out: p('v.qcow2') },
          { name: 'qemu-img convert -O qcow2', fn: () => q('qemu-img', ['convert', '-O', 'qcow2', p('src.stream.vmdk'), p('q.qcow2')]), out: p('q.qcow2') },
          { name: 'vmkit disk convert -O qcow2 --in-flight 1', fn: vmkit(p('src.stream.vmdk'), p('v1.qcow2'), { format: 'qcow2', inFlight: 1 }), out: p('v1.qcow2') },
          { name: 'qemu-img convert -O qcow2 -t writeback (fdatasync at the end, as vmkit)', fn: () => q('qemu-img', ['convert', '-t', 'writeback', '-O', 'qcow2', p('src.stream.vmdk'), p('qw.qcow2')]), out: p('qw.qcow2') },
        ],
      },
      {
        heading: 'VHDX → qcow2',
        cause: 'vmkit fdatasyncs the output (every 16 MiB beside the copy, and at the end), qemu-img (default -t unsafe) does not: see the -t writeback row; vmkit also spends 8-23% more CPU in two runs (a profile puts ~20 ms a run in the qcow2 writer\'s zero-granule scan of each written cluster)',
        rows: [
          { name: 'vmkit disk convert -O qcow2 (from vhdx)', fn: vmkit(p('src.vhdx'), p('v2.qcow2'), { format: 'qcow2' }), out: p('v2.qcow2') },
          { name: 'qemu-img convert -O qcow2 (from vhdx)', fn: () => q('qemu-img', ['convert', '-O', 'qcow2', p('src.vhdx'), p('q2.qcow2')]), out: p('q2.qcow2') },
          { name: 'vmkit disk convert -O qcow2 --in-flight 1 (from vhdx)', fn: vmkit(p('src.vhdx'), p('v21.qcow2'), { format: 'qcow2', inFlight: 1 }), out: p('v21.qcow2') },
          { name: 'qemu-img convert -O qcow2 -t writeback (from vhdx; fdatasync at the end, as vmkit)', fn: () => q('qemu-img', ['convert', '-t', 'writeback', '-O', 'qcow2', p('src.vhdx'), p('qw2.qcow2')]), out: p('qw2.qcow2') },
          { name: 'vmkit disk convert -O qcow2 -t unsafe (from vhdx; no flush, as qemu-img\'s default)', fn: vmkit(p('src.vhdx'), p('vu2.qcow2'), { format: 'qcow2', cache: 'unsafe' }), out: p('vu2.qcow2') },
        ],
      },
      {
        heading: 'qcow2 → compressed qcow2 (writeCompressed; qemu-img convert -c)',
        amount: small,
        reps: 3,
        cause: 'one thread compresses each 64 KiB cluster in both; zstd: the reference C library as wasm (@bokuweb/zstd-wasm) against QEMU\'s native libzstd, level 3 both; zlib: node:zlib against QEMU\'s zlib',
        rows: [
          { name: 'vmkit writeCompressed, compression_type=zstd', fn: compressTo(p('small.qcow2'), p('cz.qcow2'), 'zstd'), out: p('cz.qcow2') },
          { name: 'qemu-img convert -c -O qcow2 -o compression_type=zstd', fn: () => q('qemu-img', ['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', p('small.qcow2'), p('qcz.qcow2')]), out: p('qcz.qcow2') },
          { name: 'vmkit writeCompressed, compression_type=zlib', fn: compressTo(p('small.qcow2'), p('cd.qcow2'), 'zlib'), out: p('cd.qcow2') },
          { name: 'qemu-img convert -c -O qcow2 (zlib)', fn: () => q('qemu-img', ['convert', '-c', '-O', 'qcow2', p('small.qcow2'), p('qcd.qcow2')]), out: p('qcd.qcow2') },
        ],
      },
    ];
    const sections = [];
    const notes = [];
    for (const pair of pairs) {
      const rows = [];
      // Interleaved: each rep runs every row once.
      const acc = pair.rows.map(() => []);
      const n = pair.reps ?? reps;
      const amount = pair.amount ?? size;
      for (let r = 0; r < n; r++) {
        for (let i = 0; i < pair.rows.length; i++) acc[i].push(await timeIt(1, pair.rows[i].fn, rm(pair.rows[i].out)));
      }
      for (let i = 0; i < pair.rows.length; i++) {
        const ns = acc[i].map((x) => x.ns).sort((a, b) => a - b)[Math.floor(n / 2)];
        const cpuNs = acc[i].reduce((a, x) => a + x.cpuNs, 0) / n;
        rows.push({ name: pair.rows[i].name, ns, cpuNs, amount, bytes: statSync(pair.rows[i].out).size });
      }
      sections.push({ heading: `${pair.heading}, ${amount / MiB} MiB disk (MB/s of guest size)`, markdown: table(rows, 'bytes') + `\n\nOutput sizes: ${rows.map((r) => `${r.name}: ${(r.bytes / MiB).toFixed(2)} MiB`).join('; ')} (vmkit/qemu-img ${(rows[0].bytes / rows[1].bytes).toFixed(3)}, goal within 5%).` });
      // The goal row (default vmkit against default qemu-img), and what the flush costs: qemu-img
      // convert writes with -t unsafe by default (strace: its fdatasyncs come before any data),
      // vmkit fdatasyncs the output before it returns.
      notes.push(
        ...parityNotes(rows.slice(0, 2), pair.rows[1].name, { default: pair.cause }),
      );
      if (pair.amount) {
        notes.push(...parityNotes([rows[2], rows[3]], pair.rows[3].name, { default: pair.cause }));
        notes.push(`Compressed sizes: zstd ${(rows[0].bytes / MiB).toFixed(2)} MiB (qemu-img ${(rows[1].bytes / MiB).toFixed(2)}), zlib ${(rows[2].bytes / MiB).toFixed(2)} MiB (qemu-img ${(rows[3].bytes / MiB).toFixed(2)}); vmkit zstd against vmkit zlib: ${(rows[2].ns / rows[0].ns).toFixed(2)}× the speed, ${(rows[2].cpuNs / rows[0].cpuNs).toFixed(2)}× less CPU.`);
      } else if (rows.length > 3) notes.push(`${rows[0].name} against ${rows[3].name}: ${(rows[3].ns / rows[0].ns).toFixed(2)}× (CPU ${(rows[3].cpuNs / rows[0].cpuNs).toFixed(2)}×); 8 in flight against 1: ${(rows[2].ns / rows[0].ns).toFixed(2)}×.`);
      if (rows.length > 4) notes.push(...parityNotes([rows[4], rows[1]], pair.rows[1].name, { default: 'like for like: neither flushes' }));
    }
    notes.push(`Medians of ${reps} interleaved runs; the qemu-img rows include its process start; vmkit runs in this process with sync file I/O (as the CLI), 8 chunks of 1 MiB in flight unless the row says otherwise; CPU/run is the process's user+system time (all threads; the qemu-img rows: the child's).`);
    return { title: TITLE, sections, notes };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
