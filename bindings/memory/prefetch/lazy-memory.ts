/**
 * Lazy guest memory: guest-physical memory whose pages start absent and are
 * loaded on first access from a {@link PageSource} (a raw image file, a
 * buffer, a checkpoint). The resident set lives in the core (the prefetch
 * engine's bitmap); page contents live in the host, one buffer per read run,
 * so a guest may be far larger than wasm memory (the core keeps one bit per
 * page: 2 MiB of bitmap for 64 GiB).
 *
 * A fault goes through a prefetch policy: it picks the pages to load with
 * the faulting one, the engine coalesces them into runs, and each run is one
 * read of the source. Accesses at guest-virtual addresses go through a
 * {@link Translator} (an address space), which also gives the policy the
 * faulting virtual page; accesses at guest-physical addresses find one
 * through the reverse map.
 *
 * The memory is itself a {@link GuestMemorySource}, so a page-table walker
 * can walk the guest's tables through it (table pages then fault in too).
 * @module
 */
import { VmkitError } from '../../errors.js';
import { abytes, aindex, aint, au64 } from '../../_utils.js';
import type { Gpa, Gva, GuestMemorySource, PageSource } from '../types.js';
import { PrefetchEngine, UNMAPPED, type PrefetchStats, type Translator } from './engine.js';
import { createPolicy, type PrefetchPolicy } from './policies.js';

/**
 * Options of {@link LazyGuestMemory.open}.
 * @example
 * const opts: LazyGuestMemoryOptions = { translator: space, policy: createPolicy('virtual', { back: 8, ahead: 8 }) };
 */
export interface LazyGuestMemoryOptions {
  /** What to load on a fault (default: the faulting page only, `none`). */
  policy?: PrefetchPolicy;
  /** Guest-virtual to guest-physical translation (an address space). */
  translator?: Translator;
  /** Room for translations in the core's own table, when there is no translator. */
  mapCapacity?: number;
}

/**
 * What a lazy memory did: the engine's counters plus the I/O.
 * @example
 * const { faults, bytesRead, sourceReads } = mem.stats();
 */
export interface LazyMemoryStats extends PrefetchStats {
  /** Bytes read from the source. */
  bytesRead: number;
  /** Read calls made on the source. */
  sourceReads: number;
}

const PAGE_SHIFT = 12n;

/**
 * Guest-physical memory restored lazily from a page source.
 *
 * Asynchronous accesses may overlap: concurrent faults on one page share one
 * read of the source, and each access takes effect at one point (its copy,
 * once its pages are in), so no write is lost to a load that lands after it.
 * Page numbers and addresses are checked (ARG_RANGE / ARG_TYPE, naming the
 * argument) before they reach the core. See docs/prefetch.md.
 * @example
 * await init();
 * const mem = await LazyGuestMemory.open(bufferPages(image), { policy: createPolicy('physical', { back: 0, ahead: 7 }) });
 * const b = new Uint8Array(8);
 * mem.readSync(gpa(0x5000), b); // faults page 5 in, with pages 6..12
 * mem.stats().faults; // 1
 */
export class LazyGuestMemory implements GuestMemorySource {
  /** Bytes of guest-physical memory. */
  readonly size: bigint;
  /** Guest pages. */
  readonly pages: number;
  /** The engine holding the resident set and the counters. */
  readonly engine: PrefetchEngine;
  private readonly source: PageSource;
  private readonly policy: PrefetchPolicy;
  private translator: Translator | undefined;
  // > 0 while a translation or a policy's fault is in progress: page-table
  // pages a walker reads through this memory then fault in alone (no policy,
  // no reverse lookup that would walk the same tables again).
  private busy = 0;
  // Page contents by page number: subarrays of one buffer per read run.
  private readonly contents = new Map<number, Uint8Array>();
  // Pages marked resident whose run is still being read, by page number: the
  // in-flight load table that makes concurrent faults on a page share one read.
  private readonly loading = new Map<number, Ticket>();
  private bytesRead = 0;
  private sourceReads = 0;

