// The multi-process ownership specs (owner-multiprocess, owner-etcd-multiproc):
// contenders (test/_owner-contender.mjs, running the built dist/) spawned and
// respawned after a SIGKILL, their JSON-lines logs, the records they write on
// the disk, and the invariants both stores must keep, checked from the logs
// and the disk's own contents. Node only.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';

const contender = fileURLToPath(new URL('./_owner-contender.mjs', import.meta.url));

/** Bytes of one record slot on the disk (layout at the top of _owner-contender.mjs). */
export const SLOT = 512;

/** One line of a contender's log (the fields its `t` has; see _owner-contender.mjs), and which contender wrote it. */
export interface ContenderLog {
  who: string;
  t: string;
  epoch: number;
  seq: number;
  slot: number;
  at: number;
  ms: number;
  pid: number;
  code?: string;
  reason?: string;
}

/** A record a contender wrote into a slot. */
export interface SlotRecord {
  epoch: number;
  seq: number;
  slot: number;
  at: number;
  id: string;
}

export interface ContenderOptions {
  dir: string;
  diskPath: string;
  /** Contenders c0 … c(n-1), each logging to `<dir>/c<i>.log`. */
  n: number;
  /** The flags after --disk, --id and --log for contender i, or undefined when it should not (re)start (time is up). */
  flags: (i: number) => string[] | undefined;
  /** True once the spec has told the contenders to stop: nothing respawns, and a SIGTERM exit is clean. */
  stopping: () => boolean;
  /** Each stdout line (`acquired <epoch>`, `release-begin <epoch>`, `exit`) of contender `c`. */
  onLine?: (line: string, c: ChildProcess) => void;
}

export interface Contenders {
  /** The contenders running now. */
  readonly children: Set<ChildProcess>;
  /** Contenders that exited with an error (each a sentence). */
  readonly failures: string[];
  /** Pids SIGKILLed through kill(). */
  readonly killed: Set<number>;
  /** SIGKILLs `c` (it restarts 30 ms later unless the run is stopping). */
  kill(c: ChildProcess): void;
  /** SIGTERMs every contender: each releases the disk and exits 0. */
  stopAll(): void;
  /** SIGKILLs every contender and restarts none (a spec's cleanup). */
  dispose(): void;
}

/**
 * Starts n contenders on one disk. One SIGKILLed (by the spec or anyone)
 * starts again under the same id 30 ms later, as a crashed host's VM would;
 * any other exit but a clean one, or a SIGTERM while stopping, is a failure.
 */
export function startContenders(o: ContenderOptions): Contenders {
  const children = new Set<ChildProcess>();
  const failures: string[] = [];
  const killed = new Set<number>();
  let disposed = false;
  const spawnOne = (i: number): void => {
    if (disposed || o.stopping()) return;
    const flags = o.flags(i);
    if (!flags) return;
    const c = spawn(process.execPath, [contender, '--disk', o.diskPath, '--id', `c${i}`, '--log', join(o.dir, `c${i}.log`), ...flags], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.add(c);
    let buf = '';
    c.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        o.onLine?.(line, c);
      }
    });
    c.on('exit', (code, sig) => {
      children.delete(c);
      if (sig === 'SIGKILL') setTimeout(() => spawnOne(i), 30);
      // SIGTERM before a respawned contender installed its handler (still loading) ends it at once: fine.
      else if (code !== 0 && !(sig === 'SIGTERM' && o.stopping())) failures.push(`contender c${i} exited with ${code} ${sig ?? ''}`);
    });
  };
  for (let i = 0; i < o.n; i++) spawnOne(i);
  return {
    children,
    failures,
    killed,
    kill(c: ChildProcess): void {
      killed.add(c.pid!);
      c.kill('SIGKILL');
    },
    stopAll(): void {
      for (const c of children) c.kill('SIGTERM');
    },
    dispose(): void {
      disposed = true;
      for (const c of children) c.kill('SIGKILL');
    },
  };
}

