// `vmkit disk owner|open|release` as a user runs them (built dist/): one process holds a
// qcow2 disk and answers release requests; another takes it; `release` frees it.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const bin = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
const vmkit = (cwd: string, ...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', cwd, timeout: 30_000 });

function hold(cwd: string, ...args: string[]): { firstLine: Promise<string>; exit: Promise<number | null>; out: () => string } {
  const c = spawn(process.execPath, [bin, 'disk', 'open', ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
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
      expect(JSON.parse(o.stdout)).toMatchObject({ record: { version: 1, epoch: 1, state: 'owned', owner: { id: 'alpha' } }, leaseAlive: true });
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
});
