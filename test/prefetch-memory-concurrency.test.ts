// Lazy guest memory under concurrent asynchronous access (Node and Chromium):
// fast-check's scheduler decides when each of the page source's reads
// completes, so every interleaving of loads, faults that find their page being
// loaded, and writes that race a load is tried. Each access takes effect at
// one point (the copy after its pages are in): reads must see a reference
// model at that point, no write may be lost, and a page is read from the
// source once however many accesses fault on it together.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { LazyGuestMemory, bufferPages, createPolicy, gpa, type PageSource } from '../bindings/memory/index.js';

const PS = 4096;
const PAGES = 12;

function image(pages: number): Uint8Array {
  const m = new Uint8Array(pages * PS);
  for (let i = 0; i < m.length; i++) m[i] = (i * 7 + (i >> 12) * 13) & 0xff;
  return m;
}

/** A page source whose reads complete when the scheduler says, counting reads per page. */
function scheduled(img: Uint8Array, s: fc.Scheduler, perPage: number[], failPage = -1, blocks = false): PageSource {
  const base = bufferPages(img);
  let failed = false;
  // With blockOf (as a checkpoint has), the memory reads a fault's runs one after another.
  const extra = blocks ? { blockOf: (page: number) => page >> 2 } : {};
  const read = s.scheduleFunction(async function readPages(first: number, count: number) {
    return { first, count };
  });
  return {
    ...extra,
    pageSize: PS,
    pageCount: base.pageCount,
    readPagesIntoSync(first, count, dst) {
      for (let p = first; p < first + count; p++) perPage[p]!++;
      base.readPagesIntoSync(first, count, dst);
    },
    async readPagesInto(first, count, dst) {
      for (let p = first; p < first + count; p++) perPage[p]!++;
      await read(first, count);
      // One transient failure of the read covering `failPage`: the load is shared, so are its outcome and retry.
      if (!failed && failPage >= first && failPage < first + count) {
        failed = true;
        throw new Error('transient source failure');
      }
      base.readPagesIntoSync(first, count, dst);
    },
  };
}

type Op = { kind: 'read' | 'write'; at: number; len: number; fill: number };

const opArb = fc.record({
  kind: fc.constantFrom<'read' | 'write'>('read', 'write'),
  // Accesses cluster on a few pages and may straddle a page boundary.
  at: fc.integer({ min: 0, max: PAGES * PS - 1 }),
  len: fc.integer({ min: 1, max: 2 * PS }),
  fill: fc.integer({ min: 1, max: 255 }),
});

const policyArb = fc.constantFrom('none', 'physical-around', 'physical-ahead');

function policyOf(name: string) {
  if (name === 'none') return createPolicy('none');
  if (name === 'physical-around') return createPolicy('physical', { back: 2, ahead: 2 });
  return createPolicy('physical', { back: 0, ahead: 5 });
}

// Engines are a bounded core resource: every memory a run opens is closed after it, pass or fail.
const opened: LazyGuestMemory[] = [];
function closeAll(): void {
  for (const m of opened.splice(0)) m.close();
}

async function runOps(s: fc.Scheduler, ops: Op[], policy: string, failPage = -1, blocks = false) {
  const img = image(PAGES);
  const model = img.slice();
  const perPage = new Array<number>(PAGES).fill(0);
  const mem = await LazyGuestMemory.open(scheduled(img, s, perPage, failPage, blocks), { policy: policyOf(policy) });
  opened.push(mem);
  const errors: unknown[] = [];
  const tasks = ops.map((op) => {
    const len = Math.min(op.len, PAGES * PS - op.at);
    if (op.kind === 'write') {
      const src = new Uint8Array(len).fill(op.fill);
      return mem.write(gpa(BigInt(op.at)), src).then(
        // The continuation runs right after the write's copy, before any other access completes.
        () => model.set(src, op.at),
        (e) => errors.push(e),
      );
    }
    const dst = new Uint8Array(len);
    return mem.read(gpa(BigInt(op.at)), dst).then(
      () => expect(dst).toEqual(model.subarray(op.at, op.at + len)),
      (e) => errors.push(e),
    );
  });
  await s.waitFor(Promise.all(tasks));
  return { mem, model, perPage, errors };
}

