// The shared page store: checkpoints of several guests sharing pages, garbage
// collection, and a save running while a collection sweeps (no page lost; no
// page kept that nothing uses after the next collection); and the CLI.
import { spawnSync } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { codeOf } from './_codes.js';
import { LazyGuestMemory, PageStore, createPolicy, gpa } from '../bindings/memory/index.js';

const bin = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vmkit-store-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const PS = 4096;
/** The first specs store single pages (their counts are per page); the default 16-page frames are checked after. */
const PAGES = { framePages: 1 };

/** A "kernel and initramfs" shared by every guest, then each guest's own pages and zeros. */
const shared = new Uint8Array(300 * PS);
randomFillSync(shared.subarray(0, 100 * PS));
for (let i = 100 * PS; i < shared.length; i += 4) new DataView(shared.buffer).setUint32(i, (i >> 7) * 2654435761, true);
function guest(seed: number, own: number): Uint8Array {
  const b = new Uint8Array(1024 * PS);
  b.set(shared, 0);
  const mine = b.subarray(600 * PS, (600 + own) * PS);
  randomFillSync(mine);
  mine[0] = seed;
  return b;
}

function pageFiles(store: string): Set<string> {
  const out = new Set<string>();
  for (const d of readdirSync(join(store, 'frames'))) for (const f of readdirSync(join(store, 'frames', d))) out.add(f);
  return out;
}

async function usedHashes(store: PageStore): Promise<Set<string>> {
  const used = new Set<string>();
  for (const name of await store.list()) {
    const b = readFileSync(join(store.dir, 'checkpoints', `${name}.vmkidx`));
    const n = Math.ceil(b.readUInt32LE(40) / b.readUInt32LE(44));
    for (let i = 0; i < n; i++) {
      const h = b.subarray(48 + 32 * i, 80 + 32 * i);
      if (h.some((x) => x !== 0)) used.add(h.toString('hex'));
    }
  }
  return used;
}

async function restore(store: PageStore, name: string): Promise<Uint8Array> {
  const ck = await store.openCheckpoint(name);
  const out = new Uint8Array(ck.pageCount * PS);
  await ck.readPagesInto(0, ck.pageCount, out);
  return out;
}

