import { describe, expect, it } from 'vitest';
import { coreInfo, init, initSync, selfCheck, VmkitError, isVmkitError } from '../bindings/index.js';
import { core, withCore } from '../bindings/core.js';
import { bytesOf } from './_bytes.js';

describe('core loading', () => {
  it('reports the ABI version the bindings expect', () => {
    expect(coreInfo().abiVersion).toBe(1);
    expect(coreInfo().memoryBytes).toBeGreaterThan(0);
  });

  it('passes its self-check', () => {
    expect(selfCheck()).toBe(0);
  });

  it('accepts bytes, a compiled module and a URL', async () => {
    const url = new URL('../dist/core.debug.wasm', import.meta.url);
    const bytes = new Uint8Array(await (await bytesOf(url)).slice(0));
    expect((await init(bytes)).abiVersion).toBe(1);
    const mod = await WebAssembly.compile(bytes);
    expect((await init(mod)).abiVersion).toBe(1);
    expect(initSync(mod).abiVersion).toBe(1);
    expect(initSync(bytes).abiVersion).toBe(1);
    expect((await init(url)).abiVersion).toBe(1);
  });

  it('rejects bytes that are not a vmkit core with CORE_LOAD', async () => {
    await expect(init(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0]))).rejects.toMatchObject({ code: 'CORE_LOAD' });
    expect(() => initSync(new Uint8Array([1, 2, 3]))).toThrow(VmkitError);
    // the previous good core stays usable
    await init(new URL('../dist/core.debug.wasm', import.meta.url));
    expect(selfCheck()).toBe(0);
  });

  it('rejects a wrong argument type naming it', () => {
    expect(() => initSync('nope' as unknown as Uint8Array)).toThrow(/source must be/);
  });

  it('turns a trap into VmkitError CORE_TRAP and resets the instance', () => {
    const before = coreInfo().resets;
    const gen = core().generation;
    let err: unknown;
    try {
      withCore((c) => c.exports.debugAbort(1));
    } catch (e) {
      err = e;
    }
    expect(isVmkitError(err, 'CORE_TRAP')).toBe(true);
    expect((err as Error).message).toMatch(/debugAbort called/);
    expect(coreInfo().resets).toBe(before + 1);
    expect(core().generation).not.toBe(gen);
    expect(selfCheck()).toBe(0);
  });

  it('allocates and frees host buffers in core memory', () => {
    const c = core();
    const p = c.alloc(4096);
    expect(p % 16).toBe(0);
    c.u8().fill(7, p, p + 4096);
    expect(c.u8()[p + 4095]).toBe(7);
    c.free(p);
    // Past the largest core buffer: LIMIT before the core sees it (a u32 size would wrap).
    expect(() => c.alloc(2 ** 31 + 1)).toThrow(expect.objectContaining({ code: 'LIMIT' }));
  });
});
