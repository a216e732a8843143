#!/usr/bin/env node
// Runs every bench/*.bench.js suite (or those named on the command line),
// prints their tables, and with --write updates bench/RESULTS.md: each suite
// owns a section between <!-- suite:NAME --> markers, so running one suite
// leaves the others' figures in place. RESULTS.md opens with one table of
// headline rows (bench/_summary.js), rebuilt from every section on --write.
// A section keeps its tables and at most two lines of notes: a suite's further
// notes go to the doc of what it measures (DOCS below), between
// <!-- bench-notes:NAME --> markers, and the section links there.
import { readdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { cpus, totalmem, platform, arch, release } from 'node:os';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { anchor, specComment, summaryRows, withSummary } from './_summary.js';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const write = args.includes('--write');
const quick = args.includes('--quick');
// --restyle: runs no suite; re-applies the notes rule and the summary specs to the
// sections already in RESULTS.md (their figures untouched) and rebuilds the opening table.
const restyle = args.includes('--restyle');
const only = args.filter((a) => !a.startsWith('--'));

const suites = readdirSync(here)
  .filter((f) => f.endsWith('.bench.js'))
  .map((f) => f.slice(0, -'.bench.js'.length))
  .filter((n) => only.length === 0 || only.includes(n))
  .sort();

const machine = `${cpus()[0]?.model ?? 'unknown CPU'} × ${cpus().length}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, ${platform()} ${release()} ${arch()}, Node ${process.version}`;
console.log(`machine: ${machine}\n`);

/** Where a suite's notes beyond the first go: the doc of the method it measures. */
const DOCS = {
  core: 'docs/loading.md',
  simd: 'docs/abi.md',
  disk: 'docs/qcow2.md',
  backup: 'docs/backup.md',
  'attest-service': 'docs/attest-service.md',
  'attest-index': 'docs/attest-sources.md',
  'attest-ima': 'docs/attest-ima.md',
  vmdk: 'docs/vmdk.md',
  owner: 'docs/ownership.md',
  paging: 'docs/paging.md',
  checkpoint: 'docs/checkpoint-format.md',
  lz4: 'docs/lz4.md',
  prefetch: 'docs/prefetch.md',
  nbd: 'docs/nbd.md',
  'nbd-guest': 'docs/nbd.md',
  startup: 'docs/loading.md',
  'attest-machine': 'docs/attest-service.md',
  'checkpoint-qemu': 'docs/checkpoint-format.md',
  'checkpoint-remote': 'docs/checkpoint-format.md',
  'checkpoint-store': 'docs/checkpoint-format.md',
  convert: 'docs/vhdx.md',
};
const root = join(here, '..');
const docNotes = new Map(); // doc path → Map(suite → markdown)

/** A section's notes: the first one, and a link to the rest in the suite's doc (kept in docNotes). */
function sectionNotes(name, title, notes) {
  if (notes.length <= 2) return notes;
  const doc = DOCS[name];
  if (!doc) throw new Error(`bench suite ${name}: ${notes.length} notes and no doc to move all but one to (DOCS in bench/run.js)`);
  const heading = `Measured: ${title}`;
  if (!docNotes.has(doc)) docNotes.set(doc, new Map());
  docNotes.get(doc).set(name, [`## ${heading}`, '', `_From \`node bench/run.js ${name} --write\`; the tables are in [bench/RESULTS.md](../bench/RESULTS.md)._`, '', ...notes.slice(1).map((n) => `- ${n}`)].join('\n'));
  return [notes[0], `${notes.length - 1} more notes (method, peers, what was tried): [${doc}](../${doc}#${anchor(heading)}).`];
}

const started = Date.now();
const out = new Map();
const failed = [];
if (restyle) {
  const file = join(here, 'RESULTS.md');
  const doc = readFileSync(file, 'utf8');
  for (const m of doc.matchAll(/<!-- suite:([\w-]+) -->\n([\s\S]*?)<!-- \/suite:\1 -->/g)) {
    const [, name, body] = m;
    const mod = suites.includes(name) ? await import(join(here, `${name}.bench.js`)) : {};
    const lines = body.replace(/\n<!-- summary [\s\S]*?-->\n?/, '\n').trimEnd().split('\n');
    let at = lines.length; // the notes: the run of '- ' lines that ends the section
    while (at > 0 && lines[at - 1].startsWith('- ')) at--;
    if (at === lines.length) at = -1;
    const kept = at < 0 ? lines : lines.slice(0, at);
    const notes = at < 0 ? [] : lines.slice(at).filter((l) => l.startsWith('- ')).map((l) => l.slice(2));
    const title = /^## (.*)$/m.exec(body)?.[1] ?? name;
    const md = [...kept, ...sectionNotes(name, title, notes).map((n) => `- ${n}`)];
    if (mod.SUMMARY?.length) {
      summaryRows(name, md.join('\n'), mod.SUMMARY);
      md.push('', specComment(mod.SUMMARY));
    }
    out.set(name, md.join('\n').trimEnd() + '\n');
  }
}
for (const name of restyle ? [] : suites) {
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
  for (const n of sectionNotes(name, res.title, res.notes ?? [])) md.push(`- ${n}`);
  if (res.summary?.length) {
    // Every named row exists, or a full run that writes fails here. A --quick or read-only run only warns:
    // its sections can be named for smaller inputs (the IMA log's size is in its heading).
    try {
      summaryRows(name, md.join('\n'), res.summary);
    } catch (e) {
      if (write && !quick) throw e;
      console.warn(`  [${name}] summary rows not checked: ${e?.message ?? e}`);
    }
    md.push('', specComment(res.summary));
  }
  const text = md.join('\n').trimEnd() + '\n';
  out.set(name, text);
  console.log(text);
}

if (write || restyle) {
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
  writeFileSync(file, withSummary(doc));
  console.log(`wrote ${file}`);
  for (const [doc, bySuite] of docNotes) writeDocNotes(join(root, doc), bySuite);
}

/** Puts each suite's notes between its markers in `path` (appended at the end the first time). */
function writeDocNotes(path, bySuite) {
  let text = readFileSync(path, 'utf8');
  for (const [name, md] of bySuite) {
    const start = `<!-- bench-notes:${name} -->`;
    const end = `<!-- /bench-notes:${name} -->`;
    const block = `${start}\n${md}\n${end}`;
    const i = text.indexOf(start);
    const j = text.indexOf(end);
    text = i >= 0 && j > i ? text.slice(0, i) + block + text.slice(j + end.length) : text.trimEnd() + '\n\n' + block + '\n';
  }
  writeFileSync(path, text);
  console.log(`wrote ${path}`);
}

if (failed.length) {
  console.error(`bench: ${failed.length} suite(s) failed: ${failed.join(', ')}`);
  process.exitCode = 1;
} else {
  console.log(`bench: ${suites.length} suite(s) in ${((Date.now() - started) / 1000).toFixed(0)} s${quick ? ' (--quick)' : ''}`);
}
