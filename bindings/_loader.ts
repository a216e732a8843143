/**
 * The only module that touches `@assemblyscript/loader`. Everything else asks
 * this one for an instance, so swapping the loader for the compiler's own
 * bindings (or the bare WebAssembly API) is a change to this file alone. See
 * docs/loading.md for why the loader is kept and what it costs.
 * @module
 */
import { instantiate, instantiateSync } from '@assemblyscript/loader';

/** What the loader hands back: the raw instance, its module and its exports. */
export interface LoadedCore {
  module: WebAssembly.Module;
  instance: WebAssembly.Instance;
  exports: Record<string, unknown>;
}

/** Instantiates the core asynchronously from bytes, a compiled module or a fetch Response. */
export async function loadCore(source: WebAssembly.Module | BufferSource | Response): Promise<LoadedCore> {
  // The loader supplies `env.abort`, decoding the core's UTF-16 message and
  // throwing an Error; bindings/core.ts turns that into a VmkitError.
  if (_isNode() && (source instanceof WebAssembly.Module || ArrayBuffer.isView(source) || source instanceof ArrayBuffer)) {
    // The loader's asynchronous path asks `source instanceof Response`, and in Node the first
    // touch of the global `Response` loads undici, fetch's implementation: about 30 ms of a
    // CLI command's start-up. Compiling here and instantiating the compiled module through the
    // loader's synchronous entry (Node's main thread has no size limit on that) skips it.
    const m = source instanceof WebAssembly.Module ? source : await WebAssembly.compile(source as BufferSource);
    return adopt(instantiateSync(m));
  }
  const r = await instantiate(source as WebAssembly.Module);
  return adopt(r);
}

/** True in Node (where the global `Response` is loaded lazily, at a cost). */
function _isNode(): boolean {
  const p = (globalThis as { process?: { versions?: { node?: string } } }).process;
  return typeof p?.versions?.node === 'string';
}

/** Instantiates the core synchronously (Node, workers; bytes or a compiled module). */
export function loadCoreSync(source: WebAssembly.Module | BufferSource): LoadedCore {
  return adopt(instantiateSync(source as WebAssembly.Module));
}

// The loader's demangled `exports` wrap every function in a JavaScript shim that
// costs about 2x per call (bench/core.bench.js); vmkit uses no managed objects
// across the boundary, so calls go to the raw instance exports. The loader still
// does instantiation and the `env.abort` message decoding.
function adopt(r: { module: WebAssembly.Module; instance: WebAssembly.Instance }): LoadedCore {
  return { module: r.module, instance: r.instance, exports: r.instance.exports as unknown as Record<string, unknown> };
}
