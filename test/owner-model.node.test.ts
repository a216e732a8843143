// A model-based spec of the ownership handoff (issue #26): two or three
// contenders for one disk over an in-memory store and the in-process release
// transport, on a fake clock, where fast-check chooses every interleaving of
// the moves that matter — a contender opens (or restarts after a kill), writes,
// releases, refuses, is killed, stalls; the store hangs (etcd SIGSTOPped) or
// fails one call; a release reply is lost with its request promise never
// settling (what undici's fetch did in the multi-process spec, issue #26); each
// store request and answer, each release request and reply, each lease renewal
// and timeout happens when the schedule says so. After every schedule the
// invariants are checked:
//
// - at most one holder per epoch;
// - a write reaches the disk only while the writer's epoch is the record's;
// - no acknowledged write (write + flush resolved) is lost;
// - every operation of a live contender ends (holding, refused, timed out,
//   fenced…) within its deadline, and a holder whose write was refused learns
//   that its holding ended (its `done` settles): no promise waits forever.
//
// Node only: it replaces the timers with vitest's fake clock and drains
// microtasks with setImmediate. MODEL_DEBUG=1 prints every step of a schedule;
// MODEL_RUNS sets the number of schedules per test.
import { createHmac, timingSafeEqual } from 'node:crypto';
import fc from 'fast-check';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Storage, StorageProvider } from '../bindings/disk/backends/storage.js';
import { openImage } from '../bindings/disk/image.js';
import { MemoryOwnerStore, inProcessTransport, openOwned, type OwnedDisk, type OwnerStore, type ReleaseTransport } from '../bindings/disk/owner/index.js';
import { VmkitError } from '../bindings/errors.js';

const LEASE = 300;
const SKEW = 30;
const REQUEST_MS = 100;
const WAIT = 3 * LEASE;
const SLOT = 512;
const SLOTS = 96;
const DISK = 'model.raw';
const T0 = 1_800_000_000_000;
/** Schedules per test (MODEL_RUNS=2000 for a longer search than CI's). */
const RUNS = Number(process.env.MODEL_RUNS ?? 100);

/** One scripted move of the scenario (the rest of the schedule is fast-check's choice among the gates). */
type Action =
  | { t: 'open'; c: number }
  | { t: 'write'; c: number }
  | { t: 'release'; c: number }
  | { t: 'kill'; c: number }
  | { t: 'stall'; c: number; ms: number }
  | { t: 'storeError'; c: number }
  | { t: 'storeHang'; ms: number }
  | { t: 'refuse'; c: number; on: boolean }
  | { t: 'loseReply'; c: number };

interface Gate {
  c: Contender;
  /** The process that waits here (a gate of a killed process never opens, even after a restart). */
  pid: number;
  what: string;
  store: boolean;
  open: (fail?: VmkitError) => void;
}

interface Op {
  c: Contender;
  pid: number;
  what: string;
  start: number;
  /** Longest this may take on the fake clock (its deadline plus the contender's own stalls). */
  bound: number;
  end?: number;
  result?: string;
}

interface Contender {
  i: number;
  id: string;
  pid: number;
  dead: boolean;
  stallUntil: number;
  stalledMs: number;
  errors: number;
  /** Release replies to this contender that the transport will lose (its request promise never settles). */
  lose: number;
  refuse: boolean;
  busy: boolean; // an open is running
  held: OwnedDisk | undefined;
}

class World {
  readonly store = new MemoryOwnerStore();
  readonly disk = new Uint8Array(SLOTS * SLOT);
  readonly gates: Gate[] = [];
  readonly ops: Op[] = [];
  readonly epochs = new Map<number, string>();
  readonly acked = new Map<number, Uint8Array>();
  readonly violations: string[] = [];
  readonly cs: Contender[];
  readonly run = Math.random().toString(36).slice(2);
  storeHangUntil = 0;
  serves = 0;
  nextSlot = 0;
  constructor(n: number) {
    this.cs = Array.from({ length: n }, (_, i) => ({ i, id: `c${i}`, pid: 1, dead: false, stallUntil: 0, stalledMs: 0, errors: 0, lose: 0, refuse: false, busy: false, held: undefined }));
  }
  now(): number {
    return Date.now() - T0;
  }

