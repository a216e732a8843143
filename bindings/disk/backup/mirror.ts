/**
 * The mirror driver: sits in front of the active chain during a
 * consolidation. Guest writes go to the source (the active chain) and then
 * to the target, and complete only once both have them (write-blocking, like
 * QEMU's `copy-mode: write-blocking`). The copy pass runs through the same
 * driver, so the two are ordered by one range lock: a copy never reads a
 * range while a guest write to it is between source and target, and it skips
 * every byte the mirror has written since the job began — so a mirrored range
 * is never overwritten with older data.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { RangeLock, RangeSet } from './_ranges.js';
import { leadsWithData, subtractRanges, zeroRuns, type PlanOp } from './_plan.js';
import type { BlockExtent } from '../device.js';
import type { BackupDevice } from './_types.js';
import { _MMAP_HEAD } from '../backends/storage.js';

/** Where a pooled copy buffer's view starts in its ArrayBuffer: on a page boundary (see takeBuffer). */
const _POOL_OFFSET = 4096 - _MMAP_HEAD;

/** Counters the driver keeps; the job reports them as progress. */
export interface MirrorStats {
  /** Bytes the pass copied as data. */
  copiedBytes: number;
  /** Bytes the pass wrote as zeroes (zero runs and zero clusters). */
  zeroedBytes: number;
  /** Bytes the pass skipped because the mirror had already written them. */
  skippedBytes: number;
  /** Bytes of guest writes the mirror driver forwarded to the target. */
  mirroredBytes: number;
  /** Guest writes forwarded. */
  mirroredWrites: number;
  /** Bytes the pass wrote to a range it had already written (0: a single pass). */
  recopiedBytes: number;
}

/** Options of a {@link MirrorDriver}. */
export interface MirrorOptions {
  /**
   * Lock granularity in bytes (default 65536, the qcow2 cluster): operations
   * on the same cluster are ordered, so a format never sees two allocating
   * writes to one cluster at once.
   */
  granule?: number;
  /** Zero detection granularity for copies (default 4096). */
  zeroGranule?: number;
  /** True when the target reads as zero wherever it was not written (a fresh image with no backing): zero runs are then skipped. */
  targetZeroed?: boolean;
  /** Wraps each target write (the job's error policy). */
  policy?: <T>(what: string, fn: () => Promise<T>) => Promise<T>;
  /** Told when a target write fails for good; the driver stops mirroring. */
  onTargetError?: (e: unknown) => void;
  /**
   * The job's write-intent tracking: `before` resolves once the write may go
   * (its region is recorded as possibly unsynced when that is needed),
   * `after` is told when it finished on both sides.
   */
  intent?: { before(start: number, end: number): Promise<void>; after(start: number, end: number): void };
  /**
   * Reads the top layer's file at a host offset: copy ops that carry one
   * (plans from the layer's L2 tables) read their data with it, in one request
   * per op, instead of through the chain. Its clusters never move while the
   * job runs except through a guest write, whose range the mirror has then
   * written and the copy skips.
   */
  readHost?: (host: number, dst: Uint8Array) => Promise<void>;
}

/**
 * Write-blocking mirror from `source` to `target`.
 *
 * @example
 * ```ts
 * const m = new MirrorDriver(delta, base);
 * await m.write(0, data);                 // in delta and in base when it resolves
 * await m.copy({ offset: 0, length: 65536, zero: false });
 * ```
 */
export class MirrorDriver implements BackupDevice {
  readonly source: BackupDevice;
  readonly target: BackupDevice;
  /** Ranges guest writes have reached the target with, since the job began. */
  readonly mirrored: RangeSet = new RangeSet();
  /** Ranges the copy pass has written. */
  readonly copied: RangeSet = new RangeSet();
  readonly stats: MirrorStats = { copiedBytes: 0, zeroedBytes: 0, skippedBytes: 0, mirroredBytes: 0, mirroredWrites: 0, recopiedBytes: 0 };
  private readonly lock = new RangeLock();
  private readonly granule: number;
  private readonly zeroGranule: number;
  private readonly targetZeroed: boolean;
  private readonly policy: <T>(what: string, fn: () => Promise<T>) => Promise<T>;
  private readonly onTargetError: (e: unknown) => void;
  private readonly intent: MirrorOptions['intent'];
  private readonly readHost: MirrorOptions['readHost'];
  private mirroring = true;
  private error: unknown;

  constructor(source: BackupDevice, target: BackupDevice, opts: MirrorOptions = {}) {
    if (target.size < source.size) {
      throw new VmkitError('ARG_RANGE', `mirror target (${target.size} bytes) is smaller than the source (${source.size} bytes)`);
    }
    this.source = source;
    this.target = target;
    this.granule = opts.granule ?? 65536;
    this.zeroGranule = opts.zeroGranule ?? 4096;
    this.targetZeroed = opts.targetZeroed ?? false;
    this.policy = opts.policy ?? ((_w, fn) => fn());
    this.onTargetError = opts.onTargetError ?? (() => {});
    this.intent = opts.intent;
    this.readHost = opts.readHost;
  }

