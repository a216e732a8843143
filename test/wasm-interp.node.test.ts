// The core's self-check under a second, non-JavaScript runtime: wabt's
// wasm-interp (a stack-based interpreter written in C++).
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { needTool } from './_tools.js';

describe('wasm-interp', () => {
  const run = needTool('wasm-interp', 'wabt') ? it : it.skip;
  for (const build of ['core.wasm', 'core.debug.wasm']) {
    run(`runs selfCheck() of ${build} and returns 0`, () => {
      const file = fileURLToPath(new URL(`../dist/${build}`, import.meta.url));
      // --dummy-import-func stands in for env.abort (never called when checks pass);
      // --run-all-exports calls every export: selfCheck and the module checks take no arguments.
      const out = execFileSync('wasm-interp', ['--enable-all', '--dummy-import-func', '--run-all-exports', file], {
        encoding: 'utf8',
        timeout: 240_000,
        maxBuffer: 64 << 20,
      });
      const line = out.split('\n').find((l) => l.startsWith('selfCheck('));
      expect(line, out.slice(0, 2000)).toBe('selfCheck() => i32:0');
      expect(out).toMatch(/^abiVersion\(\) => i32:1$/m);
    });
  }
});
