// `vmkit pagetable dump|translate` on small memory images written by the spec:
// QEMU-format lines worked out by hand from the entries, JSON output, exit
// codes and errors for bad input. In process through main() (the real-guest
// comparison with QEMU is test/pagetable-guest.node.test.ts).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Writable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
// The built CLI (its command groups are loaded by a dynamic import of dist/cli/commands/<name>.js).
import { main } from '../dist/cli/main.js';

const dir = mkdtempSync(join(tmpdir(), 'vmkit-pagetable-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function vmkit(...argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const sink = (add: (s: string) => void): Writable =>
    new Writable({
      write(chunk, _enc, cb) {
        add(String(chunk));
        cb();
      },
    });
  const code = await main(argv, { stdout: sink((s) => (stdout += s)), stderr: sink((s) => (stderr += s)) });
  return { code, stdout, stderr };
}

/** An image of `pages` pages with the given 64-bit entries: [table page, index, entry]. */
function image(name: string, pages: number, entries: [number, number, bigint][]): string {
  const bytes = new Uint8Array(pages * 4096);
  const v = new DataView(bytes.buffer);
  for (const [t, i, e] of entries) v.setBigUint64(t * 4096 + i * 8, e, true);
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return path;
}

const XD = 1n << 63n;
// PML4 at page 1. [0] → PDPT (page 2) → [0] PD (page 3) → [1] PT (page 4);
// [511] → PDPT (page 5) → [510] 1 GiB page. Plus a self-loop, a reserved PS in
// a PML4E, and a PDPTE pointing past the image: all skipped by the dump.
const x86 = image('x86.bin', 8, [
  [1, 0, 0x2000n | 0x7n],
  [1, 3, 0x1000n | 0x3n], // loop back to the PML4
  [1, 4, 0x2000n | 0x83n], // PS in a PML4E: reserved
  [1, 511, 0x5000n | 0x3n],
  [2, 0, 0x3000n | 0x7n],
  [2, 1, 0x40_0000_0000n | 0x3n], // table past the image
  [3, 1, 0x4000n | 0x7n],
  [3, 2, 0x0000_000f_ffe0_0000n | XD | 0x1e3n | 0x1000n], // 2 MiB: PAT bit 12 set, not part of the address
  [4, 0, 0xabc_d000n | 0x25n],
  [4, 511, 0x000c_0000_1234_5000n | 0xffn], // every low flag (bit 7 is PAT on a 4 KiB page); frame bits 51..50
  [5, 510, 0x8000_0000n | XD | 0x1a1n], // 1 GiB, read-only, global
]);

describe('vmkit pagetable dump', () => {
  it('prints QEMU info tlb lines: VA order, leaf bits, QEMU frame masks', async () => {
    const r = await vmkit('pagetable', 'dump', x86, '--cr3', '0x1000');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(
      [
        '0000000000200000: 000000000abcd000 ----A--U-',
        // QEMU's mask stops at bit 49, so the frame's bits 51..50 are not printed.
        '00000000003ff000: 0000000012345000 ---DACTUW',
        '0000000000400000: 0000000fffe00000 XGPDA---W',
        'ffffffff80000000: 0000000080000000 XGP-A----',
        '',
      ].join('\n'),
    );
  });

  it('prints the same with the reference walker as with the core', async () => {
    const core = await vmkit('pagetable', 'dump', x86, '--cr3', '0x1000', '--format', 'json');
    const ref = await vmkit('pagetable', 'dump', x86, '--cr3', '0x1000', '--format', 'json', '--engine', 'reference');
    expect(ref).toEqual(core);
  });

  it('prints JSON with effective flags', async () => {
    const r = await vmkit('pagetable', 'dump', x86, '--cr3', '0x1000', '--format', 'json');
    expect(r.code).toBe(0);
    const maps = JSON.parse(r.stdout) as { gva: string; gpa: string; pageSize: number; flags: string[] }[];
    expect(maps.map((m) => [m.gva, m.gpa, m.pageSize])).toEqual([
      ['0x200000', '0xabcd000', 4096],
      ['0x3ff000', '0xc000012345000', 4096],
      ['0x400000', '0xfffe00000', 2 << 20],
      ['0xffffffff80000000', '0x80000000', 1 << 30],
    ]);
    expect(maps[0]!.flags).toEqual(['present', 'user', 'accessed']);
    expect(maps[3]!.flags).toEqual(['present', 'accessed', 'global', 'nx']);
  });

  it('walks AArch64 TTBR0 and TTBR1 (JSON by default)', async () => {
    const a64 = image('a64.bin', 6, [
      [1, 0, 0x2000n | 0x3n],
      [2, 1, 0x4000_0000n | 0x441n], // 1 GiB block, AF, EL0 RW
      [3, 511, 0x4000n | 0x3n | (1n << 61n)], // APTable[0]: no EL0 access below
      [4, 511, 0x4000_0000n | 0x441n], // 1 GiB block at the top of the space, AP says EL0 RW
    ]);
    const r = await vmkit('pagetable', 'dump', a64, '--cr3', '0x1000', '--ttbr1', '0x3000', '--mode', 'aarch64');
    expect(r.code).toBe(0);
    const maps = JSON.parse(r.stdout) as { gva: string; gpa: string; pageSize: number; flags: string[] }[];
    expect(maps.map((m) => [m.gva, m.gpa, m.pageSize, m.flags.join(' ')])).toEqual([
      ['0x40000000', '0x40000000', 1 << 30, 'present write user accessed global'],
      ['0xffffffffc0000000', '0x40000000', 1 << 30, 'present write accessed global'],
    ]);
    const q = await vmkit('pagetable', 'dump', a64, '--cr3', '0x1000', '--mode', 'aarch64', '--format', 'qemu');
    expect(q.code).toBe(2);
  });
});

describe('tables shared by every entry (2^36 mappings in 16 KiB)', () => {
  // Every PML4E → one PDPT, every PDPTE → one PD, every PDE → one PT, every PTE present.
  const entries: [number, number, bigint][] = [];
  for (let i = 0; i < 512; i++) entries.push([1, i, 0x2000n | 3n], [2, i, 0x3000n | 3n], [3, i, 0x4000n | 3n], [4, i, (BigInt(i) << 12n) | 1n]);
  const dag = image('dag.bin', 5, entries);

  it('--limit stops the dump', async () => {
    const r = await vmkit('pagetable', 'dump', dag, '--cr3', '0x1000', '--limit', '1000');
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines).toHaveLength(1000);
    expect(lines[999]).toBe('00000000003e7000: 00000000001e7000 ---------'); // PD[1], PT[487]
  });

  it('a reader that goes away ends the dump (no hang, no unbounded buffering)', async () => {
    const bin = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
    const child = spawn(process.execPath, [bin, 'pagetable', 'dump', dag, '--cr3', '0x1000'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    await new Promise((res) => child.stdout.once('data', res));
    child.stdout.destroy();
    const code = await new Promise((res) => child.once('exit', res));
    expect([code, stderr]).toEqual([0, '']);
  });
});

describe('vmkit pagetable translate', () => {
  it('translates, reports faults with their level and exits 1 when any faulted', async () => {
    const r = await vmkit('pagetable', 'translate', x86, '--cr3', '0x1000', '0x200123', '0xffffffff80001000', '0x600000', '0x800000000000');
    expect(r.code).toBe(1);
    expect(r.stdout.split('\n')).toEqual([
      '0000000000200123: 000000000abcd123 4K present,user,accessed',
      'ffffffff80001000: 0000000080001000 1G present,accessed,global,nx',
      '0000000000600000: fault not-present at level 2 (entry 0000000000000000)',
      '0000800000000000: fault non-canonical at level 4',
      '',
    ]);
    const ok = await vmkit('pagetable', 'translate', x86, '--cr3', '0x1000', '--json', '0x200123');
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout)).toEqual([
      { gva: '0x200123', ok: true, gpa: '0xabcd123', pageSize: 4096, level: 1, flags: ['present', 'user', 'accessed'], leaf: '0xabcd025' },
    ]);
    const loop = await vmkit('pagetable', 'translate', x86, '--cr3', '0x1000', '--json', '0x8000000000', '0x18000000000', '0x40000000');
    expect(JSON.parse(loop.stdout)).toMatchObject([
      { ok: false, reason: 'not-present', level: 4 }, // PML4[1] is empty
      // PML4[3] loops: the PML4 read as a PDPT, [0] → the PDPT read as a PD, [0] → the PD read as a PT, [0] is empty.
      { ok: false, reason: 'not-present', level: 1 },
      { ok: false, reason: 'outside-memory', level: 2 },
    ]);
  });
});

