/**
 * Worker thread of a parallel `exportQemuMigration` (Node): opens the same
 * checkpoint with its own core instance and reads (decompresses) windows
 * `index, index + lanes, …` of its page space — the data pages only, zero
 * pages are known from the index — and posts each to the main thread, which
 * writes the stream in order. Decompression is most of an export's CPU; on a
 * machine where QEMU loads the stream on one core, this overlaps it.
 * @module
 */
import { parentPort, workerData } from 'node:worker_threads';
import { initSync } from '../../../core.js';
import { CheckpointReader } from '../reader.js';
import { _readWindow, type _ExportJob, type _ExportWindow } from './_export-window.js';

async function run(job: _ExportJob): Promise<void> {
  const port = parentPort!;
  initSync(job.module);
  const reader = await CheckpointReader.open(job.path);
  let inFlight = 0;
  let wake: (() => void) | undefined;
  port.on('message', () => {
    inFlight--;
    wake?.();
  });
  try {
    for (let k = job.index; k * job.windowPages < job.end; k += job.lanes) {
      while (inFlight >= job.maxInFlight) await new Promise<void>((r) => (wake = r));
      const bytes = new Uint8Array(job.windowPages * reader.pageSize);
      await _readWindow(reader, k, job.windowPages, job.end, bytes);
      const msg: _ExportWindow = { window: k, bytes };
      port.postMessage(msg, [bytes.buffer]);
      inFlight++;
    }
  } finally {
    await reader.close();
  }
  port.postMessage({ done: true });
  port.removeAllListeners('message');
}

if (parentPort && (workerData as { vmkitExportJob?: _ExportJob } | undefined)?.vmkitExportJob) {
  run((workerData as { vmkitExportJob: _ExportJob }).vmkitExportJob).catch((err: unknown) => {
    parentPort!.postMessage({ error: String((err as Error)?.stack ?? err) });
  });
}
