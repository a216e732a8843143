// `vmkit prefetch simulate` on a hand-built x86-64 guest image: the guest's
// own page tables are walked; exact counts per policy, hex and lackey
// traces, unmapped addresses counted; and a real lackey trace of /bin/true.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { CheckpointWriter } from '../bindings/memory/index.js';
import { needTool } from './_tools.js';

const dir = mkdtempSync(join(tmpdir(), 'vmkit-prefetch-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// Guest: 64 frames. PML4 in frame 1, PDPT 2, PD 3, PT 4. Virtual pages
// 0x400 + i (i < 16; GVA 0x400000 + i * 4096) map to frames 8 + 3i: no two
// virtual neighbours are physical neighbours, and frames 7 + 3i, 9 + 3i are
// never used.
const frameOf = (i: number): number => 8 + 3 * i;
const img = new Uint8Array(64 * 4096);
const dv = new DataView(img.buffer);
const entry = (table: number, index: number, target: number): void => dv.setBigUint64(table * 4096 + index * 8, (BigInt(target) << 12n) | 7n, true);
entry(1, 0, 2); // PML4[0] -> PDPT
entry(2, 0, 3); // PDPT[0] -> PD
entry(3, 2, 4); // PD[2] covers 0x400000..0x5fffff -> PT
for (let i = 0; i < 16; i++) entry(4, i, frameOf(i));
const image = join(dir, 'guest.raw');
writeFileSync(image, img);

const hexTrace = join(dir, 'trace.txt');
writeFileSync(hexTrace, ['# first touches', ...Array.from({ length: 16 }, (_, i) => (0x400000 + i * 4096 + 0x10).toString(16)), '0x900000', ''].join('\n'));
// The same accesses as lackey prints them, each page touched three times.
const lackeyTrace = join(dir, 'lackey.txt');
writeFileSync(
  lackeyTrace,
  ['==1== Lackey, an example Valgrind tool', ...Array.from({ length: 16 }, (_, i) => (0x400000 + i * 4096).toString(16)).flatMap((a) => [`I  ${a},3`, ` L ${a},8`, ` S ${a},4`]), ' M 900000,8', '==1== '].join('\n'),
);

// The built CLI as a user runs it (npm test builds dist/ first).
const bin = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
async function run(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

async function sim(...args: string[]): Promise<Record<string, number>> {
  const r = await run('prefetch', 'simulate', image, '--cr3', '0x1000', '--json', ...args);
  expect(r.err).toBe('');
  expect(r.code).toBe(0);
  return JSON.parse(r.out) as Record<string, number>;
}

describe('vmkit prefetch simulate', () => {
  it('none: one fault per page; the unmapped address counted', async () => {
    const r = await sim('--trace', hexTrace, '--policy', 'none');
    expect([r.accesses, r.unmapped, r.faults, r.prefetched, r.reads, r.bytesRead]).toEqual([17, 1, 16, 0, 16, 16 * 4096]);
    // The walker read the four table pages once (its frame cache keeps them).
    expect(r.ptReads).toBe(4);
  });

  it('physical ±1 loads frames nobody uses', async () => {
    // Each of the 16 faults brings 7 + 3i and 9 + 3i: 32 prefetched, all wasted, one run each.
    const r = await sim('--trace', hexTrace, '--policy', 'physical', '--back', '1', '--ahead', '1');
    expect([r.faults, r.prefetched, r.prefetchHits, r.wasted, r.reads]).toEqual([16, 32, 0, 32, 16]);
  });

  it('virtual ahead 3 walks the guest tables for the neighbours', async () => {
    // Faults at i = 0, 4, 8, 12; each brings the next three (12 used). Frames
    // 3 apart: four runs per fault, 16 reads.
    const r = await sim('--trace', hexTrace, '--policy', 'virtual', '--back', '0', '--ahead', '3');
    expect([r.faults, r.prefetched, r.prefetchHits, r.wasted, r.reads]).toEqual([4, 12, 12, 0, 16]);
    // The same through the engine's own table.
    const t = await sim('--trace', hexTrace, '--policy', 'virtual', '--back', '0', '--ahead', '3', '--translate', 'table');
    expect([t.faults, t.prefetched, t.prefetchHits, t.wasted, t.reads]).toEqual([4, 12, 12, 0, 16]);
  });

  it('lackey output gives the same faults as the hex trace', async () => {
    const r = await sim('--trace', lackeyTrace, '--policy', 'virtual', '--back', '0', '--ahead', '3');
    // 16 pages × 3 accesses + 1 unmapped = 49 accesses; faults as before.
    expect([r.accesses, r.unmapped, r.faults, r.prefetchHits]).toEqual([49, 1, 4, 12]);
  });

  it('--record writes the working set; replay loads it', async () => {
    const rec = join(dir, 'rec.txt');
    await sim('--trace', hexTrace, '--policy', 'none', '--record', rec);
    const frames = readFileSync(rec, 'utf8').trim().split('\n').map((h) => parseInt(h, 16));
    expect(frames).toEqual(Array.from({ length: 16 }, (_, i) => frameOf(i)));
    // Replay only the first half: 8 loaded up front and used, 8 faults.
    const half = join(dir, 'half.txt');
    writeFileSync(half, frames.slice(0, 8).map((f) => f.toString(16)).join('\n'));
    const r = await sim('--trace', hexTrace, '--policy', 'replay', '--record', half);
    expect([r.faults, r.prefetched, r.prefetchHits, r.wasted]).toEqual([8, 8, 8, 0]);
    // replay+virtual (ahead 3): the fault at i = 8 brings 9..11, i = 12 brings 13..15: 2 faults.
    const c = await sim('--trace', hexTrace, '--policy', 'replay+virtual', '--record', half, '--back', '0', '--ahead', '3');
    expect([c.faults, c.prefetched, c.prefetchHits]).toEqual([2, 14, 14]);
  });

  it('a checkpoint as the memory image: reads counted per storage block', async () => {
    // Data frames get contents (zero pages are not stored in a checkpoint). Stored raw, a 64 KiB
    // block holds 15 pages; stored pages in order: tables 1..4, then frames 8, 11, ..., 53. Block 0
    // holds 1..4 and frames 8..38 (i = 0..10), block 1 frames 41..53 (i = 11..15).
    const data = img.slice();
    for (let i = 0; i < 16; i++) data.fill(i + 1, frameOf(i) * 4096, (frameOf(i) + 1) * 4096);
    const ckpt = join(dir, 'guest.ckpt');
    const w = await CheckpointWriter.create(ckpt, { guestSize: data.length, blockSize: 65536, codec: 'none' });
    await w.writePages(0, data);
    await w.finish();
    const run2 = async (...args: string[]): Promise<Record<string, number>> => {
      const r = await run('prefetch', 'simulate', ckpt, '--cr3', '0x1000', '--json', '--trace', hexTrace, ...args);
      expect(r.err).toBe('');
      return JSON.parse(r.out) as Record<string, number>;
    };
    // none: 16 faults, one block each.
    expect((await run2('--policy', 'none')).reads).toBe(16);
    // virtual ahead 3: faults at i = 0, 4 (block 0), 8 (frames 32..41: blocks 0 and 1), 12 (block 1): 5 reads.
    const v = await run2('--policy', 'virtual', '--back', '0', '--ahead', '3');
    expect([v.faults, v.prefetchHits, v.reads]).toEqual([4, 12, 5]);
  });

  it('bad input: usage errors and corrupt traces', async () => {
    const bad = join(dir, 'bad.txt');
    writeFileSync(bad, '400000\nhello\n');
    const r = await run('prefetch', 'simulate', image, '--cr3', '0x1000', '--trace', bad, '--policy', 'none', '--json');
    expect(r.code).not.toBe(0);
    expect(JSON.parse(r.out)).toMatchObject({ error: { code: 'CORRUPT' } });
    expect(r.err).toMatch(/bad\.txt:2/);
    expect((await run('prefetch', 'simulate', image, '--cr3', '0x1000', '--trace', hexTrace, '--policy', 'magic')).code).toBe(2);
    expect((await run('prefetch', 'simulate', image, '--cr3', '0x1000', '--trace', hexTrace, '--policy', 'replay')).code).toBe(2);
    expect((await run('prefetch', 'simulate', join(dir, 'missing.raw'), '--cr3', '0x1000', '--trace', hexTrace, '--policy', 'none')).code).not.toBe(0);
  });

  it('a real lackey trace of /bin/true: all unmapped in this guest, none fatal', async () => {
    if (!needTool('valgrind', 'valgrind')) return;
    const t = join(dir, 'true.lackey');
    execFileSync('valgrind', ['--tool=lackey', '--trace-mem=yes', `--log-file=${t}`, '/bin/true']);
    const r = await sim('--trace', t, '--policy', 'virtual');
    expect(r.accesses).toBeGreaterThan(10_000);
    expect(r.unmapped).toBe(r.accesses);
    expect(r.faults).toBe(0);
  });
});
