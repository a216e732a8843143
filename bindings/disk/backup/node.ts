/**
 * Image operations on Node files for backup jobs: the small-file and rename
 * work done here (the state record is written with write, fsync, rename and
 * an fsync of the folder), the image formats delegated to a format driver.
 * `node:fs` is imported on first use, so browser bundles of vmkit/disk that
 * never call these stay free of it.
 * @module
 */
import { VmkitError } from '../../errors.js';
import type { FormatName } from '../formats/types.js';
import type { BackupDevice, ChainOps } from './_types.js';
import { checkImage, fileFormatDriver } from '../image.js';
import { nodeModule } from '../../_node.js';

type Fs = typeof import('node:fs/promises');
type Path = typeof import('node:path');

const fs = (): Promise<Fs> => nodeModule<Fs>('node:fs/promises');
/** Bytes freed per step when a large file is removed (see NodeChainOps.shrink). */
const _SHRINK_STEP = 32 * 1024 * 1024;
const pathApi = (): Promise<Path> => nodeModule<Path>('node:path');

function ioError(e: unknown, what: string, path: string): VmkitError {
  if (e instanceof VmkitError) return e;
  const code = (e as NodeJS.ErrnoException)?.code;
  return new VmkitError(code === 'ENOENT' ? 'NOT_FOUND' : 'IO', `${what} ${path}: ${(e as Error)?.message ?? String(e)}`, { path, cause: e });
}

/**
 * The image formats a {@link NodeChainOps} works with: how to open a chain,
 * create images and overlays, and read an image's backing file and format.
 *
 * @example
 * ```ts
 * const ops = new NodeChainOps(fileFormatDriver); // the default driver, over vmkit/disk's formats
 * ```
 */
export interface FormatDriver {
  /**
   * Opens the chain whose top layer is `path`.
   *
   * @example
   * ```ts
   * const chain = await fileFormatDriver.open('vm-delta.qcow2', { readOnly: true });
   * ```
   */
  open(path: string, opts: { readOnly: boolean }): Promise<BackupDevice>;
  /**
   * Creates an empty standalone image.
   *
   * @example
   * ```ts
   * await fileFormatDriver.create('scratch.qcow2', 1 << 30, 'qcow2');
   * ```
   */
  create(path: string, size: number, format: FormatName, opts?: { durable?: boolean }): Promise<void>;
  /**
   * Creates the overlay `path` on `backing`.
   *
   * @example
   * ```ts
   * await fileFormatDriver.createOverlay('vm-delta.qcow2', 'vm.qcow2', 'qcow2');
   * ```
   */
  createOverlay(path: string, backing: string, format: FormatName): Promise<void>;
  /**
   * The backing file as a path usable from the current folder, or undefined.
   *
   * @example
   * ```ts
   * const below = await fileFormatDriver.backingOf('vm-delta.qcow2'); // 'vm.qcow2'
   * ```
   */
  backingOf(path: string): Promise<string | undefined>;
  /**
   * The format of the image at `path`.
   *
   * @example
   * ```ts
   * const fmt = await fileFormatDriver.formatOf('vm-delta.qcow2'); // 'qcow2'
   * ```
   */
  formatOf(path: string): Promise<FormatName>;
}

/**
 * {@link ChainOps} on Node files.
 *
 * @example
 * ```ts
 * const ops = new NodeChainOps();
 * const disk = await LiveDisk.open('vm-delta.qcow2', ops);
 * ```
 */
export class NodeChainOps implements ChainOps {
  private readonly driver: FormatDriver;

  constructor(driver: FormatDriver = fileFormatDriver) {
    this.driver = driver;
  }

