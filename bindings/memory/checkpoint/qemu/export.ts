/**
 * `exportQemuMigration`: a checkpoint imported from QEMU back to a migration
 * stream QEMU accepts (`-incoming "exec:cat vm.mig"`): the kept stream bytes
 * verbatim, and at the RAM marker one END section of the ram section holding
 * every page of the checkpoint's full view (a diff checkpoint's through its
 * parents): zero pages as RAM_SAVE_FLAG_ZERO, others as RAM_SAVE_FLAG_PAGE.
 * @module
 */
import { VmkitError } from '../../../errors.js';
import { CheckpointReader } from '../reader.js';
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
 * Writes the QEMU migration stream of checkpoint `checkpoint` (a path or an
 * open reader) through `write` (called with pieces of up to 1 MiB, awaited
 * in order; the piece is reused after the promise settles).
 * @example
 * ```ts
 * const out = createWriteStream('vm.mig');
 * await exportQemuMigration('vm.ckpt', (b) => new Promise((res, rej) => out.write(b, (e) => (e ? rej(e) : res()))));
 * ```
 */
export async function exportQemuMigration(checkpoint: string | CheckpointReader, write: (piece: Uint8Array) => Promise<void>): Promise<QemuExportStats> {
  if (typeof write !== 'function') throw new VmkitError('ARG_TYPE', 'write must be a function');
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
      const win = new Uint8Array(PAGE_WINDOW * ps);
      const words = new Uint32Array(win.buffer);
      for (const b of meta.blocks) {
        const first = b.offset / ps;
        const n = Math.ceil(b.length / ps);
        if (!Number.isInteger(first) || first + n > reader.pageCount) throw new VmkitError('CORRUPT', `ram block ${b.id} lies outside the checkpoint`);
        const idBytes = te.encode(b.id);
        if (idBytes.length > 255) throw new VmkitError('CORRUPT', `ram block id ${b.id} too long`);
        /** One record header: the be64 address word (two be32: exact past 4 GiB, no BigInt per page) and, first in the block, its id. */
        const record = (page: number, flags: number): void => {
          const addr = page * ps;
          ov.setUint32(used, Math.floor(addr / 0x100000000));
          ov.setUint32(used + 4, (addr % 0x100000000) + flags);
          used += 8;
          if (page === 0) {
            out[used++] = idBytes.length;
            out.set(idBytes, used);
            used += idBytes.length;
          }
        };
        for (let p = 0; p < n; ) {
          // Zero pages (in the index only, through the chain) are known without reading or decompressing them.
          if (reader.blockOf(first + p) < 0) {
            record(p, RAM.ZERO | (p > 0 ? RAM.CONTINUE : 0));
            out[used++] = 0;
            stats.zeroPages++;
            stats.pages++;
            p++;
            if (used >= OUT_BUF) await flush();
            continue;
          }
          let k = 1;
          while (k < PAGE_WINDOW && p + k < n && reader.blockOf(first + p + k) >= 0) k++;
          await reader.readPagesInto(first + p, k, win.subarray(0, k * ps));
          for (let i = 0; i < k; i++) {
            // A stored page is rarely all zero; sent as QEMU would (a zero record) when it is.
            let zero = true;
            for (let j = (i * ps) >>> 2, e = ((i + 1) * ps) >>> 2; j < e; j++) {
              if (words[j] !== 0) {
                zero = false;
                break;
              }
            }
            record(p + i, (zero ? RAM.ZERO : RAM.PAGE) | (p + i > 0 ? RAM.CONTINUE : 0));
            if (zero) {
              out[used++] = 0;
              stats.zeroPages++;
            } else {
              out.set(win.subarray(i * ps, (i + 1) * ps), used);
              used += ps;
            }
            stats.pages++;
            if (used >= OUT_BUF) await flush();
          }
          p += k;
        }
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
