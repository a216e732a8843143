/**
 * The format registry: opens an image by name with its whole backing chain
 * (names resolved relative to each overlay, as QEMU does; loops and absurd
 * depth refused), creates images and overlays, and runs `check`. The format
 * is found by probing the first 4 KiB (qcow2, VMDK, VHDX, VHD), then the
 * last 512 bytes (a fixed VHD's footer), else raw; or taken
 * from the backing-format a qcow2 overlay records. A backing file is never
 * probed as raw: when its overlay records no format and it has no format
 * header, opening refuses (UNSUPPORTED) unless the caller states the format
 * (`backingFormat`), since reading any file an image names as raw guest data
 * would hand a crafted image's reader that file (`/etc/shadow`, say). QEMU
 * refuses to create such an image (`qemu-img create -b` needs `-F`). Format folders are loaded
 * on first use, so a missing one (VMDK before it lands) only fails images of
 * that format.
 * @module
 */
import { VmkitError } from '../errors.js';
import { nodeModule } from '../_node.js';
import { fileProvider, syncFileProvider } from './backends/file.js';
import { readAt, type Storage, type StorageProvider } from './backends/storage.js';
import type { BlockDevice } from './device.js';
import type { WriteGuard } from './_guard.js';
import {
  PROBE_BYTES,
  type CheckReport,
  type FormatCheckOptions,
  type FormatName,
  type ImageDevice,
  type ImageFormatModule,
} from './formats/types.js';

/**
 * Longest backing chain vmkit opens (QEMU has no fixed bound; 64 is far past any real chain).
 *
 * @example
 * ```ts
 * await openImage('vm.qcow2', { maxDepth: MAX_CHAIN_DEPTH / 2 });
 * ```
 */
export const MAX_CHAIN_DEPTH = 64;

const FORMATS: readonly FormatName[] = ['qcow2', 'vmdk', 'vhdx', 'vhd', 'raw'];
// Literal specifiers so bundlers include the formats (the CLI's bundle too: scripts/bundle-cli.mjs).
const IMPORTS: Record<FormatName, () => Promise<unknown>> = {
  qcow2: () => import('./formats/qcow2/index.js'),
  raw: () => import('./formats/raw/index.js'),
  vhd: () => import('./formats/vhd/index.js'),
  vhdx: () => import('./formats/vhdx/index.js'),
  vmdk: () => import('./formats/vmdk/index.js'),
};
const loaded = new Map<FormatName, Promise<ImageFormatModule>>();

/**
 * Loads a format module (lazily; the VMDK folder may not exist yet).
 *
 * @example
 * ```ts
 * const qcow2 = await loadFormat('qcow2');
 * ```
 */
export function loadFormat(name: FormatName): Promise<ImageFormatModule> {
  let p = loaded.get(name);
  if (!p) {
    p = (IMPORTS[name]() as Promise<{ format: ImageFormatModule }>).then(
      (m) => m.format,
      (e: unknown) => {
        loaded.delete(name);
        throw new VmkitError('UNSUPPORTED', `image format ${name} is not available in this build`, { cause: e });
      },
    );
    loaded.set(name, p);
  }
  return p;
}

/**
 * Finds the format of an image from its first bytes (qcow2, VMDK, else raw).
 *
 * @example
 * ```ts
 * const fmt = await probeFormat(storage); // 'qcow2'
 * ```
 */
export async function probeFormat(storage: Storage): Promise<FormatName> {
  const n = Math.min(PROBE_BYTES, await storage.size());
  const head = await readAt(storage, 0, n);
  const tailProbes: ImageFormatModule[] = [];
  for (const f of FORMATS) {
    if (f === 'raw') break;
    let m: ImageFormatModule;
    try {
      m = await loadFormat(f);
    } catch {
      continue; // a format not in this build cannot claim the file
    }
    if (m.probe(head)) return f;
    if (m.probeTail) tailProbes.push(m);
  }
  // Signatures at the end (a fixed VHD's footer) only once no header claimed the file.
  const size = await storage.size();
  if (tailProbes.length > 0 && size >= 512) {
    const tail = await readAt(storage, size - 512, 512);
    for (const m of tailProbes) if (m.probeTail!(tail, size)) return m.name;
  }
  return 'raw';
}

/**
 * Options of {@link openImage}.
 *
 * @example
 * ```ts
 * const dev = await openImage('top.qcow2', { readOnly: true, maxDepth: 8 });
 * ```
 */
