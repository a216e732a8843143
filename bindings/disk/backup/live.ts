/**
 * The disk a running guest writes to. Its I/O goes to whatever currently
 * lies underneath — the opened chain, or a mirror driver during a
 * consolidation — and a snapshot or a pivot swaps that underneath while
 * the guest keeps issuing requests: new requests wait at a gate, requests in
 * flight drain, the layers change, the gate opens.
 * @module
 */
import { VmkitError } from '../../errors.js';
import type { BlockExtent } from '../device.js';
import type { BackupDevice, ChainOps } from './_types.js';

/**
 * A block device whose active layer can change under the caller.
 *
 * @example
 * ```ts
 * const disk = await LiveDisk.open('vm.qcow2', ops);
 * await disk.write(0, new Uint8Array(4096).fill(1));
 * const snap = await snapshot(disk);           // disk.path is now the delta
 * ```
 */
export class LiveDisk implements BackupDevice {
  /** Path of the active (top) layer. */
  path: string;
  /** The image operations this disk's jobs use. */
  readonly ops: ChainOps;
  private dev: BackupDevice;
  private chain: BackupDevice;
  private gate: Promise<void> | undefined;
  private inflight = 0;
  private idle: (() => void) | undefined;
  private closed = false;
  /**
   * Called inside the pause whenever a job made another layer active (a
   * snapshot's delta, a consolidation's pivot), before guest I/O resumes: a
   * server records there which file a successor must open. When it throws,
   * the job fails and the error is the job's.
   */
  onActiveChange: ((path: string) => Promise<void>) | undefined;

  /** Wraps an opened chain whose top layer is `path`. */
  constructor(path: string, chain: BackupDevice, ops: ChainOps) {
    this.path = path;
    this.chain = chain;
    this.dev = chain;
    this.ops = ops;
  }

  /**
   * Opens the chain whose top is `path` for writing.
   *
   * @example
   * ```ts
   * const disk = await LiveDisk.open('vm.qcow2', ops);
   * ```
   */
  static async open(path: string, ops: ChainOps): Promise<LiveDisk> {
    return new LiveDisk(path, await ops.open(path), ops);
  }

  get size(): number {
    return this.chain.size;
  }
  get alignment(): number {
    return this.chain.alignment;
  }

  /** The opened chain (without any mirror driver in front). */
  get device(): BackupDevice {
    return this.chain;
  }

  private async enter(): Promise<BackupDevice> {
    while (this.gate) await this.gate;
    if (this.closed) throw new VmkitError('INVALID_STATE', `disk ${this.path} is closed`, { path: this.path });
    this.inflight++;
    return this.dev;
  }
  private leave(): void {
    if (--this.inflight === 0 && this.idle) this.idle();
  }
  private async io<T>(fn: (d: BackupDevice) => Promise<T>): Promise<T> {
    const d = await this.enter();
    try {
      return await fn(d);
    } finally {
      this.leave();
    }
  }

  /**
   * Guest read (waits while a job has guest I/O paused).
   *
   * @example
   * ```ts
   * const data = await disk.read(0, 4096); // waits while a job holds the disk paused
   * ```
   */
  read(offset: number, length: number): Promise<Uint8Array> {
    return this.io((d) => d.read(offset, length));
  }
  /**
   * Guest write (through the mirror driver while a job runs).
   *
   * @example
   * ```ts
   * await disk.write(0, new Uint8Array(4096).fill(1)); // mirrored while a job runs
   * ```
   */
  write(offset: number, data: Uint8Array): Promise<void> {
    return this.io((d) => d.write(offset, data));
  }
  /**
   * Guest write of zeroes.
   *
   * @example
   * ```ts
   * await disk.writeZeroes(0, 1 << 20);
   * ```
   */
  writeZeroes(offset: number, length: number): Promise<void> {
    return this.io((d) => (d.writeZeroes ? d.writeZeroes(offset, length) : d.write(offset, new Uint8Array(length))));
  }
  /**
   * Guest flush.
   *
   * @example
   * ```ts
   * await disk.flush();
   * ```
   */
  flush(): Promise<void> {
    return this.io((d) => d.flush());
  }
  /**
   * Allocation status of the run at `offset` in the active chain.
   *
   * @example
   * ```ts
   * const e = await disk.blockStatus(0, 1 << 20);
   * ```
   */
  blockStatus(offset: number, length: number): Promise<BlockExtent> {
    return this.io((d) => d.blockStatus(offset, length));
  }

  /**
   * Runs `fn` with guest I/O paused: new requests wait, requests in flight
   * finish first. Internal to the backup jobs.
   * @internal
   */
  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    while (this.gate) await this.gate;
    let open!: () => void;
    this.gate = new Promise<void>((r) => (open = r));
    try {
      if (this.inflight > 0) await new Promise<void>((r) => (this.idle = r));
      this.idle = undefined;
      const before = this.path;
      try {
        return await fn();
      } finally {
        // Also when fn failed after the swap: the new layer is active either way.
        if (this.path !== before && !this.closed) await this.onActiveChange?.(this.path);
      }
    } finally {
      this.gate = undefined;
      open();
    }
  }

  /**
   * Routes guest I/O through `front` (a mirror driver) or, with undefined,
   * straight to the chain again. Call inside {@link exclusive}.
   * @internal
   */
  setFront(front: BackupDevice | undefined): void {
    this.dev = front ?? this.chain;
  }

  /**
   * Makes `chain` (top layer at `path`) the active layer. Call inside
   * {@link exclusive}; the caller closes the old chain.
   * @internal
   */
  swapChain(path: string, chain: BackupDevice): void {
    this.path = path;
    this.chain = chain;
    this.dev = chain;
  }

  /**
   * Flushes and closes the chain. Later I/O throws INVALID_STATE.
   *
   * @example
   * ```ts
   * await disk.close(); // later I/O throws INVALID_STATE
   * ```
   */
  async close(): Promise<void> {
    await this.exclusive(async () => {
      if (this.closed) return;
      this.closed = true;
      await this.chain.flush();
      await this.chain.close();
    });
  }
}
