#!/usr/bin/env node
/**
 * Real-guest fixture: boots Debian's Linux kernel under QEMU (TCG) with a
 * busybox initramfs, lets it reach user space, stops the CPU and saves, from
 * QEMU's own monitor:
 *
 *   .cache/guest/<variant>/mem.bin        physical memory (pmemsave 0 <ram>)
 *   .cache/guest/<variant>/registers.txt  `info registers` (CR3, CR4, EFER …)
 *   .cache/guest/<variant>/cr3.txt        CR3 as hex, from registers.txt
 *   .cache/guest/<variant>/tlb.txt        `info tlb`: QEMU's own page walk
 *   .cache/guest/<variant>/meta.json      kernel, QEMU version, RAM size, key
 *
 * Variants: `x86_64` (4-level paging) and `x86_64-la57` (5-level: the CPU
 * model gets LA57 and Debian's kernel, built with CONFIG_X86_5LEVEL, uses it).
 *
 * The output is cached by a key over this script, the kernel file, busybox and
 * the QEMU version; a second run with the same key does nothing. Nothing here
 * is committed: the memory images are generated (docs/DEVELOPING.md).
 *
 * Usage: node scripts/guest-fixture.mjs [x86_64|x86_64-la57|all] [--force]
 * Needs (Debian): qemu-system-x86, linux-image-amd64, busybox-static, cpio.
 */