describe('bad input', () => {
  it.each([
    [['pagetable', 'dump', join(dir, 'missing.bin'), '--cr3', '0x1000'], 1, 'NOT_FOUND'],
    [['pagetable', 'dump', x86], 2, 'ARG_RANGE'],
    [['pagetable', 'dump', x86, '--cr3', 'banana'], 2, 'ARG_RANGE'],
    [['pagetable', 'dump', x86, '--cr3', '0x100000'], 2, 'ARG_RANGE'], // past the image
    [['pagetable', 'dump', x86, '--cr3', '0x1000', '--mode', 'riscv'], 2, 'ARG_RANGE'],
    [['pagetable', 'dump', x86, '--cr3', '0x1000', '--ttbr1', '0x2000'], 2, 'ARG_RANGE'],
    [['pagetable', 'translate', x86, '--cr3', '0x1000'], 2, 'ARG_RANGE'],
    [['pagetable', 'frob', x86], 2, 'ARG_RANGE'],
    [['pagetable', 'dump', x86, '--cr3', '0x1000', '--engine', 'turbo'], 2, 'ARG_RANGE'],
  ])('%j → exit %i, %s', async (argv, code, err) => {
    const r = await vmkit(...argv, '--json');
    expect(r.code).toBe(code);
    expect(JSON.parse(r.stdout)).toMatchObject({ error: { code: err } });
  });
});
