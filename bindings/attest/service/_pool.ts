/**
 * The attestation service's pool of appraisal workers (child processes on
 * Linux, worker threads elsewhere; one per core but one by default): a large
 * request's body is streamed to an idle worker, which parses it and verifies
 * its IMA log off the event loop (_appraise-worker.ts). One job per worker at
 * a time; jobs beyond the workers wait in order (the service bounds how many
 * with `maxLargeInFlight`). A worker that dies fails its job (`IO`: the
 * request is answered 500) and is replaced.
 *
 * ```
 * service process (its session, autogroup A)     worker process (own session: autogroup B, nice +10)
 *  event loop ── start / chunk / end / go / abort ──► IPC (advanced serialization) ──► job
 *             ◄──────────── nonce / done (columns) / error ───────────────────────────
 * the kernel shares the CPU between autogroups first: B's weight is a tenth of A's,
 * so A's event loop is run first when it wakes, whatever B's threads (GC included) do
 * ```
 * @module
 */
import { fork } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { VmkitError, type ErrorCode } from '../../errors.js';
import type { _JobOptions } from './_appraise-worker.js';
import type { _Packed } from './_packed.js';

type Reply = { t: 'nonce'; job: number; nonce: string } | { t: 'done'; job: number; packed: _Packed } | { t: 'error'; job: number; code: ErrorCode; message: string };

/** A worker thread or a child process, as the pool talks to it. */
interface Channel {
  /** A child process's id. */
  pid?: number;
  post(m: unknown, transfer?: ArrayBuffer[]): void;
  kill(): Promise<void>;
}

interface Slot {
  worker: Channel;
  job?: PoolJob;
}

/**
 * Where large requests are appraised: `threads` (node:worker_threads, each at
 * a lower nice value than the loop, and giving way to small requests at
 * checkpoints, _turns.ts) or `processes` (child processes in a session of
 * their own, so Linux's scheduler puts each in an autogroup of its own, at
 * the pool's nice value: the kernel then runs them, and their garbage
 * collector's threads, mostly on CPU time the service's own group does not
 * want).
 */
export type PoolKind = 'threads' | 'processes';

/** One request's work on one worker (queued until a worker is free). @internal */
export class PoolJob {
  private slot: Slot | undefined;
  private readonly id: number;
  private readonly queued: { m: unknown; transfer: ArrayBuffer[] }[] = [];
  private waiting?: { resolve: (v: never) => void; reject: (e: unknown) => void };
  private done = false;
  /** Why it failed while nothing waited for it (its worker died during the upload): the next wait gets it. */
  private failed?: unknown;
  private readonly release: () => void;

  constructor(id: number, opts: _JobOptions, release: () => void) {
    this.id = id;
    this.release = release;
    this.post({ t: 'start', job: id, opts });
  }

  /** @internal The worker it runs on, from now: what was queued for it is sent. */
  _assign(slot: Slot): void {
    this.slot = slot;
    for (const q of this.queued) slot.worker.post(q.m, q.transfer);
    this.queued.length = 0;
  }

  /** True once it has a worker. */
  get running(): boolean {
    return this.slot !== undefined;
  }

  private post(m: unknown, transfer: ArrayBuffer[] = []): void {
    if (this.slot) this.slot.worker.post(m, transfer);
    else this.queued.push({ m, transfer });
  }

  /**
   * Sends a chunk of the body, transferred: a chunk that is its whole
   * ArrayBuffer (node:http copies each body chunk into one of its own) moves
   * as it is; a view of a shared buffer is copied first.
   */
  push(c: Uint8Array): void {
    if (this.done) return;
    const own = c.byteOffset === 0 && c.byteLength === c.buffer.byteLength && c.buffer instanceof ArrayBuffer ? c : new Uint8Array(c);
    this.post({ t: 'chunk', job: this.id, data: own }, [own.buffer as ArrayBuffer]);
  }

  private wait<T>(): Promise<T> {
    if (this.failed !== undefined) return Promise.reject(this.failed);
    return new Promise<T>((resolve, reject) => (this.waiting = { resolve: resolve as (v: never) => void, reject }));
  }

  /** The body is complete: resolves to the request's nonce once the worker parsed and validated it. */
  end(): Promise<string> {
    const p = this.wait<string>();
    this.post({ t: 'end', job: this.id });
    return p;
  }

  /** The nonce was accepted: resolves to the verified evidence. */
  go(): Promise<_Packed> {
    const p = this.wait<_Packed>();
    this.post({ t: 'go', job: this.id });
    return p;
  }

  /** Drops the job (a refused nonce, a failed read); the worker is free again. */
  abort(): void {
    if (this.done) return;
    if (this.slot) this.slot.worker.post({ t: 'abort', job: this.id });
    this.queued.length = 0;
    this.finish();
  }

  /** @internal */
  _reply(m: Reply): void {
    const w = this.waiting;
    this.waiting = undefined;
    if (m.t === 'error') {
      this.finish();
      const e = new VmkitError(m.code, m.message);
      if (w) w.reject(e);
      else this.failed = e;
    } else if (m.t === 'nonce') w?.resolve(m.nonce as never);
    else {
      this.finish();
      w?.resolve(m.packed as never);
    }
  }

  /** @internal */
  _fail(e: unknown): void {
    const w = this.waiting;
    this.waiting = undefined;
    this.finish();
    if (w) w.reject(e);
    else this.failed ??= e;
  }

