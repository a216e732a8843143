// `vmkit disk create|info|map|check --format vmdk` as a user runs them (built dist/), against qemu-img.
import { spawnSync, execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { needTool } from './_tools.js';

const bin = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
const vmkit = (cwd: string, ...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', cwd, timeout: 60_000 });
const hasQemu = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
const q = (cwd: string, cmd: string, ...args: string[]): string => execFileSync(cmd, args, { cwd, encoding: 'utf8' });

describe.skipIf(!hasQemu)('vmkit disk with vmdk', () => {
  it('creates a base and a delta qemu-img accepts; info, map and check agree with qemu-img', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vmkit-vmdkcli-'));
    try {
      expect(vmkit(dir, 'disk', 'create', 'base.vmdk', '--size', '4M', '--format', 'vmdk').status).toBe(0);
      q(dir, 'qemu-io', '-f', 'vmdk', '-c', 'write -P 0x41 0 100k', 'base.vmdk');
      expect(vmkit(dir, 'disk', 'create', 'top.vmdk', '--backing', 'base.vmdk', '--format', 'vmdk').status).toBe(0);
      q(dir, 'qemu-io', '-f', 'vmdk', '-c', 'write -P 0x42 200k 4k', 'top.vmdk');
      const chain = JSON.parse(q(dir, 'qemu-img', 'info', '--output=json', '--backing-chain', 'top.vmdk')) as { format: string; 'virtual-size': number; 'backing-filename'?: string; 'format-specific': { data: { cid: number; 'parent-cid': number } } }[];
      expect(chain.map((c) => c.format)).toEqual(['vmdk', 'vmdk']);
      const info = vmkit(dir, 'disk', 'info', 'top.vmdk', '--json');
      expect(info.status).toBe(0);
      const mine = JSON.parse(info.stdout) as { format: string; virtualSize: number; backingFile: string; chain: { file: string }[]; specific: { cid: string; parentCid: string } };
      expect([mine.format, mine.virtualSize, mine.backingFile]).toEqual(['vmdk', chain[0]!['virtual-size'], chain[0]!['backing-filename']]);
      expect(mine.chain.map((c) => c.file)).toEqual(['top.vmdk', 'base.vmdk']);
      expect(parseInt(mine.specific.cid, 16)).toBe(chain[0]!['format-specific'].data.cid);
      expect(parseInt(mine.specific.parentCid, 16)).toBe(chain[1]!['format-specific'].data.cid);
      const map = vmkit(dir, 'disk', 'map', 'top.vmdk', '--json');
      expect(map.status).toBe(0);
      expect(JSON.parse(map.stdout)).toEqual(JSON.parse(q(dir, 'qemu-img', 'map', '--output=json', 'top.vmdk')));
      const chk = vmkit(dir, 'disk', 'check', 'top.vmdk', '--json');
      expect(chk.status).toBe(0);
      expect(JSON.parse(chk.stdout)).toMatchObject({ format: 'vmdk', 'check-errors': 0, 'allocated-clusters': 1 });
      expect(q(dir, 'qemu-img', 'check', 'top.vmdk')).toMatch(/No errors/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
