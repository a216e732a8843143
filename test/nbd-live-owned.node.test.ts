// Live jobs on a disk held by ownership (`vmkit disk serve --as <id> --control`):
// the jobs' file operations go through the owner's write guard, a release
// request arriving mid-job cancels a backup or a consolidation before its
// pivot (its caller is told why) and hands over the layer the guest was
// writing, and a fenced holder's job stops with FENCED while NBD writes get
// EPERM. Runs the built CLI (dist/) and the library in-process.
import { describe, expect, it } from 'vitest';
import { serveVmkit, type ServedVmkit } from './_cli.js';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { needTool } from './_tools.js';
import { qemuCheck } from './_qemu-img.js';
import { callControl } from '../bindings/disk/nbd/control.js';
import { isVmkitError } from '../bindings/errors.js';
import { openOwned } from '../bindings/disk/owner/handoff.js';
import { FileOwnerStore } from '../bindings/disk/owner/file-store.js';
import { NodeChainOps } from '../bindings/disk/backup/node.js';
import { formatDriverWith } from '../bindings/disk/image.js';
import { _guardedChainOps } from '../bindings/disk/backup/_guarded.js';
import { openLive, liveBlockDevice, type LiveServe } from '../bindings/cli/commands/_disk_live.js';
import { serveNbd } from '../bindings/disk/nbd/server.js';

const run = promisify(execFile);
const hasTools = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
const MiB = 1 << 20;

async function qio(uri: string, ...cmds: string[]): Promise<string> {
  const r = await run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri], { encoding: 'utf8' });
  if (/error|failed/i.test(r.stdout + r.stderr)) throw new Error(`qemu-io: ${r.stdout}${r.stderr}`);
  return r.stdout;
}
const filled = (b: Uint8Array, off: number, len: number, v: number): boolean => b.subarray(off, off + len).every((x) => x === v);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** `vmkit disk serve <args> --json` in `cwd`, left running. */
function serve(cwd: string, args: string[]): ServedVmkit {
  return serveVmkit(['disk', 'serve', ...args, '--json'], { cwd });
}

/** Waits until the control socket reports `job` running. */
async function jobRuns(ctl: string, job: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (((await callControl(ctl, { op: 'info' })) as { job: string | null }).job === job) return;
    await sleep(10);
  }
  throw new Error(`${job} never ran`);
}