  /** A point where the contender waits for the world: fast-check decides when it opens. */
  gate(c: Contender, pid: number, what: string, store: boolean): Promise<void> {
    return new Promise((resolve, reject) => {
      this.gates.push({ c, pid, what, store, open: (fail) => (fail ? reject(fail) : resolve()) });
    });
  }
  enabled(g: Gate): boolean {
    const t = Date.now();
    return !g.c.dead && g.pid === g.c.pid && t >= g.c.stallUntil && (!g.store || t >= this.storeHangUntil);
  }
  openGate(g: Gate): void {
    this.gates.splice(this.gates.indexOf(g), 1);
    if (g.store && g.c.errors > 0) {
      g.c.errors--;
      g.open(new VmkitError('IO', `model: store call ${g.what} of ${g.c.id} failed`));
    } else g.open();
  }

  storeOf(c: Contender): OwnerStore {
    const pid = c.pid;
    const call = async <T>(what: string, f: () => Promise<T>): Promise<T> => {
      await this.gate(c, pid, `${what} request`, true);
      const v = await f();
      // A reply lost after the store applied the call (a kill, a store error here) leaves its outcome unknown.
      await this.gate(c, pid, `${what} reply`, true);
      return v;
    };
    return {
      kind: 'model',
      read: (d) => call('read', () => this.store.read(d)),
      compareAndSwap: (d, e, n) => call(`cas ${n.state}@${n.epoch}`, () => this.store.compareAndSwap(d, e, n)),
      close: async () => {},
    };
  }

  transportOf(c: Contender): ReleaseTransport {
    const pid = c.pid;
    return {
      kind: inProcessTransport.kind,
      handles: (e) => inProcessTransport.handles(e),
      request: (e, req, ms) => {
        if (c.lose === 0) return inProcessTransport.request(e, req, ms);
        // The request reaches the owner (which may release), but its answer never comes back and the
        // promise never settles — what an HTTP fetch did to the multi-process spec (issue #26).
        c.lose--;
        inProcessTransport.request(e, req, ms).catch(() => {});
        return new Promise(() => {});
      },
      serve: (addr, handler) =>
        inProcessTransport.serve(addr, async (req) => {
          await this.gate(c, pid, 'release request arrives', false);
          const reply = await handler(req);
          await this.gate(c, pid, 'release reply leaves', false);
          return reply;
        }),
    };
  }

  providerOf(c: Contender): StorageProvider {
    const pid = c.pid;
    const w = this;
    const gone = (): boolean => c.dead || c.pid !== pid;
    const storage: Storage = {
      name: DISK,
      readOnly: false,
      size: async () => w.disk.length,
      readInto: async (offset, dst) => {
        dst.set(w.disk.subarray(offset, offset + dst.length));
      },
      write: async (offset, data) => {
        if (gone()) await new Promise(() => {}); // a dead process writes nothing
        // Invariant 2: the record names this writer's epoch when its write lands.
        const cur = await w.store.read(DISK);
        const held = c.held;
        const r = cur.record;
        if (!r || !held || r.epoch !== held.epoch || r.owner?.id !== c.id || r.owner?.pid !== pid || r.state === 'free') {
          w.violations.push(`${c.id}/${pid} wrote at ${w.now()} ms under epoch ${held?.epoch} while the record is ${r ? `${r.state} epoch ${r.epoch} by ${r.owner?.id}/${r.owner?.pid}` : 'absent'}`);
        }
        w.disk.set(data, offset);
      },
      truncate: async () => {
        throw new VmkitError('UNSUPPORTED', 'model: no truncate');
      },
      flush: async () => {
        if (gone()) await new Promise(() => {});
      },
      close: async () => {},
    };
    return {
      open: async () => storage,
      create: async () => storage,
      resolve: (_f, r) => r,
      relative: (_f, t) => t,
    };
  }

  track(c: Contender, what: string, bound: number, p: Promise<string>): Op {
    const op: Op = { c, pid: c.pid, what, start: this.now(), bound };
    this.ops.push(op);
    p.then(
      (r) => {
        op.end = this.now();
        op.result = r;
      },
      (e: unknown) => {
        op.end = this.now();
        op.result = e instanceof VmkitError ? e.code : `non-VmkitError ${String(e)}`;
        if (!(e instanceof VmkitError)) this.violations.push(`${c.id} ${what} threw ${String(e)}`);
      },
    );
    return op;
  }

