/**
 * The prefetch engine: the host side of the core's fault path
 * (assembly/prefetch.ts). It owns a core handle holding the resident bitmap,
 * the prefetched marks, a translation table (virtual page -> physical page)
 * and the counters, and it turns a fault into the runs of pages to read.
 *
 * Translation comes either from the core's own table (filled with
 * {@link PrefetchEngine.map}, e.g. from a page-table walk or QEMU's
 * `info tlb`) or, when a {@link Translator} is given, from that translator's
 * batch call (an address space walking the guest's page tables in the core);
 * the engine then hands the translated frames to the core, which drops the
 * unmapped and resident ones and coalesces the rest.
 * @module
 */
import { checkGeneration, withCore, withScratch, core } from '../../core.js';
import type { CoreExports } from '../../_abi.js';
import { check } from '../../_status.js';
import { VmkitError } from '../../errors.js';
import { aindex, aint, au64, avpn, describe } from '../../_utils.js';

/** Largest neighbourhood (back + ahead + 1) a fault may walk. @example engine.faultVirtual(vpn, 8, Math.min(ahead, MAX_WINDOW - 9)); */
export const MAX_WINDOW = 65535;
/**
 * Most translations an engine's table holds (`mapCapacity`): 2^24, 64 GiB of
 * 4 KiB pages; the table then takes 1 GiB of core memory. Past it LIMIT.
 * @example new PrefetchEngine(pages, { mapCapacity: Math.min(pairs.length, MAX_MAP) });
 */
export const MAX_MAP: number = 1 << 24;
/** The value a {@link Translator} writes for an unmapped address. @example if (out[i] === UNMAPPED) skipped++; */
export const UNMAPPED = 0xffff_ffff_ffff_ffffn;
const PAGE_SHIFT = 12n;
const VPN_LIMIT = 1n << 52n;
// Runs a batch fault call may write (8 bytes each): 8 MiB of core memory at most.
const BATCH_RUNS = 1 << 20;
// Pages coalesce() sorts in one core call (192 MiB there).
const MAX_COALESCE = 1 << 24;

/**
 * Batch translation of guest-virtual addresses, as an address space does it:
 * `out[i]` receives the guest-physical address of `gvas[i]`, or
 * {@link UNMAPPED}.
 * @example
 * const t: Translator = { translateInto(gvas, out) { for (let i = 0; i < gvas.length; i++) out[i] = gvas[i]!; } };
 */
export interface Translator {
  translateInto(gvas: BigUint64Array, out: BigUint64Array): void;
  /** Guest-virtual addresses that map `gpa` (the reverse map), when the translator has one. */
  gvasOf?(gpa: bigint): readonly bigint[];
}

/**
 * Counters of an engine (pages are guest pages of 4 KiB).
 * @example
 * const { faults, prefetchHits, wasted } = engine.stats();
 */
export interface PrefetchStats {
  /** Accesses recorded (touch/access calls). */
  accesses: number;
  /** Faults: accesses that found their page absent. */
  faults: number;
  /** Pages loaded by faults and prefetches. */
  loaded: number;
  /** Pages loaded that no access asked for (yet): prefetched. */
  prefetched: number;
  /** Prefetched pages later used. */
  prefetchHits: number;
  /** Prefetched pages not used (so far): wasted. */
  wasted: number;
  /** Read calls issued (runs of consecutive pages, or storage blocks). */
  reads: number;
  /** Virtual pages translated by the neighbourhood walks. */
  translations: number;
  /** Page-table pages read (modelled for the core's table, measured for a translator). */
  pageTableReads: number;
  /** Accesses to unmapped virtual pages. */
  unmapped: number;
}

/**
 * Options of {@link PrefetchEngine}.
 * @example
 * const opts: PrefetchEngineOptions = { translator: space, blockOf: (p) => reader.blockOf(p) };
 */
export interface PrefetchEngineOptions {
  /** Room for this many translations in the core's table (default 0: a translator does it). */
  mapCapacity?: number;
  /** Translates neighbourhoods when the core's table is not used. */
  translator?: Translator;
  /** Storage block of a page (a checkpoint's): reads are counted per distinct block. */
  blockOf?: (page: number) => number;
}

/**
 * A prefetch engine over a guest of `pages` physical pages.
 * @example
 * await init();
 * const e = new PrefetchEngine(16, { mapCapacity: 4 });
 * e.map([[10n, 7], [11n, 3], [12n, 8]]);
 * e.faultVirtual(11n, 1, 1); // Uint32Array [3, 1, 7, 2]: read page 3, then pages 7..8
 * e.close();
 */
