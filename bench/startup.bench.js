// CLI start-up (bindings/cli/main.ts): whole processes of `vmkit --help` and `vmkit disk info` on a
// small qcow2 image, against bare `node -e 0` and `qemu-img info`, in the same interleaved rounds.
// The shipped CLI is the package's bin, dist/bin/vmkit.cjs (CommonJS, no ES loader before the
// command is known): `vmkit disk …` runs from one CommonJS bundle of main and the disk group
// compiled with a V8 code cache (npm run build writes both), the other groups from their ES
// modules. Beside it: the ES modules alone (main.js from an ES entry, as before the bundle), the
// floors (the smallest ES and CommonJS entries that print a fixed string, and a CommonJS entry
// that reads the qcow2 header with fs), and two older attempts: a bundled single file (esbuild, CommonJS: one compile, no module
// resolution, `require` of builtins instead of their ES facades) and Node's start-up snapshot of
// that bundle (`node --snapshot-blob`, the heap after loading it deserialized at start). Both
// are built here into bench/.data/ by scripts/bundle-cli.mjs (esbuild is a devDependency).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hasTool, median, fmtNs } from './_lib.js';

/** The headline rows of RESULTS.md's opening table (bench/_summary.js): rows of this suite's own tables. */
export const SUMMARY = [
  { what: "`vmkit --help` start-up vs `node -e 0`", section: "vmkit --help and vmkit disk info (64 MiB qcow2)", vmkit: "vmkit (as shipped: CommonJS bin, disk bundle + V8 code cache): --help", peer: "node -e 0" },
];

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const data = join(here, '.data', 'startup');

const json = join(data, 'hyperfine.json');
/**
 * One run of `argv`: wall and CPU ns (user + system) from hyperfine (the child's rusage, in
 * µs: GNU time's 10 ms ticks are too coarse for a 50 ms process), peak RSS KiB from GNU time.
 */
