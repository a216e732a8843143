/**
 * A monolithicSparse VMDK as a block device: reads through the grain
 * directory and grain tables (unallocated grains defer to the parent disk),
 * writes allocate whole grains at the end of the file and update both the
 * grain table and its redundant copy, zeroed grains (GTE 1) where the image
 * allows them, and the descriptor's CID changes on the first write after
 * open, as VMware and QEMU do. docs/vmdk.md.
 * @module
 */
import { VmkitError } from '../../../errors.js';
import type { Storage } from '../../backends/storage.js';
import type { BlockDevice } from '../../device.js';
import type { WriteGuard } from '../../_guard.js';
import { isAllZero } from '../../_sectors.js';
import { _readBacking } from '../_device.js';
import { _MappedLayer, type _MapPiece } from '../_layer.js';
import type { ImageInfo } from '../types.js';
import { _GrainTables } from './_grain-tables.js';
import { randomCid, withCid, type VmdkDescriptor } from './descriptor.js';
import { FLAG_RGD, FLAG_ZERO_GRAIN, geometry, type VmdkGeometry, type VmdkHeader } from './header.js';

function u32le(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v, true);
  return b;
}

/**
 * A monolithicSparse VMDK layer (open one with `open` from ./index.ts, or
 * `openImage` for the whole chain).
 *
 * @example
 * ```ts
 * const dev = await openImage('delta.vmdk');
 * await dev.write(0, new Uint8Array(4096).fill(1));
 * await dev.close();
 * ```
 */
export class VmdkDevice extends _MappedLayer {
  readonly format = 'vmdk' as const;
  readonly header: VmdkHeader;
  readonly descriptor: VmdkDescriptor | undefined;
  private cidNow: number | undefined;
  private readonly g: VmdkGeometry;
  private readonly gd: Uint32Array;
  private readonly rgd: Uint32Array | undefined;
  private readonly tables: _GrainTables;

  constructor(
    storage: Storage,
    h: VmdkHeader,
    descriptor: VmdkDescriptor | undefined,
    gd: Uint32Array,
    rgd: Uint32Array | undefined,
    fileSize: number,
    readOnly: boolean,
    backing: BlockDevice | undefined,
    guard: WriteGuard | undefined,
  ) {
    const hint = descriptor?.parentFileNameHint;
    super({ storage, size: h.capacity * 512, readOnly, backing, backingFile: hint, backingFormat: hint !== undefined ? 'vmdk' : undefined, granule: geometry(h).grainBytes, guard });
    this.header = h;
    this.descriptor = descriptor;
    this.cidNow = descriptor?.cid;
    this.g = geometry(h);
    this.gd = gd;
    this.rgd = rgd;
    // A grain is stored whole: all of it must lie in the file.
    this.tables = new _GrainTables(storage, h, gd, fileSize, this.size, this.g.grainBytes);
  }

  /** The content ID now (changes on the first write after open). */
  get cid(): number | undefined {
    return this.cidNow;
  }
  /** The parent's CID this delta was made against (ffffffff for a base). */
  get parentCid(): number | undefined {
    return this.descriptor?.parentCid;
  }
  /** Grain size in bytes. */
  get grainSize(): number {
    return this.g.grainBytes;
  }

  /** What the grain at `pos` holds: to its end, or (unallocated, zeroed) to the next entry that differs or the table's end. */
  protected async piece(pos: number): Promise<_MapPiece> {
    const r = await this.tables.run(pos);
    if (r.kind !== 'grain') return { kind: r.kind, host: 0, len: r.len };
    return { kind: 'data', host: r.host + (pos % this.g.grainBytes), len: r.len };
  }

  /** The first change after open gives the descriptor a new CID (see {@link bumpCid}). */
  protected override beforeFirstWrite(): Promise<void> {
    return this.bumpCid();
  }

  /** A new CID in the descriptor: deltas made against the old content no longer match it. */
  private async bumpCid(): Promise<void> {
    const d = this.descriptor;
    const h = this.header;
    if (!d || h.descriptorSize === 0) return;
    const cid = randomCid(this.cidNow);
    const text = new TextEncoder().encode(withCid(d, cid));
    const area = h.descriptorSize * 512;
    if (text.length > area) {
      throw new VmkitError('LIMIT', `vmdk ${this.storage.name}: the descriptor no longer fits its ${area} bytes`, { offset: h.descriptorOffset * 512, path: this.storage.name });
    }
    const buf = new Uint8Array(area);
    buf.set(text);
    await this.storage.write(h.descriptorOffset * 512, buf);
    this.cidNow = cid;
    d.cid = cid;
    d.lines = withCid(d, cid).split('\n');
  }

