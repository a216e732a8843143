// A real QEMU VM through vmkit checkpoints (issue 20's goals): a 2 GiB
// busybox guest (TCG) whose memory a workload filled — a page cache of real
// files (host libraries in its initramfs root), a tmpfs of real binaries
// (copied there from /usr/bin), 256 MiB of zeroes in a tmpfs file — stopped
// and saved once as the fixture (.cache/checkpoint-qemu-bench/<key>/vm.mig).
// Then in rounds: QEMU restores the fixture (`-incoming "exec:cat vm.mig"`,
// spawn to "completed": QEMU's own restore), saves it again
// (`migrate "exec:cat > vm.mig"`, to "completed": QEMU's own save) and quits;
// `vmkit checkpoint import` of that stream (a whole process: wall and CPU) and
// `lz4 -1` of it; QEMU restores `-incoming "exec:vmkit checkpoint export
// vm.ckpt -"` (1 thread, and 2), and from that export as a file through cat
// (QEMU's work on vmkit's stream alone). Then sizes, and 10,000 random data pages read lazily from the
// checkpoint (CheckpointReader.readPagesInto, one page each) against pread()
// of the same pages from QEMU's stream (offsets found by scanning it).
// --quick: a 512 MiB guest with less data, one round, 2,000 pages.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { measure, median } from './_lib.js';
import { buildInitramfs, findKernel, monitor, which } from '../scripts/_guest.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
const bin = join(root, 'dist/bin/vmkit.js');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const gnuTime = existsSync('/usr/bin/time');

function timed(cmd, args) {
  const argv = gnuTime ? ['-f', '@@cpu %U %S', cmd, ...args] : args;
  const t = process.hrtime.bigint();
  const r = spawnSync(gnuTime ? '/usr/bin/time' : cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  const ns = Number(process.hrtime.bigint() - t);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  const m = /@@cpu ([\d.]+) ([\d.]+)/.exec(r.stderr.toString());
  return { ns, cpuNs: m ? (Number(m[1]) + Number(m[2])) * 1e9 : NaN };
}

const FULL = { ramMiB: 2048, libMiB: 320, binMiB: 200, zeroMiB: 256, rounds: 3, reads: 10_000 };
const QUICK = { ramMiB: 512, libMiB: 48, binMiB: 32, zeroMiB: 64, rounds: 1, reads: 2_000 };

const initFor = (c) => `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t tmpfs -o size=${c.binMiB + c.zeroMiB + 64}m tmp /t
/bin/busybox cp -r /data/bin /t/bin
/bin/busybox dd if=/dev/zero of=/t/zero bs=1M count=${c.zeroMiB} 2>/dev/null
/bin/busybox cat /data/lib/* > /dev/null
echo VMKIT-READY
while :; do /bin/busybox sleep 1; done
`;

/** Regular files of `dir` in name order until `mib` MiB. */
function pick(dir, mib) {
  const out = [];
  let n = 0;
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    const st = lstatSync(p);
    if (!st.isFile() || st.size === 0) continue;
    if (n + st.size > mib << 20) continue;
    out.push(p);
    n += st.size;
  }
  return out;
}

function qemu(dir, name, extra, ramMiB) {
  const sock = join(dir, `${name}.sock`);
  const args = ['-machine', 'pc,accel=tcg', '-cpu', 'qemu64', '-m', `${ramMiB}M`, '-display', 'none', '-nodefaults', '-serial', `file:${join(dir, `${name}.log`)}`, '-monitor', `unix:${sock},server=on,wait=off`, ...extra];
  const p = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  p.stderr.on('data', (d) => (err += d));
  return { p, sock, err: () => err, exited: new Promise((r) => p.once('exit', r)) };
}

async function connect(q) {
  for (let i = 0; ; i++) {
    try {
      if (existsSync(q.sock)) return await monitor(q.sock);
    } catch (e) {
      if (i > 400) throw e;
    }
    if (q.p.exitCode !== null) throw new Error(`qemu exited: ${q.err()}`);
    await sleep(25);
  }
}

