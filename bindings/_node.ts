/**
 * Node built-ins loaded at run time. The module name goes through a variable so
 * that bundlers and the browser build never try to resolve `node:` modules:
 * they load only on the Node paths that call for them (file storage, sockets,
 * the owner file store). One import per module, cached.
 * @module
 */

const cache = new Map<string, Promise<unknown>>();

/**
 * Node's built-in `name` (`node:fs/promises`, `node:path`, `node:net`…).
 * @example
 * ```ts
 * const fs = await nodeModule<typeof import('node:fs/promises')>('node:fs/promises');
 * ```
 */
export function nodeModule<T>(name: string): Promise<T> {
  let p = cache.get(name);
  if (!p) {
    // Node ≥ 20.16: the module object itself, without a trip through the ES loader's resolve
    // and translate steps (CLI start-up, bench/startup.bench.js).
    const get = typeof process === 'object' && process !== null ? process.getBuiltinModule : undefined;
    const m = typeof get === 'function' ? get(name) : undefined;
    cache.set(name, (p = m !== undefined ? Promise.resolve(m) : import(/* @vite-ignore */ name)));
  }
  return p as Promise<T>;
}
