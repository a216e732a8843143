/**
 * An in-memory image store for browsers, tests and the tour: the images are
 * real qcow2 (or VMDK, raw, …) files held in {@link MemoryStorage}s and opened
 * with vmkit/disk's formats, so jobs run on memory exactly as on Node files; the
 * whole store can be cloned at any instant — which is how the tests stop a job
 * "by power cut" at a random point — and device operations can be delayed at
 * random to shuffle the interleaving of concurrent requests.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { MemoryProvider, MemoryStorage } from '../backends/memory.js';
import type { BlockExtent } from '../device.js';
import { decodeL2, entryOffset } from '../formats/qcow2/metadata.js';
import { parseQcow2Header } from '../formats/qcow2/header.js';
import type { FormatName, ImageDevice } from '../formats/types.js';
import { checkImage, createImage, openImage, probeFormat } from '../image.js';
import type { BackupDevice, ChainOps } from './_types.js';

/** Options of a {@link MemoryChainOps}. */
export interface MemoryChainOptions {
  /**
   * Upper bound in milliseconds of a random delay before each device
   * operation (default 0: operations only yield, one in 32 to the timer queue
   * as file I/O would, so a caller looping on writes cannot starve a job's
   * timers). Tests use it to shuffle the interleaving of concurrent requests.
   */
  jitterMs?: number;
  /** Random source for the jitter (default Math.random). */
  random?: () => number;
}

/**
 * Image files held in memory, implementing the operations a backup job needs.
 *
 * @example
 * ```ts
 * const ops = new MemoryChainOps();
 * await ops.create('base.qcow2', 2 ** 24, 'qcow2');
 * const disk = await LiveDisk.open('base.qcow2', ops);
 * ```
 */
export class MemoryChainOps implements ChainOps {
  /** The image files, by name (a rename moves the store, as a file's inode). */
  private readonly files = new MemoryProvider();
  private readonly texts = new Map<string, string>();
  private readonly jitter: number;
  private readonly random: () => number;
  /** Number of device writes each image received (tests count passes with it). */
  readonly writes: Map<string, number> = new Map();

  constructor(opts: MemoryChainOptions = {}) {
    this.jitter = opts.jitterMs ?? 0;
    this.random = opts.random ?? Math.random;
  }

  /**
   * A deep copy of every file as it is at this instant (a simulated crash:
   * what open devices had not written to their files yet is not in it).
   *
   * @example
   * ```ts
   * const crashed = ops.clone(); // the files as a power cut would leave them
   * const r = await recoverConsolidation(crashed, 'vm-delta.qcow2');
   * ```
   */
  clone(): MemoryChainOps {
    const c = new MemoryChainOps({ jitterMs: this.jitter, random: this.random });
    for (const [k, v] of this.files.stores) c.files.stores.set(k, new MemoryStorage(k, v.bytes().slice()));
    for (const [k, v] of this.texts) c.texts.set(k, v);
    return c;
  }

  /**
   * Names of the files held.
   *
   * @example
   * ```ts
   * console.log(ops.list()); // ['base.qcow2', 'vm-delta.qcow2', 'vm-delta.qcow2.vmkit-job']
   * ```
   */
  list(): string[] {
    return [...this.files.stores.keys(), ...this.texts.keys()].sort();
  }

  /**
   * Bytes of guest data an image's own layer holds, as its file says at this
   * instant: for qcow2 the clusters its L2 tables map (data or zero); for other
   * formats the file's length (an upper bound).
   *
   * @example
   * ```ts
   * const bytes = ops.allocated('vm-delta.qcow2'); // clusters of that layer only
   * ```
   */
  allocated(path: string): number {
    const bytes = this.store(path).bytes();
    if (bytes.length < 4 || new DataView(bytes.buffer, bytes.byteOffset).getUint32(0) !== 0x514649fb) return bytes.length;
    const h = parseQcow2Header(bytes, bytes.length, path);
    const cs = 2 ** h.clusterBits;
    const es = h.extendedL2 ? 16 : 8;
    const l1 = new DataView(bytes.buffer, bytes.byteOffset + h.l1TableOffset, h.l1Size * 8);
    let n = 0;
    for (let i = 0; i < h.l1Size; i++) {
      const l2 = entryOffset(l1.getUint32(i * 8), l1.getUint32(i * 8 + 4));
      if (l2 === 0 || l2 + cs > bytes.length) continue;
      const t = new DataView(bytes.buffer, bytes.byteOffset + l2, cs);
      for (let j = 0; j < cs / es; j++) if (decodeL2(t, j, h.extendedL2, h.clusterBits).kind !== 'unallocated') n += cs;
    }
    return n;
  }

