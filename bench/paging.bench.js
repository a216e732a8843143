// Guest page-table walks: the core's AddressSpace (assembly/paging.ts) against
// the plain-TypeScript reference walker (bindings/memory/paging/reference.ts),
// in the same run.
//  - Translations/s for random GVAs over 1 GiB mapped by 4 KiB pages, in a
//    guest memory holding only the page tables (the data pages need not exist):
//    warm (a working set the TLB holds), random over the whole GiB (TLB misses,
//    table pages cached) and cold (every cache invalidated before each batch).
//  - Time to list every mapping of the real 256 MiB Linux guest
//    (.cache/guest/x86_64 from scripts/guest-fixture.mjs), in process and as
//    the whole `vmkit pagetable dump --format qemu` process.
//  - One address per call (issue 23): translateGpa (numbers into a reused
//    result), translate() (an object) and a 30-line plain-JS DataView walker
//    over the same bytes, interleaved rounds, wall and CPU time.
// Goals (issue 3): core ≥ 3× the reference, ≥ 20 M warm translations/s, full dump < 100 ms.
// Goals (issue 23): translateGpa one by one ≥ 2× the DataView walker; translateInto ≥ 80 M/s.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { fmtNs, measure, median, loadCore, rateTable, timeRunsCpu } from './_lib.js';

/** The headline rows of RESULTS.md's opening table (bench/_summary.js): rows of this suite's own tables. */
export const SUMMARY = [
  { what: "4096 page walks over 1 GiB, core vs TS reference", section: "4096 random GVAs over 1 GiB of 4 KiB pages per op (ratios vs the reference)", vmkit: "core translateInto (random over 1 GiB)", peer: "reference (random over 1 GiB)" },
  { what: "one translation per call over 1 GiB, translateGpa vs a plain-JS DataView walker", section: "One address per call, 4096 random GVAs over 1 GiB (ratios vs the DataView walker)", vmkit: "core translateGpa(gva, result)", peer: "plain-JS DataView walker" },
];

const GIB_PAGES = 1 << 18; // 1 GiB of 4 KiB pages
const BASE_VA = 0xffff_8880_0000_0000n; // Linux's direct map: an upper-half, sign-extended region
const BATCH = 4096;

/** An ArrayBuffer-backed GuestMemorySource. */
function bufferMemory(bytes) {
  return {
    size: BigInt(bytes.length),
    readSync(at, dst) {
      const o = Number(at);
      dst.set(bytes.subarray(o, o + dst.length));
    },
  };
}

/**
 * 4-level tables mapping [BASE_VA, BASE_VA + 1 GiB) with 4 KiB pages onto
 * scattered frames above guest memory: PML4, PDPT, PD and 512 PTs (2 MiB).
 */
function buildGuest() {
  const pages = 3 + 512 + 1;
  const bytes = new Uint8Array(pages * 4096);
  const v = new DataView(bytes.buffer);
  const pml4 = 4096, pdpt = 2 * 4096, pd = 3 * 4096, pt0 = 4 * 4096;
  const flags = 0x63n; // P W A D
  v.setBigUint64(pml4 + Number((BASE_VA >> 39n) & 511n) * 8, BigInt(pdpt) | 0x7n, true);
  v.setBigUint64(pdpt + Number((BASE_VA >> 30n) & 511n) * 8, BigInt(pd) | 0x7n, true);
  for (let i = 0; i < 512; i++) v.setBigUint64(pd + i * 8, BigInt(pt0 + i * 4096) | 0x7n, true);
  for (let p = 0; p < GIB_PAGES; p++) {
    // A permutation of frames, so that no walker can guess a linear layout.
    const frame = BigInt((Math.imul(p, 40503) & (GIB_PAGES - 1)) + 0x10_0000);
    v.setBigUint64(pt0 + p * 8, (frame << 12n) | flags, true);
  }
  return { bytes, memory: bufferMemory(bytes), opts: { mode: 'x86-64', root: BigInt(pml4) } };
}

/**
 * The peer of one-at-a-time translation: what a JS programmer writes in 30 lines
 * for x86-64 4-level paging over bytes they hold (a DataView, 32-bit halves,
 * numbers rather than bigints inside the walk). Returns the GPA or -1.
 */
