/**
 * The shell the image format devices share, so each format keeps only its
 * own block logic:
 *
 * ```
 *  _LayerDevice      fields of one layer, read → readInto, close (flush, store, backing), info's common facts
 *  ├─ _MappedLayer   a map of data | zero | unallocated pieces: readInto, blockStatus through the chain,
 *  │                 and the write shell (bounds, queue, guard, first-write hook, split at granules):
 *  │                 VHD, VHDX, monolithicSparse VMDK
 *  └─ _ReadOnlyLayer write, writeZeroes, discard refused; nothing to flush: streamOptimized VMDK,
 *                    descriptor-file VMDKs
 * ```
 * qcow2 (its own write path, metadata cache and cache modes) takes only the
 * first. The helpers these build on (`_readRuns`, `_statusRun`, …) are in
 * `_device.ts`.
 * @module
 */
import { VmkitError } from '../../errors.js';
import type { Storage } from '../backends/storage.js';
import { checkRange, type BlockDevice, type BlockExtent, type ByteLength, type ByteOffset } from '../device.js';
import type { WriteGuard } from '../_guard.js';
import { _backingStatus, _checkWritable, _closeLayer, _eachGranule, _Queue, _readBacking, _readFresh, _readRuns, _statusRun, type _Piece } from './_device.js';
import type { FormatName, ImageDevice, ImageInfo } from './types.js';

/** What every layer is made of. @internal */
export interface _LayerInit {
  storage: Storage;
  /** Guest size in bytes. */
  size: number;
  readOnly: boolean;
  backing?: BlockDevice | undefined;
  backingFile?: string | undefined;
  backingFormat?: string | undefined;
}

/** The facts of `info()` a format fills in (the layer adds format, sizes and backing). @internal */
export type _InfoFacts = Omit<ImageInfo, 'format' | 'virtualSize' | 'fileSize' | 'backingFile' | 'backingFormat'>;

/**
 * One layer of an image chain: its store, guest size and backing layer.
 *
 * @example
 * ```ts
 * class RawishDevice extends _LayerDevice { readonly format = 'raw' as const; ... }
 * ```
 * @internal
 */
export abstract class _LayerDevice implements ImageDevice {
  abstract readonly format: FormatName;
  readonly alignment = 512;
  readonly size: number;
  readonly readOnly: boolean;
  readonly storage: Storage;
  readonly backing: BlockDevice | undefined;
  readonly backingFile: string | undefined;
  readonly backingFormat: string | undefined;
  protected closed = false;

  constructor(o: _LayerInit) {
    this.storage = o.storage;
    this.size = o.size;
    this.readOnly = o.readOnly;
    this.backing = o.backing;
    this.backingFile = o.backingFile;
    this.backingFormat = o.backingFormat;
  }

  /**
   * Reads `length` bytes at `offset` (multiples of 512) into a fresh buffer.
   *
   * @example
   * ```ts
   * const mbr = await (await openImage('disk.vhd')).read(0, 512); // unallocated ranges come from the backing chain
   * ```
   */
  read(offset: ByteOffset, length: ByteLength): Promise<Uint8Array> {
    return _readFresh(this, offset, length);
  }

  abstract readInto(offset: ByteOffset, dst: Uint8Array): Promise<void>;
  abstract blockStatus(offset: ByteOffset, length: ByteLength): Promise<BlockExtent>;
  abstract write(offset: ByteOffset, data: Uint8Array): Promise<void>;
  abstract writeZeroes(offset: ByteOffset, length: ByteLength): Promise<void>;
  abstract discard(offset: ByteOffset, length: ByteLength): Promise<void>;
  abstract flush(): Promise<void>;
  abstract info(): Promise<ImageInfo>;

  /**
   * Flushes (when writable) and closes this layer, its store and its backing chain.
   *
   * @example
   * ```ts
   * await dev.close(); // flushes when writable, closes the backing chain too
   * ```
   */
  async close(): Promise<void> {
    if (this.closed) return;
    await _closeLayer(() => this.flush(), () => (this.closed = true), this.storage, this.backing);
  }

