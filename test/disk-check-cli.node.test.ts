// `vmkit disk check` against `qemu-img check` on the same images (clean,
// corrupt, leaking, raw; made by qemu-img/qemu-io and byte edits): the same
// exit codes (0/2/3/63, 1 when the check fails) and the same JSON keys and
// values; `-f` pins the input format; a backing file whose format the overlay
// does not record is never read as raw unless `-F`/`backingFormat` says so.
import { spawnSync, execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { needTool } from './_tools.js';
import { qemuCheckKeys, qemuCheckRun } from './_qemu-img.js';
import { openImage } from '../bindings/disk/image.js';

const bin = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
const hasQemu = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
let dir = '';
const vmkit = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', cwd: dir, timeout: 60_000 });
const sh = (cmd: string, ...args: string[]) => execFileSync(cmd, args, { cwd: dir, encoding: 'utf8' });

/** Edits an image's bytes in place. */
async function patch(name: string, edit: (b: Buffer) => void): Promise<void> {
  const b = await readFile(join(dir, name));
  edit(b);
  await writeFile(join(dir, name), b);
}

/** Both tools on one image: exit codes equal, every key qemu-img prints printed by vmkit with the same value. */
function agree(name: string, wantStatus: number): Record<string, unknown> {
  const q = qemuCheckRun(dir, name);
  expect(q.status, `qemu-img check ${name}`).toBe(wantStatus);
  for (const flag of ['--json', '--output=json']) {
    const v = vmkit('disk', 'check', flag, name);
    expect(v.status, `vmkit disk check ${flag} ${name}: ${v.stderr}`).toBe(wantStatus);
    const mine = v.stdout.trim() ? (JSON.parse(v.stdout) as Record<string, unknown>) : undefined;
    const k = qemuCheckKeys(q, mine);
    expect(k.vmkit, name).toEqual(k.qemu);
    if (q.json === undefined) expect(mine, `${name}: qemu-img prints no JSON`).toBeUndefined();
  }
  return JSON.parse(vmkit('disk', 'check', '--json', name).stdout || '{}') as Record<string, unknown>;
}

describe.skipIf(!hasQemu)('vmkit disk check as qemu-img check', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmkit-check-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('clean 0, corrupt 2, leaks only 3, raw 63, unreadable 1: exit codes and JSON as qemu-img', async () => {
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', 'clean.qcow2', '4M');
    sh('qemu-io', '-c', 'write -P 0x41 0 192k', '-c', 'write -z 64k 64k', '-c', 'write -P 0x42 1M 64k', 'clean.qcow2');
    expect(agree('clean.qcow2', 0)).not.toHaveProperty('corruptions');

    sh('cp', 'clean.qcow2', 'leak.qcow2');
    await patch('leak.qcow2', (b) => {
      const rb = Number(b.readBigUInt64BE(Number(b.readBigUInt64BE(48)))); // refcount block 0
      b.writeUInt16BE(b.readUInt16BE(rb) + 1, rb); // the header cluster: one reference, refcount 2
    });
    expect(agree('leak.qcow2', 3)).toMatchObject({ leaks: 1 });

    sh('cp', 'clean.qcow2', 'corrupt.qcow2');
    await patch('corrupt.qcow2', (b) => {
      const rb = Number(b.readBigUInt64BE(Number(b.readBigUInt64BE(48))));
      const l1 = Number(b.readBigUInt64BE(40));
      b.writeUInt16BE(0, rb + 2 * (l1 / 65536)); // the L1 table's cluster: refcount 0
    });
    expect(agree('corrupt.qcow2', 2)).toHaveProperty('corruptions');

    sh('qemu-img', 'create', '-q', '-f', 'raw', 'disk.raw', '1M');
    agree('disk.raw', 63);
    expect(vmkit('disk', 'check', 'disk.raw').stderr).toMatch(/does not support checks/);

    // The check itself fails: qemu-img says 1 too, for a file that is not there.
    expect(spawnSync('qemu-img', ['check', 'missing.qcow2'], { cwd: dir }).status).toBe(1);
    const missing = vmkit('disk', 'check', '--output=json', 'missing.qcow2');
    expect(missing.status).toBe(1);
    expect(JSON.parse(missing.stdout)).toMatchObject({ error: { code: 'NOT_FOUND' } });
    // --output takes json or human only.
    expect(vmkit('disk', 'check', '--output=xml', 'clean.qcow2').status).toBe(2);
    expect(vmkit('disk', 'check', '--output=human', 'clean.qcow2').stdout).toMatch(/No errors were found/);
  });

  it('a compressed cluster with the COPIED flag, and an L1 entry with flags but no table, are corruptions (issue 18)', async () => {
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', 'src.qcow2', '1M');
    sh('qemu-io', '-c', 'write -P 0x33 0 128k', 'src.qcow2');
    sh('qemu-img', 'convert', '-c', '-O', 'qcow2', 'src.qcow2', 'comp.qcow2');
    agree('comp.qcow2', 0); // compressed clusters also count as fragmented, as in qemu-img
    sh('cp', 'comp.qcow2', 'comp-copied.qcow2');
    await patch('comp-copied.qcow2', (b) => {
      const l2 = Number(b.readBigUInt64BE(Number(b.readBigUInt64BE(40))) & 0x00ff_ffff_ffff_fe00n);
      expect(b.readBigUInt64BE(l2) >> 62n).toBe(1n); // a compressed entry
      b.writeBigUInt64BE(b.readBigUInt64BE(l2) | (1n << 63n), l2);
    });
    expect(agree('comp-copied.qcow2', 2)).toMatchObject({ corruptions: 1 });

    sh('qemu-img', 'create', '-q', '-f', 'qcow2', 'l1.qcow2', '2G');
    sh('qemu-io', '-c', 'write -P 1 0 64k', 'l1.qcow2');
    await patch('l1.qcow2', (b) => {
      const l1 = Number(b.readBigUInt64BE(40));
      b.writeBigUInt64BE(1n << 63n, l1 + 8); // COPIED, offset 0
    });
    // qemu-img walks cluster 0 as that L2 table and counts dozens; vmkit reports the entry once.
    expect(qemuCheckRun(dir, 'l1.qcow2').status).toBe(2);
    const v = vmkit('disk', 'check', '--json', 'l1.qcow2');
    expect(v.status).toBe(2);
    expect(JSON.parse(v.stdout)).toMatchObject({ corruptions: 1, messages: [{ severity: 'corruption', message: expect.stringMatching(/L1 entry 1 has flags/) }] });
  });

  it('-f pins the input format on info, map and check', async () => {
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', 'pin.qcow2', '1M');
    sh('truncate', '-s', '256K', 'pin.qcow2'); // whole sectors when read as raw
    const asRaw = vmkit('disk', 'info', '-f', 'raw', '--json', 'pin.qcow2');
    expect(asRaw.status).toBe(0);
    expect(JSON.parse(asRaw.stdout)).toMatchObject({ format: 'raw', virtualSize: (JSON.parse(sh('qemu-img', 'info', '-f', 'raw', '--output=json', 'pin.qcow2')) as { 'virtual-size': number })['virtual-size'] });
    // Read as raw, the map covers the file's 256 KiB (as qcow2 it would cover the 1 MiB guest).
    const m = JSON.parse(vmkit('disk', 'map', '--format', 'raw', '--json', 'pin.qcow2').stdout) as { start: number; length: number }[];
    expect(m.reduce((n, e) => n + e.length, 0)).toBe(256 << 10);
    expect(vmkit('disk', 'check', '-f', 'raw', 'pin.qcow2').status).toBe(63);
    const wrong = vmkit('disk', 'check', '-f', 'qcow2', '--json', 'disk.raw');
    expect(wrong.status).toBe(1);
    expect(JSON.parse(wrong.stdout)).toMatchObject({ error: { code: 'CORRUPT' } });
    // A format vmkit does not know is a usage error; one it knows but the file is not is CORRUPT.
    expect(vmkit('disk', 'info', '-f', 'qed', 'pin.qcow2').status).toBe(2);
    expect(vmkit('disk', 'info', '-f', 'vhdx', 'pin.qcow2').status).toBe(1);
  });

  it('a backing file the overlay records no format for is never read as raw: /etc/services stays unread without -F', async () => {
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', '/etc/services', '-F', 'raw', 'evil.img', '64K');
    // Drop the recorded format: the backing-format header extension gets a type nobody knows (both tools skip it).
    await patch('evil.img', (b) => {
      const at = b.indexOf(Buffer.from([0xe2, 0x79, 0x2a, 0xca]), 104);
      expect(at).toBeGreaterThan(0);
      b.writeUInt32BE(0x7666_6f6f, at);
    });
    expect(JSON.parse(sh('qemu-img', 'info', '-U', '--output=json', 'evil.img'))).not.toHaveProperty('backing-filename-format');
    const services = readFileSync('/etc/services');
    for (const args of [['backup', 'evil.img', '-'], ['info', 'evil.img'], ['map', 'evil.img']]) {
      const r = spawnSync(process.execPath, [bin, 'disk', ...args], { cwd: dir, timeout: 60_000 });
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stdout.includes(services.subarray(0, 32)), args.join(' ')).toBe(false);
      expect(r.stderr.toString(), args.join(' ')).toMatch(/UNSUPPORTED: .*without a backing format.*--backing-format raw/);
    }
    await expect(openImage(join(dir, 'evil.img'), { readOnly: true })).rejects.toMatchObject({ code: 'UNSUPPORTED' });
    // Stated by the user, it is read (as qemu-img -F raw would).
    const stated = spawnSync(process.execPath, [bin, 'disk', 'backup', '-F', 'raw', 'evil.img', '-'], { cwd: dir, timeout: 60_000 });
    expect(stated.status).toBe(0);
    expect(Buffer.compare(stated.stdout.subarray(0, 1024), services.subarray(0, 1024))).toBe(0);
    const dev = await openImage(join(dir, 'evil.img'), { readOnly: true, backingFormat: 'raw' });
    expect(dev.backing).toBeDefined();
    await dev.close();
    // A backing file with a format header is still found without one recorded.
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', 'base.qcow2', '64K');
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2');
    await patch('top.qcow2', (b) => b.writeUInt32BE(0x7666_6f6f, b.indexOf(Buffer.from([0xe2, 0x79, 0x2a, 0xca]), 104)));
    const info = vmkit('disk', 'info', '--json', 'top.qcow2');
    expect(info.status, info.stderr).toBe(0);
    expect((JSON.parse(info.stdout) as { chain: { format: string }[] }).chain.map((c) => c.format)).toEqual(['qcow2', 'qcow2']);
  });
});