async function untilCompleted(mon) {
  for (;;) {
    const s = await mon.cmd('info migrate');
    if (/Migration status: completed/.test(s)) return;
    if (/Migration status: failed/.test(s)) throw new Error(s);
    await sleep(20);
  }
}

/** The guest's stream, saved once per configuration (boots take minutes under TCG). */
async function fixture(c, kernel, log) {
  const files = { lib: pick('/usr/lib/x86_64-linux-gnu', c.libMiB), bin: pick('/usr/bin', c.binMiB) };
  const key = createHash('sha256')
    .update(JSON.stringify({ c, kernel, init: initFor(c), files, qemu: spawnSync('qemu-system-x86_64', ['--version']).stdout.toString() }))
    .digest('hex')
    .slice(0, 16);
  const dir = join(root, '.cache', 'checkpoint-qemu-bench', key);
  const mig = join(dir, 'vm.mig');
  if (existsSync(mig)) return mig;
  mkdirSync(dir, { recursive: true });
  const work = mkdtempSync(join(tmpdir(), 'vmkit-bench-qfix-'));
  try {
    const initrd = buildInitramfs(work, {
      init: initFor(c),
      populate: (r) => {
        for (const [sub, list] of Object.entries(files)) {
          mkdirSync(join(r, 'data', sub), { recursive: true });
          list.forEach((f, i) => copyFileSync(f, join(r, 'data', sub, `${i}-${f.split('/').pop()}`)));
        }
      },
    });
    log(`booting the ${c.ramMiB} MiB fixture guest (TCG, ${(statSync(initrd).size / 2 ** 20).toFixed(0)} MiB initramfs)…`);
    const src = qemu(work, 'src', ['-kernel', kernel, '-initrd', initrd, '-append', 'console=ttyS0 quiet loglevel=3'], c.ramMiB);
    try {
      while (!(existsSync(join(work, 'src.log')) && readFileSync(join(work, 'src.log'), 'latin1').includes('VMKIT-READY'))) {
        if (src.p.exitCode !== null) throw new Error(`qemu exited: ${src.err()}`);
        await sleep(500);
      }
      const mon = await connect(src);
      await mon.cmd('stop');
      await mon.cmd(`migrate "exec:cat > ${mig}.tmp"`);
      await untilCompleted(mon);
      await mon.cmd('quit').catch(() => {});
      mon.close();
    } finally {
      if (src.p.exitCode === null) src.p.kill('SIGKILL');
      await src.exited;
    }
    renameSync(`${mig}.tmp`, mig);
    return mig;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** CPU time (user + system) of process `pid` so far, in ns. */
function cpuOf(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'latin1');
  const v = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(v[11]) + Number(v[12])) * 1e7;
}

/** Spawns a paused QEMU restoring from `incoming`; resolves at "completed" with the elapsed ns, QEMU's CPU ns and its monitor. */
async function restore(dir, name, incoming, ramMiB) {
  const t0 = process.hrtime.bigint();
  const q = qemu(dir, name, ['-S', '-incoming', incoming], ramMiB);
  const mon = await connect(q);
  await untilCompleted(mon);
  const ns = Number(process.hrtime.bigint() - t0);
  return { ns, cpuNs: cpuOf(q.p.pid), mon, q };
}

async function quit({ mon, q }) {
  await mon.cmd('quit').catch(() => {});
  mon.close();
  await q.exited;
}

/**
 * Stream offset of every RAM_SAVE_FLAG_PAGE payload, by page number of the
 * checkpoint's page space (blocks in stream order): a scan of the header,
 * configuration and ram sections up to the first device section.
 */
