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

describe('CLI start-up: the core is compiled only by commands that use it', () => {
  it('disk create and disk info leave it unloaded; selfcheck loads it through the autoload', () => {
    const main = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));
    const core = fileURLToPath(new URL('../dist/core.js', import.meta.url));
    const script = `
      const { mkdtempSync } = process.getBuiltinModule('node:fs');
      const { tmpdir } = process.getBuiltinModule('node:os');
      const { main } = await import(${JSON.stringify(main)});
      const core = await import(${JSON.stringify(core)});
      const img = mkdtempSync(tmpdir() + '/vmkit-autoload-') + '/a.qcow2';
      const out = [];
      const io = { stdout: { write: (s) => (out.push(s), true) }, stderr: process.stderr };
      const codes = [await main(['disk', 'create', img, '--size', '1M'], io), await main(['disk', 'info', img, '--json'], io)];
      const afterInfo = core.isInitialized();
      codes.push(await main(['selfcheck', 'run'], io));
      console.log(JSON.stringify({ codes, afterInfo, afterSelfcheck: core.isInitialized(), size: JSON.parse(out[1]).virtualSize }));`;
    const r = JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', script]).toString()) as Record<string, unknown>;
    expect(r).toEqual({ codes: [0, 0, 0], afterInfo: false, afterSelfcheck: true, size: 1 << 20 });
  });
});
