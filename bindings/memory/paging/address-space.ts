/**
 * Address spaces: guest-virtual → guest-physical translation through the
 * guest's own page tables, walked by the wasm core (`assembly/paging.ts`,
 * docs/paging.md).
 *
 * The core never holds guest memory: it caches page-table frames and asks for
 * the ones it lacks ("need frame F"). This class answers those requests from
 * the {@link GuestMemorySource} (4 KiB `readSync` calls) and resumes the core,
 * so callers see plain synchronous calls.
 * @module
 */
import { checkGeneration, core, coreFailure, withCore, withScratch, type Core } from '../../core.js';
import type { CoreExports } from '../../_abi.js';
import { check } from '../../_status.js';
import { VmkitError } from '../../errors.js';
import { aint, aoneOf, au64, describe } from '../../_utils.js';
import type { Gpa, Gva, GuestMemorySource } from '../types.js';
import { PAGING_MODES, TranslationResult } from './types.js';
import type { AddressSpaceOptions, Mapping, PagingMode, Translation, TranslationFault } from './types.js';
import { fillResult, resultSlots, R_CURSOR, R_FRAME, R_LEAF, R_MAPPED, R_STATE } from './_results.js';
import { buildReverse, decodeMappings, lookupReverse, mappingChunk, MAPPING_BUFFER_BYTES, _MappingIterator, type _Chunk, type ReverseMap } from './_mappings.js';

export { _setMappingChunk, _setReverseLimit } from './_mappings.js';

/**
 * The value {@link AddressSpace.translateInto} writes for an address that does not translate
 * (the same as the prefetch engine's `UNMAPPED`).
 * @example
 * if (out[i] === UNMAPPED_GPA) console.log('not mapped');
 */
export const UNMAPPED_GPA = 0xffff_ffff_ffff_ffffn;

const U64 = 0xffff_ffff_ffff_ffffn;
const MODE_CODE: Record<PagingMode, number> = { 'x86-64': 0, 'x86-64-5level': 1, aarch64: 2 };
const NEED_DATA = -6;
/** Addresses per core call of translateInto (64 KiB of u64 in core memory). */
const BATCH = 8192;

/**
 * Releases the core state of spaces that were dropped without dispose() (64
 * can live at once), if the core they belong to is still the live one.
 */
const _finalizer: FinalizationRegistry<{ h: number; gen: number; io: number; out: number }> | undefined =
  typeof FinalizationRegistry === 'function'
    ? new FinalizationRegistry(({ h, gen, io, out }) => {
        try {
          const c = checkGeneration(gen, 'address space');
          c.exports.pagingDestroy(h);
          c.free(io);
          c.free(out);
        } catch {
          // The core was reset or replaced: the space went with it.
        }
      })
    : undefined;

/** Bumped by {@link AddressSpace.invalidateAll}: reverse maps built before it are stale. */
let _epoch = 0;

/**
 * Options of {@link AddressSpace.create}: the memory the tables live in, the mode and the roots.
 * @example
 * const opts: AddressSpaceCreateOptions = { memory, mode: 'x86-64-5level', root: cr3, cacheFrames: 256 };
 */
export interface AddressSpaceCreateOptions extends AddressSpaceOptions {
  /** Guest-physical memory (page-table frames are read from it, 4 KiB at a time). */
  memory: GuestMemorySource;
  /** Capacity of the core's page-table frame cache, in 4 KiB frames (default 4096 = 16 MiB, allocated as it fills). */
  cacheFrames?: number;
}

/**
 * Counters of an address space's caches.
 * @example
 * const { cacheHits, walks } = space.stats();
 */
export interface AddressSpaceStats {
  /** Translations served by the core's region cache (TLB / paging-structure cache) without a walk. */
  cacheHits: number;
  /** Table walks (through cached frames). */
  walks: number;
  /** Frames read from guest memory and handed to the core. */
  framesRead: number;
  /** Frames in the core's cache now. */
  framesCached: number;
}

