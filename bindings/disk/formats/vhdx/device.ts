/**
 * A VHDX as a block device: each payload block maps through the BAT
 * (interleaved with sector-bitmap entries) to a 1 MiB-aligned run of the
 * file, or reads as zeroes. A write into an absent block allocates it at the
 * end of the file (1 MiB aligned, zero-filled), writes the data, then sets
 * the BAT entry FULLY_PRESENT; the first write after open moves both
 * headers to a new file-write and data-write GUID, as the specification
 * asks and QEMU does. docs/vhdx.md.
 * @module
 */
import { VmkitError } from '../../../errors.js';
import type { Storage } from '../../backends/storage.js';
import type { BlockDevice, ByteLength, ByteOffset } from '../../device.js';
import type { WriteGuard } from '../../_guard.js';
import { isAllZero } from '../../_sectors.js';
import { _MappedLayer, type _MapPiece } from '../_layer.js';
import type { ImageInfo } from '../types.js';
import { encodeHeader, MiB, PAYLOAD_FULLY_PRESENT, PAYLOAD_PARTIALLY_PRESENT, PAYLOAD_ZERO, SB_BLOCK_PRESENT, VHDX_HEADER1, VHDX_HEADER2, type VhdxHeader, type VhdxMetadata } from './header.js';

function randomGuid(): Uint8Array {
  const u = new Uint8Array(16);
  crypto.getRandomValues(u);
  return u;
}

/**
 * A VHDX layer (open one with `open` from ./index.ts, or `openImage`).
 *
 * @example
 * ```ts
 * const dev = await openImage('disk.vhdx');
 * await dev.write(0, new Uint8Array(4096).fill(1));
 * await dev.close();
 * ```
 */
export class VhdxDevice extends _MappedLayer {
  readonly format = 'vhdx' as const;
  readonly metadata: VhdxMetadata;
  private header: VhdxHeader;
  /** Which header slot (0 = 64 KiB, 1 = 128 KiB) is current. */
  private current: 0 | 1;
  private readonly bat: BigUint64Array;
  private readonly batOffset: number;
  private readonly chunk: number;
  private fileSize: number;

  constructor(
    storage: Storage,
    o: {
      header: VhdxHeader;
      current: 0 | 1;
      metadata: VhdxMetadata;
      bat: BigUint64Array;
      batOffset: number;
      chunkRatio: number;
      fileSize: number;
      readOnly: boolean;
      guard?: WriteGuard;
      /** A differencing disk's parent (opened read-only) and its name as the parent locator gives it. */
      backing?: BlockDevice;
      backingFile?: string;
    },
  ) {
    super({
      storage,
      size: o.metadata.virtualSize,
      readOnly: o.readOnly,
      granule: o.metadata.blockSize,
      guard: o.guard,
      ...(o.backingFile !== undefined ? { backing: o.backing, backingFile: o.backingFile, backingFormat: 'vhdx' } : {}),
    });
    this.header = o.header;
    this.current = o.current;
    this.metadata = o.metadata;
    this.bat = o.bat;
    this.batOffset = o.batOffset;
    this.chunk = o.chunkRatio;
    this.fileSize = o.fileSize;
  }

  /** The virtual disk ID (metadata). */
  get diskId(): Uint8Array {
    return this.metadata.diskId;
  }

  /** The header's data-write GUID: what a differencing child's parent locator names (`parent_linkage`). */
  get dataWriteGuid(): Uint8Array {
    return this.header.dataWriteGuid.slice();
  }

  private batIndex(block: number): number {
    return block + Math.floor(block / this.chunk);
  }

  /** Host offset of payload block `block`, or -1 when it reads as zeroes; checked against the file. */
  private blockHost(block: number): number {
    const bi = this.batIndex(block);
    const e = this.bat[bi];
    if (e === undefined) return -1; // past the BAT (a disk of size 0): nothing there
    const state = Number(e & 7n);
    if (state !== PAYLOAD_FULLY_PRESENT) return -1;
    const host = Number(e >> 20n) * MiB;
    const bs = this.metadata.blockSize;
    const len = Math.min(bs, this.size - block * bs);
    if (host < MiB || host + len > this.fileSize) {
      throw new VmkitError('CORRUPT', `vhdx ${this.storage.name}: block ${block} at ${host} is outside the file or over the headers (BAT entry at ${this.batOffset + bi * 8})`, {
        offset: this.batOffset + bi * 8,
        path: this.storage.name,
      });
    }
    return host;
  }

