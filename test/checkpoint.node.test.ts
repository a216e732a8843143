// Checkpoints on files and through the CLI: save/restore/inspect/read-page,
// diff saves (bitmap and compare), saves killed with SIGKILL at random points
// (rejected as incomplete, never read back wrong), and a real Linux guest's
// memory (.cache/guest/x86_64/mem.bin from scripts/guest-fixture.mjs).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { guestImage } from './_guest-image.js';
import { CheckpointReader, CheckpointWriter } from '../bindings/memory/index.js';

const bin = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vmkit-ckpt-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const PS = 4096;

function vmkit(...args: string[]) {
  return spawnSync(process.execPath, [bin, ...args], { timeout: 120_000, maxBuffer: 64 << 20 });
}


describe('vmkit checkpoint (CLI)', () => {
  const img = join(dir, 'mem.bin');
  const mem = guestImage(2048, 42); // 8 MiB
  writeFileSync(img, mem);

  it('save → inspect → restore → read-page round-trips, one write per block', () => {
    const ck = join(dir, 'a.ckpt');
    const s = vmkit('checkpoint', 'save', img, ck, '--block-size', '256K', '--json');
    expect(s.status, s.stderr.toString()).toBe(0);
    const saved = JSON.parse(s.stdout.toString());
    expect(saved.writes).toBe(saved.blocks + 3);
    const i = vmkit('checkpoint', 'inspect', ck, '--json');
    expect(i.status).toBe(0);
    const info = JSON.parse(i.stdout.toString());
    expect(info).toMatchObject({ pages: 2048, blocks: saved.blocks, blockWrites: saved.blocks, fileBytes: statSync(ck).size });
    expect(info.zeroPages + info.storedPages).toBe(2048);
    expect(info.blockSize).toBe(256 << 10);
    expect(vmkit('checkpoint', 'inspect', ck).stdout.toString()).toMatch(/zero, \d+ stored/);
    const out = join(dir, 'a.out');
    expect(vmkit('checkpoint', 'restore', ck, out).status).toBe(0);
    expect(Buffer.compare(readFileSync(out), mem)).toBe(0);
    for (const page of [0, 1, 777, 2047]) {
      const r = vmkit('checkpoint', 'read-page', ck, `0x${(page * PS + 5).toString(16)}`);
      expect(r.status).toBe(0);
      expect(Buffer.compare(r.stdout, mem.subarray(page * PS, (page + 1) * PS))).toBe(0);
    }
    const bad = vmkit('checkpoint', 'read-page', ck, String(2048 * PS), '--json');
    expect(bad.status).toBe(2);
  });

  it('diff saves: by dirty bitmap and by comparing with the parent; restore follows the chain', () => {
    const base = join(dir, 'base.ckpt');
    expect(vmkit('checkpoint', 'save', img, base).status).toBe(0);
    const next = Buffer.from(mem);
    const bitmap = Buffer.alloc(2048 / 8);
    for (const p of [5, 6, 100, 2047]) {
      next.fill(p & 0xff, p * PS, p * PS + 64);
      bitmap[p >> 3]! |= 1 << (p & 7);
    }
    const img2 = join(dir, 'mem2.bin');
    writeFileSync(img2, next);
    writeFileSync(join(dir, 'dirty.bin'), bitmap);
    for (const extra of [['--dirty', join(dir, 'dirty.bin')], []]) {
      const d = join(dir, `diff${extra.length}.ckpt`);
      const s = vmkit('checkpoint', 'save', img2, d, '--parent', base, ...extra, '--json');
      expect(s.status, s.stderr.toString()).toBe(0);
      const st = JSON.parse(s.stdout.toString());
      expect(st.absentPages).toBe(2048 - 4);
      const out = join(dir, 'diff.out');
      expect(vmkit('checkpoint', 'restore', d, out, '--force').status).toBe(0); // the loop's second pass overwrites
      expect(Buffer.compare(readFileSync(out), next)).toBe(0);
      expect(JSON.parse(vmkit('checkpoint', 'inspect', d, '--json').stdout.toString()).chain).toHaveLength(2);
    }
  });

  it('rejects bad arguments and missing files with stable codes', () => {
    expect(vmkit('checkpoint', 'save', img).status).toBe(2);
    const r = vmkit('checkpoint', 'inspect', join(dir, 'nope.ckpt'), '--json');
    expect(r.status).toBe(1);
    expect(JSON.parse(r.stdout.toString()).error.code).toBe('NOT_FOUND');
    const notCkpt = vmkit('checkpoint', 'inspect', img, '--json');
    expect(JSON.parse(notCkpt.stdout.toString()).error.code).toBe('CORRUPT');
  });
});