describe.skipIf(!hasTools)('serve --as with --control: live jobs under ownership', () => {
  it('a release request mid-backup cancels it (CANCELLED, naming the new owner); the successor serves the delta the guest wrote; mid-consolidation likewise; every write survives', async () => {
    const d = await mkdtemp(join(tmpdir(), 'vmkit-nbdown-'));
    const vm = join(d, 'vm.qcow2');
    const sock = join(d, 'vm.sock');
    const uri = `nbd+unix:///?socket=${sock}`;
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', vm, '32M']);
    const servers: ServedVmkit[] = [];
    const start = (id: string): ServedVmkit => {
      const s = serve(d, ['vm.qcow2', '--listen', `unix:${sock}`, '--as', id, '--control', join(d, `${id}.ctl`), '--lease', '3000']);
      servers.push(s);
      return s;
    };
    try {
      const a = start('a');
      expect(await a.json()).toMatchObject({ owner: 'a', epoch: 1, control: join(d, 'a.ctl') });
      await qio(uri, 'write -P 0x41 0 4M', 'flush');
      const snap = (await callControl(join(d, 'a.ctl'), { op: 'snapshot' })) as { delta: string; active: string };
      expect(snap.active).toMatch(/vm-delta-1\.qcow2$/);
      // The pointer beside the disk names the delta, so a successor opens it, not the frozen vm.qcow2.
      expect(JSON.parse(readFileSync(`${vm}.vmkit-active`, 'utf8'))).toEqual({ active: 'vm-delta-1.qcow2' });
      await qio(uri, 'write -P 0x42 0 1M', 'write -P 0x42 8M 4M', 'flush');

      // A slow backup, and a release request while it copies.
      const bk = callControl(join(d, 'a.ctl'), { op: 'backup', args: { target: join(d, 'backup.raw'), rate: 256 * 1024 } }).then(
        () => 'finished',
        (e: unknown) => e,
      );
      await jobRuns(join(d, 'a.ctl'), 'backup');
      const b = start('b');
      expect(await b.json()).toMatchObject({ owner: 'b', epoch: 2 });
      const bkErr = await bk;
      expect(isVmkitError(bkErr, 'CANCELLED'), String(bkErr)).toBe(true);
      expect(String((bkErr as Error).message)).toMatch(/handed over to b/);
      expect(await a.exited).toBe(0);
      expect(a.err()).toMatch(/release requested by b/);
      // b serves the layer the guest last wrote: the data written after the snapshot is there.
      const info = (await callControl(join(d, 'b.ctl'), { op: 'info' })) as { active: string };
      expect(info.active).toMatch(/vm-delta-1\.qcow2$/);
      expect(await qio(uri, 'read -P 0x42 8M 4M', 'read -P 0x41 1M 3M')).toMatch(/read 4194304/);
      await qio(uri, 'write -P 0x43 16M 2M', 'flush');

      // A slow consolidation into the base on b, and a release request to c before its pivot.
      const cons = callControl(join(d, 'b.ctl'), { op: 'consolidate', args: { rate: 256 * 1024 } }).then(
        () => 'finished',
        (e: unknown) => e,
      );
      await jobRuns(join(d, 'b.ctl'), 'consolidate');
      const c = start('c');
      expect(await c.json()).toMatchObject({ owner: 'c', epoch: 3 });
      const consErr = await cons;
      expect(isVmkitError(consErr, 'CANCELLED'), String(consErr)).toBe(true);
      expect(String((consErr as Error).message)).toMatch(/handed over to c/);
      expect(await b.exited).toBe(0);
      // Cancelled before the pivot: the delta stays active, and c serves it.
      expect(((await callControl(join(d, 'c.ctl'), { op: 'info' })) as { active: string }).active).toMatch(/vm-delta-1\.qcow2$/);
      await qio(uri, 'write -P 0x44 20M 1M', 'flush');
      // Finished on c: the chain collapses into vm.qcow2 and the pointer goes.
      const done = (await callControl(join(d, 'c.ctl'), { op: 'consolidate' })) as { active: string };
      expect(done.active).toBe('vm.qcow2');
      expect(existsSync(`${vm}.vmkit-active`)).toBe(false);
      c.child.kill('SIGTERM');
      expect(await c.exited).toBe(0);
    } finally {
      for (const s of servers) s.child.kill('SIGTERM');
    }
    expect(qemuCheck(vm)).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
    await run('qemu-img', ['convert', '-O', 'raw', vm, join(d, 'final.raw')]);
    const fin = new Uint8Array(await readFile(join(d, 'final.raw')));
    expect(filled(fin, 0, MiB, 0x42)).toBe(true);
    expect(filled(fin, MiB, 3 * MiB, 0x41)).toBe(true);
    expect(filled(fin, 8 * MiB, 4 * MiB, 0x42)).toBe(true);
    expect(filled(fin, 16 * MiB, 2 * MiB, 0x43)).toBe(true);
    expect(filled(fin, 20 * MiB, MiB, 0x44)).toBe(true);
    await rm(d, { recursive: true, force: true });
  }, 180_000);

  it('a fenced holder: the running backup stops with FENCED, NBD writes get EPERM, and the job leaves its files as the fence found them', async () => {
    const d = await mkdtemp(join(tmpdir(), 'vmkit-nbdfence-'));
    const vm = join(d, 'vm.qcow2');
    const sock = join(d, 'vm.sock');
    const uri = `nbd+unix:///?socket=${sock}`;
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', vm, '16M']);
    const store = new FileOwnerStore();
    let live!: LiveServe;
    const held = await openOwned(vm, {
      as: 'a',
      store,
      serve: false,
      // Long enough that a loaded machine keeps it renewed; the fence is noticed within half of it.
      leaseMs: 2000,
      open: async ({ guard, provider }) => {
        live = await openLive(vm, _guardedChainOps(new NodeChainOps(formatDriverWith(provider)), guard), vm);
        return { device: liveBlockDevice(live.disk, 'qcow2'), close: () => live.close(), abandon: () => live.abandon() };
      },
    });
    const server = await serveNbd({ listen: `unix:${sock}`, exports: [{ device: held.device }] });
    try {
      await qio(uri, 'write -P 0x61 0 8M', 'flush');
      await live.handler({ op: 'snapshot' }, () => {});
      const target = join(d, 'backup.raw');
      const bk = live.handler({ op: 'backup', args: { target, rate: 128 * 1024 } }, () => {}).then(
        () => 'finished',
        (e: unknown) => e,
      );
      await sleep(300);
      // Another holder takes a newer epoch without asking (what a takeover after a lost lease does).
      const snap = await store.read(vm);
      const now = Date.now();
      const next = { ...snap.record!, epoch: snap.record!.epoch + 1, owner: { id: 'thief', host: 'elsewhere', pid: 1 }, leaseExpiresAt: now + 60_000, updatedAt: now };
      expect(await store.compareAndSwap(vm, snap.revision, next)).not.toBeNull();
      const err = await bk;
      expect(isVmkitError(err, 'FENCED'), String(err)).toBe(true);
      expect((await held.done).reason).toBe('fenced');
      // The job's target is left as the fence found it (its removal is a write too): nothing changes it later.
      const before = statSync(target);
      await sleep(500);
      const after = statSync(target);
      expect([after.size, after.mtimeMs]).toEqual([before.size, before.mtimeMs]);
      // The guest's writes are refused with EPERM (reads still work: nothing of the data changes hands).
      const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x62 0 64k', uri], { encoding: 'utf8' }).catch((e: { stdout: string; stderr: string }) => e);
      expect(w.stdout + w.stderr).toMatch(/write failed: Operation not permitted/);
      // No new job starts on a fenced holder.
      await expect(live.handler({ op: 'snapshot' }, () => {})).rejects.toMatchObject({ code: 'FENCED' });
      expect(existsSync(`${vm}.vmkit-active`)).toBe(true);
      expect(JSON.parse(readFileSync(`${vm}.vmkit-active`, 'utf8'))).toEqual({ active: 'vm-delta-1.qcow2' });
    } finally {
      await server.close();
      await held.release().catch(() => {});
    }
    await rm(d, { recursive: true, force: true });
  }, 60_000);
});
