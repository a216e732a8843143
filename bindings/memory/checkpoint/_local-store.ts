/**
 * Where the remote reader's local cache keeps its entries: a directory in
 * Node (node:fs/promises), a directory of the origin private file system
 * (OPFS) in a browser. Both offer the same five operations on flat names
 * inside one sub-directory per checkpoint; `_local-cache.ts` decides what
 * goes in and what is evicted.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { _isNode } from './_http-node.js';

/** An entry as listed: its sub-directory, name, byte size and last use (ms since the epoch). */
export interface _StoredEntry {
  sub: string;
  name: string;
  size: number;
  used: number;
}

/** The operations the cache needs; every one tolerates an entry another process removed meanwhile. */
export interface _LocalStore {
  readonly where: string;
  list(): Promise<_StoredEntry[]>;
  /** The entry's bytes, or undefined when it is gone. */
  read(sub: string, name: string): Promise<Uint8Array | undefined>;
  /** Writes the entry whole or not at all (a reader never sees half of it). */
  write(sub: string, name: string, bytes: Uint8Array): Promise<void>;
  remove(sub: string, name: string): Promise<void>;
  /** Marks the entry used now (so another process's eviction keeps it longer); best effort. */
  touch(sub: string, name: string): void;
}

/** Names this module writes: hex directories, `<position>-<length>` files (anything else in the directory is left alone). */
const SUB = /^[0-9a-f]{32}$/;
const NAME = /^\d+-\d+$/;

/**
 * The store for `dir`: a filesystem path in Node, an OPFS directory path
 * (`a/b`, from the origin's root) in a browser.
 */
export async function _openLocalStore(dir: string): Promise<_LocalStore> {
  if (typeof dir !== 'string' || dir === '') throw new VmkitError('ARG_TYPE', 'localCache.dir must be a non-empty string');
  return _isNode() ? nodeStore(dir) : opfsStore(dir);
}

async function nodeStore(dir: string): Promise<_LocalStore> {
  // Hidden from bundlers: browser builds never resolve node:fs.
  const [f, p] = ['node:fs/promises', 'node:path'];
  const fs = (await import(/* @vite-ignore */ f)) as typeof import('node:fs/promises');
  const path = (await import(/* @vite-ignore */ p)) as typeof import('node:path');
  try {
    await fs.mkdir(dir, { recursive: true });
  } catch (e) {
    throw new VmkitError('IO', `localCache.dir ${dir}: ${(e as Error).message}`, { path: dir, cause: e });
  }
  let seq = 0;
  return {
    where: dir,
    async list() {
      const out: _StoredEntry[] = [];
      for (const sub of await fs.readdir(dir).catch(() => [] as string[])) {
        if (!SUB.test(sub)) continue;
        for (const name of await fs.readdir(path.join(dir, sub)).catch(() => [] as string[])) {
          if (!NAME.test(name)) continue;
          const st = await fs.stat(path.join(dir, sub, name)).catch(() => undefined);
          if (st?.isFile()) out.push({ sub, name, size: st.size, used: st.mtimeMs });
        }
      }
      return out;
    },
    async read(sub, name) {
      try {
        return new Uint8Array(await fs.readFile(path.join(dir, sub, name)));
      } catch {
        return undefined;
      }
    },
    async write(sub, name, bytes) {
      const d = path.join(dir, sub);
      await fs.mkdir(d, { recursive: true });
      // Written beside, then renamed over: a concurrent reader sees the old entry, the new one, or none.
      const tmp = path.join(d, `.${name}.${process.pid}.${seq++}.tmp`);
      try {
        await fs.writeFile(tmp, bytes);
        await fs.rename(tmp, path.join(d, name));
      } catch (e) {
        await fs.rm(tmp, { force: true }).catch(() => {});
        throw e;
      }
    },
    async remove(sub, name) {
      await fs.rm(path.join(dir, sub, name), { force: true });
    },
    touch(sub, name) {
      const now = new Date();
      fs.utimes(path.join(dir, sub, name), now, now).catch(() => {});
    },
  };
}

/** The parts of the OPFS API used here (the DOM lib in use lacks the async iteration of a directory). */
interface DirHandle {
  getDirectoryHandle(name: string, o?: { create?: boolean }): Promise<DirHandle>;
  getFileHandle(name: string, o?: { create?: boolean }): Promise<FileHandle>;
  removeEntry(name: string): Promise<void>;
  entries(): AsyncIterableIterator<[string, { kind: 'file' | 'directory' }]>;
}
interface FileHandle {
  getFile(): Promise<File>;
  createWritable(): Promise<{ write(b: Uint8Array): Promise<void>; close(): Promise<void>; abort(): Promise<void> }>;
}

async function opfsStore(dir: string): Promise<_LocalStore> {
  const storage = (globalThis as { navigator?: { storage?: { getDirectory?: () => Promise<unknown> } } }).navigator?.storage;
  if (typeof storage?.getDirectory !== 'function') throw new VmkitError('UNSUPPORTED', 'localCache: no origin private file system (navigator.storage.getDirectory) in this runtime');
  let root: DirHandle;
  try {
    root = (await storage.getDirectory()) as DirHandle;
    for (const part of dir.split('/').filter((s) => s !== '')) root = await root.getDirectoryHandle(part, { create: true });
  } catch (e) {
    throw new VmkitError('IO', `localCache.dir ${dir} (OPFS): ${(e as Error).message}`, { path: dir, cause: e });
  }
  const subDir = async (sub: string, create: boolean): Promise<DirHandle | undefined> => root.getDirectoryHandle(sub, { create }).catch(() => undefined);
  return {
    where: `opfs:${dir}`,
    async list() {
      const out: _StoredEntry[] = [];
      for await (const [sub, h] of root.entries()) {
        if (h.kind !== 'directory' || !SUB.test(sub)) continue;
        const d = h as unknown as DirHandle;
        for await (const [name, fh] of d.entries()) {
          if (fh.kind !== 'file' || !NAME.test(name)) continue;
          const file = await (fh as unknown as FileHandle).getFile().catch(() => undefined);
          if (file) out.push({ sub, name, size: file.size, used: file.lastModified });
        }
      }
      return out;
    },
    async read(sub, name) {
      try {
        const d = await subDir(sub, false);
        if (!d) return undefined;
        const file = await (await d.getFileHandle(name)).getFile();
        return new Uint8Array(await file.arrayBuffer());
      } catch {
        return undefined;
      }
    },
    async write(sub, name, bytes) {
      const d = (await subDir(sub, true))!;
      // createWritable writes a swap file that replaces the entry on close(): whole or not at all.
      const w = await (await d.getFileHandle(name, { create: true })).createWritable();
      try {
        await w.write(bytes);
        await w.close();
      } catch (e) {
        await w.abort().catch(() => {});
        throw e;
      }
    },
    async remove(sub, name) {
      const d = await subDir(sub, false);
      await d?.removeEntry(name).catch(() => {});
    },
    touch() {
      // OPFS has no utimes; the in-process order of use still applies.
    },
  };
}