function _memory(v: unknown): GuestMemorySource {
  const m = v as GuestMemorySource | undefined;
  if (typeof m !== 'object' || m === null || typeof m.readSync !== 'function' || typeof m.size !== 'bigint') {
    throw new VmkitError('ARG_TYPE', `memory must be a GuestMemorySource ({ size: bigint, readSync(at, dst) }), got ${describe(v)}`);
  }
  if (m.size < 0n || m.size > U64) throw new VmkitError('ARG_RANGE', `memory.size must be in [0, 2^64), got ${m.size}`);
  return m;
}

/**
 * A guest address space: page tables in guest memory, a paging mode and the
 * root register(s). Translations and mapping walks run in the wasm core,
 * which caches table frames and recent translations until {@link invalidate}
 * or {@link invalidateRange} (call them when the guest changes its tables).
 *
 * Fault semantics are those of the reference walker (`reference.ts`): leaf
 * pages may lie outside guest memory, tables may not (`outside-memory`).
 * @example
 * ```ts
 * import { init, AddressSpace, gva } from 'vmkit/memory';
 * await init();
 * const space = AddressSpace.create({ memory, mode: 'x86-64', root: cr3 });
 * const t = space.translate(gva(0xffff_ffff_8100_0000n));
 * if (t.ok) console.log(t.gpa.toString(16), t.pageSize);
 * space.dispose();
 * ```
 */
export class AddressSpace {
  /** The paging mode. */
  readonly mode: PagingMode;
  /** Where the tables are read from. */
  readonly memory: GuestMemorySource;
  #h: number;
  #gen: number;
  #io = 0;
  #out = 0;
  #closed = false;
  #tmp = new Uint8Array(4096);
  #reading = false;
  #batching = false;
  #reverse: ReverseMap | undefined;
  #reverseEpoch = 0;
  #opts: AddressSpaceOptions;
  #scratch = new TranslationResult();

  private constructor(memory: GuestMemorySource, opts: AddressSpaceOptions, h: number, gen: number, io: number, out: number) {
    this.memory = memory;
    this.mode = opts.mode;
    this.#opts = opts;
    this.#h = h;
    this.#gen = gen;
    this.#io = io;
    this.#out = out;
  }

  /**
   * Builds an address space. Throws ARG_TYPE / ARG_RANGE for bad options,
   * LIMIT when 64 address spaces are live, NOT_INITIALIZED before `init()`.
   * @example
   * ```ts
   * const space = AddressSpace.create({ memory, mode: 'aarch64', root: ttbr0, root1: ttbr1, t0sz: 16, t1sz: 16 });
   * ```
   * @throws {VmkitError} ARG_TYPE / ARG_RANGE: a bad mode, root or option (named); NOT_INITIALIZED: the core was not initialized; CORE_NO_MEMORY: the frame cache does not fit in the core.
   */
  static create(options: AddressSpaceCreateOptions): AddressSpace {
    if (typeof options !== 'object' || options === null) throw new VmkitError('ARG_TYPE', `options must be an object, got ${describe(options)}`);
    const memory = _memory(options.memory);
    const mode = aoneOf(options.mode, 'mode', PAGING_MODES);
    const root = au64(options.root, 'root');
    const root1 = options.root1 === undefined ? undefined : au64(options.root1, 'root1');
    const granule = options.granule ?? 4096;
    if (granule !== 4096 && granule !== 16384 && granule !== 65536) {
      throw new VmkitError('ARG_RANGE', `granule must be 4096, 16384 or 65536, got ${describe(granule)}`);
    }
    if (granule !== 4096 && mode !== 'aarch64') throw new VmkitError('ARG_RANGE', `granule ${granule} needs mode aarch64, got ${mode}`);
    // Smallest regions without FEAT_TTST: 2^25 (4 KiB granule), 2^16 (16 KiB), 2^17 (64 KiB).
    const maxTsz = granule === 4096 ? 39 : granule === 16384 ? 48 : 47;
    const t0sz = options.t0sz ?? 16;
    const t1sz = options.t1sz ?? 16;
    aint(t0sz, 't0sz', 16, maxTsz);
    aint(t1sz, 't1sz', 16, maxTsz);
    const nxe = options.nxe ?? true;
    if (typeof nxe !== 'boolean') throw new VmkitError('ARG_TYPE', `nxe must be a boolean, got ${describe(nxe)}`);
    const cacheFrames = options.cacheFrames ?? 4096;
    aint(cacheFrames, 'cacheFrames', 16, 1 << 20);
    const opts: AddressSpaceOptions = { mode, root, nxe, t0sz, t1sz, ...(root1 === undefined ? {} : { root1 }), ...(granule === 4096 ? {} : { granule }) };
    const modeCode = mode === 'aarch64' ? (granule === 16384 ? 3 : granule === 65536 ? 4 : 2) : MODE_CODE[mode];
    return withCore((c) => {
      const e = c.exports;
      const h = check(
        e.pagingCreate(modeCode, root, root1 ?? 0n, root1 === undefined ? 0 : 1, t0sz, t1sz, nxe ? 1 : 0, memory.size, cacheFrames),
        'address space create',
      );
      let io = 0;
      try {
        io = c.alloc(BATCH * 8);
        const out = c.alloc(MAPPING_BUFFER_BYTES);
        const space = new AddressSpace(memory, opts, h, c.generation, io, out);
        _finalizer?.register(space, { h, gen: c.generation, io, out }, space);
        return space;
      } catch (err) {
        if (io) c.free(io);
        e.pagingDestroy(h);
        throw err;
      }
    });
  }

