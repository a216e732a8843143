/**
 * An in-memory image store with backing chains, for browsers, tests and the
 * tour: images allocate 64 KiB clusters on write (copying the rest of the
 * cluster up from the backing chain, as qcow2 does), report block status with
 * the depth of the answering layer, and can be cloned at any instant — which
 * is how the tests stop a job "by power cut" at a random point.
 * @module
 */
import { VmkitError } from '../../errors.js';
import type { BlockExtent } from '../device.js';
import type { FormatName } from '../formats/types.js';
import type { BackupDevice, ChainOps } from './_types.js';

const CLUSTER = 65536;

interface MemImage {
  size: number;
  format: FormatName;
  backing: string | undefined;
  /** cluster index → data, or null for a zero cluster. */
  clusters: Map<number, Uint8Array | null>;
}

/** Options of a {@link MemoryChainOps}. */
export interface MemoryChainOptions {
  /**
   * Upper bound in milliseconds of a random delay before each device
   * operation (default 0: operations only yield to the event loop). Tests use
   * it to shuffle the interleaving of concurrent requests.
   */
  jitterMs?: number;
  /** Random source for the jitter (default Math.random). */
  random?: () => number;
}

function split(path: string): string {
  return path;
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
  private readonly images = new Map<string, MemImage>();
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
   * A deep copy of every file as it is at this instant (a simulated crash).
   *
   * @example
   * ```ts
   * const crashed = ops.clone(); // the files as a power cut would leave them
   * const r = await recoverConsolidation(crashed, 'vm-delta.qcow2');
   * ```
   */
  clone(): MemoryChainOps {
    const c = new MemoryChainOps({ jitterMs: this.jitter, random: this.random });
    for (const [k, v] of this.images) {
      const cl = new Map<number, Uint8Array | null>();
      for (const [i, d] of v.clusters) cl.set(i, d === null ? null : d.slice());
      c.images.set(k, { ...v, clusters: cl });
    }
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
    return [...this.images.keys(), ...this.texts.keys()].sort();
  }

  /**
   * Bytes allocated in an image's own layer.
   *
   * @example
   * ```ts
   * const bytes = ops.allocated('vm-delta.qcow2'); // 64 KiB clusters of that layer only
   * ```
   */
  allocated(path: string): number {
    return this.image(path).clusters.size * CLUSTER;
  }

  private image(path: string): MemImage {
    const im = this.images.get(split(path));
    if (!im) throw new VmkitError('NOT_FOUND', `no image ${path}`, { path });
    return im;
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
    else await Promise.resolve();
  }

  /**
   * Opens the chain whose top is `path` (NOT_FOUND, or LIMIT for a loop).
   *
   * @example
   * ```ts
   * const dev = await ops.open('vm-delta.qcow2', { readOnly: true }); // the whole chain
   * ```
   */
  async open(path: string, opts: { readOnly?: boolean } = {}): Promise<BackupDevice> {
    const layers: MemImage[] = [];
    const names: string[] = [];
    for (let p: string | undefined = path; p !== undefined; p = layers[layers.length - 1]!.backing) {
      if (names.includes(p)) throw new VmkitError('LIMIT', `backing chain loops at ${p}`, { path });
      if (layers.length > 64) throw new VmkitError('LIMIT', 'backing chain too deep', { path });
      layers.push(this.image(p));
      names.push(p);
    }
    return new MemoryChain(this, path, layers, opts.readOnly === true);
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
    const b = this.image(backing);
    if (this.images.has(path)) throw new VmkitError('CONFLICT', `${path} exists`, { path });
    this.images.set(path, { size: b.size, format, backing, clusters: new Map() });
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
    if (this.images.has(path)) throw new VmkitError('CONFLICT', `${path} exists`, { path });
    if (size % 512 !== 0) throw new VmkitError('ARG_RANGE', `size ${size} is not a multiple of 512`);
    this.images.set(path, { size, format, backing: undefined, clusters: new Map() });
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
    return this.image(path).backing;
  }
  /**
   * The format `path` was created with.
   *
   * @example
   * ```ts
   * await ops.formatOf('base.qcow2'); // 'qcow2'
   * ```
   */
  async formatOf(path: string): Promise<FormatName> {
    return this.image(path).format;
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
    return this.images.has(path) || this.texts.has(path);
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
    this.images.delete(path);
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
    const im = this.images.get(from);
    if (im) {
      this.images.delete(from);
      this.images.set(to, im);
      return;
    }
    const t = this.texts.get(from);
    if (t === undefined) throw new VmkitError('NOT_FOUND', `no file ${from}`, { path: from });
    this.texts.delete(from);
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

class MemoryChain implements BackupDevice {
  readonly size: number;
  readonly alignment = 512;
  private readonly store: MemoryChainOps;
  private readonly path: string;
  private readonly layers: MemImage[];
  private readonly readOnly: boolean;
  private closed = false;

  constructor(store: MemoryChainOps, path: string, layers: MemImage[], readOnly: boolean) {
    this.store = store;
    this.path = path;
    this.layers = layers;
    this.size = layers[0]!.size;
    this.readOnly = readOnly;
  }

  private check(offset: number, length: number, write: boolean): void {
    if (this.closed) throw new VmkitError('INVALID_STATE', `${this.path} is closed`, { path: this.path });
    if (write && this.readOnly) throw new VmkitError('INVALID_STATE', `${this.path} is open read-only`, { path: this.path });
    if (offset % 512 !== 0 || length % 512 !== 0 || offset < 0 || offset + length > this.size) {
      throw new VmkitError('ARG_RANGE', `request [${offset}, +${length}) is unaligned or past the end (${this.size})`, { offset });
    }
  }

  // The cluster as the chain shows it, and the depth that answers (-1: none).
  private lookup(ci: number): [Uint8Array | null, number] {
    for (let d = 0; d < this.layers.length; d++) {
      const L = this.layers[d]!;
      if (ci * CLUSTER >= L.size) break;
      const c = L.clusters.get(ci);
      if (c !== undefined) return [c, d];
    }
    return [null, -1];
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    this.check(offset, length, false);
    await this.store.pause();
    const out = new Uint8Array(length);
    for (let o = offset; o < offset + length; ) {
      const ci = Math.floor(o / CLUSTER);
      const within = o - ci * CLUSTER;
      const n = Math.min(CLUSTER - within, offset + length - o);
      const [c] = this.lookup(ci);
      if (c) out.set(c.subarray(within, within + n), o - offset);
      o += n;
    }
    return out;
  }

  private put(offset: number, data: Uint8Array | null, length: number): void {
    const top = this.layers[0]!;
    for (let o = offset; o < offset + length; ) {
      const ci = Math.floor(o / CLUSTER);
      const within = o - ci * CLUSTER;
      const n = Math.min(CLUSTER - within, offset + length - o);
      if (data === null && n === CLUSTER) {
        top.clusters.set(ci, null);
      } else {
        let c = top.clusters.get(ci);
        if (!c) {
          // Allocate, copying the rest of the cluster up from the chain.
          const [below] = this.lookup(ci);
          c = below ? below.slice() : new Uint8Array(CLUSTER);
          top.clusters.set(ci, c);
        }
        if (data) c.set(data.subarray(o - offset, o - offset + n), within);
        else c.fill(0, within, within + n);
      }
      o += n;
    }
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.check(offset, data.length, true);
    await this.store.pause();
    this.check(offset, data.length, true);
    this.put(offset, data, data.length);
    this.store.countWrite(this.path);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.check(offset, length, true);
    await this.store.pause();
    this.check(offset, length, true);
    this.put(offset, null, length);
    this.store.countWrite(this.path);
  }

  async flush(): Promise<void> {
    if (this.closed) throw new VmkitError('INVALID_STATE', `${this.path} is closed`, { path: this.path });
    await this.store.pause();
  }

  async blockStatus(offset: number, length: number): Promise<BlockExtent> {
    this.check(offset, 0, false);
    if (offset >= this.size) throw new VmkitError('ARG_RANGE', `offset ${offset} is past the end`, { offset });
    const end = Math.min(this.size, offset + Math.max(length, 1));
    const kindAt = (ci: number): [BlockExtent['kind'], number] => {
      const [c, d] = this.lookup(ci);
      if (d < 0) return ['unallocated', this.layers.length];
      return [c === null ? 'zero' : 'data', d];
    };
    const ci0 = Math.floor(offset / CLUSTER);
    const [kind, depth] = kindAt(ci0);
    let e = Math.min(end, (ci0 + 1) * CLUSTER);
    while (e < end) {
      const [k, d] = kindAt(Math.floor(e / CLUSTER));
      if (k !== kind || d !== depth) break;
      e = Math.min(end, e + CLUSTER);
    }
    return { offset, length: e - offset, kind, depth };
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
