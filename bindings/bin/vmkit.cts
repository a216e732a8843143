#!/usr/bin/env node
/**
 * The `vmkit` executable (package.json `bin`). CommonJS: Node starts a CommonJS entry without
 * its ES loader, ~5-10% of a bare `node -e 0` (bench/startup.bench.js); the CLI itself stays ES
 * modules, imported below. dist/bin/vmkit.js runs this file too.
 * @module
 */
const fs = require('node:fs') as typeof import('node:fs');
const path = require('node:path') as typeof import('node:path');
const vm = require('node:vm') as typeof import('node:vm');
const nodeModule = require('node:module') as typeof import('node:module');
import type { main as Main } from '../cli/main.js';

// Start-up of `vmkit disk …`: the ES loader resolves, reads (through the thread pool), compiles
// and links each of its ~25 modules on its own, ~60% more CPU than bare `node -e 0`. `npm run
// build` also writes that group as one CommonJS file with main (dist/cli/_bundle/disk.cjs,
// scripts/bundle-cli.mjs), compiled here through vm.Script with a V8 code cache beside it: one
// synchronous read, no resolution, and the functions the build's `disk info` compiled come
// deserialized. Node 20 has no module.enableCompileCache, and an npm bin cannot pass
// --snapshot-blob. The cache is written when missing or rejected (another Node, other V8 flags),
// by rename so that concurrent runs see a whole file, and never when it cannot be (a read-only
// install compiles as without one). A bundle older than main.js (a build that skipped it) is not
// used: the ES modules are.
// `vmkit --help`, `--version` and no arguments run from it too (it holds main): the bin would
// otherwise pay for both loaders.
const BUNDLED: ReadonlyMap<string | undefined, string> = new Map([
  ['disk', 'disk'],
  [undefined, 'disk'],
  ['--help', 'disk'],
  ['-h', 'disk'],
  ['help', 'disk'],
  ['--version', 'disk'],
  ['-v', 'disk'],
]);

function bundled(first: string | undefined): typeof Main | undefined {
  const group = BUNDLED.get(first);
  if (group === undefined) return undefined;
  const dir = path.join(__dirname, '../cli/_bundle');
  const file = path.join(dir, `${group}.cjs`);
  const at = fs.statSync(file, { throwIfNoEntry: false });
  if (!at || at.mtimeMs < fs.statSync(path.join(__dirname, '../cli/main.js')).mtimeMs) return undefined;
  const cachePath = `${file}.v8cache`;
  let cachedData: Buffer | undefined;
  try {
    cachedData = fs.readFileSync(cachePath);
  } catch {
    cachedData = undefined;
  }
  // A CommonJS module's wrapper, plus the bundle's one way to import() (scripts/bundle-cli.mjs):
  // V8 does not keep a script's import() callback in its code cache, so the bundle has no import().
  const script = new vm.Script(`(function (exports, require, module, __filename, __dirname, __vmkitImportES) {${fs.readFileSync(file, 'utf8')}\n})`, {
    filename: file,
    ...(cachedData ? { cachedData } : {}),
  });
  const m = { exports: {} as { main: typeof Main } };
  const importES = (url: string): Promise<unknown> => import(url);
  (script.runInThisContext() as (...a: unknown[]) => void).call(m.exports, m.exports, nodeModule.createRequire(file), m, file, dir, importES);
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
const main = bundled(argv[0]);
void (main ? Promise.resolve(main) : import('../cli/main.js').then((x) => x.main))
  .then((run) => run(argv, process))
  .then((code) => {
    process.exitCode = code;
  });
