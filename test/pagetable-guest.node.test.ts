// A real Linux guest against QEMU: scripts/guest-fixture.mjs boots Debian's
// kernel under QEMU (4-level and LA57 5-level paging), stops it in user space
// and saves its physical memory, CR3 and QEMU's own `info tlb`. The built CLI
// (`vmkit pagetable dump --format qemu`) must print exactly QEMU's lines, and
// `vmkit pagetable translate` must agree with them on sampled addresses.
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const CLI = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
const VARIANTS = [
  ['x86_64', 'x86-64'],
  ['x86_64-la57', 'x86-64-5level'],
] as const;

interface TlbLine {
  va: bigint;
  pa: bigint;
  flags: string;
}

function parseTlb(text: string): TlbLine[] {
  return text
    .trimEnd()
    .split('\n')
    .map((l) => {
      const m = /^([0-9a-f]{16}): ([0-9a-f]{16}) ([X-][G-][P-][D-][A-][C-][T-][U-][W-])$/.exec(l);
      if (!m) throw new Error(`not an info tlb line: ${l}`);
      return { va: BigInt(`0x${m[1]}`), pa: BigInt(`0x${m[2]}`), flags: m[3]! };
    });
}

for (const [variant, mode] of VARIANTS) {
  describe(`real guest ${variant} (${mode})`, () => {
    const dir = fileURLToPath(new URL(`../.cache/guest/${variant}/`, import.meta.url));
    const have = existsSync(`${dir}mem.bin`) && existsSync(`${dir}tlb.txt`) && existsSync(`${dir}cr3.txt`);
    if (!have && process.env.CI === 'true') throw new Error(`missing .cache/guest/${variant} (node scripts/guest-fixture.mjs ${variant})`);
    if (!have) console.warn(`\n*** SKIPPING real guest ${variant}: run node scripts/guest-fixture.mjs ${variant} ***\n`);
    const cr3 = have ? readFileSync(`${dir}cr3.txt`, 'utf8').trim() : '';

    it.skipIf(!have)('the fixture runs the paging mode its name says (CR4.LA57)', () => {
      const cr4 = /CR4=([0-9a-f]+)/i.exec(readFileSync(`${dir}registers.txt`, 'utf8'));
      expect(cr4).not.toBeNull();
      expect(((parseInt(cr4![1]!, 16) >> 12) & 1) === 1 ? 'x86-64-5level' : 'x86-64').toBe(mode);
    });

    it.skipIf(!have).each(['core', 'reference'])('vmkit pagetable dump --format qemu --engine %s equals QEMU info tlb line for line', async (engine) => {
      const expected = readFileSync(`${dir}tlb.txt`, 'utf8').split('\n');
      const { stdout } = await run('node', [CLI, 'pagetable', 'dump', `${dir}mem.bin`, '--cr3', cr3, '--mode', mode, '--format', 'qemu', '--engine', engine], {
        maxBuffer: 64 << 20,
      });
      const got = stdout.split('\n');
      expect(expected.length).toBeGreaterThan(1000);
      const first = got.findIndex((l, i) => l !== expected[i]);
      // Report the first difference rather than a 70 000-line diff.
      expect(first === -1 && got.length === expected.length ? 'equal' : `line ${first + 1}: got ${got[first]} want ${expected[first]}`).toBe('equal');
    });

    it.skipIf(!have)('vmkit pagetable translate agrees with info tlb on sampled addresses and holes', async () => {
      const tlb = parseTlb(readFileSync(`${dir}tlb.txt`, 'utf8'));
      // First, last, every large page kind, some user pages, and a spread of the rest.
      const picks = new Set<number>([0, tlb.length - 1]);
      for (const kind of [/^..P/, /U.$/, /^X/, /^-/, /W$/]) picks.add(tlb.findIndex((l) => kind.test(l.flags)));
      for (let i = 1; i < 9; i++) picks.add(Math.floor((tlb.length * i) / 9));
      picks.delete(-1);
      const samples = [...picks].map((i) => tlb[i]!);
      const offset = 0x7a8n;
      // Holes: the address right after a page whose successor starts later (same half of the space).
      const holes: bigint[] = [];
      for (let i = 0; i + 1 < tlb.length && holes.length < 3; i++) {
        const end = tlb[i]!.va + (tlb[i]!.flags[2] === 'P' ? 2n << 20n : 4096n);
        if (end < tlb[i + 1]!.va && tlb[i]!.flags[2] !== 'P' && end >> 47n === tlb[i]!.va >> 47n) holes.push(end);
      }
      expect(holes.length).toBeGreaterThan(0);
      const args = [...samples.map((s) => `0x${(s.va + offset).toString(16)}`), ...holes.map((h) => `0x${h.toString(16)}`)];
      const out = await run('node', [CLI, 'pagetable', 'translate', `${dir}mem.bin`, '--cr3', cr3, '--mode', mode, '--json', ...args]).then(
        (r) => r.stdout,
        (e: { code: number; stdout: string }) => {
          expect(e.code).toBe(1); // some addresses faulted
          return e.stdout;
        },
      );
      const results = JSON.parse(out) as { ok: boolean; gpa?: string; pageSize?: number; flags?: string[]; reason?: string }[];
      expect(results).toHaveLength(args.length);
      samples.forEach((s, i) => {
        const r = results[i]!;
        expect(r.ok, `0x${s.va.toString(16)}`).toBe(true);
        const large = s.flags[2] === 'P';
        expect(r.pageSize! > 4096).toBe(large);
        expect(BigInt(r.gpa!)).toBe(s.pa + offset);
        const has = (f: string): boolean => r.flags!.includes(f);
        // The leaf's own A, D, G, PCD, PWT are the effective ones; W and U are ANDed, XD ORed over the levels.
        expect([has('accessed'), has('dirty'), has('global'), has('pcd'), has('pwt')]).toEqual(['A', 'D', 'G', 'C', 'T'].map((c) => s.flags.includes(c)));
        if (s.flags[0] === 'X') expect(has('nx')).toBe(true);
        if (s.flags[8] === '-') expect(has('write')).toBe(false);
        if (s.flags[7] === '-') expect(has('user')).toBe(false);
      });
      holes.forEach((h, i) => {
        expect(results[samples.length + i], `0x${h.toString(16)}`).toMatchObject({ ok: false, reason: 'not-present' });
      });
    });
  });
}
