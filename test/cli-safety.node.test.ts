// The CLI's progress and overwrite safety (issue 17): a true rate and an ETA
// on a TTY, checkpoint save/restore refusing to overwrite without --force,
// read-page never writing binary to a terminal.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { main } from '../dist/cli/main.js';
import { progressLine } from '../dist/cli/_common.js';
import { needTool } from './_tools.js';

const dir = mkdtempSync(join(tmpdir(), 'vmkit-safety-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** In-process `vmkit …` with captured output; `tty` marks both streams as terminals. */
async function run(args: string[], tty = false): Promise<{ status: number; stdout: Buffer; stderr: string }> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const stdout = Object.assign(new PassThrough(), { isTTY: tty });
  const stderr = Object.assign(new PassThrough(), { isTTY: tty });
  stdout.on('data', (c: Buffer) => out.push(c));
  stderr.on('data', (c: Buffer) => err.push(c));
  const status = await main(args, { stdout, stderr });
  return { status, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString() };
}
const p = (name: string): string => join(dir, name);

describe('progress', () => {
  it('shows bytes done of the total, the rate over the elapsed time and the time left', () => {
    const line = progressLine('backup', 100 << 20, 200 << 20, 500);
    expect(line).toMatch(/50\.0% 100\.0 MiB \/ 200\.0 MiB, 200\.0 MiB\/s, ETA 0:01$/);
    expect(progressLine('x', 0, 1 << 30, 0)).toMatch(/ETA \?$/);
    expect(progressLine('x', 3 * 2 ** 30, 4 * 2 ** 30, 3_600_000)).toMatch(/ETA 20:00$/);
  });

  it.skipIf(!needTool('qemu-img', 'qemu-utils'))('disk backup on a TTY reports bytes, not fractions (it showed "3 B/s" for 200 MiB)', async () => {
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', p('prog.qcow2'), '16M']);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 5 0 16M', p('prog.qcow2')], { stdio: 'ignore' });
    const r = await run(['disk', 'backup', p('prog.qcow2'), p('prog.raw')], true);
    expect(r.status, r.stderr).toBe(0);
    const lines = r.stderr.split('\r').filter((l) => l.startsWith('backup ['));
    expect(lines.length).toBeGreaterThan(0);
    const last = lines[lines.length - 1]!;
    expect(last).toMatch(/100\.0% 16\.0 MiB \/ 16\.0 MiB, /);
    // 16 MiB at under 1 KiB/s would take four hours: the rate is bytes over seconds, not a fraction.
    expect(last).toMatch(/, [\d.]+ (KiB|MiB|GiB|TiB)\/s, ETA /);
    // Not a TTY: nothing drawn.
    expect((await run(['disk', 'backup', p('prog.qcow2'), p('prog2.raw')])).stderr).toBe('');
  });
});

describe('checkpoint overwrite safety and read-page', () => {
  it('save and restore refuse an existing output without --force', async () => {
    expect((await run(['pagetable', 'sample', p('g.mem')])).status).toBe(0);
    expect((await run(['checkpoint', 'save', p('g.mem'), p('g.ckpt')])).status).toBe(0);
    const again = await run(['checkpoint', 'save', p('g.mem'), p('g.ckpt'), '--json']);
    expect(again.status).toBe(1);
    expect(JSON.parse(again.stdout.toString())).toMatchObject({ error: { code: 'CONFLICT' } });
    expect((await run(['checkpoint', 'save', p('g.mem'), p('g.ckpt'), '--force'])).status).toBe(0);
    expect((await run(['checkpoint', 'restore', p('g.ckpt'), p('r.mem')])).status).toBe(0);
    expect(Buffer.compare(readFileSync(p('r.mem')), readFileSync(p('g.mem')))).toBe(0);
    const over = await run(['checkpoint', 'restore', p('g.ckpt'), p('g.mem')]);
    expect(over.status).toBe(1);
    expect(over.stderr).toMatch(/CONFLICT: .*exists; pass --force/);
    expect((await run(['checkpoint', 'restore', p('g.ckpt'), p('r.mem'), '--force'])).status).toBe(0);
  });

  it('read-page: never binary to a terminal; -o writes the page; --json prints it as hex', async () => {
    const mem = readFileSync(p('g.mem'));
    const page = mem.subarray(0x200000, 0x201000); // the sample's first user page
    const tty = await run(['checkpoint', 'read-page', p('g.ckpt'), '0x200000'], true);
    expect(tty.status).toBe(2);
    expect(tty.stdout.length).toBe(0);
    expect(tty.stderr).toMatch(/-o <file>/);
    expect((await run(['checkpoint', 'read-page', p('g.ckpt'), '0x200010', '-o', p('page.bin')], true)).status).toBe(0);
    expect(Buffer.compare(readFileSync(p('page.bin')), page)).toBe(0);
    expect((await run(['checkpoint', 'read-page', p('g.ckpt'), '0x200000', '-o', p('page.bin')])).status).toBe(1); // exists
    const j = await run(['checkpoint', 'read-page', p('g.ckpt'), '0x200000', '--output=json'], true);
    expect(j.status).toBe(0);
    expect(JSON.parse(j.stdout.toString())).toMatchObject({ gpa: '0x200000', page: 0x200, pageSize: 4096, hex: Buffer.from(page).toString('hex') });
    const piped = await run(['checkpoint', 'read-page', p('g.ckpt'), '0x200000']);
    expect(Buffer.compare(piped.stdout, page)).toBe(0);
    expect(existsSync(p('page.bin'))).toBe(true);
  });
});