export class PrefetchEngine {
  /** Physical pages of the guest. */
  readonly pages: number;
  private readonly h: number;
  private readonly gen: number;
  private out = 0;
  private frames = 0;
  private _translator: Translator | undefined;
  private readonly blockOf: ((page: number) => number) | undefined;
  private extraReads = 0;
  private closed = false;
  /** Pages loaded by the last fault call (the faulting page included). */
  lastLoaded = 0;

  constructor(pages: number, options: PrefetchEngineOptions = {}) {
    aint(pages, 'pages', 1, 0xffff_ffff);
    const cap = options.mapCapacity ?? 0;
    aint(cap, 'mapCapacity', 0);
    if (cap > MAX_MAP) throw new VmkitError('LIMIT', `mapCapacity ${cap} is over the largest translation table the core makes, ${MAX_MAP} translations`);
    this.pages = pages;
    this._translator = options.translator;
    this.blockOf = options.blockOf;
    const r = withCore((c) => {
      const h = check(core().exports.prefetchCreate(pages, cap), 'prefetch engine create');
      try {
        this.out = c.alloc((MAX_WINDOW + 1) * 8);
        this.frames = c.alloc((MAX_WINDOW + 1) * 8);
      } catch (e) {
        core().exports.prefetchDestroy(h);
        throw e;
      }
      return { h, gen: c.generation };
    });
    this.h = r.h;
    this.gen = r.gen;
  }

  private live(): CoreExports {
    if (this.closed) throw new VmkitError('INVALID_STATE', 'prefetch engine is closed');
    checkGeneration(this.gen, 'prefetch engine');
    return core().exports;
  }

  /**
   * Adds translations (virtual page number, physical page number) to the
   * core's table. Frames past the guest are skipped. Returns how many were new.
   * @example
   * engine.map([[0x400n, 0x830d]]);
   */
  map(pairs: Iterable<readonly [bigint, number | bigint]>): number {
    const e = this.live();
    const chunk = 4096;
    return withScratch(chunk * 16, (_ex, buf, c) => {
      let added = 0;
      let n = 0;
      const flush = (): void => {
        if (n === 0) return;
        added += check(e.prefetchMap(this.h, buf, n), 'prefetch map');
        n = 0;
      };
      let view = new BigUint64Array(c.u8().buffer, buf, chunk * 2);
      let i = 0;
      for (const [vpn, ppn] of pairs) {
        if (view.buffer !== c.u8().buffer) view = new BigUint64Array(c.u8().buffer, buf, chunk * 2);
        // Checked here, not left to BigUint64Array: it would take -1 as 2^64 - 1 and throw a bare RangeError on 0.5.
        view[n * 2] = avpn(vpn, `pairs[${i}][0]`);
        view[n * 2 + 1] = au64(ppn, `pairs[${i}][1]`);
        i++;
        if (++n === chunk) flush();
      }
      flush();
      return added;
    });
  }

  /** The frame of virtual page `vpn` in the core's table, or -1. @example engine.translate(0x400n); */
  translate(vpn: bigint): number {
    const v = avpn(vpn, 'vpn');
    return Number(this.live().prefetchTranslate(this.h, v));
  }

  /**
   * Frames of virtual pages [lo, lo + n) (-1 where unmapped), through the
   * core's table or the translator in one batch; counted as translations.
   * For policies that shape their window before loading it (adaptive).
   * @example const f = engine.frameRange(0x400n, 16); // f[0] is the frame of page 0x400
   */
  frameRange(lo: bigint, n: number): Float64Array {
    const e = this.live();
    aint(n, 'n', 0, MAX_WINDOW);
    lo = avpn(lo, 'lo');
    if (lo + BigInt(n) > 1n << 52n) throw new VmkitError('ARG_RANGE', `virtual pages [${lo}, ${lo} + ${n}) pass 2^52`);
    const out = new Float64Array(n);
    const translator = this._translator;
    let tableReads = 0;
    if (!translator) {
      for (let i = 0; i < n; i++) out[i] = Number(e.prefetchTranslate(this.h, lo + BigInt(i)));
      // The core's model of a 4-level walk (as its fault path counts): the two
      // top levels once, a directory per 1 GiB and a leaf table per 2 MiB spanned.
      const hi = lo + BigInt(Math.max(0, n - 1));
      if (n > 0) tableReads = 2 + Number((hi >> 18n) - (lo >> 18n) + 1n) + Number((hi >> 9n) - (lo >> 9n) + 1n);
    } else {
      const gvas = new BigUint64Array(n);
      for (let i = 0; i < n; i++) gvas[i] = (lo + BigInt(i)) << PAGE_SHIFT;
      const gpas = new BigUint64Array(n);
      translator.translateInto(gvas, gpas);
      for (let i = 0; i < n; i++) out[i] = gpas[i] === UNMAPPED ? -1 : Number(gpas[i]! >> PAGE_SHIFT);
    }
    check(e.prefetchCountWalk(this.h, n, tableReads), 'prefetch count');
    return out;
  }

