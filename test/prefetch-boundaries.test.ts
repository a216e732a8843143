// Page numbers at the core's boundary (Node and Chromium). The core takes page
// numbers as u32, so a number that is not a page of the guest (2^32, NaN, -1,
// 2^53, 0.5, a bigint where a number is expected) used to be taken modulo 2^32:
// faultPhysical(2**32) answered for page 0, isResident(NaN) for page 0. Every
// such number must now be refused with ARG_RANGE (ARG_TYPE for what is not a
// number) naming the argument, and leave the engine's state and counters as
// they were. A reference model (a set of resident pages) says what the valid
// calls must answer.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { AddressSpace, LazyGuestMemory, PrefetchEngine, VmkitError, bufferPages, gpa } from '../bindings/memory/index.js';
import { bitmapRuns } from '../bindings/disk/_sectors.js';

const PAGES = 64;

const BOUNDARY: unknown[] = [NaN, -1, -0.5, 0.5, PAGES, PAGES + 0.5, 2 ** 31, 2 ** 32, 2 ** 32 + 1, 2 ** 32 + 3, 2 ** 53, 2 ** 64, Infinity, -Infinity, 1n, 2n ** 32n, '1', null, undefined];

/** Any value a careless caller might pass as a page number; most are not pages of the guest. */
const anyPage = fc.oneof(
  fc.constantFrom(...BOUNDARY),
  fc.integer({ min: -5, max: PAGES + 5 }),
  // A page of the guest plus a multiple of 2^32: what the core used to wrap onto that page.
  fc.tuple(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 0, max: PAGES - 1 })).map(([k, p]) => 2 ** 32 * k + p),
  fc.double({ noNaN: false }),
  fc.bigInt({ min: -5n, max: 2n ** 64n }),
);

function isPage(v: unknown, limit = PAGES): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v < limit;
}

/** Expects `fn` to throw a VmkitError: ARG_TYPE for a non-number, ARG_RANGE for a number, its message naming `arg`. */
function refused(fn: () => unknown, v: unknown, arg: string): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, `${String(v)} accepted as ${arg}`).toBeInstanceOf(VmkitError);
  expect((err as VmkitError).code).toBe(typeof v === 'number' ? 'ARG_RANGE' : 'ARG_TYPE');
  expect((err as VmkitError).message).toContain(arg);
}

describe('prefetch engine: page numbers at the core boundary', () => {
  it('faultPhysical(2**32) and isResident(NaN) no longer answer for page 0', () => {
    const e = new PrefetchEngine(PAGES);
    try {
      refused(() => e.faultPhysical(2 ** 32, 0, 0), 2 ** 32, 'ppn');
      expect(e.isResident(0)).toBe(false);
      refused(() => e.isResident(NaN), NaN, 'ppn');
      e.setResident(0, 1, true);
      refused(() => e.isResident(NaN), NaN, 'ppn');
      refused(() => e.isResident(2 ** 32), 2 ** 32, 'ppn');
      refused(() => e.access(2 ** 32), 2 ** 32, 'ppn');
      refused(() => e.setResident(2 ** 32, 1, false), 2 ** 32, 'first');
      expect(e.isResident(0)).toBe(true);
      expect(e.stats().accesses).toBe(0);
    } finally {
      e.close();
    }
  });

  it('every page-number argument: a page of the guest is served as the model says, anything else refused, state untouched', () => {
    const e = new PrefetchEngine(PAGES, { mapCapacity: 16 });
    const resident = new Set<number>();
    const prefetched = new Set<number>();
    try {
      fc.assert(
        fc.property(fc.array(fc.tuple(anyPage, anyPage, fc.constantFrom('isResident', 'access', 'faultPhysical', 'setResident', 'reverse', 'faultList', 'faultListFault')), { minLength: 1, maxLength: 25 }), (cmds) => {
          // Each run starts from an empty resident set, so a failure shrinks to the calls that make it.
          e.setResident(0, PAGES, false);
          resident.clear();
          prefetched.clear();
          for (const [a, b, op] of cmds) step(a, b, op);
        }),
        { numRuns: 300 },
      );
    } finally {
      e.close();
    }

    function step(a: unknown, b: unknown, op: string): void {
      const before = e.stats();
      const count = e.residentCount();
      const call = (): unknown => {
        switch (op) {
          case 'isResident':
            return e.isResident(a as number);
          case 'access':
            return e.access(a as number);
          case 'faultPhysical':
            return e.faultPhysical(a as number, 0, 0);
          case 'setResident':
            return e.setResident(a as number, b as number, true);
          case 'reverse':
            return e.reverse(a as number);
          case 'faultList':
            return e.faultList([a as number], -1);
          default:
            return e.faultList([], a as number);
        }
      };
      const valid =
        op === 'setResident' ? isPage(a, PAGES + 1) && isPage(b, PAGES - (a as number) + 1)
        : op === 'faultList' ? isPage(a, 2 ** 53)
        : op === 'faultListFault' ? a === -1 || isPage(a)
        : isPage(a);
      if (!valid) {
        const arg = op === 'setResident' ? (isPage(a, PAGES + 1) ? 'count' : 'first') : op === 'faultList' ? 'frames[0]' : op === 'faultListFault' ? 'fault' : 'ppn';
        refused(call, op === 'setResident' && isPage(a, PAGES + 1) ? b : a, arg);
        expect(e.stats()).toEqual(before);
        expect(e.residentCount()).toBe(count);
        return;
      }
      const r = call();
      const p = (a as number) + 0; // -0 is page 0
      if (op === 'isResident') expect(r).toBe(resident.has(p));
      if (op === 'access') {
        expect(r).toBe(!resident.has(p) ? 2 : prefetched.has(p) ? 1 : 0);
        prefetched.delete(p);
      }
      if (op === 'faultPhysical' || (op === 'faultListFault' && p >= 0) || (op === 'faultList' && p < PAGES)) {
        // The page itself and nothing else, unless it was resident already.
        expect(Array.from(r as Uint32Array)).toEqual(resident.has(p) ? [] : [p, 1]);
        if (op === 'faultList' && !resident.has(p)) prefetched.add(p);
        resident.add(p);
      }
      if ((op === 'faultList' && p >= PAGES) || (op === 'faultListFault' && p === -1)) expect(Array.from(r as Uint32Array)).toEqual([]);
      if (op === 'setResident') {
        for (let q = p; q < p + (b as number); q++) {
          resident.add(q);
          prefetched.delete(q);
        }
      }
      expect(e.residentCount()).toBe(resident.size);
      // Dropping a page now and then keeps both kinds of answers in play.
      if (resident.size > PAGES / 2) {
        e.setResident(0, PAGES, false);
        resident.clear();
        prefetched.clear();
      }
    }
  });

  it('virtual page numbers: bigint in [0, 2^52), or refused', () => {
    const e = new PrefetchEngine(PAGES, { mapCapacity: 16 });
    try {
      e.map([[5n, 7]]);
      expect(e.translate(5n)).toBe(7);
      for (const v of [-1n, 2n ** 52n, 2n ** 64n, 2n ** 64n + 5n]) {
        refused(() => e.translate(v), 1, 'vpn');
        refused(() => e.touch(v), 1, 'vpn');
        refused(() => e.faultVirtual(v, 0, 0), 1, 'vpn');
        refused(() => e.map([[v, 1]]), 1, 'pairs[0][0]');
      }
      for (const v of [NaN, 0.5, -1]) {
        refused(() => e.translate(v as unknown as bigint), 'x', 'vpn');
        refused(() => e.touch(v as unknown as bigint), 'x', 'vpn');
      }
      refused(() => e.map([[6n, 0.5]]), 'x', 'pairs[0][1]');
      refused(() => e.map([[6n, -1]]), 'x', 'pairs[0][1]');
      refused(() => e.frameRange(2n ** 52n - 1n, 2), 1, 'pass 2^52');
      expect(e.stats().accesses).toBe(0);
      expect(e.translate(6n)).toBe(-1);
    } finally {
      e.close();
    }
  });
});

