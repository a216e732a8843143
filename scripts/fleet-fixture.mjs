#!/usr/bin/env node
/**
 * A fleet of real guests for the shared page store's benchmark
 * (bench/checkpoint-store.bench.js): ten QEMU (TCG) guests booted from the
 * same Debian kernel and the same busybox initramfs, each told by its kernel
 * command line (`vmkit.work=<name>`) to run a different workload, stopped in
 * user space and dumped from QEMU's monitor:
 *
 *   .cache/fleet/<workload>/mem.bin    physical memory (pmemsave 0 <ram>)
 *   .cache/fleet/meta.json             kernel, QEMU, RAM size, key, workloads
 *
 * Guests boot `nokaslr`: with KASLR every boot relocates the kernel's text
 * and data to a different address, so no two guests would share those pages
 * whatever the store does (a fleet restored from one snapshot shares them).
 * They boot WORKERS at a time (TCG is one host thread per guest).
 *
 * Cached by a key over the init script, the boot options, the kernel, busybox
 * and the QEMU version; nothing here is committed (docs/DEVELOPING.md).
 *
 * Usage: node scripts/fleet-fixture.mjs [--force] [--workers N]
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
export const FLEET_DIR = join(ROOT, '.cache', 'fleet');
const RAM_MIB = 256;
const BOOT_TIMEOUT_MS = 600_000;
/** Bump when boot() changes what the guests see (machine, CPU, command line, RAM). */
const BOOT_KEY = `pc tcg qemu64 smp1 ${RAM_MIB}M nokaslr v1`;

/** Workload name -> shell lines run by /init before it reports ready (busybox applets only). */
export const WORKLOADS = {
  idle: ':',
  awk: `/bin/busybox awk 'BEGIN { for (i = 0; i < 150000; i++) a[i] = i * i; while (1) {} }' &`,
  sort: '/bin/busybox seq 1 300000 | /bin/busybox sort -r > /tmp/sorted',
  gzip: '/bin/busybox gzip -c /bin/busybox > /tmp/busybox.gz',
  noise: '/bin/busybox dd if=/dev/urandom of=/tmp/noise bs=64k count=32 2>/dev/null',
  sysfs: '/bin/busybox ls -lR /sys /proc/sys > /tmp/ls.txt 2>/dev/null',
  copy: '/bin/busybox cp /bin/busybox /tmp/bb1 && /bin/busybox cp /tmp/bb1 /tmp/bb2',
  hexdump: '/bin/busybox hexdump -C /bin/busybox | /bin/busybox head -c 4000000 > /tmp/hex',
  md5: '/bin/busybox find / -xdev -type f 2>/dev/null | /bin/busybox xargs /bin/busybox md5sum > /tmp/md5 2>/dev/null',
  text: `/bin/busybox seq 1 100000 | /bin/busybox awk '{ print $1, $1 * $1, "line" }' | /bin/busybox gzip -1 > /tmp/t.gz`,
};

function initScript() {
  const cases = Object.entries(WORKLOADS)
    .map(([k, v]) => `  ${k}) ${v} ;;`)
    .join('\n');
  return `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null
/bin/busybox mount -t tmpfs tmp /tmp
w=$(/bin/busybox sed -n 's/.*vmkit\\.work=\\([a-z0-9]*\\).*/\\1/p' /proc/cmdline)
case "$w" in
${cases}
  *) echo "VMKIT-UNKNOWN-WORK $w" ;;
esac
/bin/busybox sync
echo "VMKIT-READY $w"
while :; do :; done
`;
}

function die(msg) {
  process.stderr.write(`fleet-fixture: ${msg}\n`);
  process.exit(1);
}

