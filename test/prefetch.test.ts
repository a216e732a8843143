// Prefetch engine and policies (Node and Chromium): exact fault, prefetch,
// hit, waste and read counts for every policy on small hand-built guests,
// each count worked out in the comments; and the core against a plain
// TypeScript model of the same policies on random traces.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { PrefetchEngine, VmkitError, coalesce, createPolicy, simulate, type Translator } from '../bindings/memory/index.js';

const PS = 0x1000n;

/** An engine over `pages` frames with virtual page v -> frame map(v) for v in [0, n). */
function engineWith(pages: number, n: number, map: (v: number) => number): PrefetchEngine {
  const e = new PrefetchEngine(pages, { mapCapacity: n });
  const pairs: [bigint, number][] = [];
  for (let v = 0; v < n; v++) pairs.push([BigInt(v), map(v)]);
  expect(e.map(pairs)).toBe(n);
  return e;
}

const seq = (vs: number[]): bigint[] => vs.map((v) => BigInt(v) * PS + 0x123n);
const range = (a: number, b: number): number[] => Array.from({ length: b - a }, (_, i) => a + i);

describe('coalesce', () => {
  it('sorts, drops duplicates, joins consecutive pages', () => {
    expect(Array.from(coalesce([5, 3, 4, 9, 9, 1]))).toEqual([1, 1, 3, 3, 9, 1]);
    expect(Array.from(coalesce([]))).toEqual([]);
  });
});