describe('lazy guest memory: concurrent faults', () => {
  it('two reads of one absent page share one load and both get the bytes', async () => {
    await fc.assert(
      fc.asyncProperty(fc.scheduler(), async (s) => {
        const { mem, model, perPage, errors } = await runOps(s, [
          { kind: 'read', at: 3 * PS + 10, len: 100, fill: 0 },
          { kind: 'read', at: 3 * PS + 500, len: 100, fill: 0 },
        ], 'none');
        expect(errors).toEqual([]);
        expect(perPage[3]).toBe(1);
        expect(mem.stats().sourceReads).toBe(1);
        expect(model).toEqual(image(PAGES));
      }).afterEach(closeAll),
      { numRuns: 30 },
    );
  });

  it('a write racing a read of the same absent page is not lost', async () => {
    await fc.assert(
      fc.asyncProperty(fc.scheduler(), fc.boolean(), async (s, writeFirst) => {
        const r: Op = { kind: 'read', at: 5 * PS, len: PS, fill: 0 };
        const w: Op = { kind: 'write', at: 5 * PS + 100, len: 50, fill: 0xee };
        const { mem, model, perPage, errors } = await runOps(s, writeFirst ? [w, r] : [r, w], 'none');
        expect(errors).toEqual([]);
        expect(perPage[5]).toBe(1);
        const back = new Uint8Array(PS);
        await mem.read(gpa(5n * 4096n), back);
        expect(back).toEqual(model.subarray(5 * PS, 6 * PS));
        expect(back[100]).toBe(0xee);
      }).afterEach(closeAll),
      { numRuns: 30 },
    );
  });

  it('any mix of reads and writes, any completion order: linearizable, nothing lost, one load per page', async () => {
    await fc.assert(
      fc.asyncProperty(fc.scheduler(), fc.array(opArb, { minLength: 2, maxLength: 10 }), policyArb, fc.boolean(), async (s, ops, policy, blocks) => {
        const { mem, model, perPage, errors } = await runOps(s, ops, policy, -1, blocks);
        expect(errors).toEqual([]);
        for (let p = 0; p < PAGES; p++) expect(perPage[p], `page ${p} read ${perPage[p]} times`).toBeLessThanOrEqual(1);
        // Every write is in memory, every untouched byte is the image's.
        const all = new Uint8Array(PAGES * PS);
        const done = mem.read(gpa(0), all);
        await s.waitFor(done);
        expect(all).toEqual(model);
      }).afterEach(closeAll),
      { numRuns: 150 },
    );
  });

  it('a failed shared load fails every access waiting on it, and the next access retries', async () => {
    await fc.assert(
      fc.asyncProperty(fc.scheduler(), async (s) => {
        const ops: Op[] = [
          { kind: 'read', at: 7 * PS, len: 16, fill: 0 },
          { kind: 'write', at: 7 * PS + 8, len: 4, fill: 0x55 },
          { kind: 'read', at: 7 * PS + 100, len: 16, fill: 0 },
        ];
        const { mem, model, perPage, errors } = await runOps(s, ops, 'none', 7);
        // Every access that waited on the failed load fails with it; none sees a half-made page.
        expect(errors.length).toBe(3);
        for (const e of errors) expect((e as Error).message).toBe('transient source failure');
        expect(mem.isResident(7)).toBe(false);
        const again = new Uint8Array(PS);
        await s.waitFor(mem.read(gpa(7n * 4096n), again));
        expect(again).toEqual(model.subarray(7 * PS, 8 * PS));
        expect(perPage[7]).toBe(2);
      }).afterEach(closeAll),
      { numRuns: 30 },
    );
  });

  it('a synchronous access to a page still loading reads it itself; the late load does not overwrite it', async () => {
    await fc.assert(
      fc.asyncProperty(fc.scheduler(), async (s) => {
        const { mem, model, perPage, errors } = await runOps(s, [], 'none');
        const img = image(PAGES);
        const dst = new Uint8Array(PS);
        const pending = mem.read(gpa(2n * 4096n), dst);
        // The async read holds page 2's load; a synchronous write cannot wait for it.
        mem.writeSync(gpa(2n * 4096n + 16n), new Uint8Array([9, 9, 9]));
        model.set([9, 9, 9], 2 * PS + 16);
        await s.waitFor(pending);
        expect(errors).toEqual([]);
        expect(dst).toEqual(model.subarray(2 * PS, 3 * PS));
        const back = new Uint8Array(PS);
        mem.readSync(gpa(2n * 4096n), back);
        expect(back).toEqual(model.subarray(2 * PS, 3 * PS));
        expect(back).not.toEqual(img.subarray(2 * PS, 3 * PS));
        expect(perPage[2]).toBe(2);
      }).afterEach(closeAll),
      { numRuns: 20 },
    );
  });

  it('a page evicted while its load is in flight is faulted again, not filled by the stale load', async () => {
    await fc.assert(
      fc.asyncProperty(fc.scheduler(), async (s) => {
        const { mem, model, perPage } = await runOps(s, [], 'none');
        const dst = new Uint8Array(8);
        const pending = mem.read(gpa(4n * 4096n), dst);
        mem.evict(4, 1);
        expect(mem.isResident(4)).toBe(false);
        await s.waitFor(pending);
        expect(dst).toEqual(model.subarray(4 * PS, 4 * PS + 8));
        expect(mem.isResident(4)).toBe(true);
        expect(perPage[4]).toBe(2);
      }).afterEach(closeAll),
      { numRuns: 20 },
    );
  });
});
