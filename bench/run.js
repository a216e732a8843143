#!/usr/bin/env node
// Runs every bench/*.bench.js suite (or those named on the command line),
// prints their tables, and with --write updates bench/RESULTS.md: each suite
// owns a section between <!-- suite:NAME --> markers, so running one suite
// leaves the others' figures in place.
import { readdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { cpus, totalmem, platform, arch, release } from 'node:os';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const write = args.includes('--write');
const quick = args.includes('--quick');
const only = args.filter((a) => !a.startsWith('--'));

const suites = readdirSync(here)
  .filter((f) => f.endsWith('.bench.js'))
  .map((f) => f.slice(0, -'.bench.js'.length))
  .filter((n) => only.length === 0 || only.includes(n))
  .sort();

const machine = `${cpus()[0]?.model ?? 'unknown CPU'} × ${cpus().length}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, ${platform()} ${release()} ${arch()}, Node ${process.version}`;
console.log(`machine: ${machine}\n`);

const started = Date.now();
const out = new Map();
const failed = [];
for (const name of suites) {
  const mod = await import(join(here, `${name}.bench.js`));
  const t0 = Date.now();
  let res;
  try {
    res = await mod.run({ quick, write, log: (m) => console.log(`  [${name}] ${m}`) });
  } catch (e) {
    // One suite's failure does not hide the others' figures; the run still exits non-zero.
    console.error(`\n*** bench suite ${name} FAILED: ${e?.stack ?? e}\n`);
    failed.push(name);
    continue;
  }
  const md = [`## ${res.title}`, '', `_Run ${new Date().toISOString().slice(0, 10)} on ${machine}; ${((Date.now() - t0) / 1000).toFixed(0)} s._`, ''];
  for (const s of res.sections) md.push(`### ${s.heading}`, '', s.markdown, '');
  for (const n of res.notes ?? []) md.push(`- ${n}`);
  const text = md.join('\n').trimEnd() + '\n';
  out.set(name, text);
  console.log(text);
}

if (write) {
  const file = join(here, 'RESULTS.md');
  let doc = existsSync(file)
    ? readFileSync(file, 'utf8')
    : '# Benchmark results\n\nProduced by `npm run bench:write` (or `node bench/run.js --write <suite>`). Medians from tinybench; ratios are against the peer named in each table, measured in the same run. The machine is shared and noisy: compare ratios, not absolute figures.\n';
  for (const [name, text] of out) {
    const start = `<!-- suite:${name} -->`;
    const end = `<!-- /suite:${name} -->`;
    const block = `${start}\n${text}${end}`;
    const i = doc.indexOf(start);
    const j = doc.indexOf(end);
    doc = i >= 0 && j > i ? doc.slice(0, i) + block + doc.slice(j + end.length) : doc.trimEnd() + '\n\n' + block + '\n';
  }
  writeFileSync(file, doc);
  console.log(`wrote ${file}`);
}

if (failed.length) {
  console.error(`bench: ${failed.length} suite(s) failed: ${failed.join(', ')}`);
  process.exitCode = 1;
} else {
  console.log(`bench: ${suites.length} suite(s) in ${((Date.now() - started) / 1000).toFixed(0)} s${quick ? ' (--quick)' : ''}`);
}