  private finish(): void {
    if (this.done) return;
    this.done = true;
    this.release();
  }
}

/**
 * The worker pool. `undefined` from {@link AppraisePool.open} when the worker
 * script is not there (the service then appraises on its own thread, in slices).
 * @internal
 */
export class AppraisePool {
  private readonly slots: Slot[] = [];
  private readonly waiting: PoolJob[] = [];
  private readonly url: URL;
  private next = 1;
  private closed = false;

  private readonly nice: number;
  private readonly small: Int32Array | undefined;
  /** Threads or processes. */
  readonly kind: PoolKind;

  private constructor(size: number, url: URL, nice: number, small: Int32Array | undefined, kind: PoolKind) {
    this.url = url;
    this.nice = nice;
    this.small = small;
    this.kind = kind;
    for (let i = 0; i < size; i++) this.slots.push(this.spawn());
  }

  /**
   * A pool of `size` workers, or undefined when the worker script is missing (sources run by a
   * TS loader). `small`: the flag of small requests in flight (_turns.ts) the workers give way to.
   */
  static open(size: number, nice: number = 10, small?: Int32Array, kind: PoolKind = 'threads'): AppraisePool | undefined {
    const url = new URL('./_appraise-worker.js', import.meta.url);
    if (url.protocol !== 'file:' || !existsSync(fileURLToPath(url))) return undefined;
    return new AppraisePool(size, url, nice, small, kind);
  }

  get size(): number {
    return this.slots.length;
  }

  /** The child processes' ids (a `processes` pool). @internal */
  get _pids(): number[] {
    return this.slots.flatMap((s) => (s.worker.pid !== undefined ? [s.worker.pid] : []));
  }

  /** Workers with a job. */
  get busy(): number {
    return this.slots.filter((s) => s.job).length;
  }

  private spawn(): Slot {
    const slot = {} as Slot;
    const died = (e: unknown): void => {
      const job = slot.job;
      slot.job = undefined;
      job?._fail(e instanceof VmkitError ? e : new VmkitError('IO', `appraisal worker failed: ${(e as Error)?.message ?? e}`));
      if (this.closed) return;
      // A replacement, so one crash does not shrink the pool.
      const i = this.slots.indexOf(slot);
      if (i >= 0) this.slots[i] = this.spawn();
      this.dispatch();
    };
    const reply = (m: Reply): void => slot.job?._reply(m);
    if (this.kind === 'processes') {
      // Its own session (detached: setsid), hence its own autogroup; its nice value is set by
      // the child itself (_appraise-worker.ts). The same young generation as a thread's below.
      const child = fork(fileURLToPath(this.url), [], {
        detached: true,
        serialization: 'advanced',
        stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
        execArgv: ['--max-semi-space-size=32'],
        env: { ...process.env, VMKIT_APPRAISE_CHILD: JSON.stringify({ nice: this.nice }) },
      });
      child.unref();
      (child.channel as { unref?: () => void } | undefined)?.unref?.();
      child.on('message', reply);
      child.on('error', died);
      child.on('exit', (code, signal) => {
        if (!this.closed) died(new Error(`exited with ${signal ?? `code ${code}`}`));
      });
      slot.worker = {
        ...(child.pid !== undefined ? { pid: child.pid } : {}),
        post: (m) => {
          if (child.connected) child.send(m as object);
        },
        kill: async () => {
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
        },
      };
      return slot;
    }
    // A young generation of 96 MiB (semi-spaces of 32 MiB, twice V8's default): a 16 MiB log
    // allocates a few hundred MiB of short-lived strings and arrays, and half as many
    // scavenges halve the collector's work on V8's helper threads, which are not niced.
    const w = new Worker(this.url, { workerData: { nice: this.nice, small: this.small }, resourceLimits: { maxYoungGenerationSizeMb: 96 } });
    w.unref();
    w.on('message', reply);
    w.on('error', died);
    w.on('exit', (code) => {
      if (!this.closed) died(new Error(`exited with code ${code}`));
    });
    slot.worker = {
      post: (m, transfer) => w.postMessage(m, transfer ?? []),
      kill: async () => void (await w.terminate()),
    };
    return slot;
  }

  /** Jobs waiting for a worker. */
  get queued(): number {
    return this.waiting.length;
  }

  /** A job: on an idle worker now, or queued for the next one free. Undefined once closed. */
  start(opts: _JobOptions): PoolJob | undefined {
    if (this.closed) return undefined;
    const job: PoolJob = new PoolJob(this.next++, opts, () => {
      const q = this.waiting.indexOf(job);
      if (q >= 0) this.waiting.splice(q, 1);
      const slot = this.slots.find((s) => s.job === job);
      if (slot) {
        slot.job = undefined;
        this.dispatch();
      }
    });
    this.waiting.push(job);
    this.dispatch();
    return job;
  }

  private dispatch(): void {
    for (const slot of this.slots) {
      if (slot.job) continue;
      const job = this.waiting.shift();
      if (!job) return;
      slot.job = job;
      job._assign(slot);
    }
  }

  /** Ends every worker. */
  async close(): Promise<void> {
    this.closed = true;
    const ws = this.slots.map((s) => s.worker);
    for (const s of this.slots) s.job?._fail(new VmkitError('CANCELLED', 'the service is shutting down'));
    for (const j of this.waiting.splice(0)) j._fail(new VmkitError('CANCELLED', 'the service is shutting down'));
    await Promise.all(ws.map((w) => w.kill()));
  }
}
