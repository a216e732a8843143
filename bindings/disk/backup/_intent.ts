/**
 * The write-intent bitmap that makes a consolidation resumable where it
 * stopped (md-raid's write-intent bitmap, applied to a mirror). The state
 * record holds a cursor — every planned copy below it is done and flushed on
 * both sides — and a coarse bitmap of regions that may hold a guest write the
 * target lacks. Invariant, at every instant: a guest write below the
 * persisted cursor that is not yet flushed on both sides lies in a region
 * whose bit is persisted. A resumed pass then copies [cursor, end) plus the
 * marked regions below it, and nothing else is needed.
 *
 * Cost: a guest write below the cursor into a region not marked yet waits
 * for one record write (group-committed); checkpoints (flush both sides,
 * advance the cursor, clear the bits of settled regions) run every second.
 * @module
 */

/** How the bitmap is persisted: the cursor and the marked regions. */
export type PersistIntent = (cursor: number, granule: number, bits: Uint8Array) => Promise<void>;

/** Bitmap to base64 (browser and Node). */
export function bitsToBase64(bits: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bits.length; i += 0x8000) s += String.fromCharCode(...bits.subarray(i, i + 0x8000));
  return btoa(s);
}

/** Base64 to bitmap; undefined when malformed or of the wrong length. */
export function base64ToBits(text: string, length: number): Uint8Array | undefined {
  try {
    const s = atob(text);
    if (s.length !== length) return undefined;
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i++) out[i] = s.charCodeAt(i);
    return out;
  } catch {
    return undefined;
  }
}

/** Region size for a disk: at least 64 KiB (a qcow2 cluster), and at most 65536 regions. */
export function intentGranule(size: number): number {
  let g = 65536;
  while (size / g > 65536) g *= 2;
  return g;
}

/** Tracks guest writes against the persisted cursor and bitmap. */
export class WriteIntent {
  readonly granule: number;
  private readonly nbits: number;
  private persistedCursor: number;
  private persisted: Uint8Array;
  private readonly inflight = new Map<number, number>();
  private recent: Set<number> | undefined;
  private saving: Promise<void> | undefined;
  private readonly persist: PersistIntent;
  private readonly flushBoth: () => Promise<void>;
  /** Record writes made for guest writes (not checkpoints). */
  syncSaves = 0;
  /** Checkpoints made. */
  checkpoints = 0;

  constructor(size: number, persist: PersistIntent, flushBoth: () => Promise<void>, cursor = 0, bits?: Uint8Array) {
    this.granule = intentGranule(size);
    this.nbits = Math.ceil(size / this.granule);
    this.persist = persist;
    this.flushBoth = flushBoth;
    this.persistedCursor = cursor;
    this.persisted = bits ?? new Uint8Array(Math.ceil(this.nbits / 8));
  }

  /** Bytes of the bitmap. */
  get bytes(): number {
    return this.persisted.length;
  }

  private regions(start: number, end: number): number[] {
    const out: number[] = [];
    for (let r = Math.floor(start / this.granule); r * this.granule < end; r++) out.push(r);
    return out;
  }

  private has(bits: Uint8Array, r: number): boolean {
    return (bits[r >> 3]! & (1 << (r & 7))) !== 0;
  }

  private bitsOf(sets: Iterable<number>[], base?: Uint8Array): Uint8Array {
    const b = base ? base.slice() : new Uint8Array(this.persisted.length);
    for (const s of sets) for (const r of s) b[r >> 3]! |= 1 << (r & 7);
    return b;
  }

  private save(cursor: number, bits: Uint8Array): Promise<void> {
    const p = (async () => {
      await this.persist(cursor, this.granule, bits);
      this.persistedCursor = cursor;
      this.persisted = bits;
    })();
    // The caller gets `p` (and its error); the bookkeeping copy never rejects, so a failed
    // write is reported once, through the job, not again as an unhandled rejection.
    const q: Promise<void> = p.then(
      () => this.done(q),
      () => this.done(q),
    );
    this.saving = q;
    return p;
  }

  private done(q: Promise<void>): void {
    if (this.saving === q) this.saving = undefined;
  }

  /** Waits until no record write is in flight. */
  async settle(): Promise<void> {
    for (let s = this.saving; s; s = this.saving) await s.catch(() => {});
  }

  /** Before a guest write reaches the source: waits until it is covered. */
  async before(start: number, end: number): Promise<void> {
    const rs = this.regions(start, end);
    for (const r of rs) {
      this.inflight.set(r, (this.inflight.get(r) ?? 0) + 1);
      this.recent?.add(r);
    }
    for (;;) {
      if (this.saving) {
        await this.saving.catch(() => {});
        continue;
      }
      // At or above the cursor the resumed pass visits it anyway.
      if (start >= this.persistedCursor) return;
      if (rs.every((r) => this.has(this.persisted, r))) return;
      await this.save(this.persistedCursor, this.bitsOf([this.inflight.keys()], this.persisted));
      this.syncSaves++;
    }
  }

  /** After the guest write completed on both sides (or failed). */
  after(start: number, end: number): void {
    for (const r of this.regions(start, end)) {
      const n = (this.inflight.get(r) ?? 1) - 1;
      if (n <= 0) this.inflight.delete(r);
      else this.inflight.set(r, n);
    }
  }

  /**
   * Advances the persisted cursor to `cursor` (every planned copy below it
   * has completed): flushes both sides, then keeps only the bits of regions
   * whose writes may not be flushed yet.
   */
  async checkpoint(cursor: number): Promise<void> {
    await this.settle();
    const pending = [...this.inflight.keys()];
    this.recent = new Set();
    try {
      await this.flushBoth();
    } catch (e) {
      this.recent = undefined;
      throw e;
    }
    await this.settle();
    // Synchronously from here to save(): no guest write slips between.
    const bits = this.bitsOf([pending, this.recent, this.inflight.keys()]);
    this.recent = undefined;
    this.checkpoints++;
    await this.save(Math.max(cursor, 0), bits);
  }
}