function pageOffsets(path) {
  const buf = readFileSync(path);
  const v = new DataView(buf.buffer, buf.byteOffset, buf.length);
  let at = 8;
  const str8 = () => {
    const n = buf[at];
    const s = buf.toString('latin1', at + 1, at + 1 + n);
    at += 1 + n;
    return s;
  };
  if (buf[at] === 0x07) {
    at += 1;
    at += 4 + v.getUint32(at);
    while (buf[at] === 0x05) {
      at += 1;
      const name = str8();
      at += 4;
      if (name === 'configuration/capabilities') {
        const k = v.getUint32(at);
        at += 4;
        for (let i = 0; i < k; i++) str8();
      } else at += 16;
    }
  }
  const base = new Map();
  let total = 0;
  const offsets = new Map();
  let last;
  for (;;) {
    const type = buf[at];
    if (type === 0x01) {
      at += 5;
      str8();
      at += 8;
    } else if (type === 0x02 || type === 0x03) at += 5;
    else break;
    for (;;) {
      const word = v.getBigUint64(at);
      at += 8;
      const flags = Number(word & 0xfffn);
      const addr = Number(word & ~0xfffn);
      if (flags === 0x10) break;
      if (flags & 0x04) {
        let left = addr;
        while (left > 0) {
          const id = str8();
          const len = Number(v.getBigUint64(at));
          at += 8;
          base.set(id, total);
          total += Math.ceil(len / 4096) * 4096;
          left -= len;
        }
        continue;
      }
      if (!(flags & 0x20)) last = str8();
      if (flags & 0x02) at += 1;
      else {
        offsets.set((base.get(last) + addr) / 4096, at);
        at += 4096;
      }
    }
    at += 5;
  }
  return offsets;
}

