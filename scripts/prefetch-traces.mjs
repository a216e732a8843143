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
// Usage: node scripts/prefetch-traces.mjs [--force] [--no-slow] [--only=name,name]
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

const PY = `import os, signal, sys, json, re, random, collections

def work(seed):
    # One "request": build words, count them with a regex, round-trip JSON, sort.
    rnd = random.Random(seed)
    words = [''.join(rnd.choice('abcdefghij') for _ in range(rnd.randint(2, 8))) for _ in range(2000)]
    counts = collections.Counter(re.findall(r'[a-e]+', ' '.join(words)))
    doc = json.loads(json.dumps({'top': counts.most_common(40), 'n': len(words)}))
    return len(doc['top']) + sum(sorted(len(w) for w in words)[:100])

base = int(sys.argv[1])
work(base)                              # warm-up: imports loaded, code paths run once
os.kill(os.getpid(), signal.SIGSTOP)    # snapshot point (REAP: after a warm-up run)
work(base + 1)                          # first invocation after the snapshot (what replay records)
os.kill(os.getpid(), signal.SIGSTOP)    # split
print(work(base + 2))                   # second invocation: the measured one
`;

// No #include: the prototypes it needs, so that cc1's run is the compiler, not header parsing
// (with stdio.h it is ~10x longer under lackey).
const C_SRC = (n) => `typedef unsigned long size_t;
void *malloc(size_t);
void qsort(void *, size_t, size_t, int (*)(const void *, const void *));
int atoi(const char *);
int snprintf(char *, size_t, const char *, ...);
int printf(const char *, ...);
size_t strlen(const char *);
struct node { int key; struct node *next; };
static int cmp(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }
static struct node *push(struct node *head, int key) {
  struct node *x = malloc(sizeof *x);
  x->key = key;
  x->next = head;
  return x;
}
int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : ${n}, *v = malloc(n * sizeof *v);
  struct node *head = 0;
  for (int i = 0; i < n; i++) {
    v[i] = (i * 7919) % n;
    head = push(head, v[i]);
  }
  qsort(v, n, sizeof *v, cmp);
  char buf[64];
  snprintf(buf, sizeof buf, "%d %d", v[0], head->key);
  printf("%s %zu\\n", buf, strlen(buf));
  return 0;
}
`;

const SQL = (n, m) => `CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, grp INT, val REAL);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ${n})
  INSERT INTO t SELECT i, printf('name%d', (i * ${m}) % ${n}), i % 37, ((i * 13) % 1000) / 7.0 FROM c;
CREATE INDEX t_grp ON t(grp, val);
SELECT grp, count(*), avg(val), max(name) FROM t GROUP BY grp ORDER BY 2 DESC LIMIT 5;
SELECT name FROM t WHERE grp = 5 AND val > 50 ORDER BY val LIMIT 3;
SELECT count(*) FROM t a JOIN t b ON a.grp = b.grp AND a.id = b.id + 1;
`;

// One "request" to a database: a few rows in, then the queries.
const SQL_REQ = (g, k) => `INSERT INTO t SELECT id + ${k}, 'new' || id, grp, val + 1 FROM t WHERE id <= 20;
SELECT grp, count(*), avg(val), max(name) FROM t WHERE grp BETWEEN ${g} AND ${g + 5} GROUP BY grp;
SELECT name FROM t WHERE grp = ${g} AND val > 50 ORDER BY val LIMIT 3;
SELECT count(*) FROM t a JOIN t b ON a.grp = b.grp AND a.id = b.id + 1 WHERE a.grp = ${g};
`;

function cc1Path() {
  try {
    return execFileSync('cc', ['-print-prog-name=cc1']).toString().trim();
  } catch {
    return 'cc1';
  }
}

/**
 * The workloads: a measured run and a previous run (another input) for replay.
 * `warm`: the run also stops itself twice (snapshot after a warm-up call,
 * then between two more calls): the REAP setting, written as extra traces.
 * `slow`: minutes under lackey (built by the bench, never by CI).
 */
