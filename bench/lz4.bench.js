// The core's LZ4 against lz4-wasm (lz4_flex, the user's named package) on
// 4 KiB pages and whole 1 MiB blocks of a real Linux guest's memory
// (.cache/guest/x86_64/mem.bin; synthetic pages when it is absent).
// "in core" = the page already in core memory, as the staging buffer uses it;
// "API" = through lz4CompressBlock/lz4DecompressBlock (copy in, a new output
// array), the fair peer of lz4-wasm's own glue, which also copies in and
// returns a new array; "API into" = lz4CompressBlockInto/lz4DecompressBlockInto
// (copy in, copy out into the caller's reused buffer: no allocation), which
// lz4-wasm has no counterpart of.
import { existsSync, readFileSync } from 'node:fs';
import { measure, loadCore, median } from './_lib.js';

/** The headline rows of RESULTS.md's opening table (bench/_summary.js): rows of this suite's own tables. */
export const SUMMARY = [
  { what: "LZ4 compress a 4 KiB page (reused buffer)", section: "4 KiB pages, 15 interleaved rounds over the 2048 pages (robust to load drift)", vmkit: "core lz4CompressBlockInto API (reused buffer)", peer: "lz4-wasm compress" },
  { what: "LZ4 decompress a 4 KiB page (reused buffer)", section: "4 KiB pages, 15 interleaved rounds over the 2048 pages (robust to load drift)", vmkit: "core lz4DecompressBlockInto API (reused buffer)", peer: "lz4-wasm decompress" },
];

const PS = 4096;

function samplePages(n) {
  const path = new URL('../.cache/guest/x86_64/mem.bin', import.meta.url);
  const out = new Uint8Array(n * PS);
  if (existsSync(path)) {
    const mem = readFileSync(path);
    // Every non-zero page, then an even sample of n of them (the guest's
    // kernel text, page cache and heap alike).
    const nz = [];
    for (let p = 0; p < mem.length / PS; p++) {
      const pg = mem.subarray(p * PS, (p + 1) * PS);
      if (pg.some((x) => x !== 0)) nz.push(p);
    }
    let k = 0;
    for (let i = 0; i < n && i < nz.length; i++) {
      const p = nz[Math.floor((i * nz.length) / n)];
      out.set(mem.subarray(p * PS, (p + 1) * PS), PS * k++);
    }
    return { pages: out.subarray(0, k * PS), count: k, real: true };
  }
  let x = 1;
  for (let i = 0; i < out.length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = i % PS < 2048 ? 97 + (x >>> 29) : 0;
  }
  return { pages: out, count: n, real: false };
}