  protected async piece(pos: number): Promise<_MapPiece> {
    const bs = this.metadata.blockSize;
    const b = Math.floor(pos / bs);
    if (this.metadata.hasParent) return this.diffPiece(pos, b);
    const host = this.blockHost(b);
    if (host >= 0) return { kind: 'data', host: host + (pos - b * bs), len: Math.min((b + 1) * bs, this.size) - pos };
    let k = b + 1;
    while (k * bs < this.size && this.blockHost(k) < 0) k++;
    return { kind: 'zero', host: 0, len: Math.min(k * bs, this.size) - pos };
  }

  /**
   * A differencing disk's run at `pos` (in block `b`): FULLY_PRESENT blocks are this file's,
   * PARTIALLY_PRESENT ones this file's or the parent's sector by sector as the chunk's sector
   * bitmap says (bit i of the bitmap, LSB first, is sector i of the chunk), ZERO blocks zeroes, and
   * the others (NOT_PRESENT, and UNDEFINED/UNMAPPED, which a differencing disk does not promise
   * zeroes for) the parent's.
   */
  private async diffPiece(pos: number, b: number): Promise<_MapPiece> {
    const bs = this.metadata.blockSize;
    const end = Math.min((b + 1) * bs, this.size);
    const bi = this.batIndex(b);
    const e = this.bat[bi] ?? 0n;
    const state = Number(e & 7n);
    if (state === PAYLOAD_FULLY_PRESENT) return { kind: 'data', host: this.blockHost(b) + (pos - b * bs), len: end - pos };
    if (state === PAYLOAD_ZERO) return { kind: 'zero', host: 0, len: end - pos };
    if (state !== PAYLOAD_PARTIALLY_PRESENT) return { kind: 'unallocated', host: 0, len: end - pos };
    const host = this.checkedHost(Number(e >> 20n) * MiB, end - b * bs, bi, `block ${b}`);
    const lss = this.metadata.logicalSectorSize;
    const bm = await this.sectorBitmap(Math.floor(b / this.chunk));
    const first = (b % this.chunk) * (bs / lss);
    const s0 = Math.floor((pos - b * bs) / lss);
    const bit = (s: number): number => (bm[(first + s) >> 3]! >> ((first + s) & 7)) & 1;
    const v = bit(s0);
    let s = s0 + 1;
    while (s * lss < end - b * bs && bit(s) === v) s++;
    const len = Math.min(end, b * bs + s * lss) - pos;
    return v ? { kind: 'data', host: host + (pos - b * bs), len } : { kind: 'unallocated', host: 0, len };
  }

  private readonly bitmaps = new Map<number, Uint8Array>();

  /** The sector bitmap block of chunk `c` (1 MiB), cached. */
  private async sectorBitmap(c: number): Promise<Uint8Array> {
    let bm = this.bitmaps.get(c);
    if (bm) return bm;
    const bi = c * (this.chunk + 1) + this.chunk;
    const e = this.bat[bi] ?? 0n;
    if (Number(e & 7n) !== SB_BLOCK_PRESENT) {
      throw new VmkitError('CORRUPT', `vhdx ${this.storage.name}: a partially present block in chunk ${c}, whose sector bitmap is not present (BAT entry at ${this.batOffset + bi * 8})`, {
        offset: this.batOffset + bi * 8,
        path: this.storage.name,
      });
    }
    const host = this.checkedHost(Number(e >> 20n) * MiB, MiB, bi, `the sector bitmap of chunk ${c}`);
    bm = new Uint8Array(MiB);
    await this.storage.readInto(host, bm);
    if (this.bitmaps.size >= 8) this.bitmaps.delete(this.bitmaps.keys().next().value!);
    this.bitmaps.set(c, bm);
    return bm;
  }

