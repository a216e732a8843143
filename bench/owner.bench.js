// Disk ownership handoff (docs/ownership.md), for the file store (sidecar next to the disk) and
// for etcd (a real etcd started here, data dir on the same file system as the disk):
//  1. raw store round trips in this process: read, and a compare-and-swap that wins (tinybench);
//  2. handoff latency between two processes: both hold the disk in turn, serving release
//     requests over HTTP; the parent tells one to open, it asks the holder to release (drain,
//     flush, close, record `free`) and takes the next epoch by CAS. Timed around openOwned in
//     the opener, processes already running; p50 and p99;
//  3. handoffs per second under contention: 4 processes each loop open → one 4 KiB write and
//     flush → wait to be asked to release; epochs taken per second (from the store's record).
// The peers are this file run as a child (`node owner.bench.js --peer ...`).
import { fork, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { measure, fmtNs } from './_lib.js';

/** The headline rows of RESULTS.md's opening table (bench/_summary.js): rows of this suite's own tables. */
export const SUMMARY = [
  { what: "Owner record read from etcd (validated) vs a bare HTTP range", section: "Store round trips (one process, no contention)", vmkit: "etcd: read", peer: "etcd: range via node:http (reference, no validation)" },
];

const TITLE = 'owner: disk ownership handoff, file store vs etcd';
const dist = new URL('../dist/', import.meta.url);
const self = fileURLToPath(import.meta.url);

async function loadOwner() {
  const owner = await import(new URL('disk/owner/index.js', dist).href);
  const { etcdStore } = await import(new URL('disk/owner/etcd-store.js', dist).href);
  return { ...owner, etcdStore };
}

function makeStore(mod, spec) {
  return spec.kind === 'etcd' ? mod.etcdStore({ endpoints: spec.endpoint, prefix: spec.prefix }) : new mod.FileOwnerStore();
}

// ---- peer mode: one process holding / taking the disk on command ----------------------------
if (process.argv[2] === '--peer') {
  const [, , , diskPath, id, specJson] = process.argv;
  const spec = JSON.parse(specJson);
  const mod = await loadOwner();
  const store = makeStore(mod, spec);
  const block = new Uint8Array(4096).fill(0xa5);
  let held; // the OwnedDisk while holding
  let stopAt = Infinity;
  let stop;
  const stopped = new Promise((r) => (stop = r));
  const open = () => mod.openOwned(diskPath, { as: id, store, name: spec.name, leaseMs: 5000, serve: '127.0.0.1:0', image: { format: 'raw' }, waitMs: 20_000 });
  process.on('message', async (m) => {
    try {
      if (m.cmd === 'open') {
        const t = performance.now();
        held = await open();
        const ms = performance.now() - t;
        process.send({ ok: true, ms, epoch: held.epoch });
      } else if (m.cmd === 'contend') {
        // Take the disk, write and flush once, then wait until someone asks for it; repeat.
        stopAt = Infinity;
        let opens = 0;
        let fails = 0;
        const times = [];
        const errs = {};
        while (Date.now() < stopAt) {
          const t = performance.now();
          try {
            held = await open();
            opens++;
            times.push(performance.now() - t);
          } catch (e) {
            fails++;
            errs[e?.code] = (errs[e?.code] ?? 0) + 1;
            continue;
          }
          try {
            await held.device.write(0, block);
            await held.device.flush();
          } catch {
            /* fenced or released meanwhile: fine, it was handed over */
          }
          await Promise.race([held.done, stopped]);
        }
        if (held) await held.release().catch(() => {});
        process.send({ ok: true, opens, fails, times, errs });
      } else if (m.cmd === 'stop') {
        stopAt = 0;
        stop();
      } else if (m.cmd === 'exit') {
        if (held) await held.release().catch(() => {});
        await store.close();
        process.exit(0);
      }
    } catch (e) {
      process.send({ ok: false, error: `${e?.code ?? ''} ${e?.message ?? e}` });
    }
  });
  process.send({ ready: true });
}

// ---- parent ----------------------------------------------------------------------------------
function has(cmd) {
  return new Promise((res) => spawn('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).on('exit', (c) => res(c === 0)));
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startEtcd(dir) {
  const [cp, pp] = [await freePort(), await freePort()];
  const endpoint = `http://127.0.0.1:${cp}`;
  const peer = `http://127.0.0.1:${pp}`;
  const proc = spawn('etcd', ['--name', 'b', '--data-dir', join(dir, 'etcd'), '--listen-client-urls', endpoint, '--advertise-client-urls', endpoint, '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer, '--initial-cluster', `b=${peer}`, '--log-level', 'error', '--logger', 'zap'], { stdio: 'ignore' });
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      const r = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(500) });
      if ((await r.json()).health === 'true') break;
    } catch {
      /* starting */
    }
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error('etcd did not become healthy');
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { endpoint, stop: () => new Promise((r) => (proc.exitCode !== null ? r() : (proc.once('exit', r), proc.kill('SIGKILL')))) };
}

function peer(diskPath, id, spec) {
  const c = fork(self, ['--peer', diskPath, id, JSON.stringify(spec)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const waiters = [];
  c.on('message', (m) => waiters.shift()?.(m));
  const next = () => new Promise((r) => waiters.push(r));
  const ready = next();
  return {
    ready,
    async ask(msg) {
      const p = next();
      c.send(msg);
      const m = await p;
      if (!m.ok) throw new Error(`peer ${id}: ${m.error}`);
      return m;
    },
    send(msg) {
      c.send(msg);
    },
    async exit() {
      c.send({ cmd: 'exit' });
      await new Promise((r) => c.once('exit', r));
    },
  };
}

const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];

// Pairs of peers for every store at once, handoffs timed in alternating batches: the machine's
// load drifts, and interleaving keeps it from landing on one store's figures only.
async function handoffLatency(dir, specs, n) {
  const pairs = specs.map((spec) => {
    const diskPath = join(dir, `${spec.kind}-pair.raw`);
    writeFileSync(diskPath, new Uint8Array(1 << 20));
    return { spec, ps: [peer(diskPath, 'a', spec), peer(diskPath, 'b', spec)], turn: 0, ms: [] };
  });
  try {
    for (const pr of pairs) {
      await Promise.all(pr.ps.map((p) => p.ready));
      await pr.ps[0].ask({ cmd: 'open' }); // the first open takes a free disk: not a handoff
      for (let i = 0; i < 5; i++) await pr.ps[++pr.turn % 2].ask({ cmd: 'open' }); // warm up connections and JITs
    }
    const batch = 10;
    for (let done = 0; done < n; done += batch) {
      for (const pr of pairs) {
        for (let i = 0; i < Math.min(batch, n - done); i++) pr.ms.push((await pr.ps[++pr.turn % 2].ask({ cmd: 'open' })).ms);
      }
    }
    return pairs.map((pr) => {
      const ms = pr.ms.sort((x, y) => x - y);
      if (process.env.OWNER_BENCH_DEBUG) console.log(pr.spec.kind, 'slowest', ms.slice(-12).map((x) => x.toFixed(0)).join(' '));
      return { kind: pr.spec.kind, p50: pct(ms, 0.5), p99: pct(ms, 0.99), n: ms.length };
    });
  } finally {
    await Promise.all(pairs.flatMap((pr) => pr.ps.map((p) => p.exit())));
  }
}

async function contention(dir, spec, nProc, ms, mod) {
  const diskPath = join(dir, `${spec.kind}-contend-${spec.round ?? 0}.raw`);
  writeFileSync(diskPath, new Uint8Array(1 << 20));
  const ps = Array.from({ length: nProc }, (_, i) => peer(diskPath, `c${i}`, spec));
  const store = makeStore(mod, spec);
  try {
    await Promise.all(ps.map((p) => p.ready));
    // Epochs counted between two reads of the record once every process has taken the disk a few
    // times: the first opens of cold processes (connections, JIT, on a loaded box) take seconds.
    const all = Promise.all(ps.map((p) => p.ask({ cmd: 'contend' })));
    const warmUntil = Date.now() + 10_000;
    while (((await store.read(spec.name)).record?.epoch ?? 0) < 6 * nProc && Date.now() < warmUntil) await new Promise((r) => setTimeout(r, 20));
    const before = (await store.read(spec.name)).record?.epoch ?? 0;
    const t = performance.now();
    await new Promise((r) => setTimeout(r, ms));
    const after = (await store.read(spec.name)).record?.epoch ?? 0;
    const secs = (performance.now() - t) / 1000;
    for (const p of ps) p.send({ cmd: 'stop' });
    const res = await all;
    const times = res.flatMap((r) => r.times).sort((a, b) => a - b);
    if (process.env.OWNER_BENCH_DEBUG) console.log(spec.kind, res.map((r) => r.errs), times.map((x) => x.toFixed(0)).join(' '));
    return { perSec: (after - before) / secs, epochs: after - before, secs, fails: res.reduce((s, r) => s + r.fails, 0), openP50: pct(times, 0.5) };
  } finally {
    await Promise.all(ps.map((p) => p.exit()));
    await store.close();
  }
}

export async function run(ctx) {
  const mod = await loadOwner();
  const load0 = loadavg()[0];
  const dir = mkdtempSync(join(tmpdir(), 'vmkit-bench-owner-'));
  const specs = [{ kind: 'file', name: undefined }];
  let etcd;
  const notes = [];
  const cleanups = [];
  if (await has('etcd')) {
    etcd = await startEtcd(dir);
    specs.push({ kind: 'etcd', endpoint: etcd.endpoint, prefix: '/bench/' });
  } else notes.push('etcd rows skipped: etcd-server is not installed');
  try {
    // 1. Raw store round trips.
    ctx.log('store round trips');
    const tasks = [];
    for (const spec of specs) {
      const store = makeStore(mod, spec);
      const diskPath = join(dir, `${spec.kind}-raw.raw`);
      writeFileSync(diskPath, new Uint8Array(4096));
      const name = spec.kind === 'etcd' ? 'raw.raw' : diskPath;
      let rev = null;
      let epoch = 0;
      const rec = () => ({ version: 1, disk: name, epoch: ++epoch, state: 'owned', owner: { id: 'bench', host: 'h', pid: process.pid }, leaseExpiresAt: Date.now() + 10_000, updatedAt: Date.now() });
      rev = await store.compareAndSwap(name, null, rec());
      tasks.push({ name: `${spec.kind}: read`, fn: () => store.read(name) });
      tasks.push({
        name: `${spec.kind}: compare-and-swap (wins)`,
        fn: async () => {
          rev = await store.compareAndSwap(name, rev, rec());
          if (rev === null) throw new Error('lost a CAS nobody else contends for');
        },
      });
    }
    const etcdSpec = specs.find((x) => x.kind === 'etcd');
    if (etcdSpec) {
      // Client peers on the same etcd: the gateway through node:http keep-alive (what fetch costs on
      // top), and gRPC through the etcd3 package when it can be imported (not a dependency of vmkit:
      // `npm i etcd3` somewhere and set OWNER_BENCH_ETCD3 to its package dir to include it).
      const http = await import('node:http');
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      const u = new URL(etcdSpec.endpoint);
      const rangeBody = JSON.stringify({ key: Buffer.from('/bench/raw.raw').toString('base64') });
      const post = () =>
        new Promise((resolve, reject) => {
          const rq = http.request({ host: u.hostname, port: u.port, path: '/v3/kv/range', method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(rangeBody) } }, (res) => {
            let t = '';
            res.on('data', (c) => (t += c));
            res.on('end', () => resolve(JSON.parse(t)));
          });
          rq.on('error', reject);
          rq.end(rangeBody);
        });
      tasks.push({ name: 'etcd: range via node:http (reference, no validation)', fn: post });
      let etcd3;
      try {
        etcd3 = await import(process.env.OWNER_BENCH_ETCD3 ? pathToFileURL(join(process.env.OWNER_BENCH_ETCD3, 'lib/index.js')).href : 'etcd3');
      } catch {
        notes.push('etcd3 (gRPC client) rows skipped: not importable (set OWNER_BENCH_ETCD3 to an installed etcd3 package dir)');
      }
      if (etcd3) {
        const client = new etcd3.Etcd3({ hosts: etcdSpec.endpoint });
        cleanups.push(() => client.close());
        const key = Buffer.from('/bench/etcd3.raw');
        await client.kv.put({ key, value: Buffer.from('{}') });
        let rev3 = (await client.kv.range({ key })).kvs[0].mod_revision;
        tasks.push({ name: 'etcd3 (gRPC): range', fn: async () => JSON.parse((await client.kv.range({ key })).kvs[0].value.toString()) });
        tasks.push({
          name: 'etcd3 (gRPC): txn compare-and-swap (wins)',
          fn: async () => {
            const r = await client.kv.txn({ compare: [{ key, result: 'Equal', target: 'Mod', mod_revision: rev3 }], success: [{ request_put: { key, value: Buffer.from(JSON.stringify({ t: Date.now() })) } }], failure: [] });
            if (!r.succeeded) throw new Error('etcd3 lost a CAS nobody else contends for');
            rev3 = r.header.revision;
          },
        });
      }
    }
    const raw = await measure(tasks, { quick: ctx.quick, time: 1000 });

    // 2. Two-process handoff latency (interleaved); 3. contention (alternating rounds, summed).
    const n = ctx.quick ? 30 : 200;
    ctx.log(`${n} handoffs between two processes per store`);
    const rows = await handoffLatency(dir, specs.map((spec) => (spec.kind === 'etcd' ? { ...spec, name: 'pair.raw' } : spec)), n);
    const rounds = ctx.quick ? 1 : 2;
    const acc = new Map(specs.map((spec) => [spec.kind, { kind: spec.kind, epochs: 0, secs: 0, fails: 0, p50s: [] }]));
    for (let round = 0; round < rounds; round++) {
      for (const spec of specs) {
        ctx.log(`${spec.kind}: contention, 4 processes, round ${round + 1}/${rounds}`);
        const c4 = { ...spec, name: spec.kind === 'etcd' ? `contend-${round}.raw` : join(dir, `file-contend-${round}.raw`), round };
        const c = await contention(dir, c4, 4, ctx.quick ? 1500 : 3000, mod);
        const a = acc.get(spec.kind);
        a.epochs += c.epochs;
        a.secs += c.secs;
        a.fails += c.fails;
        a.p50s.push(c.openP50);
      }
    }
    const cRows = [...acc.values()].map((a) => ({ kind: a.kind, perSec: a.epochs / a.secs, epochs: a.epochs, fails: a.fails, openP50: a.p50s.sort((x, y) => x - y)[a.p50s.length >> 1] }));
    const file = rows.find((r) => r.kind === 'file');
    const handoffTable = [
      '| store | p50 | p99 | handoffs timed | p50 vs file |',
      '|---|---:|---:|---:|---:|',
      ...rows.map((r) => `| ${r.kind} | ${fmtNs(r.p50 * 1e6)} | ${fmtNs(r.p99 * 1e6)} | ${r.n} | ${(r.p50 / file.p50).toFixed(2)}× |`),
    ].join('\n');
    const fileC = cRows.find((r) => r.kind === 'file');
    const contTable = [
      '| store | handoffs/s | epochs counted | open p50 (whole run, incl. waits) | failed opens (retried) | vs file |',
      '|---|---:|---:|---:|---:|---:|',
      ...cRows.map((r) => `| ${r.kind} | ${r.perSec.toFixed(1)} | ${r.epochs} | ${fmtNs(r.openP50 * 1e6)} | ${r.fails} | ${(r.perSec / fileC.perSec).toFixed(2)}× |`),
    ].join('\n');
    return {
      summary: SUMMARY,
      title: TITLE,
      sections: [
        { heading: 'Store round trips (one process, no contention)', markdown: raw.table },
        { heading: 'Handoff latency between two processes (openOwned in the opener; the holder drains, flushes, closes, writes free)', markdown: handoffTable },
        { heading: 'Handoffs per second, 4 contending processes (each: open, write 4 KiB + flush, wait to be asked)', markdown: contTable },
      ],
      notes: [
        'A handoff is: read the record, HTTP release request, the holder marks `releasing` (read + CAS), flushes (fdatasync) and closes the image, marks `free` (read + CAS) and answers; the opener reads again and takes the next epoch by CAS. So ~6 store round trips, 2 fsyncs of the record store (file) or 2 raft commits (etcd), 1 fdatasync of the disk.',
        'etcd: a single local member (etcd 3.4, Debian), its data dir on the same ext4 as the disk; the client is vmkit\'s fetch-based store over the JSON gateway.',
        `Load average (1 min) ${load0.toFixed(1)} at the start and ${loadavg()[0].toFixed(1)} at the end of this suite on 2 cores shared with other work: absolute figures are noisy, the file/etcd ratios less so.`,
        ...notes,
      ],
    };
  } finally {
    for (const c of cleanups) c();
    await etcd?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