  private store(path: string): MemoryStorage {
    const s = this.files.stores.get(path);
    if (!s) throw new VmkitError('NOT_FOUND', `no image ${path}`, { path });
    return s;
  }

  /**
   * Yields to the event loop, after a random delay when jitter is set.
   *
   * @example
   * ```ts
   * await ops.pause(); // a random delay with jitterMs set
   * ```
   */
  async pause(): Promise<void> {
    if (this.jitter > 0 && this.random() < 0.5) await new Promise((r) => setTimeout(r, this.random() * this.jitter));
    else if (++this.paused % 32 === 0) await new Promise((r) => setTimeout(r, 0));
    else await Promise.resolve();
  }
  private paused = 0;

  /**
   * Opens the chain whose top is `path` (NOT_FOUND, or LIMIT for a loop).
   *
   * @example
   * ```ts
   * const dev = await ops.open('vm-delta.qcow2', { readOnly: true }); // the whole chain
   * ```
   */
  async open(path: string, opts: { readOnly?: boolean } = {}): Promise<BackupDevice> {
    this.store(path);
    const dev = await openImage(path, { provider: this.files, readOnly: opts.readOnly === true });
    return new JitteredDevice(this, path, dev);
  }

  /**
   * Creates an empty overlay `path` on `backing` (CONFLICT if `path` exists).
   *
   * @example
   * ```ts
   * await ops.createOverlay('vm-delta.qcow2', 'base.qcow2');
   * ```
   */
  async createOverlay(path: string, backing: string, format: FormatName = 'qcow2'): Promise<void> {
    this.store(backing);
    if (await this.exists(path)) throw new VmkitError('CONFLICT', `${path} exists`, { path });
    await createImage(path, { provider: this.files, format, backing: this.files.relative(path, backing) });
  }

  /**
   * Creates an empty standalone image (CONFLICT if `path` exists).
   *
   * @example
   * ```ts
   * await ops.create('base.qcow2', 1 << 24, 'qcow2');
   * ```
   */
  async create(path: string, size: number, format: FormatName): Promise<void> {
    if (await this.exists(path)) throw new VmkitError('CONFLICT', `${path} exists`, { path });
    if (size % 512 !== 0) throw new VmkitError('ARG_RANGE', `size ${size} is not a multiple of 512`);
    await createImage(path, { provider: this.files, size, format });
  }

