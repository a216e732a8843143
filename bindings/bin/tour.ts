#!/usr/bin/env node
/**
 * `npm start`: an end-to-end tour of vmkit on data it generates itself.
 * Each capability contributes a chapter in bindings/tour/<name>.ts exporting
 * `chapter(log)`; chapters not built yet are skipped.
 * @module
 */
import { init, coreInfo, selfCheck } from '../core.js';

const CHAPTERS = ['paging', 'checkpoint', 'prefetch', 'disk', 'vmdk', 'backup', 'owner', 'attest'] as const;

async function tour(): Promise<void> {
  const t0 = performance.now();
  await init();
  const info = coreInfo();
  console.log(`vmkit tour: core ABI ${info.abiVersion}, ${info.memoryBytes / 1024} KiB of wasm memory, self-check ${selfCheck() === 0 ? 'passed' : 'FAILED'}`);
  for (const name of CHAPTERS) {
    let mod: { chapter(log: (s: string) => void): Promise<void> };
    try {
      mod = (await import(`../tour/${name}.js`)) as typeof mod;
    } catch (e) {
      // A chapter whose module is not built yet is skipped; any other failure is a bug to show.
      if ((e as { code?: string })?.code === 'ERR_MODULE_NOT_FOUND' && String((e as Error).message).includes(`tour/${name}.js`)) continue;
      throw e;
    }
    console.log(`\n== ${name} ==`);
    const c0 = performance.now();
    await mod.chapter((s) => console.log(`  ${s}`));
    console.log(`  (${(performance.now() - c0).toFixed(0)} ms)`);
  }
  console.log(`\ntour finished in ${(performance.now() - t0).toFixed(0)} ms`);
}

await tour();