  /** `info()` from a format's own facts: format, sizes first, the backing file and format last. */
  protected async layerInfo(facts: _InfoFacts, fileSize?: number): Promise<ImageInfo> {
    const info: ImageInfo = { format: this.format, virtualSize: this.size, fileSize: fileSize ?? (await this.storage.size()), ...facts };
    if (this.backingFile !== undefined) info.backingFile = this.backingFile;
    if (this.backingFormat !== undefined) info.backingFormat = this.backingFormat;
    return info;
  }
}

/** What a mapped format's lookup finds at a guest offset. @internal */
export interface _MapPiece extends _Piece {
  /** In this file at `host`, zeroes, or the backing layer's. */
  kind: 'data' | 'zero' | 'unallocated';
}

/** A mapped layer: a writable one splits requests at its granule. @internal */
export interface _MappedInit extends _LayerInit {
  /** The format's allocation unit (block, grain) writes are split at. */
  granule: number;
  guard?: WriteGuard | undefined;
}

/**
 * A layer whose format maps each guest range to data in its file, zeroes, or
 * the backing layer (`piece`), and writes one granule (block, grain) at a
 * time (`writeInGranule`).
 *
 * @example
 * ```ts
 * class VhdDevice extends _MappedLayer {
 *   protected piece(pos: number): Promise<_MapPiece> { ... }
 *   protected writeInGranule(pos: number, data: Uint8Array, zeroes: boolean): Promise<void> { ... }
 * }
 * ```
 * @internal
 */
export abstract class _MappedLayer extends _LayerDevice {
  protected readonly granule: number;
  protected readonly guard: WriteGuard | undefined;
  protected readonly queue: _Queue = new _Queue();
  private prepared = false;

  constructor(o: _MappedInit) {
    super(o);
    this.granule = o.granule;
    this.guard = o.guard;
  }

  /** The run of one kind that starts at guest offset `pos`. */
  protected abstract piece(pos: number): Promise<_MapPiece>;

  /**
   * Writes `data` inside one granule at `pos`; `zeroes` says it is all zero
   * by request (writeZeroes, discard), so the format may leave it unallocated.
   */
  protected abstract writeInGranule(pos: number, data: Uint8Array, zeroes: boolean): Promise<void>;

  /** What the format changes once before the first change after open (a new CID, new header GUIDs). */
  protected async beforeFirstWrite(): Promise<void> {}

  /**
   * Reads `dst.length` bytes at `offset` into `dst`.
   *
   * @example
   * ```ts
   * const buf = new Uint8Array(1 << 20);
   * await dev.readInto(0, buf); // no allocation per read
   * ```
   */
  async readInto(offset: ByteOffset, dst: Uint8Array): Promise<void> {
    checkRange(this, offset, dst.length, 'read');
    await _readRuns(this.storage, offset, dst, (pos) => this.piece(pos), (p) => p.kind === 'data', (p, pos, d) => {
      if (p.kind !== 'zero') return _readBacking(this.backing, pos, d);
      d.fill(0);
      return undefined;
    }, { backing: this.backing, isBacking: (p) => p.kind === 'unallocated' });
  }

  /**
   * Status of the run starting at `offset` (at most `length` bytes).
   *
   * @example
   * ```ts
   * const e = await dev.blockStatus(0, dev.size);
   * console.log(e.kind, e.length, e.depth); // one run of equal status, as qemu-img map
   * ```
   */
  async blockStatus(offset: ByteOffset, length: ByteLength): Promise<BlockExtent> {
    const { first, len } = await _statusRun(this, offset, length, (o) => this.piece(o), (a, p, n) => p.kind === a.kind && (p.kind !== 'data' || p.host === a.host + n));
    if (first.kind === 'unallocated') return _backingStatus(this.backing, offset, len);
    if (first.kind === 'zero') return { offset, length: len, kind: 'zero', depth: 0 };
    return { offset, length: len, kind: 'data', depth: 0, hostOffset: first.host };
  }

  /** Throws unless the layer may change now; runs the first-write hook once. */
  protected async writable(op: 'write' | 'flush' | 'discard'): Promise<void> {
    _checkWritable(this.storage.name, this.closed, this.readOnly, op);
    await this.guard?.check(op);
    if (!this.prepared) {
      await this.beforeFirstWrite();
      this.prepared = true;
    }
  }

