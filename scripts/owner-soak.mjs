#!/usr/bin/env node
/**
 * Soak of the multi-process ownership spec (issue #26): runs
 * test/owner-multiprocess.node.test.ts N times in a row while CPU hogs compete
 * for every core, and reports each failure (with the phase a contender that
 * exited non-zero was in). Not run in CI: it takes minutes and wants the
 * machine. Runs the BUILT dist/ (the contenders import it): `npm run build` first.
 *
 *   node scripts/owner-soak.mjs [--runs 50] [--hogs <cores>] [--spec test/owner-multiprocess.node.test.ts]
 *                               [--filter 'raw:'] [--keep-going]
 *
 * --hogs     busy-looping processes beside the spec (default: one per core)
 * --filter   vitest -t pattern (default: every test of the spec)
 * --stop     stop at the first failure (default: run them all)
 *
 * Exit status 0 when every run passed, 1 otherwise. One line per run on stdout,
 * a summary at the end; the output of a failed run goes to stderr.
 */
import { spawn } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values: a } = parseArgs({
  options: {
    runs: { type: 'string', default: '50' },
    hogs: { type: 'string', default: String(availableParallelism()) },
    spec: { type: 'string', default: 'test/owner-multiprocess.node.test.ts' },
    filter: { type: 'string' },
    stop: { type: 'boolean', default: false },
  },
});
const runs = Number(a.runs);
const hogCount = Number(a.hogs);
if (!Number.isSafeInteger(runs) || runs < 1 || !Number.isSafeInteger(hogCount) || hogCount < 0) {
  console.error('usage: owner-soak.mjs [--runs N>=1] [--hogs N>=0] [--spec FILE] [--filter PATTERN] [--stop]');
  process.exit(2);
}
const root = fileURLToPath(new URL('..', import.meta.url));

// The hogs: plain busy loops, at the spec's priority, so the contenders are starved as on a loaded CI box.
const hogs = [];
for (let i = 0; i < hogCount; i++) hogs.push(spawn(process.execPath, ['-e', 'for(;;){}'], { stdio: 'ignore' }));
const stopHogs = () => {
  for (const h of hogs) if (h.exitCode === null && h.signalCode === null) h.kill('SIGKILL');
};
process.on('exit', stopHogs);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));

function runOnce() {
  return new Promise((resolve) => {
    const args = ['vitest', 'run', '--project', 'node', a.spec, ...(a.filter ? ['-t', a.filter] : [])];
    const t0 = Date.now();
    const c = spawn('npx', args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FORCE_COLOR: '0' } });
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (out += d));
    c.on('exit', (code) => resolve({ code, out, ms: Date.now() - t0 }));
  });
}

const failures = [];
const t0 = Date.now();
let done = 0;
for (let i = 1; i <= runs; i++) {
  const r = await runOnce();
  done++;
  const summary = r.out.match(/owner-multiprocess \([a-z0-9]+\): [^\n]*/g) ?? [];
  if (r.code === 0) {
    console.log(`run ${i}/${runs}: pass in ${(r.ms / 1000).toFixed(1)} s${summary.length ? `\n  ${summary.join('\n  ')}` : ''}`);
    continue;
  }
  // What a failure says: the spec's failed assertions and any contender's last phase.
  const why = [...new Set(r.out.match(/contender c\d+[^\n]*|AssertionError[^\n]*|Error: [^\n]*|× [^\n]*/g) ?? [`exit ${r.code}`])];
  failures.push({ run: i, why });
  console.log(`run ${i}/${runs}: FAIL in ${(r.ms / 1000).toFixed(1)} s\n  ${why.join('\n  ')}`);
  process.stderr.write(`----- run ${i} output -----\n${r.out}\n`);
  if (a.stop) break;
}
stopHogs();
console.log(`\nowner soak: ${done - failures.length}/${done} runs passed with ${hogCount} CPU hog(s), ${((Date.now() - t0) / 60000).toFixed(1)} min`);
for (const f of failures) console.log(`  run ${f.run}: ${f.why[0]}`);
process.exit(failures.length === 0 ? 0 : 1);