  /** The translator neighbourhoods go through, when the core's table is not used. @example if (engine.translator) engine.faultVirtual(vpn, 8, 8); */
  get translator(): Translator | undefined {
    return this._translator;
  }

  /**
   * Sets (or clears) the translator: for an address space built over the
   * lazy memory this engine serves, which exists only after the memory.
   * @example engine.setTranslator(AddressSpace.create({ memory: lazy, mode: 'x86-64', root: cr3 }));
   */
  setTranslator(t: Translator | undefined): void {
    this.live();
    this._translator = t;
  }

  /** A virtual page mapping frame `ppn` (core table, else the translator's reverse map), or undefined. @example engine.reverse(7); */
  reverse(ppn: number): bigint | undefined {
    aindex(ppn, 'ppn', this.pages);
    const r = this.live().prefetchReverse(this.h, BigInt(ppn));
    if (r >= 0n) return r;
    const g = this._translator?.gvasOf?.(BigInt(ppn) << PAGE_SHIFT);
    return g && g.length > 0 ? g[0]! >> PAGE_SHIFT : undefined;
  }

  /** True when page `ppn` is resident. @example engine.isResident(0); */
  isResident(ppn: number): boolean {
    aindex(ppn, 'ppn', this.pages);
    return check(this.live().prefetchIsResident(this.h, ppn), 'prefetch isResident') === 1;
  }

  /** Marks pages resident (or absent). Returns the resident count. @example engine.setResident(0, 16, true); */
  setResident(first: number, count: number, on: boolean): number {
    aindex(first, 'first', this.pages + 1);
    aindex(count, 'count', this.pages - first + 1);
    if (typeof on !== 'boolean') throw new VmkitError('ARG_TYPE', `on must be a boolean, got ${describe(on)}`);
    return check(this.live().prefetchSetResident(this.h, first, count, on ? 1 : 0), 'prefetch setResident');
  }

  /** Resident pages. @example engine.residentCount(); */
  residentCount(): number {
    return check(this.live().prefetchResidentCount(this.h), 'prefetch residentCount');
  }

  /** A copy of the resident bitmap (bit p of byte p >> 3, LSB first). @example engine.residentBitmap(); */
  residentBitmap(): Uint8Array {
    const e = this.live();
    const p = e.prefetchResidentBitmap(this.h) >>> 0;
    return core().u8().slice(p, p + Math.ceil(this.pages / 8));
  }

  /**
   * Records an access to frame `ppn`: 0 resident, 1 prefetch hit (first use
   * of a prefetched page), 2 absent (fault it in).
   * @example if (engine.access(7) === 2) engine.faultPhysical(7, 0, 0);
   */
  access(ppn: number): 0 | 1 | 2 {
    aindex(ppn, 'ppn', this.pages);
    return check(this.live().prefetchAccess(this.h, ppn), 'prefetch access') as 0 | 1 | 2;
  }

  /**
   * Records an access to virtual page `vpn` through the core's table: -1
   * when unmapped, else `ppn * 4 + status` (status as {@link access}).
   * @example const r = engine.touch(0x400n); const ppn = Math.floor(r / 4), status = r & 3;
   */
  touch(vpn: bigint): number {
    if (this.closed) throw new VmkitError('INVALID_STATE', 'prefetch engine is closed');
    // The hot path of the simulator: one call, no generation check beyond this (the type and
    // range test is two comparisons; a number would make the i64 parameter throw a bare TypeError).
    if (typeof vpn !== 'bigint' || vpn < 0n || vpn >= VPN_LIMIT) avpn(vpn, 'vpn');
    return Number(core().exports.prefetchTouch(this.h, vpn));
  }

  private runs(n: number): Uint32Array {
    check(n, 'prefetch fault');
    const runs = new Uint32Array(core().u8().buffer, this.out, n * 2).slice();
    let loaded = 0;
    for (let i = 1; i < runs.length; i += 2) loaded += runs[i]!;
    this.lastLoaded = loaded;
    if (this.blockOf && n > 0) this.extraReads += countBlocks(runs, this.blockOf) - n;
    return runs;
  }

