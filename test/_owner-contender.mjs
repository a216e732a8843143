#!/usr/bin/env node
/**
 * A contender for one disk, run as a child process by the multi-process
 * ownership specs (test/owner-multiprocess.node.test.ts; the etcd spec can run
 * it with --store etcd). It runs the BUILT library (dist/), loops: take the disk
 * with openOwned (asking the holder to release), write sequence-numbered
 * records into it until a release request takes it away, repeat.
 *
 * Flags:
 *   --disk PATH          image to contend for (required; 512-byte record slots in its virtual disk)
 *   --format raw|qcow2   its format (default raw)
 *   --id NAME            owner id (required; a restarted contender reuses it with a new pid)
 *   --log PATH           JSON-lines log, appended synchronously (required): see "Log" below
 *   --duration MS        stop contending after this long, release, exit 0 (default 4000)
 *   --lease MS           lease length (default 400)
 *   --skew MS            maxSkewMs (default 50)
 *   --hold-min MS        refuse release requests for this long after taking the disk (default 20)
 *   --store file|etcd    owner store (default file: the <disk>.owner sidecar)
 *   --endpoints URLS     etcd client URLs, comma-separated (with --store etcd)
 *   --prefix P           etcd key prefix (with --store etcd; default the store's)
 *   --name KEY           the disk's name in the store (default: --disk as given)
 *   --serve ADDR         release endpoint address (default 127.0.0.1:0)
 *   --stall-ms MS        on SIGUSR2, block the event loop this long (default 1000): a stalled
 *                        holder (GC pause, CPU starvation) that outlives its lease and wakes up
 *
 * Environment: OWNER_CONTENDER_STEPS=1 logs the last steps at every exit, not only a failing one
 * (to see what the other side of a handoff did).
 *
 * Stdout: one line per event the parent may act on: `acquired <epoch>`,
 * `release-begin <epoch>` (printed when it accepts a release request: the
 * parent SIGKILLs some contenders right then, mid-handoff), `exit`.
 *
 * Disk record (one per 512-byte slot, little-endian):
 *   0  "VKOWNREC"  8  epoch u64  16 seq u32  20 slot u32  24 writtenAt f64 (Date.now() just
 *   before the write)  32 id (32 bytes, UTF-8, zero-padded)  64 FNV-1a 32 of bytes 0..63
 * A holder starts at the first slot without a valid record (scanning the disk).
 *
 * Log lines (JSON): {t:'cas', epoch, at} just before a CAS that takes an epoch;
 * {t:'cas-ok', epoch, at} after it succeeded; {t:'acquire', epoch, slot, ms};
 * {t:'ack', epoch, seq, slot, at} after write + flush returned (acknowledged);
 * {t:'released', epoch, reason}; {t:'write-failed', epoch, code, message}; {t:'open-failed', code, message};
 * {t:'stalled', epoch, from, to, pid} after a SIGUSR2 stall; {t:'exit', code, phase, steps, pid} when it
 * exits with an error (13: a promise nobody settled), with its last steps (phases, store calls and
 * their outcome, release requests). Lines with a pid name the process.
 * `at` is Date.now(); every contender runs on the same host, so times compare.
 */
import { appendFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

const { values: a } = parseArgs({
  options: {
    disk: { type: 'string' },
    id: { type: 'string' },
    log: { type: 'string' },
    duration: { type: 'string', default: '4000' },
    lease: { type: 'string', default: '400' },
    skew: { type: 'string', default: '50' },
    'hold-min': { type: 'string', default: '20' },
    store: { type: 'string', default: 'file' },
    endpoints: { type: 'string' },
    prefix: { type: 'string' },
    name: { type: 'string' },
    serve: { type: 'string', default: '127.0.0.1:0' },
    'stall-ms': { type: 'string', default: '1000' },
    format: { type: 'string', default: 'raw' },
  },
});
if (!a.disk || !a.id || !a.log) {
  console.error('usage: _owner-contender.mjs --disk PATH --id NAME --log PATH [--store file|etcd --endpoints URLS] …');
  process.exit(2);
}
const dist = new URL('../dist/', import.meta.url);
const { openOwned, FileOwnerStore } = await import(new URL('disk/owner/index.js', dist).href);
// qcow2 and VMDK writes use the wasm core (dist/core.wasm).
await (await import(new URL('core.js', dist).href)).init();

const SLOT = 512;
const leaseMs = Number(a.lease);
const holdMin = Number(a['hold-min']);
const end = Date.now() + Number(a.duration);
const log = (o) => appendFileSync(a.log, JSON.stringify(o) + '\n');
const say = (s) => process.stdout.write(s + '\n');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// The last steps of the state machine (phases, store calls, release requests), kept in memory
// and written to the log when the contender exits badly (see OWNER_CONTENDER_STEPS).
const steps = [];
const step = (s) => {
  steps.push(`${(performance.now() | 0)} ${s}`);
  if (steps.length > 80) steps.shift();
};

let base;
if (a.store === 'etcd') {
  const m = await import(new URL('disk/owner/etcd-store.js', dist).href);
  base = m.etcdStore({ endpoints: String(a.endpoints ?? '').split(',').filter(Boolean), ...(a.prefix ? { prefix: a.prefix } : {}) });
} else base = new FileOwnerStore();

// The store as the handoff sees it, with the CAS that takes an epoch logged
// around it: the checker compares writes' times with when each epoch began.
// Every store call and its outcome is also a step.
let calls = 0;
async function traced(op, f) {
  const n = ++calls;
  step(`${op}#${n}`);
  try {
    const v = await f();
    step(`${op}#${n} ok`);
    return v;
  } catch (e) {
    step(`${op}#${n} ${e?.code ?? e}`);
    throw e;
  }
}
const store = {
  kind: base.kind,
  read: (d) => traced('read', () => base.read(d)),
  close: () => base.close(),
  compareAndSwap: (d, expected, next) => traced(`cas ${next.state}@${next.epoch}`, () => cas(d, expected, next)),
};
async function cas(d, expected, next) {
  const taking = next.state === 'owned' && next.owner?.id === a.id && next.owner?.pid === process.pid && next.updatedAt + leaseMs === next.leaseExpiresAt;
  let cur;
  if (taking) {
    cur = (await base.read(d)).record;
    if (cur && cur.epoch === next.epoch) return base.compareAndSwap(d, expected, next); // a renewal
    log({ t: 'cas', epoch: next.epoch, at: Date.now() });
  }
  const rev = await base.compareAndSwap(d, expected, next);
  if (taking && rev !== null) log({ t: 'cas-ok', epoch: next.epoch, at: Date.now() });
  return rev;
}

function fnv(b, n) {
  let h = 0x811c9dc5;
  for (let i = 0; i < n; i++) h = Math.imul(h ^ b[i], 0x01000193) >>> 0;
  return h;
}
const MAGIC = new TextEncoder().encode('VKOWNREC');
function encode(epoch, seq, slot, id, at) {
  const b = new Uint8Array(SLOT);
  const v = new DataView(b.buffer);
  b.set(MAGIC, 0);
  v.setBigUint64(8, BigInt(epoch), true);
  v.setUint32(16, seq, true);
  v.setUint32(20, slot, true);
  v.setFloat64(24, at, true);
  b.set(new TextEncoder().encode(id).subarray(0, 32), 32);
  v.setUint32(64, fnv(b, 64), true);
  return b;
}
function valid(b, off) {
  for (let i = 0; i < 8; i++) if (b[off + i] !== MAGIC[i]) return false;
  const v = new DataView(b.buffer, b.byteOffset + off, SLOT);
  return v.getUint32(64, true) === fnv(b.subarray(off, off + 64), 64);
}

let current; // the OwnedDisk while holding
let acquiredAt = 0;
let stopping = false;
let phase = 'start';
const enter = (p) => {
  phase = p;
  step(`phase ${p}`);
};
// A stall: the event loop blocks (no renewal, no requests answered) while the
// lease runs out; writes issued after waking must be fenced.
process.on('SIGUSR2', () => {
  const from = Date.now();
  step('stall');
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, Number(a['stall-ms']));
  log({ t: 'stalled', epoch: current?.epoch ?? null, from, to: Date.now(), pid: process.pid });
});
// A non-zero exit names the phase it happened in (13: a promise nobody could settle).
// (Node 20 passes 0 to 'exit' listeners for an unsettled top-level await: the 13 is in process.exitCode.)
process.on('exit', (c) => {
  const code = c || process.exitCode || 0;
  if (code === 0 && !process.env.OWNER_CONTENDER_STEPS) return;
  process.stderr.write(`contender ${a.id} (pid ${process.pid}) exit ${code} in phase ${phase}\n`);
  log({ t: 'exit', code, phase: phase, steps, pid: process.pid });
});
process.on('SIGTERM', () => {
  stopping = true;
});