export async function run({ quick, log }) {
  const c = quick ? QUICK : FULL;
  const kernel = findKernel();
  if (!kernel || !which('qemu-system-x86_64') || !which('lz4') || !which('cpio')) {
    return { title: 'checkpoint-qemu: a real QEMU VM through vmkit checkpoints', sections: [], notes: ['SKIPPED: needs qemu-system-x86_64, lz4, cpio and /boot/vmlinuz-*-amd64.'] };
  }
  const fix = await fixture(c, kernel, log);
  const dir = mkdtempSync(join(tmpdir(), 'vmkit-bench-qmig-'));
  try {
    const mig = join(dir, 'vm.mig');
    const ckpt = join(dir, 'vm.ckpt');
    const exported = join(dir, 'exported.mig');
    const t = { save: [], imp: [], impCpu: [], impFast: [], impFastCpu: [], auto: [], lz4: [], lz4Cpu: [], exp: [], expCpu: [], resQemu: [], resQemuCpu: [], resVmkit: [], resVmkitCpu: [], resVmkit1: [], resVmkit1Cpu: [], resAuto: [], resAutoCpu: [], resExp: [], resExpCpu: [] };
    const size = {};
    for (let r = 0; r < c.rounds; r++) {
      log(`round ${r + 1}/${c.rounds}`);
      // QEMU's own restore of the fixture, then its own save of the restored (paused) guest.
      const q = await restore(dir, `own-${r}`, `exec:cat ${fix}`, c.ramMiB);
      t.resQemu.push(q.ns);
      t.resQemuCpu.push(q.cpuNs);
      rmSync(mig, { force: true });
      const t0 = process.hrtime.bigint();
      const answer = await q.mon.cmd(`migrate "exec:cat > ${mig}"`);
      if (/Error/.test(answer)) throw new Error(answer);
      await untilCompleted(q.mon);
      t.save.push(Number(process.hrtime.bigint() - t0));
      await quit(q);
      // The default (dense) search and the fast one, order alternating by round; the dense import is kept.
      for (const fast of r % 2 ? [false, true] : [true, false]) {
        const i = timed('node', [bin, 'checkpoint', 'import', mig, fast ? `${ckpt}.fast` : ckpt, ...(fast ? ['--search', 'fast'] : [])]);
        t[fast ? 'impFast' : 'imp'].push(i.ns);
        t[fast ? 'impFastCpu' : 'impCpu'].push(i.cpuNs);
      }
      if (r === c.rounds - 1) size.fast = statSync(`${ckpt}.fast`).size;
      rmSync(`${ckpt}.fast`, { force: true });
      const l = timed('lz4', ['-1', '-q', '-f', mig, `${mig}.lz4`]);
      t.lz4.push(l.ns);
      t.lz4Cpu.push(l.cpuNs);
      const e = timed('node', [bin, 'checkpoint', 'export', ckpt, exported]);
      t.exp.push(e.ns);
      t.expCpu.push(e.cpuNs);
      // The three exports (the default --threads auto, 1 and 2), their order rotating by round.
      const variants = [
        ['resAuto', `exec:node ${bin} checkpoint export ${ckpt} -`],
        ['resVmkit1', `exec:node ${bin} checkpoint export ${ckpt} - --threads 1`],
        ['resVmkit', `exec:node ${bin} checkpoint export ${ckpt} - --threads 2`],
      ];
      for (let k = 0; k < r % 3; k++) variants.push(variants.shift());
      for (const [key, incoming] of variants) {
        // What auto will pick (the export reads the same load average a moment later).
        if (key === 'resAuto') t.auto.push(availableParallelism() >= 2 && availableParallelism() - loadavg()[0] > 1 ? 2 : 1);
        const v = await restore(dir, `${key}-${r}`, incoming, c.ramMiB);
        t[key].push(v.ns);
        t[`${key}Cpu`].push(v.cpuNs);
        await quit(v);
      }
      // The exported stream from a file through cat: QEMU's work on vmkit's stream without vmkit running beside it.
      const x = await restore(dir, `exported-${r}`, `exec:cat ${exported}`, c.ramMiB);
      t.resExp.push(x.ns);
      t.resExpCpu.push(x.cpuNs);
      await quit(x);
      rmSync(exported, { force: true });
    }
    Object.assign(size, { mig: statSync(mig).size, lz4: statSync(`${mig}.lz4`).size, ckpt: statSync(ckpt).size });

    // Lazy reads: the same random data pages from the checkpoint and by pread() from QEMU's stream.
    const { CheckpointReader, init } = await import(join(root, 'dist/memory/index.js'));
    await init();
    const offs = pageOffsets(mig);
    const pages = [...offs.keys()];
    let seed = 20;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) % pages.length);
    const pick = Array.from({ length: c.reads }, () => pages[rnd()]);
    const reader = await CheckpointReader.open(ckpt);
    const fd = openSync(mig, 'r');
    const dst = new Uint8Array(4096);
    const dst2 = new Uint8Array(4096);
    // The two agree on every page read (the check that the pages are the same ones).
    for (const p of pick.slice(0, 200)) {
      await reader.readPagesInto(p, 1, dst);
      readSync(fd, dst2, 0, 4096, offs.get(p));
      if (Buffer.compare(dst, dst2) !== 0) throw new Error(`page ${p} differs between the checkpoint and the stream`);
    }
    const reads = await measure(
      [
        {
          name: `pread() of ${c.reads} random pages from QEMU's stream`,
          fn: () => {
            for (const p of pick) readSync(fd, dst2, 0, 4096, offs.get(p));
          },
          items: c.reads,
        },
        {
          name: `CheckpointReader.readPagesInto of the same ${c.reads} pages`,
          fn: async () => {
            for (const p of pick) await reader.readPagesInto(p, 1, dst);
          },
          items: c.reads,
        },
      ],
      { quick, time: 3000 },
    );
    closeSync(fd);
    await reader.close();

    const ms = (a) => (median(a) / 1e6).toFixed(0);
    const [pr, ck] = reads.results;
    const verdict = (ok) => (ok ? 'met' : 'NOT met');
    const markdown = [
      '| what | median wall ms | median CPU ms | vs QEMU |',
      '|---|---:|---:|---:|',
      `| QEMU save (migrate to file, stopped guest) | ${ms(t.save)} | — | 1.00× |`,
      `| vmkit checkpoint import of that stream (dense search, the default) | ${ms(t.imp)} | ${ms(t.impCpu)} | ${(median(t.imp) / median(t.save)).toFixed(2)}× |`,
      `| vmkit checkpoint import --search fast | ${ms(t.impFast)} | ${ms(t.impFastCpu)} | ${(median(t.impFast) / median(t.save)).toFixed(2)}× |`,
      `| lz4 -1 of that stream | ${ms(t.lz4)} | ${ms(t.lz4Cpu)} | ${(median(t.lz4) / median(t.save)).toFixed(2)}× |`,
      `| QEMU restore from its own file (spawn → completed; CPU: QEMU's) | ${ms(t.resQemu)} | ${ms(t.resQemuCpu)} | 1.00× |`,
      `| QEMU restore from vmkit checkpoint export (the default, --threads auto: chose ${t.auto.join(', ')}; spawn → completed; CPU: QEMU's) | ${ms(t.resAuto)} | ${ms(t.resAutoCpu)} | ${(median(t.resAuto) / median(t.resQemu)).toFixed(2)}× |`,
      `| QEMU restore from vmkit checkpoint export --threads 1 (CPU: QEMU's) | ${ms(t.resVmkit1)} | ${ms(t.resVmkit1Cpu)} | ${(median(t.resVmkit1) / median(t.resQemu)).toFixed(2)}× |`,
      `| QEMU restore from vmkit checkpoint export --threads 2 (CPU: QEMU's) | ${ms(t.resVmkit)} | ${ms(t.resVmkitCpu)} | ${(median(t.resVmkit) / median(t.resQemu)).toFixed(2)}× |`,
      `| QEMU restore from the exported stream as a file (exec:cat; CPU: QEMU's) | ${ms(t.resExp)} | ${ms(t.resExpCpu)} | ${(median(t.resExp) / median(t.resQemu)).toFixed(2)}× |`,
      `| vmkit checkpoint export to a file (a whole process) | ${ms(t.exp)} | ${ms(t.expCpu)} | — |`,
    ].join('\n');
    const sizes = [
      '| file | bytes | vs QEMU stream | vs lz4 -1 |',
      '|---|---:|---:|---:|',
      `| QEMU stream | ${size.mig} | 1.00× | — |`,
      `| lz4 -1 of it | ${size.lz4} | ${(size.lz4 / size.mig).toFixed(2)}× | 1.00× |`,
      `| vmkit checkpoint (dense search, the default) | ${size.ckpt} | ${(size.ckpt / size.mig).toFixed(2)}× | ${(size.ckpt / size.lz4).toFixed(2)}× |`,
      `| vmkit checkpoint --search fast | ${size.fast} | ${(size.fast / size.mig).toFixed(2)}× | ${(size.fast / size.lz4).toFixed(2)}× |`,
    ].join('\n');
    return {
      title: `checkpoint-qemu: a real ${c.ramMiB} MiB QEMU VM through vmkit checkpoints`,
      sections: [
        { heading: `save / import / restore (${c.rounds} rounds, each QEMU restore → QEMU save → import → lz4 → export → restore from export)`, markdown },
        { heading: 'sizes', markdown: sizes },
        { heading: `lazy reads (${c.reads} random data pages; checkpoint/pread pages/s = ${(pr.medianNs / ck.medianNs).toFixed(2)}×)`, markdown: reads.table },
      ],
      notes: [
        `Guest: ${c.ramMiB} MiB, a page cache of ${c.libMiB} MiB of host libraries (initramfs root), a tmpfs of ${c.binMiB} MiB of /usr/bin binaries, ${c.zeroMiB} MiB of zeroes in a tmpfs file; goals (issue 20): checkpoint ≤ 0.5× the stream and ≤ 1.1× lz4 -1 of it; import ≤ QEMU save; restore from export ≤ restore from QEMU's file; lazy reads ≥ 0.5× pread pages/s.`,
        `Goal "checkpoint ≤ 0.5× QEMU's stream": ${verdict(size.ckpt / size.mig <= 0.5)} — ${(size.ckpt / size.mig).toFixed(2)}×.`,
        `Goal "checkpoint ≤ 1.1× lz4 -1 of the stream": ${verdict(size.ckpt / size.lz4 <= 1.1)} — ${(size.ckpt / size.lz4).toFixed(2)}×. Pages are compressed one by one (any page readable alone), so LZ4 sees a 4 KiB window where lz4 -1 sees 64 KiB across pages; what closes the gap: the dense search (a hash chain as LZ4HC's, 4 candidates, lazy matching: records 7.6% smaller than the fast search's) and format version 3's packed page index (1.1 MiB here instead of 16 bytes a page, 8.0 MiB). Measured and not done (experiments on this guest's pages, reference-LZ4 search): a 60 KiB dictionary per checkpoint (zstd --train's) 3.7% smaller records, a chunk-frequency one 2.8%; two pages per LZ4 block 4.0%, four 7.1% (but 2-4x read amplification for a lazy page); the previous 60 KiB of pages as a window (no random access) 12%. Deduplicating identical pages saved 1.3% for 1.8 s more CPU and was dropped.`,
        `Goal "import wall ≤ QEMU's own save": ${verdict(median(t.imp) <= median(t.save))} — ${(median(t.imp) / median(t.save)).toFixed(2)}× (import CPU ${ms(t.impCpu)} ms with the dense search, ${ms(t.impFastCpu)} ms with the fast one, lz4 -1's ${ms(t.lz4Cpu)} ms: compressing is most of it). QEMU's save is paced by its default max-bandwidth (128 MiB/s: the 1.40 GB stream in ~11 s, loaded machine or not) while the import is CPU-bound, so under load the ratio moves with the load: the dense search's import needs its CPU time free to stay under QEMU's save; --search fast (1.16× lz4 -1 here) takes a third of it.`,
        `Goal "restore from export ≤ restore from QEMU's file": ${verdict(median(t.resAuto) <= median(t.resQemu))} — ${(median(t.resAuto) / median(t.resQemu)).toFixed(2)}× from the default export (--threads auto: 2 threads when more than one core is free by the 1-minute load average, else 1; it chose ${t.auto.join(', ')} in the rounds here), ${(median(t.resVmkit1) / median(t.resQemu)).toFixed(2)}× from 1 thread, ${(median(t.resVmkit) / median(t.resQemu)).toFixed(2)}× from 2 (5.3× on the earlier 256 MiB guest before this work). Where the time goes: not the stream — QEMU restores the exported stream from a file through cat in ${(median(t.resExp) / median(t.resQemu)).toFixed(2)}× the time of its own, with ${ms(t.resExpCpu)} ms of its CPU against ${ms(t.resQemuCpu)} ms; not the exec: shell (dash execs node) nor the writes (1 MiB pieces). It is the exporter's own CPU (${ms(t.expCpu)} ms for a whole export: in a profile 45% LZ4 decoding, 11% building records, the rest GC, reads and Node's start) on the same 2 cores as QEMU, and QEMU's extra CPU (${ms(t.resVmkit1Cpu)} ms against ${ms(t.resQemuCpu)} ms) while the producer lags: a starved 64 KiB pipe means short reads and more main-loop wake-ups. Fixed so far: zero pages come from the index (no read, no decode, no scan) and record headers are two be32 stores instead of a BigInt per page. Starting Node, loading vmkit and opening the checkpoint cost ~0.2 s wall (0.12 s CPU) before the first byte, which is why a small guest restores relatively slower (the --quick 512 MiB guest: ~3×; QEMU restores it in 0.5 s). Decoding on a second thread (--threads 2) is ${median(t.resVmkit) > 1.05 * median(t.resVmkit1) ? 'slower' : 'no faster'} here (${(median(t.resVmkit) / median(t.resQemu)).toFixed(2)}×; 3.26× against 1.37× in an earlier run): the worker competes with QEMU for the two cores.`,
        `Goal "lazy reads ≥ 0.5× pread pages/s": ${verdict(pr.medianNs / ck.medianNs >= 0.5)} — ${(pr.medianNs / ck.medianNs).toFixed(2)}× (page cache warm for both; the same pages, checked equal).`,
        `Timing under load (2 CPUs shared with other work; load average ${loadavg().map((x) => x.toFixed(1)).join(' ')} at the end): wall ratios move by tens of percent between runs (import against QEMU's save went from 0.64× to 1.35× over four runs on this day, restore from export from 1.08× to 1.79×); CPU columns are steadier.`,
      ],
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