  /** The options this space was built with (roots as currently set). @example space.options.root */
  get options(): AddressSpaceOptions {
    return { ...this.#opts };
  }

  #live(): Core {
    if (this.#closed) throw new VmkitError('INVALID_STATE', 'address space is disposed');
    return checkGeneration(this.#gen, 'address space');
  }

  /** Reads the frame at `frame` from guest memory and hands it to the core. */
  #provide(c: Core, frame: bigint): void {
    const size = this.memory.size;
    // A source may call back into this space (a lazy memory translating through it):
    // a nested read gets its own buffer.
    const tmp = this.#reading ? new Uint8Array(4096) : this.#tmp;
    const n = size - frame >= 4096n ? 4096 : Number(size - frame);
    if (n < 4096) tmp.fill(0, n);
    const outer = this.#reading;
    this.#reading = true;
    try {
      this.memory.readSync(frame as Gpa, n === 4096 ? tmp : tmp.subarray(0, n));
    } catch (e) {
      if (e instanceof VmkitError) throw e;
      throw new VmkitError('IO', `reading the page-table frame at ${frame.toString(16)} failed: ${(e as Error).message}`, { cause: e, offset: frame });
    } finally {
      this.#reading = outer;
    }
    // The source may have used the core (a checkpoint reader): check it is still ours.
    checkGeneration(this.#gen, 'address space');
    c.u8().set(tmp, c.exports.pagingStaging());
    check(c.exports.pagingProvide(this.#h, frame), 'page-table frame provide');
  }

  /**
   * Translates one guest-virtual address, the lean way: returns its
   * guest-physical address as a number (exact: below 2^52 in every mode), or
   * -1 when it does not translate. When `into` is given, it receives the
   * details (page size, flags, level, the entry; the fault's reason and level)
   * as numbers, in place. Nothing is allocated per call; this is the path for
   * callers translating one address at a time ({@link translate} is built on
   * it, {@link translateInto} is the batch). Throws only for a bad argument.
   * @example
   * ```ts
   * const r = new TranslationResult();
   * const pa = space.translateGpa(gva(0x40_1000n), r);
   * console.log(pa >= 0 ? `${pa.toString(16)} in a ${r.pageSize}-byte page` : `${r.reason} at level ${r.level}`);
   * ```
   */
  translateGpa(gva: bigint, into?: TranslationResult): number {
    if (typeof gva !== 'bigint' || BigInt.asUintN(64, gva) !== gva) gva = au64(gva, 'gva');
    const c = core();
    if (this.#closed || c.generation !== this.#gen) this.#live();
    let r: number;
    try {
      r = c.exports.pagingTranslateGpa(this.#h, gva);
      if (r < -1) r = this.#translateSlow(c, gva, r);
    } catch (e) {
      throw coreFailure(e);
    }
    if (into !== undefined) fillResult(c, r, into);
    return r;
  }

  /** The rest of a translation that needed table frames (or failed in the core). */
  #translateSlow(c: Core, va: bigint, r: number): number {
    for (let tries = 0; r === NEED_DATA && tries < 64; tries++) {
      this.#provide(c, resultSlots(c)[R_FRAME]!);
      r = c.exports.pagingTranslateGpa(this.#h, va);
    }
    check(r === NEED_DATA ? -7 : r < -1 ? r : 0, 'translate');
    return r;
  }

  /**
   * Translates one guest-virtual address. Returns a {@link Translation}, or a
   * {@link TranslationFault} (not present at level N, reserved bit, non-canonical,
   * a table outside guest memory, a bad root). Throws only for a bad argument.
   * Built on {@link translateGpa}: use that one where allocations count.
   * @example
   * ```ts
   * const t = space.translate(gva(0x40_1000n));
   * console.log(t.ok ? t.gpa : `${t.reason} at level ${t.level}`);
   * ```
   */
  translate(gva: bigint): Translation | TranslationFault {
    const r = this.#scratch;
    this.translateGpa(gva, r);
    // translateGpa checked it (a safe-integer number is accepted and made a bigint).
    const va = (typeof gva === 'bigint' ? gva : BigInt(gva)) as Gva;
    // The entry straight from its u64 slot: one bigint instead of building it from halves.
    const entry = r.hasEntry ? resultSlots(core())[R_LEAF]! : 0n;
    if (r.ok) return { ok: true, gva: va, gpa: BigInt(r.gpa) as Gpa, pageSize: r.pageSize, flags: r.flags, level: r.level, leaf: entry };
    const reason = r.reason ?? 'not-present';
    return r.hasEntry ? { ok: false, gva: va, reason, level: r.level, entry } : { ok: false, gva: va, reason, level: r.level };
  }

  /**
   * Translates a batch: `out[i]` receives the guest-physical address of
   * `gvas[i]`, or {@link UNMAPPED_GPA} when it does not translate (any fault).
   * Returns how many translated. `out` may be `gvas` itself. This is the hot
   * path (the prefetch engine's {@link Translator}); it runs in the core in
   * chunks of 8192 addresses.
   * @example
   * ```ts
   * const gvas = BigUint64Array.of(0x40_1000n, 0x40_2000n);
   * const out = new BigUint64Array(2);
   * const mapped = space.translateInto(gvas, out);
   * ```
   */
  translateInto(gvas: BigUint64Array, out: BigUint64Array): number {
    if (!(gvas instanceof BigUint64Array)) throw new VmkitError('ARG_TYPE', `gvas must be a BigUint64Array, got ${describe(gvas)}`);
    if (!(out instanceof BigUint64Array)) throw new VmkitError('ARG_TYPE', `out must be a BigUint64Array, got ${describe(out)}`);
    if (out.length < gvas.length) throw new VmkitError('OUTPUT_TOO_SMALL', `out has room for ${out.length}, needs ${gvas.length}`);
    const c = this.#live();
    // Called again from inside a frame read (see #provide): a buffer of its own.
    const nested = this.#batching;
    const run = (io: number): number => {
      this.#batching = true;
      try {
        return this.#translateChunks(c, c.exports, io, gvas, out);
      } finally {
        this.#batching = nested;
      }
    };
    return nested ? withScratch(BATCH * 8, (_ex, io) => run(io)) : withCore(() => run(this.#io));
  }

  #translateChunks(c: Core, e: CoreExports, io: number, gvas: BigUint64Array, out: BigUint64Array): number {
    let mapped = 0;
    for (let at = 0; at < gvas.length; at += BATCH) {
      const n = Math.min(BATCH, gvas.length - at);
      new BigUint64Array(c.exports.memory.buffer, io, n).set(gvas.subarray(at, at + n));
      let done = 0;
      let stuck = 0;
      for (;;) {
        const r = check(e.pagingTranslateBatch(this.#h, io, io, done, n), 'translate batch');
        mapped += Number(resultSlots(c)[R_MAPPED]!);
        if (r >= n) break;
        // Each frame lets the walk of address r go one level deeper (at most 5).
        stuck = r === done ? stuck + 1 : 0;
        if (stuck > 8) throw new VmkitError('LIMIT', 'translate batch made no progress (frame cache too small?)');
        done = r;
        this.#provide(c, resultSlots(c)[R_FRAME]!);
      }
      out.set(new BigUint64Array(c.exports.memory.buffer, io, n), at);
    }
    return mapped;
  }

  /**
   * Every mapped page or large page overlapping `[from, to)` (default: the
   * whole space), in ascending VA order (x86-64 upper half in canonical
   * form after the lower half; AArch64 TTBR0's region before TTBR1's). Large
   * pages are reported once. Entries with reserved bits, tables outside guest
   * memory and tables already on the path from the root (a loop) are skipped.
   * Lazy: the core walks in bounded chunks as the iterator is consumed.
   * @example
   * ```ts
   * for (const m of space.mappings()) console.log(m.gva.toString(16), m.gpa.toString(16), m.pageSize);
   * const kernel = [...space.mappings(gva(0xffff_ffff_8000_0000n))];
   * ```
   */
  mappings(from: bigint = 0n, to: bigint = 1n << 64n): IterableIterator<Mapping> {
    const lo = au64(from, 'from');
    if (typeof to !== 'bigint' || to < 0n || to > 1n << 64n) {
      throw new VmkitError(typeof to === 'bigint' ? 'ARG_RANGE' : 'ARG_TYPE', `to must be a bigint in [0, 2^64], got ${describe(to)}`);
    }
    this.#live();
    return this.#walk(lo, to);
  }

  #walk(from: bigint, to: bigint): IterableIterator<Mapping> {
    return new _MappingIterator(from, to, (cursor, last, needs) => this.#chunk(cursor, last, needs));
  }

  /** One core call of a mapping walk from `cursor`: the mappings it wrote, decoded, and where to go on. */
  #chunk(cursor: bigint, last: bigint, needs: number): _Chunk {
    const c = this.#live();
    return withCore(() => {
      const e = c.exports;
      const { records, budget } = mappingChunk();
      const n = check(e.pagingMappings(this.#h, cursor, last, this.#out, records, budget), 'mapping walk');
      const res = resultSlots(c);
      const state = Number(res[R_STATE]!);
      const next = res[R_CURSOR]!;
      // Decode before anything else runs in the core: the buffer is reused by the next call.
      const list = decodeMappings(c, this.#out, n);
      // Needs in a row without the cursor moving (a stop for the budget or a full buffer in
      // between does not reset it unless the cursor moved: it counts progress, not calls).
      if (next !== cursor) needs = 0;
      if (state === 2) {
        if (next === cursor) needs++;
        if (needs > 16) throw new VmkitError('LIMIT', 'mapping walk made no progress (frame cache too small?)');
        this.#provide(c, res[R_FRAME]!);
      }
      return { list, done: state === 0, next, needs };
    });
  }

  /**
   * Guest-virtual addresses that map `gpa` (every alias: direct map, vmalloc,
   * user mappings), ascending. Built by one full mapping walk on first use
   * and kept until the next invalidation. Throws LIMIT when the tables map
   * more than 8 M pages (hostile shared subtrees): use {@link mappings} then.
   * @example
   * ```ts
   * const aliases = space.gvasOf(gpa(0x1234_5000n));
   * ```
   */
  gvasOf(gpa: bigint): Gva[] {
    const pa = au64(gpa, 'gpa');
    this.#live();
    if (this.#reverseEpoch !== _epoch) this.#reverse = undefined;
    this.#reverseEpoch = _epoch;
    return lookupReverse((this.#reverse ??= buildReverse(this.#walk(0n, 1n << 64n))), pa);
  }

  /**
   * Forgets every cached table frame and translation of this space (call it
   * when the guest's tables changed in unknown places).
   * @example
   * ```ts
   * space.invalidate();
   * ```
   */
  invalidate(): void {
    const c = this.#live();
    this.#reverse = undefined;
    withCore(() => check(c.exports.pagingInvalidate(this.#h), 'invalidate'));
  }

  /**
   * Forgets the cached frames and translations of every live address space
   * (their reverse maps are rebuilt on next use). Returns how many spaces there were.
   * @example
   * ```ts
   * AddressSpace.invalidateAll(); // the guest ran: every table may have changed
   * ```
   */
  static invalidateAll(): number {
    const n = withCore((c) => check(c.exports.pagingInvalidateAll(), 'invalidate all'));
    _epoch++;
    return n;
  }

  /**
   * Forgets cached translations of `[from, to)` and every cached table frame
   * used for an address in it (as INVLPG does, plus the table contents the
   * core keeps). The reverse map is dropped.
   * @example
   * ```ts
   * space.invalidateRange(gva(0x40_0000n), gva(0x60_0000n));
   * ```
   */
  invalidateRange(from: bigint, to: bigint): void {
    const lo = au64(from, 'from');
    if (typeof to !== 'bigint' || to < 0n || to > 1n << 64n) {
      throw new VmkitError(typeof to === 'bigint' ? 'ARG_RANGE' : 'ARG_TYPE', `to must be a bigint in [0, 2^64], got ${describe(to)}`);
    }
    const c = this.#live();
    this.#reverse = undefined;
    if (to <= lo) return;
    withCore(() => check(c.exports.pagingInvalidateRange(this.#h, lo, to - 1n), 'invalidate range'));
  }

  /**
   * Forgets the cached page-table frames in the guest-physical range
   * `[from, to)` (call it when the guest wrote those pages, e.g. from a dirty
   * log), and with them every cached translation. Returns how many cached
   * frames were dropped (0: nothing cached there, translations kept).
   * @example
   * ```ts
   * for (const page of dirtyPages) space.invalidatePhysical(gpa(page * 4096n), gpa(page * 4096n + 4096n));
   * ```
   */
  invalidatePhysical(from: bigint, to: bigint): number {
    const lo = au64(from, 'from');
    if (typeof to !== 'bigint' || to < 0n || to > 1n << 64n) {
      throw new VmkitError(typeof to === 'bigint' ? 'ARG_RANGE' : 'ARG_TYPE', `to must be a bigint in [0, 2^64], got ${describe(to)}`);
    }
    const c = this.#live();
    if (to <= lo) return 0;
    const n = withCore(() => check(c.exports.pagingInvalidatePhysical(this.#h, lo, to - 1n), 'invalidate physical'));
    if (n > 0) this.#reverse = undefined;
    return n;
  }

  /**
   * Switches the root register(s) (a new CR3 for another process, new
   * TTBRs): cached translations are dropped, cached table frames kept.
   * @example
   * ```ts
   * space.setRoot(otherCr3);
   * ```
   */
  setRoot(root: bigint, root1?: bigint): void {
    const r0 = au64(root, 'root');
    const r1 = root1 === undefined ? undefined : au64(root1, 'root1');
    const c = this.#live();
    this.#reverse = undefined;
    const next: AddressSpaceOptions = { ...this.#opts, root: r0 };
    if (r1 === undefined) delete next.root1;
    else next.root1 = r1;
    this.#opts = next;
    withCore(() => check(c.exports.pagingSetRoot(this.#h, r0, r1 ?? 0n, r1 === undefined ? 0 : 1), 'set root'));
  }

  /**
   * Counters of the core's caches for this space.
   * @example
   * ```ts
   * const { cacheHits, walks, framesRead } = space.stats();
   * ```
   */
  stats(): AddressSpaceStats {
    this.#live();
    return withScratch(32, (ex, p) => {
      check(ex.pagingStats(this.#h, p), 'stats');
      const v = new BigUint64Array(ex.memory.buffer, p, 4);
      return { cacheHits: Number(v[0]!), walks: Number(v[1]!), framesRead: Number(v[2]!), framesCached: Number(v[3]!) };
    });
  }

  /**
   * Releases the core's state for this space. Later calls throw INVALID_STATE;
   * disposing twice is a no-op.
   * @example
   * ```ts
   * space.dispose();
   * ```
   */
  dispose(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#reverse = undefined;
    _finalizer?.unregister(this);
    try {
      const c = checkGeneration(this.#gen, 'address space');
      withCore(() => {
        c.exports.pagingDestroy(this.#h);
        c.free(this.#io);
        c.free(this.#out);
      });
    } catch (e) {
      // A core that was reset took the space with it.
      if (!(e instanceof VmkitError && e.code === 'STALE_HANDLE')) throw e;
    }
  }
}
