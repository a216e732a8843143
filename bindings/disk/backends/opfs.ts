/**
 * The browser's origin-private file system as image storage. In a dedicated
 * worker a `FileSystemSyncAccessHandle` gives positional reads and writes; on
 * the main thread (no sync handles) reads slice the file and writes go through
 * `createWritable({ keepExistingData: true })` — correct, but every write
 * commits a copy, so run disks in a worker.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { assertWritable, type Storage, type StorageProvider } from './storage.js';

interface SyncHandle {
  read(b: Uint8Array, o: { at: number }): number;
  write(b: Uint8Array, o: { at: number }): number;
  truncate(n: number): void;
  getSize(): number;
  flush(): void;
  close(): void;
}
type FileHandleLike = FileSystemFileHandle & { createSyncAccessHandle?: () => Promise<SyncHandle> };

/**
 * A file in the origin-private file system as a {@link Storage}.
 *
 * @example
 * ```ts
 * const root = await navigator.storage.getDirectory();
 * const s = await OpfsStorage.open(await root.getFileHandle('vm.qcow2', { create: true }));
 * ```
 */
export class OpfsStorage implements Storage {
  readonly name: string;
  readonly readOnly: boolean;
  private readonly handle: FileHandleLike;
  private readonly sync: SyncHandle | undefined;

  private constructor(handle: FileHandleLike, sync: SyncHandle | undefined, readOnly: boolean) {
    this.handle = handle;
    this.sync = sync;
    this.name = handle.name;
    this.readOnly = readOnly;
  }
  /**
   * Opens a file handle, with a sync access handle when the context allows one.
   *
   * @example
   * ```ts
   * const dir = await navigator.storage.getDirectory();
   * const s = await OpfsStorage.open(await dir.getFileHandle('vm.qcow2'), { readOnly: true });
   * ```
   */
  static async open(handle: FileSystemFileHandle, opts: { readOnly?: boolean } = {}): Promise<OpfsStorage> {
    const h = handle as FileHandleLike;
    let sync: SyncHandle | undefined;
    if (!opts.readOnly && typeof h.createSyncAccessHandle === 'function') {
      try {
        sync = await h.createSyncAccessHandle();
      } catch {
        sync = undefined; // main thread, or the file is locked by another handle
      }
    }
    return new OpfsStorage(h, sync, opts.readOnly === true);
  }
  /**
   * Current length of the OPFS file in bytes.
   *
   * @example
   * ```ts
   * const n = await s.size();
   * ```
   */
  async size(): Promise<number> {
    return this.sync ? this.sync.getSize() : (await this.handle.getFile()).size;
  }
  /**
   * Reads `dst.length` bytes at `offset`; bytes past the end read as zero.
   *
   * @example
   * ```ts
   * const head = new Uint8Array(512);
   * await s.readInto(0, head); // bytes past the end read as zero
   * ```
   */
  async readInto(offset: number, dst: Uint8Array): Promise<void> {
    let n = 0;
    if (this.sync) {
      while (n < dst.length) {
        const r = this.sync.read(dst.subarray(n), { at: offset + n });
        if (r <= 0) break;
        n += r;
      }
    } else {
      const f = await this.handle.getFile();
      const end = Math.min(f.size, offset + dst.length);
      if (offset < end) {
        const b = new Uint8Array(await f.slice(offset, end).arrayBuffer());
        dst.set(b);
        n = b.length;
      }
    }
    if (n < dst.length) dst.fill(0, n);
  }
  /**
   * Writes `data` at `offset`, growing the file when past the end.
   *
   * @example
   * ```ts
   * await s.write(0, header);
   * ```
   */
  async write(offset: number, data: Uint8Array): Promise<void> {
    assertWritable(this, 'write');
    if (this.sync) {
      let n = 0;
      while (n < data.length) n += this.sync.write(data.subarray(n), { at: offset + n });
      return;
    }
    const w = await this.handle.createWritable({ keepExistingData: true });
    await w.write({ type: 'write', position: offset, data: data as Uint8Array<ArrayBuffer> });
    await w.close();
  }
  /**
   * Sets the file length.
   *
   * @example
   * ```ts
   * await s.truncate(0);
   * ```
   */
  async truncate(size: number): Promise<void> {
    assertWritable(this, 'truncate');
    if (this.sync) return this.sync.truncate(size);
    const w = await this.handle.createWritable({ keepExistingData: true });
    await w.truncate(size);
    await w.close();
  }
  /**
   * Flushes the sync access handle, when there is one (writables commit on close).
   *
   * @example
   * ```ts
   * await s.flush();
   * ```
   */
  async flush(): Promise<void> {
    this.sync?.flush();
  }
  /**
   * Releases the sync access handle, when there is one.
   *
   * @example
   * ```ts
   * await s.close(); // releases the sync access handle (the file's lock)
   * ```
   */
  async close(): Promise<void> {
    this.sync?.close();
  }
}

/**
 * Images in an OPFS folder by name (backing files resolve within the folder).
 *
 * @example
 * ```ts
 * const p = new OpfsProvider(await navigator.storage.getDirectory());
 * const dev = await openImage('vm.qcow2', { provider: p });
 * ```
 */
export class OpfsProvider implements StorageProvider {
  private readonly dir: FileSystemDirectoryHandle;
  constructor(dir: FileSystemDirectoryHandle) {
    this.dir = dir;
  }
  /**
   * Opens the file `name` in the folder; NOT_FOUND when there is none.
   *
   * @example
   * ```ts
   * const s = await p.open('base.qcow2', { readOnly: true }); // NOT_FOUND when absent
   * ```
   */
  async open(name: string, opts: { readOnly: boolean }): Promise<Storage> {
    let h: FileSystemFileHandle;
    try {
      h = await this.dir.getFileHandle(name);
    } catch (e) {
      throw new VmkitError('NOT_FOUND', `no OPFS file ${name}`, { path: name, cause: e });
    }
    return OpfsStorage.open(h, opts);
  }
  /**
   * Creates (or empties) the file `name` in the folder.
   *
   * @example
   * ```ts
   * const s = await p.create('top.qcow2'); // empty
   * ```
   */
  async create(name: string): Promise<Storage> {
    const h = await this.dir.getFileHandle(name, { create: true });
    const s = await OpfsStorage.open(h);
    await s.truncate(0);
    return s;
  }
  /**
   * The base name of `rel`: an OPFS folder is flat.
   *
   * @example
   * ```ts
   * p.resolve('top.qcow2', '../images/base.qcow2'); // 'base.qcow2': one flat folder
   * ```
   */
  resolve(_from: string, rel: string): string {
    return rel.slice(rel.lastIndexOf('/') + 1);
  }
  /**
   * The base name of `target`: an OPFS folder is flat.
   *
   * @example
   * ```ts
   * p.relative('top.qcow2', 'dir/base.qcow2'); // 'base.qcow2'
   * ```
   */
  relative(_from: string, target: string): string {
    return target.slice(target.lastIndexOf('/') + 1);
  }
}
