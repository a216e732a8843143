// A real guest on a disk vmkit serves over NBD (issue 19): Debian's kernel
// boots under QEMU with a busybox initramfs (scripts/_guest.mjs) whose only
// disk is `-drive driver=nbd,server.type=unix,…,reconnect-delay=…` on a
// virtio-blk device, served by `vmkit disk serve` from a qcow2 chain. Inside,
// a writer writes numbered blocks with O_DIRECT and fsync and logs each
// acknowledged one (with its sha256) to the serial console. Meanwhile the spec
// takes a snapshot, a backup and a consolidation through the control socket,
// restarts the server under `--as a`, and hands the disk to `serve --as b`.
// Afterwards: every acknowledged block is in the final image, the backup is
// one point in time (a prefix of the sequence, no torn block), every layer is
// clean by `qemu-img check`, and the guest saw no I/O error.
// TCG unless a KVM probe boot succeeds (scripts/_guest.mjs pickAccel). Runs the
// built CLI (dist/).
import { describe, expect, it } from 'vitest';
import { serveVmkit, type ServedVmkit } from './_cli.js';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { needTool } from './_tools.js';
import { qemuCheck } from './_qemu-img.js';
// Plain ESM shared with scripts/guest-fixture.mjs and bench/nbd-guest.bench.js (types: scripts/_guest.d.mts).
import * as guest from '../scripts/_guest.mjs';
import type { WriterAck as Ack, WriterGuest as Guest } from '../scripts/_guest.mjs';

const run = promisify(execFile);
const bin = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
const hasTools =
  needTool('qemu-system-x86_64', 'qemu-system-x86') && needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils') && needTool('busybox', 'busybox-static') && needTool('cpio', 'cpio') && needTool('modinfo', 'kmod');
const kernel = hasTools ? guest.findKernel() : undefined;
if (hasTools && !kernel) {
  if (process.env.CI === 'true') throw new Error('no /boot/vmlinuz-*-amd64: apt-get install linux-image-amd64');
  console.warn('\n*** SKIPPING the NBD real-guest spec: no /boot/vmlinuz-*-amd64 (apt-get install linux-image-amd64) ***\n');
}

const MiB = 1 << 20;
const BLOCK = guest.WRITER_BLOCK;
const MAX = 4096; // blocks: 16 MiB, more than the run writes under TCG
const STEP = 12; // acknowledged blocks between two events
const PRE = 48 * MiB; // a run of 0x5a the base image holds from before, outside the writer's range

/** `vmkit disk serve <args> --json` in `cwd`, left running; its document must name the address it listens on. */
function serve(cwd: string, ...args: string[]): ServedVmkit {
  const s = serveVmkit(['disk', 'serve', ...args, '--json'], { cwd });
  return {
    ...s,
    json: async () => {
      // An error is JSON too (with --json): only a listening server names its address.
      const j = await s.json();
      if (!j.listen) throw new Error(`vmkit disk serve ${args.join(' ')} did not start: ${s.out()}${s.err()}`);
      return j;
    },
  };
}

