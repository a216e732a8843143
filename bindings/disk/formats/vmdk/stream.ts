/**
 * VMDK streamOptimized (the disk an OVA carries; what `qemu-img convert -O
 * vmdk -o subformat=streamOptimized` writes): a sparse extent whose grains
 * are zlib-compressed, each after a grain marker (guest sector u64, size
 * u32), with the grain directory and tables either where the header says
 * (QEMU) or at the end of the stream behind metadata markers, the real
 * header in a footer before the end-of-stream marker (VMware, OVF tools).
 * Read-only: a stream is written once, front to back (see `writeStream`).
 * docs/vmdk.md.
 * @module
 */
import { VmkitError } from '../../../errors.js';
import { readAt, type Storage } from '../../backends/storage.js';
import { checkRange, type BlockDevice, type BlockExtent, type ByteLength, type ByteOffset } from '../../device.js';
import { inflateRaw } from '../../_inflate.js';
import { _backingStatus, _readBacking, _readRuns, _statusRun } from '../_device.js';
import { _ReadOnlyLayer } from '../_layer.js';
import type { ImageInfo } from '../types.js';
import { _GrainTables, decodeU32s } from './_grain-tables.js';
import type { VmdkDescriptor } from './descriptor.js';
import { geometry, parseVmdkHeader, VMDK_HEADER_SIZE, type VmdkGeometry, type VmdkHeader } from './header.js';

/** Marker types (the u32 after a zero size). */
export const MARKER_EOS = 0;
/** A grain table follows. */
export const MARKER_GT = 1;
/** The grain directory follows. */
export const MARKER_GD = 2;
/** The footer (a copy of the header with the real directory offset) follows. */
export const MARKER_FOOTER = 3;

/** Inflated grains kept (64 KiB each by default). */
const GRAIN_CACHE = 32;

/**
 * The header that describes a streamOptimized file: the one at offset 0,
 * or, when its directory offset is "at the end" (all ones), the footer's
 * (the 1536 bytes before the end of the file: footer marker, header,
 * end-of-stream marker). `head` is the 512 bytes at 0.
 *
 * @example
 * ```ts
 * const h = await streamHeader(storage, head, fileSize);
 * ```
 */
export async function streamHeader(storage: Storage, head: Uint8Array, fileSize: number): Promise<VmdkHeader> {
  const dv = new DataView(head.buffer, head.byteOffset, VMDK_HEADER_SIZE);
  if (dv.getBigUint64(56, true) !== 0xffff_ffff_ffff_ffffn) return parseVmdkHeader(head, fileSize, storage.name, { stream: true });
  const at = fileSize - 1536;
  if (at < VMDK_HEADER_SIZE) throw new VmkitError('CORRUPT', `vmdk ${storage.name}: the grain directory is at the end but the file has no footer`, { offset: 56, path: storage.name });
  const f = await readAt(storage, at, 1536);
  const fv = new DataView(f.buffer, f.byteOffset, f.byteLength);
  if (fv.getUint32(8, true) !== 0 || fv.getUint32(12, true) !== MARKER_FOOTER) {
    throw new VmkitError('CORRUPT', `vmdk ${storage.name}: no footer marker before the end-of-stream marker`, { offset: at, path: storage.name });
  }
  if (fv.getUint32(1024 + 8, true) !== 0 || fv.getUint32(1024 + 12, true) !== MARKER_EOS) {
    throw new VmkitError('CORRUPT', `vmdk ${storage.name}: no end-of-stream marker at the end`, { offset: at + 1024, path: storage.name });
  }
  const h = parseVmdkHeader(f.subarray(512, 1024), fileSize, storage.name, { stream: true });
  if (h.gdOffset === 0) throw new VmkitError('CORRUPT', `vmdk ${storage.name}: the footer's grain directory offset is "at the end" too`, { offset: at + 512 + 56, path: storage.name });
  return h;
}

/**
 * A streamOptimized VMDK layer, read-only.
 *
 * @example
 * ```ts
 * const dev = await openImage('disk1.vmdk'); // from an OVA
 * const mbr = await dev.read(0, 512);
 * ```
 */
