#!/usr/bin/env node
// Builds the real-data evaluation of fault-time prefetch (docs/prefetch.md):
// runs real programs under `valgrind --tool=lackey --trace-mem=yes`, reduces
// each trace to the first touch of every page, reads the physical frame of
// every page the process had from /proc/PID/pagemap, folds those frames into
// a small guest keeping neighbouring frames neighbours, and writes a guest
// image whose x86-64 page tables map each virtual page to its frame.
//
// Output (generated, never committed), per workload under .cache/prefetch/<name>/:
//   image.raw    the guest's physical memory (sparse): 4-level page tables,
//                every data frame stamped with its frame number
//   trace.txt    the measured run's first touches, one hex GVA per line, in order
//   record.txt   a previous run's first touches (other input) as guest frames,
//                one hex frame per line: what a replay (REAP) would have recorded
//   meta.json    cr3, guest size, counts, the command lines
// Reused when the script, the programs and valgrind are unchanged (a content key).
//
// The frames are read while the process is stopped at exit: a tiny LD_PRELOAD
// library (built here with cc) raises SIGSTOP from a destructor; the script
// sees the stop in /proc/PID/stat, reads pagemap, then lets it finish. We run
// as root, so pagemap gives real PFNs. Without CAP_SYS_ADMIN they read as
// zero: the script then assigns frames in first-touch order (a fresh
// allocator's view) and says so in meta.json (`frames: "synthetic"`).
//
// Usage: node scripts/prefetch-traces.mjs [--force]
import { spawn, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, writeFileSync, writeSync, ftruncateSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const OUT = join(ROOT, '.cache', 'prefetch');
const GUEST_PAGES = 1 << 16; // a 256 MiB guest
const PAGE = 4096;

function rng(seed) {
  let x = seed >>> 0 || 1;
  return () => (x = (Math.imul(x, 1103515245) + 12345) >>> 0);
}
function textFile(path, bytes, seed) {
  const r = rng(seed);
  const words = ['page', 'table', 'fault', 'guest', 'frame', 'memory', 'block', 'kernel', 'lazy', 'restore'];
  let s = '';
  while (s.length < bytes) s += words[r() % words.length] + (r() % 7 === 0 ? '\n' : ' ');
  writeFileSync(path, s.slice(0, bytes));
}
function linesFile(path, n, seed) {
  const r = rng(seed);
  writeFileSync(path, Array.from({ length: n }, () => String(r() % 100000)).join('\n') + '\n');
}

/** The workloads: a measured run and a previous run (another input) for replay. */
function workloads(dir) {
  textFile(join(dir, 'a.txt'), 3000, 1);
  textFile(join(dir, 'b.txt'), 3000, 2);
  linesFile(join(dir, 'a.lines'), 400, 3);
  linesFile(join(dir, 'b.lines'), 400, 4);
  return [
    { name: 'perl-startup', what: 'an interpreter starting up', prev: ['/usr/bin/perl', '-e', '1'], run: ['/usr/bin/perl', '-e', 'print 2'] },
    { name: 'gzip', what: 'a compressor', prev: ['/bin/gzip', '-c', join(dir, 'a.txt')], run: ['/bin/gzip', '-c', join(dir, 'b.txt')] },
    { name: 'sort', what: 'a sort', prev: ['/usr/bin/sort', '-n', join(dir, 'a.lines')], run: ['/usr/bin/sort', '-n', join(dir, 'b.lines')] },
  ];
}

function stopLib() {
  const so = join(OUT, 'stop-at-exit.so');
  if (existsSync(so)) return so;
  const c = join(OUT, 'stop-at-exit.c');
  // Stops the process at exit so its page frames can be read before they are freed.
  writeFileSync(c, '#include <signal.h>\n__attribute__((destructor)) static void vmkit_stop(void) { raise(SIGSTOP); }\n');
  execFileSync('cc', ['-shared', '-fPIC', '-O2', '-o', so, c]);
  return so;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Reads /proc/PID/maps and the present frames of every mapping: Map vpn -> pfn, plus the regions. */
function readFrames(pid) {
  const regions = readFileSync(`/proc/${pid}/maps`, 'utf8')
    .trim()
    .split('\n')
    .map((l) => {
      const [range, , , , , name] = l.split(/\s+/);
      const [a, b] = range.split('-').map((h) => parseInt(h, 16));
      return { lo: Math.floor(a / PAGE), hi: Math.floor(b / PAGE), name: name ?? '' };
    })
    .filter((r) => r.name !== '[vsyscall]' && r.lo < 2 ** 35);
  const fd = openSync(`/proc/${pid}/pagemap`, 'r');
  const frames = new Map();
  let zero = 0;
  try {
    for (const r of regions) {
      const chunk = 1 << 16;
      for (let v = r.lo; v < r.hi; v += chunk) {
        const n = Math.min(chunk, r.hi - v);
        const buf = Buffer.alloc(n * 8);
        const got = readSync(fd, buf, 0, n * 8, v * 8);
        for (let i = 0; i < got / 8; i++) {
          const e = buf.readBigUInt64LE(i * 8);
          if ((e >> 63n) & 1n) {
            const pfn = Number(e & ((1n << 55n) - 1n));
            if (pfn === 0) zero++;
            frames.set(v + i, pfn);
          }
        }
      }
    }
  } finally {
    closeSync(fd);
  }
  return { frames, regions, zero };
}

/** Runs `argv` under lackey; returns first touches (vpn, in order) and the frames at exit. */
async function traceRun(argv, so) {
  const child = spawn('valgrind', ['--tool=lackey', '--trace-mem=yes', '--log-fd=3', ...argv], {
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
    env: { ...process.env, LD_PRELOAD: so },
  });
  const seen = new Set();
  const order = [];
  let accesses = 0;
  let tail = '';
  child.stdio[3].setEncoding('latin1');
  child.stdio[3].on('data', (s) => {
    const text = tail + s;
    let at = 0;
    for (;;) {
      const nl = text.indexOf('\n', at);
      if (nl < 0) break;
      // "I  0401ab70,3" / " L 1fff000778,8" / " S ..." / " M ..."; "==pid== ..." lines are not accesses.
      const c0 = text.charCodeAt(at);
      if (c0 === 73 /* I */ || c0 === 32) {
        const comma = text.indexOf(',', at);
        if (comma > 0 && comma < nl) {
          const vpn = Math.floor(parseInt(text.slice(at + 3, comma), 16) / PAGE);
          accesses++;
          if (!seen.has(vpn)) {
            seen.add(vpn);
            order.push(vpn);
          }
        }
      }
      at = nl + 1;
    }
    tail = text.slice(at);
  });
  const done = new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code, sig) => resolve({ code, sig }));
  });
  let snap;
  let exited = false;
  done.then(() => (exited = true));
  while (!exited) {
    let state = '';
    try {
      const st = readFileSync(`/proc/${child.pid}/stat`, 'utf8');
      state = st.slice(st.lastIndexOf(')') + 2, st.lastIndexOf(')') + 3);
    } catch {
      break;
    }
    if (state === 'T') {
      snap = readFrames(child.pid);
      process.kill(child.pid, 'SIGCONT');
      break;
    }
    await sleep(5);
  }
  const { code } = await done;
  await new Promise((r) => (child.stdio[3].readableEnded ? r() : child.stdio[3].on('end', r)));
  if (code !== 0) throw new Error(`${argv.join(' ')} under lackey exited with ${code}`);
  if (!snap) throw new Error(`${argv.join(' ')}: never stopped at exit (LD_PRELOAD ignored?)`);
  return { order, accesses, ...snap };
}

