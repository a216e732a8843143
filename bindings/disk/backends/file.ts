/**
 * Node files with positional I/O (`FileHandle.read/write` at an offset), and
 * the provider that resolves backing files relative to their overlay.
 * `node:fs` is imported on first use so browser bundles stay free of it.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { _MMAP_HEAD, _MMAP_MIN, assertWritable, type Storage, type StorageProvider } from './storage.js';
import { nodeModule } from '../../_node.js';

type Fs = typeof import('node:fs/promises');
type PathApi = typeof import('node:path');
type SyncFs = typeof import('node:fs');
const nodeSyncFs = (): Promise<SyncFs> => nodeModule<SyncFs>('node:fs');
const nodeFs = (): Promise<Fs> => nodeModule<Fs>('node:fs/promises');
const nodePath = (): Promise<PathApi> => nodeModule<PathApi>('node:path');

function ioError(e: unknown, op: string, path: string, offset?: number): VmkitError {
  if (e instanceof VmkitError) return e;
  const code = (e as NodeJS.ErrnoException)?.code;
  return new VmkitError(code === 'ENOENT' ? 'NOT_FOUND' : 'IO', `${op} ${path}: ${(e as Error)?.message ?? String(e)}`, {
    path,
    cause: e,
    ...(offset === undefined ? {} : { offset }),
  });
}

// Reads from the page cache into most large Node buffers run at a fraction of the speed they
// could: the kernel copies each page with `rep movsb`, which slows 3-5x when the destination
// sits 1-31 bytes past the source modulo 4 KiB (its loads alias the stores just made), and
// glibc places every allocation it maps itself (Node's ArrayBuffers of 128 KiB and up) 16 bytes
// past a page boundary, while cluster data starts on one. Such reads go through a page-aligned
// bounce slot (WebAssembly memory starts on a page) with the data half a page away from both
// the page cache and `dst`, then `set` into place: two fast copies beat one slow one.
const _PAGE = 4096;
/**
 * One round trip per request up to 1 MiB at any offset (a thread-pool round trip costs ~30 µs):
 * the data starts up to a page into the slot.
 */
const _SLOT = (1 << 20) + 2 * 4096;
/** Slots per WebAssembly.Memory, and at most this many memories (each reserves address space). */
const _SLOTS_PER_MEM = 8;
const _MAX_MEMS = 4;
/** Reads shorter than this go straight into the destination (the syscall dominates). */
const _BOUNCE_MIN = 32 * 1024;
const _slots: Uint8Array[] = [];
let _mems = 0;

/**
 * True when a read from file offset `pos` into `dst` likely hits the slow copy: a large read
 * into a buffer glibc likely mapped itself (the only case whose address modulo a page is known).
 * @internal
 */
export function _aliases(dst: Uint8Array, pos: number): boolean {
  if (dst.length < _BOUNCE_MIN || dst.buffer.byteLength < _MMAP_MIN || !(dst.buffer instanceof ArrayBuffer)) return false;
  const d = (((_MMAP_HEAD + dst.byteOffset - pos) % _PAGE) + _PAGE) % _PAGE;
  return d > 0 && d < 32;
}

/** A free page-aligned bounce slot of {@link _SLOT} bytes, or undefined when all are out. */
function _takeSlot(): Uint8Array | undefined {
  const s = _slots.pop();
  if (s || _mems >= _MAX_MEMS) return s;
  _mems++;
  const mem = new WebAssembly.Memory({ initial: Math.ceil((_SLOTS_PER_MEM * _SLOT) / 65536) }).buffer;
  for (let i = 1; i < _SLOTS_PER_MEM; i++) _slots.push(new Uint8Array(mem, i * _SLOT, _SLOT));
  return new Uint8Array(mem, 0, _SLOT);
}

/**
 * A Node file as a {@link Storage}.
 *
 * @example
 * ```ts
 * const s = await FileStorage.open('disk.qcow2', { readOnly: true });
 * ```
 */
