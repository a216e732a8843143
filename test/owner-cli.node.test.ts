// `vmkit disk owner|open|release` as a user runs them (built dist/): one process holds a
// qcow2 disk and answers release requests; another takes it; `release` frees it.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { needTool } from './_tools.js';

const bin = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
const vmkit = (cwd: string, ...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', cwd, timeout: 30_000 });

function hold(cwd: string, ...args: string[]): { firstLine: Promise<string>; exit: Promise<number | null>; out: () => string } {
  return holdWith({}, cwd, ...args);
}

function holdWith(env: Record<string, string>, cwd: string, ...args: string[]): { firstLine: Promise<string>; exit: Promise<number | null>; out: () => string } {
  const c = spawn(process.execPath, [bin, 'disk', 'open', ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let out = '';
  const firstLine = new Promise<string>((resolve, reject) => {
    c.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out.split('\n')[0]!);
    });
    c.on('exit', () => reject(new Error(`vmkit disk open exited early: ${out}`)));
  });
  c.stderr.on('data', (d: Buffer) => (out += d.toString()));
  return { firstLine, exit: new Promise((r) => c.on('exit', (code) => r(code))), out: () => out };
}

describe('vmkit disk owner|open|release', () => {
  it('holds, hands over on request, releases, reports', { timeout: 30_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vmkit-owner-cli-'));
    try {
      expect(vmkit(dir, 'disk', 'create', 'vm.qcow2', '--size', '4M').status).toBe(0);
      expect(vmkit(dir, 'disk', 'owner', 'vm.qcow2').stdout).toContain('no owner record');
      const a = hold(dir, 'vm.qcow2', '--as', 'alpha', '--serve', '127.0.0.1:0');
      expect(await a.firstLine).toMatch(/^holding vm\.qcow2 at epoch 1; release requests at http:\/\/127\.0\.0\.1:\d+\/release$/);
      const o = vmkit(dir, 'disk', 'owner', 'vm.qcow2', '--json');
      expect(o.status).toBe(0);
      expect(JSON.parse(o.stdout)).toMatchObject({ record: { version: 2, epoch: 1, state: 'owned', owner: { id: 'alpha' }, secret: '<hidden>' }, leaseAlive: true });
      // A forged release request (the probe's curl) does not make alpha let go.
      const endpoint = (await a.firstLine).split(' at ').at(-1)!;
      const forged = spawnSync('curl', ['-s', '-w', ' %{http_code}', '-X', 'POST', '-H', 'content-type: application/json', '-d', JSON.stringify({ disk: 'vm.qcow2', epoch: 1, requester: { id: 'm', host: 'h', pid: 1 } }), endpoint], { encoding: 'utf8' });
      expect(forged.stdout).toMatch(/ 401$/);
      expect(forged.stdout).not.toContain('vm.qcow2');
      const b = hold(dir, 'vm.qcow2', '--as', 'beta', '--json');
      await b.firstLine;
      expect(await a.exit).toBe(0); // alpha released to beta and exited
      expect(a.out()).toContain('released vm.qcow2 to beta (epoch 1)');
      const r = vmkit(dir, 'disk', 'release', 'vm.qcow2', '--json');
      expect(r.status).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ before: { epoch: 2, owner: { id: 'beta' } }, after: { epoch: 2, state: 'free' } });
      expect(await b.exit).toBe(0);
      expect(JSON.parse(b.out())).toMatchObject({ epoch: 2, owner: { id: 'beta' } });
      expect(vmkit(dir, 'disk', 'owner', 'vm.qcow2').stdout).toMatch(/free at epoch 2, last held by beta/);
      expect(vmkit(dir, 'disk', 'open', 'vm.qcow2').status).toBe(2); // --as is required
      // The image is intact after two holders flushed and closed it.
      expect(vmkit(dir, 'disk', 'check', 'vm.qcow2', '--json').status).toBe(0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('serves on a non-loopback address only with --tls-cert/--tls-key (HTTPS handoff) or --insecure', { timeout: 60_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vmkit-owner-cli-tls-'));
    try {
      expect(vmkit(dir, 'disk', 'create', 'vm.qcow2', '--size', '4M').status).toBe(0);
      const open = vmkit(dir, 'disk', 'open', 'vm.qcow2', '--as', 'alpha', '--serve', '0.0.0.0:0');
      expect(open.status).not.toBe(0);
      expect(open.stderr).toMatch(/not a loopback address.*--tls-cert/);
      expect(vmkit(dir, 'disk', 'open', 'vm.qcow2', '--as', 'alpha', '--tls-cert', 'x.pem').status).toBe(2); // one without the other
      if (!needTool('openssl', 'openssl')) return;
      execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'key.pem', '-out', 'cert.pem', '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'], { cwd: dir, stdio: 'ignore' });
      const a = hold(dir, 'vm.qcow2', '--as', 'alpha', '--serve', '127.0.0.1:0', '--tls-cert', 'cert.pem', '--tls-key', 'key.pem');
      expect(await a.firstLine).toMatch(/release requests at https:\/\/127\.0\.0\.1:\d+\/release$/);
      // The opener trusts the self-signed certificate through Node's NODE_EXTRA_CA_CERTS.
      const b = holdWith({ NODE_EXTRA_CA_CERTS: join(dir, 'cert.pem') }, dir, 'vm.qcow2', '--as', 'beta', '--json');
      await b.firstLine;
      expect(await a.exit).toBe(0);
      expect(a.out()).toContain('released vm.qcow2 to beta (epoch 1)');
      expect(vmkit(dir, 'disk', 'release', 'vm.qcow2').status).toBe(0);
      expect(await b.exit).toBe(0);
      // --insecure: plain HTTP on every interface, as asked.
      const c = hold(dir, 'vm.qcow2', '--as', 'gamma', '--serve', '0.0.0.0:0', '--insecure');
      expect(await c.firstLine).toMatch(/release requests at http:\/\//);
      expect(vmkit(dir, 'disk', 'release', 'vm.qcow2').status).toBe(0);
      expect(await c.exit).toBe(0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