  /**
   * The fault path by virtual neighbourhood: virtual page `vpn` faulted; loads
   * its frame and the absent frames of [vpn - back, vpn + ahead]. Returns the
   * runs to read as (first page, count) pairs, sorted by page.
   * @example const runs = engine.faultVirtual(0x400n, 8, 8);
   */
  faultVirtual(vpn: bigint, back: number, ahead: number): Uint32Array {
    const e = this.live();
    vpn = avpn(vpn, 'vpn');
    aint(back, 'back', 0, MAX_WINDOW - 1);
    aint(ahead, 'ahead', 0, MAX_WINDOW - 1 - back);
    const translator = this._translator;
    if (!translator) {
      return this.runs(e.prefetchFaultVirtual(this.h, vpn, back, ahead, this.out, MAX_WINDOW + 1));
    }
    const lo = vpn >= BigInt(back) ? vpn - BigInt(back) : 0n;
    const n = Number(vpn + BigInt(ahead) - lo) + 1;
    const gvas = new BigUint64Array(n);
    for (let i = 0; i < n; i++) gvas[i] = (lo + BigInt(i)) << PAGE_SHIFT;
    const gpas = new BigUint64Array(n);
    translator.translateInto(gvas, gpas);
    const fault = gpas[Number(vpn - lo)]!;
    if (fault === UNMAPPED) throw new VmkitError('ARG_RANGE', `virtual page 0x${vpn.toString(16)} is unmapped`);
    return this.faultFrames(gpas, Number(fault >> PAGE_SHIFT), true, n);
  }

  /**
   * A batch of virtual faults through the core's table in one call (a host
   * draining a queue of faults): each as {@link faultVirtual}; unmapped pages
   * are skipped. Returns all runs, one fault's after another.
   * @example const runs = engine.faultVirtualBatch(new BigUint64Array([0x400n, 0x9000n]), 8, 8);
   */
  faultVirtualBatch(vpns: BigUint64Array, back: number, ahead: number): Uint32Array {
    const e = this.live();
    if (!(vpns instanceof BigUint64Array)) throw new VmkitError('ARG_TYPE', `vpns must be a BigUint64Array, got ${describe(vpns)}`);
    aint(back, 'back', 0, MAX_WINDOW - 1);
    aint(ahead, 'ahead', 0, MAX_WINDOW - 1 - back);
    // A fault yields at most one run per page of its window: the core gets the
    // faults in slices whose worst case fits BATCH_RUNS runs, so the room it is
    // given stays bounded however many faults are queued.
    const window = back + ahead + 1;
    const per = Math.max(1, Math.floor(BATCH_RUNS / window));
    const parts: Uint32Array[] = [];
    let total = 0;
    withScratch([per * 8, per * window * 8], (_ex, [p, o], c) => {
      for (let at = 0; at < vpns.length; at += per) {
        const n = Math.min(per, vpns.length - at);
        new BigUint64Array(c.u8().buffer, p, n).set(vpns.subarray(at, at + n));
        const r = check(e.prefetchFaultVirtualBatch(this.h, p, n, back, ahead, o, n * window), 'prefetch fault batch');
        parts.push(new Uint32Array(c.u8().buffer, o, r * 2).slice());
        total += r * 2;
      }
    });
    if (parts.length === 1) return parts[0]!;
    const out = new Uint32Array(total);
    let k = 0;
    for (const part of parts) {
      out.set(part, k);
      k += part.length;
    }
    return out;
  }


  /**
   * The fault path by physical neighbourhood (fault-around): frame `ppn` and
   * the absent frames of [ppn - back, ppn + ahead].
   * @example const runs = engine.faultPhysical(0x830d, 8, 8);
   */
  faultPhysical(ppn: number, back: number, ahead: number): Uint32Array {
    const e = this.live();
    aindex(ppn, 'ppn', this.pages);
    aint(back, 'back', 0, MAX_WINDOW - 1);
    aint(ahead, 'ahead', 0, MAX_WINDOW - 1 - back);
    return this.runs(e.prefetchFaultPhysical(this.h, ppn, back, ahead, this.out, MAX_WINDOW + 1));
  }