function timed(argv, rss) {
  if (rss) {
    const r = spawnSync('/usr/bin/time', ['-f', 'T %M', ...argv], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${argv.join(' ')}: ${r.stderr}`);
    return { rssKiB: Number(/T (\d+)/.exec(r.stderr)[1]) };
  }
  const r = spawnSync('hyperfine', ['-N', '-r', '1', '--style', 'none', '--export-json', json, argv.map((a) => (/[\s'"]/.test(a) ? JSON.stringify(a) : a)).join(' ')], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${argv.join(' ')}: ${r.stderr}`);
  const x = JSON.parse(readFileSync(json, 'utf8')).results[0];
  return { ns: x.times[0] * 1e9, cpuNs: (x.user + x.system) * 1e9 };
}

export async function run(ctx) {
  const notes = [];
  if (!existsSync('/usr/bin/time') || !hasTool('qemu-img') || !hasTool('hyperfine')) {
    return { title: 'CLI start-up', sections: [], notes: ['skipped: needs hyperfine, /usr/bin/time (Debian: time) and qemu-img'] };
  }
  mkdirSync(data, { recursive: true });
  const img = join(data, 'small.qcow2');
  if (!existsSync(img)) spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', img, '64M']);
  const bin = join(root, JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).bin.vmkit);
  const esEntry = join(data, 'es-main.mjs');
  writeFileSync(esEntry, `import { main } from ${JSON.stringify(join(root, 'dist/cli/main.js'))};\nprocess.exitCode = await main(process.argv.slice(2), process);\n`);
  const floorEs = join(data, 'floor.mjs');
  const floorCjs = join(data, 'floor.cjs');
  const floorHeader = join(data, 'floor-header.cjs');
  writeFileSync(floorEs, `process.stdout.write('format: qcow2\\n');\n`);
  writeFileSync(floorCjs, `process.stdout.write('format: qcow2\\n');\n`);
  // Reads what \`disk info\` of an empty qcow2 needs from its header (no L2 walk): the floor of any fast path.
  writeFileSync(floorHeader, `const fs = require('node:fs'); const fd = fs.openSync(process.argv[2], 'r'); const b = Buffer.alloc(104); fs.readSync(fd, b, 0, 104, 0); const st = fs.fstatSync(fd); fs.closeSync(fd);\nif (b.readUInt32BE(0) !== 0x514649fb) process.exit(1);\nprocess.stdout.write(\`format: qcow2\\nvirtual size: \${b.readBigUInt64BE(24)}\\ncluster size: \${2 ** b.readUInt32BE(20)}\\nfile size: \${st.size}\\n\`);\n`);
  const variants = [
    { name: 'vmkit (as shipped: CommonJS bin, disk bundle + V8 code cache)', cmd: ['node', bin] },
    { name: 'vmkit ES modules only (main.js)', cmd: ['node', esEntry] },
  ];
  let esbuild = true;
  try {
    await import('esbuild');
  } catch {
    esbuild = false;
    notes.push('esbuild is not installed: the bundle and snapshot rows were not measured.');
  }
  if (esbuild) {
    const bundle = join(data, 'vmkit.cjs');
    const snapSrc = join(data, 'vmkit-snap.cjs');
    const blob = join(data, 'vmkit.blob');
    const b1 = spawnSync(process.execPath, [join(root, 'scripts/bundle-cli.mjs'), bundle], { encoding: 'utf8' });
    const b2 = spawnSync(process.execPath, [join(root, 'scripts/bundle-cli.mjs'), snapSrc, '--snapshot'], { encoding: 'utf8' });
    const b3 = spawnSync(process.execPath, ['--snapshot-blob', blob, '--build-snapshot', snapSrc], { encoding: 'utf8', cwd: data });
    if (b1.status || b2.status || b3.status) throw new Error(`bundle: ${b1.stderr}${b2.stderr}${b3.stderr}`);
    variants.push({ name: 'bundled single file (esbuild, CommonJS)', cmd: ['node', bundle] });
    variants.push({ name: 'start-up snapshot of the bundle (--snapshot-blob)', cmd: ['node', '--snapshot-blob', blob, '--'] });
    notes.push(`Sizes: bundle ${(statSync(bundle).size / 1024).toFixed(0)} KiB (npm dependencies included, attest's openpgp and jose too), snapshot blob ${(statSync(blob).size / 2 ** 20).toFixed(1)} MiB.`);
  }
  const rows = [
    { name: 'node -e 0', argv: ['node', '-e', '0'] },
    { name: 'qemu-img info small.qcow2', argv: ['qemu-img', 'info', img] },
    { name: 'floor: ES entry printing a fixed string', argv: ['node', floorEs] },
    { name: 'floor: CommonJS entry printing a fixed string', argv: ['node', floorCjs] },
    { name: 'floor: CommonJS entry reading the qcow2 header with fs', argv: ['node', floorHeader, img] },
  ];
  for (const v of variants) {
    rows.push({ name: `${v.name}: --help`, argv: [...v.cmd, '--help'] });
    rows.push({ name: `${v.name}: disk info small.qcow2`, argv: [...v.cmd, 'disk', 'info', img] });
  }
  // Each must say the same thing.
  for (const r of rows.slice(2)) {
    if (r.name.startsWith('floor')) continue;
    const out = spawnSync(r.argv[0], r.argv.slice(1), { encoding: 'utf8' });
    if (out.status !== 0 || !/(Usage: vmkit|format: qcow2)/.test(out.stdout)) throw new Error(`${r.name}: ${out.stderr}`);
  }
  const reps = ctx.quick ? 10 : 40;
  const res = rows.map(() => []);
  for (let i = 0; i < 3; i++) for (const r of rows) timed(r.argv); // warm the page cache
  for (let i = 0; i < reps; i++) for (let k = 0; k < rows.length; k++) res[k].push(timed(rows[k].argv));
  const rss = rows.map((r) => median([0, 1, 2].map(() => timed(r.argv, true).rssKiB)));
  const sum = rows.map((r, k) => ({
    name: r.name,
    ns: median(res[k].map((x) => x.ns)),
    cpuNs: median(res[k].map((x) => x.cpuNs)),
    rss: rss[k],
  }));
  const base = sum[0];
  const table = [
    '| process | median wall | vs node -e 0 | median CPU (user + sys) | CPU vs node -e 0 | peak RSS |',
    '|---|---:|---:|---:|---:|---:|',
    ...sum.map((r) => `| ${r.name} | ${fmtNs(r.ns)} | ${(r.ns / base.ns).toFixed(2)}× | ${fmtNs(r.cpuNs)} | ${(r.cpuNs / base.cpuNs).toFixed(2)}× | ${(r.rss / 1024).toFixed(1)} MiB |`),
  ].join('\n');
  for (const r of sum.filter((x) => x.name.includes(': '))) {
    const w = r.ns / base.ns;
    notes.push(`${r.name}: ${w.toFixed(2)}× the wall time of node -e 0 (goal ≤ 1.3×: ${w <= 1.3 ? 'met' : 'not met'}), ${(r.cpuNs / base.cpuNs).toFixed(2)}× its CPU.`);
  }
  const load = (await import('node:os')).loadavg()[0];
  notes.push(
    `Medians of ${reps} interleaved rounds (every row once per round, after 3 untimed rounds), each a whole process timed by hyperfine (\`-N -r 1\`: wall, and CPU from the child's rusage); peak RSS the median of 3 runs under GNU time. Load average (1 min) at the end: ${load.toFixed(1)} on ${(await import('node:os')).cpus().length} cores.`,
  );
  return { title: 'CLI start-up: whole processes against node -e 0', sections: [{ heading: 'vmkit --help and vmkit disk info (64 MiB qcow2)', markdown: table }], notes, summary: SUMMARY };
}
