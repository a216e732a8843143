// The core used with the bare WebAssembly API and only the imports docs/abi.md
// documents: no loader, no vmkit bindings.
import { describe, expect, it } from 'vitest';
import { bytesOf } from './_bytes.js';

// Built from a base URL so Vite does not turn a template URL into a glob of dist/.
const dist = new URL('../dist/', import.meta.url);

for (const build of ['core.wasm', 'core.debug.wasm']) {
  describe(`bare WebAssembly API: ${build}`, () => {
    it('imports exactly env.abort', async () => {
      const mod = await WebAssembly.compile(await bytesOf(new URL(build, dist)));
      expect(WebAssembly.Module.imports(mod)).toEqual([{ module: 'env', name: 'abort', kind: 'function' }]);
      const names = WebAssembly.Module.exports(mod).map((e) => e.name);
      for (const n of ['memory', 'alloc', 'free', 'abiVersion', 'selfCheck']) expect(names).toContain(n);
    });

    it('runs selfCheck, alloc/free and reports abort messages as documented', async () => {
      let aborted = '';
      const { instance } = (await WebAssembly.instantiate(await bytesOf(new URL(build, dist)), {
        env: {
          abort(msg: number, file: number, line: number, col: number) {
            // docs/abi.md: UTF-16LE, byte length as u32 at ptr - 4
            const mem = (instance.exports.memory as WebAssembly.Memory).buffer;
            const str = (p: number) => (p === 0 ? '' : String.fromCharCode(...new Uint16Array(mem, p, new Uint32Array(mem, p - 4, 1)[0]! / 2)));
            aborted = `${str(msg)} at ${str(file)}:${line}:${col}`;
            throw new Error(aborted);
          },
        },
      })) as unknown as WebAssembly.WebAssemblyInstantiatedSource;
      const ex = instance.exports as Record<string, unknown> as {
        memory: WebAssembly.Memory;
        alloc(n: number): number;
        free(p: number): void;
        abiVersion(): number;
        selfCheck(): number;
        debugAbort(c: number): number;
      };
      expect(ex.abiVersion()).toBe(1);
      expect(ex.selfCheck()).toBe(0);
      const p = ex.alloc(1 << 20);
      expect(p).toBeGreaterThan(0);
      expect(p % 16).toBe(0);
      new Uint8Array(ex.memory.buffer, p, 1 << 20).fill(0xab);
      const q = ex.alloc(64);
      expect(q >= p + (1 << 20) || q + 64 <= p).toBe(true);
      ex.free(q);
      ex.free(p);
      expect(ex.alloc(0)).toBe(0);
      expect(() => ex.debugAbort(1)).toThrow(/debugAbort called at assembly\/index.ts/);
      expect(aborted).toMatch(/^debugAbort called/);
    });
  });
}
