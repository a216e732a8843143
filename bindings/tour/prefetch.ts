/**
 * Tour chapter: fault-time prefetch. Build a 64 MiB guest whose page tables
 * map a program-like layout (code, heap, stack, libraries) onto frames
 * scattered the way a long-running kernel scatters them, restore it lazily
 * from a checkpoint, and run the same access trace under every policy:
 * physical neighbours (fault-around) load the wrong pages, virtual
 * neighbours (translated through the guest's own tables) the right ones.
 * @module
 */
import { AddressSpace } from '../memory/paging/address-space.js';
import { CheckpointReader } from '../memory/checkpoint/reader.js';
import { CheckpointWriter } from '../memory/checkpoint/writer.js';
import { memorySink } from '../memory/checkpoint/io.js';
import { LazyGuestMemory } from '../memory/prefetch/lazy-memory.js';
import { bufferPages } from '../memory/prefetch/page-sources.js';
import { createPolicy } from '../memory/prefetch/policies.js';
import { gva, type Gpa } from '../memory/types.js';

const PS = 4096;

function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => (x = (Math.imul(x, 1103515245) + 12345) >>> 0);
}

/**
 * A guest with x86-64 tables: regions of virtual pages, each mapped onto
 * frames taken from a shuffled free list in small runs (a buddy allocator
 * after a while: some order-1/2 blocks, mostly scattered).
 */
function buildGuest(pages: number): { image: Uint8Array; cr3: bigint; trace: bigint[]; mapped: number } {
  const image = new Uint8Array(pages * PS);
  const dv = new DataView(image.buffer);
  const r = rng(7);
  let nextTable = 1;
  const table = (): number => nextTable++;
  const pml4 = table();
  const free: number[] = [];
  for (let f = 64; f < pages; f += 4) free.push(f);
  for (let i = free.length - 1; i > 0; i--) {
    const j = r() % (i + 1);
    [free[i], free[j]] = [free[j]!, free[i]!];
  }
  let run: number[] = [];
  const frame = (): number => {
    if (run.length === 0) {
      const b = free.pop()!;
      const n = 1 + (r() % 4);
      run = Array.from({ length: n }, (_, i) => b + i);
    }
    return run.shift()!;
  };
  const entry = (t: number, i: number, target: number): void => dv.setBigUint64(t * PS + i * 8, (BigInt(target) << 12n) | 7n, true);
  const child = (t: number, i: number): number => {
    const e = dv.getBigUint64(t * PS + i * 8, true);
    if (e & 1n) return Number(e >> 12n);
    const c = table();
    entry(t, i, c);
    return c;
  };
  const map = (vpn: number): void => {
    const v = BigInt(vpn);
    const pt = child(child(child(pml4, Number((v >> 27n) & 511n)), Number((v >> 18n) & 511n)), Number((v >> 9n) & 511n));
    const f = frame();
    entry(pt, vpn & 511, f);
    // Each page says which virtual page it is; the rest is noise, so checkpoint blocks hold ~60 pages.
    for (let i = 4; i < PS; i += 4) dv.setUint32(f * PS + i, r(), true);
    dv.setUint32(f * PS, vpn, true);
  };
  // Regions: code 0x400, heap 0x600, libraries 0x7f000, stack 0x7ffe0 (in pages).
  const regions: [number, number][] = [[0x400, 300], [0x600, 900], [0x7f000, 700], [0x7ffe0, 24]];
  for (const [base, n] of regions) for (let i = 0; i < n; i++) map(base + i);
  // The trace: first touches walking each region mostly forward, skipping some pages.
  const trace: bigint[] = [];
  for (const [base, n] of regions) for (let i = 0; i < n; i++) if (r() % 10 < 7) trace.push(BigInt(base + i) << 12n);
  return { image, cr3: BigInt(pml4 * PS), trace, mapped: regions.reduce((a, [, n]) => a + n, 0) };
}

/**
 * Runs the chapter, printing through `log`.
 * @example
 * ```ts
 * // `npm start` (bindings/bin/tour.ts) runs every chapter this way; the tour is not part of the package's exports.
 * import { chapter } from '../tour/prefetch.js';
 * await chapter(console.log);
 * ```
 */
export async function chapter(log: (s: string) => void): Promise<void> {
  const pages = 16384; // 64 MiB
  const { image, cr3, trace, mapped } = buildGuest(pages);
  const sink = memorySink();
  const w = await CheckpointWriter.create(sink, { guestSize: image.length, blockSize: 256 << 10 });
  await w.writePages(0, image);
  await w.finish();
  log(`guest: ${image.length >> 20} MiB, ${mapped} virtual pages in 4 regions on scattered frames; trace: ${trace.length} first touches`);
  // The address space reads the guest's tables from the image itself.
  const tables = bufferPages(image);
  const memory = { size: BigInt(image.length), readSync: (at: Gpa, dst: Uint8Array): void => tables.readPagesIntoSync(Number(at) / PS, dst.length / PS, dst) };
  const space = AddressSpace.create({ memory, mode: 'x86-64', root: cr3 });
  const rows: string[] = [];
  for (const [name, opts] of [
    ['none', {}],
    ['physical', { back: 8, ahead: 8 }],
    ['virtual', { back: 8, ahead: 8 }],
    ['adaptive', { ahead: 8 }],
  ] as const) {
    const reader = await CheckpointReader.open(sink.bytes());
    const mem = await LazyGuestMemory.open(reader, { translator: space, policy: createPolicy(name, opts) });
    const b = new Uint8Array(4);
    let wrong = 0;
    for (const a of trace) {
      await mem.readVirtual(gva(a), b);
      if (new DataView(b.buffer).getUint32(0, true) !== Number(a >> 12n)) wrong++;
    }
    const s = mem.stats();
    rows.push(`${name.padEnd(9)} faults ${String(s.faults).padStart(5)}  prefetched ${String(s.prefetched).padStart(5)} (used ${String(s.prefetchHits).padStart(5)}, wasted ${String(s.wasted).padStart(5)})  reads ${String(s.reads).padStart(5)} (checkpoint reads ${String(reader.stats.reads).padStart(4)})  wrong bytes: ${wrong}`);
    mem.close();
    await reader.close();
  }
  space.dispose();
  for (const r of rows) log(r);
  log('physical neighbours are other processes\' pages here; virtual neighbours, found through the guest\'s page tables, are the pages the program uses next');
}