  /** Writes `length` bytes at `offset`: `data`, or zeroes when it is undefined, granule by granule. */
  protected async writeRange(offset: number, length: number, data: Uint8Array | undefined): Promise<void> {
    await _eachGranule(offset, length, this.granule, (pos, len, at) => (data ? this.writeInGranule(pos, data.subarray(at, at + len), false) : this.writeInGranule(pos, new Uint8Array(len), true)));
  }

  /**
   * Writes `data` at `offset`, allocating blocks or grains as needed.
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
      await this.writeRange(offset, data.length, data);
    });
  }

  /**
   * Makes `[offset, offset + length)` read as zeroes.
   *
   * @example
   * ```ts
   * await dev.writeZeroes(0, 1 << 20); // reads as zeroes afterwards
   * ```
   */
  async writeZeroes(offset: ByteOffset, length: ByteLength): Promise<void> {
    checkRange(this, offset, length, 'writeZeroes');
    return this.queue.run(async () => {
      await this.writable('write');
      await this.writeRange(offset, length, undefined);
    });
  }

  /**
   * Makes the range read as zeroes: these formats cannot give space back
   * while open (QEMU does not discard on them either).
   *
   * @example
   * ```ts
   * await dev.discard(0, 64 << 10); // the range then reads as zeroes
   * ```
   */
  async discard(offset: ByteOffset, length: ByteLength): Promise<void> {
    checkRange(this, offset, length, 'discard');
    return this.queue.run(async () => {
      await this.writable('discard');
      await this.writeRange(offset, length, undefined);
    });
  }

  /**
   * Makes completed writes durable.
   *
   * @example
   * ```ts
   * await dev.write(0, data);
   * await dev.flush(); // durable
   * ```
   */
  async flush(): Promise<void> {
    if (this.readOnly || this.closed) return;
    await this.queue.run(async () => {
      await this.guard?.check('flush');
      await this.storage.flush();
    });
  }
}

/**
 * A layer vmkit reads only (written once, or through other files): changes
 * are refused with UNSUPPORTED and why, and there is nothing to flush.
 *
 * @example
 * ```ts
 * class VmdkStreamDevice extends _ReadOnlyLayer { protected refusal(op: string) { return `${op}: …`; } ... }
 * ```
 * @internal
 */
export abstract class _ReadOnlyLayer extends _LayerDevice {
  constructor(o: Omit<_LayerInit, 'readOnly'>) {
    super({ ...o, readOnly: true });
  }

  /** The error a change gets: UNSUPPORTED, saying why this format is read only. */
  protected abstract refusal(op: string): VmkitError;

  /** Throws INVALID_STATE once the layer is closed. */
  protected checkOpen(op: string): void {
    if (this.closed) throw new VmkitError('INVALID_STATE', `${op}: ${this.storage.name} is closed`, { path: this.storage.name });
  }

  /**
   * Refused: see the format's module comment.
   *
   * @example
   * ```ts
   * await dev.write(0, data).catch((e) => e.code); // 'UNSUPPORTED'
   * ```
   */
  write(_offset: ByteOffset, _data: Uint8Array): Promise<void> {
    return Promise.reject(this.refusal('write'));
  }

  /**
   * Refused, as {@link write}.
   *
   * @example
   * ```ts
   * await dev.writeZeroes(0, 512).catch((e) => e.code); // 'UNSUPPORTED'
   * ```
   */
  writeZeroes(_offset: ByteOffset, _length: ByteLength): Promise<void> {
    return Promise.reject(this.refusal('writeZeroes'));
  }

  /**
   * Refused, as {@link write}.
   *
   * @example
   * ```ts
   * await dev.discard(0, 512).catch((e) => e.code); // 'UNSUPPORTED'
   * ```
   */
  discard(_offset: ByteOffset, _length: ByteLength): Promise<void> {
    return Promise.reject(this.refusal('discard'));
  }

  /**
   * Nothing to flush.
   *
   * @example
   * ```ts
   * await dev.flush();
   * ```
   */
  async flush(): Promise<void> {}
}
