// Live backup and consolidation against the in-memory image store: the copy
// planner against a plain TypeScript reference, the range bookkeeping, and
// randomized concurrency — a writer issues random writes at full speed during
// backup and consolidation, the result must equal a reference that applied the
// same writes, and the counters must show a single pass. Crashes are simulated
// by cloning the store at random instants and recovering the clone.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  backup,
  consolidate,
  LiveDisk,
  MemoryChainOps,
  recoverConsolidation,
  resumeConsolidation,
  snapshot,
  readJobRecord,
  type BackupDevice,
} from '../bindings/disk/backup/index.js';
import { joinHostRuns, planExtents, subtractRanges, zeroRuns } from '../bindings/disk/backup/_plan.js';
import { RangeLock, RangeSet, restrictPlan } from '../bindings/disk/backup/_ranges.js';
import type { BlockExtent } from '../bindings/disk/device.js';

const MiB = 2 ** 20;

// ---- reference implementations -------------------------------------------------

function refPlan(ext: BlockExtent[], baseDepth: number, chunk: number): Array<{ offset: number; length: number; zero: boolean }> {
  // Byte-exact: mark every 512-byte sector, then cut runs at chunk boundaries.
  const ops: Array<{ offset: number; length: number; zero: boolean }> = [];
  for (const e of ext) {
    if (e.kind === 'unallocated' || e.depth >= baseDepth) continue;
    for (let o = e.offset; o < e.offset + e.length; o += 512) {
      const zero = e.kind === 'zero';
      const last = ops[ops.length - 1];
      if (last && last.zero === zero && last.offset + last.length === o && Math.floor(last.offset / chunk) === Math.floor(o / chunk)) last.length += 512;
      else ops.push({ offset: o, length: 512, zero });
    }
  }
  return ops;
}

function refSubtract(s: number, e: number, ranges: Array<[number, number]>): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let x = s; x < e; x++) {
    const covered = ranges.some(([a, b]) => a <= x && x < b);
    if (covered) continue;
    const last = out[out.length - 1];
    if (last && last[1] === x) last[1]++;
    else out.push([x, x + 1]);
  }
  return out;
}

const arbExtents = fc
  .array(fc.record({ len: fc.integer({ min: 1, max: 40 }), kind: fc.constantFrom('data', 'zero', 'unallocated'), depth: fc.integer({ min: 0, max: 3 }), gap: fc.integer({ min: 0, max: 3 }) }), { maxLength: 20 })
  .map((xs) => {
    let off = 0;
    return xs.map((x) => {
      off += x.gap * 512;
      const e: BlockExtent = { offset: off, length: x.len * 512, kind: x.kind as BlockExtent['kind'], depth: x.depth };
      off += e.length;
      return e;
    });
  });

