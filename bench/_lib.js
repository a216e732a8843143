// Shared helpers for bench suites. A suite is a file bench/<name>.bench.js
// exporting `async function run(ctx)`, which returns
//   { title, sections: [{ heading, markdown }], notes?: string[] }
// ctx = { quick: boolean, write: boolean (--write: also update committed artefacts), log(msg) }.
// Use `measure()` to run tinybench tasks side by side and get a markdown table
// with medians and ratios to a chosen baseline (the peer).
import { Bench } from 'tinybench';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Runs tasks in one tinybench Bench and returns { table, results }.
 * tasks: [{ name, fn, bytes? (per op, for throughput), items? (per op) }]
 * baseline: task name the ratios are against (default: the first task).
 */
export async function measure(tasks, { time = 500, warmupTime = 100, baseline, quick = false } = {}) {
  const bench = new Bench({ time: quick ? Math.min(time, 150) : time, warmupTime: quick ? 20 : warmupTime, throws: true });
  for (const t of tasks) bench.add(t.name, t.fn, t.opts);
  await bench.run();
  const results = tasks.map((t) => {
    const task = bench.getTask(t.name);
    const r = task.result;
    const medianMs = r.latency.p50 ?? r.latency.mean;
    return {
      name: t.name,
      medianNs: medianMs * 1e6,
      samples: r.latency.samplesCount ?? r.latency.samples?.length ?? 0,
      rme: r.latency.rme,
      bytes: t.bytes,
      items: t.items,
    };
  });
  const base = results.find((r) => r.name === (baseline ?? tasks[0].name)) ?? results[0];
  const rows = results.map((r) => {
    const tput = r.bytes ? `${fmtRate(r.bytes / (r.medianNs / 1e9))}B/s` : r.items ? `${fmtRate(r.items / (r.medianNs / 1e9))}/s` : '';
    return `| ${r.name} | ${fmtNs(r.medianNs)} | ${tput} | ${(base.medianNs / r.medianNs).toFixed(2)}× | ${r.samples} |`;
  });
  const table = [
    `| task | median/op | throughput | speed vs ${base.name} | samples |`,
    '|---|---:|---:|---:|---:|',
    ...rows,
  ].join('\n');
  return { table, results };
}

export function fmtNs(ns) {
  if (ns < 1e3) return `${ns.toFixed(1)} ns`;
  if (ns < 1e6) return `${(ns / 1e3).toFixed(2)} µs`;
  if (ns < 1e9) return `${(ns / 1e6).toFixed(2)} ms`;
  return `${(ns / 1e9).toFixed(2)} s`;
}

export function fmtRate(x) {
  const u = ['', 'K', 'M', 'G', 'T'];
  let i = 0;
  while (x >= 1000 && i < u.length - 1) {
    x /= 1000;
    i++;
  }
  return `${x.toFixed(x < 10 ? 2 : 1)} ${u[i]}`;
}

/** Median of numbers. */
export function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Loads the release core once for a suite. */
export async function loadCore() {
  const { init } = await import('../dist/index.js');
  await init();
}

// Helpers the disk suites share (bench/disk.bench.js, bench/vmdk.bench.js): QEMU's tools as
// peers, timed whole runs, and MB/s / IOPS tables.

/** True when `cmd` is on the PATH. */
export function hasTool(cmd) {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Runs a tool to completion (stdout as text); throws on a non-zero exit. */
export function runTool(cmd, args, cwd) {
  return execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd }).toString();
}

/**
 * A two-layer chain made by qemu-img and qemu-io in `dir`, as the disk suites use it:
 * `base` (`size` bytes, its first `baseData` written with 0x11) and `top` over it with
 * `deltaData` bytes of 64 KiB writes at clusters drawn by an LCG from `seed` (patterns 1..250,
 * a cluster may be drawn twice). Returns the two paths.
 */
