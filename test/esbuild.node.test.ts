// docs/loading.md's esbuild recipes, as written there: esbuild bundles the
// JavaScript but does not copy the asset behind `new URL('./core.wasm',
// import.meta.url)` (evanw/esbuild#795), so a bundle that relies on init()'s
// default finds no core.wasm; the recipes (copy it next to the bundle, import it
// with the `file` loader, or inline it with the `binary` loader) load the core.
// Each bundle is moved to an empty folder and run there with Node.
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
// The app sits inside the package folder so that `import … from 'vmkit'` resolves to this package.
const src = mkdtempSync(join(root, '.esbuild-check-'));
const out = mkdtempSync(join(tmpdir(), 'vmkit-esbuild-'));
afterAll(() => {
  rmSync(src, { recursive: true, force: true });
  rmSync(out, { recursive: true, force: true });
});

const esbuild = join(root, 'node_modules', '.bin', 'esbuild');

/** The app: loads the core, checks it, round-trips a page through the core's LZ4. */
const body = `
import { lz4CompressBlock, lz4DecompressBlock } from 'vmkit/memory';
const page = new Uint8Array(4096).map((_, i) => (i * 7) & 0x3f);
const back = lz4DecompressBlock(lz4CompressBlock(page), page.length);
console.log(JSON.stringify({ selfCheck: selfCheck(), roundTrip: back.every((b, i) => b === page[i]) }));
`;

function bundle(name: string, code: string, args: string[]): string {
  const dir = join(out, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(src, `${name}.mjs`), code);
  execFileSync(esbuild, [join(src, `${name}.mjs`), '--bundle', '--platform=node', '--format=esm', '--target=node20', '--out-extension:.js=.mjs', `--outdir=${dir}`, ...args], { cwd: root, stdio: 'pipe' });
  return dir;
}

function run(dir: string): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [join(dir, readdirSync(dir).find((f) => f.endsWith('.mjs'))!)], { cwd: dir, encoding: 'utf8' });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

describe('esbuild (docs/loading.md)', () => {
  it('does not copy core.wasm: a bundle relying on init() alone fails to find it', () => {
    const dir = bundle('plain', `import { init, selfCheck } from 'vmkit';\nawait init();\n${body}`, []);
    expect(readdirSync(dir).filter((f) => f.endsWith('.wasm'))).toEqual([]);
    const r = run(dir);
    expect(r.status).not.toBe(0);
    expect(r.out).toMatch(/CORE_LOAD[\s\S]*ENOENT[\s\S]*core\.wasm/);
  });

  it('recipe 1: copy core.wasm next to the bundle; init() finds it', () => {
    const dir = bundle('copied', `import { init, selfCheck } from 'vmkit';\nawait init();\n${body}`, []);
    // What the recipe's `cp node_modules/vmkit/dist/core.wasm dist/` does (here the package is this folder).
    copyFileSync(join(root, 'dist', 'core.wasm'), join(dir, 'core.wasm'));
    const r = run(dir);
    expect(r.status, r.out).toBe(0);
    expect(JSON.parse(r.out)).toEqual({ selfCheck: 0, roundTrip: true });
  });

  it('recipe 2: import vmkit/core.wasm with the file loader; esbuild copies it and init() gets its URL', () => {
    const dir = bundle('file-loader', `import { init, selfCheck } from 'vmkit';\nimport wasmUrl from 'vmkit/core.wasm';\nawait init(new URL(wasmUrl, import.meta.url));\n${body}`, ['--loader:.wasm=file']);
    const wasm = readdirSync(dir).filter((f) => f.endsWith('.wasm'));
    expect(wasm.length).toBe(1);
    expect(readFileSync(join(dir, wasm[0]!)).equals(readFileSync(join(root, 'dist', 'core.wasm')))).toBe(true);
    const r = run(dir);
    expect(r.status, r.out).toBe(0);
    expect(JSON.parse(r.out)).toEqual({ selfCheck: 0, roundTrip: true });
  });

  it('recipe 3: inline vmkit/core.wasm with the binary loader; one file, initSync(bytes)', () => {
    const dir = bundle('binary-loader', `import { initSync, selfCheck } from 'vmkit';\nimport wasm from 'vmkit/core.wasm';\ninitSync(wasm);\n${body}`, ['--loader:.wasm=binary']);
    expect(readdirSync(dir)).toEqual(['binary-loader.mjs']);
    const r = run(dir);
    expect(r.status, r.out).toBe(0);
    expect(JSON.parse(r.out)).toEqual({ selfCheck: 0, roundTrip: true });
  });

  it('the built core is there to bundle', () => {
    expect(existsSync(join(root, 'dist', 'core.wasm'))).toBe(true);
  });
});
