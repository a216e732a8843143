/**
 * Start-up cost of loading the core in Node: init() must not pull in fetch's
 * implementation (undici), which the first touch of the global `Response`
 * loads (~30 ms of every CLI command; bindings/_loader.ts).
 */
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const dist = fileURLToPath(new URL('../dist/index.js', import.meta.url));

describe('core start-up in Node', () => {
  it('init() from the default location and from bytes loads no undici', () => {
    const script = `
      const { init } = await import(${JSON.stringify(dist)});
      const info = await init();
      const { readFileSync } = await import('node:fs');
      await init(readFileSync(new URL('./core.wasm', 'file://' + ${JSON.stringify(dist)})));
      console.log(JSON.stringify({ abi: info.abiVersion, loaded: process.moduleLoadList.filter((m) => /undici|fetch/i.test(m)) }));`;
    const out = JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', script]).toString()) as { abi: number; loaded: string[] };
    expect(out.abi).toBeGreaterThan(0);
    expect(out.loaded).toEqual([]);
    // The check itself can fail: touching Response does load it.
    const touched = execFileSync(process.execPath, ['-e', 'void Response; console.log(process.moduleLoadList.some((m) => /undici/.test(m)))']).toString().trim();
    expect(touched).toBe('true');
  });
});
