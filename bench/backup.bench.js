// Live backup benchmarks (docs/backup.md):
//  1. consolidating a delta into its base: vmkit's job against `qemu-img commit` on copies of the
//     same chain (no guest writes);
//  2. consolidation under sustained guest writes: vmkit's write-blocking mirror job against QEMU's
//     own write-blocking mirror, run in qemu-storage-daemon (QMP `blockdev-mirror`, `copy-mode:
//     write-blocking`, `sync: top`) with a qemu-io writer on its NBD export. Time to converge
//     (ready), total time, bytes the job copied, and the guest write rate each side sustained.
// Chains are built with qemu-img/qemu-io in a temporary folder; the vmkit side opens them through
// the vmkit/disk format driver when the build has one (otherwise it runs on the in-memory store,
// and the table says so).
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, copyFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { loadCore, median, qemuChain } from './_lib.js';

/** The headline rows of RESULTS.md's opening table (bench/_summary.js): rows of this suite's own tables. */
export const SUMMARY = [
  { what: "Consolidate a 128 MiB delta into its base", section: "Consolidate a delta into its base (512 MiB disk, 128 MiB of delta writes, delta file 128 MiB)", vmkit: "vmkit consolidate --into base, keepDelta: empties it, as qemu-img (sync I/O)", peer: "qemu-img commit (empties the delta, keeps it)" },
  { what: "Mirror onto a new target under guest writes", section: "Consolidation under sustained guest writes", vmkit: "vmkit consolidate onto a new target", peer: "QEMU blockdev-mirror write-blocking (qemu-storage-daemon)", column: "total (median)" },
];

const MiB = 2 ** 20;

