// Fault-time prefetch (issue 4, docs/prefetch.md) on real first-touch traces.
//  - Every policy over windows ±1..±128 (virtual also ±256, ±512) on the traces
//    scripts/prefetch-traces.mjs builds (real programs under valgrind lackey;
//    real frames from /proc/PID/pagemap, folded into a 256 MiB guest with
//    x86-64 page tables); translations come from one walk of the guest's
//    tables (AddressSpace). Cold traces (a whole run from an empty guest) are
//    summed for the goals; the warm ones (REAP: snapshot after a warm-up call,
//    a later call measured) are reported apart. Plot bench/prefetch.svg.
//    perl, gzip and sort take about a minute to trace; cc1, sqlite3 and python
//    several (the first run builds them, later runs reuse .cache/prefetch);
//    --quick skips those.
//  - The core's fault path (neighbourhood walk ±8 + coalescing) in faults/s,
//    against the same walk written in plain JS (Map + sort) in the same run.
// Goals: virtual ±8 cuts faults ≥ 85% vs none with waste ≤ 15% of loaded pages
// and beats physical ±8 on both; adaptive beats every fixed window on
// faults × waste; ≥ 1 M faults/s in the core.
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { measure, loadCore } from './_lib.js';

/** The headline rows of RESULTS.md's opening table (bench/_summary.js): rows of this suite's own tables. */
export const SUMMARY = [
  { what: "Prefetch fault path (±8 walk + coalescing), 10,000 faults", section: "Fault path: neighbourhood walk ±8 + coalescing (ratios vs plain JS)", vmkit: "core prefetchFaultVirtualBatch, 10000 faults (±8)", peer: "plain JS walk + coalesce, 10000 faults (±8)" },
];

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const OUT = `${ROOT}.cache/prefetch`;
const WINDOWS = [1, 2, 4, 8, 16, 32, 64, 128];
const WIDE = [256, 512];
// Always built (about a minute): the first three; the others take minutes under lackey.
const CORE = ['perl-startup', 'gzip', 'sort'];
const COLD = [...CORE, 'cc1', 'sqlite3', 'python'];
// The REAP setting (a snapshot after a warm-up request, a later request measured), as two guests
// each: every present page at the snapshot, and only the pages the process itself touched.
const WARM = ['gzip-warm', 'sqlite3-warm', 'python-warm'];
const WARM_TOUCHED = WARM.map((n) => `${n}-touched`);

function fileMemory(path) {
  const fd = openSync(path, 'r');
  return {
    size: BigInt(fstatSync(fd).size),
    readSync(at, dst) {
      readSync(fd, dst, 0, dst.length, Number(at));
    },
    close: () => closeSync(fd),
  };
}

function loadWorkload(name, m) {
  const dir = `${OUT}/${name}`;
  const meta = JSON.parse(readFileSync(`${dir}/meta.json`, 'utf8'));
  const trace = readFileSync(`${dir}/trace.txt`, 'utf8').trim().split('\n').map((h) => BigInt('0x' + h));
  const record = readFileSync(`${dir}/record.txt`, 'utf8').trim().split('\n').filter(Boolean).map((h) => parseInt(h, 16));
  const mem = fileMemory(`${dir}/image.raw`);
  const space = m.AddressSpace.create({ memory: mem, mode: meta.mode, root: BigInt(meta.cr3) });
  const pairs = [];
  for (const x of space.mappings()) for (let o = 0n; o < BigInt(x.pageSize); o += 4096n) pairs.push([(x.gva + o) >> 12n, Number((x.gpa + o) >> 12n)]);
  space.dispose();
  mem.close();
  return { name, meta, trace, record, pairs, pages: meta.guestPages, dir };
}

function runPolicy(m, w, policy, options) {
  const e = new m.PrefetchEngine(w.pages, { mapCapacity: w.pairs.length });
  e.map(w.pairs);
  const r = m.simulate(e, m.createPolicy(policy, options), w.trace);
  e.close();
  return r;
}

