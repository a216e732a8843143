// Live backup and consolidation on real qcow2 files, judged by QEMU's own tools:
// chains are built with qemu-img/qemu-io, vmkit snapshots, backs up and
// consolidates them while a writer issues random writes at full speed, and the
// result must equal a reference chain to which qemu-io applied the same writes
// (`qemu-img compare`) and pass `qemu-img check`. A child process running a
// consolidation is killed with SIGKILL at random instants: the chain must still
// open, pass `qemu-img check`, and hold every write the child saw acknowledged.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  backup,
  consolidate,
  LiveDisk,
  readJobRecord,
  recoverConsolidation,
  resumeConsolidation,
  snapshot,
} from '../bindings/disk/backup/index.js';
import { NodeChainOps } from '../bindings/disk/backup/node.js';
import { VmkitError } from '../bindings/errors.js';
import { FileStorage } from '../bindings/disk/backends/file.js';
import { needTool } from './_tools.js';

const MiB = 2 ** 20;
const haveQemu = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
const root = mkdtempSync(join(tmpdir(), 'vmkit-backup-files-'));
const distNode = fileURLToPath(new URL('../dist/disk/backup/node.js', import.meta.url));
const distIndex = fileURLToPath(new URL('../dist/disk/backup/index.js', import.meta.url));
const distCore = fileURLToPath(new URL('../dist/core.js', import.meta.url));
const bin = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));

afterAll(() => rmSync(root, { recursive: true, force: true }));

function q(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
}

/** qemu-io in batches (its command line has a length limit). */
function qemuIo(file: string, cmds: string[]): void {
  for (let i = 0; i < cmds.length; i += 1500) {
    q('qemu-io', ['-f', 'qcow2', ...cmds.slice(i, i + 1500).flatMap((c) => ['-c', c]), file]);
  }
}

/** base (32 MiB of 0x11) ← delta (random 64 KiB writes, one zero write) in `dir`. */
function buildChain(dir: string, size: number, seed: number): { base: string; delta: string } {
  const base = join(dir, 'base.qcow2');
  const delta = join(dir, 'delta.qcow2');
  q('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(size)]);
  qemuIo(base, [`write -P 0x11 0 ${size / 2}`]);
  q('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', delta]);
  let s = seed >>> 0;
  const cmds: string[] = [];
  for (let i = 0; i < 96; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    cmds.push(`write -P ${(i % 250) + 1} ${(s % (size / 65536)) * 65536} 64k`);
  }
  cmds.push(`write -z ${size / 4} 1M`);
  qemuIo(delta, cmds);
  return { base, delta };
}

function copyChain(from: string, to: string): void {
  for (const f of ['base.qcow2', 'delta.qcow2']) copyFileSync(join(from, f), join(to, f));
}

function freshDir(name: string): string {
  const d = join(root, name);
  rmSync(d, { recursive: true, force: true });
  execFileSync('mkdir', ['-p', d]);
  return d;
}

/** Random 4 KiB writes at full speed until stopped; returns the log of acknowledged writes. */
function randomWriter(disk: LiveDisk, size: number, seed: number): { stop(): Promise<Array<[number, number]>> } {
  let stopped = false;
  const log: Array<[number, number]> = [];
  let s = seed >>> 0;
  const run = async (): Promise<void> => {
    const buf = new Uint8Array(4096);
    while (!stopped) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      const off = (s % (size / 4096)) * 4096;
      const pat = (s % 250) + 1;
      buf.fill(pat);
      await disk.write(off, buf);
      log.push([off, pat]);
    }
  };
  const writers = [run(), run()];
  return {
    async stop() {
      stopped = true;
      await Promise.all(writers);
      return log;
    },
  };
}

function applyLog(file: string, log: Array<[number, number]>): void {
  qemuIo(file, log.map(([o, p]) => `write -P ${p} ${o} 4k`));
}

function qemuCheck(file: string): void {
  // Exit status 0: no corruptions, no leaks. qemu-img exits 2/3 otherwise (execFileSync throws).
  const out = q('qemu-img', ['check', '--output=json', file]);
  const r = JSON.parse(out) as { 'check-errors': number; corruptions?: number; leaks?: number };
  expect(r['check-errors']).toBe(0);
  expect(r.corruptions ?? 0).toBe(0);
  expect(r.leaks ?? 0).toBe(0);
}