  open(c: Contender): void {
    if (c.busy || c.held) return;
    if (c.dead) {
      // A restart: the same id in a new process.
      c.dead = false;
      c.pid++;
      c.stallUntil = 0;
      c.errors = 0;
    }
    c.busy = true;
    const pid = c.pid;
    const p = openOwned(DISK, {
      as: { id: c.id, host: 'model', pid },
      store: this.storeOf(c),
      transport: this.transportOf(c),
      serve: `${this.run}-${c.id}-${pid}-${++this.serves}`,
      leaseMs: LEASE,
      maxSkewMs: SKEW,
      waitMs: WAIT,
      requestTimeoutMs: REQUEST_MS,
      image: { provider: this.providerOf(c), format: 'raw' },
      onReleaseRequest: () => (c.refuse ? 'busy' : undefined),
    }).then(
      (d) => {
        if (c.pid !== pid) return 'held by a dead process';
        const prev = this.epochs.get(d.epoch);
        if (prev !== undefined) this.violations.push(`epoch ${d.epoch} held by ${prev} and by ${c.id}/${pid}`);
        this.epochs.set(d.epoch, `${c.id}/${pid}`);
        c.held = d;
        c.busy = false;
        void d.done.then(() => {
          if (c.held === d) c.held = undefined;
        });
        return `holding ${d.epoch}`;
      },
      (e: unknown) => {
        if (c.pid === pid) c.busy = false;
        throw e;
      },
    );
    // openOwned's deadline: waitMs, one more request, the CAS and the image open, a lease of slack.
    this.track(c, 'open', WAIT + 2 * REQUEST_MS + LEASE, p);
  }

  write(c: Contender): void {
    const d = c.held;
    if (!d || this.nextSlot >= SLOTS) return;
    const slot = this.nextSlot++;
    const data = new Uint8Array(SLOT).fill((slot % 250) + 1);
    data.set(new TextEncoder().encode(`${c.id}/${c.pid}@${d.epoch}`));
    const p = (async () => {
      try {
        await d.device.write(slot * SLOT, data);
        await d.device.flush();
      } catch (e) {
        // What the multi-process contender does: a refused write means the holding is over; wait for it.
        if (e instanceof VmkitError && e.code === 'FENCED') this.track(c, `done after a refused write at epoch ${d.epoch}`, 2 * LEASE, d.done.then((o) => o.reason));
        throw e;
      }
      this.acked.set(slot, data);
      return 'acked';
    })();
    this.track(c, `write slot ${slot} at epoch ${d.epoch}`, 2 * LEASE, p);
  }

  release(c: Contender): void {
    const d = c.held;
    if (!d) return;
    this.track(c, `release of epoch ${d.epoch}`, 2 * LEASE, d.release().then(() => 'released'));
  }

  act(a: Action): void {
    const c = 'c' in a ? this.cs[a.c % this.cs.length]! : undefined;
    switch (a.t) {
      case 'open':
        return this.open(c!);
      case 'write':
        return this.write(c!);
      case 'release':
        return this.release(c!);
      case 'kill':
        c!.dead = true;
        c!.busy = false;
        c!.held = undefined;
        return;
      case 'stall':
        c!.stallUntil = Date.now() + a.ms;
        c!.stalledMs += a.ms;
        setTimeout(() => {}, a.ms); // lets the clock stop at the wake-up
        return;
      case 'storeError':
        c!.errors++;
        return;
      case 'storeHang':
        this.storeHangUntil = Date.now() + a.ms;
        setTimeout(() => {}, a.ms);
        return;
      case 'refuse':
        c!.refuse = a.on;
        return;
      case 'loseReply':
        c!.lose++;
        return;
    }
  }

  /** An action waits while its contender is stalled (a stalled process does nothing). */
  ready(a: Action): boolean {
    if (!('c' in a)) return true;
    const c = this.cs[a.c % this.cs.length]!;
    return a.t === 'open' || a.t === 'kill' || a.t === 'storeError' || a.t === 'refuse' || a.t === 'loseReply' || (!c.dead && Date.now() >= c.stallUntil);
  }
}

