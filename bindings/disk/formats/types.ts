/**
 * The contract every image format folder implements, so the registry in
 * `bindings/disk/image.ts` can probe, open and create images without knowing
 * the format. Each of `formats/{qcow2,vmdk,raw}/index.ts` exports a
 * `format: ImageFormatModule` plus the three functions as named exports:
 *
 * ```ts
 * export function probe(head: Uint8Array): boolean;
 * export function open(storage: Storage, opts?: FormatOpenOptions): Promise<ImageDevice>;
 * export function create(storage: Storage, opts: FormatCreateOptions): Promise<void>;
 * export function check(storage: Storage, opts?: FormatCheckOptions): Promise<CheckReport>; // optional
 * ```
 *
 * A format never resolves backing-file names itself: it passes the name
 * stored in the image (and the stored backing format, if any) to
 * `opts.openBacking`, which the registry implements (relative to the
 * overlay, with loop and depth checks). Backing devices are always opened
 * read-only; the top device closes its backing chain in `close()`.
 * @module
 */
import type { Storage } from '../backends/storage.js';
import type { BlockDevice, DeviceOptions } from '../device.js';

/**
 * Names of the formats vmkit knows.
 *
 * @example
 * ```ts
 * const fmt: FormatName = await probeFormat(storage); // 'qcow2' | 'vmdk' | 'raw'
 * ```
 */
export type FormatName = 'qcow2' | 'vmdk' | 'raw' | 'vhd' | 'vhdx';

/**
 * Options of a format's `open`.
 *
 * @example
 * ```ts
 * const qcow2 = await loadFormat('qcow2');
 * const dev = await qcow2.open(storage, { readOnly: true }); // no openBacking: backing ranges read as zeroes
 * ```
 */
export interface FormatOpenOptions extends DeviceOptions {
  /**
   * Opens the backing layer named `name` as stored in this image (relative to
   * it), of `format` when the image records one (qcow2's backing-format
   * extension; VMDK parents are always `vmdk`). Resolves to a read-only
   * device. Without it, an image with a backing file opens with no backing
   * (unallocated ranges read as zeroes) — `info`/`check` use that.
   */
  openBacking?: (name: string, format: FormatName | undefined) => Promise<BlockDevice>;
  /**
   * Opens a file that is part of this layer (qcow2's external data file) by
   * the name stored in the image, relative to it, writable unless `readOnly`.
   * Without it such an image opens, but reading or writing its data refuses.
   */
  openDataFile?: (name: string, readOnly: boolean) => Promise<Storage>;
}

/**
 * Options of a format's `create`.
 *
 * @example
 * ```ts
 * const qcow2 = await loadFormat('qcow2');
 * await qcow2.create(storage, { size: 1 << 30, clusterSize: 65536, refcountBits: 16 });
 * ```
 */
export interface FormatCreateOptions {
  /** Virtual size in bytes (a multiple of 512). */
  size: number;
  /** Backing file name to record (relative to the new image, as QEMU stores it). */
  backing?: string;
  /** Format of the backing file, recorded where the format can (qcow2 extension). */
  backingFormat?: FormatName;
  /** The opened backing device, for formats that copy facts from it (VMDK parentCID). */
  backingDevice?: ImageDevice;
  /** Cluster (qcow2) or grain (VMDK) size in bytes; the format's default when absent. */
  clusterSize?: number;
  /** qcow2: use extended L2 entries (subclusters). */
  extendedL2?: boolean;
  /** qcow2: refcount width in bits (1, 2, 4, … 64; default 16), as `qemu-img -o refcount_bits`. */
  refcountBits?: number;
  /** qcow2: how compressed clusters are compressed (`-o compression_type=`; default zlib). */
  compressionType?: 'zlib' | 'zstd';
  /** qcow2: keep guest data in this external file (relative to the image), as `qemu-img -o data_file=`. */
  dataFile?: string;
  /** qcow2: the data file is a raw image of the disk (`-o data_file_raw=on`; metadata preallocated). */
  dataFileRaw?: boolean;
  /**
   * Creates (or truncates) a store beside the image, named as the image
   * stores it (qcow2's `dataFile`, a VMDK's extent files); createImage passes it.
   */
  createFile?: (name: string) => Promise<Storage>;
  /** Format variant (vmdk: `monolithicSparse`, `monolithicFlat`, `twoGbMaxExtentFlat`, `twoGbMaxExtentSparse`; vhd, vhdx: `dynamic`, `fixed`). */
  subformat?: string;
}