/** Waits until the disk has left this holder (released, fenced or taken) and logs how it ended. */
async function handedOver(d) {
  enter(`done? state ${d.state} fenced ${d.fenced}`);
  const out = await d.done;
  log({ t: 'released', epoch: d.epoch, reason: out.reason, pid: process.pid });
  current = undefined;
}

while (Date.now() < end && !stopping) {
  const t0 = performance.now();
  let d;
  enter('open');
  try {
    d = await openOwned(a.disk, {
      as: a.id,
      store,
      leaseMs,
      maxSkewMs: Number(a.skew),
      waitMs: leaseMs * 6,
      requestTimeoutMs: Math.max(200, leaseMs),
      serve: a.serve,
      ...(a.name ? { name: a.name } : {}),
      image: { format: a.format },
      onReleaseRequest: (req) => {
        step(`release request from ${req.requester.id} for epoch ${req.epoch}`);
        if (performance.now() - acquiredAt < holdMin) return `held for less than ${holdMin} ms`;
        say(`release-begin ${d?.epoch ?? current?.epoch}`);
        return undefined;
      },
    });
  } catch (e) {
    log({ t: 'open-failed', code: e?.code, message: String(e?.message).slice(0, 200) });
    await sleep(5 + Math.random() * 20);
    continue;
  }
  acquiredAt = performance.now();
  current = d;
  const dev = d.device;
  // Find the end of the log on the disk itself.
  enter('scan');
  let all;
  try {
    all = await dev.read(0, dev.size);
  } catch (e) {
    // The disk can be taken away mid-scan (a release or fencing closes the file between two
    // storage reads): that is the protocol working, not this contender failing. Anything else is.
    if (e?.code !== 'INVALID_STATE' && e?.code !== 'FENCED') throw e;
    log({ t: 'scan-failed', epoch: d.epoch, code: e.code, pid: process.pid });
    await handedOver(d);
    continue;
  }
  let slot = 0;
  while (slot * SLOT < dev.size && valid(all, slot * SLOT)) slot++;
  log({ t: 'acquire', epoch: d.epoch, slot, ms: +(performance.now() - t0).toFixed(2), pid: process.pid });
  say(`acquired ${d.epoch}`);
  let seq = 0;
  let gone = false;
  d.done.then(() => (gone = true));
  while (!gone && (slot + 1) * SLOT <= dev.size) {
    const at = Date.now();
    enter(`write ${slot}`);
    try {
      await dev.write(slot * SLOT, encode(d.epoch, seq, slot, a.id, at));
      enter(`flush ${slot}`);
      await dev.flush();
    } catch (e) {
      log({ t: 'write-failed', epoch: d.epoch, slot, code: e?.code, message: String(e?.message).slice(0, 200), pid: process.pid });
      // Anything but fencing (the holder gave the disk away) is this holder's own failure: let go.
      if (e?.code !== 'FENCED') await d.release().catch(() => {});
      break;
    }
    log({ t: 'ack', epoch: d.epoch, seq, slot, at });
    seq++;
    slot++;
    if (Date.now() >= end || stopping) break;
    await sleep(1);
  }
  if (Date.now() >= end || stopping) {
    await d.release().catch(() => {});
  }
  await handedOver(d);
  await sleep(Math.random() * 15);
}
await store.close().catch(() => {});
say('exit');
process.exit(0);
