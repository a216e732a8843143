/**
 * Worker thread of a parallel checkpoint save (Node): compresses windows of
 * a memory image with its own core instance and staging buffer, and posts
 * each window's page entries and compressed records to the main thread,
 * which packs them into storage blocks in page order (parallel.ts). A page
 * compresses to the same bytes wherever it is staged, so the packed file is
 * the single-threaded one.
 * @module
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { core, initSync } from '../../core.js';
import { check } from '../../_status.js';
import { STAGING_ENTRY, compressBound } from './_codec.js';

/** What the main thread gives a save worker. */
export interface _SaveJob {
  module: WebAssembly.Module;
  path: string;
  pageSize: number;
  codec: number;
  pageCount: number;
  windowPages: number;
  /** This worker takes windows index, index + workers, index + 2·workers, … */
  index: number;
  workers: number;
  /** Windows posted and not yet acknowledged before the worker waits (bounds memory). */
  maxInFlight: number;
}

/** One compressed window: entries (kind, offset, length, record xxHash32 per page) into `bytes`. */
export interface _SaveWindow {
  window: number;
  first: number;
  count: number;
  entries: Uint32Array;
  bytes: Uint8Array;
}

async function run(job: _SaveJob): Promise<void> {
  const port = parentPort!;
  initSync(job.module);
  const c = core();
  const e = c.exports;
  const ps = job.pageSize;
  const W = job.windowPages;
  // A block big enough that a whole window never reports "full".
  const h = check(e.stagingOpen(W * compressBound(ps), ps, job.codec), 'save worker staging');
  const input = c.alloc(W * ps);
  const ent = c.alloc(W * STAGING_ENTRY);
  let inFlight = 0;
  let wake: (() => void) | undefined;
  port.on('message', () => {
    inFlight--;
    wake?.();
  });
  const fd = openSync(job.path, 'r');
  try {
    for (let k = job.index; k * W < job.pageCount; k += job.workers) {
      while (inFlight >= job.maxInFlight) await new Promise<void>((r) => (wake = r));
      const first = k * W;
      const n = Math.min(W, job.pageCount - first);
      const len = n * ps;
      for (let done = 0; done < len; ) {
        const got = readSync(fd, c.u8().subarray(input + done, input + len), 0, len - done, first * ps + done);
        if (got === 0) throw new Error(`${job.path}: short read at page ${first}`);
        done += got;
      }
      e.stagingReset(h);
      const taken = check(e.stagingAppend(h, input, n, ent), 'save worker staging');
      if (taken !== n) throw new Error(`save worker: staging took ${taken} of ${n} pages`);
      const used = check(e.stagingUsed(h), 'save worker staging');
      const mem = c.u8();
      const entries = new Uint32Array(n * (STAGING_ENTRY / 4));
      entries.set(new Uint32Array(mem.buffer, ent, n * (STAGING_ENTRY / 4)));
      const bytes = mem.slice(e.stagingBuffer(h), e.stagingBuffer(h) + used);
      const msg: _SaveWindow = { window: k, first, count: n, entries, bytes };
      port.postMessage(msg, [entries.buffer, bytes.buffer]);
      inFlight++;
    }
  } finally {
    closeSync(fd);
  }
  port.postMessage({ done: true });
  port.removeAllListeners('message');
}

if (parentPort && (workerData as { vmkitSaveJob?: _SaveJob } | undefined)?.vmkitSaveJob) {
  run((workerData as { vmkitSaveJob: _SaveJob }).vmkitSaveJob).catch((err: unknown) => {
    parentPort!.postMessage({ error: String((err as Error)?.stack ?? err) });
  });
}