/**
 * Options of a format's `check`.
 *
 * @example
 * ```ts
 * const report = await (await loadFormat('qcow2')).check?.(storage, { repairLeaks: true });
 * ```
 */
export interface FormatCheckOptions {
  /** Repair leaks (qcow2: `qemu-img check -r leaks`). Not every format repairs. */
  repairLeaks?: boolean;
}

/**
 * What `info` reports (the fields of `qemu-img info` vmkit knows).
 *
 * @example
 * ```ts
 * const { format, virtualSize, allocatedBytes, backingFile }: ImageInfo = await dev.info();
 * ```
 */
export interface ImageInfo {
  format: FormatName;
  /** Virtual size in bytes. */
  virtualSize: number;
  /** Size of the image file in bytes. */
  fileSize: number;
  /** Cluster or grain size in bytes (undefined for raw). */
  clusterSize?: number;
  /** Backing file name as stored in the image. */
  backingFile?: string;
  /** Backing format as stored, when the image records one. */
  backingFormat?: string;
  /** Bytes of guest data this layer holds (allocated data clusters/grains × size). */
  allocatedBytes: number;
  /** Format-specific facts (qcow2: version, refcount bits, extended L2, …). */
  specific?: Record<string, string | number | boolean>;
}

/**
 * A `check` result, shaped like `qemu-img check --output=json`.
 *
 * @example
 * ```ts
 * const r: CheckReport = await checkImage('vm.qcow2');
 * if (r.corruptions > 0) for (const m of r.messages) console.error(m.severity, m.message, m.offset);
 * ```
 */
export interface CheckReport {
  format: FormatName;
  filename: string;
  /** Metadata that is wrong (refcount too low, entries past EOF, overlaps). */
  corruptions: number;
  /** Clusters with a refcount but no user (space lost, harmless). */
  leaks: number;
  /** Problems that stopped the check from finishing (I/O errors). */
  checkErrors: number;
  /** Leaks fixed when `repairLeaks` was set. */
  leaksFixed?: number;
  /** First byte past the last used cluster. */
  imageEndOffset?: number;
  totalClusters?: number;
  allocatedClusters?: number;
  fragmentedClusters?: number;
  compressedClusters?: number;
  /** The format has no metadata to check (raw): nothing was checked (`qemu-img check` exits 63). */
  unsupported?: true;
  /** One line per problem, with the offset it concerns. */
  messages: { severity: 'corruption' | 'leak' | 'error'; message: string; offset?: number }[];
}

/**
 * A format's device: a {@link BlockDevice} plus what the registry and the CLI need.
 *
 * @example
 * ```ts
 * const dev: ImageDevice = await openImage('top.qcow2');
 * console.log(dev.format, dev.storage.name, dev.backingFile);
 * ```
 */
export interface ImageDevice extends BlockDevice {
  readonly format: FormatName;
  /** The store of this layer. */
  readonly storage: Storage;
  /** Backing file name as stored in this image, if any. */
  readonly backingFile: string | undefined;
  /** Backing format as stored, if any. */
  readonly backingFormat: string | undefined;
  /** Facts for `vmkit disk info`. */
  info(): Promise<ImageInfo>;
}

/**
 * One format folder, as the registry sees it.
 *
 * @example
 * ```ts
 * const vmdk: ImageFormatModule = await loadFormat('vmdk');
 * if (vmdk.probe(head)) dev = await vmdk.open(storage);
 * ```
 */
export interface ImageFormatModule {
  readonly name: FormatName;
  /** True when `head` (the first 4 KiB of a file, or fewer if the file is shorter) is this format. */
  probe(head: Uint8Array): boolean;
  /**
   * True when `tail` (the last 512 bytes of a file of `fileSize` bytes) is
   * this format: for formats whose signature is at the end (a fixed VHD).
   * Tried after every `probe`, before raw.
   */
  probeTail?(tail: Uint8Array, fileSize: number): boolean;
  open(storage: Storage, opts?: FormatOpenOptions): Promise<ImageDevice>;
  create(storage: Storage, opts: FormatCreateOptions): Promise<void>;
  check?(storage: Storage, opts?: FormatCheckOptions): Promise<CheckReport>;
}

/** Bytes the registry reads for `probe`. */
export const PROBE_BYTES = 4096;
