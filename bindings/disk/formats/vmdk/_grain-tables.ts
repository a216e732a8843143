/**
 * The grain directory and grain tables of a sparse VMDK extent, read one way
 * for both kinds that have them: monolithicSparse (`device.ts`, grains stored
 * whole) and streamOptimized (`stream.ts`, each grain a marker and a zlib
 * stream). A table is found through the directory, checked to lie in the
 * file past the header and descriptor, and cached; a guest offset maps to the
 * run it starts, clamped to the disk's size.
 *
 * ```
 *  guest offset ─► grain = offset / grainBytes
 *                    gdi = grain / numGTEsPerGT ─► GD[gdi]: sector of the grain table (0: none)
 *                    gti = grain % numGTEsPerGT ─► GT[gti]: 0 unallocated,
 *                                                  1 zeroed (with FLAG_ZERO_GRAIN),
 *                                                  else the sector of the grain
 * ```
 * VMware's Virtual Disk Format 5.0, "Hosted Sparse Extents"; docs/vmdk.md.
 * @module
 */
import { VmkitError } from '../../../errors.js';
import { readAt, type Storage } from '../../backends/storage.js';
import { FLAG_ZERO_GRAIN, type VmdkHeader } from './header.js';

/** Reads a grain directory or table (little-endian u32 entries). @internal */
export function decodeU32s(b: Uint8Array, n: number): Uint32Array {
  const out = new Uint32Array(n);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  for (let i = 0; i < n; i++) out[i] = dv.getUint32(i * 4, true);
  return out;
}

/** The run a guest offset starts: to the end of its grain, or (unallocated, zeroed) to the next entry that differs. @internal */
export interface _GrainRun {
  /** `grain`: stored in this file at `host` (the grain's first byte, or its marker in a stream). */
  kind: 'grain' | 'zero' | 'unallocated';
  host: number;
  /** Bytes from the offset asked, never past the disk's end. */
  len: number;
}

/** Tables kept in memory (each `numGTEsPerGT` entries, 2 KiB by default). */
const TABLE_CACHE = 4096;

/**
 * The grain directory of one extent, its tables read on demand.
 * @internal
 */
export class _GrainTables {
  /** The file's size now (a writer that appends moves it). */
  fileSize: number;
  /** Grains and tables may not start before this byte: the header and the embedded descriptor. */
  readonly metaEnd: number;
  private readonly storage: Storage;
  private readonly h: VmdkHeader;
  private readonly gd: Uint32Array;
  private readonly size: number;
  private readonly grainBytes: number;
  private readonly grainNeeds: number;
  private readonly zeroGrain: boolean;
  private readonly cache = new Map<number, Uint32Array>();

  /**
   * `gd` is the directory as read (a writer updates it in place); `size` the
   * disk's size in bytes; `grainNeeds` how many bytes of a grain must lie in
   * the file (the whole grain, or a stream's 12-byte marker).
   */
  constructor(storage: Storage, h: VmdkHeader, gd: Uint32Array, fileSize: number, size: number, grainNeeds: number) {
    this.storage = storage;
    this.h = h;
    this.gd = gd;
    this.fileSize = fileSize;
    this.size = size;
    this.grainBytes = h.grainSize * 512;
    this.grainNeeds = grainNeeds;
    this.zeroGrain = (h.flags & FLAG_ZERO_GRAIN) !== 0;
    this.metaEnd = Math.max(512, h.descriptorSize > 0 ? (h.descriptorOffset + h.descriptorSize) * 512 : 512);
  }

  /** A CORRUPT error about this extent. */
  corrupt(msg: string, offset: number): VmkitError {
    return new VmkitError('CORRUPT', `vmdk ${this.storage.name}: ${msg}`, { offset, path: this.storage.name });
  }

  /** Throws CORRUPT unless a table at sector `sec` (named by the entry at byte `at`) lies in the file past the header. */
  checkTable(sec: number, at: number, what: string): void {
    if (sec * 512 < this.metaEnd || sec * 512 + this.h.numGTEsPerGT * 4 > this.fileSize) {
      throw this.corrupt(`${what} at ${sec * 512} is outside the file or overlaps the header (entry at ${at})`, at);
    }
  }

  /** The grain table of directory entry `gdi`, undefined when it has none. */
  async table(gdi: number): Promise<Uint32Array | undefined> {
    const c = this.cache.get(gdi);
    if (c) return c;
    // Past the directory (a zero-length request at the very end of the disk): nothing there.
    if (gdi >= this.gd.length) return undefined;
    const sec = this.gd[gdi]!;
    if (sec === 0) return undefined;
    this.checkTable(sec, this.h.gdOffset * 512 + gdi * 4, 'grain table');
    const n = this.h.numGTEsPerGT;
    const t = decodeU32s(await readAt(this.storage, sec * 512, n * 4), n);
    this.set(gdi, t);
    return t;
  }

  /** Caches `t` as the table of entry `gdi` (a table just allocated). */
  set(gdi: number, t: Uint32Array): void {
    if (this.cache.size > TABLE_CACHE) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(gdi, t);
  }

  /** What the grain at guest byte `pos` holds (see {@link _GrainRun}); CORRUPT for a grain outside the file. */
  async run(pos: number): Promise<_GrainRun> {
    const gb = this.grainBytes;
    const n = this.h.numGTEsPerGT;
    const grain = Math.floor(pos / gb);
    const gdi = Math.floor(grain / n);
    // Bytes from pos to the start of guest grain g, or to the disk's end.
    const upTo = (g: number): number => Math.min(g * gb, this.size) - pos;
    const t = await this.table(gdi);
    if (!t) return { kind: 'unallocated', host: 0, len: upTo((gdi + 1) * n) };
    const gti = grain % n;
    const e = t[gti]!;
    if (e === 0 || (e === 1 && this.zeroGrain)) {
      // Unallocated and zeroed grains run to the next entry that differs (maps of big sparse disks stay fast).
      let k = gti + 1;
      while (k < n && t[k] === e) k++;
      return { kind: e === 0 ? 'unallocated' : 'zero', host: 0, len: upTo(gdi * n + k) };
    }
    const host = e * 512;
    if (host < this.metaEnd || host + this.grainNeeds > this.fileSize) {
      throw this.corrupt(`grain for guest offset ${grain * gb} at ${host} is outside the file or overlaps the header`, this.gd[gdi]! * 512 + gti * 4);
    }
    return { kind: 'grain', host, len: upTo(grain + 1) };
  }

  /** Grains stored in the file (entries neither unallocated nor zeroed), for `info`. */
  async allocated(): Promise<number> {
    let grains = 0;
    for (let i = 0; i < this.gd.length; i++) {
      const t = await this.table(i);
      if (t) for (const e of t) if (e > 1 || (e === 1 && !this.zeroGrain)) grains++;
    }
    return grains;
  }
}