describe('backup plan (core)', () => {
  it('plans what is allocated above the base, split at chunks, like the reference', () => {
    fc.assert(
      fc.property(arbExtents, fc.integer({ min: 0, max: 4 }), fc.constantFrom(512, 1024, 4096, 8192), (ext, bd, chunk) => {
        expect(planExtents(ext, bd === 4 ? Infinity : bd, chunk)).toEqual(refPlan(ext, bd === 4 ? Infinity : bd, chunk));
      }),
      { numRuns: 300 },
    );
  });

  it('subtracts mirrored ranges like the reference', () => {
    const arbRanges = fc.array(fc.tuple(fc.integer({ min: 0, max: 200 }), fc.integer({ min: 0, max: 40 })), { maxLength: 8 }).map((xs) =>
      xs.map(([s, l]) => [s, s + l] as [number, number]).sort((a, b) => a[0] - b[0]),
    );
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 150 }), fc.integer({ min: 0, max: 100 }), arbRanges, (s, l, rs) => {
        expect(subtractRanges(s, l, rs)).toEqual(refSubtract(s, s + l, rs));
      }),
      { numRuns: 300 },
    );
  });

  it('splits buffers into zero and data runs', () => {
    fc.assert(
      fc.property(fc.array(fc.boolean(), { minLength: 1, maxLength: 40 }), fc.integer({ min: 0, max: 15 }), (gs, tail) => {
        const g = 32;
        const buf = new Uint8Array(gs.length * g + tail);
        gs.forEach((data, i) => {
          if (data) buf[i * g + ((i * 7) % g)] = 1 + i;
        });
        const runs = zeroRuns(buf, g);
        // Runs tile the buffer, alternate, and say the truth about each granule.
        let o = 0;
        runs.forEach((r, i) => {
          expect(r.offset).toBe(o);
          if (i > 0) expect(r.zero).not.toBe(runs[i - 1]!.zero);
          expect(buf.subarray(r.offset, r.offset + r.length).some((b) => b !== 0)).toBe(!r.zero);
          o += r.length;
        });
        expect(o).toBe(buf.length);
      }),
      { numRuns: 200 },
    );
  });

  it('rejects unsorted extents and a bad chunk with VmkitError', () => {
    expect(() => planExtents([{ offset: 4096, length: 512, kind: 'data', depth: 0 }, { offset: 0, length: 512, kind: 'data', depth: 0 }], 1, 65536)).toThrow(
      expect.objectContaining({ code: 'CORRUPT' }),
    );
    expect(() => planExtents([{ offset: 0, length: 512, kind: 'data', depth: 0 }], 1, 1000)).toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
  });
});

describe('range bookkeeping', () => {
  it('restricts a plan to kept ranges, shifting the host offset of ops read from the layer file', () => {
    const keep = new RangeSet();
    keep.add(65536, 3 * 65536);
    keep.add(5 * 65536, 6 * 65536);
    const plan = [
      { offset: 0, length: 4 * 65536, zero: false, host: 0x100000 },
      { offset: 4 * 65536, length: 4 * 65536, zero: true },
    ];
    expect(restrictPlan(plan, keep)).toEqual([
      { offset: 65536, length: 2 * 65536, zero: false, host: 0x100000 + 65536 },
      { offset: 5 * 65536, length: 65536, zero: true },
    ]);
    // Joined host runs: guest-contiguous clusters stored apart; a piece keeps its segments.
    const joined = joinHostRuns(
      [
        { offset: 0, length: 65536, zero: false, host: 0x500000 },
        { offset: 65536, length: 2 * 65536, zero: false, host: 0x100000 },
        { offset: 3 * 65536, length: 65536, zero: false, host: 0x900000 },
        { offset: 5 * 65536, length: 65536, zero: false, host: 0xa00000 },
      ],
      1 << 20,
    );
    expect(joined.map((o) => [o.offset, o.length, o.segments?.length ?? 0])).toEqual([
      [0, 4 * 65536, 3],
      [5 * 65536, 65536, 0],
    ]);
    const piece = new RangeSet();
    piece.add(2 * 65536, 4 * 65536);
    expect(restrictPlan(joined, piece)).toEqual([
      {
        offset: 2 * 65536,
        length: 2 * 65536,
        zero: false,
        segments: [
          { offset: 2 * 65536, length: 65536, host: 0x110000 },
          { offset: 3 * 65536, length: 65536, host: 0x900000 },
        ],
      },
    ]);
    const one = new RangeSet();
    one.add(65536 + 4096, 2 * 65536);
    expect(restrictPlan(joined, one)).toEqual([{ offset: 65536 + 4096, length: 65536 - 4096, zero: false, host: 0x101000 }]);
    // Ops in different chunks stay apart.
    expect(joinHostRuns([{ offset: 0, length: 65536, zero: false, host: 0 }, { offset: 65536, length: 65536, zero: false, host: 0x30000 }], 65536)).toHaveLength(2);
  });

  it('RangeSet merges and answers like a bitmap', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 100 }), fc.integer({ min: 0, max: 20 })), { maxLength: 30 }), (adds) => {
        const set = new RangeSet();
        const bits = new Uint8Array(130);
        for (const [s, l] of adds) {
          set.add(s, s + l);
          bits.fill(1, s, s + l);
        }
        expect(set.bytes()).toBe(bits.reduce((a, b) => a + b, 0));
        const arr = set.toArray();
        for (let i = 1; i < arr.length; i++) expect(arr[i]![0]).toBeGreaterThan(arr[i - 1]![1]);
        expect(set.covers(10, 20)).toBe(bits.subarray(10, 20).every((b) => b === 1));
      }),
    );
  });

  it('RangeLock orders overlapping holders first-come first-served and lets disjoint ones run', async () => {
    const lock = new RangeLock();
    const log: string[] = [];
    const a = await lock.acquire(0, 10);
    const pb = lock.acquire(5, 15).then((rel) => {
      log.push('b');
      rel();
    });
    const c = await lock.acquire(20, 30); // disjoint: granted at once
    log.push('c');
    const pd = lock.acquire(0, 30).then((rel) => {
      log.push('d');
      rel();
    });
    await Promise.resolve();
    log.push('a');
    a();
    c();
    await Promise.all([pb, pd]);
    expect(log).toEqual(['c', 'a', 'b', 'd']);
  });
});

