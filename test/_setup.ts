// Loads the debug build of the core (assertions on) before every spec file,
// from the same URL in Node (file:) and in Chromium (served by Vite).
import { init } from '../bindings/core.js';

await init(new URL('../dist/core.debug.wasm', import.meta.url));
