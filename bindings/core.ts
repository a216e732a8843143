/**
 * Loading the wasm core and calling into it safely.
 *
 * `init()` must resolve (or `initSync()` return) before any API that uses the
 * core. There is no top-level await: the default location is resolved only
 * when `init()` is called.
 * @module
 */
import { loadCore, loadCoreSync, type LoadedCore } from './_loader.js';
import type { CoreExports } from './_abi.js';
import { VmkitError } from './errors.js';
import { nodeModule } from './_node.js';

/**
 * ABI version this build of the bindings speaks (see docs/abi.md).
 *
 * @example
 * ```ts
 * import { init, coreInfo, CORE_ABI_VERSION } from 'vmkit';
 * await init();
 * console.assert(coreInfo().abiVersion === CORE_ABI_VERSION);
 * ```
 */
export const CORE_ABI_VERSION = 1;

/**
 * The largest buffer the bindings ask the core for in one piece: 512 MiB.
 * Entries that size a core buffer from their caller's input (an LZ4 block, a
 * table capacity) refuse more with `LIMIT` naming their own largest size, or
 * work in pieces; nothing reaches the core's allocator above this (whose own
 * ceiling is 1 GiB per block, and a trap past it would reset the core).
 *
 * @example
 * ```ts
 * import { CORE_MAX_ALLOC } from 'vmkit';
 * console.log(CORE_MAX_ALLOC); // 536870912
 * ```
 */
export const CORE_MAX_ALLOC: number = 512 * 1024 * 1024;

/**
 * Where to load the core from.
 *
 * @example
 * ```ts
 * import { init } from 'vmkit';
 * await init(new URL('./core.wasm', import.meta.url)); // or bytes, a Response, a WebAssembly.Module
 * ```
 */
export type CoreSource =
  | URL
  | string
  | Uint8Array
  | ArrayBuffer
  | WebAssembly.Module
  | Response
  | Promise<Response | Uint8Array | ArrayBuffer | WebAssembly.Module>;

/**
 * Facts about the loaded core.
 *
 * @example
 * ```ts
 * const { abiVersion, memoryBytes, resets } = coreInfo();
 * ```
 */
export interface CoreInfo {
  /** ABI version reported by the core. */
  abiVersion: number;
  /** Bytes of linear memory the core currently has. */
  memoryBytes: number;
  /** How many times the core was re-instantiated after a trap. */
  resets: number;
}

/**
 * A live core instance. Internal to vmkit's bindings (exported for the other
 * modules of this package); `generation` changes when a trap forces a reset,
 * which invalidates every pointer into the old memory.
 */
export interface Core {
  /** Every export with its signature, generated from the core at build time (bindings/_abi.ts). */
  readonly exports: CoreExports;
  readonly generation: number;
  /** A view of the whole memory; re-made after growth, so do not keep it across calls that allocate. */
  u8(): Uint8Array;
  /** Allocates `size` bytes in core memory (16-byte aligned). Throws CORE_NO_MEMORY. */
  alloc(size: number): number;
  /** Frees a block from `alloc`. */
  free(ptr: number): void;
}

let loaded: LoadedCore | undefined;
let current: CoreImpl | undefined;
let generation = 0;
let resets = 0;

class CoreImpl implements Core {
  readonly exports: CoreExports;
  readonly generation: number;
  private view: Uint8Array;
  constructor(exports: Record<string, unknown>, gen: number) {
    // adopt() checked the base exports and the ABI version: the rest are this build's (bindings/_abi.ts).
    this.exports = exports as unknown as CoreExports;
    this.generation = gen;
    this.view = new Uint8Array(this.exports.memory.buffer);
  }
  u8(): Uint8Array {
    // A grown memory detaches the old ArrayBuffer (byteLength 0).
    if (this.view.buffer !== this.exports.memory.buffer) this.view = new Uint8Array(this.exports.memory.buffer);
    return this.view;
  }
  alloc(size: number): number {
    // The export takes a u32: a larger size would wrap into a small block. The
    // entries that allocate from a caller's size refuse it first with their
    // own limit; this is the backstop for all of them.
    if (!Number.isSafeInteger(size) || size < 0) throw new VmkitError('ARG_RANGE', `core allocation size must be a non-negative integer, got ${size}`);
    if (size > CORE_MAX_ALLOC) {
      throw new VmkitError('LIMIT', `a core buffer of ${size} bytes is over the largest the core makes, ${CORE_MAX_ALLOC} bytes`);
    }
    let p: number;
    try {
      p = this.exports.alloc(size) >>> 0;
    } catch (e) {
      // The allocator traps only when the engine refuses to grow memory below
      // its declared maximum (the core checks the maximum itself), and it does
      // so before it changes any state: the instance is still sound, so this
      // is no reset, just no memory.
      if (e instanceof WebAssembly.RuntimeError) throw new VmkitError('CORE_NO_MEMORY', `core could not grow its memory for ${size} bytes`, { cause: e });
      throw e;
    }
    if (p === 0 && size !== 0) {
      throw new VmkitError('CORE_NO_MEMORY', `core could not allocate ${size} bytes`);
    }
    return p;
  }
  free(ptr: number): void {
    this.exports.free(ptr);
  }
}

