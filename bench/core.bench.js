// Loading and calling the core: @assemblyscript/loader (the user's choice)
// against the bare WebAssembly API, to decide what bindings/_loader.ts uses.
import { readFileSync, statSync } from 'node:fs';
import { instantiate, instantiateSync } from '@assemblyscript/loader';
import { measure } from './_lib.js';

/** The headline rows of RESULTS.md's opening table (bench/_summary.js): rows of this suite's own tables. */
export const SUMMARY = [
  { what: "Instantiate the core from a compiled module", section: "Instantiation (ratios vs the bare API)", vmkit: "loader instantiate(module)", peer: "bare WebAssembly.instantiate(module)" },
];

const file = new URL('../dist/core.wasm', import.meta.url);

export async function run({ quick }) {
  const bytes = readFileSync(file);
  const mod = new WebAssembly.Module(bytes);
  const imports = { env: { abort() { throw new Error('abort'); } } };

  const inst = await measure(
    [
      { name: 'bare WebAssembly.instantiate(module)', fn: async () => { await WebAssembly.instantiate(mod, imports); } },
      { name: 'loader instantiate(module)', fn: async () => { await instantiate(mod); } },
      { name: 'bare WebAssembly.compile + instantiate(bytes)', fn: async () => { await WebAssembly.instantiate(bytes, imports); } },
      { name: 'loader instantiate(bytes)', fn: async () => { await instantiate(bytes); } },
    ],
    { quick },
  );

  const bare = new WebAssembly.Instance(mod, imports).exports;
  const viaLoader = instantiateSync(mod).exports;
  const N = 1000;
  const calls = await measure(
    [
      { name: `bare export × ${N}`, items: N, fn: () => { let s = 0; for (let i = 0; i < N; i++) s += bare.abiVersion(); return s; } },
      { name: `loader export × ${N}`, items: N, fn: () => { let s = 0; for (let i = 0; i < N; i++) s += viaLoader.abiVersion(); return s; } },
    ],
    { quick },
  );

  const size = statSync(file).size;
  const debugSize = statSync(new URL('../dist/core.debug.wasm', import.meta.url)).size;
  return {
    summary: SUMMARY,
    title: 'core: loading and call overhead',
    sections: [
      { heading: 'Instantiation (ratios vs the bare API)', markdown: inst.table },
      { heading: 'Calling an export', markdown: calls.table },
    ],
    notes: [`core.wasm (release) is ${size} bytes; core.debug.wasm is ${debugSize} bytes.`],
  };
}