  private constructor(source: PageSource, options: LazyGuestMemoryOptions) {
    if (source.pageSize !== 4096) throw new VmkitError('ARG_RANGE', `lazy guest memory needs 4096-byte pages, source has ${source.pageSize}`);
    aint(source.pageCount, 'source.pageCount', 1, 0xffff_ffff);
    this.source = source;
    this.pages = source.pageCount;
    this.size = BigInt(source.pageCount) << PAGE_SHIFT;
    this.policy = options.policy ?? createPolicy('none');
    this.translator = options.translator;
    const blockOf = source.blockOf?.bind(source);
    this.engine = new PrefetchEngine(this.pages, {
      mapCapacity: options.mapCapacity ?? 0,
      ...(options.translator ? { translator: options.translator } : {}),
      ...(blockOf ? { blockOf } : {}),
    });
  }

  /**
   * Opens a lazy memory over `source` (every page absent). A replay policy
   * loads its recorded working set here.
   * @example
   * const mem = await LazyGuestMemory.open(await CheckpointReader.open(file));
   * @throws {VmkitError} ARG_RANGE: a bad option (named); NOT_INITIALIZED: the core was not initialized; CORE_NO_MEMORY: the page bitmaps do not fit in the core; and what the page source throws when it is read.
   */
  static async open(source: PageSource, options: LazyGuestMemoryOptions = {}): Promise<LazyGuestMemory> {
    const m = new LazyGuestMemory(source, options);
    if (m.policy.start) await m.load(m.policy.start(m.engine));
    return m;
  }

  /**
   * Opens synchronously (the source must read synchronously; a replay's
   * working set is read here).
   * @example
   * const mem = LazyGuestMemory.openSync(bufferPages(image));
   */
  static openSync(source: PageSource, options: LazyGuestMemoryOptions = {}): LazyGuestMemory {
    const m = new LazyGuestMemory(source, options);
    if (m.policy.start) m.loadSync(m.policy.start(m.engine));
    return m;
  }

  private syncReader(): (first: number, count: number, dst: Uint8Array) => void {
    const f = this.source.readPagesIntoSync;
    if (!f) throw new VmkitError('INVALID_STATE', 'this page source reads asynchronously: use read/write, not readSync/writeSync');
    return f.bind(this.source);
  }

  // Places a run read from the source. A page whose load was taken over (a
  // synchronous access read it itself) or dropped (evicted) while the read was
  // in flight keeps what it has: the run's bytes for it are stale.
  private place(first: number, count: number, buf: Uint8Array, ticket: Ticket | undefined): void {
    for (let i = 0; i < count; i++) {
      const p = first + i;
      if (ticket && this.loading.get(p) !== ticket) continue;
      this.loading.delete(p);
      this.contents.set(p, buf.subarray(i * 4096, (i + 1) * 4096));
    }
    this.bytesRead += count * 4096;
    this.sourceReads++;
  }

  // A failed read leaves its pages absent again, so the next access retries.
  private unload(runs: Uint32Array, from: number): void {
    for (let i = from; i < runs.length; i += 2) this.engine.setResident(runs[i]!, runs[i + 1]!, false);
  }

  private loadSync(runs: Uint32Array): void {
    if (runs.length === 0) return;
    const read = this.syncReader();
    let i = 0;
    try {
      for (; i < runs.length; i += 2) {
        const buf = new Uint8Array(runs[i + 1]! * 4096);
        read(runs[i]!, runs[i + 1]!, buf);
        this.place(runs[i]!, runs[i + 1]!, buf, undefined);
      }
    } catch (e) {
      // Runs already placed stay: only the failed run and those after it go absent.
      this.unload(runs, i);
      throw e;
    }
  }

