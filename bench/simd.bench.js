// Does SIMD pay? The release core (SIMD on) against the same source compiled with SIMD off
// (asconfig target `nosimd`, built here into bench/.data/), on the core's hot loops, in one run.
// Each kernel is timed on identical inputs in both builds; ratios are SIMD vs scalar.
// Kernels are picked up by export name, so modules that land later (LZ4, paging, staging)
// join the comparison without edits here when their exports exist in both builds.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { measure } from './_lib.js';

/** The headline rows of RESULTS.md's opening table (bench/_summary.js): rows of this suite's own tables. */
export const SUMMARY = [
  { what: "Zero map of 1 MiB (4 KiB granules), SIMD vs scalar build", section: "sectorsZeroMap, 1 MiB of zeroes, 4 KiB granules", vmkit: "SIMD (release)", peer: "scalar (nosimd)" },
];

const root = new URL('../', import.meta.url);
const out = new URL('bench/.data/core.nosimd.wasm', root);

function instance(bytes) {
  const imports = { env: { abort() { throw new Error('core abort'); } } };
  return new WebAssembly.Instance(new WebAssembly.Module(bytes), imports).exports;
}

function buildNosimd() {
  mkdirSync(new URL('bench/.data/', root), { recursive: true });
  // Same entry and options as the release target, SIMD disabled (asconfig.json "nosimd").
  execFileSync('npx', ['asc', 'assembly/index.ts', '--target', 'nosimd', '--outFile', out.pathname], { cwd: root.pathname, stdio: 'inherit' });
}

/** Fills `len` bytes at a fresh core allocation; returns the pointer. */
function place(x, bytes) {
  const p = x.alloc(bytes.length);
  new Uint8Array(x.memory.buffer, p, bytes.length).set(bytes);
  return p;
}

export async function run({ quick, log }) {
  log('building the nosimd core');
  buildNosimd();
  const simd = instance(readFileSync(new URL('dist/core.wasm', root)));
  const scalar = instance(readFileSync(out));

  const MiB = 1 << 20;
  // A mostly-zero disk window (the common case for zero detection: every byte gets read)
  // and a window of data whose granules are non-zero near their end (worst case for early exit).
  const zero = new Uint8Array(MiB);
  const late = new Uint8Array(MiB);
  for (let g = 0; g < MiB; g += 65536) late[g + 65535] = 1;

  const sections = [];
  const summary = [];
  const kernels = [
    { name: 'sectorsZeroMap, 1 MiB of zeroes, 4 KiB granules', input: zero, call: (x, p, o) => x.sectorsZeroMap(p, MiB, 4096, o) },
    { name: 'sectorsZeroMap, 1 MiB, 64 KiB granules dirty at their end', input: late, call: (x, p, o) => x.sectorsZeroMap(p, MiB, 65536, o) },
    { name: 'sectorsCopyZero, 1 MiB of zeroes, 4 KiB granules', input: zero, copy: true, call: (x, p, o, d) => x.sectorsCopyZero(d, p, MiB, 4096, o) },
  ];
  for (const k of kernels) {
    const tasks = [];
    for (const [label, x] of [['scalar (nosimd)', scalar], ['SIMD (release)', simd]]) {
      const p = place(x, k.input);
      const o = x.alloc(4096);
      const d = k.copy ? x.alloc(MiB) : 0;
      const expect = k.call(scalar === x ? scalar : x, p, o, d);
      tasks.push({ name: label, bytes: MiB, fn: () => k.call(x, p, o, d), expect });
    }
    if (tasks[0].expect !== tasks[1].expect) throw new Error(`${k.name}: builds disagree (${tasks[0].expect} vs ${tasks[1].expect})`);
    const r = await measure(tasks, { quick });
    sections.push({ heading: k.name, markdown: r.table });
    summary.push(`${k.name}: SIMD ${(r.results[0].medianNs / r.results[1].medianNs).toFixed(2)}× scalar`);
  }
  return { title: 'core: SIMD against scalar builds', sections, notes: summary, summary: SUMMARY };
}