export interface OpenImageOptions {
  /** Where images live (default: Node files). */
  provider?: StorageProvider;
  /** Open the top layer read-only too. */
  readOnly?: boolean;
  /** Format of the top layer (default: probed). */
  format?: FormatName;
  /** Write guard of the top layer (disk ownership). */
  guard?: WriteGuard;
  /** Open only the top layer (unallocated ranges then read as zeroes). */
  noBacking?: boolean;
  /** Longest chain accepted (default {@link MAX_CHAIN_DEPTH}). */
  maxDepth?: number;
  /**
   * Format of the top layer's backing file when its header records none
   * (as `qemu-img -F`); without it such a backing file must have a format
   * header (qcow2, VMDK): vmkit never probes a backing file as raw.
   */
  backingFormat?: FormatName;
}

/**
 * Opens the image `name` and its backing chain. The top layer is writable
 * unless `readOnly`; every backing layer is read-only.
 *
 * @example
 * ```ts
 * const dev = await openImage('vm-delta.qcow2');
 * const first = await dev.read(0, 512);
 * await dev.close();
 * ```
 * @throws {VmkitError} ARG_TYPE / ARG_RANGE: a bad option (named); NOT_FOUND: the image or a backing file is missing; IO: the storage failed; CORRUPT: malformed metadata (with its offset); UNSUPPORTED: a format feature vmkit does not implement; LIMIT: a chain or table past its bound.
 */
export async function openImage(name: string, opts: OpenImageOptions = {}): Promise<ImageDevice> {
  const provider = opts.provider ?? fileProvider;
  const maxDepth = opts.maxDepth ?? MAX_CHAIN_DEPTH;
  const seen: string[] = [];
  const layer = async (n: string, fmt: FormatName | undefined, depth: number, readOnly: boolean, parentName?: string): Promise<ImageDevice> => {
    const key = await canonical(provider, n);
    if (seen.includes(key)) {
      throw new VmkitError('LIMIT', `backing chain loops: ${[...seen, key].join(' -> ')}`, { path: n });
    }
    if (depth > maxDepth) throw new VmkitError('LIMIT', `backing chain deeper than ${maxDepth} layers at ${n}`, { path: n });
    seen.push(key);
    const storage = await provider.open(n, { readOnly });
    try {
      let f = fmt ?? (depth === 1 ? opts.backingFormat : undefined);
      if (f === undefined) {
        f = await probeFormat(storage);
        if (f === 'raw' && depth > 0) {
          throw new VmkitError(
            'UNSUPPORTED',
            `${parentName ?? 'the overlay'} names the backing file ${n} without a backing format, and ${n} has no image header: vmkit does not read it as raw unless told so (--backing-format raw on the command line, backingFormat: 'raw' in openImage; or record it: qemu-img rebase -u -F raw -b <backing> <overlay>)`,
            { path: n },
          );
        }
      }
      const m = await loadFormat(f);
      return await m.open(storage, {
        readOnly,
        openDataFile: (d: string, ro: boolean) => provider.open(provider.resolve(n, d), { readOnly: ro }),
        ...(depth === 0 && opts.guard ? { guard: opts.guard } : {}),
        ...(opts.noBacking
          ? {}
          : { openBacking: (b: string, bf: FormatName | undefined): Promise<BlockDevice> => layer(provider.resolve(n, b), bf, depth + 1, true, n) }),
      });
    } catch (e) {
      await storage.close().catch(() => {});
      throw e;
    }
  };
  return layer(name, opts.format, 0, opts.readOnly === true);
}

// The same file reached by two names must count once in loop detection.
async function canonical(provider: StorageProvider, n: string): Promise<string> {
  if (provider !== fileProvider && provider !== syncFileProvider) return n;
  try {
    const fs = await nodeModule<typeof import('node:fs/promises')>('node:fs/promises');
    return await fs.realpath(n);
  } catch {
    return n;
  }
}

/**
 * Options of {@link createImage}.
 *
 * @example
 * ```ts
 * await createImage('disk.vmdk', { format: 'vmdk', size: 8 << 30 });
 * await createImage('top.qcow2', { backing: 'base.qcow2', backingFormat: 'qcow2', extendedL2: true });
 * ```
 */
