// A real VM through vmkit checkpoints: a busybox guest under QEMU (TCG) prints
// an incrementing counter on its serial console and holds 24 MiB of random
// data in a tmpfs whose SHA-256 it prints every few counts. The spec stops it,
// takes QEMU's `info tlb`, migrates it to a file (`migrate "exec:cat > vm.mig"`),
// takes `pmemsave`, quits; imports the stream (`vmkit checkpoint import`),
// starts a new QEMU with `-incoming "exec:vmkit checkpoint export vm.ckpt -"`
// and checks: its memory equals the original's at save time (pmemsave), after
// `cont` the counter continues from where it was and the tmpfs hash is the
// same; the checkpoint's metadata holds the vCPU's CR3 (= `info registers`),
// and `vmkit pagetable dump vm.ckpt --format qemu` (no --cr3, no --mode) prints
// exactly QEMU's `info tlb` taken before the migration: 4-level (-cpu qemu64)
// and 5-level (-cpu qemu64,+la57) paging.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { needTool } from './_tools.js';
import { buildInitramfs, findKernel, monitor } from '../scripts/_guest.mjs';

const run = promisify(execFile);
const CLI = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
const RAM_MIB = 128;

const INIT = `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null
/bin/busybox mount -t tmpfs -o size=48m tmp /tmp
/bin/busybox dd if=/dev/urandom of=/tmp/data bs=1M count=24 2>/dev/null
echo VMKIT-READY
i=0
while :; do
  i=$((i+1))
  echo "COUNT $i"
  if [ $((i % 4)) = 0 ]; then echo "HASH $(/bin/busybox sha256sum /tmp/data | /bin/busybox cut -c1-64)"; fi
  /bin/busybox sleep 1
done
`;

interface Mon {
  cmd(line: string): Promise<string>;
  close(): void;
}

const ok =
  needTool('qemu-system-x86_64', 'qemu-system-x86') && needTool('cpio', 'cpio') && needTool('busybox', 'busybox-static') && (findKernel() !== undefined || (() => {
    if (process.env.CI === 'true') throw new Error('no /boot/vmlinuz-*-amd64: apt-get install linux-image-amd64');
    console.warn('\n*** SKIPPING: no /boot/vmlinuz-*-amd64 (apt-get install linux-image-amd64) ***\n');
    return false;
  })());

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor<T>(what: string, ms: number, probe: () => T | undefined | Promise<T | undefined>): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await sleep(300);
  }
}

