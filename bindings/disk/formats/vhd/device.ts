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
import { checkRange, type BlockDevice, type BlockExtent, type ByteLength, type ByteOffset } from '../../device.js';
import type { WriteGuard } from '../../_guard.js';
import { isAllZero } from '../../_sectors.js';
import { _backingStatus, _checkWritable, _closeLayer, _eachGranule, _Queue, _readBacking, _readFresh, _readRuns, _statusRun } from '../_device.js';
import type { ImageDevice, ImageInfo } from '../types.js';
import { BAT_UNUSED, bitmapBytes, VHD_DIFFERENCING, VHD_FIXED, VHD_FOOTER_SIZE, type VhdDynHeader, type VhdFooter } from './header.js';

/** What a guest offset maps to. @internal */
interface Piece {
  kind: 'data' | 'zero' | 'unallocated';
  host: number;
  len: number;
}

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
export class VhdDevice implements ImageDevice {
  readonly format = 'vhd' as const;
  readonly alignment = 512;
  readonly size: number;
  readonly readOnly: boolean;
  readonly storage: Storage;
  readonly backing: BlockDevice | undefined;
  readonly backingFile: string | undefined;
  readonly backingFormat: string | undefined;
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
  private readonly guard: WriteGuard | undefined;
  private readonly queue = new _Queue();
  private closed = false;

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
    this.storage = storage;
    this.footer = o.footer;
    this.footerBytes = o.footerBytes;
    this.dyn = o.dyn;
    this.bat = o.bat;
    this.size = o.size;
    this.fileSize = o.fileSize;
    this.freeOffset = o.freeOffset;
    this.metaEnd = o.metaEnd;
    this.readOnly = o.readOnly;
    this.backing = o.backing;
    this.backingFile = o.backingFile;
    this.backingFormat = o.backingFile !== undefined ? 'vhd' : undefined;
    this.guard = o.guard;
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

  private async piece(pos: number): Promise<Piece> {
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

  /**
   * Reads `length` bytes at `offset` (multiples of 512).
   *
   * @example
   * ```ts
   * const mbr = await (await openImage('disk.vhd')).read(0, 512);
   * ```
   */
  read(offset: ByteOffset, length: ByteLength): Promise<Uint8Array> {
    return _readFresh(this, offset, length);
  }

  /**
   * Reads `dst.length` bytes at `offset` into `dst`.
   *
   * @example
   * ```ts
   * await dev.readInto(0, new Uint8Array(1 << 20));
   * ```
   */
  async readInto(offset: ByteOffset, dst: Uint8Array): Promise<void> {
    checkRange(this, offset, dst.length, 'read');
    await _readRuns(this.storage, offset, dst, (pos) => this.piece(pos), (p) => p.kind === 'data', (p, pos, d) => {
      if (p.kind !== 'zero') return _readBacking(this.backing, pos, d);
      d.fill(0);
      return undefined;
    }, {
      backing: this.backing,
      isBacking: (p) => p.kind === 'unallocated',
    });
  }

  /**
   * Status of the run starting at `offset` (at most `length` bytes).
   *
   * @example
   * ```ts
   * const e = await dev.blockStatus(0, dev.size); // data, or unallocated (zeroes / the parent)
   * ```
   */
  async blockStatus(offset: ByteOffset, length: ByteLength): Promise<BlockExtent> {
    const { first, len } = await _statusRun(this, offset, length, (o) => this.piece(o), (a, p, n) => p.kind === a.kind && (p.kind !== 'data' || p.host === a.host + n));
    if (first.kind === 'unallocated') return _backingStatus(this.backing, offset, len);
    if (first.kind === 'zero') return { offset, length: len, kind: 'zero', depth: 0 };
    return { offset, length: len, kind: 'data', depth: 0, hostOffset: first.host };
  }

  // ---- writes ----

  private async writable(op: 'write' | 'flush' | 'discard'): Promise<void> {
    _checkWritable(this.storage.name, this.closed, this.readOnly, op);
    await this.guard?.check(op);
  }

  /**
   * Writes `data` at `offset`, allocating blocks as needed.
   *
   * @example
   * ```ts
   * await dev.write(1 << 20, new Uint8Array(4096).fill(0xaa));
   * ```
   */
  async write(offset: ByteOffset, data: Uint8Array): Promise<void> {
    checkRange(this, offset, data.length, 'write');
    return this.queue.run(async () => {
      await this.writable('write');
      if (!this.bat) return this.storage.write(offset, data);
      await _eachGranule(offset, data.length, this.blockSize, (pos, len, at) => this.writeInBlock(pos, data.subarray(at, at + len), false));
    });
  }

  /**
   * Makes `[offset, offset + length)` read as zeroes (an unallocated block of
   * a dynamic disk already does and stays unallocated).
   *
   * @example
   * ```ts
   * await dev.writeZeroes(0, 1 << 20);
   * ```
   */
  async writeZeroes(offset: ByteOffset, length: ByteLength): Promise<void> {
    checkRange(this, offset, length, 'writeZeroes');
    return this.queue.run(async () => {
      await this.writable('write');
      const chunk = Math.min(length, 1 << 20);
      if (!this.bat) {
        const z = new Uint8Array(chunk);
        for (let p = 0; p < length; p += chunk) await this.storage.write(offset + p, z.subarray(0, Math.min(chunk, length - p)));
        return;
      }
      await _eachGranule(offset, length, this.blockSize, (pos, len) => this.writeInBlock(pos, new Uint8Array(len), true));
    });
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
  async discard(offset: ByteOffset, length: ByteLength): Promise<void> {
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

  private async writeInBlock(pos: number, data: Uint8Array, zeroes: boolean): Promise<void> {
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
   * Makes completed writes durable.
   *
   * @example
   * ```ts
   * await dev.flush();
   * ```
   */
  async flush(): Promise<void> {
    if (this.readOnly || this.closed) return;
    await this.queue.run(async () => {
      await this.guard?.check('flush');
      await this.storage.flush();
    });
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
    const info: ImageInfo = {
      format: 'vhd',
      virtualSize: this.size,
      fileSize: await this.storage.size(),
      allocatedBytes: this.bat ? blocks * this.blockSize : this.size,
      specific: {
        subformat: this.subformat,
        creatorApp: this.footer.creatorApp.replace(/\0/g, ''),
        geometry: `${this.footer.cylinders}/${this.footer.heads}/${this.footer.sectorsPerCylinder}`,
        currentSize: this.footer.currentSize,
        uuid: uuidString(this.footer.uuid),
      },
    };
    if (this.bat) info.clusterSize = this.blockSize;
    if (this.backingFile !== undefined) {
      info.backingFile = this.backingFile;
      info.backingFormat = 'vhd';
    }
    return info;
  }

  /**
   * Flushes (when writable) and closes this layer and its parent.
   *
   * @example
   * ```ts
   * await dev.close();
   * ```
   */
  async close(): Promise<void> {
    if (this.closed) return;
    await _closeLayer(() => this.flush(), () => (this.closed = true), this.storage, this.backing);
  }
}

/** A UUID's 16 bytes as text (8-4-4-4-12 hex). @internal */
export function uuidString(u: Uint8Array): string {
  const h = Array.from(u, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
