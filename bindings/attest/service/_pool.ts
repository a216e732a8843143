/**
 * The attestation service's pool of appraisal workers (Node worker_threads,
 * one per core by default): a large request's body is streamed to an idle
 * worker, which parses it and verifies its IMA log off the event loop
 * (_appraise-worker.ts). One job per worker at a time; with every worker busy
 * `start` returns undefined and the service answers 503.
 * @module
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { VmkitError, type ErrorCode } from '../../errors.js';
import type { _JobOptions } from './_appraise-worker.js';
import type { _Packed } from './_packed.js';

type Reply = { t: 'nonce'; job: number; nonce: string } | { t: 'done'; job: number; packed: _Packed } | { t: 'error'; job: number; code: ErrorCode; message: string };

interface Slot {
  worker: Worker;
  job?: PoolJob;
}

/** One request's work on one worker. @internal */
export class PoolJob {
  private readonly slot: Slot;
  private readonly id: number;
  private waiting?: { resolve: (v: never) => void; reject: (e: unknown) => void };
  private done = false;
  private readonly release: () => void;

  constructor(slot: Slot, id: number, opts: _JobOptions, release: () => void) {
    this.slot = slot;
    this.id = id;
    this.release = release;
    slot.worker.postMessage({ t: 'start', job: id, opts });
  }

  /** Sends a chunk of the body (copied into a buffer of its own and transferred). */
  push(c: Uint8Array): void {
    if (this.done) return;
    const own = new Uint8Array(c.length);
    own.set(c);
    this.slot.worker.postMessage({ t: 'chunk', job: this.id, data: own }, [own.buffer]);
  }

  private wait<T>(): Promise<T> {
    return new Promise<T>((resolve, reject) => (this.waiting = { resolve: resolve as (v: never) => void, reject }));
  }

  /** The body is complete: resolves to the request's nonce once the worker parsed and validated it. */
  end(): Promise<string> {
    const p = this.wait<string>();
    this.slot.worker.postMessage({ t: 'end', job: this.id });
    return p;
  }

  /** The nonce was accepted: resolves to the verified evidence. */
  go(): Promise<_Packed> {
    const p = this.wait<_Packed>();
    this.slot.worker.postMessage({ t: 'go', job: this.id });
    return p;
  }

  /** Drops the job (a refused nonce, a failed read); the worker is free again. */
  abort(): void {
    if (this.done) return;
    this.slot.worker.postMessage({ t: 'abort', job: this.id });
    this.finish();
  }

  /** @internal */
  _reply(m: Reply): void {
    const w = this.waiting;
    this.waiting = undefined;
    if (m.t === 'error') {
      this.finish();
      w?.reject(new VmkitError(m.code, m.message));
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
    w?.reject(e);
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
  private readonly url: URL;
  private next = 1;
  private closed = false;

  private constructor(size: number, url: URL) {
    this.url = url;
    for (let i = 0; i < size; i++) this.slots.push(this.spawn());
  }

  /** A pool of `size` workers, or undefined when the worker script is missing (sources run by a TS loader). */
  static open(size: number): AppraisePool | undefined {
    const url = new URL('./_appraise-worker.js', import.meta.url);
    if (url.protocol !== 'file:' || !existsSync(fileURLToPath(url))) return undefined;
    return new AppraisePool(size, url);
  }

  get size(): number {
    return this.slots.length;
  }

  /** Workers with a job. */
  get busy(): number {
    return this.slots.filter((s) => s.job).length;
  }

  private spawn(): Slot {
    const slot: Slot = { worker: new Worker(this.url) };
    const w = slot.worker;
    w.unref();
    w.on('message', (m: Reply) => slot.job?._reply(m));
    const died = (e: unknown): void => {
      slot.job?._fail(e instanceof VmkitError ? e : new VmkitError('IO', `appraisal worker failed: ${(e as Error)?.message ?? e}`));
      slot.job = undefined;
      if (this.closed) return;
      // A replacement, so one crash does not shrink the pool.
      const i = this.slots.indexOf(slot);
      if (i >= 0) this.slots[i] = this.spawn();
    };
    w.on('error', died);
    w.on('exit', (code) => {
      if (!this.closed) died(new Error(`exited with code ${code}`));
    });
    return slot;
  }

  /** A job on an idle worker, or undefined when all are busy. */
  start(opts: _JobOptions): PoolJob | undefined {
    if (this.closed) return undefined;
    const slot = this.slots.find((s) => !s.job);
    if (!slot) return undefined;
    const job = new PoolJob(slot, this.next++, opts, () => {
      if (slot.job === job) slot.job = undefined;
    });
    slot.job = job;
    return job;
  }

  /** Ends every worker. */
  async close(): Promise<void> {
    this.closed = true;
    const ws = this.slots.map((s) => s.worker);
    for (const s of this.slots) s.job?._fail(new VmkitError('CANCELLED', 'the service is shutting down'));
    await Promise.all(ws.map((w) => w.terminate()));
  }
}
