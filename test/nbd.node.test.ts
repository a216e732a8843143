// The NBD server against real clients: qemu-img and qemu-io (QEMU's NBD
// client), libnbd's nbdinfo and nbdcopy. They read what the image holds, write
// through the server into qcow2 chains that `qemu-img check` then finds clean,
// see the same allocation map as `vmkit disk map`, and do the same over TLS.
// The server runs in this process, so every client runs as an async child.
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, readFile, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { needTool } from './_tools.js';
import { diff, qemuCheck } from './_qemu-img.js';
import { openImage } from '../bindings/disk/image.js';
import { mapExtents, toQemuMap, type BlockDevice } from '../bindings/disk/device.js';
import { serveNbd, type NbdServer } from '../bindings/disk/nbd/server.js';

const run = promisify(execFile);
const hasTools = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils') && needTool('nbdinfo', 'libnbd-bin') && needTool('nbdcopy', 'libnbd-bin') && needTool('openssl', 'openssl');

let dir = '';
const p = (n: string): string => join(dir, n);
const sh = async (cmd: string, ...args: string[]): Promise<string> => (await run(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20 })).stdout;
const qimg = (...a: string[]): Promise<string> => sh('qemu-img', ...a);

async function serve(file: string, o: { readOnly?: boolean; name?: string; tls?: boolean } = {}): Promise<{ server: NbdServer; dev: BlockDevice; uri: string; stop: () => Promise<void> }> {
  const dev = await openImage(file, { readOnly: o.readOnly ?? false });
  const sock = p(`s-${Math.random().toString(36).slice(2)}.sock`);
  const server = await serveNbd({
    listen: `unix:${sock}`,
    exports: [{ name: o.name ?? 'vm', device: dev, description: 'a vmkit test disk' }],
    ...(o.tls ? { tls: { cert: await readFile(p('pki/server-cert.pem')), key: await readFile(p('pki/server-key.pem')) } } : {}),
  });
  return {
    server,
    dev,
    uri: server.uri(o.name ?? 'vm'),
    stop: async () => {
      await server.close();
      await dev.close();
    },
  };
}