describe('policies: exact counts on hand-built guests', () => {
  // Guest A: 64 frames; virtual pages 0..15 map to frames 0, 4, 8, ... 60, so
  // no two virtual neighbours are physical neighbours and frames 4v±1 hold
  // nothing the trace uses.
  const A = (): PrefetchEngine => engineWith(64, 16, (v) => 4 * v);
  const trace = seq(range(0, 16));

  it('none: one fault per distinct page, nothing prefetched', () => {
    const e = A();
    // 16 distinct pages touched once each, then all 16 again: 16 faults, 32 accesses.
    const r = simulate(e, createPolicy('none'), [...trace, ...trace]);
    expect([r.accesses, r.faults, r.prefetched, r.prefetchHits, r.wasted, r.reads, r.loaded]).toEqual([32, 16, 0, 0, 0, 16, 16]);
    expect(r.bytesRead).toBe(16 * 4096);
    expect(r.workingSet).toEqual(range(0, 16).map((v) => 4 * v));
    e.close();
  });

  it('physical ±1: loads frames 4v-1 and 4v+1 that nothing uses', () => {
    const e = A();
    // Every access faults (16); frame 0 brings frame 1 only (no frame -1),
    // the 15 others bring two each: 1 + 30 = 31 prefetched, none used. Each
    // fault reads one run 4v-1..4v+1: 16 reads.
    const r = simulate(e, createPolicy('physical', { back: 1, ahead: 1 }), trace);
    expect([r.faults, r.prefetched, r.prefetchHits, r.wasted, r.reads]).toEqual([16, 31, 0, 31, 16]);
    e.close();
  });

  it('virtual ±1: a fault at an even page brings the next one', () => {
    const e = A();
    // Fault at v=0 loads v0, v1 (no v-1). v1 hits. v2 faults and loads v2, v3
    // (v1 is resident). So faults at 0, 2, ..., 14: 8 faults, 8 prefetched,
    // all used. Frames 4v and 4v+4 are not consecutive: two reads per fault.
    const r = simulate(e, createPolicy('virtual', { back: 1, ahead: 1 }), trace);
    expect([r.faults, r.prefetched, r.prefetchHits, r.wasted, r.reads]).toEqual([8, 8, 8, 0, 16]);
    e.close();
  });

  it('virtual: consecutive frames become one read', () => {
    // Guest B: v -> frame 40 - v (reversed): the window v..v+3 is frames 37-v..40-v, one run.
    const e = engineWith(64, 16, (v) => 40 - v);
    // ahead 3: faults at 0, 4, 8, 12: 4 faults, 12 prefetched and used, 4 reads.
    const r = simulate(e, createPolicy('virtual', { back: 0, ahead: 3 }), trace);
    expect([r.faults, r.prefetched, r.prefetchHits, r.wasted, r.reads]).toEqual([4, 12, 12, 0, 4]);
    e.close();
  });

  it('virtual: the window past the trace is waste', () => {
    const e = A();
    // Trace uses v 0..5 only. ahead 3, back 0: faults at 0 (loads 0..3) and
    // 4 (loads 4..7); v6, v7 are never used: 2 faults, 6 prefetched, 4 hits, 2 wasted.
    const r = simulate(e, createPolicy('virtual', { back: 0, ahead: 3 }), seq(range(0, 6)));
    expect([r.faults, r.prefetched, r.prefetchHits, r.wasted]).toEqual([2, 6, 4, 2]);
    e.close();
  });

  it('adaptive: a sequential scan ramps ×4 then ×2 by asynchronous readahead, without more faults', () => {
    // Guest C: 64 virtual pages on scattered frames (v -> 7v mod 64, a permutation).
    const e = engineWith(64, 64, (v) => (7 * v) % 64);
    // Initial window 2 (ahead), a quarter (0) behind; max 256, so ×4 below 16 pages, ×2 above.
    //  fault v0: read-around v0..v2 (2 prefetched); marker 3/4 in: v0 + 2 - 0 = v2.
    //  hit v1; hit v2 = marker: next window ×4 = 8 pages from v3: v3..v10, marker v3.
    //  hit v3 = marker: ×4 = 32 pages v11..v42, marker v11.
    //  hits v4..v10; hit v11 = marker: ×2 = 64 pages from v43: v43..v63 (21 mapped), marker v43.
    //  hit v43 = marker: 128 pages from v64: none mapped, nothing loaded.
    // 1 fault, 2 + 8 + 32 + 21 = 63 prefetched, all used.
    const r = simulate(e, createPolicy('adaptive', { ahead: 2, minWindow: 2, maxWindow: 256 }), seq(range(0, 64)));
    expect([r.faults, r.prefetched, r.prefetchHits, r.wasted]).toEqual([1, 63, 63, 0]);
    e.close();
  });

  it('adaptive: follows a descending scan', () => {
    const e = engineWith(64, 64, (v) => (7 * v) % 64);
    // Descending 63..0. Fault v63: read-around up, w=2: v63 only (v64, v65
    // unmapped); no marker (nothing loaded). Fault v62: just below the
    // stream's window (within its size 2): a sequential miss turning down,
    // size kept: v60..v62 (2 prefetched), marker v61 (the first loaded page down).
    // Hit v61 = marker: ×4 = 8 pages down from v59: v52..v59, marker v59.
    // Hit v59: ×4 = 32: v20..v51, marker v51. Hit v51: ×2 = 64 from v19: v0..v19 (20).
    // 2 faults, 2 + 8 + 32 + 20 = 62 prefetched, all used.
    const r = simulate(e, createPolicy('adaptive', { ahead: 2, minWindow: 2, maxWindow: 256 }), seq(range(0, 64).reverse()));
    expect([r.faults, r.prefetched, r.prefetchHits, r.wasted]).toEqual([2, 62, 62, 0]);
    e.close();
  });

  it('adaptive: the read-around shrinks when prefetches are wasted', () => {
    const e = engineWith(256, 256, (v) => v);
    // Touch every 16th page: v0, v16, ..., v240 (16 accesses), initial window 8.
    // Fault v0: read-around v0..v8 (2 behind, clipped at 0): 8 prefetched, none used.
    // Fault v16: not next to that window: read-around, judged on the last
    //   window (0 of 8 used): ra 8 -> 4: v15..v20 (1 behind, 4 ahead): 5.
    // Fault v32: 0 of 5 used: ra 2: v32..v34 (2). Then ra stays at the
    // minimum 2: v48 .. v240, 13 more faults of 2 each.
    // 16 faults, 8 + 5 + 2 + 13*2 = 41 prefetched, 0 used.
    const r = simulate(e, createPolicy('adaptive', { ahead: 8, minWindow: 2 }), seq(range(0, 16).map((i) => 16 * i)));
    expect([r.faults, r.prefetched, r.prefetchHits, r.wasted]).toEqual([16, 41, 0, 41]);
    e.close();
  });

  it("adaptive: a sequential miss after a wasted window halves the stream's window", () => {
    const e = engineWith(64, 64, (v) => v);
    // Fault v0: read-around v0..v8 (8 prefetched). Fault v9, the page right
    // after the window: a sequential miss, but 0 of its 8 pages were used:
    // the stream's window halves to 4: v9..v13 (4). A second stream: fault
    // v40 is a read-around (40 is not next to v9..v13), judged on the last
    // window (0 of 4): ra 8 -> 4: v39..v44 (5).
    const r = simulate(e, createPolicy('adaptive', { ahead: 8, minWindow: 2 }), seq([0, 9, 40]));
    expect([r.faults, r.prefetched, r.prefetchHits, r.wasted]).toEqual([3, 17, 0, 17]);
    e.close();
  });

  it('adaptive: a window stops at a hole of `gap` unmapped pages (the edge of a mapping)', () => {
    // Two mappings: v0..v15 and v40..v55 (24 unmapped pages between), identity frames.
    // Fault v10 with initial window 32: 8 behind, 32 ahead. gap 16: the hole of 24
    // ends the window at v15: v2..v15 (13 prefetched). gap 32: the hole is not an
    // edge, the window reaches v40..v42 too (3 more).
    const at = (gap: number): number[] => {
      const f = new PrefetchEngine(64, { mapCapacity: 32 });
      f.map([...range(0, 16), ...range(40, 56)].map((v) => [BigInt(v), v] as const));
      const r = simulate(f, createPolicy('adaptive', { ahead: 32, gap }), seq([10]));
      f.close();
      return [r.faults, r.prefetched];
    };
    expect(at(16)).toEqual([1, 13]);
    expect(at(32)).toEqual([1, 16]);
  });

  it('replay: the recorded working set is loaded up front', () => {
    const e1 = A();
    const first = simulate(e1, createPolicy('none'), seq([3, 1, 2]));
    e1.close();
    expect(first.workingSet).toEqual([12, 4, 8]);
    // Second run touches 1, 2, 3 (recorded) and 9, 10 (new): replay loads
    // 3 frames (reads: 4, 8, 12 are not consecutive: 3), hits all 3, faults 2.
    const e2 = A();
    const r = simulate(e2, createPolicy('replay', { record: first.workingSet }), seq([1, 2, 3, 9, 10]));
    expect([r.faults, r.prefetched, r.prefetchHits, r.wasted, r.reads]).toEqual([2, 3, 3, 0, 5]);
    e2.close();
  });

  it('replay: recorded pages the next run skips are waste', () => {
    const e = A();
    // Record {0, 4, 8, 12} (v 0..3); the run uses v0, v1 only: 0 faults, 4 prefetched, 2 hits, 2 wasted.
    const r = simulate(e, createPolicy('replay', { record: [0, 4, 8, 12] }), seq([0, 1, 0]));
    expect([r.faults, r.prefetched, r.prefetchHits, r.wasted]).toEqual([0, 4, 2, 2]);
    e.close();
  });

  it('replay+virtual: the neighbourhood covers what the record missed', () => {
    const e = A();
    // Record v0..v3. The run uses v0..v3 then v8..v11. Replay: 4 prefetched
    // up front, all used. v8 faults; the window ahead 3 brings v9..v11: 1
    // fault, 7 prefetched, 7 used. Replay alone would fault 4 times.
    const r = simulate(e, createPolicy('replay+virtual', { record: [0, 4, 8, 12], back: 0, ahead: 3 }), seq([0, 1, 2, 3, 8, 9, 10, 11]));
    expect([r.faults, r.prefetched, r.prefetchHits, r.wasted]).toEqual([1, 7, 7, 0]);
    e.close();
    const e2 = A();
    const r2 = simulate(e2, createPolicy('replay', { record: [0, 4, 8, 12] }), seq([0, 1, 2, 3, 8, 9, 10, 11]));
    expect(r2.faults).toBe(4);
    e2.close();
  });

  it('unmapped addresses are counted, not fatal', () => {
    const e = A();
    // v100 and v200 are unmapped; v0 faults once.
    const r = simulate(e, createPolicy('virtual'), seq([100, 0, 200, 0]));
    expect([r.accesses, r.unmapped, r.faults]).toEqual([4, 2, 1]);
    e.close();
  });
});