export interface CreateImageOptions {
  /** Format of the new image (default qcow2). */
  format?: FormatName;
  /** Virtual size in bytes; defaults to the backing file's size. */
  size?: number;
  /** Backing file, relative to the new image (as `qemu-img create -b` takes it). */
  backing?: string;
  /** Format of the backing file (default: probed). */
  backingFormat?: FormatName;
  /** Cluster/grain size in bytes. */
  clusterSize?: number;
  /** qcow2: extended L2 entries. */
  extendedL2?: boolean;
  /** qcow2: refcount width in bits (default 16). */
  refcountBits?: number;
  /** qcow2: how compressed clusters are compressed (`-o compression_type=`; default zlib). */
  compressionType?: 'zlib' | 'zstd';
  /** Format variant, as `qemu-img create -o subformat=` (vmdk: monolithicSparse, monolithicFlat, twoGbMaxExtentFlat, twoGbMaxExtentSparse; vhd, vhdx: dynamic, fixed). */
  subformat?: string;
  /** qcow2: an external data file for the guest data, relative to the image (`-o data_file=`); created. */
  dataFile?: string;
  /** qcow2: the data file is a raw image of the disk (`-o data_file_raw=on`). */
  dataFileRaw?: boolean;
  /** Where images live (default: Node files). */
  provider?: StorageProvider;
  /**
   * Make the new image durable before returning (default true). False for a caller that
   * flushes it itself once it is written (a backup: one fdatasync at the end, not two).
   */
  durable?: boolean;
}

/**
 * Creates an image (an overlay when `backing` is given; its size then
 * defaults to the backing file's).
 *
 * @example
 * ```ts
 * await createImage('base.qcow2', { size: 1 << 30 });
 * await createImage('top.qcow2', { backing: 'base.qcow2' });
 * ```
 * @throws {VmkitError} ARG_TYPE / ARG_RANGE: a bad option (named); NOT_FOUND: the backing file is missing; UNSUPPORTED: an option the format cannot store (raw with a backing file); LIMIT: a size past the format's bound; IO: the storage failed.
 */
export async function createImage(name: string, opts: CreateImageOptions = {}): Promise<void> {
  const provider = opts.provider ?? fileProvider;
  const format = opts.format ?? 'qcow2';
  let size = opts.size;
  let backingFormat = opts.backingFormat;
  let backingDevice: ImageDevice | undefined;
  if (opts.backing !== undefined) {
    if (format === 'raw') throw new VmkitError('UNSUPPORTED', 'raw images have no backing file', { path: name });
    backingDevice = await openImage(provider.resolve(name, opts.backing), {
      provider,
      readOnly: true,
      noBacking: true,
      ...(backingFormat ? { format: backingFormat } : {}),
    });
    backingFormat ??= backingDevice.format;
    size ??= backingDevice.size;
  }
  try {
    if (size === undefined) throw new VmkitError('ARG_RANGE', 'size is required without a backing file');
    if (!Number.isSafeInteger(size) || size < 0 || size % 512 !== 0) {
      throw new VmkitError('ARG_RANGE', `size must be a non-negative multiple of 512, got ${size}`);
    }
    const m = await loadFormat(format);
    const storage = await provider.create(name);
    try {
      await m.create(storage, {
        size,
        ...(opts.backing !== undefined ? { backing: opts.backing } : {}),
        ...(backingFormat ? { backingFormat } : {}),
        ...(backingDevice ? { backingDevice } : {}),
        ...(opts.clusterSize ? { clusterSize: opts.clusterSize } : {}),
        ...(opts.extendedL2 ? { extendedL2: true } : {}),
        ...(opts.refcountBits ? { refcountBits: opts.refcountBits } : {}),
        ...(opts.compressionType ? { compressionType: opts.compressionType } : {}),
        ...(opts.dataFile !== undefined ? { dataFile: opts.dataFile, dataFileRaw: opts.dataFileRaw === true } : {}),
        ...(opts.subformat !== undefined ? { subformat: opts.subformat } : {}),
        createFile: (d: string) => provider.create(provider.resolve(name, d)),
      });
      if (opts.durable !== false) await storage.flush();
    } finally {
      await storage.close();
    }
  } finally {
    await backingDevice?.close();
  }
}

/**
 * Checks the metadata of one image (not its backing chain), as `qemu-img check`.
 *
 * @example
 * ```ts
 * const r = await checkImage('vm.qcow2');
 * if (r.corruptions) console.error(r.messages);
 * ```
 * @throws {VmkitError} NOT_FOUND / IO: the image cannot be read; UNSUPPORTED: a format feature vmkit does not implement; LIMIT: metadata past its bound. Damage found is reported in the result, not thrown.
 */
