/**
 * A VHD as a block device. Fixed disks are the guest bytes followed by the
 * footer. Dynamic and differencing disks map each block through the block
 * allocation table (BAT) to a sector bitmap and the block's data; a new
 * block goes where the trailing footer was, and the footer moves past it,
 * as QEMU's block/vpc.c does. A dynamic disk reads an allocated block's data
 * whatever its bitmap says (QEMU does the same; the bytes of sectors whose
 * bit is clear are zeroes in every image Hyper-V or QEMU writes); a
 * differencing disk reads sectors whose bit is clear from its parent.
 * docs/vhd.md.
 * @module
 */
import { VmkitError } from '../../../errors.js';
import { readAt, type Storage } from '../../backends/storage.js';
import type { BlockDevice, ByteLength, ByteOffset } from '../../device.js';
import type { WriteGuard } from '../../_guard.js';
import { isAllZero } from '../../_sectors.js';
import { _MappedLayer, type _MapPiece } from '../_layer.js';
import type { ImageInfo } from '../types.js';
import { BAT_UNUSED, bitmapBytes, VHD_DIFFERENCING, VHD_FIXED, VHD_FOOTER_SIZE, type VhdDynHeader, type VhdFooter } from './header.js';

/** Bitmaps kept in memory (each at most 64 KiB; 2 MiB blocks have 512-byte ones). */
const BITMAP_CACHE = 1024;

/**
 * A VHD layer (open one with `open` from ./index.ts, or `openImage`).
 *
 * @example
 * ```ts
 * const dev = await openImage('disk.vhd');
 * await dev.write(0, new Uint8Array(512).fill(1));
 * await dev.close();
 * ```
 */
export class VhdDevice extends _MappedLayer {
  readonly format = 'vhd' as const;
  readonly footer: VhdFooter;
  readonly dyn: VhdDynHeader | undefined;
  private readonly footerBytes: Uint8Array;
  private readonly bat: Uint32Array | undefined;
  private readonly bitmaps = new Map<number, Uint8Array>();
  private readonly bmBytes: number;
  private readonly blockSize: number;
  /** Where the next block goes (the trailing footer's offset of a dynamic disk). */
  private freeOffset: number;
  private fileSize: number;
  private readonly metaEnd: number;

  constructor(
    storage: Storage,
    o: {
      footer: VhdFooter;
      footerBytes: Uint8Array;
      dyn?: VhdDynHeader;
      bat?: Uint32Array;
      size: number;
      fileSize: number;
      freeOffset: number;
      metaEnd: number;
      readOnly: boolean;
      backing?: BlockDevice;
      backingFile?: string;
      guard?: WriteGuard;
    },
  ) {
    super({
      storage,
      size: o.size,
      readOnly: o.readOnly,
      backing: o.backing,
      backingFile: o.backingFile,
      backingFormat: o.backingFile !== undefined ? 'vhd' : undefined,
      granule: o.dyn?.blockSize ?? 0,
      guard: o.guard,
    });
    this.footer = o.footer;
    this.footerBytes = o.footerBytes;
    this.dyn = o.dyn;
    this.bat = o.bat;
    this.fileSize = o.fileSize;
    this.freeOffset = o.freeOffset;
    this.metaEnd = o.metaEnd;
    this.blockSize = o.dyn?.blockSize ?? 0;
    this.bmBytes = o.dyn ? bitmapBytes(o.dyn.blockSize) : 0;
  }

  /** The disk's unique ID (a differencing child records its parent's). */
  get uuid(): Uint8Array {
    return this.footer.uuid;
  }
  /** `fixed`, `dynamic` or `differencing`. */
  get subformat(): 'fixed' | 'dynamic' | 'differencing' {
    return this.footer.type === VHD_FIXED ? 'fixed' : this.footer.type === VHD_DIFFERENCING ? 'differencing' : 'dynamic';
  }