describe('engine', () => {
  it('faults by virtual neighbourhood with coalesced runs', () => {
    const e = new PrefetchEngine(16, { mapCapacity: 4 });
    e.map([[10n, 7], [11n, 3], [12n, 8]]);
    expect(Array.from(e.faultVirtual(11n, 1, 1))).toEqual([3, 1, 7, 2]);
    expect(e.residentCount()).toBe(3);
    expect(Array.from(e.residentBitmap())).toEqual([0b1000_1000, 0b1]); // frames 3, 7 in byte 0; 8 in byte 1
    expect(e.reverse(8)).toBe(12n);
    expect(e.faultVirtual(10n, 4, 4).length).toBe(0);
    e.close();
    expect(() => e.stats()).toThrow(VmkitError);
  });

  it('setResident counts across byte boundaries', () => {
    const e = new PrefetchEngine(100);
    expect(e.setResident(3, 40, true)).toBe(40); // 3..42: a partial byte, 4 whole bytes, a partial byte
    expect(e.setResident(10, 50, true)).toBe(57); // 43..59 new: 17 more
    expect(e.setResident(0, 100, false)).toBe(0);
    expect(e.setResident(97, 3, true)).toBe(3);
    expect(Array.from(e.residentBitmap())).toEqual([...new Array<number>(12).fill(0), 0b1110]);
    e.close();
  });

  it('a batch of faults equals the faults one by one', () => {
    const a = engineWith(256, 128, (v) => (37 * v) % 256);
    const b = engineWith(256, 128, (v) => (37 * v) % 256);
    const vpns = [5, 6, 40, 200, 90, 41];
    const one: number[] = [];
    for (const v of vpns) if (v < 128) one.push(...a.faultVirtual(BigInt(v), 2, 3));
    const all = b.faultVirtualBatch(BigUint64Array.from(vpns.map(BigInt)), 2, 3);
    expect(Array.from(all)).toEqual(one);
    expect(b.stats()).toEqual(a.stats());
    a.close();
    b.close();
  });

  it('rejects bad arguments with stable codes', () => {
    const e = new PrefetchEngine(16, { mapCapacity: 2 });
    expect(() => e.faultVirtual(5n, 1, 1)).toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
    expect(() => e.faultPhysical(16, 0, 0)).toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
    expect(() => e.faultPhysical(1, -1, 0)).toThrow(VmkitError);
    // The table holds at least the capacity asked for (rounded up, at most half full): 16 slots, 8 entries.
    expect(e.map(range(0, 8).map((v) => [BigInt(v), v] as [bigint, number]))).toBe(8);
    expect(() => e.map([[100n, 1]])).toThrow(expect.objectContaining({ code: 'LIMIT' }));
    expect(() => createPolicy('bogus')).toThrow(VmkitError);
    expect(() => createPolicy('replay')).toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
    e.close();
  });

  it('a translator gives the same counts as the core table', () => {
    // v -> frame (5v + 3) mod 64 for v < 40, as a Translator.
    const f = (v: number): number => (5 * v + 3) % 64;
    const t: Translator = {
      translateInto(gvas, out) {
        for (let i = 0; i < gvas.length; i++) {
          const v = Number(gvas[i]! >> 12n);
          out[i] = v < 40 ? (BigInt(f(v)) << 12n) | (gvas[i]! & 0xfffn) : 0xffff_ffff_ffff_ffffn;
        }
      },
    };
    const tr = seq([0, 5, 6, 7, 30, 31, 39, 41, 2, 3]);
    for (const name of ['none', 'physical', 'virtual', 'adaptive'] as const) {
      const a = engineWith(64, 40, f);
      const b = new PrefetchEngine(64, { translator: t });
      const ra = simulate(a, createPolicy(name, { back: 2, ahead: 4 }), tr);
      const rb = simulate(b, createPolicy(name, { back: 2, ahead: 4 }), tr);
      expect([rb.accesses, rb.faults, rb.prefetched, rb.prefetchHits, rb.wasted, rb.reads, rb.unmapped]).toEqual([ra.accesses, ra.faults, ra.prefetched, ra.prefetchHits, ra.wasted, ra.reads, ra.unmapped]);
      a.close();
      b.close();
    }
  });
});