function dataViewWalker(bytes, cr3) {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const root = Number(cr3 & 0xf_ffff_ffff_f000n);
  return (va) => {
    const hi = Number(va >> 32n);
    const lo = Number(va & 0xffff_ffffn);
    if (hi >>> 15 !== 0 && hi >>> 15 !== 0x1ffff) return -1; // not canonical
    let table = root;
    for (let level = 4; level >= 1; level--) {
      const shift = 3 + 9 * level; // the lowest bit of this level's index
      const idx = (shift >= 32 ? hi >>> (shift - 32) : (lo >>> shift) | (hi << (32 - shift))) & 511;
      const off = table + idx * 8;
      if (off + 8 > dv.byteLength) return -1;
      const elo = dv.getUint32(off, true);
      const ehi = dv.getUint32(off + 4, true);
      if ((elo & 1) === 0) return -1;
      const base = (ehi & 0xfffff) * 0x1_0000_0000 + ((elo & 0xffff_f000) >>> 0);
      if (level === 1) return base + (lo & 0xfff);
      if (level <= 3 && (elo & 0x80) !== 0) {
        const size = 2 ** shift; // a 2 MiB or 1 GiB page
        return base - (base % size) + ((lo >>> 0) % size);
      }
      table = base;
    }
    return -1;
  };
}

function randomGvas(n, pages, seed) {
  const out = new BigUint64Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    const page = x % pages;
    out[i] = BASE_VA + (BigInt(page) << 12n) + BigInt(x & 0xfff);
  }
  return out;
}

async function loadCoreSpace() {
  const url = new URL('../dist/memory/paging/address-space.js', import.meta.url);
  if (!existsSync(fileURLToPath(url))) return undefined;
  return (await import(url.href)).AddressSpace;
}