  private corrupt(msg: string, offset: number): VmkitError {
    return new VmkitError('CORRUPT', `vhd ${this.storage.name}: ${msg}`, { offset, path: this.storage.name });
  }

  /** Host offset of block `i`'s bitmap, or -1 when unallocated; checked against the file. */
  private blockHost(i: number): number {
    const e = i < this.bat!.length ? this.bat![i]! : BAT_UNUSED;
    if (e === BAT_UNUSED) return -1;
    const host = e * 512;
    if (host < this.metaEnd || host + this.bmBytes + this.blockSize > this.freeOffset) {
      throw this.corrupt(`block ${i} at ${host} is outside the file or overlaps the headers (BAT entry at ${this.dyn!.tableOffset + i * 4})`, this.dyn!.tableOffset + i * 4);
    }
    return host;
  }

  private async bitmap(i: number, host: number): Promise<Uint8Array> {
    let b = this.bitmaps.get(i);
    if (b) return b;
    b = await readAt(this.storage, host, this.bmBytes);
    if (this.bitmaps.size >= BITMAP_CACHE) this.bitmaps.delete(this.bitmaps.keys().next().value!);
    this.bitmaps.set(i, b);
    return b;
  }

  protected async piece(pos: number): Promise<_MapPiece> {
    if (!this.bat) return { kind: 'data', host: pos, len: this.size - pos };
    const bs = this.blockSize;
    const i = Math.floor(pos / bs);
    const host = this.blockHost(i);
    const blockEnd = Math.min((i + 1) * bs, this.size);
    if (host < 0) {
      // Unallocated blocks run on to the next allocated one (maps of big sparse disks stay fast).
      let k = i + 1;
      while (k * bs < this.size && (k >= this.bat.length || this.bat[k] === BAT_UNUSED)) k++;
      // A dynamic disk's unallocated block reads as zeroes (QEMU maps it so); a differencing one's as the parent.
      const kind = this.footer.type === VHD_DIFFERENCING ? 'unallocated' : 'zero';
      return { kind, host: 0, len: Math.min(k * bs, this.size) - pos };
    }
    const inBlock = pos - i * bs;
    if (this.footer.type !== VHD_DIFFERENCING) return { kind: 'data', host: host + this.bmBytes + inBlock, len: blockEnd - pos };
    // Differencing: the bitmap says sector by sector whether this file or the parent holds it (MSB first).
    const bm = await this.bitmap(i, host);
    const s0 = inBlock / 512;
    const bit = (s: number): number => (bm[s >> 3]! >> (7 - (s & 7))) & 1;
    const v = bit(s0);
    let s = s0 + 1;
    const sEnd = (blockEnd - i * bs) / 512;
    while (s < sEnd && bit(s) === v) s++;
    return { kind: v ? 'data' : 'unallocated', host: v ? host + this.bmBytes + inBlock : 0, len: (s - s0) * 512 };
  }

  /** A fixed disk is the guest bytes themselves: written in place, zeroes 1 MiB at a time. */
  protected override async writeRange(offset: number, length: number, data: Uint8Array | undefined): Promise<void> {
    if (this.bat) return super.writeRange(offset, length, data);
    if (data) return this.storage.write(offset, data);
    const chunk = Math.min(length, 1 << 20);
    const z = new Uint8Array(chunk);
    for (let p = 0; p < length; p += chunk) await this.storage.write(offset + p, z.subarray(0, Math.min(chunk, length - p)));
  }

  /**
   * VHD cannot give blocks back while open (QEMU does not discard on VHD):
   * the range is made to read as zeroes.
   *
   * @example
   * ```ts
   * await dev.discard(0, 2 << 20);
   * ```
   */
  override async discard(offset: ByteOffset, length: ByteLength): Promise<void> {
    await this.writeZeroes(offset, length);
  }