  /**
   * Starts reading `runs` (just marked resident by a fault) and records, for
   * every page in them, the ticket of its run: an access that finds a page
   * resident but still loading waits on that ticket instead of reading it
   * again, and a write waits for it before copying. The tickets are recorded
   * before this returns, so no other access can see such a page unclaimed.
   * Returns the runs' promises (they reject with the run's error; the
   * rejection is also handled here, so an unawaited prefetch run never
   * surfaces as an unhandled rejection).
   */
  private startLoad(runs: Uint32Array): Promise<void>[] {
    if (runs.length === 0) return [];
    // A remote checkpoint turns the runs into a few coalesced range requests, all in flight now.
    this.source.prefetchRuns?.(runs);
    // A source that stores pages in blocks (a checkpoint) reads one run at a
    // time: in a version 1 file runs sharing a block find it in the reader's
    // cache; in version 2 each run is one read of its records (synchronous
    // from a file), which reads in flight together would not speed up.
    // Others get every run's read in flight at once.
    const sequential = this.source.blockOf !== undefined;
    const all: Promise<void>[] = [];
    let prev: Promise<void> = DONE;
    for (let i = 0; i < runs.length; i += 2) {
      const first = runs[i]!;
      const count = runs[i + 1]!;
      const ticket: Ticket = { done: DONE };
      const after = prev;
      ticket.done = (async (): Promise<void> => {
        try {
          if (sequential) await after;
          const buf = new Uint8Array(count * 4096);
          await this.source.readPagesInto(first, count, buf);
          this.place(first, count, buf, ticket);
        } catch (e) {
          for (let p = first; p < first + count; p++) {
            if (this.loading.get(p) !== ticket) continue;
            this.loading.delete(p);
            this.engine.setResident(p, 1, false);
          }
          throw e;
        }
      })();
      ticket.done.catch(() => {});
      for (let p = first; p < first + count; p++) this.loading.set(p, ticket);
      all.push(ticket.done);
      prev = ticket.done;
    }
    return all;
  }

  private async load(runs: Uint32Array): Promise<void> {
    await Promise.all(this.startLoad(runs));
  }

  // One page an asynchronous access needs: the fault (counted, and the
  // policy's loads started), then the wait for the page's own run only (a
  // prefetched run that fails leaves its pages absent for the next access to
  // retry; it does not fail this one).
  private async need(page: number, vpn: bigint | undefined): Promise<void> {
    this.startLoad(this.fault(page, vpn));
    await this.settled(page);
  }

  // Waits until `page` is no longer being loaded. Rejects with the load's
  // error, unless the page got its contents another way meanwhile.
  private async settled(page: number): Promise<void> {
    for (let t = this.loading.get(page); t; t = this.loading.get(page)) {
      try {
        await t.done;
      } catch (e) {
        if (!this.contents.has(page) || this.loading.has(page)) throw e;
      }
    }
  }

  // Makes sure every page of an access is present right before its copy:
  // after the waits, a page may have been evicted (then it faults again).
  private async ready(pages: readonly number[], vpn: bigint | undefined): Promise<void> {
    for (;;) {
      const missing = pages.find((p) => !this.contents.has(p) || this.loading.has(p));
      if (missing === undefined) return;
      await this.need(missing, vpn);
    }
  }

  // The synchronous form of a wait: a page of this access that an
  // asynchronous access is still loading cannot be waited for here, so it is
  // read now (the one case a page is read twice), and the asynchronous load
  // leaves it alone when it completes.
  private presentSync(pages: readonly number[]): void {
    for (const p of pages) {
      if (this.contents.has(p) && !this.loading.has(p)) continue;
      if (!this.loading.has(p)) {
        this.loadSync(this.fault(p, undefined));
        if (this.contents.has(p)) continue;
      }
      const buf = new Uint8Array(4096);
      this.syncReader()(p, 1, buf);
      this.place(p, 1, buf, undefined);
    }
  }

  // The runs to read for an access to `ppn` (empty when resident).
  private fault(ppn: number, vpn: bigint | undefined): Uint32Array {
    const s = this.engine.access(ppn);
    if (s === 2) {
      if (this.busy > 0) return this.engine.faultList(EMPTY, ppn);
      this.busy++;
      try {
        return this.policy.onFault(this.engine, vpn, ppn);
      } finally {
        this.busy--;
      }
    }
    if (s === 1 && this.policy.onHit) {
      // A hit may issue more (asynchronous readahead): those runs are read like a fault's.
      if (this.busy > 0) return EMPTY;
      this.busy++;
      try {
        return this.policy.onHit(vpn, ppn, this.engine) || EMPTY;
      } finally {
        this.busy--;
      }
    }
    return EMPTY;
  }

