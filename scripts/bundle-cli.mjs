#!/usr/bin/env node
// Bundles the built CLI (dist/cli/main.js and everything it may load) into one CommonJS file
// with esbuild, for bench/startup.bench.js: `node scripts/bundle-cli.mjs OUT [--snapshot]`.
// With --snapshot the file is an entry for `node --build-snapshot` (main runs from the
// deserialized heap). With `--group NAME` (npm run build: dist/cli/_bundle/disk.cjs) the file
// holds main and that one command group (the other groups' commands are left out: the bin loads
// it only for that group) and exports `main`; the bin compiles it with a V8 code cache
// (bindings/bin/vmkit.ts says why). Two rewrites keep the bundle working from any folder:
//  - `import.meta.url` in each module becomes the URL of that module's file in dist/, so the
//    files found next to it (core.wasm, package.json, the checkpoint save worker) still are;
//  - dynamic imports hidden from bundlers (`import(/* @vite-ignore */ name)`: node:fs and other
//    builtins) become `require` for builtins: a CommonJS `require('node:fs')` skips the ES
//    facade's evaluation of every lazy export (streams, promises: ~8 ms), and a start-up
//    snapshot has no dynamic import at all.
import { build } from 'esbuild';
import { readFile } from 'node:fs/promises';
import { dirname, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const out = resolve(process.argv[2] ?? resolve(root, 'bench/.data/startup/vmkit.cjs'));
const snapshot = process.argv.includes('--snapshot');
const gi = process.argv.indexOf('--group');
const group = gi > 0 ? process.argv[gi + 1] : undefined;
const outDir = dirname(out);

const rewrite = {
  name: 'vmkit-cjs',
  setup(b) {
    // A group bundle leaves the other groups' commands out (main imports each on use).
    if (group) b.onResolve({ filter: /^\.\/commands\/[a-z]+\.js$/ }, (args) => (args.path === `./commands/${group}.js` ? undefined : { path: args.path, namespace: 'vmkit-absent' }));
    b.onLoad({ filter: /.*/, namespace: 'vmkit-absent' }, () => ({ contents: `throw new Error('not in this bundle');`, loader: 'js' }));
    b.onLoad({ filter: /\.js$/ }, async (args) => {
      let src = await readFile(args.path, 'utf8');
      const rel = relative(outDir, args.path);
      if (src.includes('import.meta.url')) {
        src = src.replaceAll('import.meta.url', `require('node:url').pathToFileURL(require('node:path').join(__dirname, ${JSON.stringify(rel)})).href`);
      }
      // Every dynamic import left to run time goes through __vmkitImport, with the importing
      // module's place (a relative name resolves against it, not against the bundle).
      src = src.replaceAll('import(/* @vite-ignore */ ', `__vmkitImport(${JSON.stringify(rel)}, `).replace(/\bimport\((?=['"]node:)/g, `__vmkitImport(${JSON.stringify(rel)}, `);
      return { contents: src, loader: 'js' };
    });
  },
};

// Under a snapshot, process.argv has no script path: the arguments start at argv[1].
const run = `main(process.argv.slice(${snapshot ? 1 : 2}), process).then((c) => { process.exitCode = c; })`;
await build({
  stdin: {
    contents: group ? `export { main } from './dist/cli/main.js';` : `import { main } from './dist/cli/main.js';\n${snapshot ? `require('node:v8').startupSnapshot.setDeserializeMainFunction(() => ${run});` : `${run};`}`,
    resolveDir: root,
    sourcefile: 'vmkit-entry.js',
  },
  // A group bundle runs from vm.Script with a code cache, where V8 drops what import() needs
  // (functions from the cache throw "A dynamic import callback was not specified"): the bin
  // passes __vmkitImportES, an import() of its own, and no import() may be left in the bundle.
  banner: {
    js: `const __vmkitImport = (from, n) => (n.startsWith('node:') ? Promise.resolve(require(n)) : (${group ? '__vmkitImportES' : '(u) => import(u)'})(/^\\.\\.?\\//.test(n) ? require('node:url').pathToFileURL(require('node:path').join(__dirname, from, '..', n)).href : n));`,
  },
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  outfile: out,
  plugins: [rewrite],
  logLevel: 'warning',
});

if (group && /\bimport\(/.test(await readFile(out, 'utf8'))) throw new Error(`${out}: an import() is left in the bundle (see the banner)`);

// A group bundle's first code cache: `disk info` of a small image (made with the cache off), so that
// the cache holds the functions a first `disk info` compiles.
if (group === 'disk') {
  const { spawnSync } = await import('node:child_process');
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(resolve(tmpdir(), 'vmkit-bundle-'));
  const bin = resolve(root, 'dist/bin/vmkit.js');
  rmSync(`${out}.v8cache`, { force: true });
  try {
    const img = resolve(dir, 'warm.qcow2');
    for (const [env, args] of [[{ VMKIT_CODE_CACHE: '0' }, ['disk', 'create', img, '--size', '1M']], [{}, ['disk', 'info', img]]]) {
      const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, ...env } });
      if (r.status !== 0) throw new Error(`vmkit ${args.join(' ')}: ${r.stderr}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
