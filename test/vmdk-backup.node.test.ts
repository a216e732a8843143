// VMware-style snapshots of a VMDK disk through the live backup jobs: a vmdk
// delta takes the writes, then consolidation collapses it into the base or
// onto a new vmdk target; QEMU must read the result as the expected content
// and accept it (`qemu-img check`, `compare`).
import { describe, expect, it } from 'vitest';
import { tempPaths } from './_tmp.js';
import { execFileSync } from 'node:child_process';
import { writeFile, readFile } from 'node:fs/promises';
import { consolidate, LiveDisk, resumeConsolidation, snapshot } from '../bindings/disk/backup/index.js';
import { FileStorage } from '../bindings/disk/backends/file.js';
import { readHeader, setParentCid } from '../bindings/disk/formats/vmdk/index.js';
import { NodeChainOps } from '../bindings/disk/backup/node.js';
import { needTool } from './_tools.js';

const hasQemu = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
const p = tempPaths('vmkit-vmdk-backup-');
const q = (...args: string[]): string => execFileSync('qemu-img', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const fill = (n: number, v: number): Uint8Array => new Uint8Array(n).fill(v);

describe.skipIf(!hasQemu)('vmdk snapshots and consolidation', () => {

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

  it('an interrupted consolidation into the base breaks the CID link; setParentCid re-links and the job resumes', async () => {
    const base = p('cb.vmdk');
    const delta = p('cd.vmdk');
    q('create', '-q', '-f', 'vmdk', base, '4M');
    const ops = new NodeChainOps();
    const disk = await LiveDisk.open(base, ops);
    const snap = await snapshot(disk, { delta, format: 'vmdk' });
    await snap.image.close();
    await disk.write(65536, fill(65536, 3));
    const job = await consolidate(disk, {
      into: 'base',
      hook: (pt) => {
        if (pt === 'in-sync') throw new Error('simulated crash');
      },
    });
    await expect(job.done).rejects.toThrow(/simulated crash/);
    await disk.close().catch(() => {});
    // The job wrote the base (new CID): the delta no longer matches it.
    await expect(LiveDisk.open(delta, ops)).rejects.toMatchObject({ code: 'INTEGRITY' });
    const qread = (): string => execFileSync('qemu-io', ['-f', 'vmdk', '-c', 'read 0 64k', delta], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    expect(qread).toThrow(); // QEMU refuses to read through to the parent too
    const bs = await FileStorage.open(base, { readOnly: true });
    const cid = (await readHeader(bs)).descriptor!.cid!;
    await bs.close();
    const ds = await FileStorage.open(delta);
    await setParentCid(ds, cid);
    await ds.close();
    expect(qread()).toMatch(/read 65536\/65536 bytes/); // QEMU accepts the chain again
    const again = await LiveDisk.open(delta, ops);
    const r = await (await resumeConsolidation(again)).done;
    await again.close();
    const ref = new Uint8Array(4 << 20);
    ref.fill(3, 65536, 131072);
    await writeFile(p('cref.raw'), ref);
    q('compare', '-q', '-F', 'raw', r.active, p('cref.raw'));
    expect(q('check', r.active)).toMatch(/No errors/);
  });
});
