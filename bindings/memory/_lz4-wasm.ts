/**
 * The one wrapper of the `lz4-wasm` package (lz4_flex compiled by
 * wasm-bindgen), used by vmkit's interop specs and benchmarks as the peer of
 * the core's LZ4.
 *
 * The package ships only a bundler build: `lz4_wasm.js` does
 * `import * as wasm from './lz4_wasm_bg.wasm'`, which Node cannot import. So
 * this module reads `lz4_wasm_bg.wasm` itself, instantiates it with the one
 * import it needs (`./lz4_wasm_bg.js` → `__wbindgen_string_new`, used only for
 * error messages) and calls its exports with the same stack-pointer / malloc /
 * free protocol the package's own glue (`lz4_wasm_bg.js`) uses. Nothing of the
 * package is copied; see docs/lz4.md.
 *
 * Format: `compress` returns lz4_flex's `compress_prepend_size` output, a
 * 4-byte little-endian decoded size followed by one raw LZ4 block.
 * Node only (reads the .wasm from node_modules).
 * @module
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { VmkitError } from '../errors.js';

interface WbgExports {
  memory: WebAssembly.Memory;
  compress(ret: number, ptr: number, len: number): void;
  decompress(ret: number, ptr: number, len: number): void;
  __wbindgen_add_to_stack_pointer(d: number): number;
  __wbindgen_malloc(n: number): number;
  __wbindgen_free(p: number, n: number): void;
}

/** The lz4-wasm codec: size-prepended LZ4 blocks. */
export interface Lz4Wasm {
  /** lz4_flex `compress_prepend_size`: u32 LE size + one LZ4 block. */
  compress(input: Uint8Array): Uint8Array;
  /** Inverse of `compress`; throws CORRUPT when lz4_flex reports an error. */
  decompress(input: Uint8Array): Uint8Array;
}

let cached: Lz4Wasm | undefined;

/**
 * Loads `lz4-wasm` from node_modules (once).
 * @example
 * ```ts
 * const peer = loadLz4Wasm();
 * const packed = peer.compress(page); // 4-byte size + LZ4 block
 * ```
 */
export function loadLz4Wasm(): Lz4Wasm {
  if (cached) return cached;
  let bytes: Uint8Array;
  try {
    const req = createRequire(import.meta.url);
    bytes = readFileSync(req.resolve('lz4-wasm/lz4_wasm_bg.wasm'));
  } catch (e) {
    throw new VmkitError('NOT_FOUND', 'the lz4-wasm package is not installed (npm install lz4-wasm)', { cause: e });
  }
  const strings: (string | undefined)[] = [];
  let wasm: WbgExports | undefined;
  const imports = {
    './lz4_wasm_bg.js': {
      __wbindgen_string_new(ptr: number, len: number): number {
        const s = new TextDecoder().decode(new Uint8Array(wasm!.memory.buffer, ptr, len));
        strings.push(s);
        return strings.length - 1 + 1000; // an opaque handle, read back by take()
      },
    },
  };
  const inst = new WebAssembly.Instance(new WebAssembly.Module(bytes as Uint8Array<ArrayBuffer>), imports);
  wasm = inst.exports as unknown as WbgExports;
  const w = wasm;
  const take = (h: number): string => {
    const s = strings[h - 1000] ?? 'unknown error';
    strings.length = 0;
    return s;
  };
  const call = (fn: 'compress' | 'decompress', input: Uint8Array): Uint8Array => {
    const ret = w.__wbindgen_add_to_stack_pointer(-16);
    try {
      const p = w.__wbindgen_malloc(input.length);
      new Uint8Array(w.memory.buffer).set(input, p);
      w[fn](ret, p, input.length);
      const i32 = new Int32Array(w.memory.buffer);
      const r0 = i32[ret / 4]!;
      const r1 = i32[ret / 4 + 1]!;
      if (fn === 'decompress' && i32[ret / 4 + 3]) {
        throw new VmkitError('CORRUPT', `lz4-wasm: ${take(i32[ret / 4 + 2]!)}`);
      }
      const out = new Uint8Array(w.memory.buffer).slice(r0, r0 + r1);
      w.__wbindgen_free(r0, r1);
      return out;
    } finally {
      w.__wbindgen_add_to_stack_pointer(16);
    }
  };
  cached = {
    compress: (input) => call('compress', input),
    decompress: (input) => call('decompress', input),
  };
  return cached;
}

/**
 * Splits lz4-wasm's output into the decoded size and the raw LZ4 block.
 * @example
 * ```ts
 * const { size, block } = splitPrepended(peer.compress(page));
 * ```
 */
export function splitPrepended(packed: Uint8Array): { size: number; block: Uint8Array } {
  if (packed.length < 4) throw new VmkitError('CORRUPT', 'lz4-wasm output shorter than its size prefix');
  const size = new DataView(packed.buffer, packed.byteOffset, 4).getUint32(0, true);
  return { size, block: packed.subarray(4) };
}

/**
 * Builds lz4-wasm's input format (u32 LE size + block) from a raw LZ4 block.
 * @example
 * ```ts
 * const page = peer.decompress(prependSize(lz4CompressBlock(page0), 4096));
 * ```
 */
export function prependSize(block: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(block.length + 4);
  new DataView(out.buffer).setUint32(0, size >>> 0, true);
  out.set(block, 4);
  return out;
}