/** The longest gap between two acknowledgements (guest clock, ms) among acks a..b. */
function longestStall(acks: Ack[], from: number, to: number): number {
  let worst = 0;
  for (let i = Math.max(1, from); i < Math.min(acks.length, to); i++) worst = Math.max(worst, (acks[i]!.up - acks[i - 1]!.up) * 1000);
  return Math.round(worst);
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const zero = (b: Uint8Array): boolean => b.every((x) => x === 0);

describe.skipIf(!hasTools || !kernel)('a real guest writing to a disk vmkit serves over NBD', () => {
  it('keeps every acknowledged block through a snapshot, a backup, a consolidation, a restart and an ownership handoff', async () => {
    const d = await mkdtemp(join(tmpdir(), 'vmkit-nbdguest-'));
    const base = join(d, 'base.qcow2');
    const vm = join(d, 'vm.qcow2');
    const sock = join(d, 'vm.sock');
    const ctl = join(d, 'vm.ctl');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', base, '64M']);
    await run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5a ${PRE} 1M`, base]);
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', vm]);

    const modules = guest.kernelModules(kernel!, ['virtio_blk', 'virtio_pci']);
    const initrd = guest.buildInitramfs(join(d, 'initramfs'), { init: guest.writerInit(modules, { max: MAX }), modules });
    const accel = await guest.pickAccel(kernel!, d);

    const servers: ServedVmkit[] = [];
    const s1 = serve(d, vm, '--listen', `unix:${sock}`, '--control', ctl);
    servers.push(s1);
    let g: Guest | undefined;
    const events: Record<string, number> = {};
    try {
      expect(await s1.json()).toMatchObject({ control: ctl });
      g = await guest.bootWriter({
        kernel: kernel!,
        initrd,
        accel,
        qmpPath: join(d, 'qmp.sock'),
        // QEMU's NBD client waits up to 60 s for a server to come back before failing a request.
        qemuArgs: ['-drive', `driver=nbd,server.type=unix,server.path=${sock},reconnect-delay=60,if=none,id=d0,cache.direct=on`, '-device', 'virtio-blk-pci,drive=d0'],
      });
      const acked = (n: number): Promise<Guest> => g!.until(`${n} acknowledged blocks`, (x) => x.acks.length >= n);
      const vmkit = async (...a: string[]): Promise<Record<string, unknown>> => JSON.parse((await run(process.execPath, [bin, ...a, '--json'], { cwd: d, encoding: 'utf8' })).stdout) as Record<string, unknown>;
      const mark = (name: string): void => void (events[name] = g!.acks.length);

      await acked(STEP);
      mark('snapshot');
      const snap = await vmkit('disk', 'snapshot', '--server', ctl);
      mark('snapshot-done');
      expect(String(snap.active)).toMatch(/vm-delta-1\.qcow2$/);

      await acked(g.acks.length + STEP);
      await vmkit('disk', 'backup', '--server', ctl, 'backup.raw');

      await acked(g.acks.length + STEP);
      mark('consolidate');
      const cons = await vmkit('disk', 'consolidate', '--server', ctl);
      mark('consolidate-done');
      expect(cons.active).toBe(vm);

      // A restart: the control server stops (in-flight requests answered, image flushed), and an owner takes over.
      await acked(g.acks.length + STEP);
      mark('restart');
      s1.kill();
      expect(await s1.exited).toBe(0);
      const a = serve(d, vm, '--listen', `unix:${sock}`, '--as', 'a', '--lease', '3000');
      servers.push(a);
      expect((await a.json()).epoch).toBe(1);
      await acked(events.restart! + 2);
      mark('restart-done');

      // The handoff: b asks a to release; a drains, flushes, disconnects QEMU, releases; b serves the socket.
      await acked(g.acks.length + STEP);
      mark('handoff');
      const b = serve(d, vm, '--listen', `unix:${sock}`, '--as', 'b', '--lease', '3000');
      servers.push(b);
      expect((await b.json()).epoch).toBe(2);
      expect(await a.exited).toBe(0);
      expect(a.err()).toMatch(/release requested by b/);
      await acked(events.handoff! + 2);
      mark('handoff-done');

      await acked(g.acks.length + STEP);
      g.stop();
      await g.until('the writer to finish', (x) => x.done !== undefined && x.logged);
      expect(await g.exited).toBe(0);
      b.kill();
      expect(await b.exited).toBe(0);
      expect(b.err()).toMatch(/SIGTERM: stopped/);
    } finally {
      g?.kill();
      for (const s of servers) s.kill();
    }
    const n = g!.done!;
    const log = g!.lines;
    // The guest saw no failed request: no dd failure, no kernel I/O error on the console or in dmesg.
    expect(log.filter((l) => guest.IO_ERROR_LINE.test(l))).toEqual([]);
    // Every block the writer wrote was acknowledged, in order.
    expect(g!.acks.map((x) => x.n)).toEqual(Array.from({ length: n }, (_, i) => i));
    expect(n).toBeGreaterThanOrEqual(6 * STEP);
    const token = g!.token!;
    for (const x of g!.acks) expect(x.sha, `block ${x.n}: the guest's checksum`).toBe(sha(guest.writerBlock(x.n, token)));

    // Every layer left is clean; the chain is vm.qcow2 over base.qcow2 again (the delta was consolidated away).
    const layers = readdirSync(d).filter((f) => f.endsWith('.qcow2')).sort();
    expect(layers).toEqual(['base.qcow2', 'vm.qcow2']);
    for (const f of layers) expect(qemuCheck(join(d, f)), f).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });

    // The final image holds every acknowledged block, nothing past them, and the base's old data.
    await run('qemu-img', ['convert', '-O', 'raw', vm, join(d, 'final.raw')]);
    const fin = new Uint8Array(await readFile(join(d, 'final.raw')));
    for (let i = 0; i < n; i++) expect(sha(fin.subarray(i * BLOCK, (i + 1) * BLOCK)), `final block ${i}`).toBe(g!.acks[i]!.sha);
    expect(zero(fin.subarray(n * BLOCK, MAX * BLOCK)), 'nothing past the last acknowledged block').toBe(true);
    expect(fin.subarray(PRE, PRE + MiB).every((x) => x === 0x5a)).toBe(true);

    // The backup is one point in time: blocks 0..k-1 whole, nothing after, k at least what was acknowledged
    // before the snapshot was asked for. Upper bound: what was acknowledged by the time it returned, plus the
    // write in flight, plus a few whose ACK lines were still in the guest's console buffer (the writer prints
    // to the tty and goes on; the host reads the UART later).
    const bk = new Uint8Array(await readFile(join(d, 'backup.raw')));
    expect(bk.length).toBe(64 * MiB);
    let k = 0;
    while (k < MAX && sha(bk.subarray(k * BLOCK, (k + 1) * BLOCK)) === sha(guest.writerBlock(k, token))) k++;
    for (let i = k; i < MAX; i++) if (!zero(bk.subarray(i * BLOCK, (i + 1) * BLOCK))) expect.fail(`backup block ${i} after the prefix of ${k} is neither whole nor empty`);
    expect(k).toBeGreaterThanOrEqual(events.snapshot!);
    expect(k).toBeLessThanOrEqual(events['snapshot-done']! + 4);
    expect(bk.subarray(PRE, PRE + MiB).every((x) => x === 0x5a)).toBe(true);

    const acks = g!.acks;
    console.log(
      `nbd-guest (${accel}): ${n} blocks; backup prefix ${k}; longest write stall: overall ${longestStall(acks, 1, n)} ms, ` +
        `consolidation ${longestStall(acks, events.consolidate!, events['consolidate-done']! + 2)} ms, ` +
        `restart ${longestStall(acks, events.restart!, events['restart-done']!)} ms, handoff ${longestStall(acks, events.handoff!, events['handoff-done']!)} ms`,
    );
    await rm(d, { recursive: true, force: true });
  }, 300_000);
});
