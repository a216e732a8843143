// init() with no argument finds core.wasm beside the built module: from a file
// URL in Node, over HTTP in Chromium (as a bundler or static server would serve it).
import { expect, it } from 'vitest';

it('init() with no argument loads the default core.wasm', async () => {
  const url = new URL('../dist/index.js', import.meta.url).href;
  const m = (await import(/* @vite-ignore */ url)) as typeof import('../bindings/index.js');
  expect(m.isInitialized()).toBe(false);
  const info = await m.init();
  expect(info.abiVersion).toBe(1);
  expect(m.selfCheck()).toBe(0);
  // a second call with no argument keeps the loaded core
  expect((await m.init()).resets).toBe(0);
});