  /** Sets the bitmap bits of sectors [s0, s1) of block `i` (whose bitmap is at `host`), writing changed bytes. */
  private async markSectors(i: number, host: number, s0: number, s1: number): Promise<void> {
    const bm = await this.bitmap(i, host);
    let lo = -1;
    let hi = -1;
    for (let s = s0; s < s1; s++) {
      const m = 0x80 >> (s & 7);
      if (!(bm[s >> 3]! & m)) {
        bm[s >> 3]! |= m;
        if (lo < 0) lo = s >> 3;
        hi = s >> 3;
      }
    }
    if (lo >= 0) await this.storage.write(host + lo, bm.subarray(lo, hi + 1));
  }

  protected async writeInGranule(pos: number, data: Uint8Array, zeroes: boolean): Promise<void> {
    const bs = this.blockSize;
    const i = Math.floor(pos / bs);
    const inBlock = pos - i * bs;
    let host = this.blockHost(i);
    if (host < 0) {
      // A dynamic disk's unallocated block reads as zeroes already; a differencing one's reads the parent.
      if ((zeroes || isAllZero(data)) && this.footer.type !== VHD_DIFFERENCING) return;
      host = await this.allocate(i);
    }
    await this.storage.write(host + this.bmBytes + inBlock, data);
    await this.markSectors(i, host, inBlock / 512, (inBlock + data.length) / 512);
  }

  /**
   * Allocates block `i` where the trailing footer is: bitmap (all ones on a
   * dynamic disk, as QEMU writes it; all zeroes on a differencing one, whose
   * unwritten sectors stay the parent's), then the footer past the block,
   * then the BAT entry, so a crash leaves at worst an unreferenced block.
   */
  private async allocate(i: number): Promise<number> {
    const dyn = this.dyn!;
    if (i >= this.bat!.length) throw this.corrupt(`block ${i} has no BAT entry (${this.bat!.length} entries)`, dyn.tableOffset);
    const host = this.freeOffset;
    if ((host + this.bmBytes) / 512 > 0xffff_ffff) throw new VmkitError('LIMIT', `vhd ${this.storage.name}: the file would pass 2 TiB (32-bit sector offsets)`, { path: this.storage.name });
    const bm = new Uint8Array(this.bmBytes).fill(this.footer.type === VHD_DIFFERENCING ? 0 : 0xff);
    await this.storage.write(host, bm);
    const end = host + this.bmBytes + this.blockSize;
    // Bytes past the old footer (a file longer than its metadata says) must not show through the new block.
    if (this.fileSize > host + VHD_FOOTER_SIZE) await this.storage.write(host + this.bmBytes, new Uint8Array(Math.min(this.blockSize, this.fileSize - host - this.bmBytes)));
    await this.storage.write(end, this.footerBytes);
    this.fileSize = Math.max(this.fileSize, end + VHD_FOOTER_SIZE);
    this.freeOffset = end;
    const e = new Uint8Array(4);
    new DataView(e.buffer).setUint32(0, host / 512);
    await this.storage.write(dyn.tableOffset + i * 4, e);
    this.bat![i] = host / 512;
    this.bitmaps.set(i, bm);
    return host;
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
    if (this.bat) for (const e of this.bat) if (e !== BAT_UNUSED) blocks++;
    return this.layerInfo({
      allocatedBytes: this.bat ? blocks * this.blockSize : this.size,
      specific: {
        subformat: this.subformat,
        creatorApp: this.footer.creatorApp.replace(/\0/g, ''),
        geometry: `${this.footer.cylinders}/${this.footer.heads}/${this.footer.sectorsPerCylinder}`,
        currentSize: this.footer.currentSize,
        uuid: uuidString(this.footer.uuid),
      },
      ...(this.bat ? { clusterSize: this.blockSize } : {}),
    });
  }
}

/** A UUID's 16 bytes as text (8-4-4-4-12 hex). @internal */
export function uuidString(u: Uint8Array): string {
  const h = Array.from(u, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