function identical(a: string, b: string): void {
  const out = q('qemu-img', ['compare', a, b]);
  expect(out).toContain('Images are identical');
}

const SIZE = 64 * MiB;
let master = '';

describe.runIf(haveQemu)('live backup and consolidation on qcow2 files (checked with qemu-img)', () => {
  beforeAll(() => {
    master = freshDir('master');
    buildChain(master, SIZE, 7);
  });

  it('plans from the delta\'s L2 tables exactly what qemu-img map reports for its top layer (host offsets included)', async () => {
    const d = freshDir('plan');
    copyChain(master, d);
    // A compressed cluster too: read through the chain, with no host offset.
    q('qemu-io', ['-f', 'qcow2', '-c', `write -c -P 0x5a ${SIZE - 65536} 64k`, join(d, 'delta.qcow2')]);
    const { planFromL2, isL2Layer } = await import('../bindings/disk/backup/_plan.js');
    const ops = new NodeChainOps();
    const dev = await ops.open(join(d, 'delta.qcow2'), { readOnly: true });
    try {
      expect(isL2Layer(dev)).toBe(true);
      const plan = await planFromL2(dev as never, 1 << 20);
      type M = { start: number; length: number; depth: number; data: boolean; zero: boolean; offset?: number; compressed?: boolean };
      const map = (JSON.parse(q('qemu-img', ['map', '--output=json', join(d, 'delta.qcow2')])) as M[]).filter((m) => m.depth === 0);
      // Per 64 KiB cluster: 'z' zero, 'c' compressed, or the host offset.
      const want = new Map<number, string>();
      for (const m of map) {
        for (let o = m.start; o < m.start + m.length; o += 65536) {
          want.set(o, m.zero ? 'z' : m.compressed || m.offset === undefined ? 'c' : String(m.offset + (o - m.start)));
        }
      }
      const got = new Map<number, string>();
      for (const op of plan) {
        expect(Math.floor(op.offset / MiB)).toBe(Math.floor((op.offset + op.length - 1) / MiB)); // no op crosses a chunk
        for (let o = op.offset; o < op.offset + op.length; o += 65536) got.set(o, op.zero ? 'z' : op.host === undefined ? 'c' : String(op.host + (o - op.offset)));
      }
      expect(got.get(SIZE - 65536)).toBe('c');
      expect([...got].sort((a, b) => a[0] - b[0])).toEqual([...want].sort((a, b) => a[0] - b[0]));
      // Host runs merge: fewer ops than clusters.
      expect(plan.length).toBeLessThan(got.size);
    } finally {
      await dev.close();
    }
  });

  it('consolidates the delta into its base in one pass while a writer runs, equal to qemu-io applying the same writes', async () => {
    const d = freshDir('into-base');
    const ref = freshDir('into-base-ref');
    copyChain(master, d);
    copyChain(master, ref);
    const ops = new NodeChainOps();
    const disk = await LiveDisk.open(join(d, 'delta.qcow2'), ops);
    const w = randomWriter(disk, SIZE, 1);
    const job = await consolidate(disk, { into: 'base' });
    const r = await job.done;
    const log = await w.stop();
    await disk.close();
    expect(r.done).toBe(true);
    // One pass: nothing was copied twice, and the pass never copied more than it planned.
    expect(r.recopiedBytes).toBe(0);
    expect(r.copiedBytes + r.zeroedBytes + r.skippedBytes).toBeLessThanOrEqual(r.planned);
    expect(r.active).toBe(join(d, 'base.qcow2'));
    expect(existsSync(join(d, 'delta.qcow2'))).toBe(false);
    applyLog(join(ref, 'delta.qcow2'), log);
    identical(join(ref, 'delta.qcow2'), join(d, 'base.qcow2'));
    qemuCheck(join(d, 'base.qcow2'));
  });

  it('consolidates onto a new overlay target while a writer runs; the target takes over and the delta leaves the chain', async () => {
    const d = freshDir('onto-target');
    const ref = freshDir('onto-target-ref');
    copyChain(master, d);
    copyChain(master, ref);
    const ops = new NodeChainOps();
    const disk = await LiveDisk.open(join(d, 'delta.qcow2'), ops);
    const w = randomWriter(disk, SIZE, 2);
    const target = join(d, 'target.qcow2');
    const job = await consolidate(disk, { into: target });
    const r = await job.done;
    const log = await w.stop();
    await disk.close();
    expect(r.recopiedBytes).toBe(0);
    expect(r.active).toBe(target);
    expect(existsSync(join(d, 'delta.qcow2'))).toBe(false);
    const chain = q('qemu-img', ['info', '--backing-chain', '--output=json', target]);
    const layers = JSON.parse(chain) as Array<{ filename: string; 'backing-filename'?: string }>;
    expect(layers.map((l) => l.filename.split('/').pop())).toEqual(['target.qcow2', 'base.qcow2']);
    applyLog(join(ref, 'delta.qcow2'), log);
    identical(join(ref, 'delta.qcow2'), target);
    qemuCheck(target);
    qemuCheck(join(d, 'base.qcow2'));
  });

  it('backs up the frozen snapshot exactly (raw and qcow2 targets) while the guest writes to the new delta', async () => {
    const d = freshDir('backup');
    copyChain(master, d);
    // The point-in-time reference: the chain as it is before the snapshot.
    q('qemu-img', ['convert', '-O', 'raw', join(d, 'delta.qcow2'), join(d, 'before.raw')]);
    const ops = new NodeChainOps();
    const disk = await LiveDisk.open(join(d, 'delta.qcow2'), ops);
    const snap = await snapshot(disk, { delta: join(d, 'delta2.qcow2') });
    const w = randomWriter(disk, SIZE, 3);
    await backup(snap.image, join(d, 'backup.raw'), { ops, format: 'raw' }).done;
    await backup(snap.image, join(d, 'backup.qcow2'), { ops, format: 'qcow2' }).done;
    const log = await w.stop();
    await snap.image.close();
    await disk.close();
    expect(log.length).toBeGreaterThan(0);
    q('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(d, 'before.raw'), join(d, 'backup.raw')]);
    identical(join(d, 'before.raw'), join(d, 'backup.qcow2'));
    qemuCheck(join(d, 'backup.qcow2'));
    qemuCheck(join(d, 'delta2.qcow2'));
    // The live chain holds the guest's writes on top of the snapshot.
    const live = freshDir('backup-ref');
    copyChain(master, live);
    applyLog(join(live, 'delta.qcow2'), log);
    identical(join(live, 'delta.qcow2'), join(d, 'delta2.qcow2'));
  });

  it('a backup to a raw file syncs it once, at the end, and leaves the zero runs as holes', async () => {
    const d = freshDir('backup-sync');
    copyChain(master, d);
    // A zero tail that the chain holds as data (so the job reads it and finds the zero run itself).
    q('qemu-io', ['-f', 'qcow2', '-c', `write -z ${SIZE - 8 * MiB} ${8 * MiB}`, '-c', `write -P 0 ${SIZE - 16 * MiB} ${8 * MiB}`, join(d, 'delta.qcow2')]);
    q('qemu-img', ['convert', '-O', 'raw', join(d, 'delta.qcow2'), join(d, 'ref.raw')]);
    const ops = new NodeChainOps();
    const image = await ops.open(join(d, 'delta.qcow2'), { readOnly: true });
    // Count the fdatasyncs: FileStorage.flush syncs only when something was written since the last one.
    const proto = FileStorage.prototype as unknown as { flush(): Promise<void>; unsynced: boolean };
    const orig = proto.flush;
    const synced: string[] = [];
    proto.flush = function (this: { unsynced: boolean; name: string; readOnly: boolean }) {
      if (this.unsynced && !this.readOnly) synced.push(this.name);
      return orig.call(this);
    };
    try {
      await backup(image, join(d, 'backup.raw'), { ops, format: 'raw' }).done;
    } finally {
      proto.flush = orig;
      await image.close();
    }
    expect(synced).toEqual([join(d, 'backup.raw')]);
    q('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(d, 'ref.raw'), join(d, 'backup.raw')]);
    // The 16 MiB zero tail (and the chain's unallocated ranges) take no blocks.
    const st = statSync(join(d, 'backup.raw'));
    expect(st.size).toBe(SIZE);
    expect(st.blocks * 512).toBeLessThanOrEqual(SIZE - 16 * MiB);
  });

  it('a SIGKILL at random instants of a consolidation leaves a chain that opens, passes qemu-img check and holds every acknowledged write', async () => {
    const child = join(root, 'crash-child.mjs');
    // The child consolidates with a writer and prints each write once it is acknowledged.
    writeFileSync(
      child,
      `import { LiveDisk, consolidate } from ${JSON.stringify(distIndex)};
import { NodeChainOps } from ${JSON.stringify(distNode)};
import { init } from ${JSON.stringify(distCore)};
await init();
const [file, into, seed] = process.argv.slice(2);
const disk = await LiveDisk.open(file, new NodeChainOps());
let s = Number(seed) >>> 0;
const buf = new Uint8Array(4096);
const writer = (async () => { for (;;) {
  s = (Math.imul(s, 1103515245) + 12345) >>> 0;
  const off = (s % ${SIZE / 4096}) * 4096, pat = (s % 250) + 1;
  buf.fill(pat); await disk.write(off, buf);
  process.stdout.write(off + ' ' + pat + '\\n');
} })();
process.stdout.write('start\\n');
const job = await consolidate(disk, { into: into === 'base' || into === 'keep' ? 'base' : into, keepDelta: into === 'keep', rateLimit: 2 * 1024 * 1024 });
process.stdout.write('job\\n');
await job.done;
process.stdout.write('done\\n');
await new Promise((r) => setTimeout(r, 1e6));
`,
    );
    // The first kill counts from the child's start (it may land before the job record exists);
    // the others from the job's start (its record written), so on a loaded machine they still
    // land inside the job rather than before it.
    const delays = [30, 120, 260, 450, 700, 900];
    let sawDone = 0;
    const actions: string[] = [];
    for (const [i, delay] of delays.entries()) {
      const d = freshDir(`crash-${i}`);
      copyChain(master, d);
      // Into the base, onto a target, into the base keeping the delta (emptied, as qemu-img commit).
      const into = i % 3 === 0 ? 'base' : i % 3 === 1 ? join(d, 'target.qcow2') : 'keep';
      const p = spawn(process.execPath, [child, join(d, 'delta.qcow2'), into, String(100 + i)], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      p.stdout.on('data', (b: Buffer) => (out += b.toString()));
      await new Promise<void>((resolve) => {
        const t = setInterval(() => {
          if (out.includes(i === 0 ? 'start\n' : 'job\n')) {
            clearInterval(t);
            setTimeout(resolve, delay);
          }
        }, 5);
      });
      p.kill('SIGKILL');
      await new Promise((r) => p.once('exit', r));
      if (out.includes('done\n')) sawDone++;
      // Only complete lines are acknowledged writes (the kill may cut the last one).
      const lines = out.split('\n');
      lines.pop();
      const log = lines.filter((l) => /^\d+ \d+$/.test(l)).map((l) => l.split(' ').map(Number) as [number, number]);

      const ops = new NodeChainOps();
      // One kill into the base resumes the job instead of recovering (its plan, restricted to what
      // the interrupted pass had not made durable, reads the delta's file at shifted host offsets).
      const pre = await readJobRecord(ops, join(d, 'delta.qcow2'));
      let rec: { action: string; active: string };
      if (i === 3 && pre?.phase === 'mirroring') {
        const ld = await LiveDisk.open(join(d, 'delta.qcow2'), ops);
        const r = await (await resumeConsolidation(ld)).done;
        await ld.close();
        await ops.repairLeaks(join(d, 'base.qcow2')); // a kill mid-allocation may have leaked a cluster
        rec = { action: 'resumed', active: r.active };
        expect(existsSync(join(d, 'delta.qcow2'))).toBe(false);
      } else {
        // A job that finished before the kill left no record and no delta: recovery says so
        // (NOT_FOUND) rather than naming the delta; the target (or the base) is active.
        rec = await recoverConsolidation(ops, join(d, 'delta.qcow2')).catch((e: unknown) => {
          if (!(e instanceof VmkitError) || e.code !== 'NOT_FOUND' || existsSync(join(d, 'delta.qcow2'))) throw e;
          return { action: 'finished', active: into === 'base' ? join(d, 'base.qcow2') : into };
        });
      }
      actions.push(rec.action);
      if (rec.action === 'none' || rec.action === 'finished') {
        // The job had finished (or, on a loaded machine, not yet recorded itself); the kill hit a
        // guest write on the active layer, which can leak a cluster as it can in QEMU: the same
        // repair any crashed writer's image gets.
        for (const f of ['base.qcow2', 'target.qcow2', 'delta.qcow2']) if (existsSync(join(d, f))) await ops.repairLeaks(join(d, f));
      }
      for (const f of ['base.qcow2', 'delta.qcow2', 'target.qcow2']) if (existsSync(join(d, f))) qemuCheck(join(d, f));
      // The recovered chain opens, and reads the last acknowledged pattern at every written offset.
      const active = rec.active;
      expect(existsSync(active), `${rec.action}: ${active}`).toBe(true); // never a layer that is gone
      if (into === 'keep' && rec.action === 'rolled-forward') {
        // The kept delta is empty: the base holds everything.
        expect(q('qemu-img', ['map', '--output=json', join(d, 'delta.qcow2')])).not.toContain('"depth": 0');
      }
      const disk = await LiveDisk.open(active, ops);
      // One write may have been in flight at the kill: the next in the child's sequence. It may
      // or may not have landed; every acknowledged one must have.
      let s = (100 + i) >>> 0;
      for (let k = 0; k <= log.length; k++) s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      const inflight: [number, number] = [(s % (SIZE / 4096)) * 4096, (s % 250) + 1];
      const last = new Map<number, number>();
      for (const [o, pat] of log) last.set(o, pat);
      for (const [o, pat] of last) {
        const got = await disk.read(o, 4096);
        const ok = got.every((b) => b === pat) || (o === inflight[0] && got.every((b) => b === inflight[1]));
        expect(ok, `write at ${o} (pattern ${pat}) after a kill at +${delay} ms (${rec.action}, ${active})`).toBe(true);
      }
      // Everything the child never wrote still reads as before: sample the base data and the delta.
      const refDisk = await LiveDisk.open(join(master, 'delta.qcow2'), ops);
      for (let o = 0; o < SIZE; o += 1024 * 1024 + 4096) {
        const a = o - (o % 4096);
        if (last.has(a) || a === inflight[0]) continue;
        expect(Buffer.from(await disk.read(a, 4096)).equals(Buffer.from(await refDisk.read(a, 4096))), `untouched block at ${a}`).toBe(true);
      }
      await refDisk.close();
      await disk.close();
      if (rec.action === 'rolled-back') expect(existsSync(join(d, 'target.qcow2'))).toBe(false);
      // No second name of an old delta outlives the recovery (it would keep its storage).
      expect(existsSync(join(d, 'delta.qcow2.vmkit-old'))).toBe(false);
    }
    // The instants must land inside the job for the test to mean anything.
    expect(sawDone).toBeLessThan(delays.length);
    expect(actions).toContain('rolled-back');
  }, 120_000);

  it('vmkit disk consolidate --keep-delta leaves what qemu-img commit leaves: the same base, and the delta emptied in the chain', () => {
    const d = freshDir('keep');
    copyChain(master, d);
    const peer = freshDir('keep-qemu');
    copyChain(master, peer);
    q('qemu-img', ['commit', '-q', join(peer, 'delta.qcow2')]);
    const res = JSON.parse(execFileSync(process.execPath, [bin, 'disk', 'consolidate', 'delta.qcow2', '--keep-delta', '--json'], { cwd: d }).toString()) as Record<string, unknown>;
    expect(res.active).toBe('delta.qcow2');
    identical(join(d, 'base.qcow2'), join(peer, 'base.qcow2'));
    identical(join(d, 'delta.qcow2'), join(peer, 'delta.qcow2'));
    qemuCheck(join(d, 'base.qcow2'));
    qemuCheck(join(d, 'delta.qcow2'));
    const info = JSON.parse(q('qemu-img', ['info', '--output=json', join(d, 'delta.qcow2')])) as { 'backing-filename'?: string };
    expect(info['backing-filename']).toBe('base.qcow2');
    expect(q('qemu-img', ['map', '--output=json', join(d, 'delta.qcow2')])).not.toContain('"depth": 0');
    expect(existsSync(join(d, 'delta.qcow2.vmkit-job'))).toBe(false);
  });

  it('keepDelta frees the old delta after the pause, under a second name that recovery also removes', async () => {
    const { init } = await import('../bindings/index.js');
    await init();
    for (const stop of [false, true]) {
      const d = freshDir(stop ? 'keep-stop' : 'keep-lib');
      copyChain(master, d);
      const ops = new NodeChainOps();
      const delta = join(d, 'delta.qcow2');
      const disk = await LiveDisk.open(delta, ops);
      const seen: string[] = [];
      const job = await consolidate(disk, {
        into: 'base',
        keepDelta: true,
        hook: (pt) => {
          seen.push(pt);
          // At the pivot's end the old delta still has its second name, its storage not yet freed.
          if (pt === 'pivoted') expect(existsSync(`${delta}.vmkit-old`)).toBe(true);
          // A crash here: the chain is pivoted, the record says so, the old name is still there.
          if (stop && pt === 'pivoted') throw new Error('stopped');
        },
      });
      if (stop) {
        await expect(job.done).rejects.toThrow('stopped');
        await disk.close();
        const r = await recoverConsolidation(ops, delta);
        expect(r.action).toBe('rolled-forward');
      } else {
        await job.done;
        await disk.close();
        expect(seen).toEqual(['recorded', 'copying', 'in-sync', 'pivot-recorded', 'pivoted', 'delta-removed', 'finished']);
      }
      expect(existsSync(`${delta}.vmkit-old`)).toBe(false);
      expect(existsSync(`${delta}.vmkit-job`)).toBe(false);
      qemuCheck(join(d, 'base.qcow2'));
      qemuCheck(delta);
      expect(q('qemu-img', ['map', '--output=json', delta])).not.toContain('"depth": 0');
      q('qemu-img', ['compare', '-q', join(master, 'delta.qcow2'), delta]);
    }
  });

  it('vmkit disk snapshot, backup and consolidate on files: the results agree with qemu-img', () => {
    const d = freshDir('cli');
    copyChain(master, d);
    const vmkit = (...args: string[]): Record<string, unknown> =>
      JSON.parse(execFileSync(process.execPath, [bin, 'disk', ...args, '--json'], { cwd: d }).toString()) as Record<string, unknown>;
    q('qemu-img', ['convert', '-O', 'raw', join(d, 'delta.qcow2'), join(d, 'before.raw')]);
    const snap = vmkit('snapshot', 'delta.qcow2');
    expect(snap.frozen).toBe('delta.qcow2');
    const top = String(snap.delta);
    expect(existsSync(join(d, top))).toBe(true);
    // The guest (here qemu-io) writes to the new delta; the backup is of the frozen point in time.
    qemuIo(join(d, top), ['write -P 0x5a 4M 2M']);
    vmkit('backup', String(snap.frozen), 'backup.raw'); // the frozen layer, opened read-only
    q('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(d, 'before.raw'), join(d, 'backup.raw')]);
    // To stdout (synchronous reads, one ordered stream): the same bytes as qemu-img's raw image, holes as zeros.
    const streamed = execFileSync(process.execPath, [bin, 'disk', 'backup', String(snap.frozen), '-'], { cwd: d, maxBuffer: 1 << 30 });
    writeFileSync(join(d, 'streamed.raw'), streamed);
    expect(streamed.length).toBe(statSync(join(d, 'before.raw')).size);
    q('cmp', [join(d, 'before.raw'), join(d, 'streamed.raw')]);
    const cons = vmkit('consolidate', top);
    expect(cons.active).toBe('delta.qcow2');
    expect(existsSync(join(d, top))).toBe(false);
    qemuCheck(join(d, 'delta.qcow2'));
    q('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x5a 4M 2M', join(d, 'delta.qcow2')]);
    const ref = freshDir('cli-ref');
    copyChain(master, ref);
    qemuIo(join(ref, 'delta.qcow2'), ['write -P 0x5a 4M 2M']);
    identical(join(ref, 'delta.qcow2'), join(d, 'delta.qcow2'));
  });
});