  /**
   * Loads a list of frames (a replay's working set, or frames translated
   * elsewhere): absent ones are coalesced into runs. `fault` is the faulting
   * frame, or -1 for a pure prefetch.
   * @example const runs = engine.faultList([3, 4, 9], -1);
   */
  faultList(frames: ArrayLike<number>, fault: number): Uint32Array {
    this.live();
    if (fault !== -1) aindex(fault, 'fault', this.pages);
    // Frames past the guest are skipped (not RAM); what is not a frame number at all is refused.
    for (let i = 0; i < frames.length; i++) aindex(frames[i], `frames[${i}]`, 2 ** 53);
    const all = new Uint32Array(0);
    let out: Uint32Array = all;
    let first = true;
    for (let at = 0; at < frames.length || first; at += MAX_WINDOW - 1) {
      const n = Math.min(MAX_WINDOW - 1, frames.length - at);
      const buf = new BigUint64Array(n);
      for (let i = 0; i < n; i++) buf[i] = BigInt(frames[at + i]!);
      const r = this.faultFrames(buf, first ? fault : -1, false, n);
      if (r.length > 0) {
        const merged = new Uint32Array(out.length + r.length);
        merged.set(out);
        merged.set(r, out.length);
        out = merged;
      }
      first = false;
    }
    return out;
  }

  private faultFrames(list: BigUint64Array, fault: number, addresses: boolean, n: number): Uint32Array {
    const e = this.live();
    const c = core();
    const v = new BigUint64Array(c.u8().buffer, this.frames, n);
    for (let i = 0; i < n; i++) {
      const x = list[i]!;
      v[i] = addresses ? (x === UNMAPPED ? UNMAPPED : x >> PAGE_SHIFT) : x;
    }
    if (addresses) check(e.prefetchCountWalk(this.h, n, 0), 'prefetch count');
    return this.runs(withCore(() => e.prefetchFaultList(this.h, this.frames, n, BigInt(fault), this.out, MAX_WINDOW + 1)));
  }

  /**
   * Adds page-table reads measured by a translator to the counters.
   * @example engine.countTableReads(4);
   */
  countTableReads(n: number): void {
    aint(n, 'n', 0, 0xffff_ffff);
    check(this.live().prefetchCountWalk(this.h, 0, n), 'prefetch count');
  }

  /**
   * The counters so far; `wasted` counts prefetched pages not used yet.
   * @example const { faults, wasted } = engine.stats();
   */
  stats(): PrefetchStats {
    const e = this.live();
    return withScratch(9 * 8, (_ex, p, c) => {
      e.prefetchStats(this.h, p);
      const v = new BigUint64Array(c.u8().buffer, p, 9);
      const n = (i: number): number => Number(v[i]!);
      return {
        accesses: n(0),
        faults: n(1),
        loaded: n(2),
        prefetched: n(3),
        prefetchHits: n(4),
        wasted: check(e.prefetchUnused(this.h), 'prefetch unused'),
        reads: n(5) + this.extraReads,
        translations: n(6),
        pageTableReads: n(7),
        unmapped: n(8),
      };
    });
  }

  /** Releases the core's state. Further calls throw INVALID_STATE. @example engine.close(); */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      const c = checkGeneration(this.gen, 'prefetch engine');
      core().exports.prefetchDestroy(this.h);
      c.free(this.out);
      c.free(this.frames);
    } catch {
      // The core was reset: its memory (and this engine's state) is gone already.
    }
  }
}

/** Read calls for runs when pages live in storage blocks: the distinct blocks touched (zero pages need none). */
function countBlocks(runs: Uint32Array, blockOf: (page: number) => number): number {
  const seen = new Set<number>();
  for (let i = 0; i < runs.length; i += 2) {
    for (let p = runs[i]!; p < runs[i]! + runs[i + 1]!; p++) {
      const b = blockOf(p);
      if (b >= 0) seen.add(b);
    }
  }
  return seen.size;
}

/**
 * Sorts page numbers, drops duplicates and returns the runs of consecutive
 * pages as (first, count) pairs: the core's coalescing on its own.
 * @example coalesce([5, 3, 4, 9, 9, 1]); // Uint32Array [1, 1, 3, 3, 9, 1]
 */
export function coalesce(pages: ArrayLike<number>): Uint32Array {
  // Sorted in the core in one piece: 12 bytes a page there.
  if (pages.length > MAX_COALESCE) throw new VmkitError('LIMIT', `coalesce takes at most ${MAX_COALESCE} pages at once, got ${pages.length}`);
  for (let i = 0; i < pages.length; i++) aint(pages[i], `pages[${i}]`, 0, 0xffff_ffff);
  const n = pages.length;
  return withScratch([Math.max(4, n * 4), Math.max(8, n * 8)], (ex, [p, o], c) => {
    new Uint32Array(c.u8().buffer, p, n).set(Array.from(pages));
    const r = check(ex.prefetchCoalesce(p, n, o, n), 'coalesce');
    return new Uint32Array(c.u8().buffer, o, r * 2).slice();
  });
}
