/**
 * The slice of the block layer (vmkit/disk) that backup and consolidation
 * build on, stated as small capability interfaces so the job logic can be
 * tested against any implementation: a device with read/write/flush and an
 * allocation-status query, and the handful of chain operations (open, create
 * an overlay, remove a layer) a job performs on image files.
 * @module
 */
import type { BlockDevice, BlockExtent, BlockKind } from '../device.js';
import type { FormatName } from '../formats/types.js';

// The block layer's own names: jobs use the one vocabulary of vmkit/disk.
export type { BlockExtent, BlockKind };

/**
 * A block device as backup sees it: a slice of the one {@link BlockDevice}
 * interface (every device vmkit/disk opens is one), with the buffer-reusing
 * reads and efficient zeroes optional, and qcow2's metadata cache mode when the
 * format has one. Offsets and lengths are byte counts, multiples of
 * `alignment` (512).
 *
 * @example
 * ```ts
 * const dev: BackupDevice = await ops.open('vm.qcow2', { readOnly: true });
 * const e = await dev.blockStatus(0, dev.size);
 * await dev.close();
 * ```
 */
export type BackupDevice = Pick<BlockDevice, 'size' | 'alignment' | 'read' | 'write' | 'flush' | 'blockStatus' | 'close'> &
  Partial<Pick<BlockDevice, 'readInto' | 'writeZeroes'>> & {
    /**
     * Where the format caches metadata (qcow2): `writeback` keeps it until
     * `flush`, `writethrough` writes it before each write completes (and
     * writes back what is cached when switching to it).
     */
    setCacheMode?(mode: 'writethrough' | 'writeback'): Promise<void>;
  };

/**
 * Operations on image files a job needs. The default implementation is the
 * vmkit/disk one on Node files; tests pass an in-memory one.
 *
 * @example
 * ```ts
 * const ops: ChainOps = new NodeChainOps(); // or new MemoryChainOps() in tests and browsers
 * const disk = await LiveDisk.open('vm.qcow2', ops);
 * ```
 */
export interface ChainOps {
  /** Opens the chain whose top layer is `path`; the top is writable unless readOnly. */
  open(path: string, opts?: { readOnly?: boolean }): Promise<BackupDevice>;
  /** Creates an overlay at `path` whose backing file is `backing` (stored relative to `path` when possible). */
  createOverlay(path: string, backing: string, format?: FormatName): Promise<void>;
  /**
   * Creates an empty standalone image, durable on return unless `durable` is false (a caller
   * that flushes the image itself once it is written, as a backup does).
   */
  create(path: string, size: number, format: FormatName, opts?: { durable?: boolean }): Promise<void>;
  /** The backing file of the image at `path` (resolved to a path), or undefined. */
  backingOf(path: string): Promise<string | undefined>;
  /** The format of the image at `path`. */
  formatOf(path: string): Promise<FormatName>;
  /** True when a file exists at `path`. */
  exists(path: string): Promise<boolean>;
  /** Removes the file (no error when it is absent). */
  remove(path: string): Promise<void>;
  /** Atomically replaces `to` with `from`. */
  rename(from: string, to: string): Promise<void>;
  /**
   * Gives the file `from` a second name `to` (a hard link; optional). A job
   * replacing a file links the old one first, so the rename does not free its
   * storage during a pause of the guest's I/O.
   *
   * @example
   * ```ts
   * await ops.link?.('vm-delta.qcow2', 'vm-delta.qcow2.vmkit-old');
   * ```
   */
  link?(from: string, to: string): Promise<void>;
  /** Reads a small file (the job record), undefined when absent. */
  readText(path: string): Promise<string | undefined>;
  /**
   * Writes a small file atomically, and durably (write, fsync, rename, fsync
   * the folder) unless `opts.durable` is false: then it survives the process
   * (SIGKILL) but not a power loss, and costs no journal commit.
   */
  writeTextAtomic(path: string, text: string, opts?: { durable?: boolean }): Promise<void>;
  /**
   * Frees clusters a crash left allocated but unused (leaks: harmless, but
   * `qemu-img check` reports them), as `qemu-img check -r leaks` does.
   * Returns the clusters freed. Optional: stores without leaks omit it.
   */
  repairLeaks?(path: string): Promise<number>;
}
