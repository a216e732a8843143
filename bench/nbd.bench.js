// NBD servers side by side, as whole processes: `vmkit disk serve` against
// qemu-nbd (qcow2 and raw) and nbdkit's file plugin (raw; this nbdkit has no
// qcow2 reader), each serving its own copy of the same image over a Unix
// socket, driven by fio's nbd engine (libnbd). Rounds interleave the servers;
// the tables quote medians over rounds, the server's CPU time per GiB moved,
// and the ratio to qemu-nbd serving the same format. Start-up (spawn until
// the socket answers) is reported on its own.
import { spawn, execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hasTool, median } from './_lib.js';

const TITLE = 'NBD server: vmkit disk serve vs qemu-nbd and nbdkit (fio nbd engine)';
const MiB = 1 << 20;
const vmkitBin = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
const TICK = 100; // USER_HZ on Linux

function cpuSeconds(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) / TICK; // utime + stime
}

async function waitFor(uri, ms = 10_000) {
  const t0 = performance.now();
  for (;;) {
    try {
      execFileSync('nbdinfo', ['--size', uri], { stdio: 'ignore' });
      return performance.now() - t0;
    } catch {
      if (performance.now() - t0 > ms) throw new Error(`server at ${uri} did not answer within ${ms} ms`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

/** Starts a server; resolves { pid, uri, startMs, stop } once it answers. */
async function start(kind, file, sock) {
  const uri = `nbd+unix:///?socket=${sock}`;
  const argv = {
    vmkit: [process.execPath, [vmkitBin, 'disk', 'serve', file, '--listen', `unix:${sock}`]],
    'vmkit-sync': [process.execPath, [vmkitBin, 'disk', 'serve', file, '--listen', `unix:${sock}`, '--aio', 'sync']],
    'qemu-nbd': ['qemu-nbd', ['-t', '-f', file.endsWith('.qcow2') ? 'qcow2' : 'raw', '--socket', sock, file]],
    nbdkit: ['nbdkit', ['-f', '-U', sock, 'file', file]],
  }[kind];
  const t0 = performance.now();
  const child = spawn(argv[0], argv[1], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (b) => (err += b));
  await waitFor(uri).catch((e) => {
    child.kill('SIGKILL');
    throw new Error(`${kind}: ${e.message}: ${err}`);
  });
  const startMs = performance.now() - t0;
  return {
    pid: child.pid,
    uri,
    startMs,
    stop: () =>
      new Promise((r) => {
        child.once('exit', r);
        child.kill('SIGTERM');
      }),
  };
}

function fio(uri, w, seconds, size) {
  const out = execFileSync(
    'fio',
    ['--name=b', '--ioengine=nbd', `--uri=${uri}`, `--rw=${w.rw}`, `--bs=${w.bs}`, `--iodepth=${w.qd}`, `--size=${size}`, `--runtime=${seconds}`, '--time_based', '--output-format=json'],
    { encoding: 'utf8', maxBuffer: 64 * MiB },
  );
  const j = JSON.parse(out.slice(out.indexOf('{')));
  const r = w.rw.includes('read') ? j.jobs[0].read : j.jobs[0].write;
  return { mbps: r.bw_bytes / 1e6, iops: r.iops, bytes: r.io_bytes };
}

export async function run(ctx) {
  for (const t of ['qemu-img', 'qemu-io', 'qemu-nbd', 'fio', 'nbdinfo']) {
    if (!hasTool(t)) return { title: TITLE, sections: [], notes: [`skipped: ${t} is not installed (apt-get install qemu-utils fio libnbd-bin)`] };
  }
  const withNbdkit = hasTool('nbdkit');
  const size = ctx.quick ? 256 * MiB : 1024 * MiB;
  const seconds = ctx.quick ? 1 : 3;
  const rounds = ctx.quick ? 1 : 3;
  const dir = mkdtempSync(join(tmpdir(), 'vmkit-bench-nbd-'));
  try {
    ctx.log(`building a ${size / MiB} MiB qcow2 and raw image, fully allocated`);
    const q0 = join(dir, 'base.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', q0, String(size)]);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5a 0 ${size}`, q0], { stdio: 'ignore' });
    const r0 = join(dir, 'base.raw');
    execFileSync('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', q0, r0]);
    const servers = [
      { key: 'vmkit qcow2', kind: 'vmkit', src: q0 },
      { key: 'vmkit qcow2 --aio sync', kind: 'vmkit-sync', src: q0 },
      { key: 'qemu-nbd qcow2', kind: 'qemu-nbd', src: q0 },
      { key: 'vmkit raw', kind: 'vmkit', src: r0 },
      { key: 'vmkit raw --aio sync', kind: 'vmkit-sync', src: r0 },
      { key: 'qemu-nbd raw', kind: 'qemu-nbd', src: r0 },
      ...(withNbdkit ? [{ key: 'nbdkit raw', kind: 'nbdkit', src: r0 }] : []),
    ];
    const workloads = [
      { name: 'sequential read 1 MiB QD4', rw: 'read', bs: '1M', qd: 4 },
      { name: 'sequential write 1 MiB QD4', rw: 'write', bs: '1M', qd: 4 },
      { name: 'random read 4 KiB QD32', rw: 'randread', bs: '4k', qd: 32 },
      { name: 'random write 4 KiB QD32', rw: 'randwrite', bs: '4k', qd: 32 },
    ];
    const res = new Map(); // `${server}|${workload}` -> [{mbps, iops, cpuPerGiB}]
    const startMs = new Map();
    for (let round = 0; round < rounds; round++) {
      for (const w of workloads) {
        // Rotate the order each round so no server always runs first.
        const order = servers.map((_, i) => servers[(i + round) % servers.length]);
        for (const s of order) {
          const file = join(dir, `${s.key.replace(/[^a-z0-9]+/gi, '-')}${s.src.endsWith('.qcow2') ? '.qcow2' : '.raw'}`);
          copyFileSync(s.src, file);
          const srv = await start(s.kind, file, join(dir, `s${round}-${s.key.replace(/[^a-z0-9]+/gi, '-')}-${w.rw}.sock`));
          (startMs.get(s.key) ?? startMs.set(s.key, []).get(s.key)).push(srv.startMs);
          const c0 = cpuSeconds(srv.pid);
          const r = fio(srv.uri, w, seconds, size);
          const cpu = cpuSeconds(srv.pid) - c0;
          await srv.stop();
          rmSync(file);
          const k = `${s.key}|${w.name}`;
          (res.get(k) ?? res.set(k, []).get(k)).push({ ...r, cpuPerGiB: cpu / (r.bytes / 2 ** 30) });
          ctx.log(`round ${round + 1} ${w.name} ${s.key}: ${r.mbps.toFixed(0)} MB/s, ${r.iops.toFixed(0)} IOPS`);
        }
      }
    }
    const med = (k, f) => median(res.get(k).map(f));
    const fmt = (k, w) => {
      const v = w.bs === '4k' ? `${(med(k, (x) => x.iops) / 1000).toFixed(1)} K IOPS` : `${med(k, (x) => x.mbps).toFixed(0)} MB/s`;
      return `${v} (${med(k, (x) => x.cpuPerGiB).toFixed(2)} CPU-s/GiB)`;
    };
    const ratio = (a, b, w) => {
      const f = w.bs === '4k' ? (x) => x.iops : (x) => x.mbps;
      return `${(med(`${a}|${w.name}`, f) / med(`${b}|${w.name}`, f)).toFixed(2)}×`;
    };
    const qcowTable = [
      '| workload | vmkit | vmkit --aio sync | qemu-nbd | vmkit / qemu-nbd | sync / qemu-nbd |',
      '|---|---:|---:|---:|---:|---:|',
      ...workloads.map(
        (w) =>
          `| ${w.name} | ${fmt(`vmkit qcow2|${w.name}`, w)} | ${fmt(`vmkit qcow2 --aio sync|${w.name}`, w)} | ${fmt(`qemu-nbd qcow2|${w.name}`, w)} | ${ratio('vmkit qcow2', 'qemu-nbd qcow2', w)} | ${ratio('vmkit qcow2 --aio sync', 'qemu-nbd qcow2', w)} |`,
      ),
    ].join('\n');
    const rawTable = [
      `| workload | vmkit | vmkit --aio sync | qemu-nbd |${withNbdkit ? ' nbdkit file |' : ''} vmkit / qemu-nbd | sync / qemu-nbd |${withNbdkit ? ' vmkit / nbdkit |' : ''}`,
      `|---|---:|---:|---:|${withNbdkit ? '---:|' : ''}---:|---:|${withNbdkit ? '---:|' : ''}`,
      ...workloads.map(
        (w) =>
          `| ${w.name} | ${fmt(`vmkit raw|${w.name}`, w)} | ${fmt(`vmkit raw --aio sync|${w.name}`, w)} | ${fmt(`qemu-nbd raw|${w.name}`, w)} |${withNbdkit ? ` ${fmt(`nbdkit raw|${w.name}`, w)} |` : ''} ${ratio('vmkit raw', 'qemu-nbd raw', w)} | ${ratio('vmkit raw --aio sync', 'qemu-nbd raw', w)} |${withNbdkit ? ` ${ratio('vmkit raw', 'nbdkit raw', w)} |` : ''}`,
      ),
    ].join('\n');
    const startTable = ['| server | start-up until the socket answers (median) |', '|---|---:|', ...[...startMs].map(([k, v]) => `| ${k} | ${median(v).toFixed(0)} ms |`)].join('\n');
    return {
      title: TITLE,
      sections: [
        { heading: `qcow2 (${size / MiB} MiB, allocated), fio ${seconds} s per run, median of ${rounds} interleaved rounds`, markdown: qcowTable },
        { heading: 'raw, same runs', markdown: rawTable },
        { heading: 'start-up', markdown: startTable },
      ],
      notes: [
        'Goals (issue #12): sequential 1 MiB ≥ 1.0× qemu-nbd MB/s; 4 KiB random at QD32 ≥ 0.7× qemu-nbd IOPS. Writeback caching on every server (qemu-nbd default), no flush in the runs.',
        'CPU-s/GiB is the server process\'s user+system time per GiB moved: it shows the cost when the client, not the server, limits the rate.',
      ],
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