function workloads(dir) {
  textFile(join(dir, 'a.txt'), 3000, 1);
  textFile(join(dir, 'b.txt'), 3000, 2);
  linesFile(join(dir, 'a.lines'), 400, 3);
  linesFile(join(dir, 'b.lines'), 400, 4);
  writeFileSync(join(dir, 'work.py'), PY);
  writeFileSync(join(dir, 'a.c'), C_SRC(100));
  writeFileSync(join(dir, 'b.c'), C_SRC(200).replace('qsort(v, n, sizeof *v, cmp);', 'qsort(v, n, sizeof *v, cmp);\n  for (int i = 1; i < n; i++) if (v[i] < v[i - 1]) return 1;'));
  writeFileSync(join(dir, 'a.sql'), SQL(400, 7919));
  writeFileSync(join(dir, 'b.sql'), SQL(500, 104729));
  textFile(join(dir, 'c.txt'), 3000, 5);
  // The warm database: the table and a first request (warm-up), then two more requests.
  writeFileSync(join(dir, 'w0.sql'), SQL(400, 7919) + SQL_REQ(5, 1000));
  writeFileSync(join(dir, 'w1.sql'), SQL_REQ(11, 2000));
  writeFileSync(join(dir, 'w2.sql'), SQL_REQ(17, 3000));
  const cc1 = cc1Path();
  const cc1Args = (f) => [cc1, '-quiet', '-O2', join(dir, f), '-o', '/dev/null'];
  return [
    { name: 'perl-startup', what: 'an interpreter starting up', prev: ['/usr/bin/perl', '-e', '1'], run: ['/usr/bin/perl', '-e', 'print 2'] },
    { name: 'gzip', what: 'a compressor', prev: ['/bin/gzip', '-c', join(dir, 'a.txt')], run: ['/bin/gzip', '-c', join(dir, 'b.txt')] },
    { name: 'sort', what: 'a sort', prev: ['/usr/bin/sort', '-n', join(dir, 'a.lines')], run: ['/usr/bin/sort', '-n', join(dir, 'b.lines')] },
    { name: 'sqlite3', what: 'a database (sqlite3 in memory: insert 500 rows, index, group, join)', prev: ['/usr/bin/sqlite3', ':memory:', `.read ${join(dir, 'a.sql')}`], run: ['/usr/bin/sqlite3', ':memory:', `.read ${join(dir, 'b.sql')}`] },
    // Warm (REAP): one process serves three requests; the LD_PRELOAD library stops it as it opens
    // the second and the third (the snapshot, then the split).
    { name: 'gzip-warm', what: 'a compressor serving three files in one process (gzip -c a b c)', run: ['/bin/gzip', '-c', join(dir, 'a.txt'), join(dir, 'b.txt'), join(dir, 'c.txt')], env: { VMKIT_STOP_AT: 'b.txt:c.txt' }, warmOnly: true },
    { name: 'sqlite3-warm', what: 'a database serving three requests in one process (sqlite3 .read w0, w1, w2)', run: ['/usr/bin/sqlite3', ':memory:', `.read ${join(dir, 'w0.sql')}`, `.read ${join(dir, 'w1.sql')}`, `.read ${join(dir, 'w2.sql')}`], env: { VMKIT_STOP_AT: 'w1.sql:w2.sql' }, warmOnly: true },
    { name: 'cc1', what: 'a C compiler (cc1 -O2 on a 28-line file)', prev: cc1Args('a.c'), run: cc1Args('b.c'), slow: true },
    {
      name: 'python',
      what: 'an interpreter running a script (python3: json, re, random, collections; three calls)',
      prev: ['/usr/bin/python3', join(dir, 'work.py'), '10'],
      run: ['/usr/bin/python3', join(dir, 'work.py'), '1'],
      env: { PYTHONHASHSEED: '0', PYTHONDONTWRITEBYTECODE: '1' },
      warm: true,
      slow: true,
    },
  ];
}