/** Plain TypeScript model of the fixed policies, for the differential test. */
function model(map: Map<number, number>, pages: number, trace: number[], kind: 'none' | 'physical' | 'virtual', back: number, ahead: number): { faults: number; prefetched: number; hits: number; wasted: number; reads: number } {
  const resident = new Set<number>();
  const pf = new Set<number>();
  let faults = 0, prefetched = 0, hits = 0, reads = 0;
  for (const v of trace) {
    const p = map.get(v);
    if (p === undefined) continue;
    if (resident.has(p)) {
      if (pf.delete(p)) hits++;
      continue;
    }
    faults++;
    const load = new Set<number>([p]);
    const cands = kind === 'none' ? [] : kind === 'physical' ? range(p - back, p + ahead + 1) : range(v - back, v + ahead + 1).map((w) => map.get(w) ?? -1);
    for (const c of cands) if (c >= 0 && c < pages && !resident.has(c)) load.add(c);
    const sorted = [...load].sort((x, y) => x - y);
    for (let i = 0; i < sorted.length; i++) if (i === 0 || sorted[i] !== sorted[i - 1]! + 1) reads++;
    for (const c of sorted) {
      resident.add(c);
      if (c !== p) {
        pf.add(c);
        prefetched++;
      }
    }
  }
  return { faults, prefetched, hits, wasted: pf.size, reads };
}

describe('core against the model', () => {
  it('none, physical and virtual agree on random guests and traces', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 127 }), { minLength: 1, maxLength: 64 }),
        fc.array(fc.integer({ min: 0, max: 80 }), { maxLength: 200 }),
        fc.integer({ min: 0, max: 9 }),
        fc.integer({ min: 0, max: 9 }),
        fc.constantFrom('none' as const, 'physical' as const, 'virtual' as const),
        (frames, trace, back, ahead, kind) => {
          const map = new Map<number, number>();
          frames.forEach((f, v) => map.set(v, f));
          const e = new PrefetchEngine(128, { mapCapacity: frames.length });
          e.map([...map].map(([v, f]) => [BigInt(v), f] as [bigint, number]));
          const r = simulate(e, createPolicy(kind, { back, ahead }), seq(trace));
          e.close();
          const m = model(map, 128, trace, kind, back, ahead);
          expect([r.faults, r.prefetched, r.prefetchHits, r.wasted, r.reads]).toEqual([m.faults, m.prefetched, m.hits, m.wasted, m.reads]);
        },
      ),
      { numRuns: 150 },
    );
  });
});