// ---- randomized concurrency ----------------------------------------------------

function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
}

interface Ref {
  bytes: Uint8Array;
}

async function fill(dev: BackupDevice, ref: Ref, rand: () => number, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const len = (1 + Math.floor(rand() * 32)) * 4096;
    const off = Math.floor(rand() * ((ref.bytes.length - len) / 512)) * 512;
    const data = new Uint8Array(len).fill(1 + Math.floor(rand() * 250));
    if (rand() < 0.1) data.fill(0);
    await dev.write(off, data);
    ref.bytes.set(data, off);
  }
}

/** Random writes on disjoint stripes from `writers` concurrent writers until stop(). */
function writer(dev: BackupDevice, ref: Ref, rand: () => number, writers = 2): { stop(): Promise<number> } {
  let stopped = false;
  let count = 0;
  const stripe = 2 * MiB;
  const loops = Array.from({ length: writers }, async (_, w) => {
    while (!stopped) {
      const nStripes = ref.bytes.length / stripe;
      const s = (Math.floor(rand() * (nStripes / writers)) * writers + w) * stripe;
      const len = (1 + Math.floor(rand() * 16)) * 512 * (rand() < 0.5 ? 1 : 8);
      const off = s + Math.floor(rand() * ((stripe - len) / 512)) * 512;
      const data = new Uint8Array(len).fill(1 + Math.floor(rand() * 250));
      await dev.write(off, data);
      ref.bytes.set(data, off); // acknowledged
      count++;
    }
  });
  return {
    async stop() {
      stopped = true;
      await Promise.all(loops);
      return count;
    },
  };
}

/**
 * Notes the ranges of the writes in flight on `disk`: a crash may land them or
 * not, so a spec compares everything else. Returns their ranges at the moment of the call.
 */
function trackInflight(disk: BackupDevice): () => Array<[number, number]> {
  const inflight = new Map<number, [number, number]>();
  let id = 0;
  const realWrite = disk.write.bind(disk);
  disk.write = async (off, data) => {
    const me = id++;
    inflight.set(me, [off, off + data.length]);
    try {
      await realWrite(off, data);
    } finally {
      inflight.delete(me);
    }
  };
  return () => [...inflight.values()];
}

async function readAll(dev: BackupDevice): Promise<Uint8Array> {
  return dev.read(0, dev.size);
}

