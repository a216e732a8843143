/**
 * Worker thread of the attestation service's pool (Node): takes a large
 * request body as it streams in, parses and validates it, hands the nonce to
 * the main thread, and — once the main thread has accepted the nonce —
 * verifies the IMA log (template hashes, PCR 10, excludes) and posts the
 * evidence back as columns (_packed.ts). The index lookups and the verdicts
 * stay on the main thread, which holds the repositories' index; what takes
 * seconds on a large log (JSON, hashing, matching) happens here.
 *
 * ```
 * main                                   worker
 *  start {job, opts} ───────────────────► new job
 *  chunk {job, bytes} (transferred) ────► decoded (UTF-8, streaming)
 *  end {job} ───────────────────────────► join, JSON.parse, parseAttestRequest
 *            ◄─────────────────────────── nonce {job, nonce}   | error {job, code, message}
 *  go {job} / abort {job} ──────────────► verify the IMA log (or drop the job)
 *            ◄─────────────────────────── done {job, packed}   | error {job, code, message}
 * ```
 * @module
 */
import { readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import { VmkitError } from '../../errors.js';
import { _verifyEvidenceIma, type Evidence } from '../appraise.js';
import { parseAttestRequest } from './server.js';
import { _ImaPacker, _pack, _transferables } from './_packed.js';
import { _PauseBudget, _yieldToSmall } from './_turns.js';

/** Options a job carries (structured-cloneable). @internal */
export interface _JobOptions {
  maxItems: number;
  requestRegex?: boolean;
  maxExcludeWork?: number;
  /** The service's own exclude patterns. */
  excludes?: string[];
}

interface Job {
  /** The body decoded so far (UTF-8, decoded chunk by chunk as it arrives). */
  text: string[];
  decoder: TextDecoder;
  opts: _JobOptions;
  evidence?: Evidence;
}

const jobs = new Map<number, Job>();

// A worker thread talks through parentPort; a child process (a `processes` pool) through its IPC
// channel, and ends when the service does.
const child = parentPort === null && typeof process.send === 'function';
type Msg = { t: string; job: number; opts?: _JobOptions; data?: Uint8Array };
const port: { postMessage(m: unknown, transfer?: ArrayBuffer[]): void; onMessage(f: (m: Msg) => void): void } = child
  ? { postMessage: (m) => void process.send!(m), onMessage: (f) => void process.on('message', f) }
  : { postMessage: (m, transfer) => parentPort!.postMessage(m, transfer ?? []), onMessage: (f) => void parentPort!.on('message', f) };
if (child) process.on('disconnect', () => process.exit(0));
const options = (child ? JSON.parse(process.env.VMKIT_APPRAISE_CHILD ?? '{}') : workerData) as { nice?: number; small?: Int32Array } | undefined;

// Small requests first (_turns.ts): the flag the event loop raises while small requests are in
// flight; this thread waits at checkpoints a few hundred microseconds of work apart. (A child
// process has no flag: its autogroup's nice value does that work, below.)
const small = options?.small;
const budget = new _PauseBudget();
const checkpoint = (): void => _yieldToSmall(small, budget);
// IMA entries between two checkpoints (about 0.2 ms of verifying).
const ENTRIES_PER_CHECK = 32;

// This thread at a lower CPU priority than the event loop (Linux: a thread has its own nice
// value; /proc/thread-self names this thread's id): on a busy machine a large appraisal then
// takes the cores the event loop leaves, instead of an equal share of them, and the service's
// other clients keep their latency. Elsewhere it stays as it is.
const nice = options?.nice ?? 10;
if (nice > 0 && process.platform === 'linux' && !child) {
  try {
    const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
    if (Number.isSafeInteger(tid) && tid > 0) setPriority(tid, Math.min(19, getPriority(tid) + nice));
  } catch {
    // No /proc, or not allowed: the same priority as the loop.
  }
}
// A child process, in a session of its own: the whole process at nice `nice` — its autogroup (the
// kernel shares the CPU between autogroups first, so this is what other sessions compete with),
// and each of its threads (what counts where autogroups are off; V8's and libuv's threads made
// later inherit it from the thread that makes them).
if (nice > 0 && process.platform === 'linux' && child) {
  try {
    writeFileSync('/proc/self/autogroup', String(Math.min(19, nice)));
  } catch {
    // No autogroups (CONFIG_SCHED_AUTOGROUP off, or sched_autogroup_enabled 0): the threads' nice below.
  }
  try {
    for (const t of readdirSync('/proc/self/task')) setPriority(Number(t), Math.min(19, nice));
  } catch {
    // Not allowed: the same priority as the service.
  }
}

function fail(job: number, e: unknown): void {
  jobs.delete(job);
  const err = e instanceof VmkitError ? e : new VmkitError('IO', `appraisal worker: ${(e as Error)?.message ?? String(e)}`);
  port.postMessage({ t: 'error', job, code: err.code, message: err.message });
}

port.onMessage((m) => {
  const j = jobs.get(m.job);
  switch (m.t) {
    case 'start':
      // ignoreBOM: a leading BOM stays, and JSON.parse refuses it, as it does on the event loop.
      jobs.set(m.job, { text: [], decoder: new TextDecoder('utf-8', { ignoreBOM: true }), opts: m.opts! });
      return;
    case 'chunk':
      if (!j) return;
      checkpoint();
      j.text.push(j.decoder.decode(m.data!, { stream: true }));
      return;
    case 'end': {
      if (!j) return;
      try {
        checkpoint();
        j.text.push(j.decoder.decode());
        const text = j.text.join('');
        j.text = [];
        let parsed: unknown;
        try {
          parsed = JSON.parse(text);
        } catch (e) {
          throw new VmkitError('CORRUPT', `request body is not JSON: ${(e as Error).message}`, { cause: e });
        }
        const { nonce, evidence } = parseAttestRequest(parsed, j.opts.maxItems);
        j.evidence = evidence;
        port.postMessage({ t: 'nonce', job: m.job, nonce });
      } catch (e) {
        fail(m.job, e);
      }
      return;
    }
    case 'go': {
      if (!j?.evidence) return;
      const ev = j.evidence;
      const o = j.opts;
      void (async () => {
        // Entries go into columns as they are verified (no entry objects kept: see _ImaPacker).
        const packer = new _ImaPacker();
        let k = 0;
        checkpoint();
        const ima = ev.ima
          ? await _verifyEvidenceIma(
              ev.ima,
              {
                ...(o.requestRegex !== undefined ? { requestRegex: o.requestRegex } : {}),
                ...(o.maxExcludeWork !== undefined ? { maxExcludeWork: o.maxExcludeWork } : {}),
                ...(o.excludes ? { excludes: o.excludes } : {}),
              },
              (e) => packer.add(e),
              () => {
                if (++k % ENTRIES_PER_CHECK === 0) checkpoint();
              },
            )
          : undefined;
        delete j.evidence; // the request's log string is garbage from here on
        checkpoint();
        const packed = _pack(ev.digests, ev.packages, ima, packer);
        jobs.delete(m.job);
        port.postMessage({ t: 'done', job: m.job, packed }, _transferables(packed));
      })().catch((e: unknown) => fail(m.job, e));
      return;
    }
    case 'abort':
      jobs.delete(m.job);
      return;
  }
});
