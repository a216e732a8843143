/**
 * Where a page store keeps its objects: a directory (Node), or a URL
 * (store-http.ts). Keys are `/`-separated paths relative to the store's root
 * (`frames/ab/ab12…`, `checkpoints/vm1.vmkidx`). The store's protocol
 * (store.ts) needs of a backend only what a plain object store or a WebDAV
 * server gives: whole-object get/put/delete with atomic puts, a listing of a
 * folder with modification times, and one exclusive create (the collection's
 * lock).
 * @module
 */
import { VmkitError } from '../../errors.js';
import { nodeFs } from './io.js';

/** A listing entry: a name in a folder, and when it last changed. */
export interface _StoreEntry {
  name: string;
  dir: boolean;
  mtimeMs: number;
}

/** The operations a page store runs on its objects. */
export interface _StoreBackend {
  /** The directory or URL, for messages. */
  readonly where: string;
  /** The object, or undefined when there is none. */
  get(key: string): Promise<Uint8Array | undefined>;
  /** Synchronous {@link get} (directories): lets a store-backed checkpoint read pages synchronously. */
  getSync?(key: string): Uint8Array | undefined;
  /** True when the object exists. */
  has(key: string): Promise<boolean>;
  /** Writes a whole object atomically: a reader sees the old object, the new one, or none, never a part. */
  put(key: string, data: Uint8Array): Promise<void>;
  /** Deletes an object; a missing one is not an error. */
  remove(key: string): Promise<void>;
  /** The entries of a folder (`''` is the root); an empty list when it does not exist. */
  list(dir: string): Promise<_StoreEntry[]>;
  /** Creates `key` exclusively: false when it exists already. */
  lock(key: string): Promise<boolean>;
  /** Removes what {@link lock} made. */
  unlock(key: string): Promise<void>;
}

type Fs = typeof import('node:fs');

function ioError(e: unknown, path: string): VmkitError {
  return new VmkitError('IO', `${path}: ${(e as Error)?.message ?? String(e)}`, { cause: e, path });
}

/** A directory backend: files written through a temporary name and a rename. */
export async function _dirBackend(dir: string): Promise<_StoreBackend> {
  const fs: Fs = await nodeFs();
  const path = (key: string): string => (key === '' ? dir : `${dir}/${key}`);
  let seq = 0;
  const getSync = (key: string): Uint8Array | undefined => {
    try {
      const b = fs.readFileSync(path(key));
      return new Uint8Array(b.buffer, b.byteOffset, b.length);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw ioError(e, path(key));
    }
  };
  return {
    where: dir,
    getSync,
    get: async (key) => getSync(key),
    has: async (key) => fs.existsSync(path(key)),
    async put(key, data) {
      const p = path(key);
      const tmp = `${p}.tmp-${process.pid}-${seq++}`;
      try {
        fs.mkdirSync(p.slice(0, p.lastIndexOf('/')), { recursive: true });
        fs.writeFileSync(tmp, data);
        fs.renameSync(tmp, p);
      } catch (e) {
        try {
          fs.rmSync(tmp, { force: true });
        } catch {
          // the write failed already; report that
        }
        throw ioError(e, p);
      }
    },
    async remove(key) {
      try {
        fs.rmSync(path(key), { force: true });
      } catch (e) {
        throw ioError(e, path(key));
      }
    },
    async list(d) {
      let names: string[];
      try {
        names = fs.readdirSync(path(d));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
        throw ioError(e, path(d));
      }
      const out: _StoreEntry[] = [];
      for (const name of names) {
        try {
          const st = fs.statSync(`${path(d)}/${name}`);
          out.push({ name, dir: st.isDirectory(), mtimeMs: st.mtimeMs });
        } catch {
          // removed between the listing and the stat
        }
      }
      return out;
    },
    async lock(key) {
      try {
        fs.writeFileSync(path(key), `${process.pid}\n`, { flag: 'wx' });
        return true;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
        throw ioError(e, path(key));
      }
    },
    async unlock(key) {
      fs.rmSync(path(key), { force: true });
    },
  };
}