export class VmdkStreamDevice extends _ReadOnlyLayer {
  readonly format = 'vmdk' as const;
  readonly header: VmdkHeader;
  readonly descriptor: VmdkDescriptor | undefined;
  private readonly g: VmdkGeometry;
  private readonly tables: _GrainTables;
  private readonly grains = new Map<number, Promise<Uint8Array>>();
  private readonly fileSize: number;

  constructor(storage: Storage, h: VmdkHeader, descriptor: VmdkDescriptor | undefined, gd: Uint32Array, fileSize: number, backing: BlockDevice | undefined) {
    const hint = descriptor?.parentFileNameHint;
    super({ storage, size: h.capacity * 512, backing, backingFile: hint, backingFormat: hint !== undefined ? 'vmdk' : undefined });
    this.header = h;
    this.descriptor = descriptor;
    this.g = geometry(h);
    this.fileSize = fileSize;
    // A grain's 12-byte marker must lie in the file; its compressed size is checked when it is read.
    this.tables = new _GrainTables(storage, h, gd, fileSize, this.size, 12);
  }

  /** The content ID (a stream is never written in place, so it does not change). */
  get cid(): number | undefined {
    return this.descriptor?.cid;
  }

  private corrupt(msg: string, offset: number): VmkitError {
    return this.tables.corrupt(msg, offset);
  }

  /** The inflated grain whose marker is at `host` (guest grain `grain`). */
  private inflated(grain: number, host: number): Promise<Uint8Array> {
    let p = this.grains.get(host);
    if (p) return p;
    p = this.inflate(grain, host);
    if (this.grains.size >= GRAIN_CACHE) this.grains.delete(this.grains.keys().next().value!);
    this.grains.set(host, p);
    p.catch(() => this.grains.delete(host));
    return p;
  }

  private async inflate(grain: number, host: number): Promise<Uint8Array> {
    const gb = this.g.grainBytes;
    const m = await readAt(this.storage, host, 12);
    const mv = new DataView(m.buffer, m.byteOffset, 12);
    const lba = Number(mv.getBigUint64(0, true));
    const size = mv.getUint32(8, true);
    if (lba !== grain * this.header.grainSize) throw this.corrupt(`grain marker at ${host} says sector ${lba}, the grain table says ${grain * this.header.grainSize}`, host);
    // zlib output never exceeds its input by more than ~0.03% plus a few bytes: a size past that is a lie.
    if (size < 2 || size > gb + (gb >> 8) + 64 || host + 12 + size > this.fileSize) throw this.corrupt(`grain at ${host} claims ${size} compressed bytes`, host + 8);
    const z = await readAt(this.storage, host + 12, size);
    // A zlib stream (RFC 1950): deflate, no preset dictionary, header check.
    if ((z[0]! & 0x0f) !== 8 || (z[1]! & 0x20) !== 0 || ((z[0]! << 8) | z[1]!) % 31 !== 0) throw this.corrupt(`grain at ${host} is not a zlib stream`, host + 12);
    const want = Math.min(gb, this.size - grain * gb);
    try {
      return await inflateRaw(z.subarray(2), gb, host + 12, this.storage.name);
    } catch (e) {
      // The last grain of a disk that ends mid-grain may be stored short.
      if (want === gb) throw e;
      const short = await inflateRaw(z.subarray(2), want, host + 12, this.storage.name);
      const out = new Uint8Array(gb);
      out.set(short);
      return out;
    }
  }

  /**
   * Reads `dst.length` bytes at `offset` into `dst`, inflating grains.
   *
   * @example
   * ```ts
   * await dev.readInto(0, new Uint8Array(1 << 20));
   * ```
   */
  async readInto(offset: ByteOffset, dst: Uint8Array): Promise<void> {
    checkRange(this, offset, dst.length, 'read');
    this.checkOpen('read');
    const gb = this.g.grainBytes;
    await _readRuns(this.storage, offset, dst, (pos) => this.tables.run(pos), () => false, async (p, pos, d) => {
      if (p.kind === 'unallocated') return _readBacking(this.backing, pos, d);
      if (p.kind === 'zero') {
        d.fill(0);
        return;
      }
      const grain = Math.floor(pos / gb);
      const data = await this.inflated(grain, p.host);
      const inG = pos - grain * gb;
      d.set(data.subarray(inG, inG + d.length));
    });
  }