  get size(): number {
    return this.source.size;
  }
  get alignment(): number {
    return this.source.alignment;
  }
  /** False once the driver stopped mirroring (detached, or the target failed). */
  get active(): boolean {
    return this.mirroring;
  }
  /** The target error that stopped the mirror, if any. */
  get targetError(): unknown {
    return this.error;
  }

  private span(offset: number, length: number): [number, number] {
    const g = this.granule;
    return [Math.floor(offset / g) * g, Math.ceil((offset + length) / g) * g];
  }

  private failTarget(e: unknown): void {
    if (!this.mirroring) return;
    this.mirroring = false;
    this.error = e;
    this.onTargetError(e);
  }

  private async guestWrite(offset: number, length: number, src: () => Promise<void>, tgt: () => Promise<void>): Promise<void> {
    const [s, e] = this.span(offset, length);
    const release = await this.lock.acquire(s, e);
    const intent = this.mirroring ? this.intent : undefined;
    try {
      if (intent) {
        try {
          await intent.before(offset, offset + length);
        } catch (err) {
          this.failTarget(err); // the job can no longer promise a resumable state
        }
      }
      // Source first: if the process dies between the two, the target never
      // holds data the source lacks, and the source is the truth until pivot.
      await src();
      if (!this.mirroring) return;
      try {
        await this.policy(`mirror write at ${offset}`, tgt);
      } catch (err) {
        this.failTarget(err);
        return;
      }
      this.mirrored.add(offset, offset + length);
      this.stats.mirroredBytes += length;
      this.stats.mirroredWrites++;
    } finally {
      intent?.after(offset, offset + length);
      release();
    }
  }

  /**
   * Guest write: resolves once both source and target have the data.
   *
   * @example
   * ```ts
   * await m.write(0, data); // resolves once delta and base both hold it
   * ```
   */
  write(offset: number, data: Uint8Array): Promise<void> {
    return this.guestWrite(offset, data.length, () => this.source.write(offset, data), () => this.target.write(offset, data));
  }

  /**
   * Guest zero write, mirrored the same way.
   *
   * @example
   * ```ts
   * await m.writeZeroes(0, 65536);
   * ```
   */
  writeZeroes(offset: number, length: number): Promise<void> {
    return this.guestWrite(
      offset,
      length,
      () => zeroes(this.source, offset, length),
      () => zeroes(this.target, offset, length),
    );
  }

  /**
   * Guest read, from the source.
   *
   * @example
   * ```ts
   * const d = await m.read(0, 4096); // from the source
   * ```
   */
  read(offset: number, length: number): Promise<Uint8Array> {
    return this.source.read(offset, length);
  }
  /**
   * Block status of the source.
   *
   * @example
   * ```ts
   * const e = await m.blockStatus(0, 1 << 20); // the source's status
   * ```
   */
  blockStatus(offset: number, length: number): Promise<BlockExtent> {
    return this.source.blockStatus(offset, length);
  }
  /**
   * Flushes the source, and the target while mirroring.
   *
   * @example
   * ```ts
   * await m.flush(); // source, and target while mirroring
   * ```
   */
  async flush(): Promise<void> {
    await this.source.flush();
    if (this.mirroring) await this.target.flush();
  }
  /**
   * The driver does not own its devices: close them yourself.
   *
   * @example
   * ```ts
   * await m.close();
   * await delta.close(); await base.close(); // the caller's devices
   * ```
   */
  async close(): Promise<void> {}

  /**
   * Stops mirroring: later guest writes go to the source only.
   *
   * @example
   * ```ts
   * m.detach(); // after the pivot: writes go to the source only
   * ```
   */
  detach(): void {
    this.mirroring = false;
  }

  /**
   * Waits until every operation that is in flight now has finished.
   *
   * @example
   * ```ts
   * m.detach();
   * await m.drain(); // no mirrored write in flight any more
   * ```
   */
  drain(): Promise<void> {
    return this.lock.drain();
  }

  /**
   * Forgets mirrored ranges below `offset`: the pass will not visit them again.
   *
   * @example
   * ```ts
   * m.forgetBelow(cursor); // the pass is past `cursor`
   * ```
   */
  forgetBelow(offset: number): void {
    this.mirrored.dropBelow(offset);
  }