function firstDiff(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

async function setup(seed: number, size = 32 * MiB): Promise<{ ops: MemoryChainOps; disk: LiveDisk; ref: Ref; rand: () => number }> {
  const rand = rng(seed);
  const ops = new MemoryChainOps({ jitterMs: 2, random: rand });
  await ops.create('base.qcow2', size, 'qcow2');
  const ref: Ref = { bytes: new Uint8Array(size) };
  const disk = await LiveDisk.open('base.qcow2', ops);
  await fill(disk, ref, rand, 60);
  return { ops, disk, ref, rand };
}

describe('snapshot, backup and consolidation under concurrent writes (memory)', () => {
  it('backs up the frozen image exactly while the guest writes to the delta', async () => {
    const { ops, disk, ref, rand } = await setup(11);
    const snap = await snapshot(disk);
    expect(disk.path).toBe('base-delta-1.qcow2');
    const frozenRef = ref.bytes.slice();
    const w = writer(disk, ref, rand);
    const job = backup(snap.image, 'backup.raw', { ops, format: 'raw' });
    const res = await job.done;
    const writes = await w.stop();
    expect(writes).toBeGreaterThan(0);
    expect(res.remaining).toBe(0);
    expect(res.copiedBytes).toBeGreaterThan(0);
    const b = await ops.open('backup.raw', { readOnly: true });
    expect(firstDiff(await readAll(b), frozenRef)).toBe(-1);
    expect(firstDiff(await readAll(disk), ref.bytes)).toBe(-1);
    // A stream backup of the same image is the same bytes.
    const chunks: Uint8Array[] = [];
    await backup(snap.image, (c) => void chunks.push(c.slice())).done;
    const streamed = new Uint8Array(snap.image.size);
    let o = 0;
    for (const c of chunks) (streamed.set(c, o), (o += c.length));
    expect(o).toBe(snap.image.size);
    expect(firstDiff(streamed, frozenRef)).toBe(-1);
    await snap.image.close();
  });

  it('an incremental (top-layer) backup holds only what changed since the layer below', async () => {
    const { ops, disk, ref, rand } = await setup(12);
    const s1 = await snapshot(disk);
    await fill(disk, ref, rand, 20); // changes after the first snapshot
    const s2 = await snapshot(disk); // freezes base-delta-1
    await backup(s1.image, 'full.qcow2', { ops, format: 'qcow2' }).done;
    const inc = await backup(s2.image, 'inc.qcow2', { ops, format: 'qcow2', scope: 'top', backing: 'full.qcow2' }).done;
    expect(inc.planned).toBeLessThanOrEqual(ops.allocated('base-delta-1.qcow2'));
    const chain = await ops.open('inc.qcow2', { readOnly: true });
    expect(firstDiff(await readAll(chain), await readAll(s2.image))).toBe(-1);
  });

  for (const mode of ['base', 'target', 'full'] as const) {
    it(`consolidates ${mode === 'base' ? 'into the base' : mode === 'target' ? 'onto a new overlay target' : 'onto a new full target'} in one pass while a writer runs at full speed`, async () => {
      for (const seed of [1, 2, 3]) {
        const { ops, disk, ref, rand } = await setup(100 * seed + mode.length);
        const snap = await snapshot(disk);
        await snap.image.close();
        await fill(disk, ref, rand, 80); // the delta's data
        const delta = disk.path;
        let deltaBytes = 0;
        const hook = (pt: string): void => {
          if (pt === 'copying') deltaBytes = ops.allocated(delta); // allocation only grows: an upper bound of the plan
        };
        const w = writer(disk, ref, rand);
        const job = await consolidate(disk, mode === 'base' ? { into: 'base', hook } : { into: 'new.qcow2', full: mode === 'full', chunk: 65536 * 4, hook });
        const res = await job.done;
        const writes = await w.stop();
        expect(writes).toBeGreaterThan(0);
        expect(res.done && res.inSync).toBe(true);
        expect(res.mirroredWrites).toBeGreaterThan(0);
        // single pass: nothing written twice, nothing beyond the plan
        expect(res.recopiedBytes).toBe(0);
        expect(res.copiedBytes + res.zeroedBytes + res.skippedBytes).toBe(res.planned);
        if (mode !== 'full') expect(res.planned).toBeLessThanOrEqual(deltaBytes);
        expect(disk.path).toBe(mode === 'base' ? 'base.qcow2' : 'new.qcow2');
        expect(await ops.exists(snap.delta)).toBe(false);
        expect(await readJobRecord(ops, snap.delta)).toBeUndefined();
        expect(await ops.backingOf(disk.path)).toBe(mode === 'target' ? 'base.qcow2' : undefined);
        expect(firstDiff(await readAll(disk), ref.bytes)).toBe(-1);
        // the guest keeps writing to the new active layer
        await fill(disk, ref, rand, 10);
        expect(firstDiff(await readAll(await ops.open(disk.path, { readOnly: true })), ref.bytes)).toBe(-1);
      }
    });
  }

  it('converges under sustained writes with a rate limit, and stays ready until complete()', async () => {
    const { disk, ref, rand } = await setup(7);
    await snapshot(disk).then((s) => s.image.close());
    await fill(disk, ref, rand, 40);
    const w = writer(disk, ref, rand);
    const job = await consolidate(disk, { autoComplete: false, rateLimit: 64 * MiB });
    while (!job.progress().inSync) await new Promise((r) => setTimeout(r, 5));
    expect(job.progress().state).toBe('ready');
    expect(job.progress().remaining).toBe(0);
    await new Promise((r) => setTimeout(r, 30)); // still mirroring while ready
    job.complete();
    await job.done;
    await w.stop();
    expect(firstDiff(await readAll(disk), ref.bytes)).toBe(-1);
  });

  it('cancel leaves the delta active with every write', async () => {
    const { ops, disk, ref, rand } = await setup(8);
    const snap = await snapshot(disk);
    await fill(disk, ref, rand, 80);
    const w = writer(disk, ref, rand);
    const job = await consolidate(disk, { into: 'tgt.qcow2', rateLimit: 4 * MiB });
    await new Promise((r) => setTimeout(r, 20));
    await job.cancel();
    await expect(job.done).rejects.toMatchObject({ code: 'CANCELLED' });
    await w.stop();
    expect(disk.path).toBe(snap.delta);
    expect(await ops.exists('tgt.qcow2')).toBe(false);
    expect(await readJobRecord(ops, snap.delta)).toBeUndefined();
    expect(firstDiff(await readAll(disk), ref.bytes)).toBe(-1);
  });

  it('stops on a target error (policy stop) and retries it (policy retry)', async () => {
    for (const policy of ['stop', 'retry'] as const) {
      const { ops, disk, ref, rand } = await setup(9);
      await snapshot(disk).then((s) => s.image.close());
      await fill(disk, ref, rand, 40);
      const realOpen = ops.open.bind(ops);
      let failures = 0;
      ops.open = async (p, o) => {
        const d = await realOpen(p, o);
        if (p !== 'base.qcow2' || o?.readOnly) return d;
        const realWrite = d.write.bind(d);
        d.write = async (off, data) => {
          if (failures++ < 2) throw new Error('injected EIO');
          return realWrite(off, data);
        };
        return d;
      };
      const job = await consolidate(disk, { onError: policy, retries: 4 });
      if (policy === 'stop') {
        await expect(job.done).rejects.toMatchObject({ code: 'IO' });
        expect(job.progress().state).toBe('failed');
      } else {
        const res = await job.done;
        expect(res.retries).toBe(2);
      }
      expect(firstDiff(await readAll(disk), ref.bytes)).toBe(-1);
    }
  });

  it('a crash at any instant leaves a recoverable chain with no acknowledged write lost', async () => {
    let pivots = 0;
    let early = 0;
    for (let seed = 1; seed <= 12; seed++) {
      const { ops, disk, ref, rand } = await setup(1000 + seed, 16 * MiB);
      const snap = await snapshot(disk);
      await fill(disk, ref, rand, 60);
      const mode = seed % 2 === 0 ? 'base' : 'tgt.qcow2';
      // Writes acknowledged before the crash are in `ref` when it is taken;
      // writes in flight at that instant may land or not: note their ranges.
      let crashed: { ops: MemoryChainOps; ref: Uint8Array; loose: Array<[number, number]> } | undefined;
      const inflight = trackInflight(disk);
      const crashAt = rand() * 40;
      const timer = setTimeout(() => {
        crashed = { ops: ops.clone(), ref: ref.bytes.slice(), loose: inflight() };
      }, crashAt);
      const w = writer(disk, ref, rand);
      const job = await consolidate(disk, { into: mode, chunk: 65536 * 2, rateLimit: 128 * MiB });
      await job.done;
      await w.stop();
      clearTimeout(timer);
      if (!crashed) crashed = { ops: ops.clone(), ref: ref.bytes.slice(), loose: [] };
      // Recover the crashed copy: finish or roll back, then (alternately) resume.
      const c = crashed.ops;
      const rec = await readJobRecord(c, snap.delta);
      if (rec?.phase === 'pivot') pivots++;
      else if (rec?.phase === 'mirroring') early++;
      let active: string;
      if (rec && rec.phase === 'mirroring' && seed % 3 !== 1) {
        const d = await LiveDisk.open(snap.delta, c);
        await (await resumeConsolidation(d)).done;
        active = d.path;
      } else {
        active = (await recoverConsolidation(c, snap.delta)).active;
      }
      expect(await readJobRecord(c, snap.delta)).toBeUndefined();
      const got = await readAll(await c.open(active, { readOnly: true }));
      const want = crashed.ref;
      for (const [s, e] of crashed.loose) got.set(want.subarray(s, e), s); // either outcome is fine there
      expect(firstDiff(got, want)).toBe(-1);
    }
    expect(early + pivots).toBeGreaterThan(0);
  });

  it('a crash around the finish: recovery names an active layer that exists and holds every write', async () => {
    // The probe's 7 of 20: the job had finished, its record was gone, and recovery answered
    // with the delta, which no longer existed. Crash points from the pivot to after the job's end:
    // up to the record's removal recovery rolls forward to the target; after it nothing on disk
    // says what the delta became, and recovery says so (NOT_FOUND) instead of naming the delta.
    const points = ['pivot-recorded', 'pivoted', 'delta-removed', 'finished', 'after'] as const;
    for (const into of ['base', 'tgt.qcow2', 'keep'] as const) {
      for (const point of points) {
        const { ops, disk, ref, rand } = await setup(500 + points.indexOf(point), 4 * MiB);
        const snap = await snapshot(disk);
        await fill(disk, ref, rand, 20);
        let crashed: MemoryChainOps | undefined;
        const job = await consolidate(disk, {
          into: into === 'keep' ? 'base' : into,
          ...(into === 'keep' ? { keepDelta: true } : {}),
          hook: (pt) => {
            if (pt === point) crashed = ops.clone();
          },
        });
        const res = await job.done;
        crashed ??= ops.clone();
        const finished = point === 'finished' || point === 'after';
        const want = into === 'base' ? 'base.qcow2' : into === 'keep' ? snap.delta : 'tgt.qcow2';
        expect(res.active).toBe(want);
        // Twice: the second call finds what a finished job leaves, and still never names a layer that is not there.
        for (let k = 0; k < 2; k++) {
          const r = await recoverConsolidation(crashed, snap.delta).catch((e: { code: string }) => e.code);
          if ((finished || k === 1) && into !== 'keep') {
            expect([into, point, r]).toEqual([into, point, 'NOT_FOUND']);
            continue;
          }
          const { active } = r as { active: string };
          expect([into, point, active, await crashed.exists(active)]).toEqual([into, point, want, true]);
          expect(firstDiff(await readAll(await crashed.open(active, { readOnly: true })), ref.bytes)).toBe(-1);
          expect(await readJobRecord(crashed, snap.delta)).toBeUndefined();
        }
        if (finished && into !== 'keep') expect(firstDiff(await readAll(await crashed.open(want, { readOnly: true })), ref.bytes)).toBe(-1);
        await disk.close();
      }
    }
  });

  it('resumes from the persisted cursor: a crash late in the pass leaves little to copy', async () => {
    for (const at of ['half', 'in-sync'] as const) {
      const { ops, disk, ref, rand } = await setup(77, 16 * MiB);
      const snap = await snapshot(disk);
      await fill(disk, ref, rand, 80);
      // As in the crash spec above: writes in flight at the crash may land or not (the images are
      // real qcow2, whose writes take several steps): note their ranges.
      const inflight = trackInflight(disk);
      const w = writer(disk, ref, rand);
      let crashed: { ops: MemoryChainOps; ref: Uint8Array; loose: Array<[number, number]> } | undefined;
      const job = await consolidate(disk, {
        into: 'base',
        chunk: 65536,
        parallel: 1,
        checkpointMs: 0,
        onProgress: (p) => {
          if (at === 'half' && !crashed && p.remaining < p.planned / 2) crashed = { ops: ops.clone(), ref: ref.bytes.slice(), loose: inflight() };
        },
        hook: (pt) => {
          if (at === 'in-sync' && pt === 'in-sync') crashed = { ops: ops.clone(), ref: ref.bytes.slice(), loose: inflight() };
        },
      });
      const first = await job.done;
      await w.stop();
      const c = crashed!.ops;
      const rec = await readJobRecord(c, snap.delta);
      expect(rec?.phase).toBe('mirroring');
      expect(rec!.cursor).toBeGreaterThan(0);
      const deltaAlloc = c.allocated(snap.delta);
      const d = await LiveDisk.open(snap.delta, c);
      const res = await (await resumeConsolidation(d, { into: 'base' })).done;
      const marked = [...atob(rec!.intent)].reduce((n, ch) => n + [...ch.charCodeAt(0).toString(2)].filter((b) => b === '1').length, 0);
      // The resumed pass visits only [cursor, end) and the marked regions below it.
      expect(res.planned).toBeLessThanOrEqual(16 * MiB - rec!.cursor + marked * rec!.intentGranule);
      if (at === 'in-sync') {
        // The pass was over: only regions with writes unflushed at the last checkpoint remain.
        expect(rec!.cursor).toBe(16 * MiB);
        expect(res.planned).toBeLessThanOrEqual(marked * rec!.intentGranule);
      }
      // Less than a pass from the start, which would copy everything the delta holds.
      expect(res.planned).toBeLessThan(deltaAlloc);
      expect(first.planned).toBeGreaterThan(0);
      expect(res.recopiedBytes).toBe(0);
      expect(d.path).toBe('base.qcow2');
      const got = await readAll(d);
      for (const [s, e] of crashed!.loose) got.set(crashed!.ref.subarray(s, e), s); // either outcome is fine there
      expect(firstDiff(got, crashed!.ref)).toBe(-1);
    }
  });

  it('refuses a corrupt or foreign job record with a stable code', async () => {
    const ops = new MemoryChainOps();
    await ops.writeTextAtomic('d.qcow2.vmkit-job', 'not json');
    await expect(readJobRecord(ops, 'd.qcow2')).rejects.toMatchObject({ code: 'CORRUPT' });
    await ops.writeTextAtomic('d.qcow2.vmkit-job', JSON.stringify({ magic: 'other' }));
    await expect(readJobRecord(ops, 'd.qcow2')).rejects.toMatchObject({ code: 'CORRUPT' });
    await ops.writeTextAtomic('d.qcow2.vmkit-job', JSON.stringify({ magic: 'vmkit-disk-job', version: 99 }));
    await expect(readJobRecord(ops, 'd.qcow2')).rejects.toMatchObject({ code: 'UNSUPPORTED' });
    await fc.assert(
      fc.asyncProperty(fc.jsonValue(), async (v) => {
        await ops.writeTextAtomic('d.qcow2.vmkit-job', JSON.stringify(v));
        await readJobRecord(ops, 'd.qcow2').then(
          () => expect.fail('accepted a random record'),
          (e: unknown) => expect(['CORRUPT', 'UNSUPPORTED']).toContain((e as { code: string }).code),
        );
      }),
      { numRuns: 100 },
    );
  });
});