  /**
   * Status of the run starting at `offset`: compressed grains are data
   * without a host offset (as `qemu-img map` shows them).
   *
   * @example
   * ```ts
   * const e = await dev.blockStatus(0, dev.size);
   * ```
   */
  async blockStatus(offset: ByteOffset, length: ByteLength): Promise<BlockExtent> {
    const { first, len } = await _statusRun(this, offset, length, (o) => this.tables.run(o), (a, p) => p.kind === a.kind && a.kind !== 'grain');
    if (first.kind === 'unallocated') return _backingStatus(this.backing, offset, len);
    if (first.kind === 'zero') return { offset, length: len, kind: 'zero', depth: 0 };
    return { offset, length: len, kind: 'data', depth: 0, compressed: true };
  }

  /** A stream is written once, front to back: not in place. */
  protected refusal(op: string): VmkitError {
    return new VmkitError('UNSUPPORTED', `${op}: ${this.storage.name} is a streamOptimized VMDK, which is written once front to back (convert it to write)`, { offset: 8, path: this.storage.name });
  }

  /**
   * Facts for `vmkit disk info`.
   *
   * @example
   * ```ts
   * (await dev.info()).specific?.createType; // 'streamOptimized'
   * ```
   */
  async info(): Promise<ImageInfo> {
    const grains = await this.tables.allocated();
    return this.layerInfo(
      {
        clusterSize: this.g.grainBytes,
        allocatedBytes: grains * this.g.grainBytes,
        specific: { version: this.header.version, createType: this.descriptor?.createType ?? 'streamOptimized', compressed: true },
      },
      this.fileSize,
    );
  }
}

/**
 * `check` of a streamOptimized VMDK: every grain table inside the file and
 * every grain's marker inside the file, naming the sector its table entry
 * says, with a plausible compressed size.
 *
 * @example
 * ```ts
 * const r = await checkStream(storage, header, fileSize);
 * ```
 */
export async function checkStream(storage: Storage, h: VmdkHeader, fileSize: number): Promise<import('../types.js').CheckReport> {
  const report: import('../types.js').CheckReport = { format: 'vmdk', filename: storage.name, corruptions: 0, leaks: 0, checkErrors: 0, messages: [] };
  const corrupt = (message: string, offset: number): void => {
    report.corruptions++;
    if (report.messages.length < 1000) report.messages.push({ severity: 'corruption', message, offset });
  };
  const g = geometry(h);
  if (h.gdOffset < 1 || h.gdOffset * 512 + g.gdEntries * 4 > fileSize) {
    corrupt(`grain directory at ${h.gdOffset * 512} is outside the file`, 56);
    return report;
  }
  const gd = decodeU32s(await readAt(storage, h.gdOffset * 512, g.gdEntries * 4), g.gdEntries);
  const n = h.numGTEsPerGT;
  let allocated = 0;
  for (let i = 0; i < gd.length; i++) {
    const sec = gd[i]!;
    if (sec === 0) continue;
    if (sec * 512 + n * 4 > fileSize) {
      corrupt(`grain table ${i} at ${sec * 512} is past the end of the file`, h.gdOffset * 512 + i * 4);
      continue;
    }
    const t = decodeU32s(await readAt(storage, sec * 512, n * 4), n);
    for (let j = 0; j < n; j++) {
      const e = t[j]!;
      if (e <= 1) continue;
      const at = sec * 512 + j * 4;
      if (e * 512 + 12 > fileSize) {
        corrupt(`grain ${i * n + j} at ${e * 512} is past the end of the file (entry at ${at})`, at);
        continue;
      }
      const m = await readAt(storage, e * 512, 12);
      const mv = new DataView(m.buffer, m.byteOffset, 12);
      const lba = Number(mv.getBigUint64(0, true));
      const size = mv.getUint32(8, true);
      if (lba !== (i * n + j) * h.grainSize) corrupt(`grain marker at ${e * 512} says sector ${lba}, its entry ${(i * n + j) * h.grainSize}`, e * 512);
      else if (size === 0 || e * 512 + 12 + size > fileSize) corrupt(`grain at ${e * 512} has ${size} compressed bytes past the end of the file`, e * 512 + 8);
      else allocated++;
    }
  }
  report.totalClusters = g.grains;
  report.allocatedClusters = allocated;
  report.compressedClusters = allocated;
  report.imageEndOffset = fileSize;
  return report;
}