export class FileStorage implements Storage {
  readonly name: string;
  readonly readOnly: boolean;
  private readonly fh: import('node:fs/promises').FileHandle;
  private readonly sync: SyncFs | undefined;
  private closed = false;
  /** The pending close: it waits for requests in flight (`active`) before closing the descriptor. */
  private closing: Promise<void> | undefined;
  private active = 0;
  private idle: (() => void) | undefined;
  /** Writes (or a truncate) may not be durable yet. */
  private unsynced = true;

  /** Callback-style node:fs for the asynchronous reads and writes. */
  private readonly cb: SyncFs;

  private constructor(fh: import('node:fs/promises').FileHandle, name: string, readOnly: boolean, sync: SyncFs | undefined, cb: SyncFs) {
    this.fh = fh;
    this.name = name;
    this.readOnly = readOnly;
    this.sync = sync;
    this.cb = cb;
  }

  // Every request holds the descriptor open: the callback API below takes the raw fd, which a
  // concurrent FileHandle.close() would otherwise free under a read in flight (and the kernel
  // could hand the number to the next file opened: a read of the wrong file).
  private enter(op: string): number {
    if (this.closed) throw new VmkitError('INVALID_STATE', `${op} ${this.name}: the file is closed`, { path: this.name });
    this.active++;
    return this.fh.fd;
  }
  private leave(): void {
    if (--this.active === 0 && this.idle) {
      const f = this.idle;
      this.idle = undefined;
      f();
    }
  }

  // The callback API on the descriptor costs about a fifth less CPU per request than the
  // FileHandle methods (no FileHandle bookkeeping or promise wrapper on the native side).
  private pread(fd: number, dst: Uint8Array, at: number, len: number, pos: number): Promise<number> {
    return new Promise((res, rej) => this.cb.read(fd, dst, at, len, pos, (e, n) => (e ? rej(e) : res(n))));
  }
  /**
   * Opens an existing file. With `sync`, reads and writes use blocking
   * `readSync`/`writeSync` on the calling thread: ~30x the IOPS of the thread
   * pool for data in the page cache, but each request blocks the event loop
   * (for command-line tools and batch jobs, not for servers).
   *
   * @example
   * ```ts
   * const s = await FileStorage.open('vm.qcow2', { readOnly: true });
   * const dev = await (await loadFormat(await probeFormat(s))).open(s, { readOnly: true });
   * ```
   */
  static async open(path: string, opts: { readOnly?: boolean; sync?: boolean } = {}): Promise<FileStorage> {
    const fs = await nodeFs();
    const cb = await nodeSyncFs();
    const sync = opts.sync ? cb : undefined;
    try {
      return new FileStorage(await fs.open(path, opts.readOnly ? 'r' : 'r+'), path, opts.readOnly === true, sync, cb);
    } catch (e) {
      throw ioError(e, 'open', path);
    }
  }
  /**
   * Creates (or truncates) a file.
   *
   * @example
   * ```ts
   * const s = await FileStorage.create('scratch.raw');
   * await s.truncate(1 << 30); // a sparse 1 GiB file
   * ```
   */
  static async create(path: string, opts: { sync?: boolean } = {}): Promise<FileStorage> {
    const fs = await nodeFs();
    const cb = await nodeSyncFs();
    const sync = opts.sync ? cb : undefined;
    try {
      return new FileStorage(await fs.open(path, 'w+'), path, false, sync, cb);
    } catch (e) {
      throw ioError(e, 'create', path);
    }
  }
  /**
   * Current length of the file in bytes.
   *
   * @example
   * ```ts
   * const n = await s.size(); // the file's length (fstat)
   * ```
   */
  async size(): Promise<number> {
    this.enter('stat');
    try {
      return (await this.fh.stat()).size;
    } catch (e) {
      throw ioError(e, 'stat', this.name);
    } finally {
      this.leave();
    }
  }
  /**
   * Reads `dst.length` bytes at `offset` (pread); bytes past the end read as zero.
   *
   * @example
   * ```ts
   * const head = new Uint8Array(4096);
   * await s.readInto(0, head); // bytes past the end read as zero
   * ```
   */
  readInto(offset: number, dst: Uint8Array): Promise<void> {
    if (this.sync || _aliases(dst, offset)) return this.readLoop(offset, dst);
    // The common asynchronous request: one promise around the callbacks (an async function
    // awaiting a promisified read costs two more, and their microtask turns, per request).
    return new Promise((resolve, reject) => {
      let got = 0;
      const fd = this.enter('read');
      const done = (e: NodeJS.ErrnoException | null, n: number): void => {
        if (!e && n > 0 && (got += n) < dst.length) {
          try {
            this.cb.read(fd, dst, got, dst.length - got, offset + got, done);
            return;
          } catch (x) {
            e = x as NodeJS.ErrnoException;
          }
        }
        this.leave();
        if (e) reject(ioError(e, 'read', this.name, offset));
        else {
          if (got < dst.length) dst.fill(0, got);
          resolve();
        }
      };
      try {
        this.cb.read(fd, dst, 0, dst.length, offset, done);
      } catch (x) {
        this.leave();
        reject(ioError(x, 'read', this.name, offset));
      }
    });
  }