const STOP_C = `#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
/* Stops the process (SIGSTOP) at exit, and before it opens a file whose path
   contains one of the ':'-separated names in VMKIT_STOP_AT (each name once):
   scripts/prefetch-traces.mjs reads /proc/PID/pagemap while it is stopped. */
static unsigned done_mask;
static void maybe_stop(const char *path) {
  const char *list = getenv("VMKIT_STOP_AT");
  if (!list || !path) return;
  for (unsigned i = 0; *list && i < 32; i++) {
    const char *end = strchr(list, ':');
    size_t n = end ? (size_t)(end - list) : strlen(list);
    char name[256];
    if (n > 0 && n < sizeof name && !(done_mask & (1u << i))) {
      memcpy(name, list, n);
      name[n] = 0;
      if (strstr(path, name)) {
        done_mask |= 1u << i;
        raise(SIGSTOP);
        return;
      }
    }
    if (!end) break;
    list = end + 1;
  }
}
typedef FILE *(*fopen_t)(const char *, const char *);
typedef int (*open_t)(const char *, int, ...);
typedef int (*openat_t)(int, const char *, int, ...);
#define REAL(name, type) static type real_##name; if (!real_##name) real_##name = (type)dlsym(RTLD_NEXT, #name)
FILE *fopen(const char *p, const char *m) { REAL(fopen, fopen_t); maybe_stop(p); return real_fopen(p, m); }
FILE *fopen64(const char *p, const char *m) { REAL(fopen64, fopen_t); maybe_stop(p); return real_fopen64(p, m); }
static mode_t mode_of(int flags, va_list ap) { return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0; }
int open(const char *p, int f, ...) { va_list ap; va_start(ap, f); mode_t m = mode_of(f, ap); va_end(ap); REAL(open, open_t); maybe_stop(p); return real_open(p, f, m); }
int open64(const char *p, int f, ...) { va_list ap; va_start(ap, f); mode_t m = mode_of(f, ap); va_end(ap); REAL(open64, open_t); maybe_stop(p); return real_open64(p, f, m); }
int openat(int d, const char *p, int f, ...) { va_list ap; va_start(ap, f); mode_t m = mode_of(f, ap); va_end(ap); REAL(openat, openat_t); maybe_stop(p); return real_openat(d, p, f, m); }
int openat64(int d, const char *p, int f, ...) { va_list ap; va_start(ap, f); mode_t m = mode_of(f, ap); va_end(ap); REAL(openat64, openat_t); maybe_stop(p); return real_openat64(d, p, f, m); }
__attribute__((destructor)) static void vmkit_stop(void) { raise(SIGSTOP); }
`;