/** The logs of contenders c0 … c(n-1) in `dir`, in file order. */
export function readContenderLogs(dir: string, n: number): ContenderLog[] {
  const out: ContenderLog[] = [];
  for (let i = 0; i < n; i++) {
    const p = join(dir, `c${i}.log`);
    if (!existsSync(p)) continue;
    for (const l of readFileSync(p, 'utf8').split('\n')) {
      if (!l) continue;
      try {
        out.push({ ...(JSON.parse(l) as Omit<ContenderLog, 'who'>), who: `c${i}` });
      } catch {
        // Only the last line of a SIGKILLed contender's log can be torn (appendFileSync per line).
      }
    }
  }
  return out;
}

/** How many writes the contenders have logged as acknowledged so far. */
export function ackCount(dir: string, n: number): number {
  return readContenderLogs(dir, n).filter((l) => l.t === 'ack').length;
}

function fnv(b: Uint8Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < 64; i++) h = Math.imul(h ^ b[i]!, 0x01000193) >>> 0;
  return h;
}

/** The record in slot `i` of the disk's contents, or null when it holds no valid one. */
export function slotAt(disk: Uint8Array, i: number): SlotRecord | null {
  const b = disk.subarray(i * SLOT, (i + 1) * SLOT);
  if (new TextDecoder().decode(b.subarray(0, 8)) !== 'VKOWNREC') return null;
  const v = new DataView(b.buffer, b.byteOffset, SLOT);
  if (v.getUint32(64, true) !== fnv(b)) return null;
  const id = b.subarray(32, 64);
  const z = id.indexOf(0);
  return { epoch: Number(v.getBigUint64(8, true)), seq: v.getUint32(16, true), slot: v.getUint32(20, true), at: v.getFloat64(24, true), id: new TextDecoder().decode(z < 0 ? id : id.subarray(0, z)) };
}

/** Who took each epoch and when its compare-and-swap began, from the logs; fails the spec when an epoch was taken twice. */
export function epochWinners(logs: ContenderLog[]): Map<number, { who: string; casAt: number }> {
  const casAt = new Map<string, number>();
  const won = new Map<number, { who: string; casAt: number }>();
  for (const l of logs) {
    if (l.t === 'cas') casAt.set(`${l.who}/${l.epoch}`, l.at);
    if (l.t === 'cas-ok') {
      expect(won.has(l.epoch), `epoch ${l.epoch} taken twice`).toBe(false);
      won.set(l.epoch, { who: l.who, casAt: casAt.get(`${l.who}/${l.epoch}`)! });
    }
  }
  return won;
}

/**
 * Checks the disk's own contents: every valid record lies in its slot, belongs
 * to its epoch's winner and was written before the next epoch's
 * compare-and-swap began (no write acting with a stale epoch), and epochs never
 * go back along the disk. Returns the records by slot.
 */
export function checkDiskRecords(disk: Uint8Array, won: Map<number, { who: string; casAt: number }>): Map<number, SlotRecord> {
  const onDisk = new Map<number, SlotRecord>();
  let lastEpoch = 0;
  for (let s = 0; s * SLOT < disk.length; s++) {
    const r = slotAt(disk, s);
    if (!r) continue;
    onDisk.set(s, r);
    expect(r.slot).toBe(s);
    const w = won.get(r.epoch);
    expect(w, `slot ${s} has epoch ${r.epoch}, which nobody took`).toBeDefined();
    expect(r.id, `slot ${s}: epoch ${r.epoch} written by ${r.id}, taken by ${w!.who}`).toBe(w!.who);
    const next = won.get(r.epoch + 1);
    if (next) expect(r.at, `slot ${s}: epoch ${r.epoch} wrote at ${r.at}, after epoch ${r.epoch + 1} began at ${next.casAt}`).toBeLessThanOrEqual(next.casAt);
    expect(r.epoch).toBeGreaterThanOrEqual(lastEpoch);
    lastEpoch = r.epoch;
  }
  return onDisk;
}

/** Checks that every acknowledged write (write + flush returned) is on the disk, unchanged. */
export function checkAcks(acks: ContenderLog[], onDisk: Map<number, SlotRecord>): void {
  for (const a of acks) {
    const r = onDisk.get(a.slot);
    expect(r, `acknowledged write of ${a.who} epoch ${a.epoch} seq ${a.seq} at slot ${a.slot} is gone`).toBeDefined();
    expect([r!.epoch, r!.seq, r!.id, r!.at]).toEqual([a.epoch, a.seq, a.who, a.at]);
  }
}