export function qemuChain(dir, { format = 'qcow2', size, baseData = size, deltaData = size / 4, seed = 12345, base = `base.${format}`, top = `top.${format}` }) {
  const basePath = join(dir, base);
  const topPath = join(dir, top);
  runTool('qemu-img', ['create', '-q', '-f', format, basePath, String(size)]);
  runTool('qemu-io', ['-f', format, '-c', `write -P 0x11 0 ${baseData}`, basePath]);
  runTool('qemu-img', ['create', '-q', '-f', format, '-b', base, '-F', format, topPath], dir);
  const cmds = [];
  const clusters = size / 65536;
  let s = seed;
  for (let i = 0; i < deltaData / 65536; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    cmds.push('-c', `write -P ${(i % 250) + 1} ${(s % clusters) * 65536} 64k`);
  }
  // qemu-io takes a few thousand commands per process.
  for (let i = 0; i < cmds.length; i += 2000) runTool('qemu-io', ['-f', format, ...cmds.slice(i, i + 2000), topPath]);
  return { base: basePath, top: topPath };
}

/** Median wall time (ns) of `reps` runs of `fn`; `before` runs untimed ahead of each. */
export async function timeRuns(reps, fn, before) {
  return (await timeRunsCpu(reps, fn, before)).ns;
}

// CPU time of waited-for child processes (Linux /proc, clock ticks of 10 ms): the peers' tools.
function childCpuNs() {
  try {
    const st = readFileSync('/proc/self/stat', 'utf8');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    return (Number(f[13]) + Number(f[14])) * 1e7;
  } catch {
    return 0;
  }
}

/**
 * { ns: median wall time, cpuNs: mean CPU time } of `reps` runs of `fn` (`before` untimed):
 * CPU is this process's (every thread: the libuv pool too) plus its children's (10 ms ticks,
 * so averaged over the runs). On a shared machine CPU time is the steadier figure.
 */
export async function timeRunsCpu(reps, fn, before) {
  const ts = [];
  let cpu = 0;
  for (let i = 0; i < reps; i++) {
    if (before) await before();
    const c0 = process.cpuUsage();
    const k0 = childCpuNs();
    const t = process.hrtime.bigint();
    await fn();
    ts.push(Number(process.hrtime.bigint() - t));
    const c = process.cpuUsage(c0);
    cpu += (c.user + c.system) * 1000 + (childCpuNs() - k0);
  }
  return { ns: median(ts), cpuNs: cpu / reps };
}

/** Markdown table of rows { name, ns, amount }: MB/s (unit 'bytes') or IOPS (unit 'ops'), ratios to the first row. */
export function rateTable(rows, unit) {
  const base = rows[0];
  const cpu = rows.every((r) => r.cpuNs !== undefined);
  return [
    `| task | median | ${unit === 'bytes' ? 'MB/s' : 'IOPS'} | speed vs ${base.name} |${cpu ? ' CPU/run | CPU vs first |' : ''}`,
    `|---|---:|---:|---:|${cpu ? '---:|---:|' : ''}`,
    ...rows.map(
      (r) =>
        `| ${r.name} | ${fmtNs(r.ns)} | ${unit === 'bytes' ? fmtRate(r.amount / (r.ns / 1e9)) + 'B/s' : fmtRate(r.amount / (r.ns / 1e9))} | ${(base.ns / r.ns).toFixed(2)}× |` +
        (cpu ? ` ${fmtNs(r.cpuNs)} | ${(base.cpuNs / r.cpuNs).toFixed(2)}× |` : ''),
    ),
  ].join('\n');
}

/**
 * One note per vmkit row of a rateTable: its speed against the peer row and whether it meets
 * parity (≥ 1.00×), with `causes[name]` (or `causes.default`) when it does not.
 */
export function parityNotes(rows, peerName, causes = {}) {
  const peer = rows.find((r) => r.name === peerName);
  if (!peer) return [];
  return rows
    .filter((r) => r.name.startsWith('vmkit'))
    .map((r) => {
      const x = peer.ns / r.ns;
      const why = causes[r.name] ?? causes.default ?? 'cause not analysed';
      const cpu = r.cpuNs && peer.cpuNs ? ` (CPU ${(peer.cpuNs / r.cpuNs).toFixed(2)}×)` : '';
      return `${r.name}: ${x.toFixed(2)}×${cpu} ${peerName}: ${x >= 1 ? 'parity met' : `parity not met (${why})`}.`;
    });
}
