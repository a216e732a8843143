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
  const r = await instantiate(source as WebAssembly.Module);
  return adopt(r);
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
