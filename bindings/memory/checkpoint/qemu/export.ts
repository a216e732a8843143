/**
 * `exportQemuMigration`: a checkpoint imported from QEMU back to a migration
 * stream QEMU accepts (`-incoming "exec:cat vm.mig"`): the kept stream bytes
 * verbatim, and at the RAM marker one END section of the ram section holding
 * every page of the checkpoint's full view (a diff checkpoint's through its
 * parents): zero pages as RAM_SAVE_FLAG_ZERO, others as RAM_SAVE_FLAG_PAGE.
 * @module
 */
import { coreModule } from '../../../core.js';
import { VmkitError } from '../../../errors.js';
import { aint } from '../../../_utils.js';
import { CheckpointReader } from '../reader.js';
import { _readWindow, type _ExportJob, type _ExportWindow } from './_export-window.js';
import { CHUNK_RAM, CHUNK_STREAM, stateOwner, walkState } from './_state.js';
import { readStateMeta } from './state.js';
import { RAM, SEC } from './_wire.js';

const PAGE_WINDOW = 256;
const OUT_BUF = 1 << 20;

/**
 * What an export wrote.
 * @example
 * ```ts
 * const { bytes, pages, zeroPages } = await exportQemuMigration('vm.ckpt', write);
 * ```
 */
export interface QemuExportStats {
  bytes: number;
  pages: number;
  zeroPages: number;
}

/**
 * Options of {@link exportQemuMigration}.
 * @example
 * ```ts
 * const o: QemuExportOptions = { threads: 2 };
 * ```
 */
export interface QemuExportOptions {
  /**
   * Threads reading (decompressing) pages, the main thread included
   * (default 1). More than 1 needs Node and a checkpoint given as a file
   * path: each worker opens it with its own core.
   */
  threads?: number;
}

/**
 * Writes the QEMU migration stream of checkpoint `checkpoint` (a path or an
 * open reader) through `write` (called with pieces of up to 1 MiB, awaited
 * in order; the piece is reused after the promise settles).
 * @example
 * ```ts
 * const out = createWriteStream('vm.mig');
 * await exportQemuMigration('vm.ckpt', (b) => new Promise((res, rej) => out.write(b, (e) => (e ? rej(e) : res()))), { threads: 2 });
 * ```
 */
export async function exportQemuMigration(
  checkpoint: string | CheckpointReader,
  write: (piece: Uint8Array) => Promise<void>,
  options: QemuExportOptions = {},
): Promise<QemuExportStats> {
  if (typeof write !== 'function') throw new VmkitError('ARG_TYPE', 'write must be a function');
  const threads = options.threads ?? 1;
  aint(threads, 'options.threads', 1, 16);
  if (threads > 1 && typeof checkpoint !== 'string') throw new VmkitError('ARG_RANGE', 'options.threads > 1 needs the checkpoint as a file path');
  const reader = typeof checkpoint === 'string' ? await CheckpointReader.open(checkpoint) : checkpoint;
  try {
    const owner = stateOwner(reader);
    if (!owner) throw new VmkitError('NOT_FOUND', 'checkpoint has no machine-state section (not imported from a VM)');
    const meta = await readStateMeta(reader);
    const ps = reader.pageSize;
    if (meta.pageSize !== ps) throw new VmkitError('CORRUPT', `checkpoint machine state says page size ${meta.pageSize}, the checkpoint ${ps}`);
    const out = new Uint8Array(OUT_BUF + ps + 512);
    const ov = new DataView(out.buffer);
    let used = 0;
    const stats: QemuExportStats = { bytes: 0, pages: 0, zeroPages: 0 };
    const flush = async (): Promise<void> => {
      if (used === 0) return;
      await write(out.subarray(0, used));
      stats.bytes += used;
      used = 0;
    };
    const put = async (b: Uint8Array): Promise<void> => {
      for (let i = 0; i < b.length; ) {
        const k = Math.min(b.length - i, OUT_BUF - used);
        out.set(b.subarray(i, i + k), used);
        used += k;
        i += k;
        if (used >= OUT_BUF) await flush();
      }
    };
    const te = new TextEncoder();
    const pages = async (): Promise<void> => {
      out[used++] = SEC.END;
      ov.setUint32(used, meta.ramSectionId);
      used += 4;
      // The blocks lie back to back in page order (as import lays them): windows of the page space
      // are read in order, by this thread and by workers taking every lanes-th window.
      const W = PAGE_WINDOW;
      let end = 0;
      const te2 = meta.blocks.map((b) => {
        const first = b.offset / ps;
        const n = Math.ceil(b.length / ps);
        if (!Number.isInteger(first) || first < end || first + n > reader.pageCount) throw new VmkitError('CORRUPT', `ram block ${b.id} lies outside the checkpoint or before the previous block`);
        end = first + n;
        const idBytes = te.encode(b.id);
        if (idBytes.length > 255) throw new VmkitError('CORRUPT', `ram block id ${b.id} too long`);
        return { first, n, idBytes };
      });
      const lanes = Math.min(threads, Math.max(1, Math.ceil(end / W)));
      const windows = await windowSource(lanes, typeof checkpoint === 'string' ? checkpoint : '', reader, W, end);
      try {
        let bi = 0;
        for (let k = 0; k * W < end; k++) {
          const win = await windows.get(k);
          const words = new Uint32Array(win.buffer, win.byteOffset, win.length >>> 2);
          for (let p = k * W, last = Math.min(end, (k + 1) * W); p < last; p++) {
            while (bi < te2.length && p >= te2[bi]!.first + te2[bi]!.n) bi++;
            const b = te2[bi]!;
            if (p < b.first) continue; // between blocks: no page of the stream
            const rel = p - b.first;
            // One record header: the be64 address word (two be32: exact past 4 GiB, no BigInt per page) and, first in the block, its id.
            const addr = rel * ps;
            const zero = reader.blockOf(p) < 0 || isZero(words, ((p - k * W) * ps) >>> 2, ps >>> 2);
            ov.setUint32(used, Math.floor(addr / 0x100000000));
            ov.setUint32(used + 4, (addr % 0x100000000) + ((zero ? RAM.ZERO : RAM.PAGE) | (rel > 0 ? RAM.CONTINUE : 0)));
            used += 8;
            if (rel === 0) {
              out[used++] = b.idBytes.length;
              out.set(b.idBytes, used);
              used += b.idBytes.length;
            }
            if (zero) {
              out[used++] = 0;
              stats.zeroPages++;
            } else {
              out.set(win.subarray((p - k * W) * ps, (p - k * W + 1) * ps), used);
              used += ps;
            }
            stats.pages++;
            if (used >= OUT_BUF) await flush();
          }
          windows.done(k);
        }
      } finally {
        await windows.close();
      }
      ov.setBigUint64(used, BigInt(RAM.EOS));
      used += 8;
      out[used++] = SEC.FOOTER;
      ov.setUint32(used, meta.ramSectionId);
      used += 4;
    };
    let sawRam = false;
    await walkState(owner, async (kind, payload) => {
      if (kind === CHUNK_STREAM) await put(payload);
      else if (kind === CHUNK_RAM) {
        if (sawRam) throw new VmkitError('CORRUPT', 'checkpoint machine-state section has two RAM markers');
        sawRam = true;
        await pages();
      }
    });
    if (!sawRam) throw new VmkitError('CORRUPT', 'checkpoint machine-state section has no RAM marker');
    await flush();
    return stats;
  } finally {
    if (typeof checkpoint === 'string') await reader.close();
  }
}