function adopt(l: LoadedCore): CoreInfo {
  const ex = l.exports as Partial<CoreExports>;
  if (typeof ex.abiVersion !== 'function' || typeof ex.alloc !== 'function' || !(ex.memory instanceof WebAssembly.Memory)) {
    throw new VmkitError('CORE_LOAD', 'not a vmkit core: missing abiVersion/alloc/memory exports');
  }
  const abi = ex.abiVersion();
  if (abi !== CORE_ABI_VERSION) {
    throw new VmkitError('CORE_LOAD', `core ABI version ${abi} does not match bindings ABI ${CORE_ABI_VERSION}`);
  }
  loaded = l;
  generation++;
  current = new CoreImpl(l.exports, generation);
  return coreInfo();
}

function defaultLocation(): URL {
  // Written literally so bundlers (Vite, webpack, esbuild) see and copy the asset.
  return new URL('./core.wasm', import.meta.url);
}

async function readUrl(url: URL): Promise<Uint8Array | Response> {
  if (url.protocol === 'file:') {
    // Node: fetch() has no file: support (nodeModule hides node:fs from bundlers).
    const fs = await nodeModule<typeof import('node:fs/promises')>('node:fs/promises');
    return new Uint8Array(await fs.readFile(url));
  }
  const res = await fetch(url);
  if (!res.ok) throw new VmkitError('CORE_LOAD', `fetching ${url.href} failed: HTTP ${res.status}`, { path: url.href });
  return res;
}

/**
 * Loads and instantiates the core. Call once before using any other API; later
 * calls with no argument return at once, and a call with a source replaces the
 * core (every handle made before becomes stale).
 *
 * @param source nothing (the `core.wasm` next to this module), a URL or URL
 *   string, the bytes, a compiled `WebAssembly.Module`, or a `Response`.
 * @example
 * ```ts
 * import { init } from 'vmkit';
 * await init();                                   // default location
 * await init(new URL('/static/core.wasm', location.href)); // browsers: your own URL
 * ```
 */