export async function checkImage(
  name: string,
  opts: FormatCheckOptions & { provider?: StorageProvider; format?: FormatName } = {},
): Promise<CheckReport> {
  const provider = opts.provider ?? fileProvider;
  const storage = await provider.open(name, { readOnly: !opts.repairLeaks });
  try {
    const f = opts.format ?? (await probeFormat(storage));
    const m = await loadFormat(f);
    if (!m.check) {
      return { format: f, filename: name, corruptions: 0, leaks: 0, checkErrors: 0, messages: [], unsupported: true };
    }
    return await m.check(storage, opts.repairLeaks ? { repairLeaks: true } : {});
  } finally {
    await storage.close();
  }
}

/**
 * Every layer of an opened chain, top first.
 *
 * @example
 * ```ts
 * for (const l of chainOf(dev)) console.log(l.format, l.storage.name);
 * ```
 */
export function chainOf(dev: ImageDevice): ImageDevice[] {
  const out: ImageDevice[] = [];
  let d: BlockDevice | undefined = dev;
  while (d) {
    out.push(d as ImageDevice);
    d = d.backing;
  }
  return out;
}

/**
 * The format driver of the backup and consolidation jobs (`FormatDriver` of
 * bindings/disk/backup/node.ts): what {@link fileFormatDriver} does, over the
 * images of `provider`, which must name Node files (paths are resolved with
 * `node:path`). Disk ownership passes a provider whose storage checks the
 * holder's write guard, so a live disk's jobs write nothing once it is fenced.
 *
 * @example
 * ```ts
 * const ops = new NodeChainOps(formatDriverWith(syncFileProvider));
 * ```
 */
export function formatDriverWith(provider: StorageProvider): typeof fileFormatDriver {
  return {
    open: (path, opts) => openImage(path, { readOnly: opts.readOnly, provider }),
    async create(path, size, format, opts) {
      await createImage(path, { size, format, provider, ...(opts?.durable === false ? { durable: false } : {}) });
    },
    async createOverlay(path, backing, format) {
      // `backing` is a path from the current folder; the image stores it relative to the overlay
      // (as the ChainOps contract asks), so the pair can move together.
      const np = (await import(/* @vite-ignore */ 'node:path' as string)) as typeof import('node:path');
      const rel = np.relative(np.dirname(np.resolve(path)), np.resolve(backing));
      await createImage(path, { backing: rel, format, provider });
    },
    async backingOf(path) {
      const dev = await openImage(path, { readOnly: true, noBacking: true, provider });
      try {
        if (dev.backingFile === undefined) return undefined;
        const np = (await import(/* @vite-ignore */ 'node:path' as string)) as typeof import('node:path');
        return np.normalize(provider.resolve(path, dev.backingFile));
      } finally {
        await dev.close();
      }
    },
    async formatOf(path) {
      const s = await provider.open(path, { readOnly: true });
      try {
        return await probeFormat(s);
      } finally {
        await s.close();
      }
    },
  };
}

/**
 * Image operations on Node files for the backup and consolidation jobs
 * (the `FormatDriver` of bindings/disk/backup/node.ts): open a chain,
 * create an image or an overlay (backing stored relative to it), find a
 * backing file and a format.
 *
 * @example
 * ```ts
 * const ops = new NodeChainOps(fileFormatDriver);
 * ```
 */
export const fileFormatDriver: {
  open(path: string, opts: { readOnly: boolean }): Promise<ImageDevice>;
  create(path: string, size: number, format: FormatName, opts?: { durable?: boolean }): Promise<void>;
  createOverlay(path: string, backing: string, format: FormatName): Promise<void>;
  backingOf(path: string): Promise<string | undefined>;
  formatOf(path: string): Promise<FormatName>;
} = formatDriverWith(fileProvider);

/**
 * {@link fileFormatDriver} with synchronous positional reads and writes
 * (`readSync`/`writeSync`; fsync stays asynchronous). Each request costs a
 * quarter of the CPU of a FileHandle one (no thread-pool round trip), but
 * blocks the event loop while the kernel copies it: meant for offline jobs
 * such as `vmkit disk consolidate` on a disk no VM runs from.
 *
 * @example
 * ```ts
 * const ops = new NodeChainOps(syncFileFormatDriver);
 * ```
 */
export const syncFileFormatDriver: typeof fileFormatDriver = {
  ...fileFormatDriver,
  open: (path, opts) => openImage(path, { readOnly: opts.readOnly, provider: syncFileProvider }),
};