/** True when the `n` words of `w` from `at` are all zero (a stored page rarely is: sent as QEMU would, a zero record). */
function isZero(w: Uint32Array, at: number, n: number): boolean {
  for (let j = at, e = at + n; j < e; j++) if (w[j] !== 0) return false;
  return true;
}

/**
 * Windows of decompressed pages in order: window k from this thread's reader
 * when k % lanes is 0, else from worker k % lanes (at most 4 windows ahead
 * each).
 */
async function windowSource(
  lanes: number,
  path: string,
  reader: CheckpointReader,
  W: number,
  end: number,
): Promise<{ get(k: number): Promise<Uint8Array>; done(k: number): void; close(): Promise<void> }> {
  const own = new Uint8Array(W * reader.pageSize);
  if (lanes === 1) {
    return { get: async (k) => (await _readWindow(reader, k, W, end, own), own), done: () => {}, close: async () => {} };
  }
  const { Worker } = (await import(/* @vite-ignore */ 'node:worker_threads' as string)) as typeof import('node:worker_threads');
  const module = coreModule();
  const url = new URL('./_export-worker.js', import.meta.url);
  const pending = new Map<number, Uint8Array>();
  const pool: InstanceType<typeof Worker>[] = [];
  let failed: unknown;
  let wake: (() => void) | undefined;
  for (let i = 1; i < lanes; i++) {
    const job: _ExportJob = { module, path, windowPages: W, end, index: i, lanes, maxInFlight: 4 };
    const wk = new Worker(url, { workerData: { vmkitExportJob: job } });
    wk.on('message', (m: _ExportWindow | { done: true } | { error: string }) => {
      if ('error' in m) failed ??= new VmkitError('IO', `checkpoint export worker: ${m.error}`);
      else if ('window' in m) pending.set(m.window, m.bytes);
      wake?.();
    });
    wk.on('error', (e) => {
      failed ??= e instanceof VmkitError ? e : new VmkitError('IO', `checkpoint export worker: ${(e as Error).message}`, { cause: e });
      wake?.();
    });
    wk.on('exit', (code) => {
      if (code !== 0) failed ??= new VmkitError('IO', `checkpoint export worker exited with code ${code}`);
      wake?.();
    });
    pool.push(wk);
  }
  return {
    async get(k) {
      if (k % lanes === 0) {
        await _readWindow(reader, k, W, end, own);
        return own;
      }
      for (;;) {
        if (failed) throw failed;
        const b = pending.get(k);
        if (b) return b;
        await new Promise<void>((r) => (wake = r));
      }
    },
    done(k) {
      if (k % lanes === 0) return;
      pending.delete(k);
      pool[(k % lanes) - 1]!.postMessage(0); // ack: the worker may read one more window
    },
    async close() {
      await Promise.all(pool.map((wk) => wk.terminate()));
    },
  };
}
