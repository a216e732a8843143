/**
 * Parallel checkpoint saves (Node): worker threads compress interleaved
 * windows of a memory image, each with its own core instance, and the main
 * thread packs their records into storage blocks in page order with the
 * staging buffer's own rule (flush when the worst case of the next stored
 * page might not fit). Page records do not depend on where they are staged,
 * so the file is byte for byte the single-threaded one (given the same id).
 * @module
 */
import { coreModule } from '../../core.js';
import { VmkitError } from '../../errors.js';
import { aint } from '../../_utils.js';
import { CODECS } from './format.js';
import type { _SaveJob, _SaveWindow } from './_save-worker.js';
import type { CheckpointWriter } from './writer.js';

/** Options of {@link writeImageParallel}. */
export interface ParallelSaveOptions {
  /** Worker threads (default 2). */
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
 * import { writeImageParallel } from 'vmkit/dist/memory/checkpoint/parallel.js';
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
  const { Worker } = await import(/* @vite-ignore */ 'node:worker_threads' as string) as typeof import('node:worker_threads');
  const module = coreModule();
  const windows = Math.ceil(pageCount / W);
  const workers = Math.min(threads, windows);
  const url = new URL('./_save-worker.js', import.meta.url);
  const pool: InstanceType<typeof Worker>[] = [];
  const pending = new Map<number, _SaveWindow>();
  let next = 0;
  let failed: unknown;
  let wake: (() => void) | undefined;
  for (let i = 0; i < workers; i++) {
    const job: _SaveJob = { module, path, pageSize: h.pageSize, codec: CODECS[h.codec], pageCount, windowPages: W, index: i, workers, maxInFlight: 4 };
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
    pool.push(wk);
  }
  try {
    while (next < windows) {
      const m = pending.get(next);
      if (failed) throw failed;
      if (!m) {
        await new Promise<void>((r) => (wake = r));
        continue;
      }
      pending.delete(next);
      pool[next % workers]!.postMessage(0); // ack: the worker may compress one more window
      await writer._appendCompressed(m.first, m.count, m.entries, m.bytes);
      next++;
      options.onProgress?.(Math.min(pageCount, next * W) * h.pageSize);
    }
  } finally {
    await Promise.all(pool.map((wk) => wk.terminate()));
  }
}
