// Fuzzing the core's page-table walker: random bytes as page tables (with many
// entries pointing back into guest memory, so walks go deep and loop), absurd
// root registers and region sizes, random addresses and ranges. The core must
// never trap, hang or disagree with the reference walker; every call returns a
// translation, a fault or a VmkitError for a bad argument.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { AddressSpace, UNMAPPED_GPA, referenceMappings, referenceTranslate } from '../bindings/memory/index.js';
import { coreInfo } from '../bindings/index.js';
import type { AddressSpaceOptions } from '../bindings/memory/index.js';
import { BufMemory, randomPageTree, take } from './_paging-tree.js';

const U64 = (1n << 64n) - 1n;

/**
 * Random bytes as guest memory (test/_paging-tree.ts's generator with noise), a
 * share of the words pointing at frames inside it (loops, shared tables); in
 * half the memories a random tree written over the noise. Sizes that are not a
 * multiple of 4 KiB too (the last frame is short).
 */
const memArb = fc
  .record({
    frames: fc.integer({ min: 1, max: 12 }),
    seed: fc.integer(),
    inside: fc.constantFrom(0, 0.2, 0.6, 0.95),
    tail: fc.integer({ min: 0, max: 4095 }),
    tables: fc.boolean(),
    mode: fc.constantFrom('x86-64' as const, 'x86-64-5level' as const, 'aarch64' as const),
  })
  .map(({ frames, seed, inside, tail, tables, mode }) => randomPageTree(seed, { mode, pages: frames, tailBytes: tail & ~7, noise: inside, tables }).mem);

const optsArb: fc.Arbitrary<AddressSpaceOptions> = fc.oneof(
  fc.record({
    mode: fc.constantFrom('x86-64' as const, 'x86-64-5level' as const),
    root: fc.oneof(fc.bigInt({ min: 0n, max: 0xffffn }), fc.bigInt({ min: 0n, max: U64 })),
    nxe: fc.boolean(),
  }),
  fc.record({
    mode: fc.constant('aarch64' as const),
    root: fc.oneof(fc.bigInt({ min: 0n, max: 0xffffn }), fc.bigInt({ min: 0n, max: U64 })),
    root1: fc.option(fc.oneof(fc.bigInt({ min: 0n, max: 0xffffn }), fc.bigInt({ min: 0n, max: U64 })), { nil: undefined }),
    t0sz: fc.integer({ min: 16, max: 39 }),
    t1sz: fc.integer({ min: 16, max: 39 }),
  }).map((o) => {
    const { root1, ...rest } = o;
    return root1 === undefined ? rest : { ...rest, root1 };
  }),
);

const vaArb = fc.oneof(
  fc.bigInt({ min: 0n, max: U64 }),
  fc.bigInt({ min: 0n, max: (1n << 48n) - 1n }),
  fc.bigInt({ min: 0n, max: (1n << 48n) - 1n }).map((v) => v | 0xffff_0000_0000_0000n),
  fc.bigInt({ min: 0n, max: (1n << 57n) - 1n }).map((v) => (v & (1n << 56n) ? v | 0xfe00_0000_0000_0000n : v)),
);

describe('paging fuzz: random bytes as page tables', () => {
  it('translate, translateInto and mapping walks never trap and agree with the reference', () => {
    const resets = coreInfo().resets;
    fc.assert(
      fc.property(memArb, optsArb, fc.array(vaArb, { minLength: 1, maxLength: 40 }), fc.constantFrom(16, 256), (mem, opts, vas, cacheFrames) => {
        const s = AddressSpace.create({ memory: mem, cacheFrames, ...opts });
        try {
          const want = vas.map((v) => referenceTranslate(mem, opts, v));
          vas.forEach((v, i) => expect(s.translate(v)).toEqual(want[i]));
          const out = new BigUint64Array(vas.length);
          s.translateInto(BigUint64Array.from(vas), out);
          expect([...out]).toEqual(want.map((t) => (t.ok ? t.gpa : UNMAPPED_GPA)));
          expect(take(s.mappings(), 500)).toEqual(take(referenceMappings(mem, opts), 500));
          const [a, b] = [vas[0]!, vas[vas.length - 1]!];
          // A non-empty range: the reference reports a large page around `from` even for [x, x).
          const [from, to] = a < b ? [a, b] : [b, a + 1n];
          expect(take(s.mappings(from, to), 200)).toEqual(take(referenceMappings(mem, opts, from, to), 200));
          s.invalidateRange(from, to);
          s.setRoot(opts.root ^ 0x1000n);
          s.translate(vas[0]!);
        } finally {
          s.dispose();
        }
      }),
      { numRuns: 150 },
    );
    // No trap ever reset the core.
    expect(coreInfo().resets).toBe(resets);
  });

  it('a table that maps itself at every level: a long walk stays lazy and bounded per step', () => {
    const mem = new BufMemory(4096);
    for (let i = 0n; i < 512n; i++) mem.set(i * 8n, 0x0n | 0x3n); // every entry -> frame 0, writable
    const s = AddressSpace.create({ memory: mem, mode: 'x86-64', root: 0n });
    // The path rule stops the walk at the first level (the only table is the root): no mappings.
    expect([...s.mappings()]).toEqual([]);
    // Translation follows the loop as hardware would: every address maps to frame 0.
    expect(s.translate(0xffff_ffff_ffff_f123n)).toMatchObject({ ok: true, gpa: 0x123n, level: 1 });
    s.dispose();
  });

  it('two tables pointing at each other alternate without end: mappings iterate lazily', () => {
    const mem = new BufMemory(3 * 4096);
    for (let i = 0n; i < 512n; i++) {
      mem.set(0x1000n + i * 8n, 0x2000n | 1n);
      mem.set(0x2000n + i * 8n, 0x1000n | 1n);
    }
    const s = AddressSpace.create({ memory: mem, mode: 'x86-64-5level', root: 0x1000n });
    // 1 -> 2 -> (1 is on the path: skipped) — nothing is a leaf, and the walk ends.
    expect([...s.mappings()]).toEqual([]);
    expect(s.translate(0x1234n)).toMatchObject({ ok: true, gpa: 0x2234n });
    s.dispose();
  });
});
