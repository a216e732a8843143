// Live jobs on a served disk: `vmkit disk serve --control` owns a qcow2 chain,
// QEMU's NBD client (qemu-io) writes through it, and `vmkit disk
// snapshot|backup|consolidate --server` run inside the serving process
// meanwhile. The backup holds the disk as it was at the snapshot, the
// consolidation loses none of the writes that raced it, and every layer is
// clean by `qemu-img check` afterwards. Runs the built CLI (dist/).
import { describe, expect, it } from 'vitest';
import { serveVmkit, type ServedVmkit } from './_cli.js';
import { execFile } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { needTool } from './_tools.js';
import { qemuCheck } from './_qemu-img.js';

const run = promisify(execFile);
const bin = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
const hasTools = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
const MiB = 1 << 20;

/** qemu-io against the NBD URI; throws on any error qemu-io prints (it exits 0 on some). */
async function qio(uri: string, ...cmds: string[]): Promise<void> {
  const r = await run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri], { encoding: 'utf8' });
  if (/error|failed/i.test(r.stdout + r.stderr)) throw new Error(`qemu-io: ${r.stdout}${r.stderr}`);
}

async function rawOf(file: string, out: string): Promise<Uint8Array> {
  await run('qemu-img', ['convert', '-O', 'raw', file, out]);
  return new Uint8Array(await readFile(out));
}

const filled = (b: Uint8Array, off: number, len: number, v: number): boolean => b.subarray(off, off + len).every((x) => x === v);

describe.skipIf(!hasTools)('live jobs on a disk served over NBD', () => {
  it('snapshot, backup from it and consolidation run inside vmkit disk serve while qemu-io writes', async () => {
    const d = await mkdtemp(join(tmpdir(), 'vmkit-nbdlive-'));
    const vm = join(d, 'vm.qcow2');
    const ctl = join(d, 'vm.ctl');
    const sock = join(d, 'vm.sock');
    const uri = `nbd+unix:///?socket=${sock}`;
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', vm, '32M']);
    const srv = serveVmkit(['disk', 'serve', vm, '--listen', `unix:${sock}`, '--control', ctl, '--json'], { cwd: d });
    try {
      expect(await srv.json(10_000)).toMatchObject({ control: ctl });
      expect(statSync(ctl).mode & 0o777).toBe(0o600);
      const vmkit = async (...a: string[]): Promise<Record<string, unknown>> => JSON.parse((await run(process.execPath, [bin, ...a, '--json'], { cwd: d, encoding: 'utf8' })).stdout) as Record<string, unknown>;

      await qio(uri, 'write -P 0x41 0 4M', 'write -P 0x41 8M 1M', 'flush');
      await expect(vmkit('disk', 'backup', '--server', ctl, 'early.raw')).rejects.toThrow(/no snapshot/);
      const snap = await vmkit('disk', 'snapshot', '--server', ctl);
      expect(snap.frozen).toBe(vm);
      expect(String(snap.active)).toMatch(/vm-delta-1\.qcow2$/);
      // Written after the snapshot: must not be in the backup.
      await qio(uri, 'write -P 0x42 0 1M', 'write -P 0x42 16M 2M', 'flush');
      const bk = await vmkit('disk', 'backup', '--server', ctl, 'backup.raw');
      expect(bk.target).toBe(join(d, 'backup.raw'));
      const b = new Uint8Array(await readFile(join(d, 'backup.raw')));
      expect(b.length).toBe(32 * MiB);
      expect(filled(b, 0, 4 * MiB, 0x41)).toBe(true);
      expect(filled(b, 8 * MiB, MiB, 0x41)).toBe(true);
      expect(filled(b, 16 * MiB, 2 * MiB, 0)).toBe(true);

      // Consolidation while qemu-io keeps writing (a second job at once is refused: CONFLICT).
      const writer = qio(uri, ...Array.from({ length: 48 }, (_, i) => `write -P ${0x50 + (i % 16)} ${20 * MiB + i * 65536} 64k`), 'flush');
      const cons = vmkit('disk', 'consolidate', '--server', ctl, '--rate', String(MiB));
      // Once the server says the consolidation runs, a second job is refused.
      for (let i = 0; i < 200 && ((await callInfo(ctl)) as { job: string | null }).job !== 'consolidate'; i++) await new Promise((r) => setTimeout(r, 10));
      const { callControl } = await import('../bindings/disk/nbd/control.js');
      const second = await callControl(ctl, { op: 'snapshot' }).then(
        () => 'ran',
        (e: { code?: string }) => e.code ?? '',
      );
      const [c] = await Promise.all([cons, writer]);
      expect(c.active).toBe(vm);
      expect(second).toMatch(/CONFLICT/);
      const info = (await callInfo(ctl)) as { active: string };
      expect(info.active).toBe(vm);
    } finally {
      srv.kill();
    }
    expect(await srv.exited).toBe(0);
    expect(srv.err()).toMatch(/SIGTERM: stopped/);
    expect(existsSync(ctl)).toBe(false);
    expect(qemuCheck(vm)).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
    // Everything every client saw acknowledged is in the image the chain collapsed into.
    const fin = await rawOf(vm, join(d, 'final.raw'));
    expect(filled(fin, 0, MiB, 0x42)).toBe(true);
    expect(filled(fin, MiB, 3 * MiB, 0x41)).toBe(true);
    expect(filled(fin, 8 * MiB, MiB, 0x41)).toBe(true);
    expect(filled(fin, 16 * MiB, 2 * MiB, 0x42)).toBe(true);
    for (let i = 0; i < 48; i++) expect(filled(fin, 20 * MiB + i * 65536, 65536, 0x50 + (i % 16)), `write ${i}`).toBe(true);
    await rm(d, { recursive: true, force: true });
  }, 120_000);
});

