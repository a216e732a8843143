/**
 * The windows of a parallel `exportQemuMigration`, shared by the main thread
 * and its workers (_export-worker.ts): no Node imports, so the browser build
 * of vmkit/memory loads it.
 * @module
 */
import type { CheckpointReader } from '../reader.js';

/** What the main thread gives an export worker. */
export interface _ExportJob {
  module: WebAssembly.Module;
  path: string;
  windowPages: number;
  /** Pages of the exported range (the RAM blocks' extent). */
  end: number;
  index: number;
  lanes: number;
  /** Windows posted and not yet acknowledged before the worker waits (bounds memory). */
  maxInFlight: number;
}

/** One window: its pages' bytes (zero pages left unset). */
export interface _ExportWindow {
  window: number;
  bytes: Uint8Array;
}

/**
 * Reads window `k`'s data pages (runs of pages stored in the chain) into `buf`.
 * @example
 * ```ts
 * await _readWindow(reader, 3, 256, 1024, buf);
 * ```
 */
export async function _readWindow(reader: CheckpointReader, k: number, W: number, end: number, buf: Uint8Array): Promise<void> {
  const ps = reader.pageSize;
  const first = k * W;
  const last = Math.min(end, first + W);
  for (let p = first; p < last; ) {
    if (reader.blockOf(p) < 0) {
      p++;
      continue;
    }
    let q = p + 1;
    while (q < last && reader.blockOf(q) >= 0) q++;
    await reader.readPagesInto(p, q - p, buf.subarray((p - first) * ps, (q - first) * ps));
    p = q;
  }
}