  /**
   * Opens the chain whose top layer is `path` (writable unless readOnly).
   *
   * @example
   * ```ts
   * const chain = await ops.open('vm-delta.qcow2', { readOnly: true });
   * ```
   */
  open(path: string, opts: { readOnly?: boolean } = {}): Promise<BackupDevice> {
    return this.driver.open(path, { readOnly: opts.readOnly === true });
  }
  /**
   * Creates the overlay `path` on `backing`.
   *
   * @example
   * ```ts
   * await ops.createOverlay('vm-delta.qcow2', 'vm.qcow2'); // as qemu-img create -b vm.qcow2 -F qcow2
   * ```
   */
  createOverlay(path: string, backing: string, format: FormatName = 'qcow2'): Promise<void> {
    return this.driver.createOverlay(path, backing, format);
  }
  /**
   * Creates an empty standalone image.
   *
   * @example
   * ```ts
   * await ops.create('scratch.qcow2', 1 << 30, 'qcow2');
   * ```
   */
  create(path: string, size: number, format: FormatName, opts?: { durable?: boolean }): Promise<void> {
    return this.driver.create(path, size, format, opts);
  }
  /**
   * The backing file of `path` as a usable path, or undefined.
   *
   * @example
   * ```ts
   * const below = await ops.backingOf('vm-delta.qcow2'); // 'vm.qcow2'
   * ```
   */
  backingOf(path: string): Promise<string | undefined> {
    return this.driver.backingOf(path);
  }
  /**
   * The format of the image at `path`.
   *
   * @example
   * ```ts
   * const fmt = await ops.formatOf('vm-delta.qcow2'); // 'qcow2'
   * ```
   */
  formatOf(path: string): Promise<FormatName> {
    return this.driver.formatOf(path);
  }
  /**
   * Frees leaked clusters (qemu-img check -r leaks); returns how many. Raw images have none.
   *
   * @example
   * ```ts
   * const freed = await ops.repairLeaks('vm.qcow2'); // as qemu-img check -r leaks
   * ```
   */
  async repairLeaks(path: string): Promise<number> {
    if ((await this.formatOf(path)) === 'raw') return 0;
    const r = await checkImage(path, { repairLeaks: true });
    return r.leaksFixed ?? 0;
  }
  /**
   * True when a file exists at `path`.
   *
   * @example
   * ```ts
   * if (await ops.exists('vm-delta.qcow2.vmkit-job')) await recoverConsolidation(ops, 'vm-delta.qcow2');
   * ```
   */
  async exists(path: string): Promise<boolean> {
    try {
      await (await fs()).access(path);
      return true;
    } catch {
      return false;
    }
  }
  /**
   * Removes the file (no error when it is absent).
   *
   * @example
   * ```ts
   * await ops.remove('vm-delta.qcow2'); // no error when absent
   * ```
   */
  async remove(path: string): Promise<void> {
    try {
      const f = await fs();
      await this.shrink(f, path);
      await f.rm(path, { force: true });
    } catch (e) {
      throw ioError(e, 'remove', path);
    }
  }
  /**
   * Frees a large file's blocks a slice at a time before it is unlinked: one unlink of a
   * gigabyte held the file system's journal for ~0.6 s here (ext4 mounted with discard), and
   * every fsync meanwhile — a guest's, right after a consolidation removed its old delta —
   * waited for it. Slices of 32 MiB with a turn of the event loop between them let those in.
   */
  private async shrink(f: Fs, path: string): Promise<void> {
    let fh: import('node:fs/promises').FileHandle | undefined;
    try {
      fh = await f.open(path, 'r+');
      const st = await fh.stat();
      // A file with another name keeps its blocks: only the unlink of its last name frees them.
      if (st.nlink !== 1 || !st.isFile() || st.size <= _SHRINK_STEP * 2) return;
      let size = st.size;
      while (size > 0) {
        size = Math.max(0, size - _SHRINK_STEP);
        await fh.truncate(size);
        await new Promise((r) => setImmediate(r));
      }
    } catch (e) {
      // Absent (remove is idempotent) or not ours to truncate: the unlink decides.
      if ((e as NodeJS.ErrnoException)?.code !== 'ENOENT') return;
    } finally {
      await fh?.close();
    }
  }
  /**
   * Renames `from` to `to` atomically and fsyncs the folder.
   *
   * @example
   * ```ts
   * await ops.rename('vm-delta.qcow2.tmp', 'vm-delta.qcow2'); // then fsyncs the folder
   * ```
   */
  async rename(from: string, to: string): Promise<void> {
    try {
      await (await fs()).rename(from, to);
      await this.syncDir(to);
    } catch (e) {
      throw ioError(e, 'rename', from);
    }
  }
  /**
   * Gives `from` a second name `to` (a hard link; `to` must not exist).
   *
   * @example
   * ```ts
   * await ops.link('vm-delta.qcow2', 'vm-delta.qcow2.vmkit-old'); // one file, two names
   * ```
   */
  async link(from: string, to: string): Promise<void> {
    try {
      await (await fs()).link(from, to);
    } catch (e) {
      throw ioError(e, 'link', from);
    }
  }
  /**
   * Reads a small file, undefined when absent.
   *
   * @example
   * ```ts
   * const text = await ops.readText('vm-delta.qcow2.vmkit-job'); // undefined when absent
   * ```
   */
  async readText(path: string): Promise<string | undefined> {
    try {
      return await (await fs()).readFile(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException)?.code === 'ENOENT') return undefined;
      throw ioError(e, 'read', path);
    }
  }
  /**
   * Writes a small file atomically (write, fsync, rename, fsync the folder; no fsyncs when `durable` is false).
   *
   * @example
   * ```ts
   * await ops.writeTextAtomic('job.json', JSON.stringify(rec));                     // survives a power loss
   * await ops.writeTextAtomic('job.json', JSON.stringify(rec), { durable: false }); // survives SIGKILL only
   * ```
   */
  async writeTextAtomic(path: string, text: string, opts: { durable?: boolean } = {}): Promise<void> {
    const durable = opts.durable !== false;
    // Writes of one path run in call order: two renames racing could let an older record
    // land last (and two writes in one millisecond would share a temporary name).
    const prev = this.writing.get(path) ?? Promise.resolve();
    const p = prev.then(() => this.writeNow(path, text, durable));
    const tail = p.then(
      () => undefined,
      () => undefined,
    );
    this.writing.set(path, tail);
    void tail.then(() => {
      if (this.writing.get(path) === tail) this.writing.delete(path);
    });
    return p;
  }
  private readonly writing = new Map<string, Promise<void>>();
  private tmpSeq = 0;
  private async writeNow(path: string, text: string, durable: boolean): Promise<void> {
    const f = await fs();
    const tmp = `${path}.tmp-${process.pid}-${Date.now().toString(36)}-${this.tmpSeq++}`;
    try {
      const fh = await f.open(tmp, 'w');
      try {
        await fh.writeFile(text, 'utf8');
        if (durable) await fh.sync();
      } finally {
        await fh.close();
      }
      await f.rename(tmp, path);
      if (durable) await this.syncDir(path);
    } catch (e) {
      await f.rm(tmp, { force: true }).catch(() => {});
      throw ioError(e, 'write', path);
    }
  }
  private async syncDir(path: string): Promise<void> {
    const f = await fs();
    const dir = (await pathApi()).dirname(path);
    let fh: import('node:fs/promises').FileHandle | undefined;
    try {
      fh = await f.open(dir, 'r');
      await fh.sync();
    } catch {
      // Some filesystems refuse fsync on a folder; the rename is still atomic.
    } finally {
      await fh?.close();
    }
  }
}
