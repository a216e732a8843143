/**
 * The block-device interface of vmkit/disk: byte offsets with a declared
 * alignment (512-byte sectors), read / write / flush / size, and an
 * allocation-status query per range (data, zero, or unallocated — defer to the
 * backing layer) as QEMU's `bdrv_block_status` reports it. Formats (qcow2,
 * VMDK, raw) implement it on top of a {@link Storage} backend.
 * @module
 */
import { VmkitError } from '../errors.js';
import type { WriteGuard } from './_guard.js';

/**
 * A byte offset into a virtual disk or an image file (a safe integer < 2^53).
 *
 * @example
 * ```ts
 * const at: ByteOffset = sectorToByte(2048); // 1 MiB
 * ```
 */
export type ByteOffset = number;
/**
 * A length in bytes.
 *
 * @example
 * ```ts
 * const len: ByteLength = 64 * SECTOR_SIZE;
 * const data = await dev.read(0, len);
 * ```
 */
export type ByteLength = number;
/**
 * A 512-byte sector index (never mixed with byte offsets: convert with {@link sectorToByte}).
 *
 * @example
 * ```ts
 * const s: Sector = byteToSector(1 << 20); // 2048
 * ```
 */
export type Sector = number;

/**
 * Bytes per sector: every offset and length a device takes is a multiple of this.
 *
 * @example
 * ```ts
 * await dev.read(0, SECTOR_SIZE); // the MBR
 * ```
 */
export const SECTOR_SIZE = 512;

/**
 * What a block-status query reports for a range, as QEMU's block status does.
 *
 * @example
 * ```ts
 * const kind: BlockKind = (await dev.blockStatus(0, dev.size)).kind;
 * if (kind === 'unallocated') console.log('falls through to nothing: reads as zeroes');
 * ```
 */
export type BlockKind = 'data' | 'zero' | 'unallocated';

/**
 * One run of equal allocation status.
 *
 * @example
 * ```ts
 * const e: BlockExtent = await dev.blockStatus(0, dev.size);
 * console.log(e.offset, e.length, e.kind, e.depth, e.hostOffset);
 * ```
 */
export interface BlockExtent {
  /** Byte offset of the run in the virtual disk. */
  offset: ByteOffset;
  /** Bytes in the run (> 0). */
  length: ByteLength;
  /**
   * data / zero (answered by the layer at `depth`) or unallocated (no layer has
   * it: reads as zero; `depth` is then the bottom layer's, as `qemu-img map` says).
   */
  kind: BlockKind;
  /** 0 = the top layer of the chain, 1 = its backing file, … */
  depth: number;
  /** Where the bytes are in that layer's file, when they are stored uncompressed there. */
  hostOffset?: ByteOffset;
  /** The run is one compressed cluster. */
  compressed?: boolean;
}

/**
 * A virtual disk. Offsets and lengths are byte counts, multiples of
 * `alignment`; reads past the end throw ARG_RANGE. Writable devices call their
 * {@link WriteGuard} before touching storage; a read-only device (every backing
 * layer of a chain) throws INVALID_STATE on write.
 *
 * @example
 * ```ts
 * import { init, openImage, type BlockDevice } from 'vmkit/disk';
 * await init();
 * const dev: BlockDevice = await openImage('vm.qcow2');
 * await dev.write(0, new Uint8Array(512).fill(1));
 * await dev.flush();
 * await dev.close();
 * ```
 */
export interface BlockDevice {
  /** Virtual size in bytes. */
  readonly size: ByteLength;
  /** I/O alignment in bytes (512). */
  readonly alignment: number;
  /** True when writes are refused. */
  readonly readOnly: boolean;
  /** Image format of the top layer (`qcow2`, `vmdk`, `raw`). */
  readonly format: string;
  /** The backing device (read-only), when the format has one. */
  readonly backing: BlockDevice | undefined;
  /** Reads `length` bytes at `offset`. */
  read(offset: ByteOffset, length: ByteLength): Promise<Uint8Array>;
  /** Reads `dst.length` bytes at `offset` into `dst`. */
  readInto(offset: ByteOffset, dst: Uint8Array): Promise<void>;
  /** Writes `data` at `offset` (zero clusters are made where whole clusters are zero). */
  write(offset: ByteOffset, data: Uint8Array): Promise<void>;
  /** Makes `[offset, offset + length)` read as zeroes (zero clusters where the format has them). */
  writeZeroes(offset: ByteOffset, length: ByteLength): Promise<void>;
  /** Releases the storage of whole clusters in the range; the range then reads as zeroes. */
  discard(offset: ByteOffset, length: ByteLength): Promise<void>;
  /** Makes every completed write durable. */
  flush(): Promise<void>;
  /** Status of the run starting at `offset` (at most `length` bytes, never 0). */
  blockStatus(offset: ByteOffset, length: ByteLength): Promise<BlockExtent>;
  /** Flushes (when writable) and releases the storage of this layer and its backing chain. */
  close(): Promise<void>;
}

/**
 * Options every writable device takes.
 *
 * @example
 * ```ts
 * const opts: DeviceOptions = { readOnly: false, guard }; // guard: a WriteGuard from disk ownership
 * const dev = await (await loadFormat('qcow2')).open(storage, opts);
 * ```
 */
