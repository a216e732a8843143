// VMware-style snapshots of a VMDK disk through the live backup jobs: a vmdk
// delta takes the writes, then consolidation collapses it into the base or
// onto a new vmdk target; QEMU must read the result as the expected content
// and accept it (`qemu-img check`, `compare`).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { consolidate, LiveDisk, snapshot } from '../bindings/disk/backup/index.js';
import { NodeChainOps } from '../bindings/disk/backup/node.js';
import { needTool } from './_tools.js';

const hasQemu = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
let dir = '';
const p = (n: string): string => join(dir, n);
const q = (...args: string[]): string => execFileSync('qemu-img', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const fill = (n: number, v: number): Uint8Array => new Uint8Array(n).fill(v);

describe.skipIf(!hasQemu)('vmdk snapshots and consolidation', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmkit-vmdk-backup-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it.each(['base', 'target'] as const)('snapshot to a vmdk delta, write, consolidate into the %s', async (into) => {
    const size = 4 << 20;
    const base = p(`b-${into}.vmdk`);
    q('create', '-q', '-f', 'vmdk', base, String(size));
    execFileSync('qemu-io', ['-f', 'vmdk', '-c', `write -P 0x11 0 ${size / 2}`, base]);
    const ref = new Uint8Array(size);
    ref.fill(0x11, 0, size / 2);
    const disk = await LiveDisk.open(base, new NodeChainOps());
    const snap = await snapshot(disk, { delta: p(`d-${into}.vmdk`), format: 'vmdk' });
    const chain = JSON.parse(q('info', '--output=json', '--backing-chain', p(`d-${into}.vmdk`))) as { format: string }[];
    expect(chain.map((c) => c.format)).toEqual(['vmdk', 'vmdk']);
    for (const [off, len, v] of [[4096, 8192, 0x21], [1 << 20, 65536, 0x22], [3 << 20, 100 << 10, 0x23]] as const) {
      await disk.write(off, fill(len, v));
      ref.fill(v, off, off + len);
    }
    await snap.image.close();
    const target = into === 'base' ? 'base' : p(`t-${into}.vmdk`);
    const job = await consolidate(disk, { into: target });
    const r = await job.done;
    await disk.close();
    await writeFile(p(`ref-${into}.raw`), ref);
    const active = r.active;
    q('compare', '-q', '-F', 'raw', active, p(`ref-${into}.raw`));
    expect(q('check', active)).toMatch(/No errors/);
    expect(JSON.parse(q('info', '--output=json', active)).format).toBe('vmdk');
    expect((await readFile(active)).subarray(0, 4).toString()).toBe('KDMV');
  });
});