import { spawn, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync, renameSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { buildInitramfs, fileKey, findKernel, monitor, which } from './_guest.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const CACHE = join(ROOT, '.cache', 'guest');
const RAM_MIB = 256;
const BOOT_TIMEOUT_MS = 240_000;

const VARIANTS = {
  // qemu64 has no LA57, so the kernel runs 4-level paging.
  x86_64: { cpu: 'qemu64' },
  // With LA57 offered the kernel switches to 5-level paging at boot.
  'x86_64-la57': { cpu: 'qemu64,+la57' },
};

function die(msg) {
  process.stderr.write(`guest-fixture: ${msg}\n`);
  process.exit(1);
}

function findKernelOrDie() {
  return findKernel() ?? die('no /boot/vmlinuz-*-amd64: apt-get install linux-image-amd64');
}

// init: mount the pseudo file systems, run a few programs so user space owns
// real mappings (a shell, a file in tmpfs, an awk loop), then spin in a
// user-space loop so the CPU is most likely in a process when QEMU stops it.
const INIT = `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null
/bin/busybox mount -t tmpfs tmp /tmp
/bin/busybox dd if=/dev/urandom of=/tmp/noise bs=64k count=64 2>/dev/null
/bin/busybox awk 'BEGIN { for (i = 0; i < 20000; i++) a[i] = i * i; print "awk", length(a) }'
/bin/busybox sha256sum /tmp/noise
echo VMKIT-READY
while :; do :; done
`;

async function boot(variant, kernel, initrd, work) {
  const { cpu } = VARIANTS[variant];
  const sockPath = join(work, 'mon.sock');
  const serial = join(work, 'serial.log');
  const args = [
    '-machine', 'pc,accel=tcg',
    '-cpu', cpu,
    '-smp', '1',
    '-m', `${RAM_MIB}M`,
    '-kernel', kernel,
    '-initrd', initrd,
    '-append', 'console=ttyS0 panic=-1 quiet loglevel=3',
    '-display', 'none',
    '-serial', `file:${serial}`,
    '-monitor', `unix:${sockPath},server=on,wait=off`,
    '-no-reboot',
    '-nodefaults',
  ];
  const qemu = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  qemu.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise((res) => qemu.once('exit', res));
  try {
    const t0 = Date.now();
    for (;;) {
      if (qemu.exitCode !== null) die(`qemu exited early (${qemu.exitCode}): ${stderr}`);
      const log = existsSync(serial) ? readFileSync(serial, 'latin1') : '';
      if (log.includes('VMKIT-READY')) break;
      if (Date.now() - t0 > BOOT_TIMEOUT_MS) die(`guest did not reach user space in ${BOOT_TIMEOUT_MS / 1000}s; serial:\n${log.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 500));
    }
    // Let the spin loop run so the stop lands in user space most of the time.
    await new Promise((r) => setTimeout(r, 1500));
    const mon = await monitor(sockPath);
    await mon.cmd('stop');
    const registers = await mon.cmd('info registers');
    const tlb = await mon.cmd('info tlb');
    const memPath = join(work, 'mem.bin');
    await mon.cmd(`pmemsave 0 ${RAM_MIB * 1024 * 1024} "${memPath}"`);
    await mon.cmd('quit').catch(() => {});
    mon.close();
    return { registers, tlb, memPath, serial: readFileSync(serial, 'latin1') };
  } finally {
    if (qemu.exitCode === null) qemu.kill('SIGKILL');
    await exited;
  }
}

async function make(variant, force) {
  if (!which('qemu-system-x86_64')) die('no qemu-system-x86_64: apt-get install qemu-system-x86');
  if (!which('cpio')) die('no cpio: apt-get install cpio');
  const kernel = findKernelOrDie();
  const qemuVersion = execFileSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' }).split('\n')[0];
  const busybox = which('busybox') ?? '/bin/busybox';
  const key = createHash('sha256')
    .update(readFileSync(fileURLToPath(import.meta.url)))
    .update(readFileSync(fileURLToPath(new URL('./_guest.mjs', import.meta.url))))
    .update(fileKey(kernel))
    .update(fileKey(busybox))
    .update(qemuVersion)
    .update(variant)
    .digest('hex')
    .slice(0, 16);
  const out = join(CACHE, variant);
  const metaPath = join(out, 'meta.json');
  if (!force && existsSync(metaPath)) {
    try {
      if (JSON.parse(readFileSync(metaPath, 'utf8')).key === key && existsSync(join(out, 'mem.bin'))) {
        process.stdout.write(`guest-fixture: ${variant} cached in ${out}\n`);
        return;
      }
    } catch {
      // A broken meta.json is rebuilt below.
    }
  }
  const work = join(tmpdir(), `vmkit-guest-${process.pid}-${variant}`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  try {
    const t0 = Date.now();
    const initrd = buildInitramfs(work, { init: INIT });
    const r = await boot(variant, kernel, initrd, work);
    const m = /CR3=([0-9a-fA-F]+)/.exec(r.registers);
    if (!m) die(`no CR3 in info registers:\n${r.registers}`);
    // The paging mode the guest really runs, from CR4.LA57 (bit 12): a kernel or CPU model that
    // ignored +la57 would otherwise give a 4-level fixture under the 5-level name.
    const cr4 = /CR4=([0-9a-fA-F]+)/.exec(r.registers);
    if (!cr4) die(`no CR4 in info registers:\n${r.registers}`);
    const la57 = ((parseInt(cr4[1], 16) >> 12) & 1) === 1;
    if (la57 !== (variant === 'x86_64-la57')) die(`${variant}: the guest runs ${la57 ? '5' : '4'}-level paging (CR4=${cr4[1]})`);
    const tlbLines = r.tlb.split('\n').filter((l) => /^[0-9a-f]{16}: /.test(l));
    if (tlbLines.length < 100) die(`info tlb printed only ${tlbLines.length} mappings`);
    // Write into a temp folder, then rename, so a killed run never leaves a half fixture.
    const tmpOut = `${out}.tmp-${process.pid}`;
    rmSync(tmpOut, { recursive: true, force: true });
    mkdirSync(tmpOut, { recursive: true });
    renameSync(r.memPath, join(tmpOut, 'mem.bin'));
    writeFileSync(join(tmpOut, 'registers.txt'), r.registers);
    writeFileSync(join(tmpOut, 'cr3.txt'), `0x${m[1].toLowerCase()}\n`);
    writeFileSync(join(tmpOut, 'tlb.txt'), tlbLines.join('\n') + '\n');
    writeFileSync(join(tmpOut, 'serial.log'), r.serial);
    const meta = {
      key,
      variant,
      kernel,
      qemu: qemuVersion,
      ramBytes: RAM_MIB * 1024 * 1024,
      mode: la57 ? 'x86-64-5level' : 'x86-64',
      cr3: `0x${m[1].toLowerCase()}`,
      mappings: tlbLines.length,
      seconds: (Date.now() - t0) / 1000,
    };
    writeFileSync(join(tmpOut, 'meta.json'), JSON.stringify(meta, null, 2) + '\n');
    rmSync(out, { recursive: true, force: true });
    mkdirSync(CACHE, { recursive: true });
    renameSync(tmpOut, out);
    process.stdout.write(`guest-fixture: ${variant}: ${meta.mappings} mappings, CR3 ${meta.cr3}, ${meta.seconds}s → ${out}\n`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

const argv = process.argv.slice(2);
const force = argv.includes('--force');
const which_ = argv.find((a) => !a.startsWith('--')) ?? 'all';
const list = which_ === 'all' ? Object.keys(VARIANTS) : [which_];
for (const v of list) {
  if (!(v in VARIANTS)) die(`unknown variant ${v}; one of ${Object.keys(VARIANTS).join(', ')}, all`);
  await make(v, force);
}
