/**
 * Shared pieces of the real-guest scripts and specs: find Debian's kernel and
 * its modules, build a busybox initramfs around an /init script, and talk to
 * QEMU's human monitor (HMP) and machine protocol (QMP) over unix sockets.
 *
 * Users: scripts/guest-fixture.mjs (memory fixture), test/nbd-guest.node.test.ts
 * and bench/nbd-guest.bench.js (a guest whose disk vmkit serves over NBD).
 * Every failure is thrown as an Error naming what to install or what went wrong.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync, chmodSync, statSync } from 'node:fs';
import { createConnection } from 'node:net';
import { basename, join } from 'node:path';

/** The path of `cmd` on PATH, or undefined. */
export function which(cmd) {
  try {
    return execFileSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
}

/** Debian's newest /boot/vmlinuz-*-amd64 (or VMKIT_GUEST_KERNEL); undefined when there is none. */
export function findKernel() {
  if (process.env.VMKIT_GUEST_KERNEL) return process.env.VMKIT_GUEST_KERNEL;
  const boot = '/boot';
  const names = existsSync(boot) ? readdirSync(boot).filter((n) => /^vmlinuz-.*amd64$/.test(n)).sort() : [];
  return names.length === 0 ? undefined : join(boot, names[names.length - 1]);
}

/** A cache-key fragment for a file: path, size and mtime. */
export function fileKey(path) {
  const st = statSync(path);
  return `${path}:${st.size}:${st.mtimeMs}`;
}

/**
 * The module files `names` need for `kernel` (its version from the file name,
 * vmlinuz-<version>), dependencies first, as `modinfo -F depends` lists them.
 * Modules built into the kernel have no file and are left out.
 */
export function kernelModules(kernel, names) {
  const version = basename(kernel).replace(/^vmlinuz-/, '');
  if (!which('modinfo')) throw new Error('no modinfo: apt-get install kmod');
  const order = [];
  const seen = new Set();
  const visit = (name) => {
    if (seen.has(name)) return;
    seen.add(name);
    let file;
    let depends;
    try {
      file = execFileSync('modinfo', ['-k', version, '-F', 'filename', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
      depends = execFileSync('modinfo', ['-k', version, '-F', 'depends', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    } catch (e) {
      throw new Error(`module ${name} of kernel ${version} not found (modinfo): ${e.stderr ?? e.message}`);
    }
    if (file === '(builtin)' || file === '') return;
    for (const d of depends.split(',').filter(Boolean)) visit(d);
    order.push({ name, file });
  };
  for (const n of names) visit(n);
  return order;
}

/**
 * A newc cpio archive in `dir`: busybox (with its applet links), /dev/console,
 * the given modules under /lib/modules/ (decompressed: busybox insmod takes
 * plain .ko files), and `init` as /init. Returns the archive's path.
 */
export function buildInitramfs(dir, { init, modules = [], populate }) {
  const busybox = which('busybox') ?? '/bin/busybox';
  if (!existsSync(busybox)) throw new Error('no busybox: apt-get install busybox-static');
  if (!which('cpio')) throw new Error('no cpio: apt-get install cpio');
  const root = join(dir, 'root');
  for (const d of ['bin', 'dev', 'proc', 'sys', 'tmp', 'lib/modules']) mkdirSync(join(root, d), { recursive: true });
  execFileSync('cp', [busybox, join(root, 'bin', 'busybox')]);
  execFileSync(join(root, 'bin', 'busybox'), ['--install', '-s', join(root, 'bin')], { stdio: 'ignore' });
  // Without /dev/console the kernel opens no console for init and its output is lost.
  execFileSync('mknod', ['-m', '600', join(root, 'dev', 'console'), 'c', '5', '1']);
  for (const { name, file } of modules) {
    const out = join(root, 'lib', 'modules', `${name}.ko`);
    if (file.endsWith('.ko')) execFileSync('cp', [file, out]);
    else if (file.endsWith('.ko.xz')) writeFileSync(out, execFileSync('xz', ['-dc', file], { maxBuffer: 64 << 20 }));
    else if (file.endsWith('.ko.zst')) writeFileSync(out, execFileSync('zstd', ['-dc', file], { maxBuffer: 64 << 20 }));
    else if (file.endsWith('.ko.gz')) writeFileSync(out, execFileSync('gzip', ['-dc', file], { maxBuffer: 64 << 20 }));
    else throw new Error(`module ${name}: unknown file type ${file}`);
  }
  // populate(root): a caller's extra files (real binaries and libraries for a guest whose memory they fill).
  populate?.(root);
  writeFileSync(join(root, 'init'), init);
  chmodSync(join(root, 'init'), 0o755);
  const out = join(dir, 'initramfs.cpio');
  execFileSync('sh', ['-c', `cd "${root}" && find . | cpio -o -H newc --quiet > "${out}"`]);
  return out;
}

/** The /init lines that load `modules` (as buildInitramfs placed them), in order. */
export function insmodLines(modules) {
  return modules.map(({ name }) => `/bin/busybox insmod /lib/modules/${name}.ko || echo "INSMOD-FAILED ${name}"`).join('\n');
}

async function connect(sockPath, timeoutMs = 30_000) {
  const t0 = Date.now();
  for (;;) {
    try {
      const sock = createConnection(sockPath);
      await new Promise((res, rej) => {
        sock.once('connect', res);
        sock.once('error', rej);
      });
      return sock;
    } catch (e) {
      if (Date.now() - t0 > timeoutMs) throw new Error(`cannot connect to ${sockPath}: ${e.message}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** Sends HMP commands over the monitor socket, one at a time, and collects each answer. */
export async function monitor(sockPath) {
  const sock = await connect(sockPath);
  let buf = '';
  let waiter;
  let closed = false;
  sock.on('data', (d) => {
    buf += d.toString('latin1');
    waiter?.();
  });
  // `quit` answers with no prompt: QEMU closes the socket (before, the caller waited out the timeout).
  sock.on('close', () => {
    closed = true;
    waiter?.();
  });
  const untilPrompt = () =>
    new Promise((res, rej) => {
      const t = setTimeout(() => rej(new Error('monitor did not answer')), 120_000);
      const check = () => {
        if (closed) {
          clearTimeout(t);
          waiter = undefined;
          return res(buf);
        }
        const i = buf.lastIndexOf('(qemu) ');
        if (i >= 0 && i + 7 === buf.length) {
          clearTimeout(t);
          waiter = undefined;
          const text = buf.slice(0, i);
          buf = '';
          res(text);
        }
      };
      waiter = check;
      check();
    });
  await untilPrompt(); // banner
  return {
    async cmd(line) {
      sock.write(line + '\n');
      const raw = await untilPrompt();
      // The monitor echoes the command (with terminal escapes) on the first line.
      const lines = raw.replace(/\r/g, '').split('\n');
      lines.shift();
      return lines.join('\n');
    },
    close() {
      sock.destroy();
    },
  };
}

/**
 * A QMP client: `execute(cmd, args)` resolves to the command's `return` (or
 * rejects with its `error`); `events` collects asynchronous events, and
 * `waitEvent(name, pred)` waits for one.
 */
export async function qmp(sockPath) {
  const sock = await connect(sockPath);
  let buf = '';
  const pending = [];
  const events = [];
  let eventWaiters = [];
  let greeted;
  const greeting = new Promise((r) => (greeted = r));
  sock.on('data', (d) => {
    buf += d.toString('utf8');
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (!line) continue;
      const msg = JSON.parse(line);
      if (msg.QMP) greeted();
      else if (msg.event) {
        msg.at = Date.now();
        events.push(msg);
        for (const w of eventWaiters) w();
      } else pending.shift()?.(msg);
    }
  });
  const execute = (cmd, args) =>
    new Promise((res, rej) => {
      pending.push((m) => (m.error ? rej(new Error(`${cmd}: ${m.error.class}: ${m.error.desc}`)) : res(m.return)));
      sock.write(JSON.stringify(args ? { execute: cmd, arguments: args } : { execute: cmd }) + '\n');
    });
  await greeting;
  await execute('qmp_capabilities');
  return {
    execute,
    events,
    waitEvent(name, pred = () => true, timeoutMs = 120_000) {
      return new Promise((res, rej) => {
        const t = setTimeout(() => {
          eventWaiters = eventWaiters.filter((w) => w !== check);
          rej(new Error(`no QMP event ${name} in ${timeoutMs} ms`));
        }, timeoutMs);
        const check = () => {
          const e = events.find((x) => x.event === name && pred(x));
          if (!e) return;
          clearTimeout(t);
          eventWaiters = eventWaiters.filter((w) => w !== check);
          res(e);
        };
        eventWaiters.push(check);
        check();
      });
    },
    close() {
      sock.destroy();
    },
  };
}

/** The block size of the writer guest (one numbered block per write). */
export const WRITER_BLOCK = 4096;

/**
 * /init of the writer guest: loads the virtio block modules, then writes
 * numbered blocks 0, 1, 2 … to /dev/vda, one at a time, each with O_DIRECT and
 * an fsync (a FLUSH down to the disk), and logs every acknowledged one to the
 * console as `ACK <n> <uptime s> <sha256 of the block>`. A failed write logs
 * `WERR <n> <dd's message>` and stops. Any line on the console's input (or
 * `max` blocks) ends the run: `WRITER-DONE <count>`, the kernel log between
 * DMESG-BEGIN and DMESG-END, power off. Block n's content is
 * {@link writerBlock}(n, token), the token printed first as
 * `WRITER-START <token> <max>` (random per boot, so stale data never matches).
 */
export function writerInit(modules, { max }) {
  return `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null
/bin/busybox mount -t tmpfs tmp /tmp
${insmodLines(modules)}
n=0
while [ ! -b /dev/vda ] && [ $n -lt 200 ]; do sleep 0.1; n=$((n+1)); done
if [ ! -b /dev/vda ]; then echo NO-DISK; poweroff -f; fi
TOK=$(dd if=/dev/urandom bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d ' \\n')
echo "WRITER-START $TOK ${max}"
( read x < /dev/console; : > /tmp/stop ) &
i=0
while [ $i -lt ${max} ] && [ ! -e /tmp/stop ]; do
  l=0
  { while [ $l -lt 64 ]; do printf 'vmkit %08d %02d %-45s\\n' $i $l $TOK; l=$((l+1)); done; } > /tmp/b
  if dd if=/tmp/b of=/dev/vda bs=${WRITER_BLOCK} seek=$i count=1 oflag=direct conv=notrunc,fsync 2>/tmp/err; then
    read up rest < /proc/uptime
    echo "ACK $i $up $(sha256sum < /tmp/b)"
  else
    echo "WERR $i $(cat /tmp/err)"
    break
  fi
  i=$((i+1))
done
echo "WRITER-DONE $i"
echo DMESG-BEGIN
dmesg
echo DMESG-END
sync
# The console is written asynchronously: let the tty drain before the power goes (or the last lines are lost).
sleep 1
poweroff -f
`;
}

/** The bytes the writer guest writes as block `n` with `token` (64 lines of 64 bytes naming both). */
export function writerBlock(n, token) {
  let s = '';
  for (let l = 0; l < 64; l++) s += `vmkit ${String(n).padStart(8, '0')} ${String(l).padStart(2, '0')} ${token.padEnd(45, ' ')}\n`;
  return new TextEncoder().encode(s);
}

/** Kernel log lines that mean the guest saw a failed disk request. */
export const IO_ERROR_LINE = /I\/O error|blk_update_request|Buffer I\/O|critical medium|print_req_error|virtio_blk.*(error|timeout)|INSMOD-FAILED|NO-DISK|WERR/i;

/**
 * Boots the writer guest: `kernel`, `initrd`, the extra QEMU arguments (its
 * disk), a QMP socket. The console is QEMU's stdio: `lines` grows as it
 * prints, `acks` holds each ACK as { n, up (guest seconds), sha, at (host ms) }, `done` the
 * WRITER-DONE count, `logged` turns true once the kernel log is printed (DMESG-END).
 */
export async function bootWriter({ kernel, initrd, accel = 'tcg', qemuArgs, qmpPath, ramMiB = 256 }) {
  const { spawn } = await import('node:child_process');
  const args = [
    '-machine', `pc,accel=${accel}`,
    '-cpu', accel === 'kvm' ? 'host' : 'qemu64',
    '-smp', '1',
    '-m', `${ramMiB}M`,
    '-kernel', kernel,
    '-initrd', initrd,
    '-append', 'console=ttyS0 panic=-1 quiet',
    '-display', 'none',
    '-chardev', 'stdio,id=con0,signal=off',
    '-serial', 'chardev:con0',
    '-qmp', `unix:${qmpPath},server=on,wait=off`,
    '-no-reboot',
    '-nodefaults',
    ...qemuArgs,
  ];
  const qemu = spawn('qemu-system-x86_64', args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const g = { qemu, lines: [], acks: [], token: undefined, max: undefined, done: undefined, logged: false, stderr: '', exited: undefined };
  // 'close', not 'exit': the console's last lines may still be in the pipe when the process exits.
  let closed = false;
  g.exited = new Promise((res) => qemu.once('close', (code) => res(code)));
  let part = '';
  const waiters = new Set();
  qemu.stderr.on('data', (d) => (g.stderr += d));
  qemu.stdout.on('data', (d) => {
    part += d.toString('latin1');
    let i;
    while ((i = part.indexOf('\n')) >= 0) {
      const line = part.slice(0, i).replace(/\r/g, '');
      part = part.slice(i + 1);
      g.lines.push(line);
      let m;
      if ((m = /ACK (\d+) ([\d.]+) ([0-9a-f]{64})/.exec(line))) g.acks.push({ n: Number(m[1]), up: Number(m[2]), sha: m[3], at: Date.now() });
      else if ((m = /WRITER-START ([0-9a-f]{32}) (\d+)/.exec(line))) ((g.token = m[1]), (g.max = Number(m[2])));
      else if ((m = /WRITER-DONE (\d+)/.exec(line))) g.done = Number(m[1]);
      else if (line.includes('DMESG-END')) g.logged = true;
    }
    for (const w of waiters) w();
  });
  qemu.once('close', () => {
    closed = true;
    for (const w of waiters) w();
  });
  /** Resolves once pred(g) holds; rejects when QEMU exits first or after timeoutMs. */
  g.until = (what, pred, timeoutMs = 180_000) =>
    new Promise((res, rej) => {
      const t = setTimeout(() => (waiters.delete(check), rej(new Error(`guest: no ${what} in ${timeoutMs} ms; console tail:\n${g.lines.slice(-30).join('\n')}\n${g.stderr}`))), timeoutMs);
      const check = () => {
        if (pred(g)) return (clearTimeout(t), waiters.delete(check), res(g));
        if (closed) return (clearTimeout(t), waiters.delete(check), rej(new Error(`guest: QEMU exited (${qemu.exitCode}) before ${what}; console tail:\n${g.lines.slice(-30).join('\n')}\n${g.stderr}`)));
      };
      waiters.add(check);
      check();
    });
  /** Asks the writer to stop (a line on its console). */
  g.stop = () => qemu.stdin.write('stop\n');
  g.kill = () => {
    if (qemu.exitCode === null) qemu.kill('SIGKILL');
  };
  return g;
}

/**
 * 'kvm' when /dev/kvm is usable and a probe guest really boots under it (on
 * some hosts /dev/kvm exists but runs no guest), else 'tcg'.
 * VMKIT_GUEST_ACCEL=tcg|kvm skips the probe.
 */
export async function pickAccel(kernel, workDir, timeoutMs = 20_000) {
  if (process.env.VMKIT_GUEST_ACCEL) return process.env.VMKIT_GUEST_ACCEL;
  const { accessSync, constants } = await import('node:fs');
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    return 'tcg';
  }
  const { spawn } = await import('node:child_process');
  const dir = join(workDir, 'kvm-probe');
  mkdirSync(dir, { recursive: true });
  const initrd = buildInitramfs(dir, { init: '#!/bin/busybox sh\necho VMKIT-KVM-PROBE-OK\n/bin/busybox poweroff -f\n' });
  const q = spawn('qemu-system-x86_64', ['-machine', 'pc,accel=kvm', '-cpu', 'host', '-m', '128M', '-kernel', kernel, '-initrd', initrd, '-append', 'console=ttyS0 panic=-1 quiet', '-display', 'none', '-serial', 'stdio', '-no-reboot', '-nodefaults'], { stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  q.stdout.on('data', (d) => (out += d));
  const ok = await new Promise((res) => {
    const t = setTimeout(() => res(false), timeoutMs);
    q.once('exit', () => (clearTimeout(t), res(out.includes('VMKIT-KVM-PROBE-OK'))));
  });
  if (q.exitCode === null) q.kill('SIGKILL');
  return ok ? 'kvm' : 'tcg';
}