  /**
   * Sets the translator for guest-virtual accesses and virtual prefetch:
   * typically an address space walking the guest's tables through this very
   * memory (their pages fault in alone, as a restore must load them too).
   * @example
   * const mem = await LazyGuestMemory.open(await imagePages('guest.mem'), { policy: createPolicy('virtual') });
   * mem.useTranslator(AddressSpace.create({ memory: mem, mode: 'x86-64', root: cr3 }));
   */
  useTranslator(t: Translator | undefined): void {
    this.translator = t;
    this.engine.setTranslator(t);
  }

  // The guest-physical range [at, at + len) checked; `at` back as a bigint
  // (a number or a wrong type never reaches the bigint arithmetic below).
  private checkRange(at: bigint, len: number): bigint {
    at = au64(at, 'at');
    if (at < 0n || at + BigInt(len) > this.size) throw new VmkitError('ARG_RANGE', `guest-physical range 0x${at.toString(16)}+${len} outside the guest (0x${this.size.toString(16)} bytes)`, { offset: at });
    return at;
  }

  private copy(at: bigint, buf: Uint8Array, write: boolean): void {
    let done = 0;
    while (done < buf.length) {
      const a = at + BigInt(done);
      const page = Number(a >> PAGE_SHIFT);
      const off = Number(a & 0xfffn);
      const n = Math.min(4096 - off, buf.length - done);
      const c = this.contents.get(page)!;
      if (write) c.set(buf.subarray(done, done + n), off);
      else buf.set(c.subarray(off, off + n), done);
      done += n;
    }
  }

  private pagesOf(at: bigint, len: number): number[] {
    if (len === 0) return [];
    const first = Number(at >> PAGE_SHIFT);
    const last = Number((at + BigInt(len) - 1n) >> PAGE_SHIFT);
    return Array.from({ length: last - first + 1 }, (_, i) => first + i);
  }

  /**
   * Reads guest-physical memory at `at` into `dst`, faulting absent pages in
   * synchronously (the source must have `readPagesIntoSync`).
   * @example
   * mem.readSync(gpa(0x1000), new Uint8Array(16));
   */
  readSync(at: Gpa, dst: Uint8Array): void {
    abytes(dst, 'dst');
    at = this.checkRange(at, dst.length) as Gpa;
    const pages = this.pagesOf(at, dst.length);
    for (const p of pages) this.loadSync(this.fault(p, undefined));
    this.presentSync(pages);
    this.copy(at, dst, false);
  }

  /**
   * Reads guest-physical memory, faulting absent pages in.
   * @example
   * await mem.read(gpa(0x1000), new Uint8Array(16));
   */
  async read(at: Gpa, dst: Uint8Array): Promise<void> {
    abytes(dst, 'dst');
    at = this.checkRange(at, dst.length) as Gpa;
    const pages = this.pagesOf(at, dst.length);
    for (const p of pages) await this.need(p, undefined);
    await this.ready(pages, undefined);
    this.copy(at, dst, false);
  }

  /**
   * Writes guest-physical memory (absent pages are faulted in first: a write
   * of part of a page keeps the rest).
   * @example
   * mem.writeSync(gpa(0x1000), new Uint8Array([1, 2, 3]));
   */
  writeSync(at: Gpa, src: Uint8Array): void {
    abytes(src, 'src');
    at = this.checkRange(at, src.length) as Gpa;
    const pages = this.pagesOf(at, src.length);
    for (const p of pages) this.loadSync(this.fault(p, undefined));
    this.presentSync(pages);
    this.copy(at, src, true);
  }

  /**
   * Writes guest-physical memory, faulting absent pages in.
   * @example
   * await mem.write(gpa(0x1000), new Uint8Array([1, 2, 3]));
   */
  async write(at: Gpa, src: Uint8Array): Promise<void> {
    abytes(src, 'src');
    at = this.checkRange(at, src.length) as Gpa;
    const pages = this.pagesOf(at, src.length);
    for (const p of pages) await this.need(p, undefined);
    await this.ready(pages, undefined);
    this.copy(at, src, true);
  }