  /** Appends `bytes` (sector aligned) at the end of the file and returns its byte offset. */
  private async append(data: Uint8Array): Promise<number> {
    const t = this.tables;
    const host = Math.ceil(t.fileSize / 512) * 512;
    if (host / 512 + data.length / 512 > 0xffff_ffff) {
      throw new VmkitError('LIMIT', `vmdk ${this.storage.name}: the file would pass 2 TiB (32-bit sector offsets)`, { path: this.storage.name });
    }
    await this.storage.write(host, data);
    t.fileSize = host + data.length;
    return host;
  }

  /** The grain table of directory entry `gdi`, allocating it (and its redundant copy) if absent. */
  private async gtFor(gdi: number): Promise<Uint32Array> {
    const t = await this.tables.table(gdi);
    if (t) return t;
    const n = this.header.numGTEsPerGT;
    const zero = new Uint8Array(this.g.gtBytes);
    // Tables first, then the directory entries that point at them.
    const p = await this.append(zero);
    await this.storage.write(this.header.gdOffset * 512 + gdi * 4, u32le(p / 512));
    this.gd[gdi] = p / 512;
    if (this.rgd && this.rgd[gdi] === 0) {
      const r = await this.append(zero);
      await this.storage.write(this.header.rgdOffset * 512 + gdi * 4, u32le(r / 512));
      this.rgd[gdi] = r / 512;
    }
    const fresh = new Uint32Array(n);
    this.tables.set(gdi, fresh);
    return fresh;
  }

  private async setGte(grain: number, value: number): Promise<void> {
    const n = this.header.numGTEsPerGT;
    const gdi = Math.floor(grain / n);
    const gti = grain % n;
    const t = await this.gtFor(gdi);
    const e = u32le(value);
    await this.storage.write(this.gd[gdi]! * 512 + gti * 4, e);
    const r = this.rgd?.[gdi];
    if (r) {
      this.tables.checkTable(r, this.header.rgdOffset * 512 + gdi * 4, 'redundant grain table');
      await this.storage.write(r * 512 + gti * 4, e);
    }
    t[gti] = value;
  }

  protected async writeInGranule(pos: number, data: Uint8Array, zeroes: boolean): Promise<void> {
    const gb = this.g.grainBytes;
    const grain = Math.floor(pos / gb);
    const gStart = grain * gb;
    const inG = pos - gStart;
    const grainLen = Math.min(gb, this.size - gStart);
    const p = await this.piece(pos);
    if (p.kind === 'data') {
      await this.storage.write(p.host, data);
      return;
    }
    const allZero = zeroes || isAllZero(data);
    const whole = inG === 0 && data.length === grainLen;
    const zeroGrain = (this.header.flags & FLAG_ZERO_GRAIN) !== 0;
    if (allZero) {
      if (p.kind === 'zero') return;
      if (p.kind === 'unallocated' && !this.backing) return;
      if (whole && zeroGrain) {
        await this.setGte(grain, 1);
        return;
      }
    }
    // Allocate a whole grain: what the range reads as now, with the new bytes on top.
    const buf = new Uint8Array(gb);
    if (p.kind === 'unallocated') await _readBacking(this.backing, gStart, buf.subarray(0, grainLen));
    if (!zeroes) buf.set(data, inG);
    else buf.fill(0, inG, inG + data.length);
    const host = await this.append(buf);
    await this.setGte(grain, host / 512);
  }

  /**
   * Facts for `vmkit disk info` (as `qemu-img info`).
   *
   * @example
   * ```ts
   * const { virtualSize, clusterSize, allocatedBytes } = await dev.info();
   * ```
   */
  async info(): Promise<ImageInfo> {
    const zeroGrain = (this.header.flags & FLAG_ZERO_GRAIN) !== 0;
    const grains = await this.tables.allocated();
    const h = this.header;
    const d = this.descriptor;
    const specific: Record<string, string | number | boolean> = {
      version: h.version,
      grainTableEntries: h.numGTEsPerGT,
      redundantGrainDirectory: (h.flags & FLAG_RGD) !== 0,
      zeroedGrain: zeroGrain,
    };
    if (d?.createType !== undefined) specific.createType = d.createType;
    if (this.cidNow !== undefined) specific.cid = this.cidNow.toString(16).padStart(8, '0');
    if (d) specific.parentCid = d.parentCid.toString(16).padStart(8, '0');
    return this.layerInfo({ clusterSize: this.g.grainBytes, allocatedBytes: grains * this.g.grainBytes, specific });
  }
}