export async function run({ quick, log }) {
  const load0 = loadavg()[0];
  await loadCore();
  const { referenceTranslate, referenceMappings } = await import('../dist/memory/paging/reference.js');
  const AddressSpace = await loadCoreSpace();
  if (!AddressSpace) log('no dist/memory/paging/address-space.js: the reference alone');
  const { bytes: guestBytes, memory, opts } = buildGuest();
  const space = AddressSpace ? await AddressSpace.create({ memory, ...opts }) : undefined;

  const warmGvas = randomGvas(BATCH, 64, 1); // 64 pages: TLB hits
  const wideGvas = randomGvas(BATCH, GIB_PAGES, 2); // the whole GiB
  const out = new BigUint64Array(BATCH);
  let sink = 0n;
  const refBatch = (gvas) => () => {
    for (let i = 0; i < gvas.length; i++) {
      const t = referenceTranslate(memory, opts, gvas[i]);
      if (t.ok) sink ^= t.gpa;
    }
  };
  // Correctness before speed: the core's batch answers equal the reference's.
  if (space) {
    space.translateInto(wideGvas, out);
    for (let i = 0; i < 64; i++) {
      const t = referenceTranslate(memory, opts, wideGvas[i]);
      if (!t.ok || out[i] !== t.gpa) throw new Error(`core and reference disagree on ${wideGvas[i].toString(16)}: ${out[i].toString(16)} vs ${t.ok ? t.gpa.toString(16) : t.reason}`);
    }
  }
  const tasks = (label, gvas, cold) => [
    { name: `reference (${label})`, items: BATCH, fn: refBatch(gvas) },
    ...(space
      ? [
          {
            name: `core translateInto (${label})`,
            items: BATCH,
            fn: () => {
              if (cold) space.invalidate();
              space.translateInto(gvas, out);
            },
          },
          {
            name: `core translate() one by one (${label})`,
            items: BATCH,
            fn: () => {
              if (cold) space.invalidate();
              for (let i = 0; i < gvas.length; i++) {
                const t = space.translate(gvas[i]);
                if (t.ok) sink ^= t.gpa;
              }
            },
          },
        ]
      : []),
  ];
  const single = space ? await oneByOne(space, dataViewWalker(guestBytes, opts.root), wideGvas, warmGvas, quick) : undefined;
  const warm = await measure(tasks('warm: 64 hot pages', warmGvas, false), { quick, time: 1000 });
  const wide = await measure(tasks('random over 1 GiB', wideGvas, false), { quick, time: 1000 });
  const cold = await measure(tasks('cold: invalidated per batch', wideGvas, true), { quick, time: 1000 });

  // Every mapping of the real guest.
  const dir = new URL('../.cache/guest/x86_64/', import.meta.url);
  const memPath = fileURLToPath(new URL('mem.bin', dir));
  let dump;
  const notes = [];
  if (existsSync(memPath)) {
    const bytes = readFileSync(memPath);
    const guest = bufferMemory(bytes);
    const cr3 = BigInt(readFileSync(fileURLToPath(new URL('cr3.txt', dir)), 'utf8').trim());
    const gopts = { mode: 'x86-64', root: cr3 };
    let count = 0;
    const { main } = await import('../dist/cli/main.js');
    const cliArgs = ['pagetable', 'dump', memPath, '--cr3', `0x${cr3.toString(16)}`, '--format', 'qemu'];
    const nullIO = { stdout: { write: () => true }, stderr: process.stderr };
    const gspace = AddressSpace ? await AddressSpace.create({ memory: guest, ...gopts }) : undefined;
    dump = await measure(
      [
        { name: 'reference mappings()', fn: () => { count = 0; for (const _ of referenceMappings(guest, gopts)) count++; } },
        ...(gspace
          ? [
              { name: 'core mappings(), cold', fn: () => { gspace.invalidate(); count = 0; for (const _ of gspace.mappings()) count++; } },
              { name: 'core mappings(), tables cached', fn: () => { count = 0; for (const _ of gspace.mappings()) count++; } },
            ]
          : []),
        // The CLI's whole dump in process: image file read through its windows, the walk, QEMU lines, output discarded.
        { name: 'vmkit pagetable dump --format qemu, in process (main(), output discarded)', fn: async () => { await main(cliArgs, nullIO); } },
      ],
      { quick, time: 2000, warmupTime: 300 },
    );
    gspace?.dispose();
    // The CLI as a whole process (node start-up, core load, file reads, formatting), both
    // engines, interleaved with a bare node start-up so that the machine's load hits all alike.
    const cli = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
    const procs = [
      ['node start-up alone (node -e "")', ['-e', '']],
      ['vmkit pagetable dump --format qemu (whole process)', [cli, 'pagetable', 'dump', memPath, '--cr3', `0x${cr3.toString(16)}`]],
      ['vmkit pagetable dump --format qemu --engine reference (whole process)', [cli, 'pagetable', 'dump', memPath, '--cr3', `0x${cr3.toString(16)}`, '--engine', 'reference']],
    ];
    const times = procs.map(() => []);
    let lines = 0;
    for (let i = 0; i < (quick ? 2 : 7); i++) {
      procs.forEach(([, args], k) => {
        const t0 = performance.now();
        const r = spawnSync(process.execPath, args, { maxBuffer: 64 << 20, encoding: 'utf8' });
        times[k].push(performance.now() - t0);
        if (r.status !== 0) throw new Error(`${args.join(' ')} failed: ${r.stderr}`);
        if (k > 0) lines = r.stdout.split('\n').length - 1;
      });
    }
    procs.forEach(([name], k) => {
      dump.table += `\n| ${name} | ${fmtNs(median(times[k]) * 1e6)} | | | ${times[k].length} |`;
    });
    notes.push(`Whole-process rows: medians of ${times[0].length} runs, each printing ${lines} lines.`);
    notes.push(`The real guest: 256 MiB Linux (Debian kernel, busybox user space) under QEMU, ${count} mappings.`);
  } else {
    log('no .cache/guest/x86_64/mem.bin: run node scripts/guest-fixture.mjs for the dump figures');
  }
  space?.dispose();
  if (sink === 42n) log('');
  return {
    summary: SUMMARY,
    title: 'paging: guest page-table walks, core vs TS reference',
    sections: [
      ...(single ?? []),
      { heading: `Warm: ${BATCH} random GVAs over 64 hot pages per op (ratios vs the reference)`, markdown: warm.table },
      { heading: `${BATCH} random GVAs over 1 GiB of 4 KiB pages per op (ratios vs the reference)`, markdown: wide.table },
      { heading: `Cold: the same, every cache invalidated before each batch (ratios vs the reference)`, markdown: cold.table },
      ...(dump ? [{ heading: 'Every mapping of the real 256 MiB guest (ratios vs the reference)', markdown: dump.table }] : []),
    ],
    notes: [
      `Load average (1 min) ${load0.toFixed(1)} at the start and ${loadavg()[0].toFixed(1)} at the end, on the machine's cores shared with other work: absolute figures are noisy; ratios within a table are measured side by side.`,
      ...notes,
      'Guest for the translation tasks: only its page tables exist (PML4, PDPT, PD, 512 PTs, 2 MiB in an ArrayBuffer); the 4 KiB leaves point at permuted frames.',
      'Goals (issue 3): core ≥ 3× the reference, ≥ 20 M warm translations/s, full dump of the 256 MiB guest < 100 ms.',
      'Goals (issue 23): one address per call ≥ 2× the plain-JS DataView walker (translateGpa: a number back, details written into a reused TranslationResult); translateInto batches ≥ 80 M/s. The one-by-one rows are interleaved rounds (each round runs every task once over the 4096 addresses, 40 times); CPU is this process\'s CPU time, the steadier figure on a shared machine.',
    ],
  };
}