  /** `host` (`len` bytes) when it is inside the file and past the headers; CORRUPT at the BAT entry otherwise. */
  private checkedHost(host: number, len: number, bi: number, what: string): number {
    if (host < MiB || host + len > this.fileSize) {
      throw new VmkitError('CORRUPT', `vhdx ${this.storage.name}: ${what} at ${host} is outside the file or over the headers (BAT entry at ${this.batOffset + bi * 8})`, {
        offset: this.batOffset + bi * 8,
        path: this.storage.name,
      });
    }
    return host;
  }

  /** The first change after open gives the file new write GUIDs (see {@link moveHeaders}). */
  protected override beforeFirstWrite(): Promise<void> {
    return this.moveHeaders();
  }

  /**
   * New file-write and data-write GUIDs in both headers (the stale slot
   * first, then the other), each with a higher sequence number: readers
   * that cached the old GUIDs see the file changed.
   */
  private async moveHeaders(): Promise<void> {
    const h: VhdxHeader = { ...this.header, fileWriteGuid: randomGuid(), dataWriteGuid: randomGuid() };
    for (let i = 0; i < 2; i++) {
      const slot = this.current === 0 ? 1 : 0;
      h.sequenceNumber += 1n;
      await this.storage.write(slot === 0 ? VHDX_HEADER1 : VHDX_HEADER2, encodeHeader(h));
      await this.storage.flush();
      this.current = slot;
    }
    this.header = h;
  }

  /**
   * Made to read as zeroes (vmkit does not give blocks back).
   *
   * @example
   * ```ts
   * await dev.discard(0, 8 << 20);
   * ```
   */
  override async discard(offset: ByteOffset, length: ByteLength): Promise<void> {
    await this.writeZeroes(offset, length);
  }

  protected async writeInGranule(pos: number, data: Uint8Array, zeroes: boolean): Promise<void> {
    const bs = this.metadata.blockSize;
    const b = Math.floor(pos / bs);
    let host = this.blockHost(b);
    if (host < 0) {
      if (zeroes || isAllZero(data)) return;
      // A new block at the end of the file, 1 MiB aligned, zeroes where this write does not reach.
      host = Math.ceil(this.fileSize / MiB) * MiB;
      if (host / MiB >= 2 ** 44) throw new VmkitError('LIMIT', `vhdx ${this.storage.name}: the file is too large for a BAT offset`, { path: this.storage.name });
      const len = Math.min(bs, this.size - b * bs);
      await this.storage.truncate(host + len);
      this.fileSize = host + len;
      await this.storage.write(host + (pos - b * bs), data);
      const bi = this.batIndex(b);
      const e = (BigInt(host / MiB) << 20n) | BigInt(PAYLOAD_FULLY_PRESENT);
      const eb = new Uint8Array(8);
      new DataView(eb.buffer).setBigUint64(0, e, true);
      await this.storage.write(this.batOffset + bi * 8, eb);
      this.bat[bi] = e;
      return;
    }
    await this.storage.write(host + (pos - b * bs), data);
  }

  /**
   * Facts for `vmkit disk info` (as `qemu-img info`).
   *
   * @example
   * ```ts
   * const { virtualSize, clusterSize, specific } = await dev.info();
   * ```
   */
  async info(): Promise<ImageInfo> {
    let blocks = 0;
    const bs = this.metadata.blockSize;
    for (let b = 0; b * bs < this.size; b++) if (this.blockHost(b) >= 0) blocks++;
    return this.layerInfo({
      clusterSize: bs,
      allocatedBytes: blocks * bs,
      specific: {
        logicalSectorSize: this.metadata.logicalSectorSize,
        physicalSectorSize: this.metadata.physicalSectorSize,
        leaveBlocksAllocated: this.metadata.leaveBlocksAllocated,
        sequenceNumber: Number(this.header.sequenceNumber),
      },
    });
  }
}