const pct = (a, b) => (b === 0 ? '–' : `${((100 * a) / b).toFixed(1)}%`);

/** Sum of results over the workloads. */
function total(rs) {
  const t = { faults: 0, prefetched: 0, prefetchHits: 0, wasted: 0, reads: 0, loaded: 0, accesses: 0, unmapped: 0 };
  for (const r of rs) for (const k of Object.keys(t)) t[k] += r[k];
  return t;
}

function svgPlot(rows, noneFaults, traces) {
  // Two panels: faults and wasted pages (sums over the traces) against the window, log2 x axis.
  const W = 760, H = 320, P = { l: 56, r: 12, t: 28, b: 60 }, gap = 60;
  const pw = (W - P.l - P.r - gap) / 2, ph = H - P.t - P.b;
  const colours = { physical: '#d62728', virtual: '#1f77b4', adaptive: '#2ca02c', replay: '#9467bd', 'replay+virtual': '#8c564b', none: '#7f7f7f' };
  const x = (i) => (i / (WINDOWS.length - 1)) * pw;
  let s = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">\n<rect width="${W}" height="${H}" fill="white"/>\n`;
  // log: wasted pages span four decades (physical's tens of thousands, replay+virtual's tens).
  const panel = (ox, key, title, log) => {
    const maxY = Math.max(1, ...rows.filter((r) => r.policy !== 'replay+virtual').map((r) => r[key]), key === 'faults' ? noneFaults : 0);
    const top = log ? 10 ** Math.ceil(Math.log10(maxY)) : maxY;
    const y = (v) => (log ? ph - (Math.log10(Math.max(1, v)) / Math.log10(top)) * ph : ph - (v / maxY) * ph);
    s += `<g transform="translate(${ox},${P.t})">\n<text x="${pw / 2}" y="-10" text-anchor="middle" font-weight="bold">${title}</text>\n`;
    s += `<line x1="0" y1="${ph}" x2="${pw}" y2="${ph}" stroke="black"/><line x1="0" y1="0" x2="0" y2="${ph}" stroke="black"/>\n`;
    WINDOWS.forEach((wd, i) => (s += `<text x="${x(i)}" y="${ph + 14}" text-anchor="middle">±${wd}</text>\n`));
    s += `<text x="${pw / 2}" y="${ph + 30}" text-anchor="middle">window (pages each side)</text>\n`;
    const ticks = log ? Array.from({ length: Math.log10(top) + 1 }, (_, k) => 10 ** k) : [0, 1, 2, 3, 4].map((k) => Math.round((maxY * k) / 4));
    for (const v of ticks) {
      s += `<text x="-4" y="${y(v) + 4}" text-anchor="end">${v}</text><line x1="0" y1="${y(v)}" x2="${pw}" y2="${y(v)}" stroke="#ddd"/>\n`;
    }
    if (key === 'faults') s += `<line x1="0" y1="${y(noneFaults)}" x2="${pw}" y2="${y(noneFaults)}" stroke="${colours.none}" stroke-dasharray="4 3"/><text x="${pw - 2}" y="${y(noneFaults) - 3}" text-anchor="end" fill="${colours.none}">none</text>\n`;
    for (const pol of ['physical', 'virtual', 'adaptive', 'replay+virtual']) {
      const pts = WINDOWS.map((wd, i) => [i, rows.find((r) => r.policy === pol && r.window === wd)]).filter(([, r]) => r);
      if (pts.length === 0) continue;
      s += `<polyline fill="none" stroke="${colours[pol]}" stroke-width="2" points="${pts.map(([i, r]) => `${x(i).toFixed(1)},${y(r[key]).toFixed(1)}`).join(' ')}"/>\n`;
      for (const [i, r] of pts) s += `<circle cx="${x(i).toFixed(1)}" cy="${y(r[key]).toFixed(1)}" r="2.5" fill="${colours[pol]}"/>\n`;
    }
    const rep = rows.find((r) => r.policy === 'replay');
    if (rep) s += `<line x1="0" y1="${y(rep[key])}" x2="${pw}" y2="${y(rep[key])}" stroke="${colours.replay}" stroke-dasharray="2 2"/>\n`;
    s += '</g>\n';
  };
  panel(P.l, 'faults', `faults (sum over ${traces} cold traces)`, false);
  panel(P.l + pw + gap, 'wasted', 'wasted pages (never used; log scale)', true);
  const legend = ['physical', 'virtual', 'adaptive', 'replay', 'replay+virtual'];
  legend.forEach((l, i) => (s += `<rect x="${P.l + i * 130}" y="${H - 12}" width="10" height="10" fill="${colours[l]}"/><text x="${P.l + i * 130 + 14}" y="${H - 3}">${l === 'adaptive' ? 'adaptive (initial window)' : l === 'replay' ? 'replay (no window)' : l}</text>\n`));
  return s + '</svg>\n';
}