describe('saves on worker threads', () => {
  it('write the same file as one thread (same id), and the CLI --threads output restores', async () => {
    // Workers load dist/ (a worker cannot run the .ts sources), so this spec
    // drives the built modules end to end.
    const dist = (p: string) => new URL(`../dist/${p}`, import.meta.url).href;
    const { init } = (await import(/* @vite-ignore */ dist('index.js'))) as typeof import('../bindings/index.js');
    const m = (await import(/* @vite-ignore */ dist('memory/index.js'))) as typeof import('../bindings/memory/index.js');
    const { writeImageParallel } = (await import(/* @vite-ignore */ dist('memory/checkpoint/parallel.js'))) as typeof import('../bindings/memory/checkpoint/parallel.js');
    await init();
    const img = join(dir, 'par.bin');
    const mem = guestImage(1500, 9); // not a whole number of windows
    writeFileSync(img, mem);
    const opts = { guestSize: mem.length, id: 'ab'.repeat(16), blockSize: 64 << 10 };
    const one = join(dir, 'one.ckpt');
    const w1 = await m.CheckpointWriter.create(one, opts);
    await w1.writePages(0, mem);
    await w1.finish();
    for (const threads of [1, 2, 3]) {
      const par = join(dir, `par${threads}.ckpt`);
      const w2 = await m.CheckpointWriter.create(par, opts);
      await writeImageParallel(w2, img, { threads, windowPages: 100 });
      const st = await w2.finish();
      expect(st.writes).toBe(st.blocks + 3);
      expect(Buffer.compare(readFileSync(par), readFileSync(one)), `threads ${threads}`).toBe(0);
    }
    // The dense search on 2 threads: the single-threaded dense file (smaller than the fast one).
    const dense = { ...opts, search: 'dense' as const };
    const oneD = join(dir, 'one-dense.ckpt');
    const w3 = await m.CheckpointWriter.create(oneD, dense);
    await w3.writePages(0, mem);
    await w3.finish();
    const parD = join(dir, 'par-dense.ckpt');
    const w4 = await m.CheckpointWriter.create(parD, dense);
    await writeImageParallel(w4, img, { threads: 2, windowPages: 100 });
    await w4.finish();
    expect(Buffer.compare(readFileSync(parD), readFileSync(oneD))).toBe(0);
    expect(readFileSync(oneD).length).toBeLessThan(readFileSync(one).length);
    const ck = join(dir, 'cli-par.ckpt');
    expect(vmkit('checkpoint', 'save', img, ck, '--threads', '2').status).toBe(0);
    const out = join(dir, 'cli-par.out');
    expect(vmkit('checkpoint', 'restore', ck, out).status).toBe(0);
    expect(Buffer.compare(readFileSync(out), mem)).toBe(0);
    expect(vmkit('checkpoint', 'save', img, ck, '--threads', '0').status).toBe(2);
  });
});

