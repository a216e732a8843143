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
// and 5-level (-cpu qemu64,+la57) paging. The 4-level guest, resumed, is then
// saved again straight into vmkit (`migrate "exec:vmkit checkpoint import -
// diff.ckpt --parent vm.ckpt"`: stdin, a diff of the first import) and resumed
// from that diff; then from a `restore` round trip of it (restore to a raw
// image, `save --parent diff.ckpt`): each time its memory equals the
// original's at the save, the counter continues and the tmpfs hash is the same.
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

  /**
   * A new QEMU with `-incoming "exec:vmkit checkpoint export <ckpt> -"`: its memory must equal `mem` (pmemsave at
   * save time); after `cont` the counter continues from `lastCount` and the tmpfs hash is `hash`.
   */
  async function resume(cpu: string, d: string, tag: string, ckpt: string, mem: string, lastCount: number, hash: string): Promise<{ mon: Mon; serial: string; quit(): Promise<void> }> {
    const serial = join(d, `${tag}.log`);
    const monPath = join(d, `${tag}.sock`);
    const dst = qemu(cpu, ['-serial', `file:${serial}`, '-monitor', `unix:${monPath},server=on,wait=off`, '-incoming', `exec:node ${CLI} checkpoint export ${ckpt} -`]);
    procs.push(dst.proc);
    await waitFor('the monitor socket', 30_000, () => (existsSync(monPath) ? true : undefined));
    const mon: Mon = await monitor(monPath);
    await waitFor('the incoming migration', 120_000, async () => {
      if (dst.proc.exitCode !== null) throw new Error(`qemu -incoming exited: ${dst.stderr()}`);
      const st = await mon.cmd('info migrate');
      if (/Migration status: failed/.test(st)) throw new Error(`incoming migration failed: ${st} ${dst.stderr()}`);
      return /Migration status: completed/.test(st) ? st : undefined;
    });
    const memNow = join(d, `${tag}.mem`);
    await mon.cmd(`pmemsave 0 ${RAM_MIB << 20} "${memNow}"`);
    const a = readFileSync(mem);
    const b = readFileSync(memNow);
    expect(b.length).toBe(a.length);
    expect(Buffer.compare(a, b)).toBe(0);
    rmSync(memNow);
    await mon.cmd('cont');
    const log = await waitFor(`the guest resumed from ${tag} to print a hash`, 120_000, () => {
      if (dst.proc.exitCode !== null) throw new Error(`restored qemu exited: ${dst.stderr()}`);
      const l = read(serial);
      return hashes(l).length > 0 && counts(l).length > 0 ? l : undefined;
    });
    const c = counts(log);
    // The counter continues: the first full line after the restore is the next count (or, when
    // QEMU stopped the guest between an echo and the UART, the one after).
    expect(c[0]).toBeGreaterThan(lastCount);
    expect(c[0]).toBeLessThanOrEqual(lastCount + 2);
    expect(hashes(log)[0]).toBe(hash);
    return {
      mon,
      serial,
      async quit() {
        await mon.cmd('quit').catch(() => {});
        mon.close();
        await dst.exited;
      },
    };
  }

  // qemu64: 4-level paging; with LA57 offered, Debian's kernel runs 5-level paging.
  it.each([
    ['qemu64', 'x86_64', false],
    ['qemu64,+la57', 'x86_64-la57', true],
  ] as const)('-cpu %s: resumes from an imported checkpoint (counter continues, tmpfs hash and memory unchanged); pagetable dump of it = info tlb', { timeout: 900_000 }, async (cpu, name, la57) => {
    mkdirSync(join(dir, name), { recursive: true });
    const initrd = buildInitramfs(join(dir, name), { init: INIT });
    const kernel = findKernel()!; // the suite is skipped without one
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

    const resumed = await resume(cpu, join(dir, name), 'r1', ckpt, mem1, lastCount, hash1);
    if (la57) {
      await resumed.quit();
      return;
    }
    // A second save of the resumed guest, straight from QEMU into vmkit (stdin), as a diff of the first.
    const r1 = resumed.mon;
    await waitFor('the resumed guest to print another hash', 120_000, () => {
      const l = read(resumed.serial);
      return hashes(l).length > 1 ? true : undefined;
    });
    await r1.cmd('stop');
    const logR = read(resumed.serial);
    const lastCount2 = Math.max(...counts(logR));
    expect(lastCount2).toBeGreaterThan(lastCount + 2);
    const hash2 = hashes(logR).at(-1)!;
    expect(hash2).toBe(hash1);
    const diff = join(dir, name, 'diff.ckpt');
    await r1.cmd(`migrate "exec:node ${CLI} checkpoint import - ${diff} --parent ${ckpt}"`);
    await waitFor('the second migration to complete', 120_000, async () => {
      const st = await r1.cmd('info migrate');
      if (/Migration status: failed/.test(st)) throw new Error(`migration failed: ${st}`);
      return /Migration status: completed/.test(st) ? true : undefined;
    });
    const mem3 = join(dir, name, 'mem3.bin');
    await r1.cmd(`pmemsave 0 ${RAM_MIB << 20} "${mem3}"`);
    await resumed.quit();
    // QEMU is done when it has written the stream; the checkpoint appears (renamed) when the import ends.
    await waitFor('the diff checkpoint', 120_000, () => (existsSync(diff) ? true : undefined));
    const info = JSON.parse((await run('node', [CLI, 'checkpoint', 'inspect', diff, '--json'])).stdout);
    // Most pages (the tmpfs data, the kernel's text) did not change: the diff leaves them to its parent.
    expect(info.absentPages).toBeGreaterThan(info.pages / 2);
    const fromDiff = await resume(cpu, join(dir, name), 'r2', diff, mem3, lastCount2, hash1);
    await fromDiff.quit();

    // restore round trip: the diff's full view as a raw image (its RAM = the guest's at the second save), saved back
    // on the diff as parent: restore wrote every page exactly, so nothing differs and nothing is stored; its export
    // (machine state from the parent chain) resumes the guest.
    const raw = join(dir, name, 'full.raw');
    await run('node', [CLI, 'checkpoint', 'restore', diff, raw]);
    const head = readFileSync(raw).subarray(0, RAM_MIB << 20);
    expect(Buffer.compare(head, readFileSync(mem3))).toBe(0);
    const rt = join(dir, name, 'rt.ckpt');
    const saved = JSON.parse((await run('node', [CLI, 'checkpoint', 'save', raw, rt, '--parent', diff, '--json'])).stdout);
    expect(saved.lz4Pages + saved.rawPages + saved.zeroPages).toBe(0);
    const fromRt = await resume(cpu, join(dir, name), 'r3', rt, mem3, lastCount2, hash1);
    await fromRt.quit();
  });
});
