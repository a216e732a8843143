#!/usr/bin/env node
/**
 * The `vmkit` executable.
 * @module
 */
import type { main as Main } from '../cli/main.js';

// Start-up of `vmkit disk …` (bench/startup.bench.js): the ES loader resolves, reads (through the
// thread pool), compiles and links each of its ~25 modules on its own, ~60% more CPU than bare
// `node -e 0`. `npm run build` also writes that group as one CommonJS file with main
// (dist/cli/_bundle/disk.cjs, scripts/bundle-cli.mjs), compiled here through vm.Script with a V8
// code cache beside it: one synchronous read, no resolution, and the functions the last run
// compiled come deserialized (~1.2x `node -e 0` instead of ~1.6x). Node 20 has no
// module.enableCompileCache, and an npm bin cannot pass --snapshot-blob. The cache is written
// when missing or rejected (another Node, other V8 flags), by rename so that concurrent runs see
// a whole file, and never when it cannot be (a read-only install compiles as without one). A
// bundle older than main.js (a build that skipped it) is not used: the ES modules are.
const BUNDLED: ReadonlySet<string> = new Set(['disk']);

function bundled(group: string | undefined): typeof Main | undefined {
  if (group === undefined || !BUNDLED.has(group)) return undefined;
  const fs = process.getBuiltinModule('node:fs');
  const file = new URL(`../cli/_bundle/${group}.cjs`, import.meta.url);
  const at = fs.statSync(file, { throwIfNoEntry: false });
  if (!at || at.mtimeMs < fs.statSync(new URL('../cli/main.js', import.meta.url)).mtimeMs) return undefined;
  const vm = process.getBuiltinModule('node:vm');
  const { createRequire, wrap } = process.getBuiltinModule('node:module') as typeof import('node:module') & { wrap(src: string): string };
  const path = process.getBuiltinModule('node:url').fileURLToPath(file);
  const cachePath = `${path}.v8cache`;
  let cachedData: Buffer | undefined;
  try {
    cachedData = fs.readFileSync(cachePath);
  } catch {
    cachedData = undefined;
  }
  const script = new vm.Script(wrap(fs.readFileSync(file, 'utf8')), {
    filename: path,
    ...(cachedData ? { cachedData } : {}),
    importModuleDynamically: vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER,
  });
  const m = { exports: {} as { main: typeof Main } };
  (script.runInThisContext() as (...a: unknown[]) => void).call(m.exports, m.exports, createRequire(path), m, path, path.slice(0, path.lastIndexOf('/')));
  if ((!cachedData || script.cachedDataRejected) && process.env.VMKIT_CODE_CACHE !== '0') {
    // At exit, so that the cache holds what this run compiled (the command's functions too).
    process.once('beforeExit', () => {
      const tmp = `${cachePath}.${process.pid}`;
      try {
        fs.writeFileSync(tmp, script.createCachedData());
        fs.renameSync(tmp, cachePath);
      } catch {
        fs.rmSync(tmp, { force: true });
      }
    });
  }
  return m.exports.main;
}

const argv = process.argv.slice(2);
const main = bundled(argv[0]) ?? (await import('../cli/main.js')).main;
process.exitCode = await main(argv, process);