describe.skipIf(!hasTools)('NBD server against qemu-img, qemu-io and libnbd', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmkit-nbd-'));
    await qimg('create', '-q', '-f', 'qcow2', p('base.qcow2'), '64M');
    await sh('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x11 0 1M', '-c', 'write -z 4M 1M', '-c', 'write -P 0x22 8M 64k', '-c', 'write -P 0x44 63M 1M', p('base.qcow2'));
    await qimg('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', p('top.qcow2'));
    await sh('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x33 512k 1M', '-c', 'write -P 0x55 8200k 3k', p('top.qcow2'));
    // A CA and a server certificate for localhost, as QEMU's tls-creds-x509 directory holds them.
    await mkdir(p('pki'));
    const ssl = (...a: string[]): Promise<string> => sh('openssl', ...a);
    await ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=vmkit test CA', '-keyout', p('pki/ca-key.pem'), '-out', p('pki/ca-cert.pem'));
    await ssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-keyout', p('pki/server-key.pem'), '-out', p('pki/server.csr'));
    await writeFile(p('pki/ext.cnf'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
    await ssl('x509', '-req', '-in', p('pki/server.csr'), '-CA', p('pki/ca-cert.pem'), '-CAkey', p('pki/ca-key.pem'), '-CAcreateserial', '-days', '2', '-extfile', p('pki/ext.cnf'), '-out', p('pki/server-cert.pem'));
  }, 120_000);
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('qemu-img sees the chain through the server: info, compare, convert', async () => {
    const s = await serve(p('top.qcow2'), { readOnly: true });
    try {
      const info = JSON.parse(await qimg('info', '--output=json', s.uri)) as { 'virtual-size': number; format: string };
      expect(info['virtual-size']).toBe(64 << 20);
      expect(info.format).toBe('raw');
      await qimg('compare', '-f', 'qcow2', '-F', 'raw', p('top.qcow2'), s.uri); // exits 1 when they differ
      await qimg('convert', '-f', 'raw', '-O', 'raw', s.uri, p('via-nbd.raw'));
      await qimg('convert', '-f', 'qcow2', '-O', 'raw', p('top.qcow2'), p('direct.raw'));
      expect(diff(new Uint8Array(await readFile(p('via-nbd.raw'))), new Uint8Array(await readFile(p('direct.raw'))))).toBe(-1);
    } finally {
      await s.stop();
    }
  });

  it('nbdinfo --map (base:allocation and qemu:allocation-depth) equals vmkit disk map and qemu-nbd', async () => {
    const s = await serve(p('top.qcow2'), { readOnly: true });
    let ours: string[];
    let depthOurs: string[];
    try {
      ours = (await sh('nbdinfo', '--map', '--json', s.uri)).trim() ? (JSON.parse(await sh('nbdinfo', '--map', '--json', s.uri)) as { offset: number; length: number; type: number }[]).map((e) => `${e.offset}+${e.length}:${e.type}`) : [];
      depthOurs = (JSON.parse(await sh('nbdinfo', '--map=qemu:allocation-depth', '--json', s.uri)) as { offset: number; length: number; type: number }[]).map((e) => `${e.offset}+${e.length}:${e.type}`);
    } finally {
      await s.stop();
    }
    // vmkit's own map of the same image: data → 0, anything else → hole|zero (3); depth + 1, unallocated 0.
    const dev = await openImage(p('top.qcow2'), { readOnly: true });
    const ext = await mapExtents(dev);
    await dev.close();
    const merge = (xs: [number, number, number][]): string[] => {
      const out: [number, number, number][] = [];
      for (const x of xs) {
        const l = out[out.length - 1];
        if (l && l[2] === x[2]) l[1] += x[1];
        else out.push([...x]);
      }
      return out.map(([o, n, t]) => `${o}+${n}:${t}`);
    };
    expect(ours).toEqual(merge(toQemuMap(ext).map((e) => [e.start, e.length, e.data ? 0 : 3])));
    expect(depthOurs).toEqual(merge(ext.map((e) => [e.offset, e.length, e.kind === 'unallocated' ? 0 : e.depth + 1])));
    // qemu-nbd serving the same image answers the same.
    const qsock = p('qemu-nbd.sock');
    const q = execFile('qemu-nbd', ['-t', '-r', '-f', 'qcow2', '-A', '-x', 'vm', `--socket=${qsock}`, p('top.qcow2')]);
    try {
      const quri = `nbd+unix:///vm?socket=${qsock}`;
      for (let i = 0; i < 100; i++) {
        try {
          await sh('nbdinfo', '--size', quri);
          break;
        } catch {
          await new Promise((r) => setTimeout(r, 50));
        }
      }
      const theirs = (JSON.parse(await sh('nbdinfo', '--map', '--json', quri)) as { offset: number; length: number; type: number }[]).map((e) => `${e.offset}+${e.length}:${e.type}`);
      const theirDepth = (JSON.parse(await sh('nbdinfo', '--map=qemu:allocation-depth', '--json', quri)) as { offset: number; length: number; type: number }[]).map((e) => `${e.offset}+${e.length}:${e.type}`);
      expect(ours).toEqual(theirs);
      expect(depthOurs).toEqual(theirDepth);
    } finally {
      q.kill();
    }
  });

  it('qemu-io writes through the server (write, FUA, zero, discard, unaligned) land in a qcow2 that qemu-img check finds clean', async () => {
    await qimg('create', '-q', '-f', 'qcow2', '-b', 'top.qcow2', '-F', 'qcow2', p('w.qcow2'));
    await qimg('create', '-q', '-f', 'qcow2', '-b', 'top.qcow2', '-F', 'qcow2', p('ref.qcow2'));
    const cmds = ['write -P 0x66 0 64k', 'write -f -P 0x67 1M 128k', 'write -z 8M 64k', 'write -z -u 2M 1M', 'discard 512k 64k', 'write -P 0x68 70000 1000', 'write -P 0x69 3M 4M', 'flush'];
    const s = await serve(p('w.qcow2'));
    try {
      await sh('qemu-io', '-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), s.uri);
      expect(s.server.stats().errors).toBe(0);
    } finally {
      await s.stop();
    }
    await sh('qemu-io', '-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), p('ref.qcow2'));
    expect(qemuCheck(p('w.qcow2'))).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
    // Discarded bytes may read as zero or as before (TRIM is a hint): compare outside that range.
    const a = new Uint8Array(await readFile(await toRaw('w.qcow2')));
    const b = new Uint8Array(await readFile(await toRaw('ref.qcow2')));
    a.fill(0, 512 * 1024, 576 * 1024);
    b.fill(0, 512 * 1024, 576 * 1024);
    expect(diff(a, b)).toBe(-1);
  });

  it('nbdcopy over 4 connections copies in and out (multi-conn), and a read-only export refuses writes with EPERM', async () => {
    await qimg('create', '-q', '-f', 'qcow2', p('copy.qcow2'), '64M');
    await qimg('convert', '-f', 'qcow2', '-O', 'raw', p('top.qcow2'), p('src.raw'));
    const s = await serve(p('copy.qcow2'));
    try {
      await sh('nbdcopy', '--connections=4', '--requests=16', p('src.raw'), s.uri);
      await sh('nbdcopy', '--connections=4', s.uri, p('back.raw'));
    } finally {
      await s.stop();
    }
    expect(diff(new Uint8Array(await readFile(p('back.raw'))), new Uint8Array(await readFile(p('src.raw'))))).toBe(-1);
    expect(qemuCheck(p('copy.qcow2'))).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
    const ro = await serve(p('copy.qcow2'), { readOnly: true });
    try {
      const info = await sh('nbdinfo', ro.uri);
      expect(info).toMatch(/is_read_only: true/);
      const err = await sh('qemu-io', '-f', 'raw', '-c', 'write 0 4k', ro.uri).then(
        () => '',
        (e: { stderr?: string; stdout?: string }) => `${e.stdout ?? ''}${e.stderr ?? ''}`,
      );
      expect(err).toMatch(/Operation not permitted|read-only|Permission denied/i);
    } finally {
      await ro.stop();
    }
  });

  it('over TLS (FORCEDTLS): qemu-img with tls-creds-x509 and nbdinfo with the CA read it; a plain client is refused', async () => {
    const s = await serve(p('top.qcow2'), { readOnly: true, tls: true });
    try {
      expect(s.uri.startsWith('nbds+unix://')).toBe(true);
      const obj = `tls-creds-x509,id=tls0,dir=${p('pki')},endpoint=client`;
      // QEMU's client checks the server's name against the host it connects to: over a unix socket, tls-hostname.
      const json = `json:{"driver":"nbd","server":{"type":"unix","path":"${s.server.address.slice(5)}"},"export":"vm","tls-creds":"tls0","tls-hostname":"localhost"}`;
      await qimg('compare', '--object', obj, '-f', 'qcow2', p('top.qcow2'), json);
      const info = await sh('nbdinfo', `${s.uri}&tls-certificates=${p('pki')}&tls-hostname=localhost`);
      expect(info).toMatch(/with TLS/);
      const plain = `nbd+unix:///vm?socket=${s.server.address.slice(5)}`;
      // libnbd's debug log carries the server's own refusal (NBD_REP_ERR_TLS_REQD and its message).
      const refused = await run('nbdinfo', [plain], { encoding: 'utf8', env: { ...process.env, LIBNBD_DEBUG: '1' } }).then(
        () => 'connected',
        (e: { stderr?: string }) => e.stderr ?? 'failed',
      );
      expect(refused).not.toBe('connected');
      expect(refused).toMatch(/server error message: this server requires TLS/);
    } finally {
      await s.stop();
    }
  });
});

async function toRaw(name: string): Promise<string> {
  const out = p(`${name}.raw`);
  await qimg('convert', '-f', 'qcow2', '-O', 'raw', p(name), out);
  return out;
}

describe.skipIf(!hasTools)('vmkit disk serve', () => {
  it('serves an image until SIGTERM, then flushes and closes it; qemu-io writes land and qemu-img check is clean', async () => {
    const d = await mkdtemp(join(tmpdir(), 'vmkit-nbdcli-'));
    try {
      await run('qemu-img', ['create', '-q', '-f', 'qcow2', join(d, 'vm.qcow2'), '16M']);
      const bin = new URL('../dist/bin/vmkit.js', import.meta.url).pathname;
      const { spawn } = await import('node:child_process');
      const child = spawn(process.execPath, [bin, 'disk', 'serve', 'vm.qcow2', '--listen', 'unix:s.sock', '-x', 'vm', '--json'], { cwd: d, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.on('data', (b) => (out += b));
      child.stderr.on('data', (b) => (err += b));
      for (let i = 0; i < 200 && !out.includes('}'); i++) await new Promise((r) => setTimeout(r, 50));
      const started = JSON.parse(out) as { uri: string; size: number; format: string };
      expect(started).toMatchObject({ size: 16 << 20, format: 'qcow2' });
      const uri = `nbd+unix:///vm?socket=${join(d, 's.sock')}`;
      await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 2M', '-c', 'write -z 4M 1M', uri]);
      const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(err).toMatch(/SIGTERM: stopped after 1 connections/);
      expect(qemuCheck(join(d, 'vm.qcow2'))).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
      await run('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x5a 1M 2M', '-c', 'read -P 0 4M 1M', join(d, 'vm.qcow2')]).then((r) => expect(r.stdout).not.toMatch(/Pattern verification failed/));
    } finally {
      await rm(d, { recursive: true, force: true });
    }
  });
});