/**
 * One address per call, interleaved: each round times every task over the same
 * 4096 addresses (40 passes), so that the machine's load falls on all alike.
 */
async function oneByOne(space, walk, wide, warm, quick) {
  const { TranslationResult } = await import('../dist/memory/paging/types.js');
  const r = new TranslationResult();
  const out = new BigUint64Array(BATCH);
  // Correctness first: the walker, translateGpa and translateInto agree on every address.
  for (const gvas of [wide, warm]) {
    space.translateInto(gvas, out);
    for (let i = 0; i < gvas.length; i++) {
      const a = walk(gvas[i]);
      const b = space.translateGpa(gvas[i], r);
      if (a !== Number(out[i]) || b !== a || r.gpa !== a || r.pageSize !== 4096) {
        throw new Error(`walker ${a}, translateGpa ${b}, translateInto ${out[i]} disagree on ${gvas[i].toString(16)}`);
      }
    }
  }
  const PASSES = 40;
  let sink = 0;
  const sections = [];
  for (const [label, gvas] of [['over 1 GiB', wide], ['over 64 hot pages', warm]]) {
    const tasks = [
      ['plain-JS DataView walker', () => { for (let i = 0; i < gvas.length; i++) sink += walk(gvas[i]); }],
      ['core translateGpa(gva) (a number)', () => { for (let i = 0; i < gvas.length; i++) sink += space.translateGpa(gvas[i]); }],
      ['core translateGpa(gva, result)', () => { for (let i = 0; i < gvas.length; i++) { space.translateGpa(gvas[i], r); sink += r.gpa + r.level; } }],
      ['core translate() (an object)', () => { for (let i = 0; i < gvas.length; i++) { const t = space.translate(gvas[i]); if (t.ok) sink += t.level; } }],
      ['core translateInto (the batch)', () => { space.translateInto(gvas, out); sink += Number(out[0] & 0xffn); }],
    ];
    for (const [, fn] of tasks) for (let i = 0; i < 20; i++) fn(); // warm-up (JIT, caches)
    const runs = tasks.map(() => ({ ns: [], cpu: 0 }));
    const rounds = quick ? 3 : 15;
    for (let k = 0; k < rounds; k++) {
      for (let t = 0; t < tasks.length; t++) {
        const fn = tasks[t][1];
        const m = await timeRunsCpu(1, () => { for (let p = 0; p < PASSES; p++) fn(); });
        runs[t].ns.push(m.ns);
        runs[t].cpu += m.cpuNs;
      }
    }
    const rows = tasks.map(([name], t) => ({ name, ns: median(runs[t].ns), cpuNs: runs[t].cpu / rounds, amount: PASSES * gvas.length }));
    sections.push({ heading: `One address per call, ${BATCH} random GVAs ${label} (ratios vs the DataView walker)`, markdown: rateTable(rows, 'ops').replace('| IOPS |', '| translations/s |') });
  }
  if (sink === 0.5) console.log('');
  return sections;
}