  /**
   * The backing file of `path`, or undefined.
   *
   * @example
   * ```ts
   * await ops.backingOf('vm-delta.qcow2'); // 'base.qcow2'
   * ```
   */
  async backingOf(path: string): Promise<string | undefined> {
    this.store(path);
    const dev = await openImage(path, { provider: this.files, readOnly: true, noBacking: true });
    try {
      return dev.backingFile === undefined ? undefined : this.files.resolve(path, dev.backingFile);
    } finally {
      await dev.close();
    }
  }
  /**
   * The format of the image at `path`, probed from its file.
   *
   * @example
   * ```ts
   * await ops.formatOf('base.qcow2'); // 'qcow2'
   * ```
   */
  async formatOf(path: string): Promise<FormatName> {
    return probeFormat(this.store(path).readOnlyView());
  }
  /**
   * Frees clusters a crash left allocated but unused, as `qemu-img check -r
   * leaks`; returns how many. Raw images have none.
   *
   * @example
   * ```ts
   * const freed = await ops.repairLeaks('vm.qcow2');
   * ```
   */
  async repairLeaks(path: string): Promise<number> {
    if ((await this.formatOf(path)) === 'raw') return 0;
    const r = await checkImage(path, { provider: this.files, repairLeaks: true });
    return r.leaksFixed ?? 0;
  }
  /**
   * True when an image or text file `path` exists.
   *
   * @example
   * ```ts
   * if (await ops.exists('vm-delta.qcow2.vmkit-job')) console.log('a job was interrupted');
   * ```
   */
  async exists(path: string): Promise<boolean> {
    return this.files.stores.has(path) || this.texts.has(path);
  }
  /**
   * Removes the image or text file (no error when absent).
   *
   * @example
   * ```ts
   * await ops.remove('old-delta.qcow2'); // no error when absent
   * ```
   */
  async remove(path: string): Promise<void> {
    this.files.stores.delete(path);
    this.texts.delete(path);
  }
  /**
   * Renames an image or text file (NOT_FOUND when `from` is absent).
   *
   * @example
   * ```ts
   * await ops.rename('tmp.qcow2', 'vm-delta.qcow2');
   * ```
   */
  async rename(from: string, to: string): Promise<void> {
    const im = this.files.stores.get(from);
    if (im) {
      this.files.stores.delete(from);
      this.texts.delete(to);
      this.files.stores.set(to, im);
      return;
    }
    const t = this.texts.get(from);
    if (t === undefined) throw new VmkitError('NOT_FOUND', `no file ${from}`, { path: from });
    this.texts.delete(from);
    this.files.stores.delete(to);
    this.texts.set(to, t);
  }
  /**
   * Reads a text file, undefined when absent.
   *
   * @example
   * ```ts
   * const rec = await ops.readText('vm-delta.qcow2.vmkit-job'); // undefined when absent
   * ```
   */
  async readText(path: string): Promise<string | undefined> {
    return this.texts.get(path);
  }
  /**
   * Replaces a text file at once (memory: always atomic).
   *
   * @example
   * ```ts
   * await ops.writeTextAtomic('notes.txt', 'hello');
   * ```
   */
  async writeTextAtomic(path: string, text: string): Promise<void> {
    this.texts.set(path, text);
  }

  /** @internal */
  countWrite(path: string): void {
    this.writes.set(path, (this.writes.get(path) ?? 0) + 1);
  }
}

/** An opened chain whose operations wait a random moment first (see {@link MemoryChainOps.pause}). */
class JitteredDevice implements BackupDevice {
  readonly size: number;
  readonly alignment: number;
  private readonly store: MemoryChainOps;
  private readonly path: string;
  private readonly dev: ImageDevice;

  constructor(store: MemoryChainOps, path: string, dev: ImageDevice) {
    this.store = store;
    this.path = path;
    this.dev = dev;
    this.size = dev.size;
    this.alignment = dev.alignment;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    await this.store.pause();
    return this.dev.read(offset, length);
  }
  async readInto(offset: number, dst: Uint8Array): Promise<void> {
    await this.store.pause();
    return this.dev.readInto(offset, dst);
  }
  async write(offset: number, data: Uint8Array): Promise<void> {
    await this.store.pause();
    await this.dev.write(offset, data);
    this.store.countWrite(this.path);
  }
  async writeZeroes(offset: number, length: number): Promise<void> {
    await this.store.pause();
    await this.dev.writeZeroes(offset, length);
    this.store.countWrite(this.path);
  }
  async flush(): Promise<void> {
    await this.store.pause();
    return this.dev.flush();
  }
  async blockStatus(offset: number, length: number): Promise<BlockExtent> {
    return this.dev.blockStatus(offset, length);
  }
  async setCacheMode(mode: 'writethrough' | 'writeback'): Promise<void> {
    const d = this.dev as ImageDevice & { setCacheMode?(m: 'writethrough' | 'writeback'): Promise<void> };
    await d.setCacheMode?.(mode);
  }
  async close(): Promise<void> {
    return this.dev.close();
  }
}