const settle = async (): Promise<void> => {
  for (let i = 0; i < 3; i++) await new Promise<void>((r) => setImmediate(r));
};

/** Runs one schedule; returns what went wrong (empty when every invariant held). */
async function runModel(n: number, actions: Action[], choices: number[]): Promise<string[]> {
  vi.useFakeTimers({ now: T0, toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date', 'performance'] });
  const w = new World(n);
  try {
    let next = 0;
    let k = 0;
    let lastAction = 0;
    const stallTotal = (): number => w.cs.reduce((s, c) => s + c.stalledMs, 0);
    for (let step = 0; step < 20_000; step++) {
      await settle();
      const gates = w.gates.filter((g) => w.enabled(g));
      const action = next < actions.length && w.ready(actions[next]!) ? actions[next]! : undefined;
      if (process.env.MODEL_DEBUG) console.log(`t=${w.now()} gates=${w.gates.map((g) => `${g.c.id}:${g.what}${w.enabled(g) ? '' : '(blocked)'}`).join(',')} next=${JSON.stringify(action)} timers=${vi.getTimerCount()} ops=${w.ops.map((o) => `${o.c.id} ${o.what}→${o.result ?? '…'}`).join('; ')}`);
      const moves = gates.length + (action ? 1 : 0) + 1; // + 1: let the clock run to the next timer
      const pick = k < choices.length ? choices[k++]! % moves : gates.length > 0 ? 0 : action ? gates.length : moves - 1;
      if (pick < gates.length) w.openGate(gates[pick]!);
      else if (action && pick === gates.length) {
        w.act(action);
        next++;
        lastAction = w.now();
      } else {
        // Before the clock moves: let pending asynchronous work (microtasks, immediates) open its gates.
        const before = w.gates.length + w.ops.filter((o) => o.end !== undefined).length;
        await settle();
        if (w.gates.length + w.ops.filter((o) => o.end !== undefined).length !== before) continue;
        if (next >= actions.length && w.now() > lastAction + WAIT + 4 * LEASE + stallTotal() + Math.max(0, w.storeHangUntil - T0)) break;
        if (vi.getTimerCount() > 0) vi.advanceTimersToNextTimer();
        else if (gates.length > 0) w.openGate(gates[0]!);
        else if (!action) break; // nothing left that could ever move
      }
    }
    await settle();
    const problems = [...w.violations];
    const now = w.now();
    for (const op of w.ops) {
      if (op.c.dead || op.c.pid !== op.pid) continue; // a killed process's operations end with it
      const took = (op.end ?? now) - op.start;
      // A hung store excuses nothing: every store call is bounded (by the open's deadline, by the lease).
      const bound = op.bound + op.c.stalledMs;
      if (op.end === undefined) problems.push(`${op.c.id}/${op.pid} ${op.what} (started at ${op.start} ms) never ended: still waiting at ${now} ms`);
      else if (took > bound) problems.push(`${op.c.id}/${op.pid} ${op.what} took ${took} ms (bound ${bound} ms) → ${op.result}`);
    }
    for (const [slot, data] of w.acked) {
      const got = w.disk.subarray(slot * SLOT, (slot + 1) * SLOT);
      if (!got.every((b, i) => b === data[i])) problems.push(`acknowledged write to slot ${slot} lost`);
    }
    return problems;
  } finally {
    vi.clearAllTimers();
    vi.useRealTimers();
  }
}

const action = (n: number): fc.Arbitrary<Action> =>
  fc.oneof(
    { weight: 4, arbitrary: fc.record({ t: fc.constant('open' as const), c: fc.nat(n - 1) }) },
    { weight: 4, arbitrary: fc.record({ t: fc.constant('write' as const), c: fc.nat(n - 1) }) },
    { weight: 2, arbitrary: fc.record({ t: fc.constant('release' as const), c: fc.nat(n - 1) }) },
    { weight: 1, arbitrary: fc.record({ t: fc.constant('kill' as const), c: fc.nat(n - 1) }) },
    { weight: 1, arbitrary: fc.record({ t: fc.constant('stall' as const), c: fc.nat(n - 1), ms: fc.integer({ min: 10, max: 3 * LEASE }) }) },
    { weight: 1, arbitrary: fc.record({ t: fc.constant('storeError' as const), c: fc.nat(n - 1) }) },
    { weight: 1, arbitrary: fc.record({ t: fc.constant('storeHang' as const), ms: fc.integer({ min: 10, max: 4 * LEASE }) }) },
    { weight: 1, arbitrary: fc.record({ t: fc.constant('refuse' as const), c: fc.nat(n - 1), on: fc.boolean() }) },
    { weight: 1, arbitrary: fc.record({ t: fc.constant('loseReply' as const), c: fc.nat(n - 1) }) },
  );

function property(n: number): fc.IAsyncPropertyWithHooks<[Action[], number[]]> {
  return fc.asyncProperty(fc.array(action(n), { minLength: 1, maxLength: 24 }), fc.array(fc.nat(), { maxLength: 400 }), async (actions, choices) => {
    const problems = await runModel(n, actions, choices);
    expect(problems, JSON.stringify(actions)).toEqual([]);
  });
}

describe('the handoff under every interleaving fast-check finds (model)', () => {
  beforeAll(async () => {
    // Release requests are signed with WebCrypto's HMAC, which answers from the thread pool in real
    // time while this harness drives a fake clock: how long a signature takes would decide schedules.
    // The same HMAC-SHA-256 from node:crypto, answered within the microtask, keeps every schedule
    // the schedule fast-check chose (the auth code is unchanged; only its clock dependence goes).
    const subtle = globalThis.crypto.subtle;
    const raw = new WeakMap<object, Uint8Array>();
    vi.spyOn(subtle, 'importKey').mockImplementation((async (_f: string, key: BufferSource) => {
      const k = {};
      raw.set(k, new Uint8Array(key instanceof ArrayBuffer ? key : (key as ArrayBufferView).buffer.slice((key as ArrayBufferView).byteOffset, (key as ArrayBufferView).byteOffset + (key as ArrayBufferView).byteLength)));
      return k as CryptoKey;
    }) as unknown as SubtleCrypto['importKey']);
    const mac = (k: object, data: BufferSource): Buffer =>
      createHmac('sha256', raw.get(k)!).update(new Uint8Array(data instanceof ArrayBuffer ? data : (data as ArrayBufferView).buffer, data instanceof ArrayBuffer ? 0 : (data as ArrayBufferView).byteOffset, data.byteLength)).digest();
    vi.spyOn(subtle, 'sign').mockImplementation((async (_a: string, k: CryptoKey, data: BufferSource) => {
      const m = mac(k, data);
      return m.buffer.slice(m.byteOffset, m.byteOffset + m.byteLength);
    }) as unknown as SubtleCrypto['sign']);
    vi.spyOn(subtle, 'verify').mockImplementation((async (_a: string, k: CryptoKey, sig: BufferSource, data: BufferSource) => {
      const m = mac(k, data);
      const s = new Uint8Array(sig instanceof ArrayBuffer ? sig : (sig as ArrayBufferView).buffer, sig instanceof ArrayBuffer ? 0 : (sig as ArrayBufferView).byteOffset, sig.byteLength);
      return s.length === m.length && timingSafeEqual(s, m);
    }) as unknown as SubtleCrypto['verify']);
    // openImage imports the format's module on first use: do that on the real clock.
    const w = new World(1);
    await (await openImage(DISK, { provider: w.providerOf(w.cs[0]!), format: 'raw' })).close();
  });
  afterEach(() => {
    vi.useRealTimers();
  });
  afterAll(() => {
    vi.restoreAllMocks();
  });
  // Skipped with the three-contender one below, for the same open question (see there).
  it('two contenders: one holder per epoch, fenced writes, no acknowledged write lost, every contender ends within its deadline', { timeout: 120_000 }, async () => {
    await fc.assert(property(2), { numRuns: RUNS });
  });
  // Skipped after the merge with owner-auth (signed release requests, WebCrypto on the thread
  // pool): a schedule with three contenders reports an open that never ends, not yet told apart
  // from the harness moving its fake clock while a real HMAC is pending (it passed 1500 runs before
  // that merge). Open question handed back with the branch.
  it('three contenders: the same', { timeout: 120_000 }, async () => {
    await fc.assert(property(3), { numRuns: RUNS });
  });
});

