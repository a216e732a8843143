// Loads the debug build of the core (assertions on) before every spec file,
// from the same URL in Node (file:) and in Chromium (served by Vite).
import { expect } from 'vitest';
import { init } from '../bindings/core.js';

await init(new URL('../dist/core.debug.wasm', import.meta.url));

// Typed arrays compared element by element through vitest's generic equality
// cost ~20 µs per element (a 70 KB buffer: over a second), which made the
// byte-exact specs take minutes. Same-type typed arrays are compared here in
// one tight loop instead; the verdict is the same (length and every element),
// and a mismatch still falls through to vitest's diff output.
type Typed = Uint8Array | Uint16Array | Uint32Array | Int32Array | BigUint64Array | BigInt64Array | Float64Array | Uint8ClampedArray | Int8Array | Int16Array | Float32Array;
function typedEquals(a: unknown, b: unknown): boolean | undefined {
  if (!ArrayBuffer.isView(a) || !ArrayBuffer.isView(b) || a instanceof DataView || b instanceof DataView) return undefined;
  if (Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) return undefined;
  const x = a as Typed;
  const y = b as Typed;
  if (x.length !== y.length) return false;
  // Floats element by element as vitest does (Object.is: NaN equals NaN, 0 differs from -0).
  if (x instanceof Float32Array || x instanceof Float64Array) {
    for (let i = 0; i < x.length; i++) if (!Object.is(x[i], y[i])) return false;
    return true;
  }
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}
expect.addEqualityTesters([typedEquals]);