  /** Reads through a bounce slot, or with blocking reads. */
  private async readLoop(offset: number, dst: Uint8Array): Promise<void> {
    const fd = this.enter('read');
    let got = 0;
    const slot = _aliases(dst, offset) ? _takeSlot() : undefined;
    try {
      while (got < dst.length) {
        const pos = offset + got;
        let n: number;
        if (slot) {
          // Half a page off the page cache (and so off `dst`, which sits ~16 bytes past it).
          const b = ((pos % _PAGE) + _PAGE / 2) % _PAGE;
          const len = Math.min(dst.length - got, _SLOT - b);
          n = this.sync ? this.sync.readSync(fd, slot, b, len, pos) : await this.pread(fd, slot, b, len, pos);
          dst.set(slot.subarray(b, b + n), got);
        } else {
          n = this.sync ? this.sync.readSync(fd, dst, got, dst.length - got, pos) : await this.pread(fd, dst, got, dst.length - got, pos);
        }
        if (n === 0) break;
        got += n;
      }
    } catch (e) {
      throw ioError(e, 'read', this.name, offset);
    } finally {
      if (slot) _slots.push(slot);
      this.leave();
    }
    if (got < dst.length) dst.fill(0, got);
  }
  /**
   * Writes all of `data` at `offset` (pwrite), growing the file when past the end.
   *
   * @example
   * ```ts
   * await s.write(65536, cluster); // pwrite; the file grows as needed
   * ```
   */
  write(offset: number, data: Uint8Array): Promise<void> {
    if (this.sync) return this.writeLoop(offset, data);
    // One promise around the callbacks, as readInto.
    return new Promise((resolve, reject) => {
      assertWritable(this, 'write');
      const fd = this.enter('write');
      this.unsynced = true;
      let put = 0;
      const done = (e: NodeJS.ErrnoException | null, n: number): void => {
        if (!e && (put += n) < data.length) {
          try {
            this.cb.write(fd, data, put, data.length - put, offset + put, done);
            return;
          } catch (x) {
            e = x as NodeJS.ErrnoException;
          }
        }
        // Again at the end: a flush that ran while this write was in flight did not cover it.
        this.unsynced = true;
        this.leave();
        if (e) reject(ioError(e, 'write', this.name, offset));
        else resolve();
      };
      try {
        this.cb.write(fd, data, 0, data.length, offset, done);
      } catch (x) {
        this.leave();
        reject(ioError(x, 'write', this.name, offset));
      }
    });
  }