export interface DeviceOptions {
  /** Open read-only (every backing layer always is). */
  readOnly?: boolean;
  /** Consulted before every write, flush and discard (disk ownership fencing). */
  guard?: WriteGuard;
}

/**
 * Converts a sector index to a byte offset (checked: the result stays a safe integer).
 *
 * @example
 * ```ts
 * sectorToByte(8); // 4096
 * ```
 */
export function sectorToByte(s: Sector): ByteOffset {
  const b = s * SECTOR_SIZE;
  if (!Number.isSafeInteger(b) || s < 0) throw new VmkitError('ARG_RANGE', `sector ${s} is out of range`);
  return b;
}

/**
 * Converts an aligned byte offset to a sector index.
 *
 * @example
 * ```ts
 * byteToSector(4096); // 8
 * ```
 */
export function byteToSector(b: ByteOffset): Sector {
  if (!Number.isSafeInteger(b) || b < 0 || b % SECTOR_SIZE !== 0) {
    throw new VmkitError('ARG_RANGE', `byte offset ${b} is not a multiple of ${SECTOR_SIZE}`);
  }
  return b / SECTOR_SIZE;
}

/**
 * Turns a 64-bit value read from an image into a number, refusing values that
 * do not fit in 2^53 (no disk vmkit can address is that big).
 * @internal
 */
export function u64ToOffset(v: bigint, what: string, at: number, path?: string): ByteOffset {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new VmkitError('LIMIT', `${what} ${v} at offset ${at} is beyond 2^53`, { offset: at, ...(path ? { path } : {}) });
  }
  return Number(v);
}

/**
 * Checks a request against a device: aligned, non-negative and inside it.
 * @internal
 */
export function checkRange(dev: { size: number; alignment: number }, offset: number, length: number, op: string): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw new VmkitError('ARG_RANGE', `${op}: offset ${offset} / length ${length} must be non-negative integers`);
  }
  if (offset % dev.alignment !== 0 || length % dev.alignment !== 0) {
    throw new VmkitError('ARG_RANGE', `${op}: offset ${offset} and length ${length} must be multiples of ${dev.alignment}`, { offset });
  }
  if (offset + length > dev.size) {
    throw new VmkitError('ARG_RANGE', `${op}: [${offset}, ${offset + length}) is past the end of the disk (${dev.size})`, { offset });
  }
}

/**
 * Walks `[offset, offset + length)` with {@link BlockDevice.blockStatus} and
 * returns the extents, merging neighbours that agree (as `qemu-img map` does).
 *
 * @example
 * ```ts
 * for (const e of await mapExtents(dev)) console.log(e.offset, e.length, e.kind, e.depth);
 * ```
 */
export async function mapExtents(dev: BlockDevice, offset: ByteOffset = 0, length: ByteLength = dev.size - offset): Promise<BlockExtent[]> {
  const out: BlockExtent[] = [];
  let pos = offset;
  const end = offset + length;
  while (pos < end) {
    const e = await dev.blockStatus(pos, end - pos);
    if (!(e.length > 0)) throw new VmkitError('CORRUPT', `block status at ${pos} returned an empty run`, { offset: pos });
    const len = Math.min(e.length, end - pos);
    const prev = out[out.length - 1];
    if (
      prev &&
      prev.kind === e.kind &&
      prev.depth === e.depth &&
      prev.compressed === e.compressed &&
      (prev.hostOffset === undefined ? e.hostOffset === undefined : e.hostOffset === prev.hostOffset + prev.length)
    ) {
      prev.length += len;
    } else {
      const x: BlockExtent = { offset: pos, length: len, kind: e.kind, depth: e.depth };
      if (e.hostOffset !== undefined) x.hostOffset = e.hostOffset;
      if (e.compressed) x.compressed = true;
      out.push(x);
    }
    pos += len;
  }
  return out;
}

/**
 * One extent as `qemu-img map --output=json` prints it.
 *
 * @example
 * ```ts
 * const entries: QemuMapEntry[] = toQemuMap(await mapExtents(dev));
 * // compare with: qemu-img map --output=json vm.qcow2
 * ```
 */
export interface QemuMapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

/**
 * Converts extents to `qemu-img map --output=json` entries (same fields,
 * same merging).
 *
 * @example
 * ```ts
 * console.log(JSON.stringify(toQemuMap(await mapExtents(dev))));
 * ```
 */
export function toQemuMap(extents: readonly BlockExtent[]): QemuMapEntry[] {
  const out: QemuMapEntry[] = [];
  for (const e of extents) {
    const m: QemuMapEntry = {
      start: e.offset,
      length: e.length,
      depth: e.depth,
      present: e.kind !== 'unallocated',
      zero: e.kind !== 'data',
      data: e.kind === 'data',
    };
    if (e.hostOffset !== undefined && !e.compressed) m.offset = e.hostOffset;
    const p = out[out.length - 1];
    if (
      p &&
      p.start + p.length === m.start &&
      p.depth === m.depth &&
      p.present === m.present &&
      p.zero === m.zero &&
      p.data === m.data &&
      (p.offset === undefined ? m.offset === undefined : m.offset === p.offset + p.length)
    ) {
      p.length += m.length;
    } else out.push(m);
  }
  return out;
}
