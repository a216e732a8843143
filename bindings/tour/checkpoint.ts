/**
 * Tour chapter: lazy checkpoints. Make a 32 MiB guest memory (zero pages,
 * text-like pages, random pages, a kernel-like page pattern), save it through
 * the core's staging buffer (one write per storage block), read pages back
 * lazily (one block read at most, none when cached), save a diff checkpoint
 * from a dirty bitmap, restore through the chain, and watch a flipped bit get
 * caught.
 * @module
 */
import { VmkitError } from '../errors.js';
import { CheckpointReader } from '../memory/checkpoint/reader.js';
import { CheckpointWriter } from '../memory/checkpoint/writer.js';
import { memorySink } from '../memory/checkpoint/io.js';

const PS = 4096;

/** A guest memory: 60% zero pages, the rest text-like, structured or random. */
function makeGuest(pages: number): Uint8Array {
  const m = new Uint8Array(pages * PS);
  let x = 12345;
  const r = (): number => (x = (Math.imul(x, 1103515245) + 12345) >>> 0);
  const words = ['the ', 'page ', 'table ', 'kernel ', 'memory ', 'guest ', 'block ', 'fault '];
  for (let p = 0; p < pages; p++) {
    const pg = m.subarray(p * PS, (p + 1) * PS);
    const k = r() % 10;
    if (k < 6) continue; // zero
    if (k < 8) {
      let at = 0;
      while (at < PS) {
        const w = words[r() % words.length]!;
        for (let i = 0; i < w.length && at < PS; i++) pg[at++] = w.charCodeAt(i);
      }
    } else if (k < 9) {
      // 8-byte pointers into one region, as in kernel data structures.
      const dv = new DataView(pg.buffer, pg.byteOffset, PS);
      for (let i = 0; i < PS; i += 8) dv.setBigUint64(i, 0xffff888000000000n + BigInt((r() % 4096) * 64), true);
    } else {
      for (let i = 0; i < PS; i++) pg[i] = r() >>> 24;
    }
  }
  return m;
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Runs the chapter, printing through `log`.
 *
 * @example
 * ```ts
 * // `npm start` (bindings/bin/tour.ts) runs every chapter this way; the tour is not part of the package's exports.
 * import { chapter } from '../tour/checkpoint.js';
 * await chapter(console.log);
 * ```
 */
export async function chapter(log: (s: string) => void): Promise<void> {
  const pages = 8192;
  const mem = makeGuest(pages);
  const mib = (n: number): string => `${(n / 2 ** 20).toFixed(1)} MiB`;

  // Save: pages go through the core's staging buffer; each full buffer is one write.
  const sink = memorySink();
  let writeCalls = 0;
  const counted = { write: (d: Uint8Array, at: number) => (writeCalls++, sink.write(d, at)), close: () => sink.close() };
  const t0 = performance.now();
  const w = await CheckpointWriter.create(counted, { guestSize: mem.length, blockSize: 1 << 20 });
  await w.writePages(0, mem);
  const st = await w.finish();
  const ms = performance.now() - t0;
  const file = sink.bytes();
  log(`guest: ${mib(mem.length)} (${pages} pages); checkpoint: ${mib(file.length)} (${((file.length / mem.length) * 100).toFixed(1)}%) in ${ms.toFixed(0)} ms (${(mem.length / 2 ** 20 / (ms / 1000)).toFixed(0)} MiB/s)`);
  log(`pages: ${st.zeroPages} zero (index only), ${st.lz4Pages} LZ4, ${st.rawPages} raw (compression did not pay)`);
  log(`write calls: ${writeCalls} (${st.blockWrites} storage blocks + header, index, footer); a naive writer: ${pages} (one per page)`);

  // Lazy reads: the reader checks header, footer and index on open, then reads each page's own record on demand.
  const r = await CheckpointReader.open(file);
  let y = 99;
  const rnd = (): number => (y = (Math.imul(y, 1103515245) + 12345) >>> 0) % pages;
  let wrong = 0;
  const reads = 2000;
  for (let i = 0; i < reads; i++) {
    const p = rnd();
    const page = await r.readPage(p);
    if (!same(page, mem.subarray(p * PS, (p + 1) * PS))) wrong++;
  }
  const s1 = r.stats;
  log(`${reads} random lazy page reads: ${wrong} wrong, ${s1.reads} reads of ${s1.bytesRead} bytes in all (each one page's own record, checked by its checksum; zero pages need none)`);
  const p0 = pages - 1 - ((pages - 1) % 64);
  const before = r.stats.reads;
  await r.readPagesInto(p0, 16, new Uint8Array(16 * PS));
  const runCost = r.stats.reads - before;
  const before2 = r.stats.reads;
  await r.readPagesInto(p0, 16, new Uint8Array(16 * PS));
  log(`a run of 16 pages: ${runCost} read(s) of their records' span; the same run again: ${r.stats.reads - before2} (still in core memory)`);

  // Diff checkpoint: only the pages a dirty bitmap marks.
  const next = mem.slice();
  const bitmap = new Uint8Array(pages / 8);
  for (let i = 0; i < 100; i++) {
    const p = rnd();
    next.fill(0x5a, p * PS, p * PS + 512);
    bitmap[p >> 3]! |= 1 << (p & 7);
  }
  const dsink = memorySink();
  const dw = await CheckpointWriter.create(dsink, { guestSize: mem.length, parent: { path: 'base.ckpt', id: st.id } });
  const live = {
    pageSize: PS,
    pageCount: pages,
    readPagesIntoSync: (f: number, c: number, d: Uint8Array) => d.set(next.subarray(f * PS, (f + c) * PS)),
    readPagesInto: async (f: number, c: number, d: Uint8Array) => d.set(next.subarray(f * PS, (f + c) * PS)),
  };
  const dirty = await dw.writeDirty(bitmap, live);
  const ds = await dw.finish();
  const dfile = dsink.bytes();
  log(`diff checkpoint: ${dirty} dirty pages, ${ds.absentPages} left to the parent, ${(dfile.length / 1024).toFixed(0)} KiB`);
  const dr = await CheckpointReader.open(dfile, { resolveParent: (path) => (path === 'base.ckpt' ? file : new Uint8Array(0)) });
  const out = new Uint8Array(mem.length);
  const t1 = performance.now();
  await dr.restoreTo(out);
  const rms = performance.now() - t1;
  log(`full restore through the chain ${dr.info().chain.map((id) => id.slice(0, 8)).join(' → ')}: ${same(out, next) ? 'identical' : 'DIFFERENT'} in ${rms.toFixed(0)} ms`);
  await dr.close();
  await r.close();

  // A flipped bit in a stored block is caught by its checksum when the block is read.
  const bad = file.slice();
  bad[4096 + 100]! ^= 0x10;
  const br = await CheckpointReader.open(bad);
  try {
    await br.restoreTo(new Uint8Array(mem.length));
    log('flipped bit: NOT caught');
  } catch (e) {
    if (!(e instanceof VmkitError)) throw e;
    log(`flipped bit in block 0: ${e.code} (${e.message})`);
  } finally {
    await br.close();
  }
  // A save that never wrote its footer is rejected as incomplete.
  try {
    await CheckpointReader.open(file.subarray(0, file.length - 64));
  } catch (e) {
    if (!(e instanceof VmkitError)) throw e;
    log(`file cut before its footer: ${e.code} (${e.message})`);
  }
}