describe('saves killed with SIGKILL', () => {
  it('leave files that inspect/restore reject as incomplete, never wrong data', async () => {
    const img = join(dir, 'big.bin');
    const mem = guestImage(16384, 7); // 64 MiB, a quarter random
    writeFileSync(img, mem);
    let rejected = 0;
    // Kill once the save has written some blocks (its file grows past a
    // threshold), at a different point each time, plus once before it starts.
    // Every other save runs on two worker threads (same writer, same footer-last order).
    // Fixed points (before any block, after the header) and random ones; the
    // values are in the failure message.
    const points = [0, 8192, ...Array.from({ length: 4 }, () => 65536 + Math.floor(Math.random() * (24 << 20)))];
    for (const [k, threshold] of points.entries()) {
      const ck = join(dir, `kill${threshold}.ckpt`);
      const threads = k % 2 === 1 ? ['--threads', '2'] : [];
      const child = spawn(process.execPath, [bin, 'checkpoint', 'save', img, ck, '--block-size', '64K', ...threads], { stdio: 'ignore' });
      const exited = new Promise((r) => child.on('exit', r));
      let done = false;
      void exited.then(() => (done = true));
      const t0 = Date.now();
      while (!done && Date.now() - t0 < 20_000) {
        if (threshold > 0 && existsSync(ck) && statSync(ck).size >= threshold) break;
        if (threshold === 0 && existsSync(ck)) break;
        await new Promise((r) => setTimeout(r, 1));
      }
      child.kill('SIGKILL');
      await exited;
      if (!existsSync(ck)) continue;
      const i = vmkit('checkpoint', 'inspect', ck, '--json');
      if (i.status === 0) {
        // The save finished before the kill: it must read back exactly.
        const out = join(dir, 'kill.out');
        expect(vmkit('checkpoint', 'restore', ck, out, '--force').status).toBe(0); // kill.out is reused
        expect(Buffer.compare(readFileSync(out), mem), `killed at ${threshold} bytes`).toBe(0);
      } else {
        rejected++;
        if (!i.stdout.length) throw new Error(`inspect gave status ${i.status} signal ${i.signal} stderr ${i.stderr}`);
        expect(JSON.parse(i.stdout.toString()).error.code, `killed at ${threshold} bytes (points ${points.join(', ')})`).toBe('CORRUPT');
        expect(i.stderr.toString()).toMatch(/incomplete|truncated|end of file/);
        expect(vmkit('checkpoint', 'restore', ck, join(dir, 'kill.out'), '--force').status).toBe(1);
      }
    }
    expect(rejected).toBeGreaterThan(0);
  });
});

describe('a real guest memory image', () => {
  const real = fileURLToPath(new URL('../.cache/guest/x86_64/mem.bin', import.meta.url));
  const have = existsSync(real);
  if (!have && process.env.CI === 'true') throw new Error('missing .cache/guest/x86_64/mem.bin (scripts/guest-fixture.mjs)');
  if (!have) console.warn('\n*** SKIPPING real-guest checkpoint: run node scripts/guest-fixture.mjs ***\n');

  it.skipIf(!have)('round-trips the 256 MiB Linux guest, lazily and fully, with one write per block', async () => {
    const mem = readFileSync(real);
    const ck = join(dir, 'guest.ckpt');
    const w = await CheckpointWriter.create(ck, { guestSize: mem.length });
    await w.writePages(0, mem);
    const st = await w.finish();
    expect(st.writes).toBe(st.blocks + 3);
    expect(st.fileBytes).toBeLessThan(mem.length / 2); // a booted guest is mostly zero or compressible
    const r = await CheckpointReader.open(ck, { cacheBlocks: 4 });
    // Lazy random reads: at most one block read each.
    let x = 1;
    for (let i = 0; i < 200; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      const p = x % r.pageCount;
      const before = r.stats.blockReads;
      const page = await r.readPage(p);
      expect(r.stats.blockReads - before).toBeLessThanOrEqual(1);
      expect(Buffer.compare(page, mem.subarray(p * PS, (p + 1) * PS))).toBe(0);
    }
    const out = join(dir, 'guest.out');
    await r.restoreTo(out);
    await r.close();
    expect(Buffer.compare(readFileSync(out), mem)).toBe(0);
    rmSync(out);
    rmSync(ck);
  });
});