export async function init(source?: CoreSource): Promise<CoreInfo> {
  if (source === undefined && current) return coreInfo();
  try {
    let s: unknown = await (source ?? defaultLocation());
    if (typeof s === 'string') s = new URL(s, typeof location !== 'undefined' ? location.href : undefined);
    if (s instanceof URL) s = await readUrl(s);
    // Bytes and modules first: in Node, naming the global `Response` loads undici (~30 ms).
    const direct = s instanceof WebAssembly.Module || s instanceof ArrayBuffer || ArrayBuffer.isView(s);
    if (!direct && typeof Response !== 'undefined' && s instanceof Response) {
      s = new Uint8Array(await s.arrayBuffer());
    }
    return adopt(await loadCore(s as WebAssembly.Module | BufferSource));
  } catch (e) {
    if (e instanceof VmkitError) throw e;
    throw new VmkitError('CORE_LOAD', `could not load the vmkit core: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Instantiates the core synchronously from bytes or a compiled module (Node,
 * workers). Browsers' main threads may refuse to compile large modules
 * synchronously; pass a `WebAssembly.Module` there or use {@link init}.
 *
 * @example
 * ```ts
 * import { readFileSync } from 'node:fs';
 * import { initSync } from 'vmkit';
 * initSync(readFileSync(new URL(import.meta.resolve('vmkit/core.wasm'))));
 * ```
 */
export function initSync(source: Uint8Array | ArrayBuffer | WebAssembly.Module): CoreInfo {
  if (!(source instanceof Uint8Array || source instanceof ArrayBuffer || source instanceof WebAssembly.Module)) {
    throw new VmkitError('ARG_TYPE', 'source must be a Uint8Array, ArrayBuffer or WebAssembly.Module');
  }
  try {
    return adopt(loadCoreSync(source));
  } catch (e) {
    if (e instanceof VmkitError) throw e;
    throw new VmkitError('CORE_LOAD', `could not load the vmkit core: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * True once {@link init} or {@link initSync} has succeeded.
 *
 * @example
 * ```ts
 * if (!isInitialized()) await init();
 * ```
 */
export function isInitialized(): boolean {
  return current !== undefined;
}

/**
 * Facts about the loaded core.
 *
 * @example
 * ```ts
 * await init();
 * console.log(coreInfo().memoryBytes);
 * ```
 */
export function coreInfo(): CoreInfo {
  const c = core();
  return { abiVersion: c.exports.abiVersion(), memoryBytes: c.exports.memory.buffer.byteLength, resets };
}

/**
 * The live core. Internal to vmkit's modules.
 * @internal
 */
export function core(): Core {
  if (!current) {
    const load = autoload;
    autoload = undefined;
    load?.();
    if (!current) throw new VmkitError('NOT_INITIALIZED', 'the vmkit core is not loaded: call `await init()` first');
  }
  return current;
}

let autoload: (() => void) | undefined;

/**
 * Registers a synchronous loader that {@link core} runs the first time the core
 * is needed and not loaded (once; its errors reach that caller). The CLI uses it
 * so that a command that never touches the core (`disk info`) does not pay for
 * compiling it. `undefined` removes it.
 * @internal
 * @example
 * _setCoreAutoload(() => initSync(readFileSync(new URL('./core.wasm', import.meta.url))));
 */
export function _setCoreAutoload(load: (() => void) | undefined): void {
  autoload = load;
}

/**
 * The compiled module of the loaded core (for workers, which instantiate it
 * again with `initSync`).
 * @internal
 */
export function coreModule(): WebAssembly.Module {
  core();
  return loaded!.module;
}

/**
 * Runs `fn` against the core, turning a trap (or an abort) into a VmkitError
 * with code CORE_TRAP and replacing the instance with a fresh one: after a trap
 * its memory cannot be trusted. Handles made before see STALE_HANDLE.
 * @internal
 */
export function withCore<T>(fn: (c: Core) => T): T {
  const c = core();
  try {
    return fn(c);
  } catch (e) {
    throw coreFailure(e);
  }
}

/**
 * Runs `fn` with buffers in core memory that live for the call only: one of
 * `size` bytes, or one per entry of a list of sizes (allocated in order, each
 * 16-byte aligned), freed on every path. Inside {@link withCore}, so a trap
 * resets the core. Buffers kept across calls are not scratch: their owners
 * allocate and free them.
 * @internal
 */
export function withScratch<T>(size: number, fn: (ex: CoreExports, ptr: number, c: Core) => T): T;
/** @internal */
export function withScratch<T, const S extends readonly number[]>(sizes: S, fn: (ex: CoreExports, ptrs: { -readonly [K in keyof S]: number }, c: Core) => T): T;
export function withScratch<T>(sizes: number | readonly number[], fn: (ex: CoreExports, p: never, c: Core) => T): T {
  return withCore((c) => {
    const list = typeof sizes === 'number' ? [sizes] : sizes;
    const ptrs: number[] = [];
    try {
      for (const n of list) ptrs.push(c.alloc(n));
      return fn(c.exports, (typeof sizes === 'number' ? ptrs[0] : ptrs) as never, c);
    } finally {
      for (let i = ptrs.length - 1; i >= 0; i--) c.free(ptrs[i]!);
    }
  });
}

/**
 * What {@link withCore} throws for an error caught around a core call: a trap
 * (or an abort) resets the core and becomes CORE_TRAP, anything else passes as
 * is. For hot paths that call the core in their own try/catch (no closure per call).
 * @internal
 * @example
 * try { r = e.pagingTranslateGpa(h, va); } catch (err) { throw coreFailure(err); }
 */
export function coreFailure(e: unknown): unknown {
  if (e instanceof VmkitError || !isTrap(e)) return e;
  reset();
  return new VmkitError('CORE_TRAP', `the vmkit core trapped: ${(e as Error).message}`, { cause: e });
}

function isTrap(e: unknown): boolean {
  if (e instanceof WebAssembly.RuntimeError) return true;
  // The loader's abort() throws a plain Error whose message starts with "abort:".
  return e instanceof Error && e.message.startsWith('abort:');
}

function reset(): void {
  if (!loaded) return;
  resets++;
  try {
    adopt(loadCoreSync(loaded.module));
  } catch {
    current = undefined;
  }
}

/**
 * Throws STALE_HANDLE when `gen` is not the live core's generation.
 * @internal
 */
export function checkGeneration(gen: number, what: string): Core {
  const c = core();
  if (c.generation !== gen) {
    throw new VmkitError('STALE_HANDLE', `${what} belongs to a core instance that was reset or replaced`);
  }
  return c;
}

/**
 * Runs the core's self-check (every module's internal tests). Returns 0 when all pass.
 *
 * @example
 * ```ts
 * await init();
 * if (selfCheck() !== 0) throw new Error('core is broken');
 * ```
 */
export function selfCheck(): number {
  return withCore((c) => c.exports.selfCheck());
}