/** The same neighbourhood walk and coalescing in plain JS: the peer for the fault-path speed. */
function jsFaultPath(map, resident, vpn, back, ahead) {
  const frames = [];
  for (let v = vpn - back; v <= vpn + ahead; v++) {
    const f = map.get(v);
    if (f !== undefined && !resident[f]) frames.push(f);
  }
  frames.sort((a, b) => a - b);
  let runs = 0;
  for (let i = 0; i < frames.length; i++) {
    if (i > 0 && frames[i] === frames[i - 1]) continue;
    resident[frames[i]] = 1;
    if (i === 0 || frames[i] !== frames[i - 1] + 1) runs++;
  }
  return runs;
}

export async function run(ctx) {
  await loadCore();
  const m = await import('../dist/memory/index.js');
  const la0 = loadavg()[0];
  // VMKIT_PREFETCH_NO_SLOW=1: use the slow traces already built, build none (they are left out when absent).
  // --quick builds only the CORE traces (tens of seconds under lackey; the others take minutes on a
  // fresh clone) and uses whatever else is already built.
  const noSlow = ctx.quick || process.env.VMKIT_PREFETCH_NO_SLOW === '1';
  const lacking = ['valgrind', 'cc'].filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0);
  if (lacking.length && !CORE.every((n) => existsSync(`${OUT}/${n}/meta.json`))) {
    const msg = `SKIPPED: the traces are recorded under valgrind lackey and need ${lacking.join(' and ')} (apt-get install valgrind gcc; sudo .ci/install-tools)`;
    ctx.log(msg);
    return { title: 'prefetch: fault-time prefetch by guest-virtual neighbourhood', sections: [], notes: [msg] };
  }
  const only = ctx.quick ? [`--only=${CORE.join(',')}`] : [];
  const gen = spawnSync(process.execPath, [`${ROOT}scripts/prefetch-traces.mjs`, ...(noSlow ? ['--no-slow'] : []), ...only], { stdio: 'inherit' });
  if (!CORE.every((n) => existsSync(`${OUT}/${n}/meta.json`))) throw new Error(`scripts/prefetch-traces.mjs failed (status ${gen.status})`);
  // A slow trace that could not be built (a program missing) is left out and named in the notes.
  const have = (n) => existsSync(`${OUT}/${n}/meta.json`);
  const missing = [...COLD, ...WARM, ...WARM_TOUCHED].filter((n) => !have(n));
  const cold = COLD.filter(have).map((n) => loadWorkload(n, m));
  const warm = WARM.filter(have).map((n) => loadWorkload(n, m));
  const warmTouched = WARM_TOUCHED.filter(have).map((n) => loadWorkload(n, m));

  /** Every policy and window over the workloads `ws`: rows summed, and per trace. */
  const evaluate = (ws) => {
    const rows = [];
    const per = new Map();
    const add = (policy, window, options) => {
      const rs = ws.map((w) => runPolicy(m, w, policy, typeof options === 'function' ? options(w) : options));
      const row = { policy, window, ...total(rs), perTrace: rs };
      rows.push(row);
      per.set(`${policy}/${window}`, row);
      return row;
    };
    add('none', 0, {});
    for (const wd of WINDOWS) {
      add('physical', wd, { back: wd, ahead: wd });
      add('virtual', wd, { back: wd, ahead: wd });
      add('adaptive', wd, { ahead: wd });
    }
    // Wider fixed windows, beyond the plot: faults × waste keeps falling while the waste saturates
    // at the mapped pages the runs never touch.
    for (const wd of WIDE) add('virtual', wd, { back: wd, ahead: wd });
    add('replay', 0, (w) => ({ record: w.record }));
    for (const wd of WINDOWS.filter((x) => x <= 32)) add('replay+virtual', wd, (w) => ({ record: w.record, back: wd, ahead: wd }));
    return { rows, per, none: per.get('none/0'), ws };
  };
  const C = evaluate(cold);
  const { rows, per, none } = C;
  // Warm guests: summed per model (all present pages / only pages the process touched).
  const W = [warm, warmTouched].filter((ws) => ws.length > 0).map((ws) => ({ ...evaluate(ws), label: ws === warm ? 'warm' : 'warm, touched pages only' }));

  // Cross-check: the same runs translating every window through the core's page-table walker
  // (AddressSpace as the engine's translator, as `vmkit prefetch simulate` does) give the same counts.
  const walkedOf = (policy, opts) =>
    cold.map((w) => {
      const mem = fileMemory(`${w.dir}/image.raw`);
      const space = m.AddressSpace.create({ memory: mem, mode: w.meta.mode, root: BigInt(w.meta.cr3) });
      const e = new m.PrefetchEngine(w.pages, { translator: space });
      const r = m.simulate(e, m.createPolicy(policy, opts), w.trace);
      const st = space.stats();
      e.close();
      space.dispose();
      mem.close();
      return { r, tableFrames: st.framesRead };
    });
  const walked = walkedOf('virtual', { back: 8, ahead: 8 });
  const tv = total(walked.map((x) => x.r));
  for (const [k, t] of [['virtual/8', tv], ['adaptive/8', total(walkedOf('adaptive', { ahead: 8 }).map((x) => x.r))]]) {
    const o = per.get(k);
    if (t.faults !== o.faults || t.wasted !== o.wasted || t.reads !== o.reads) throw new Error(`walk and table paths disagree: ${JSON.stringify(t)} vs ${k}`);
  }

  const line = (none) => (r) =>
    `| ${r.policy} | ${r.window ? `±${r.window}` : '–'} | ${r.faults} | ${pct(none.faults - r.faults, none.faults)} | ${r.prefetched} | ${r.prefetchHits} | ${r.wasted} | ${pct(r.wasted, r.loaded)} | ${r.reads} | ${r.faults * r.wasted} |`;
  const head = '| policy | window | faults | fault cut vs none | prefetched | used | wasted | wasted / loaded | reads | faults × wasted |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|';
  const table = [head, ...rows.map(line(none))].join('\n');
  const cell = (ev, k, i) => {
    const r = ev.per.get(k).perTrace[i];
    return `${r.faults} f / ${r.wasted} w`;
  };
  const traceRow = (ev, w, i) =>
    `| ${w.name} | ${w.meta.accesses} | ${w.meta.firstTouches} | ${w.meta.mappedPages} (${w.meta.mappedUntouched}) | ${cell(ev, 'none/0', i)} | ${cell(ev, 'physical/8', i)} | ${cell(ev, 'virtual/8', i)} | ${cell(ev, 'adaptive/8', i)} | ${cell(ev, 'virtual/128', i)} | ${cell(ev, 'replay/0', i)} | ${cell(ev, 'replay+virtual/8', i)} |`;
  const perTrace = [
    '| trace | accesses (lackey) | first touches | mapped (never touched) | none | physical ±8 | virtual ±8 | adaptive ±8 | virtual ±128 | replay | replay+virtual ±8 |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...cold.map((w, i) => traceRow(C, w, i)),
    ...W.flatMap((ev) => ev.ws.map((w, i) => traceRow(ev, w, i))),
  ].join('\n');
  const traceList = [...cold, ...warm, ...warmTouched]
    .map((w) => {
      const x = w.meta;
      const warmPart = x.model === 'cold' ? '' : ` Snapshot after a warm-up call (${x.warmupAccesses} accesses, ${x.warmupPages} pages); ${x.snapshotPresent} pages present then, ${x.freshAfterSnapshot} more allocated by the measured call; ${x.neverTouchedByProcess} mapped pages the process never touched in the whole run${x.model === 'warm-touched' ? ' (left out of this guest)' : ''}.`;
      return `- **${w.name}** (${x.model}): ${x.what}: \`${x.command}\`; replay records ${x.model === 'cold' ? `a previous run: \`${x.previous}\`` : 'the first request after the snapshot'}. ${x.firstTouches} pages first-touched in the measured part, ${x.mappedPages} mapped, ${x.mappedUntouched} of them never touched by it; frames: ${x.frames}, fold gap cap ${x.foldGapCap}.${warmPart}`;
    })
    .join('\n');
  const warmTable = W.length
    ? [
        '| guest | policy | window | faults | fault cut vs none | prefetched | used | wasted | wasted / loaded | faults × wasted |',
        '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|',
        ...W.flatMap((ev, i) =>
          ev.rows
            .filter((r) => r.policy !== 'physical' || r.window === 8)
            .filter((r) => r.policy !== 'replay+virtual' || r.window === 8)
            .map((r) => `| ${ev.label} (${ev.ws.map((w) => w.name.replace(/-warm.*/, '')).join(', ')}) | ${r.policy} | ${r.window ? `±${r.window}` : '–'} | ${r.faults} | ${pct(ev.none.faults - r.faults, ev.none.faults)} | ${r.prefetched} | ${r.prefetchHits} | ${r.wasted} | ${pct(r.wasted, r.loaded)} | ${r.faults * r.wasted} |`),
        ),
      ].join('\n')
    : '_No warm traces: build them with `node scripts/prefetch-traces.mjs` (python3 under lackey, several minutes)._';
  // The plot RESULTS.md shows: rewritten with --write only, so that a plain run leaves the tree as it was.
  if (ctx.write) writeFileSync(fileURLToPath(new URL('./prefetch.svg', import.meta.url)), svgPlot(rows, none.faults, cold.length));

  // Fault path speed: 2^18 virtual pages on a permutation of 2^20 frames;
  // faults 17 pages apart so every one finds its page absent (a ±8 window does not reach the next).
  const VP = 1 << 18, FR = 1 << 20, N = 10000;
  const frameOf = (v) => (Math.imul(v, 2654435761) >>> 12) & (FR - 1);
  const e = new m.PrefetchEngine(FR, { mapCapacity: VP });
  const pairs = [];
  for (let v = 0; v < VP; v++) pairs.push([BigInt(v), frameOf(v)]);
  e.map(pairs);
  const jsMap = new Map();
  for (let v = 0; v < VP; v++) jsMap.set(v, frameOf(v));
  const core = (await import('../dist/core.js')).core();
  const x = core.exports;
  const h = e.h;
  const out = core.alloc(64 * 8);
  const vp = core.alloc(N * 8);
  const ob = core.alloc(N * 17 * 8);
  new BigUint64Array(x.memory.buffer, vp, N).set(Array.from({ length: N }, (_, i) => BigInt(8 + i * 17)));
  const batch = () => {
    x.prefetchSetResident(h, 0, FR, 0);
    if (x.prefetchFaultVirtualBatch(h, vp, N, 8, 8, ob, N * 17) !== N * 17) throw new Error('batch: every fault should give 17 runs');
  };
  const speed = await measure(
    [
      { name: `core prefetchFaultVirtualBatch, ${N} faults (±8)`, items: N, fn: batch },
      {
        name: `core prefetchFaultVirtual, ${N} calls (±8)`,
        items: N,
        fn: () => {
          x.prefetchSetResident(h, 0, FR, 0);
          for (let i = 0; i < N; i++) x.prefetchFaultVirtual(h, BigInt(8 + i * 17), 8, 8, out, 64);
        },
      },
      {
        name: `PrefetchEngine.faultVirtual, ${N} calls (±8)`,
        items: N,
        fn: () => {
          e.setResident(0, FR, false);
          for (let i = 0; i < N; i++) e.faultVirtual(BigInt(8 + i * 17), 8, 8);
        },
      },
      {
        name: `plain JS walk + coalesce, ${N} faults (±8)`,
        items: N,
        fn: () => {
          const resident = new Uint8Array(FR);
          for (let i = 0; i < N; i++) jsFaultPath(jsMap, resident, 8 + i * 17, 8, 8);
        },
      },
    ],
    { baseline: `plain JS walk + coalesce, ${N} faults (±8)`, quick: ctx.quick },
  );
  // On a loaded machine wall-clock time counts time spent waiting for a core;
  // the process's CPU time does not: faults per CPU-second of this process.
  const c0 = process.cpuUsage();
  const REPS = ctx.quick ? 10 : 50;
  for (let i = 0; i < REPS; i++) batch();
  const cpu = process.cpuUsage(c0);
  const cpuRate = (REPS * N) / ((cpu.user + cpu.system) / 1e6);
  core.free(vp);
  core.free(ob);
  core.free(out);
  e.close();
  const coreRate = N / (speed.results[0].medianNs / 1e9);

  const v8 = per.get('virtual/8'), p8 = per.get('physical/8');
  const cut = 1 - v8.faults / none.faults;
  const waste = v8.wasted / v8.loaded;
  const prod = (r) => r.faults * r.wasted;
  /** Adaptive (initial ±8) against the fixed virtual windows of `ev`: faults × waste, and faults at no more waste. */
  const versus = (ev) => {
    const ad = ev.per.get('adaptive/8');
    const fixed = WINDOWS.map((wd) => ev.per.get(`virtual/${wd}`));
    const wide = WIDE.map((wd) => ev.per.get(`virtual/${wd}`));
    const best = (xs) => xs.reduce((a, b) => (prod(a) <= prod(b) ? a : b));
    // Pareto view: the fixed window with the fewest faults among those wasting no more than adaptive.
    const within = [...fixed, ...wide].filter((r) => r.wasted <= ad.wasted);
    const peer = within.length ? within.reduce((a, b) => (a.faults <= b.faults ? a : b)) : undefined;
    return { ad, bestFixed: best(fixed), bestWide: best(wide), peer };
  };
  const vc = versus(C);
  const vw = W.map(versus);
  const cuts = v8.perTrace.map((r, i) => 1 - r.faults / none.perTrace[i].faults);
  const perCut = `${(100 * Math.min(...cuts)).toFixed(1)}%–${(100 * Math.max(...cuts)).toFixed(1)}%`;
  const warmCut = W.map((ev) => {
    const r = ev.per.get('virtual/8');
    return { label: ev.label, cut: `${(100 * (1 - r.faults / ev.none.faults)).toFixed(1)}%`, waste: pct(r.wasted, r.loaded) };
  });

  const la1 = loadavg()[0];
  ctx.log(`virtual ±8: ${(cut * 100).toFixed(1)}% fewer faults, ${(waste * 100).toFixed(1)}% waste; adaptive ${prod(vc.ad)} vs best fixed ${prod(vc.bestFixed)}; core ${(coreRate / 1e6).toFixed(2)} M faults/s (${(cpuRate / 1e6).toFixed(2)} per CPU-s)`);
  const adLine = (name, v) =>
    `| adaptive (initial ±8) beats every fixed window ±1..±128 on faults × waste: ${name} | adaptive ${v.ad.faults} f × ${v.ad.wasted} w = ${prod(v.ad)}; best fixed virtual ±${v.bestFixed.window} ${v.bestFixed.faults} × ${v.bestFixed.wasted} = ${prod(v.bestFixed)} | ${prod(v.ad) < prod(v.bestFixed) ? 'yes' : 'no'} |`;
  const wideLine = (name, v) =>
    `| … and ±256, ±512: ${name} | best virtual ±${v.bestWide.window} ${v.bestWide.faults} × ${v.bestWide.wasted} = ${prod(v.bestWide)} | ${prod(v.ad) < prod(v.bestWide) ? 'yes' : 'no'} |`;
  const paretoLine = (name, v) =>
    `| (not a goal) adaptive ±8 has fewer faults than every fixed window wasting no more: ${name} | ${v.peer ? `adaptive ${v.ad.faults} f / ${v.ad.wasted} w; fixed ±${v.peer.window} ${v.peer.faults} f / ${v.peer.wasted} w` : 'no fixed window wastes as little'} | ${!v.peer || v.ad.faults < v.peer.faults ? 'yes' : 'no'} |`;
  return {
    summary: SUMMARY,
    title: 'prefetch: fault-time prefetch by guest-virtual neighbourhood',
    sections: [
      { heading: `Cold start: every policy and window, summed over ${cold.length} real traces`, markdown: table + '\n\n![faults and wasted pages against the window](prefetch.svg)' },
      { heading: 'Warm snapshot (REAP setting): a call measured after a snapshot taken after a warm-up call', markdown: warmTable },
      { heading: 'Per trace (faults f / wasted w)', markdown: perTrace },
      { heading: 'What each trace and guest models', markdown: traceList },
      { heading: 'Fault path: neighbourhood walk ±8 + coalescing (ratios vs plain JS)', markdown: speed.table + `\n\nBatch in the core per CPU-second of this process (${REPS} × ${N} faults): **${(cpuRate / 1e6).toFixed(2)} M faults/s**.` },
      {
        heading: 'Goals',
        markdown: [
          `| goal | measured (cold traces summed; warm guests apart) | met |`,
          `|---|---|---|`,
          `| virtual ±8 cuts faults ≥ 85% vs none | ${(cut * 100).toFixed(1)}% (${none.faults} → ${v8.faults}; per cold trace ${perCut}: the sum is weighted by the long traces)${warmCut.map((x) => `; ${x.label}: ${x.cut}`).join('')} | ${cut >= 0.85 ? 'yes' : 'no'} |`,
          `| virtual ±8 waste ≤ 15% of pages loaded | ${(waste * 100).toFixed(1)}% (${v8.wasted} of ${v8.loaded})${warmCut.map((x) => `; ${x.label}: ${x.waste}`).join('')} | ${waste <= 0.15 ? 'yes' : 'no'} |`,
          `| virtual ±8 beats physical ±8 on faults and waste | faults ${v8.faults} vs ${p8.faults}, wasted ${v8.wasted} vs ${p8.wasted} | ${v8.faults < p8.faults && v8.wasted < p8.wasted ? 'yes' : 'no'} |`,
          adLine('cold', vc),
          ...vw.map((v, i) => adLine(W[i].label, v)),
          wideLine('cold', vc),
          ...vw.map((v, i) => wideLine(W[i].label, v)),
          paretoLine('cold', vc),
          ...vw.map((v, i) => paretoLine(W[i].label, v)),
          `| ≥ 1 M faults/s in the core | ${(coreRate / 1e6).toFixed(2)} M/s wall-clock median, ${(cpuRate / 1e6).toFixed(2)} M/s per CPU-second | ${coreRate >= 1e6 ? 'yes' : cpuRate >= 1e6 ? 'per CPU-second only' : 'no'} |`,
        ].join('\n'),
      },
    ],
    notes: [
      `Load average (1 min) ${la0.toFixed(1)} at the start and ${la1.toFixed(1)} at the end (2 cores shared with other work).`,
      ...(missing.length ? [`Traces not built in this run (left out of every table): ${missing.join(', ')}${noSlow ? ' (slow ones not built: --quick or VMKIT_PREFETCH_NO_SLOW=1)' : ''}.`] : []),
      `Cold guests map every present page (at exit, from pagemap) of each mapping a program touched, touched or not, so a window can load pages the run never uses (counted as waste): ${cold.reduce((a, w) => a + w.meta.mappedUntouched, 0)} of ${cold.reduce((a, w) => a + w.meta.mappedPages, 0)} mapped pages here, mostly file pages the host kernel's own fault-around mapped. virtual ±8 wastes ${v8.wasted} of them, ±128 ${per.get('virtual/128').wasted}, ±512 ${per.get('virtual/512').wasted}; faults fall toward one per cluster of touched virtual pages (±512: ${per.get('virtual/512').faults}). Physical neighbours are worse at every window on both counts.`,
      ...W.map((ev) => {
        const mapped = ev.ws.reduce((a, w) => a + w.meta.mappedPages, 0);
        const touched = ev.ws.reduce((a, w) => a + w.meta.firstTouches, 0);
        const r = ev.per.get('replay/0');
        return `${ev.label[0].toUpperCase()}${ev.label.slice(1)} guests: the measured request first-touches ${touched} pages of ${mapped} mapped (${pct(touched, mapped)}), so any window wide enough wastes most of what it loads; replay (the previous request's pages) leaves ${r.faults} faults of ${ev.none.faults} (what the measured request touches that the recorded one did not) with ${r.wasted} wasted.`;
      }),
      `faults × waste is 0 for none (and for replay) and, once the waste has saturated at the untouched mapped pages, keeps falling as the window widens: a window that loads every mapped page at the first fault would score best. The goal row is reported as the issue states it; the Pareto row (fewest faults among fixed windows that waste no more) says whether adaptive is a better trade-off than a fixed window, not just a wider one.`,
      coreRate >= 1e6
        ? `The fault path ran at ${(coreRate / 1e6).toFixed(2)} M faults/s wall-clock in this run; at loads above ~15 on these 2 cores it drops below 1 M/s while the rate per CPU-second stays ~1.5 M/s.`
        : `The fault-path goal is met per CPU-second of this process but not in wall-clock time on this loaded machine (load ${la0.toFixed(0)}–${la1.toFixed(0)} on 2 cores: the process waits for a core most of the time).`,
      `Cross-check: virtual ±8 and adaptive ±8 translating every window through the core's page-table walker (AddressSpace as the translator, as the CLI does) give the same faults, waste and reads as the one-walk table (virtual ±8: ${tv.faults} faults, ${tv.wasted} wasted); the walker read ${walked.map((x) => x.tableFrames).join(' / ')} page-table pages per trace.`,
      'Replay records the first touches of a previous run of the same program on another input (REAP records one invocation and prefetches it on the next); in the warm guests, the first call after the snapshot, and the second is measured.',
      'adaptive rows: the window given is the initial read-around (that many pages ahead, a quarter behind). Sized as Linux sizes readahead: a fault on the page next to a stream\'s window (either end) ramps it ×4 while under 64 pages, then ×2, up to 1024, or halves it when under a tenth of the last window was used; first use of a marked page issues the next window without a fault (asynchronous readahead); the read-around size grows the same way when a quarter of what the last window brought was used before the next fault and halves under a tenth; no window crosses a run of 32 unmapped virtual pages (the edge of a mapping in the page tables); 8 streams.',
      'Fault path: 10000 faults per op, each on an absent page, ±8 neighbours through the engine table (2^18 virtual pages on a permutation of 2^20 frames, so every fault gives 17 one-page runs: the worst case for coalescing); the resident set is cleared at the start of each op (included).',
    ],
  };
}