  /**
   * One step of the copy pass: copies `op` from source to target, minus what
   * the mirror already wrote, with zero runs written as zeroes (or skipped on
   * a zeroed target). Ordered against guest writes by the range lock.
   *
   * @example
   * ```ts
   * await m.copy({ offset: 0, length: 1 << 20, zero: false });
   * await m.copy({ offset: 1 << 20, length: 1 << 20, zero: true }); // a zero run
   * ```
   */
  async copy(op: PlanOp): Promise<void> {
    if (!this.mirroring) throw new VmkitError('INVALID_STATE', 'the mirror is detached', { cause: this.error });
    const end = op.offset + op.length;
    const [s, e] = this.span(op.offset, op.length);
    const release = await this.lock.acquire(s, e);
    try {
      const parts = subtractRanges(op.offset, op.length, this.mirrored.overlapping(op.offset, end));
      let kept = 0;
      for (const [ps, pe] of parts) {
        kept += pe - ps;
        if (op.zero) {
          if (!this.targetZeroed) await this.policy(`zero at ${ps}`, () => zeroes(this.target, ps, pe - ps));
          this.stats.zeroedBytes += pe - ps;
        } else {
          const n = pe - ps;
          const src = this.source;
          const readHost = op.host !== undefined || op.segments ? this.readHost : undefined;
          const host = (op.host ?? 0) + (ps - op.offset);
          const segments = op.segments;
          // A pooled buffer when the source reads into one: fresh megabyte buffers per step
          // cost more (zeroing, page faults, GC) than the copy itself.
          const pooled = src.readInto || readHost ? this.takeBuffer(n) : undefined;
          const buf = pooled ?? (await this.policy(`read at ${ps}`, () => src.read(ps, n)));
          try {
            if (pooled && readHost && segments) {
              // Guest-contiguous, stored apart: each segment from its place, into its place.
              for (const g of segments) {
                const a = Math.max(ps, g.offset);
                const b = Math.min(pe, g.offset + g.length);
                if (b > a) await this.policy('read', () => readHost(g.host + (a - g.offset), pooled.subarray(a - ps, b - ps)));
              }
            } else if (pooled && readHost) await this.policy(`read at ${ps}`, () => readHost(host, pooled));
            else if (pooled) await this.policy(`read at ${ps}`, () => src.readInto!(ps, pooled));
            await this.copyRuns(ps, buf);
          } finally {
            if (pooled) this.pool.push(pooled.buffer as ArrayBuffer);
          }
        }
        for (const [os, oe] of this.copied.overlapping(ps, pe)) this.stats.recopiedBytes += oe - os;
        this.copied.add(ps, pe);
      }
      this.stats.skippedBytes += op.length - kept;
    } finally {
      release();
    }
  }

  private readonly pool: ArrayBuffer[] = [];

  private takeBuffer(n: number): Uint8Array {
    for (let i = this.pool.length - 1; i >= 0; i--) {
      const b = this.pool[i]!;
      if (b.byteLength - _POOL_OFFSET >= n) {
        this.pool.splice(i, 1);
        return new Uint8Array(b, _POOL_OFFSET, n);
      }
    }
    // At least 1 MiB, so glibc maps it itself and its data starts _MMAP_HEAD bytes past a page:
    // the view at _POOL_OFFSET starts on one, where page-cache reads into it run at full speed
    // (backends/file.ts: a buffer a few bytes past the page cache modulo 4 KiB slows the
    // kernel's copy ~5x, or costs a bounce through an aligned slot).
    return new Uint8Array(new ArrayBuffer(Math.max(n, 1 << 20) + _POOL_OFFSET), _POOL_OFFSET, n);
  }

  /** Writes `buf` (read from the source at `ps`) to the target: zero runs as zeroes, the rest as data. */
  private async copyRuns(ps: number, buf: Uint8Array): Promise<void> {
    if (leadsWithData(buf, this.zeroGranule)) {
      // The common case (no granule of the buffer can be all zero): one write, no run list.
      await this.policy('copy', () => this.target.write(ps, buf));
      this.stats.copiedBytes += buf.length;
      return;
    }
    for (const run of zeroRuns(buf, this.zeroGranule)) {
      const at = ps + run.offset;
      if (run.zero) {
        if (!this.targetZeroed) await this.policy(`zero at ${at}`, () => zeroes(this.target, at, run.length));
        this.stats.zeroedBytes += run.length;
      } else {
        const piece = buf.subarray(run.offset, run.offset + run.length);
        await this.policy(`copy at ${at}`, () => this.target.write(at, piece));
        this.stats.copiedBytes += run.length;
      }
    }
  }
}

/** Writes zeroes through writeZeroes when the device has it. */
export async function zeroes(dev: BackupDevice, offset: number, length: number): Promise<void> {
  if (dev.writeZeroes) return dev.writeZeroes(offset, length);
  const z = new Uint8Array(Math.min(length, 1 << 20));
  for (let o = 0; o < length; o += z.length) {
    const n = Math.min(z.length, length - o);
    await dev.write(offset + o, n === z.length ? z : z.subarray(0, n));
  }
}