function has(cmd) {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function q(cmd, args) {
  return execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
}

/** base (size, `baseData` written) ← delta (`deltaData` in random 64 KiB writes). */
function buildChain(dir, size, baseData, deltaData, seed) {
  const { base, top } = qemuChain(dir, { size, baseData, deltaData, seed, top: 'delta.qcow2' });
  return { base, delta: top };
}

function copyChain(from, to) {
  copyFileSync(join(from, 'base.qcow2'), join(to, 'base.qcow2'));
  copyFileSync(join(from, 'delta.qcow2'), join(to, 'delta.qcow2'));
  // Write the copies back now: otherwise the first job to commit the filesystem journal (a
  // flush, an fsync of a small file) pays for writing the harness's 400 MiB of copies, and
  // which side pays first decides the figures more than the job does.
  execFileSync('sync');
}

/** vmkit's ChainOps over files when the build has a format driver; undefined otherwise. */
async function fileOps() {
  const node = await import('../dist/disk/backup/node.js');
  // Only when the qcow2 driver can open a chain qemu-img made (it lands separately from the job).
  try {
    const reg = await import('../dist/disk/image.js');
    await reg.loadFormat('qcow2');
  } catch {
    return undefined;
  }
  return new node.NodeChainOps(); // qcow2, VMDK and raw through vmkit/disk
}

// ---- QMP over a UNIX socket -------------------------------------------------------------

async function qmpConnect(path) {
  for (let i = 0; i < 200 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 10));
  const sock = net.connect(path);
  await new Promise((r, j) => (sock.once('connect', r), sock.once('error', j)));
  let buf = '';
  const waiters = [];
  const events = [];
  sock.on('data', (d) => {
    buf += d;
    for (let i; (i = buf.indexOf('\n')) >= 0; ) {
      const m = JSON.parse(buf.slice(0, i));
      buf = buf.slice(i + 1);
      if (m.event) events.push({ ...m, at: performance.now() });
      else if (m.return !== undefined || m.error) waiters.shift()?.(m);
    }
  });
  const cmd = (execute, args) =>
    new Promise((res, rej) => {
      waiters.push((m) => (m.error ? rej(new Error(`${execute}: ${m.error.desc}`)) : res(m.return)));
      sock.write(JSON.stringify(args ? { execute, arguments: args } : { execute }) + '\n');
    });
  await new Promise((r) => setTimeout(r, 20)); // greeting
  await cmd('qmp_capabilities');
  const waitEvent = async (name, timeoutMs = 120_000) => {
    const t0 = performance.now();
    for (;;) {
      const e = events.find((x) => x.event === name);
      if (e) return e;
      if (performance.now() - t0 > timeoutMs) throw new Error(`no ${name} within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  return { cmd, waitEvent, close: () => sock.destroy() };
}

/** Guest write rate both sides' writers are paced to (4 KiB writes per second). */
const WRITE_RATE = 1000;

/**
 * A writer issuing random 4 KiB writes through qemu-io at WRITE_RATE a second (at most `depth`
 * outstanding), counting the writes qemu-io reports done.
 */
function qemuIoWriter(target, size, fmtArgs) {
  const p = spawn('qemu-io', [...fmtArgs, target], { stdio: ['pipe', 'pipe', 'inherit'] });
  let done = 0;
  let sent = 0;
  let stopped = false;
  let s = 12345;
  const depth = 32;
  const t0 = performance.now();
  const pump = () => {
    let chunk = '';
    const due = Math.floor(((performance.now() - t0) / 1000) * WRITE_RATE);
    while (!stopped && sent < due && sent - done < depth) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      chunk += `write -P ${(s % 250) + 1} ${(s % (size / 4096)) * 4096} 4k\n`;
      sent++;
    }
    if (chunk) p.stdin.write(chunk);
  };
  p.stdout.on('data', (d) => {
    const m = d.toString().match(/^wrote /gm);
    if (m) done += m.length;
  });
  const timer = setInterval(pump, 2);
  return {
    count: () => done,
    async stop() {
      stopped = true;
      clearInterval(timer);
      p.stdin.end('quit\n');
      await new Promise((r) => p.once('exit', r));
      return done;
    },
  };
}

async function qemuMirror(dir, size) {
  const qmp = join(dir, 'qmp.sock');
  const nbd = join(dir, 'nbd.sock');
  q('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', join(dir, 'target.qcow2')]);
  const d = spawn(
    'qemu-storage-daemon',
    [
      '--chardev', `socket,path=${qmp},server=on,wait=off,id=qmp0`, '--monitor', 'chardev=qmp0',
      '--blockdev', `driver=file,filename=${join(dir, 'delta.qcow2')},node-name=delta-file`,
      '--blockdev', 'driver=qcow2,file=delta-file,node-name=src',
      '--nbd-server', `addr.type=unix,addr.path=${nbd}`,
      '--export', 'type=nbd,id=exp,node-name=src,name=src,writable=on',
    ],
    { stdio: 'ignore' },
  );
  try {
    const m = await qmpConnect(qmp);
    await m.cmd('blockdev-add', { driver: 'qcow2', 'node-name': 'tgt', file: { driver: 'file', filename: join(dir, 'target.qcow2') } });
    const w = qemuIoWriter(`nbd+unix:///src?socket=${nbd}`, size, ['-f', 'raw']);
    await new Promise((r) => setTimeout(r, 200)); // the writer reaches full speed
    const w0 = w.count();
    const t0 = performance.now();
    await m.cmd('blockdev-mirror', { 'job-id': 'm', device: 'src', target: 'tgt', sync: 'top', 'copy-mode': 'write-blocking' });
    const ready = await m.waitEvent('BLOCK_JOB_READY');
    await m.cmd('block-job-complete', { device: 'm' });
    const fin = await m.waitEvent('BLOCK_JOB_COMPLETED');
    const writes = w.count() - w0;
    await w.stop();
    await m.cmd('quit').catch(() => {});
    m.close();
    return { readyMs: ready.at - t0, totalMs: fin.at - t0, copied: fin.data.offset, writes };
  } finally {
    d.kill('SIGTERM');
    await new Promise((r) => (d.exitCode !== null ? r() : d.once('exit', r)));
  }
}

async function vmkitMirror(dir, size, ops, mem) {
  const b = await import('../dist/disk/backup/index.js');
  let disk;
  if (ops) disk = await b.LiveDisk.open(join(dir, 'delta.qcow2'), ops);
  else disk = mem;
  let stopped = false;
  let writes = 0;
  let s = 12345;
  const buf = new Uint8Array(4096);
  // Paced like the qemu-io writer: WRITE_RATE writes a second, up to 32 outstanding.
  const t00 = performance.now();
  let sent = 0;
  const writers = Array.from({ length: 32 }, async () => {
    while (!stopped) {
      const due = Math.floor(((performance.now() - t00) / 1000) * WRITE_RATE);
      if (sent >= due) {
        await new Promise((r) => setTimeout(r, 2));
        continue;
      }
      sent++;
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      buf.fill((s % 250) + 1);
      await disk.write((s % (size / 4096)) * 4096, buf);
      writes++;
    }
  });
  await new Promise((r) => setTimeout(r, 200));
  const w0 = writes;
  const t0 = performance.now();
  let readyAt = 0;
  const job = await b.consolidate(disk, {
    into: ops ? join(dir, 'vtarget.qcow2') : 'vtarget.qcow2',
    onProgress: (p) => {
      if (p.inSync && !readyAt) readyAt = performance.now();
    },
  });
  const res = await job.done;
  const total = performance.now() - t0;
  const w = writes - w0;
  stopped = true;
  await Promise.all(writers);
  await disk.close();
  return { readyMs: readyAt - t0, totalMs: total, copied: res.copiedBytes + res.zeroedBytes + res.mirroredBytes, writes: w };
}

async function memChain(size, baseData, deltaData, seed) {
  const b = await import('../dist/disk/backup/index.js');
  const ops = new b.MemoryChainOps();
  await ops.create('base.qcow2', size, 'qcow2');
  const disk = await b.LiveDisk.open('base.qcow2', ops);
  const chunk = new Uint8Array(MiB).fill(0x11);
  for (let o = 0; o < baseData; o += MiB) await disk.write(o, chunk);
  await b.snapshot(disk, { delta: 'delta.qcow2' }).then((sn) => sn.image.close());
  let s = seed;
  const c = new Uint8Array(65536);
  for (let i = 0; i < deltaData / 65536; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    c.fill((i % 250) + 1);
    await disk.write((s % (size / 65536)) * 65536, c);
  }
  return disk;
}

export async function run(ctx) {
  await loadCore();
  const notes = [];
  if (!has('qemu-img') || !has('qemu-io')) return { title: 'Live backup', sections: [], notes: ['qemu-utils missing: nothing measured'] };
  const quick = ctx.quick;
  const size = (quick ? 128 : 512) * MiB;
  const baseData = size / 2;
  const deltaData = size / 4;
  const reps = quick ? 1 : Number(process.env.BENCH_REPS ?? 5);
  const ops = await fileOps();
  if (!ops) notes.push('this build has no vmkit qcow2 driver for files: the vmkit rows ran on the in-memory image store (MemoryChainOps: real qcow2 in memory), so they measure the job and format logic, not file I/O — compare with care.');
  const root = mkdtempSync(join(tmpdir(), 'vmkit-bench-backup-'));
  try {
    const master = join(root, 'master');
    execFileSync('mkdir', ['-p', master]);
    ctx.log(`building a ${size / MiB} MiB chain (${baseData / MiB} MiB base data, ${deltaData / MiB} MiB of 64 KiB delta writes)`);
    buildChain(master, size, baseData, deltaData, 7);
    ctx.log("chain built");
    const deltaFile = statSync(join(master, 'delta.qcow2')).size;

    // 1. commit into base, no guest writes. vmkit runs twice: with the default driver (FileHandle
    // I/O, what a library user with a running guest gets) and with syncFileFormatDriver (readSync/
    // writeSync, for offline jobs like qemu-img commit). CPU time is the process's user + system time
    // (qemu-img: its child's rusage), which the load of a shared machine disturbs less than wall time.
    const img = await import('../dist/disk/image.js');
    const node = await import('../dist/disk/backup/node.js');
    const syncOps = ops && img.syncFileFormatDriver ? new node.NodeChainOps(img.syncFileFormatDriver) : undefined;
    const cpuNow = () => {
      const r = process.resourceUsage();
      return (r.userCPUTime + r.systemCPUTime) / 1000;
    };
    const t = { q: [], v: [], s: [], k: [], Q: [], P: [], K: [] };
    const c = { q: [], v: [], s: [], k: [], Q: [], P: [], K: [] };
    const runVmkit = async (d, o, key, keepDelta) => {
      const b = await import('../dist/disk/backup/index.js');
      // Open and close are timed too: qemu-img commit's row is its whole process, which opens
      // and closes the chain (the in-memory chain, when there is no file driver, is built untimed).
      const mem = o ? undefined : await memChain(size, baseData, deltaData, 7);
      const c0 = cpuNow();
      const t0 = performance.now();
      const disk = o ? await b.LiveDisk.open(join(d, 'delta.qcow2'), o) : mem;
      const job = await b.consolidate(disk, { into: 'base', ...(keepDelta ? { keepDelta: true } : {}) });
      await job.done;
      await disk.close();
      t[key].push(performance.now() - t0);
      c[key].push(cpuNow() - c0);
    };
    // GNU time reports a child's CPU time (Node has no rusage for children).
    const timed = existsSync('/usr/bin/time');
    const runProcess = (key, cmd, argv, cwd) => {
      const t0 = performance.now();
      const res = timed ? spawnSync('/usr/bin/time', ['-f', 'cpu %U %S', cmd, ...argv], { encoding: 'utf8', cwd }) : spawnSync(cmd, argv, { encoding: 'utf8', cwd });
      t[key].push(performance.now() - t0);
      if (res.status !== 0) throw new Error(`${cmd} ${argv.join(' ')}: ${res.stderr}`);
      const m = /cpu ([\d.]+) ([\d.]+)/.exec(res.stderr ?? '');
      c[key].push(m ? (Number(m[1]) + Number(m[2])) * 1000 : NaN);
    };
    const vmkitBin = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
    const checkAgainst = (ref, d, files) => {
      for (const f of files) {
        const cmp = q('qemu-img', ['compare', '-q', join(ref, f), join(d, f)]);
        if (cmp.trim()) notes.push(`compare ${f}: ${cmp.trim()}`);
        const chk = spawnSync('qemu-img', ['check', '-q', join(d, f)]);
        if (chk.status !== 0) notes.push(`qemu-img check of vmkit's ${f} failed (${chk.status})`);
      }
    };
    // Every variant runs once per round, on its own copy of the same chain, so load drift on a
    // shared machine falls on all of them alike.
    for (let r = 0; r < reps; r++) {
      const d1 = join(root, `q${r}`);
      execFileSync('mkdir', ['-p', d1]);
      copyChain(master, d1);
      runProcess('q', 'qemu-img', ['commit', '-q', join(d1, 'delta.qcow2')]);
      const variants = [
        ['v', ops, false],
        ['s', syncOps, false],
        ['k', syncOps, true],
      ];
      for (const [key, o, keep] of variants) {
        if (key !== 'v' && !o) continue;
        const d2 = join(root, `${key}${r}`);
        execFileSync('mkdir', ['-p', d2]);
        copyChain(master, d2);
        ctx.log(`consolidating (${key === 'v' ? 'FileHandle' : 'sync'} I/O${keep ? ', keeping the delta' : ''})`);
        await runVmkit(d2, o, key, keep);
        if (o) checkAgainst(d1, d2, keep ? ['base.qcow2', 'delta.qcow2'] : ['base.qcow2']);
        rmSync(d2, { recursive: true, force: true });
      }
      if (ops) {
        // Whole processes, as a user runs them: qemu-img commit (empties the delta and keeps it),
        // vmkit disk consolidate --keep-delta (the same), and vmkit disk consolidate (removes it).
        for (const [key, cmd, argv] of [
          ['Q', 'qemu-img', ['commit', '-q', 'delta.qcow2']],
          ['K', process.execPath, [vmkitBin, 'disk', 'consolidate', 'delta.qcow2', '--keep-delta']],
          ['P', process.execPath, [vmkitBin, 'disk', 'consolidate', 'delta.qcow2']],
        ]) {
          const d2 = join(root, `${key}${r}`);
          execFileSync('mkdir', ['-p', d2]);
          copyChain(master, d2);
          runProcess(key, cmd, argv, d2);
          if (key !== 'Q') checkAgainst(d1, d2, key === 'K' ? ['base.qcow2', 'delta.qcow2'] : ['base.qcow2']);
          if (key === 'P' && existsSync(join(d2, 'delta.qcow2'))) notes.push('vmkit disk consolidate left the delta behind');
          rmSync(d2, { recursive: true, force: true });
        }
      }
      rmSync(d1, { recursive: true, force: true });
    }
    const table = (ref, rows) => {
      const mq = median(t[ref]);
      const cq = median(c[ref]);
      const line = (name, key) => {
        const m = median(t[key]);
        const cpu = median(c[key]);
        return `| ${name} | ${m.toFixed(0)} ms | ${((deltaData / MiB) / (m / 1000)).toFixed(0)} MiB/s | ${(mq / m).toFixed(2)}× | ${cpu.toFixed(0)} ms | ${(cq / cpu).toFixed(2)}× | ${t[key].length} |`;
      };
      return [
        '| task | median | delta copied/s | speed vs qemu-img commit | CPU time (median) | CPU vs qemu-img | runs |',
        '|---|---:|---:|---:|---:|---:|---:|',
        ...rows.filter(([, key]) => t[key].length > 0).map(([name, key]) => line(name, key)),
      ].join('\n');
    };
    const commit = table('q', [
      ['qemu-img commit (empties the delta, keeps it)', 'q'],
      [`vmkit consolidate --into base, drops the delta${ops ? ' (FileHandle I/O)' : ' (memory)'}`, 'v'],
      ['vmkit consolidate --into base, drops the delta (sync I/O)', 's'],
      ['vmkit consolidate --into base, keepDelta: empties it, as qemu-img (sync I/O)', 'k'],
    ]);
    const whole = table('Q', [
      ['`qemu-img commit` (empties the delta, keeps it)', 'Q'],
      ['`vmkit disk consolidate --keep-delta` (the same)', 'K'],
      ['`vmkit disk consolidate` (removes the delta)', 'P'],
    ]);
    // Which rows meet the goal "at most as long as qemu-img commit" (by median, in this run).
    const verdict = (ref, rows) =>
      rows
        .filter(([, key]) => t[key].length > 0)
        .map(([name, key]) => `${name.replace(/`/g, '')}: ${(median(t[ref]) / median(t[key])).toFixed(2)}× (${median(t[key]) <= median(t[ref]) ? 'meets' : 'misses'})`)
        .join('; ');
    notes.push(
      `Goal "consolidating into the base at most as long as qemu-img commit", this run — in process: ${verdict('q', [
        ['FileHandle I/O', 'v'],
        ['sync I/O', 's'],
        ['sync I/O, keepDelta', 'k'],
      ])}; as whole processes: ${verdict('Q', [
        ['--keep-delta', 'K'],
        ['removing the delta', 'P'],
      ])}.`,
    );
    const load = (await import('node:os')).loadavg()[0];
    notes.push(
      `Consolidation rows: each round runs every variant on its own copy of the same chain (written back with \`sync\` first). The in-process rows time opening the chain, the job and closing it and report the process's CPU time during it; qemu-img commit's row is its whole process, CPU from GNU time. Like with like: the keepDelta rows leave what \`qemu-img commit\` leaves (the delta emptied, still in the chain: both free the delta's data); the other vmkit rows remove the delta file instead (also freeing its data).`,
      `Load average (1 min) when the consolidation rounds ended: ${load.toFixed(1)} on ${(await import('node:os')).cpus().length} cores.`,
    );

    // 2. under sustained writes
    const rows = [];
    if (has('qemu-storage-daemon')) {
      const qs = [];
      const vs = [];
      for (let r = 0; r < reps; r++) {
        const d1 = join(root, `m${r}`);
        execFileSync('mkdir', ['-p', d1]);
        copyChain(master, d1);
        qs.push(await qemuMirror(d1, size));
        rmSync(d1, { recursive: true, force: true });
        const d2 = join(root, `n${r}`);
        execFileSync('mkdir', ['-p', d2]);
        copyChain(master, d2);
        vs.push(await vmkitMirror(d2, size, ops, ops ? undefined : await memChain(size, baseData, deltaData, 7)));
        rmSync(d2, { recursive: true, force: true });
      }
      const row = (name, xs) => {
        const ready = median(xs.map((x) => x.readyMs));
        const total = median(xs.map((x) => x.totalMs));
        const copied = median(xs.map((x) => x.copied));
        const wps = median(xs.map((x) => x.writes / (x.totalMs / 1000)));
        return { name, ready, total, copied, wps };
      };
      const a = row('QEMU blockdev-mirror write-blocking (qemu-storage-daemon)', qs);
      const b = row(`vmkit consolidate onto a new target${ops ? '' : ' (memory)'}`, vs);
      rows.push(
        '| job | time to ready (median) | total (median) | bytes copied by the job | guest 4 KiB writes/s during the job | total vs QEMU |',
        '|---|---:|---:|---:|---:|---:|',
        ...[a, b].map((x) => `| ${x.name} | ${x.ready.toFixed(0)} ms | ${x.total.toFixed(0)} ms | ${(x.copied / MiB).toFixed(1)} MiB | ${x.wps.toFixed(0)} | ${(a.total / x.total).toFixed(2)}× |`),
      );
      notes.push(`Both sides' guest writers are paced to ${WRITE_RATE} random 4 KiB writes a second (at most 32 outstanding; QEMU's from a qemu-io process over NBD, vmkit's in-process), from 200 ms before the job until it completes; the last column but one is the rate each sustained. "Bytes copied" is what the job wrote to the target: QEMU's final job \`offset\` (it counts mirrored writes), vmkit's copied + zeroed + mirrored bytes.`);
    } else {
      notes.push('qemu-storage-daemon missing (Debian: qemu-system-common): the mirror comparison was not run.');
    }
    return {
      summary: SUMMARY,
      title: 'Live backup: consolidation and mirror',
      sections: [
        { heading: `Consolidate a delta into its base (${size / MiB} MiB disk, ${deltaData / MiB} MiB of delta writes, delta file ${(deltaFile / MiB).toFixed(0)} MiB)`, markdown: commit },
        ...(ops ? [{ heading: 'The same as whole processes (start-up, module loading and the delta\'s fate included)', markdown: whole }] : []),
        ...(rows.length ? [{ heading: 'Consolidation under sustained guest writes', markdown: rows.join('\n') }] : []),
      ],
      notes,
    };
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}