async function callInfo(ctl: string): Promise<unknown> {
  const { callControl } = await import('../bindings/disk/nbd/control.js');
  return callControl(ctl, { op: 'info' });
}

describe.skipIf(!hasTools)('disk ownership handoff between two NBD servers under a writing client', () => {
  const N = 1024;
  const pat = (i: number): number => (i % 250) + 1;
  it('serve --as b takes the disk from serve --as a on the same socket; qemu-io with reconnect-delay finishes every write without an error', async () => {
    const d = await mkdtemp(join(tmpdir(), 'vmkit-nbdhand-'));
    const vm = join(d, 'vm.qcow2');
    const sock = join(d, 'vm.sock');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', vm, '16M']);
    const start = (id: string): ServedVmkit => serveVmkit(['disk', 'serve', 'vm.qcow2', '--listen', `unix:${sock}`, '--as', id, '--lease', '2000', '--json'], { cwd: d });
    const waitJson = async (s: ServedVmkit): Promise<{ epoch: number }> => (await s.json(10_000)) as { epoch: number };
    const a = start('a');
    let b: ReturnType<typeof start> | undefined;
    try {
      expect((await waitJson(a)).epoch).toBe(1);
      // QEMU's NBD client, told to reconnect for up to 20 s: four passes of 64 KiB writes over the disk,
      // each write its own pattern, so the last pass's patterns are what must remain.
      const opts = `driver=nbd,server.type=unix,server.path=${sock},reconnect-delay=20`;
      // A pause after the first pass leaves room for the handoff: the first pass goes to a, the rest to b.
      const cmds = Array.from({ length: N }, (_, i) => ['-c', `write -P ${pat(i)} ${(i % 256) * 65536} 64k`, ...(i === 255 ? ['-c', 'sleep 5000'] : [])]).flat();
      const writer = run('qemu-io', ['--image-opts', ...cmds, '-c', 'flush', opts], { encoding: 'utf8', maxBuffer: 16 << 20 });
      await new Promise((r) => setTimeout(r, 1500));
      b = start('b');
      const bj = await waitJson(b);
      expect(bj.epoch, `${b.out()} ${b.err()}`).toBe(2);
      expect(await a.exited).toBe(0);
      expect(a.err()).toMatch(/release requested by b/);
      const w = await writer;
      expect(w.stdout + w.stderr).not.toMatch(/error|failed/i);
      expect(w.stdout.match(/wrote 65536\/65536 bytes/g)?.length).toBe(N);
    } finally {
      a.child.kill('SIGTERM');
      b?.child.kill('SIGTERM');
    }
    expect(await b!.exited).toBe(0);
    // Both servers took part: the client's writes went to a, then (after reconnecting) to b.
    const served = (e: string): number => Number(/stopped after \d+ connections, (\d+) requests/.exec(e)?.[1] ?? -1);
    expect(served(a.err())).toBeGreaterThan(0);
    expect(served(b!.err())).toBeGreaterThan(0);
    expect(qemuCheck(vm)).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
    const fin = await rawOf(vm, join(d, 'final.raw'));
    for (let k = 0; k < 256; k++) expect(filled(fin, k * 65536, 65536, pat(N - 256 + k)), `block ${k}`).toBe(true);
    await rm(d, { recursive: true, force: true });
  }, 120_000);
});