  // Guest-virtual access: page by page through the translator (an access may
  // cross into a page mapped anywhere).
  private virtualPieces(at: Gva, len: number): { gpa: bigint; vpn: bigint; off: number; n: number }[] {
    const t = this.translator;
    if (!t) throw new VmkitError('INVALID_STATE', 'guest-virtual access needs a translator (an address space)');
    at = au64(at, 'at') as Gva;
    const pieces: { gpa: bigint; vpn: bigint; off: number; n: number }[] = [];
    let done = 0;
    const gvas = new BigUint64Array(1);
    const out = new BigUint64Array(1);
    while (done < len) {
      const a = at + BigInt(done);
      const n = Math.min(4096 - Number(a & 0xfffn), len - done);
      gvas[0] = a;
      this.busy++;
      try {
        t.translateInto(gvas, out);
      } finally {
        this.busy--;
      }
      const pa = out[0]!;
      if (pa === UNMAPPED) throw new VmkitError('ARG_RANGE', `guest-virtual address 0x${a.toString(16)} is unmapped`, { offset: a });
      this.checkRange(pa, n);
      pieces.push({ gpa: pa, vpn: a >> PAGE_SHIFT, off: done, n });
      done += n;
    }
    return pieces;
  }

  /**
   * Reads at a guest-virtual address through the translator; the policy
   * sees the faulting virtual page.
   * @example
   * await mem.readVirtual(gva(0xffff_8880_0000_1000n), new Uint8Array(64));
   */
  async readVirtual(at: Gva, dst: Uint8Array): Promise<void> {
    abytes(dst, 'dst');
    for (const p of this.virtualPieces(at, dst.length)) {
      const page = Number(p.gpa >> PAGE_SHIFT);
      await this.need(page, p.vpn);
      await this.ready([page], p.vpn);
      this.copy(p.gpa, dst.subarray(p.off, p.off + p.n), false);
    }
  }

  /**
   * Synchronous {@link readVirtual}.
   * @example
   * mem.readVirtualSync(gva(0x400000n), new Uint8Array(64));
   */
  readVirtualSync(at: Gva, dst: Uint8Array): void {
    abytes(dst, 'dst');
    for (const p of this.virtualPieces(at, dst.length)) {
      const page = Number(p.gpa >> PAGE_SHIFT);
      this.loadSync(this.fault(page, p.vpn));
      this.presentSync([page]);
      this.copy(p.gpa, dst.subarray(p.off, p.off + p.n), false);
    }
  }

  /**
   * Writes at a guest-virtual address through the translator.
   * @example
   * await mem.writeVirtual(gva(0x400000n), new Uint8Array([0x90]));
   */
  async writeVirtual(at: Gva, src: Uint8Array): Promise<void> {
    abytes(src, 'src');
    for (const p of this.virtualPieces(at, src.length)) {
      const page = Number(p.gpa >> PAGE_SHIFT);
      await this.need(page, p.vpn);
      await this.ready([page], p.vpn);
      this.copy(p.gpa, src.subarray(p.off, p.off + p.n), true);
    }
  }

  /** True when guest page `page` is resident. @example mem.isResident(5); */
  isResident(page: number): boolean {
    return this.engine.isResident(page);
  }

  /** Resident pages. @example mem.residentCount(); */
  residentCount(): number {
    return this.engine.residentCount();
  }

  /**
   * Drops resident pages [first, first + count) (their contents are
   * discarded; writes to them are lost unless saved first).
   * @example mem.evict(0, 16);
   */
  evict(first: number, count: number): void {
    aindex(first, 'first', this.pages + 1);
    aindex(count, 'count', this.pages - first + 1);
    this.engine.setResident(first, count, false);
    // A load in flight for these pages no longer places them (see place()).
    for (let p = first; p < first + count; p++) {
      this.contents.delete(p);
      this.loading.delete(p);
    }
  }

  /** Counters so far. @example const { faults, bytesRead } = mem.stats(); */
  stats(): LazyMemoryStats {
    return { ...this.engine.stats(), bytesRead: this.bytesRead, sourceReads: this.sourceReads };
  }

  /** Releases the core's state. @example mem.close(); */
  close(): void {
    this.engine.close();
    this.contents.clear();
    this.loading.clear();
  }
}

const EMPTY = new Uint32Array(0);
const DONE: Promise<void> = Promise.resolve();

// The load of one run: settles when the run is placed (or failed).
interface Ticket {
  done: Promise<void>;
}