function qemu(cpu: string, args: string[]): { proc: ChildProcess; stderr: () => string; exited: Promise<unknown> } {
  const proc = spawn('qemu-system-x86_64', ['-machine', 'pc,accel=tcg', '-cpu', cpu, '-smp', '1', '-m', `${RAM_MIB}M`, '-display', 'none', '-nodefaults', '-no-reboot', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  proc.stderr!.on('data', (d) => (err += d));
  return { proc, stderr: () => err, exited: new Promise((r) => proc.once('exit', r)) };
}

const read = (p: string): string => (existsSync(p) ? readFileSync(p, 'latin1') : '');
const counts = (log: string): number[] => [...log.matchAll(/^COUNT (\d+)\r?$/gm)].map((m) => Number(m[1]));
const hashes = (log: string): string[] => [...log.matchAll(/^HASH ([0-9a-f]{64})\r?$/gm)].map((m) => m[1]!);

describe.skipIf(!ok)('QEMU migration stream → vmkit checkpoint → QEMU (real guest, TCG)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vmkit-mig-'));
  const procs: ChildProcess[] = [];
  afterAll(() => {
    for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  // qemu64: 4-level paging; with LA57 offered, Debian's kernel runs 5-level paging.
  it.each([
    ['qemu64', 'x86_64', false],
    ['qemu64,+la57', 'x86_64-la57', true],
  ] as const)('-cpu %s: resumes from an imported checkpoint (counter continues, tmpfs hash and memory unchanged); pagetable dump of it = info tlb', { timeout: 420_000 }, async (cpu, name, la57) => {
    mkdirSync(join(dir, name), { recursive: true });
    const initrd = buildInitramfs(join(dir, name), { init: INIT });
    const kernel = findKernel();
    const serial1 = join(dir, name, 'serial1.log');
    const mon1Path = join(dir, name, 'mon1.sock');
    const src = qemu(cpu, [
      '-kernel', kernel, '-initrd', initrd, '-append', 'console=ttyS0 panic=-1 quiet loglevel=3',
      '-serial', `file:${serial1}`, '-monitor', `unix:${mon1Path},server=on,wait=off`,
    ]);
    procs.push(src.proc);
    // Boot, then wait for a hash line so the tmpfs is written and hashed once.
    await waitFor('the guest to print its tmpfs hash', 300_000, () => {
      if (src.proc.exitCode !== null) throw new Error(`qemu exited: ${src.stderr()}`);
      return hashes(read(serial1)).length > 0 ? true : undefined;
    });
    const mon1: Mon = await monitor(mon1Path);
    await mon1.cmd('stop');
    const log1 = read(serial1);
    const lastCount = Math.max(...counts(log1));
    const hash1 = hashes(log1).at(-1)!;
    const regs = await mon1.cmd('info registers');
    const cr3 = BigInt(`0x${/CR3=([0-9a-fA-F]+)/.exec(regs)![1]}`);
    const cr4 = BigInt(`0x${/CR4=([0-9a-fA-F]+)/.exec(regs)![1]}`);
    expect(((cr4 >> 12n) & 1n) === 1n).toBe(la57);
    const tlb = (await mon1.cmd('info tlb'))
      .split('\n')
      .filter((l) => /^[0-9a-f]{16}: /.test(l))
      .join('\n');
    expect(tlb.split('\n').length).toBeGreaterThan(100);
    const mig = join(dir, name, 'vm.mig');
    await mon1.cmd(`migrate "exec:cat > ${mig}"`);
    await waitFor('the migration to complete', 120_000, async () => {
      const s = await mon1.cmd('info migrate');
      if (/Migration status: failed/.test(s)) throw new Error(`migration failed: ${s}`);
      return /Migration status: completed/.test(s) ? true : undefined;
    });
    const mem1 = join(dir, name, 'mem1.bin');
    await mon1.cmd(`pmemsave 0 ${RAM_MIB << 20} "${mem1}"`);
    await mon1.cmd('quit').catch(() => {});
    mon1.close();
    await src.exited;

    const ckpt = join(dir, name, 'vm.ckpt');
    const imp = JSON.parse((await run('node', [CLI, 'checkpoint', 'import', mig, ckpt, '--json'], { maxBuffer: 1 << 24 })).stdout);
    expect(imp.blocks[0]).toMatchObject({ id: 'pc.ram', length: RAM_MIB << 20, offset: 0 });
    expect(imp.cpus).toHaveLength(1);
    expect(BigInt(imp.cpus[0].cr3)).toBe(cr3);
    // Most of 128 MiB is zero: the checkpoint is far smaller than QEMU's stream of it.
    expect(statSync(ckpt).size).toBeLessThan(statSync(mig).size);
    // The page walk of the checkpoint itself (no --cr3, no --mode: both from the vCPU state) is QEMU's own.
    const dump = (await run('node', [CLI, 'pagetable', 'dump', ckpt, '--format', 'qemu'], { maxBuffer: 1 << 28 })).stdout;
    expect(dump.trimEnd()).toBe(tlb.trimEnd());

    const serial2 = join(dir, name, 'serial2.log');
    const mon2Path = join(dir, name, 'mon2.sock');
    const dst = qemu(cpu, [
      '-serial', `file:${serial2}`, '-monitor', `unix:${mon2Path},server=on,wait=off`,
      '-incoming', `exec:node ${CLI} checkpoint export ${ckpt} -`,
    ]);
    procs.push(dst.proc);
    await waitFor('the monitor socket', 30_000, () => (existsSync(mon2Path) ? true : undefined));
    const mon2: Mon = await monitor(mon2Path);
    await waitFor('the incoming migration', 120_000, async () => {
      if (dst.proc.exitCode !== null) throw new Error(`qemu -incoming exited: ${dst.stderr()}`);
      const s = await mon2.cmd('info migrate');
      if (/Migration status: failed/.test(s)) throw new Error(`incoming migration failed: ${s} ${dst.stderr()}`);
      return /Migration status: completed/.test(s) ? s : undefined;
    });
    const mem2 = join(dir, name, 'mem2.bin');
    await mon2.cmd(`pmemsave 0 ${RAM_MIB << 20} "${mem2}"`);
    const a = readFileSync(mem1);
    const b = readFileSync(mem2);
    expect(b.length).toBe(a.length);
    expect(Buffer.compare(a, b)).toBe(0);
    await mon2.cmd('cont');
    const log2 = await waitFor('the restored guest to print a hash', 120_000, () => {
      if (dst.proc.exitCode !== null) throw new Error(`restored qemu exited: ${dst.stderr()}`);
      const l = read(serial2);
      return hashes(l).length > 0 && counts(l).length > 0 ? l : undefined;
    });
    const c2 = counts(log2);
    // The counter continues: the first full line after the restore is the next count (or, when
    // QEMU stopped the guest between an echo and the UART, the one after).
    expect(c2[0]).toBeGreaterThan(lastCount);
    expect(c2[0]).toBeLessThanOrEqual(lastCount + 2);
    expect(hashes(log2)[0]).toBe(hash1);
    await mon2.cmd('quit').catch(() => {});
    mon2.close();
    await dst.exited;
  });
});
