/**
 * A worker thread of the file-hashing pool (_hash-pool.ts): answers each batch
 * of paths with `_hashOne` of each (_hash-file.ts).
 * @module
 */
import { parentPort } from 'node:worker_threads';
import { _hashOne, type _HashItem } from './_hash-file.js';

if (parentPort) {
  const port = parentPort;
  port.on('message', (m: { id: number; items: _HashItem[] }) => {
    port.postMessage({ id: m.id, results: m.items.map(_hashOne) });
  });
}
