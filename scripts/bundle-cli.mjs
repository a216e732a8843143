#!/usr/bin/env node
// Bundles the built CLI (dist/cli/main.js and everything it may load) into one CommonJS file
// with esbuild, for bench/startup.bench.js: `node scripts/bundle-cli.mjs OUT [--snapshot]`.
// With --snapshot the file is an entry for `node --build-snapshot` (main runs from the
// deserialized heap). Two rewrites keep the bundle working from any folder:
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
const outDir = dirname(out);

const rewrite = {
  name: 'vmkit-cjs',
  setup(b) {
    b.onLoad({ filter: /\.js$/ }, async (args) => {
      let src = await readFile(args.path, 'utf8');
      if (src.includes('import.meta.url')) {
        const rel = relative(outDir, args.path);
        src = src.replaceAll('import.meta.url', `require('node:url').pathToFileURL(require('node:path').join(__dirname, ${JSON.stringify(rel)})).href`);
      }
      return { contents: src.replaceAll('import(/* @vite-ignore */ ', '__vmkitImport('), loader: 'js' };
    });
  },
};

// Under a snapshot, process.argv has no script path: the arguments start at argv[1].
const run = `main(process.argv.slice(${snapshot ? 1 : 2}), process).then((c) => { process.exitCode = c; })`;
await build({
  stdin: {
    contents: `import { main } from './dist/cli/main.js';\n${snapshot ? `require('node:v8').startupSnapshot.setDeserializeMainFunction(() => ${run});` : `${run};`}`,
    resolveDir: root,
    sourcefile: 'vmkit-entry.js',
  },
  banner: { js: `const __vmkitImport = (n) => (n.startsWith('node:') ? Promise.resolve(require(n)) : import(n));` },
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  outfile: out,
  plugins: [rewrite],
  logLevel: 'warning',
});
