/**
 * Chain operations under a write guard (disk ownership): a live disk held by
 * `openOwned` runs its snapshot, backup and consolidation through these, so
 * every file the jobs create, rename, link, remove or rewrite is checked
 * against the holder's epoch first, and a fenced holder's job stops with
 * VmkitError FENCED instead of touching the chain. Image writes are guarded
 * by the storage provider the format driver was built on (see openOwned's
 * `open`); this covers the rest.
 * @module
 */
import type { WriteGuard } from '../_guard.js';
import type { BackupDevice, ChainOps } from './_types.js';
import type { FormatName as ImageFormat } from '../formats/types.js';

/** `ops` with the guard checked before each operation that changes a file. @internal */
export function _guardedChainOps(ops: ChainOps, guard: WriteGuard): ChainOps {
  const check = async (): Promise<void> => {
    await guard.check('write');
  };
  const out: ChainOps = {
    open: (path: string, o?: { readOnly?: boolean }): Promise<BackupDevice> => ops.open(path, o),
    createOverlay: async (path: string, backing: string, format?: ImageFormat) => {
      await check();
      return ops.createOverlay(path, backing, format);
    },
    create: async (path: string, size: number, format: ImageFormat, o?: { durable?: boolean }) => {
      await check();
      return ops.create(path, size, format, o);
    },
    backingOf: (path: string) => ops.backingOf(path),
    formatOf: (path: string) => ops.formatOf(path),
    exists: (path: string) => ops.exists(path),
    remove: async (path: string) => {
      await check();
      return ops.remove(path);
    },
    rename: async (from: string, to: string) => {
      await check();
      return ops.rename(from, to);
    },
    readText: (path: string) => ops.readText(path),
    writeTextAtomic: async (path: string, text: string, o?: { durable?: boolean }) => {
      await check();
      return ops.writeTextAtomic(path, text, o);
    },
  };
  if (ops.link) {
    const link = ops.link.bind(ops);
    out.link = async (from: string, to: string) => {
      await check();
      return link(from, to);
    };
  }
  if (ops.repairLeaks) {
    const repair = ops.repairLeaks.bind(ops);
    out.repairLeaks = async (path: string) => {
      await check();
      return repair(path);
    };
  }
  return out;
}