  /** Blocking writes. */
  private async writeLoop(offset: number, data: Uint8Array): Promise<void> {
    assertWritable(this, 'write');
    const fd = this.enter('write');
    this.unsynced = true;
    let put = 0;
    try {
      while (put < data.length) {
        put += this.sync!.writeSync(fd, data, put, data.length - put, offset + put);
      }
    } catch (e) {
      throw ioError(e, 'write', this.name, offset);
    } finally {
      // Again at the end: a flush that ran while this write was in flight did not cover it.
      this.unsynced = true;
      this.leave();
    }
  }
  /**
   * Sets the file length (ftruncate).
   *
   * @example
   * ```ts
   * await s.truncate(await s.size() + 65536);
   * ```
   */
  async truncate(size: number): Promise<void> {
    assertWritable(this, 'truncate');
    this.enter('truncate');
    this.unsynced = true;
    try {
      await this.fh.truncate(size);
    } catch (e) {
      throw ioError(e, 'truncate', this.name);
    } finally {
      this.unsynced = true;
      this.leave();
    }
  }
  /**
   * fdatasync when anything was written since the last flush.
   *
   * @example
   * ```ts
   * await s.write(0, header);
   * await s.flush(); // durable now
   * ```
   */
  async flush(): Promise<void> {
    // Nothing written through this handle since the last flush: nothing to make durable (the
    // first flush after opening always syncs, for what an earlier writer may have left).
    if (this.readOnly || !this.unsynced) return;
    this.enter('fsync');
    this.unsynced = false;
    try {
      // fdatasync, as QEMU: the data and what is needed to read it back (the size), without
      // the timestamps a full fsync also commits.
      await this.fh.datasync();
    } catch (e) {
      this.unsynced = true;
      throw ioError(e, 'fsync', this.name);
    } finally {
      this.leave();
    }
  }
  /**
   * Closes the file (idempotent). Requests already running finish first (a
   * read in flight completes whole); requests made after it throw
   * INVALID_STATE.
   *
   * @example
   * ```ts
   * await s.close(); // a second close waits for the first, then is a no-op
   * ```
   */
  close(): Promise<void> {
    return (this.closing ??= (async () => {
      this.closed = true;
      if (this.active > 0) await new Promise<void>((r) => (this.idle = r));
      await this.fh.close();
    })());
  }
}

/**
 * Node files: backing files resolve relative to the folder of their overlay,
 * as QEMU resolves them.
 *
 * @example
 * ```ts
 * const dev = await openImage('vm.qcow2', { provider: fileProvider });
 * ```
 */
export const fileProvider: StorageProvider = {
  open: (name, opts) => FileStorage.open(name, opts),
  create: (name) => FileStorage.create(name),
  resolve(from, rel) {
    if (rel.startsWith('/')) return rel;
    const i = from.lastIndexOf('/');
    return i < 0 ? rel : from.slice(0, i + 1) + rel;
  },
  relative(from, target) {
    const i = from.lastIndexOf('/');
    const dir = i < 0 ? '' : from.slice(0, i + 1);
    // A sibling (or a file below the overlay's folder) is stored relative;
    // anything else as given (absolute paths stay absolute).
    return dir && target.startsWith(dir) ? target.slice(dir.length) : target;
  },
};

/**
 * Node files with blocking positional I/O (see {@link FileStorage.open}'s
 * `sync`): for command-line tools and batch jobs on page-cached images.
 *
 * @example
 * ```ts
 * const dev = await openImage('vm.qcow2', { provider: syncFileProvider, readOnly: true });
 * ```
 */
export const syncFileProvider: StorageProvider = {
  ...fileProvider,
  open: (name, opts) => FileStorage.open(name, { ...opts, sync: true }),
  create: (name) => FileStorage.create(name, { sync: true }),
};

/**
 * The absolute path of `p` (Node only).
 * @internal
 */
export async function absolutePath(p: string): Promise<string> {
  return (await nodePath()).resolve(p);
}