function stopLib() {
  // Named by its source's hash: a changed library is rebuilt.
  const tag = createHash('sha256').update(STOP_C).digest('hex').slice(0, 8);
  const so = join(OUT, `stop-${tag}.so`);
  if (existsSync(so)) return so;
  const c = join(OUT, `stop-${tag}.c`);
  writeFileSync(c, STOP_C);
  execFileSync('cc', ['-shared', '-fPIC', '-O2', '-o', so, c, '-ldl']);
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

/**
 * Runs `argv` under lackey. Every time the process stops (SIGSTOP: the
 * program's own snapshot markers, then the exit library's) the pagemap is
 * read and a new segment of the trace starts. Returns the first touches of
 * the whole run (vpn, in order), per segment, and the frames at each stop.
 */
async function traceRun(argv, so, env = {}) {
  const child = spawn('valgrind', ['--tool=lackey', '--trace-mem=yes', '--log-fd=3', ...argv], {
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
    env: { ...process.env, ...env, LD_PRELOAD: so },
  });
  const seen = new Set();
  const order = [];
  const segments = [{ seen: new Set(), order: [], accesses: 0 }];
  let seg = segments[0];
  let accesses = 0;
  let tail = '';
  let lastData = performance.now();
  let lastVpn = -1;
  let lastSeg = seg;
  child.stdio[3].setEncoding('latin1');
  child.stdio[3].on('data', (s) => {
    lastData = performance.now();
    const text = tail + s;
    let at = 0;
    for (;;) {
      const nl = text.indexOf('\n', at);
      if (nl < 0) break;
      // "I  0401ab70,3" / " L 1fff000778,8" / " S ..." / " M ..."; "==pid== ..." lines are not accesses.
      const c0 = text.charCodeAt(at);
      if (c0 === 73 /* I */ || c0 === 32) {
        const comma = text.indexOf(',', at);
        if (comma > 3 && comma < nl) {
          // The page number: the address without its last three hex digits.
          const vpn = comma - 3 > at + 3 ? parseInt(text.slice(at + 3, comma - 3), 16) : 0;
          accesses++;
          seg.accesses++;
          // Most accesses stay on the page of the one before: skip the set lookups.
          if (vpn === lastVpn && seg === lastSeg) {
            at = nl + 1;
            continue;
          }
          lastVpn = vpn;
          lastSeg = seg;
          if (!seen.has(vpn)) {
            seen.add(vpn);
            order.push(vpn);
          }
          if (!seg.seen.has(vpn)) {
            seg.seen.add(vpn);
            seg.order.push(vpn);
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
  const stops = [];
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
      // Stopped: lackey writes each access as it happens, so once the pipe
      // has been quiet a while everything before the stop has been parsed.
      while (performance.now() - lastData < 300) await sleep(50);
      stops.push({ at: order.length, accesses, ...readFrames(child.pid) });
      seg = { seen: new Set(), order: [], accesses: 0 };
      segments.push(seg);
      process.kill(child.pid, 'SIGCONT');
    }
    await sleep(5);
  }
  const { code } = await done;
  await new Promise((r) => (child.stdio[3].readableEnded ? r() : child.stdio[3].on('end', r)));
  if (code !== 0) throw new Error(`${argv.join(' ')} under lackey exited with ${code}`);
  if (stops.length === 0) throw new Error(`${argv.join(' ')}: never stopped at exit (LD_PRELOAD ignored?)`);
  const last = stops[stops.length - 1];
  return { order, accesses, segments, stops, frames: last.frames, regions: last.regions, zero: last.zero };
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

/**
 * Writes one guest under `dir`: `mapped` (vpn -> host frame) folded into the
 * guest, its page tables, the trace (vpns) and the replay record (vpns of a
 * previous run, as guest frames). Returns what meta.json needs.
 */
function writeGuest(dir, mapped, trace, previous) {
  const TABLE_ROOM = 4096;
  const base = 256; // low guest memory left out, as firmware would
  const { map, cap, span } = fold(mapped.map(([, f]) => f), base, GUEST_PAGES - base - TABLE_ROOM);
  const pairs = mapped.map(([v, f]) => [v, map.get(f)]);
  const guestOf = new Map(pairs);
  mkdirSync(dir, { recursive: true });
  const fd = openSync(join(dir, 'image.raw'), 'w');
  ftruncateSync(fd, GUEST_PAGES * PAGE);
  const stamp = Buffer.alloc(8);
  for (const f of new Set(map.values())) {
    stamp.writeBigUInt64LE(BigInt(f));
    writeSync(fd, stamp, 0, 8, f * PAGE);
  }
  const { cr3, tablePages } = writeTables(fd, pairs, GUEST_PAGES - TABLE_ROOM);
  closeSync(fd);
  writeFileSync(join(dir, 'trace.txt'), trace.map((v) => (v * PAGE).toString(16)).join('\n') + '\n');
  const record = previous.filter((v) => guestOf.has(v)).map((v) => guestOf.get(v).toString(16));
  writeFileSync(join(dir, 'record.txt'), record.join('\n') + '\n');
  const inTrace = new Set(trace);
  return {
    guestPages: GUEST_PAGES,
    cr3: '0x' + cr3.toString(16),
    mode: 'x86-64',
    firstTouches: trace.length,
    touchedWithoutFrame: trace.filter((v) => !guestOf.has(v)).length,
    mappedPages: pairs.length,
    mappedUntouched: pairs.filter(([v]) => !inTrace.has(v)).length,
    foldGapCap: cap,
    foldSpan: span,
    tablePages,
    recordPages: record.length,
  };
}

/** Present pages of every mapping `touched` reaches, from one pagemap read. */
function presentIn(snap, touched) {
  const out = [];
  for (const r of snap.regions) {
    let hit = false;
    for (const v of touched) if (v >= r.lo && v < r.hi) {
      hit = true;
      break;
    }
    if (!hit) continue;
    for (let v = r.lo; v < r.hi; v++) if (snap.frames.has(v)) out.push([v, snap.frames.get(v)]);
  }
  return out;
}

function synthesize(run) {
  // Without CAP_SYS_ADMIN pagemap gives zero PFNs: frames in first-touch order (a fresh allocator's view).
  for (const s of run.stops) {
    if (!(s.frames.size > 0 && s.zero === s.frames.size)) continue;
    let f = 1;
    for (const v of [...run.order, ...s.frames.keys()]) if (s.frames.has(v)) s.frames.set(v, f++);
  }
  return run.stops.some((s) => s.frames.size > 0 && s.zero === s.frames.size) || run.zero === run.frames.size;
}

async function build(w, so, dir) {
  // Both runs at once: lackey is single-threaded, and the two take the same time.
  const [prev, run] = await Promise.all([w.prev ? traceRun(w.prev, so, w.env) : undefined, traceRun(w.run, so, w.env)]);
  const synthetic = synthesize(run);
  const common = { what: w.what, command: w.run.join(' '), previous: w.prev ? w.prev.join(' ') : 'the first request after the snapshot', frames: synthetic ? 'synthetic' : 'pagemap', accesses: run.accesses };
  const metas = [];
  if (!w.warmOnly) {
    // Cold: the whole run from an empty guest. The guest maps every present
    // page (at exit) of each mapping the program touched: untouched neighbours
    // are there too (a virtual window can load them, as waste).
    metas.push({ name: w.name, model: 'cold', ...common, ...writeGuest(dir, presentIn(run, run.order), run.order, prev.order) });
  }
  if (w.warm || w.warmOnly) {
    // REAP: the snapshot is taken after a warm-up call (stop 0); the
    // measured trace is the second call after it (from stop 1 to the exit
    // stop), first touches counted within that call; replay records the
    // first call after the snapshot (stop 0 to stop 1).
    if (run.stops.length < 3) throw new Error(`${w.name}: expected 3 stops (snapshot, split, exit), saw ${run.stops.length}`);
    const [snap, , exit] = run.stops;
    const inv1 = run.segments[1].order;
    const inv2 = run.segments[2].order;
    const mapped = presentIn(snap, run.order);
    // Pages the measured call allocates after the snapshot: their frame at exit (a guest would
    // hand them free frames that are in the snapshot too), unless that frame held another page.
    const have = new Set(mapped.map(([v]) => v));
    const used = new Set(mapped.map(([, f]) => f));
    let fresh = 0;
    for (const v of inv2) {
      if (have.has(v) || !exit.frames.has(v) || used.has(exit.frames.get(v))) continue;
      mapped.push([v, exit.frames.get(v)]);
      used.add(exit.frames.get(v));
      fresh++;
    }
    const ever = new Set(run.order);
    const faultAround = mapped.filter(([v]) => !ever.has(v)).length;
    const seg = { warmupAccesses: run.segments[0].accesses, measuredAccesses: run.segments[2].accesses, warmupPages: run.segments[0].order.length, snapshotPresent: snap.frames.size, freshAfterSnapshot: fresh, neverTouchedByProcess: faultAround };
    const name = w.warmOnly ? w.name : `${w.name}-warm`;
    common.previous = 'the first request after the snapshot';
    metas.push({ name, model: 'warm', ...common, ...seg, ...writeGuest(join(OUT, name), mapped, inv2, inv1) });
    // The same, without the pages only the host kernel's fault-around made present: the guest
    // maps only pages the process itself touched at some point of the run (lackey saw them).
    const own = mapped.filter(([v]) => ever.has(v));
    metas.push({ name: `${name}-touched`, model: 'warm-touched', ...common, ...seg, ...writeGuest(join(OUT, `${name}-touched`), own, inv2, inv1) });
  }
  for (const m of metas) writeFileSync(join(OUT, m.name, 'meta.json'), JSON.stringify(m, null, 2) + '\n');
  return metas;
}

/** Bump when what build() writes changes: every workload is rebuilt. */
const METHOD = 2;

async function main() {
  const force = process.argv.includes('--force');
  const quick = process.argv.includes('--no-slow');
  const onlyArg = process.argv.find((a) => a.startsWith('--only='));
  const only = onlyArg ? onlyArg.slice(7).split(',') : undefined;
  mkdirSync(OUT, { recursive: true });
  const inputs = join(OUT, 'inputs');
  mkdirSync(inputs, { recursive: true });
  const ws = workloads(inputs).filter((w) => (!quick || !w.slow) && (!only || only.includes(w.name)));
  const version = (cmd) => {
    try {
      return execFileSync(cmd[0], ['--version'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().split('\n')[0];
    } catch {
      return cmd[0];
    }
  };
  const vg = execFileSync('valgrind', ['--version']).toString();
  // Per workload: rebuilt when its command lines, the program, valgrind or METHOD change.
  const keyOf = (w) =>
    createHash('sha256')
      .update(JSON.stringify(w.warmOnly ? [METHOD, w.run, w.env, 'warmOnly'] : [METHOD, w.prev, w.run, w.env ?? {}, w.warm ?? false]))
      .update(vg)
      .update(version(w.run))
      .update(w.name === 'python' ? PY : w.name.startsWith('cc1') ? C_SRC(0) : w.name.startsWith('sqlite3') ? SQL(0, 0) + SQL_REQ(0, 0) : '')
      .digest('hex')
      .slice(0, 16);
  const names = (w) => (w.warmOnly ? [w.name, `${w.name}-touched`] : w.warm ? [w.name, `${w.name}-warm`, `${w.name}-warm-touched`] : [w.name]);
  const todo = ws.filter((w) => {
    const k = join(OUT, w.name, 'key');
    return force || !existsSync(k) || readFileSync(k, 'utf8') !== keyOf(w) || !names(w).every((n) => existsSync(join(OUT, n, 'meta.json')));
  });
  if (todo.length === 0) {
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
  // Two workloads at a time (four lackey runs): the slow ones take minutes each.
  // A workload that fails (a program missing) is reported and skipped; the others are built.
  const failed = [];
  const queue = [...todo];
  await Promise.all(
    [0, 1].map(async () => {
      for (let w = queue.shift(); w; w = queue.shift()) {
        const t = performance.now();
        try {
          const ms = await build(w, so, join(OUT, w.name));
          writeFileSync(join(OUT, w.name, 'key'), keyOf(w));
          for (const m of ms) console.log(`${m.name}: ${m.accesses} accesses, ${m.firstTouches} pages first-touched (${m.touchedWithoutFrame} without a frame), ${m.mappedPages} mapped (${m.mappedUntouched} never touched by the trace), frames: ${m.frames}, fold gap cap ${m.foldGapCap}, cr3 ${m.cr3} [${((performance.now() - t) / 1000).toFixed(0)} s]`);
        } catch (e) {
          failed.push(w.name);
          console.error(`${w.name}: ${e.message}`);
        }
      }
    }),
  );
  console.log(`prefetch traces written to ${OUT} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  if (failed.length) {
    console.error(`failed: ${failed.join(', ')}`);
    process.exitCode = 1;
  }
}

await main();