export async function run({ quick }) {
  await loadCore();
  const { core } = await import('../dist/core.js');
  const { lz4CompressBlock, lz4CompressBlockInto, lz4CompressBound, lz4DecompressBlock, lz4DecompressBlockInto } = await import('../dist/memory/index.js');
  const { loadLz4Wasm, prependSize, splitPrepended } = await import('../dist/memory/_lz4-wasm.js');
  const peer = loadLz4Wasm();
  const N = 256; // pages per op
  const { pages, count, real } = samplePages(2048);
  const c = core();
  const e = c.exports;
  const src = c.alloc(count * PS);
  const dst = c.alloc(N * 8192);
  const blocks = c.alloc((count * PS * 1.01 + 65536) | 0);
  c.u8().set(pages, src);
  // Compressed forms for the decompress tasks.
  const ours = [];
  const theirs = [];
  let oursBytes = 0;
  let theirsBytes = 0;
  let at = 0;
  const offs = [];
  for (let i = 0; i < count; i++) {
    const pg = pages.subarray(i * PS, (i + 1) * PS);
    const b = lz4CompressBlock(pg);
    ours.push(b);
    oursBytes += b.length;
    const t = peer.compress(pg);
    theirs.push(t);
    theirsBytes += t.length - 4;
    offs.push(at);
    c.u8().set(b, blocks + at);
    at += b.length;
  }
  const outC = new Uint8Array(lz4CompressBound(PS));
  const outD = new Uint8Array(PS);
  let cursor = 0;
  const nextBatch = () => {
    const first = cursor;
    cursor = (cursor + N) % (count - N);
    return first;
  };
  const pageC = await measure(
    [
      { name: `lz4-wasm compress (${N} pages)`, bytes: N * PS, items: N, fn: () => { const f = nextBatch(); for (let i = f; i < f + N; i++) peer.compress(pages.subarray(i * PS, (i + 1) * PS)); } },
      { name: `core lz4Compress, in core (${N} pages)`, bytes: N * PS, items: N, fn: () => { const f = nextBatch(); for (let i = f; i < f + N; i++) e.lz4Compress(src + i * PS, PS, dst, 8192); } },
      { name: `core lz4CompressBlock API (${N} pages)`, bytes: N * PS, items: N, fn: () => { const f = nextBatch(); for (let i = f; i < f + N; i++) lz4CompressBlock(pages.subarray(i * PS, (i + 1) * PS)); } },
      { name: `core lz4CompressBlockInto API (${N} pages)`, bytes: N * PS, items: N, fn: () => { const f = nextBatch(); for (let i = f; i < f + N; i++) lz4CompressBlockInto(pages.subarray(i * PS, (i + 1) * PS), outC); } },
    ],
    { quick },
  );
  const pageD = await measure(
    [
      { name: `lz4-wasm decompress (${N} pages)`, bytes: N * PS, items: N, fn: () => { const f = nextBatch(); for (let i = f; i < f + N; i++) peer.decompress(theirs[i]); } },
      { name: `core lz4Decompress, in core (${N} pages)`, bytes: N * PS, items: N, fn: () => { const f = nextBatch(); for (let i = f; i < f + N; i++) e.lz4Decompress(blocks + offs[i], ours[i].length, dst, PS); } },
      { name: `core lz4DecompressBlock API (${N} pages)`, bytes: N * PS, items: N, fn: () => { const f = nextBatch(); for (let i = f; i < f + N; i++) lz4DecompressBlock(ours[i], PS); } },
      { name: `core lz4DecompressBlockInto API (${N} pages)`, bytes: N * PS, items: N, fn: () => { const f = nextBatch(); for (let i = f; i < f + N; i++) lz4DecompressBlockInto(ours[i], outD); } },
    ],
    { quick },
  );
  // Whole 1 MiB blocks.
  const B = 1 << 20;
  const nb = Math.floor((count * PS) / B);
  const big = [];
  const bigOurs = [];
  const bigTheirs = [];
  for (let i = 0; i < nb; i++) {
    big.push(pages.subarray(i * B, (i + 1) * B));
    bigOurs.push(lz4CompressBlock(big[i]));
    bigTheirs.push(peer.compress(big[i]));
  }
  let bi = 0;
  const blockC = await measure(
    [
      { name: 'lz4-wasm compress (1 MiB)', bytes: B, fn: () => { peer.compress(big[bi++ % nb]); } },
      { name: 'core lz4CompressBlock API (1 MiB)', bytes: B, fn: () => { lz4CompressBlock(big[bi++ % nb]); } },
      { name: 'lz4-wasm decompress (1 MiB)', bytes: B, fn: () => { peer.decompress(bigTheirs[bi++ % nb]); } },
      { name: 'core lz4DecompressBlock API (1 MiB)', bytes: B, fn: () => { lz4DecompressBlock(bigOurs[bi++ % nb], B); } },
    ],
    { quick },
  );
  // The page pipeline of a save on consecutive guest pages, zero pages included
  // (69% of this guest): the core's staging buffer (zero check, compress or raw)
  // against lz4-wasm compressing every page.
  const path = new URL('../.cache/guest/x86_64/mem.bin', import.meta.url);
  let pipe;
  if (existsSync(path)) {
    const mem = readFileSync(path);
    const W = 256;
    const win = c.alloc(W * PS);
    const ent = c.alloc(W * 16); // 16-byte staging entries
    const h = e.stagingOpen(1 << 20, PS, 1);
    let wp = 0;
    const nextWin = () => {
      const first = wp;
      wp = (wp + W) % (mem.length / PS - W);
      return first;
    };
    pipe = await measure(
      [
        { name: `lz4-wasm compress every page (${W} pages)`, bytes: W * PS, items: W, fn: () => { const f = nextWin(); for (let i = f; i < f + W; i++) peer.compress(mem.subarray(i * PS, (i + 1) * PS)); } },
        {
          name: `core staging: copy in, zero check, compress (${W} pages)`, bytes: W * PS, items: W,
          fn: () => {
            const f = nextWin();
            c.u8().set(mem.subarray(f * PS, (f + W) * PS), win);
            for (let done = 0; done < W; ) {
              const n = e.stagingAppend(h, win + done * PS, W - done, ent);
              done += n;
              if (done < W) e.stagingReset(h);
            }
          },
        },
      ],
      { quick },
    );
    e.stagingClose(h);
    c.free(win);
    c.free(ent);
  }
  // The same page tasks again, interleaved: R rounds, each timing every task
  // once over all pages in turn, so a change of machine load hits every task
  // alike (tinybench runs one task after the other). Medians over rounds.
  const R = quick ? 5 : 15;
  // [name, fn, index of its lz4-wasm peer row]
  const inter = [
    ['lz4-wasm compress', () => { for (let i = 0; i < count; i++) peer.compress(pages.subarray(i * PS, (i + 1) * PS)); }, 0],
    ['core lz4Compress, in core', () => { for (let i = 0; i < count; i++) e.lz4Compress(src + i * PS, PS, dst, 8192); }, 0],
    ['core lz4CompressBlock API (new array)', () => { for (let i = 0; i < count; i++) lz4CompressBlock(pages.subarray(i * PS, (i + 1) * PS)); }, 0],
    ['core lz4CompressBlockInto API (reused buffer)', () => { for (let i = 0; i < count; i++) lz4CompressBlockInto(pages.subarray(i * PS, (i + 1) * PS), outC); }, 0],
    ['lz4-wasm decompress', () => { for (let i = 0; i < count; i++) peer.decompress(theirs[i]); }, 4],
    ['core lz4Decompress, in core', () => { for (let i = 0; i < count; i++) e.lz4Decompress(blocks + offs[i], ours[i].length, dst, PS); }, 4],
    ['core lz4DecompressBlock API (new array)', () => { for (let i = 0; i < count; i++) lz4DecompressBlock(ours[i], PS); }, 4],
    ['core lz4DecompressBlockInto API (reused buffer)', () => { for (let i = 0; i < count; i++) lz4DecompressBlockInto(ours[i], outD); }, 4],
  ];
  // Wall time and this process's CPU time (user + sys) per round: on a loaded
  // machine the wall time includes waits for a core, the CPU time does not.
  const times = inter.map(() => []);
  const cpu = inter.map(() => []);
  for (let r = 0; r < R; r++) {
    inter.forEach(([, fn], k) => {
      const c0 = process.cpuUsage();
      const t0 = process.hrtime.bigint();
      fn();
      times[k].push(Number(process.hrtime.bigint() - t0) / count);
      const c = process.cpuUsage(c0);
      cpu[k].push(((c.user + c.system) * 1000) / count);
    });
  }
  const med = times.map(median);
  const medCpu = cpu.map(median);
  const vs = (m, k) => (m[inter[k][2]] / m[k]).toFixed(2);
  const interTable = [
    '| task (per 4 KiB page) | median wall ns/page | vs lz4-wasm, same direction | median CPU ns/page | vs lz4-wasm (CPU) |',
    '|---|---:|---:|---:|---:|',
    ...inter.map(([name], k) => `| ${name} | ${med[k].toFixed(0)} | ${vs(med, k)}× | ${medCpu[k].toFixed(0)} | ${vs(medCpu, k)}× |`),
  ].join('\n');
  // Interop spot check, so the figures are of codecs that agree.
  for (let i = 0; i < count; i += 97) {
    const pg = pages.subarray(i * PS, (i + 1) * PS);
    if (peer.decompress(prependSize(ours[i], PS)).some((v, k) => v !== pg[k])) throw new Error('interop failure');
    if (lz4DecompressBlock(splitPrepended(theirs[i]).block, PS).some((v, k) => v !== pg[k])) throw new Error('interop failure');
  }
  const r = (p, k) => `${(med[p] / med[k]).toFixed(2)}× / ${(medCpu[p] / medCpu[k]).toFixed(2)}×`;
  const met = (p, k) => (med[p] / med[k] >= 2 && medCpu[p] / medCpu[k] >= 2 ? 'met in core by both clocks' : 'NOT met in core by both clocks');
  const bigO = bigOurs.reduce((a, b) => a + b.length, 0);
  const bigT = bigTheirs.reduce((a, b) => a + b.length - 4, 0);
  c.free(src);
  c.free(dst);
  c.free(blocks);
  return {
    summary: SUMMARY,
    title: 'lz4: core LZ4 vs lz4-wasm',
    sections: [
      { heading: `Compress 4 KiB pages (${real ? 'real guest' : 'synthetic'}, ${count} non-zero pages; ratios vs lz4-wasm)`, markdown: pageC.table },
      { heading: 'Decompress 4 KiB pages (ratios vs lz4-wasm)', markdown: pageD.table },
      { heading: `4 KiB pages, ${R} interleaved rounds over the ${count} pages (robust to load drift)`, markdown: interTable },
      { heading: 'Whole 1 MiB blocks (ratios vs lz4-wasm compress)', markdown: blockC.table },
      ...(pipe ? [{ heading: 'Save pipeline on consecutive real guest pages, zero pages included (ratios vs lz4-wasm)', markdown: pipe.table }] : []),
    ],
    notes: [
      `Goal "the core's LZ4 at least 2× lz4-wasm on 4 KiB pages" (interleaved medians, wall / CPU): compress ${r(0, 1)} in core, ${r(0, 2)} through the API with a new output array (as lz4-wasm's glue), ${r(0, 3)} into a reused buffer — ${met(0, 1)}; decompress ${r(4, 5)} in core, ${r(4, 6)} through the API with a new array, ${r(4, 7)} into a reused buffer — ${met(4, 5)}. The API rows pay the JS glue: one copy in, then a new output array (lz4-wasm's glue does the same: copy in, slice out) or one copy out into the caller's buffer (lz4-wasm has no such call). The compressor is the greedy LZ4 search (16-bit position table in static memory for pages, 5-byte hash, skip step every 16 misses on pages; docs/lz4.md). What the save pipeline gains comes from skipping zero pages in the core and from no per-page calls or allocations (last table).`,
      `Compressed size of the ${count} pages: core ${(oursBytes / (count * PS) * 100).toFixed(2)}% of input, lz4-wasm ${(theirsBytes / (count * PS) * 100).toFixed(2)}%; 1 MiB blocks: core ${(bigO / (nb * B) * 100).toFixed(2)}%, lz4-wasm ${(bigT / (nb * B) * 100).toFixed(2)}%.`,
      'Both directions interoperate (checked in this run and in test/lz4-interop.node.test.ts). The core is the default codec; lz4-wasm stays as the interop peer.',
    ],
  };
}