async function boot(work, kernel, initrd, dir) {
  const sockPath = join(dir, `${work}.sock`);
  const serial = join(dir, `${work}.log`);
  const args = [
    '-machine', 'pc,accel=tcg',
    '-cpu', 'qemu64',
    '-smp', '1',
    '-m', `${RAM_MIB}M`,
    '-kernel', kernel,
    '-initrd', initrd,
    '-append', `console=ttyS0 panic=-1 quiet loglevel=3 nokaslr vmkit.work=${work}`,
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
      const log = existsSync(serial) ? readFileSync(serial, 'latin1') : '';
      if (qemu.exitCode !== null) throw new Error(`${work}: qemu exited early (${qemu.exitCode}): ${stderr}; serial:\n${log.slice(-3000)}`);
      if (log.includes('VMKIT-UNKNOWN-WORK')) throw new Error(`${work}: init did not know its workload`);
      if (log.includes(`VMKIT-READY ${work}`)) break;
      if (Date.now() - t0 > BOOT_TIMEOUT_MS) throw new Error(`${work}: no VMKIT-READY in ${BOOT_TIMEOUT_MS / 1000}s; serial:\n${log.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 500));
    }
    await new Promise((r) => setTimeout(r, 1000));
    const mon = await monitor(sockPath);
    await mon.cmd('stop');
    const memPath = join(dir, `${work}.mem`);
    await mon.cmd(`pmemsave 0 ${RAM_MIB * 1024 * 1024} "${memPath}"`);
    await mon.cmd('quit').catch(() => {});
    mon.close();
    return { memPath, seconds: (Date.now() - t0) / 1000 };
  } finally {
    if (qemu.exitCode === null) qemu.kill('SIGKILL');
    await exited;
  }
}

/** The fleet's cache key (changes when the script, the kernel, busybox or QEMU do). */
export function fleetKey(kernel) {
  const busybox = which('busybox') ?? '/bin/busybox';
  const qemuVersion = execFileSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' }).split('\n')[0];
  return {
    qemuVersion,
    key: createHash('sha256')
      // What the guests run, not this file: editing a comment here keeps the cached fleet.
      .update(initScript())
      .update(BOOT_KEY)
      .update(fileKey(kernel))
      .update(fileKey(busybox))
      .update(qemuVersion)
      .digest('hex')
      .slice(0, 16),
  };
}

/**
 * Makes (or finds cached) the fleet; returns the list of { work, path } memory images.
 * Throws when a tool is missing.
 */
export async function fleet({ force = false, workers = 3, log = (s) => process.stderr.write(s + '\n') } = {}) {
  if (!which('qemu-system-x86_64')) throw new Error('no qemu-system-x86_64: apt-get install qemu-system-x86');
  if (!which('cpio')) throw new Error('no cpio: apt-get install cpio');
  const kernel = findKernel();
  if (!kernel) throw new Error('no /boot/vmlinuz-*-amd64: apt-get install linux-image-amd64');
  const { key, qemuVersion } = fleetKey(kernel);
  const metaPath = join(FLEET_DIR, 'meta.json');
  const list = () => Object.keys(WORKLOADS).map((work) => ({ work, path: join(FLEET_DIR, work, 'mem.bin') }));
  if (!force && existsSync(metaPath)) {
    try {
      if (JSON.parse(readFileSync(metaPath, 'utf8')).key === key && list().every((g) => existsSync(g.path))) return list();
    } catch {
      // rebuilt below
    }
  }
  const dir = join(tmpdir(), `vmkit-fleet-${process.pid}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  try {
    const initrd = buildInitramfs(dir, { init: initScript() });
    const todo = Object.keys(WORKLOADS);
    const seconds = {};
    let failed;
    const run = async () => {
      for (let w = todo.shift(); w !== undefined && failed === undefined; w = todo.shift()) {
        const out = join(FLEET_DIR, w);
        if (!force && existsSync(join(out, 'mem.bin')) && existsSync(join(out, 'key')) && readFileSync(join(out, 'key'), 'utf8') === key) {
          log(`fleet-fixture: ${w} cached`);
          continue; // a guest dumped by an earlier, interrupted run
        }
        let r;
        try {
          r = await boot(w, kernel, initrd, dir);
        } catch (e) {
          failed ??= e; // the other workers finish the boot they are in (and stop their QEMU), then stop
          return;
        }
        seconds[w] = r.seconds;
        mkdirSync(out, { recursive: true });
        renameSync(r.memPath, join(out, 'mem.bin'));
        writeFileSync(join(out, 'key'), key);
        log(`fleet-fixture: ${w} booted and dumped in ${r.seconds.toFixed(0)} s`);
      }
    };
    // Every worker ends before an error is thrown: none leaves a QEMU running behind the caller's exit.
    await Promise.all(Array.from({ length: Math.max(1, workers) }, run));
    if (failed !== undefined) throw failed;
    writeFileSync(metaPath, JSON.stringify({ key, kernel, qemu: qemuVersion, ramBytes: RAM_MIB << 20, cmdline: 'nokaslr vmkit.work=<workload>', workloads: WORKLOADS, seconds }, null, 2) + '\n');
    return list();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const argv = process.argv.slice(2);
  const wi = argv.indexOf('--workers');
  try {
    const g = await fleet({ force: argv.includes('--force'), workers: wi >= 0 ? Number(argv[wi + 1]) : 3 });
    process.stdout.write(`fleet-fixture: ${g.length} guests in ${FLEET_DIR}\n`);
  } catch (e) {
    die(e.message);
  }
}
