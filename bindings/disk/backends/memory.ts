/**
 * In-memory image stores (tests, browsers without OPFS) and a provider that
 * names them, so backing chains resolve by name as they do on files.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { assertWritable, type Storage, type StorageProvider } from './storage.js';

/**
 * A growable byte buffer as a {@link Storage}.
 *
 * @example
 * ```ts
 * const s = new MemoryStorage('disk.qcow2');
 * await s.write(0, new Uint8Array([1, 2, 3]));
 * ```
 */
export class MemoryStorage implements Storage {
  readonly name: string;
  readonly readOnly: boolean;
  private buf: Uint8Array;
  private len: number;
  /** The store a read-only view reads (live: it sees the store's later writes, as a file opened twice). */
  private src: MemoryStorage | undefined;

  constructor(name: string = 'memory', initial?: Uint8Array, readOnly: boolean = false) {
    this.name = name;
    this.readOnly = readOnly;
    this.buf = initial ? initial : new Uint8Array(0);
    this.len = this.buf.length;
  }
  /**
   * The current contents (a view; copy it to keep it).
   *
   * @example
   * ```ts
   * const copy = s.bytes().slice(); // keep a snapshot of the image file
   * ```
   */
  bytes(): Uint8Array {
    const o = this.src ?? this;
    return o.buf.subarray(0, o.len);
  }
  /**
   * A read-only store over the same bytes (a backing layer's view): it reads
   * what this store holds at the time of each read, growth included.
   *
   * @example
   * ```ts
   * const base = s.readOnlyView(); // write() now throws INVALID_STATE
   * ```
   */
  readOnlyView(): MemoryStorage {
    const m = new MemoryStorage(this.name, undefined, true);
    m.src = this.src ?? this;
    return m;
  }
  /**
   * Current length in bytes.
   *
   * @example
   * ```ts
   * const n = await s.size();
   * ```
   */
  async size(): Promise<number> {
    return (this.src ?? this).len;
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
    const o = this.src ?? this;
    const end = Math.min(o.len, offset + dst.length);
    if (offset < end) dst.set(o.buf.subarray(offset, end));
    if (end - offset < dst.length) dst.fill(0, Math.max(0, end - offset));
  }
  /**
   * Writes `data` at `offset`, growing the buffer as needed.
   *
   * @example
   * ```ts
   * await s.write(1 << 20, data); // grows the buffer
   * ```
   */
  async write(offset: number, data: Uint8Array): Promise<void> {
    assertWritable(this, 'write');
    this.ensure(offset + data.length);
    this.buf.set(data, offset);
    if (offset + data.length > this.len) this.len = offset + data.length;
  }
  /**
   * Sets the length (grows with zeroes or shrinks).
   *
   * @example
   * ```ts
   * await s.truncate(0);
   * ```
   */
  async truncate(size: number): Promise<void> {
    assertWritable(this, 'truncate');
    this.ensure(size);
    if (size < this.len) this.buf.fill(0, size, this.len);
    this.len = size;
  }
  /**
   * Nothing to do: memory has no durability.
   *
   * @example
   * ```ts
   * await s.flush(); // nothing to make durable in memory
   * ```
   */
  async flush(): Promise<void> {}
  /**
   * Nothing to release.
   *
   * @example
   * ```ts
   * await s.close(); // the bytes stay readable through bytes()
   * ```
   */
  async close(): Promise<void> {}
  private ensure(n: number): void {
    if (n > 2 ** 31) throw new VmkitError('LIMIT', `memory store ${this.name} cannot grow to ${n} bytes`);
    if (n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(n, Math.min(2 ** 31, this.buf.length * 2), 4096));
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }
}

/**
 * Named memory stores: `open('base.qcow2')` finds the store created under that
 * name. Names are resolved like relative paths ("dir/a" + "b" → "dir/b").
 *
 * @example
 * ```ts
 * const p = new MemoryProvider();
 * await createImage('base.qcow2', { size: 1 << 20, provider: p });
 * ```
 */
export class MemoryProvider implements StorageProvider {
  readonly stores: Map<string, MemoryStorage> = new Map();
  /**
   * The store created under `name` (a read-only view when asked); NOT_FOUND when none.
   *
   * @example
   * ```ts
   * const s = await p.open('base.qcow2', { readOnly: true }); // NOT_FOUND if never created
   * ```
   */
  async open(name: string, opts: { readOnly: boolean }): Promise<Storage> {
    const s = this.stores.get(name);
    if (!s) throw new VmkitError('NOT_FOUND', `no image named ${name}`, { path: name });
    return opts.readOnly ? s.readOnlyView() : s;
  }
  /**
   * Creates (or replaces) an empty store named `name`.
   *
   * @example
   * ```ts
   * const s = await p.create('scratch.raw');
   * ```
   */
  async create(name: string): Promise<Storage> {
    const s = new MemoryStorage(name);
    this.stores.set(name, s);
    return s;
  }
  /**
   * `rel` as seen from the store `from`, like a relative path.
   *
   * @example
   * ```ts
   * p.resolve('vms/top.qcow2', 'base.qcow2'); // 'vms/base.qcow2'
   * ```
   */
  resolve(from: string, rel: string): string {
    if (rel.startsWith('/')) return rel;
    const i = from.lastIndexOf('/');
    return i < 0 ? rel : from.slice(0, i + 1) + rel;
  }
  /**
   * `target` relative to the folder of `from`, for a backing-file name.
   *
   * @example
   * ```ts
   * p.relative('vms/top.qcow2', 'vms/base.qcow2'); // 'base.qcow2'
   * ```
   */
  relative(from: string, target: string): string {
    const i = from.lastIndexOf('/');
    const dir = i < 0 ? '' : from.slice(0, i + 1);
    return dir && target.startsWith(dir) ? target.slice(dir.length) : target;
  }
}
