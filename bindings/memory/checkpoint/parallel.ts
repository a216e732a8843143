/**
 * Parallel checkpoint saves (Node): the main thread and `threads - 1` worker
 * threads compress interleaved windows of a memory image, each with its own
 * core instance (the main thread compresses its windows when their turn
 * comes), and the main thread packs the records into storage blocks in page order with the
 * staging buffer's own rule (flush when the worst case of the next stored
 * page might not fit). Page records do not depend on where they are staged,
 * so the file is byte for byte the single-threaded one (given the same id).
 * @module
 */
import { coreModule, withCore } from '../../core.js';
import { check } from '../../_status.js';
import { STAGING_ENTRY, closeStaging, compressBound } from './_codec.js';
import { VmkitError } from '../../errors.js';
import { aint } from '../../_utils.js';
import type { _SaveJob, _SaveWindow } from './_save-worker.js';
import { stagerCodec, type CheckpointWriter } from './writer.js';

/** Options of {@link writeImageParallel}. */
export interface ParallelSaveOptions {
  /** Threads compressing, the main thread included (default 2: the main thread and one worker). */
  threads?: number;
  /** Pages per window a worker compresses at a time (default 256). */
  windowPages?: number;
  /** Called with the bytes of the image packed so far. */
  onProgress?: (done: number) => void;
}

/**
 * Writes every page of the raw memory image at `path` into `writer` (a full
 * checkpoint of the image's size), compressing on worker threads.
 * @example
 * ```ts
 * import { CheckpointWriter } from 'vmkit/memory';
 * // Node-only, not in the package's exports: as bindings/cli/commands/checkpoint.ts imports it.
 * import { writeImageParallel } from '../memory/checkpoint/parallel.js';
 * const w = await CheckpointWriter.create('vm.ckpt', { guestSize: 256 << 20 });
 * await writeImageParallel(w, 'mem.bin', { threads: 2 });
 * await w.finish();
 * ```
 */
export async function writeImageParallel(writer: CheckpointWriter, path: string, options: ParallelSaveOptions = {}): Promise<void> {
  const threads = options.threads ?? 2;
  aint(threads, 'threads', 1, 64);
  const W = options.windowPages ?? 256;
  aint(W, 'windowPages', 1, 4096);
  const h = writer.header;
  const pageCount = writer.pageTotal;
  const { Worker } = (await import(/* @vite-ignore */ 'node:worker_threads' as string)) as typeof import('node:worker_threads');
  const { openSync, readSync, closeSync } = (await import(/* @vite-ignore */ 'node:fs' as string)) as typeof import('node:fs');
  const module = coreModule();
  const windows = Math.ceil(pageCount / W);
  const lanes = Math.min(threads, windows);
  const url = new URL('./_save-worker.js', import.meta.url);
  const pool: InstanceType<typeof Worker>[] = [];
  const pending = new Map<number, _SaveWindow>();
  let next = 0;
  let failed: unknown;
  let wake: (() => void) | undefined;
  // Lane 0 is the main thread; lanes 1.. are workers.
  for (let i = 1; i < lanes; i++) {
    const job: _SaveJob = { module, path, pageSize: h.pageSize, codec: stagerCodec(h.codec, writer.search), pageCount, windowPages: W, index: i, workers: lanes, maxInFlight: 4 };
    const wk = new Worker(url, { workerData: { vmkitSaveJob: job } });
    wk.on('message', (m: _SaveWindow | { done: true } | { error: string }) => {
      if ('error' in m) failed ??= new VmkitError('IO', `checkpoint save worker: ${m.error}`);
      else if ('window' in m) pending.set(m.window, m);
      wake?.();
    });
    wk.on('error', (e) => {
      failed ??= e instanceof VmkitError ? e : new VmkitError('IO', `checkpoint save worker: ${(e as Error).message}`, { cause: e });
      wake?.();
    });
    wk.on('exit', (code) => {
      // A worker that dies before the save is over (terminate() at the end also exits, harmlessly).
      if (code !== 0 && next < windows) failed ??= new VmkitError('IO', `checkpoint save worker exited with code ${code}`);
      wake?.();
    });
    pool.push(wk);
  }
  const own = ownLane(path, h.pageSize, stagerCodec(h.codec, writer.search), W, { openSync, readSync, closeSync });
  try {
    while (next < windows) {
      if (failed) throw failed;
      let m: _SaveWindow | undefined;
      if (next % lanes === 0) m = own.stage(next, Math.min(W, pageCount - next * W));
      else {
        m = pending.get(next);
        if (!m) {
          await new Promise<void>((r) => (wake = r));
          continue;
        }
        pending.delete(next);
        pool[(next % lanes) - 1]!.postMessage(0); // ack: the worker may compress one more window
      }
      await writer._appendCompressed(m.first, m.count, m.entries, m.bytes);
      next++;
      options.onProgress?.(Math.min(pageCount, next * W) * h.pageSize);
    }
  } finally {
    own.close();
    await Promise.all(pool.map((wk) => wk.terminate()));
  }
}

/** The main thread's lane: its own stager in the main core, big enough never to fill. */
function ownLane(
  path: string,
  ps: number,
  codec: number,
  W: number,
  fs: Pick<typeof import('node:fs'), 'openSync' | 'readSync' | 'closeSync'>,
): { stage(window: number, count: number): _SaveWindow; close(): void } {
  let fd = -1;
  let bufs: { gen: number; h: number; input: number; ent: number } | undefined;
  const free = (): void => {
    if (!bufs) return;
    closeStaging(bufs.gen, bufs.h, bufs.input, bufs.ent, 'parallel save');
    bufs = undefined;
  };
  return {
    stage(window, count) {
      if (fd < 0) fd = fs.openSync(path, 'r');
      return withCore((c) => {
        if (!bufs || bufs.gen !== c.generation) {
          free();
          const h = check(c.exports.stagingOpen(W * compressBound(ps), ps, codec), 'parallel save staging');
          bufs = { gen: c.generation, h, input: c.alloc(W * ps), ent: c.alloc(W * STAGING_ENTRY) };
        }
        const e = c.exports;
        const first = window * W;
        const len = count * ps;
        for (let done = 0; done < len; ) {
          const got = fs.readSync(fd, c.u8().subarray(bufs.input + done, bufs.input + len), 0, len - done, first * ps + done);
          if (got === 0) throw new VmkitError('IO', `${path}: short read at page ${first}`, { path });
          done += got;
        }
        e.stagingReset(bufs.h);
        const taken = check(e.stagingAppend(bufs.h, bufs.input, count, bufs.ent), 'parallel save staging');
        if (taken !== count) throw new VmkitError('CORE_TRAP', `staging took ${taken} of ${count} pages`);
        const used = check(e.stagingUsed(bufs.h), 'parallel save staging');
        const mem = c.u8();
        // Copies: packing may grow core memory (and detach views of it).
        const entries = new Uint32Array(mem.buffer.slice(bufs.ent, bufs.ent + count * STAGING_ENTRY));
        const at = e.stagingBuffer(bufs.h);
        return { window, first, count, entries, bytes: mem.slice(at, at + used) };
      });
    },
    close() {
      free();
      if (fd >= 0) fs.closeSync(fd);
      fd = -1;
    },
  };
}