/**
 * Folds host frames into [base, base + room): sorted, gaps kept as they are
 * up to a cap (the largest that fits), so frames adjacent on the host stay
 * adjacent in the guest and far ones stay apart.
 */
function fold(pfns, base, room) {
  const sorted = [...new Set(pfns)].sort((a, b) => a - b);
  const span = (cap) => {
    let s = 1;
    for (let i = 1; i < sorted.length; i++) s += Math.min(cap, sorted[i] - sorted[i - 1]);
    return s;
  };
  let lo = 1, hi = 1 << 20;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (span(mid) <= room) lo = mid;
    else hi = mid - 1;
  }
  const map = new Map();
  let g = base;
  for (let i = 0; i < sorted.length; i++) {
    if (i > 0) g += Math.min(lo, sorted[i] - sorted[i - 1]);
    map.set(sorted[i], g);
  }
  return { map, cap: lo, span: g - base + 1 };
}

/** Writes x86-64 4-level tables for `pairs` (vpn -> guest frame) from frame `next` on; returns cr3 and pages used. */
function writeTables(fd, pairs, first) {
  let next = first;
  const tables = new Map(); // frame -> Buffer
  const alloc = () => {
    const f = next++;
    tables.set(f, Buffer.alloc(PAGE));
    return f;
  };
  const pml4 = alloc();
  const child = (table, index) => {
    const b = tables.get(table);
    const e = b.readBigUInt64LE(index * 8);
    if (e & 1n) return Number((e >> 12n) & 0xffffffffffn);
    const f = alloc();
    b.writeBigUInt64LE((BigInt(f) << 12n) | 0x7n, index * 8); // present, writable, user
    return f;
  };
  for (const [vpn, frame] of pairs) {
    const v = BigInt(vpn);
    const pdpt = child(pml4, Number((v >> 27n) & 511n));
    const pd = child(pdpt, Number((v >> 18n) & 511n));
    const pt = child(pd, Number((v >> 9n) & 511n));
    tables.get(pt).writeBigUInt64LE((BigInt(frame) << 12n) | 0x7n, Number(v & 511n) * 8);
  }
  for (const [f, b] of tables) writeSync(fd, b, 0, PAGE, f * PAGE);
  return { cr3: pml4 * PAGE, tablePages: tables.size };
}