describe('shared page store', () => {
  const sdir = join(dir, 'store');
  const g = [guest(1, 50), guest(2, 60), guest(3, 70)];

  it('checkpoints of guests from one image share their pages; each restores exactly', async () => {
    const store = await PageStore.open(sdir, { create: true, ...PAGES });
    const st1 = await store.save('g1', g[0]!);
    expect(st1).toMatchObject({ pages: 1024, zeroPages: 1024 - 350, frames: 1024, zeroFrames: 1024 - 350, newFrames: 350 });
    const st2 = await store.save('g2', g[1]!);
    // Only g2's own 60 pages are new.
    expect(st2.newFrames).toBe(60);
    expect(st2.sharedFrames).toBe(300);
    await store.save('g3', g[2]!);
    expect(await store.list()).toEqual(['g1', 'g2', 'g3']);
    expect(pageFiles(sdir).size).toBe(300 + 50 + 60 + 70);
    for (let i = 0; i < 3; i++) expect(await restore(store, `g${i + 1}`)).toEqual(g[i]);
    // Lazy memory over a store checkpoint.
    const m = await LazyGuestMemory.open(await store.openCheckpoint('g2'), { policy: createPolicy('physical', { back: 2, ahead: 2 }) });
    const b = new Uint8Array(PS);
    await m.read(gpa(BigInt(605 * PS)), b);
    expect(b).toEqual(g[1]!.subarray(605 * PS, 606 * PS));
  });

  it('gc drops exactly the pages no checkpoint uses', async () => {
    const store = await PageStore.open(sdir, PAGES);
    await store.remove('g1');
    const st = await store.gc();
    expect(st.removed).toBe(50);
    expect(pageFiles(sdir)).toEqual(await usedHashes(store));
    expect(await restore(store, 'g2')).toEqual(g[1]);
    expect(await codeOf(store.gc())).toBe('resolved');
  });

  it('a save during a collection loses no page; the next collection keeps nothing unused', async () => {
    // g3 is removed; while the collector has marked (without g3's pages) and is about to sweep them,
    // a save of g3's image again finds those pages present and reuses them.
    const saver = await PageStore.open(sdir, {
      ...PAGES,
      onStep: async (s) => {
        if (s === 'save:pages') reachedPages();
      },
    });
    let reachedPages!: () => void;
    const atPages = new Promise<void>((r) => (reachedPages = r));
    let saving: Promise<unknown> | undefined;
    const collector = await PageStore.open(sdir, {
      ...PAGES,
      onStep: async (s) => {
        if (s !== 'gc:marked') return;
        saving = saver.save('g3-again', g[2]!);
        await atPages; // the save has checked its pages (all present) before the sweep
      },
    });
    await collector.remove('g3');
    const before = pageFiles(sdir).size;
    const st = await collector.gc();
    expect(st.removed).toBe(70); // g3's own pages were swept under the save
    expect(pageFiles(sdir).size).toBe(before - 70);
    await saving;
    // The save waited for the collection, found its pages gone and wrote them again.
    expect(await restore(saver, 'g3-again')).toEqual(g[2]);
    expect(pageFiles(sdir)).toEqual(await usedHashes(saver));
    // Nothing unused survives the next collection.
    await saver.remove('g3-again');
    const st2 = await saver.gc();
    expect(st2.removed).toBe(70);
    expect(pageFiles(sdir)).toEqual(await usedHashes(saver));
    expect(readdirSync(join(sdir, 'refs'))).toEqual([]);
  });

  it('a collection during a save keeps the pages its refs file names', async () => {
    const s = await PageStore.open(sdir, PAGES);
    let inner: Promise<unknown> | undefined;
    const saver = await PageStore.open(sdir, {
      ...PAGES,
      onStep: async (st) => {
        if (st === 'save:refs') inner = s.gc();
      },
    });
    const g4 = guest(4, 30);
    await saver.save('g4', g4);
    const gcs = (await inner) as { removed: number };
    expect(gcs.removed).toBe(0);
    expect(await restore(s, 'g4')).toEqual(g4);
  });

  it('a damaged page file is INTEGRITY, a missing one NOT_FOUND; two collections at once CONFLICT', async () => {
    const store = await PageStore.open(sdir, PAGES);
    // A page g2 holds (one of its own).
    const h = createHash('sha256').update(g[1]!.subarray(605 * PS, 606 * PS)).digest('hex');
    const f = join(sdir, 'frames', h.slice(0, 2), h);
    const orig = readFileSync(f);
    const bad = Buffer.from(orig);
    bad[bad.length - 1]! ^= 1;
    writeFileSync(f, bad);
    const ck = await store.openCheckpoint('g2');
    const all = new Uint8Array(1024 * PS);
    expect(await codeOf(ck.readPagesInto(0, 1024, all))).toMatch(/INTEGRITY|CORRUPT/);
    rmSync(f);
    expect(await codeOf(ck.readPagesInto(0, 1024, all))).toBe('NOT_FOUND');
    writeFileSync(f, orig);
    writeFileSync(join(sdir, 'gc.lock'), '1\n');
    expect(await codeOf(store.gc())).toBe('CONFLICT');
    rmSync(join(sdir, 'gc.lock'));
  });

  it('vmkit checkpoint save|restore|gc --store', () => {
    const cdir = join(dir, 'cli-store');
    const img = join(dir, 'g.mem');
    writeFileSync(img, g[0]!);
    const s = spawnSync(process.execPath, [bin, 'checkpoint', 'save', '--store', cdir, img, 'vm1', '--json']);
    expect(s.status, s.stderr.toString()).toBe(0);
    // Default 16-page frames: pages 0-299 are frames 0-18, pages 600-649 frames 37-40.
    expect(JSON.parse(s.stdout.toString())).toMatchObject({ frames: 64, newFrames: 23, zeroFrames: 41, zeroPages: 674 });
    const out = join(dir, 'g.out');
    const r = spawnSync(process.execPath, [bin, 'checkpoint', 'restore', '--store', cdir, 'vm1', out]);
    expect(r.status, r.stderr.toString()).toBe(0);
    expect(new Uint8Array(readFileSync(out))).toEqual(g[0]);
    expect(statSync(out).size).toBe(1024 * PS);
    const gc = spawnSync(process.execPath, [bin, 'checkpoint', 'gc', '--store', cdir, '--json']);
    expect(gc.status, gc.stderr.toString()).toBe(0);
    expect(JSON.parse(gc.stdout.toString())).toMatchObject({ removed: 0, kept: 23 });
  });
});

