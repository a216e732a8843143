// docs/abi.md is the whole contract of core.wasm: every export of the built
// module (functions, constant globals, memory) has a row there, the release and
// debug builds export the same names, and each constant has the value the page
// gives it. bindings/_abi.ts (the export types the bindings use, generated from
// `asc --bindings raw` by scripts/build-core.mjs) names the same exports with the
// same kinds and parameter counts, so a stale committed copy fails here.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

const root = new URL('../', import.meta.url);
const doc = readFileSync(new URL('docs/abi.md', root), 'utf8');
const release = new WebAssembly.Module(readFileSync(new URL('dist/core.wasm', root)));
const debug = new WebAssembly.Module(readFileSync(new URL('dist/core.debug.wasm', root)));

/** Table rows of docs/abi.md as their cells. */
const rows = doc
  .split('\n')
  .filter((l) => l.startsWith('|') && !/^\|\s*-/.test(l))
  .map((l) => l.split(/(?<!\\)\|/).slice(1, -1).map((c) => c.trim()));
/** Names in backticks in a row's first cell (`a` / `b` rows name several). */
const named = (cell: string): string[] => [...cell.matchAll(/`([A-Za-z_][A-Za-z0-9_]*)`/g)].map((m) => m[1]!);
const documented = new Set(rows.flatMap((r) => named(r[0] ?? '')));

describe('docs/abi.md documents every export of dist/core.wasm', () => {
  it('release and debug builds export the same names and kinds', () => {
    const ex = (m: WebAssembly.Module): string[] => WebAssembly.Module.exports(m).map((e) => `${e.name}:${e.kind}`).sort();
    expect(ex(debug)).toEqual(ex(release));
  });

  it('each export has a row', () => {
    const exports = WebAssembly.Module.exports(release);
    expect(exports.length).toBeGreaterThan(90);
    const missing = exports.filter((e) => !documented.has(e.name)).map((e) => `${e.name} (${e.kind})`);
    expect(missing).toEqual([]);
  });

  it('the only import is the documented env.abort', () => {
    expect(WebAssembly.Module.imports(release)).toEqual([{ module: 'env', name: 'abort', kind: 'function' }]);
    expect(rows.some((r) => r[0] === '`env`' && r[1] === '`abort`')).toBe(true);
  });

  it('every constant has the value the Constants table gives', () => {
    const inst = new WebAssembly.Instance(release, { env: { abort: () => { throw new Error('abort'); } } });
    const globals = WebAssembly.Module.exports(release).filter((e) => e.kind === 'global');
    expect(globals.length).toBeGreaterThan(20);
    for (const g of globals) {
      const row = rows.find((r) => named(r[0] ?? '').includes(g.name) && r.length === 4);
      expect(row, g.name).toBeDefined();
      const names = named(row![0]!);
      const cell = row![2]!;
      const value = (inst.exports[g.name] as WebAssembly.Global).value as number | bigint;
      let want: number | bigint;
      if (cell.includes('0xffff…ffff')) want = -1n; // u64 all ones, read back signed
      else if (/^\d+ … \d+$/.test(cell)) want = Number(cell.split(' … ')[0]) + names.indexOf(g.name); // a consecutive range
      else want = Number(cell.replace(/`/g, '').split(' / ')[names.indexOf(g.name)]);
      expect(value, g.name).toBe(want);
    }
  });

  it('bindings/_abi.ts types exactly the exports of the build, with their parameter counts', () => {
    const abi = readFileSync(new URL('bindings/_abi.ts', root), 'utf8');
    const typed = new Map<string, string>();
    for (const m of abi.matchAll(/^ {2}readonly (\w+): /gm)) typed.set(m[1]!, m[1] === 'memory' ? 'memory' : 'global');
    for (const m of abi.matchAll(/^ {2}(\w+)\(([^)]*)\): /gm)) typed.set(m[1]!, `function/${m[2]!.trim() === '' ? 0 : m[2]!.split(',').length}`);
    const inst = new WebAssembly.Instance(release, { env: { abort: () => { throw new Error('abort'); } } });
    const built = new Map<string, string>();
    for (const e of WebAssembly.Module.exports(release)) {
      built.set(e.name, e.kind === 'function' ? `function/${(inst.exports[e.name] as (...a: unknown[]) => unknown).length}` : e.kind);
    }
    expect(built.size).toBeGreaterThan(90);
    expect(Object.fromEntries([...typed].sort())).toEqual(Object.fromEntries([...built].sort()));
  });
});