async function build(w, so, dir) {
  const prev = await traceRun(w.prev, so);
  const run = await traceRun(w.run, so);
  const synthetic = run.frames.size > 0 && run.zero === run.frames.size;
  if (synthetic) {
    let f = 1;
    for (const v of [...run.order, ...run.frames.keys()]) if (run.frames.has(v)) run.frames.set(v, f++);
  }
  // The guest maps every present page of each mapping the program touched:
  // untouched neighbours are there too (a virtual window can load them, as waste).
  const touched = new Set(run.order);
  const used = run.regions.filter((r) => run.order.some((v) => v >= r.lo && v < r.hi));
  const mapped = [];
  for (const r of used) for (let v = r.lo; v < r.hi; v++) if (run.frames.has(v)) mapped.push([v, run.frames.get(v)]);
  const TABLE_ROOM = 4096;
  const base = 256; // low guest memory left out, as firmware would
  const { map, cap, span } = fold(mapped.map(([, f]) => f), base, GUEST_PAGES - base - TABLE_ROOM);
  const pairs = mapped.map(([v, f]) => [v, map.get(f)]);
  const guestOf = new Map(pairs);
  mkdirSync(dir, { recursive: true });
  const img = join(dir, 'image.raw');
  const fd = openSync(img, 'w');
  ftruncateSync(fd, GUEST_PAGES * PAGE);
  const stamp = Buffer.alloc(8);
  for (const f of new Set(map.values())) {
    stamp.writeBigUInt64LE(BigInt(f));
    writeSync(fd, stamp, 0, 8, f * PAGE);
  }
  const { cr3, tablePages } = writeTables(fd, pairs, GUEST_PAGES - TABLE_ROOM);
  closeSync(fd);
  writeFileSync(join(dir, 'trace.txt'), run.order.map((v) => (v * PAGE).toString(16)).join('\n') + '\n');
  const record = prev.order.filter((v) => guestOf.has(v)).map((v) => guestOf.get(v).toString(16));
  writeFileSync(join(dir, 'record.txt'), record.join('\n') + '\n');
  const meta = {
    name: w.name,
    what: w.what,
    command: w.run.join(' '),
    previous: w.prev.join(' '),
    guestPages: GUEST_PAGES,
    cr3: '0x' + cr3.toString(16),
    mode: 'x86-64',
    frames: synthetic ? 'synthetic' : 'pagemap',
    accesses: run.accesses,
    firstTouches: run.order.length,
    touchedWithoutFrame: run.order.filter((v) => !run.frames.has(v)).length,
    mappedPages: pairs.length,
    mappedUntouched: pairs.filter(([v]) => !touched.has(v)).length,
    foldGapCap: cap,
    foldSpan: span,
    tablePages,
    recordPages: record.length,
  };
  writeFileSync(join(dir, 'meta.json'), JSON.stringify(meta, null, 2) + '\n');
  return meta;
}

async function main() {
  const force = process.argv.includes('--force');
  mkdirSync(OUT, { recursive: true });
  const inputs = join(OUT, 'inputs');
  mkdirSync(inputs, { recursive: true });
  const ws = workloads(inputs);
  const version = (cmd) => {
    try {
      return execFileSync(cmd[0], ['--version'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().split('\n')[0];
    } catch {
      return cmd[0];
    }
  };
  const key = createHash('sha256')
    .update(readFileSync(fileURLToPath(import.meta.url)))
    .update(execFileSync('valgrind', ['--version']).toString())
    .update(ws.map((w) => version(w.run)).join('|'))
    .digest('hex')
    .slice(0, 16);
  const keyFile = join(OUT, 'key');
  if (!force && existsSync(keyFile) && readFileSync(keyFile, 'utf8') === key && ws.every((w) => existsSync(join(OUT, w.name, 'meta.json')))) {
    console.log(`prefetch traces up to date in ${OUT}`);
    return;
  }
  for (const [tool, pkg] of [['valgrind', 'valgrind'], ['cc', 'gcc']]) {
    try {
      execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    } catch {
      throw new Error(`prefetch traces need ${tool}: apt-get install ${pkg}`);
    }
  }
  const so = stopLib();
  const t0 = performance.now();
  // Two at a time: lackey is single-threaded and the machine has two cores.
  const metas = [];
  const queue = [...ws];
  await Promise.all(
    [0, 1].map(async () => {
      for (let w = queue.shift(); w; w = queue.shift()) {
        const m = await build(w, so, join(OUT, w.name));
        metas.push(m);
        console.log(`${m.name}: ${m.accesses} accesses, ${m.firstTouches} pages first-touched (${m.touchedWithoutFrame} gone at exit), ${m.mappedPages} mapped (${m.mappedUntouched} never touched), frames: ${m.frames}, fold gap cap ${m.foldGapCap}, cr3 ${m.cr3}`);
      }
    }),
  );
  writeFileSync(keyFile, key);
  console.log(`prefetch traces written to ${OUT} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

await main();