describe('lazy memory and the other page-number entries', () => {
  it('LazyGuestMemory: isResident, evict and addresses refuse what is not in the guest', async () => {
    const mem = LazyGuestMemory.openSync(bufferPages(new Uint8Array(PAGES * 4096)));
    try {
      for (const v of BOUNDARY) {
        if (isPage(v)) continue;
        refused(() => mem.isResident(v as number), v, 'ppn');
        // evict(PAGES, 0) is the empty range at the end: fine; (PAGES, 1) passes the end.
        if (isPage(v, PAGES + 1)) refused(() => mem.evict(v as number, 1), 1, 'count');
        else refused(() => mem.evict(v as number, 1), v, 'first');
      }
      refused(() => mem.evict(0, 2 ** 32), 2 ** 32, 'count');
      refused(() => mem.evict(1, PAGES), PAGES, 'count');
      refused(() => mem.readSync(NaN as unknown as ReturnType<typeof gpa>, new Uint8Array(1)), 'x', 'at');
      refused(() => mem.readSync(-1n as ReturnType<typeof gpa>, new Uint8Array(1)), 1, 'at');
      await expect(mem.read(2n ** 64n as ReturnType<typeof gpa>, new Uint8Array(1))).rejects.toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
      // A safe-integer number is a fine address.
      const b = new Uint8Array(4);
      mem.readSync(4096 as unknown as ReturnType<typeof gpa>, b);
      expect(mem.residentCount()).toBe(1);
      expect(mem.isResident(1)).toBe(true);
    } finally {
      mem.close();
    }
  });

  it('bufferPages, AddressSpace and the sector bitmap scan refuse wrapped numbers', () => {
    const src = bufferPages(new Uint8Array(PAGES * 4096));
    for (const v of [2 ** 32, 2 ** 32 + 1, NaN, -1, 0.5, 2 ** 53]) {
      expect(() => src.readPagesIntoSync(v, 1, new Uint8Array(4096))).toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
    }
    const mem = LazyGuestMemory.openSync(bufferPages(new Uint8Array(PAGES * 4096)));
    const space = AddressSpace.create({ memory: mem, mode: 'x86-64', root: 0n });
    try {
      for (const v of [NaN, 0.5, -1, 2 ** 64, 'x']) refused(() => space.translate(v as unknown as bigint), 'x', 'gva');
      refused(() => space.translate(2n ** 64n), 1, 'gva');
      refused(() => space.translate(-1n), 1, 'gva');
      refused(() => space.setRoot(2n ** 64n), 1, 'root');
      refused(() => space.invalidatePhysical(-1n, 5n), 1, 'from');
    } finally {
      space.dispose();
      mem.close();
    }
    const bm = new Uint8Array(8).fill(0xf0);
    expect(bitmapRuns(bm, 4, 8)).toEqual([{ start: 4, length: 4, value: 1 }, { start: 8, length: 4, value: 0 }]);
    expect(() => bitmapRuns(bm, 2 ** 32 + 4, 8)).toThrow(expect.objectContaining({ code: 'ARG_RANGE', message: expect.stringContaining('start') }));
    expect(() => bitmapRuns(bm, 4, 2 ** 32)).toThrow(expect.objectContaining({ code: 'ARG_RANGE', message: expect.stringContaining('nbits') }));
  });
});
