// The core's walker (AddressSpace, assembly/paging.ts) against the plain
// TypeScript reference (reference.ts) over many random page-table trees:
// x86-64 4- and 5-level and AArch64, with tables shared and looping, large
// pages, every flag bit, reserved bits, tables past guest memory and bad roots.
// translate(), translateInto() and mappings() must agree exactly, also after
// the guest rewrites entries and the space is invalidated. Runs in Node and Chromium.
import { describe, expect, it } from 'vitest';
import { AddressSpace, UNMAPPED_GPA } from '../bindings/memory/paging/address-space.js';
import { referenceMappings, referenceTranslate } from '../bindings/memory/paging/reference.js';
import { randomPageTree, type PageTree } from './_paging-tree.js';

/** Cheap structural key (vitest's deep equality is too slow for ~10^5 comparisons); expect() only on a mismatch. */
const key = (v: unknown): string => JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? `${x}n` : x));
function same(got: unknown, want: unknown, what: string): void {
  if (key(got) !== key(want)) expect(got, what).toEqual(want);
}

function compareAll(space: AddressSpace, t: PageTree, seed: number, seen: Set<string>): void {
  const where = (gva: bigint): string => `seed ${seed}, ${t.opts.mode}, gva 0x${gva.toString(16)}`;
  const refs = t.gvas.map((gva) => referenceTranslate(t.mem, t.opts, gva));
  for (const r of refs) seen.add(r.ok ? `${r.pageSize}` : r.reason);
  t.gvas.forEach((gva, i) => same(space.translate(gva), refs[i], where(gva)));
  const gvas = BigUint64Array.from(t.gvas);
  const out = new BigUint64Array(gvas.length);
  const n = space.translateInto(gvas, out);
  same([...out], refs.map((r) => (r.ok ? r.gpa : UNMAPPED_GPA)), `seed ${seed}: translateInto`);
  expect(n, `seed ${seed}: translateInto count`).toBe(refs.filter((r) => r.ok).length);
  const ref = [...referenceMappings(t.mem, t.opts)];
  same([...space.mappings()], ref, `seed ${seed}: mappings`);
  // A window in the middle of the space, cut through pages.
  if (ref.length > 2) {
    const a = ref[Math.floor(ref.length / 3)]!.gva + 1n;
    const b = ref[Math.floor((2 * ref.length) / 3)]!.gva + 1n;
    same([...space.mappings(a, b)], [...referenceMappings(t.mem, t.opts, a, b)], `seed ${seed}: mappings(from, to)`);
  }
}

describe('core walker vs reference on random trees', () => {
  for (const mode of ['x86-64', 'x86-64-5level', 'aarch64'] as const) {
    it(`${mode}: translate, translateInto, mappings agree (120 trees)`, () => {
      let translations = 0;
      const seen = new Set<string>();
      for (let seed = 1; seed <= 120; seed++) {
        const t = randomPageTree(seed * 7 + mode.length, { mode });
        const space = AddressSpace.create({ memory: t.mem, ...t.opts });
        try {
          compareAll(space, t, seed, seen);
          // The guest rewrites some entries; after invalidation the core must see them.
          for (let i = 0; i < 5; i++) t.mutate();
          space.invalidate();
          compareAll(space, t, seed, seen);
          translations += t.gvas.length;
        } finally {
          space.dispose();
        }
      }
      expect(translations).toBeGreaterThan(1000);
      // The trees reach every page size and every fault (AArch64 has no reserved-bit faults here).
      const want = ['4096', '2097152', '1073741824', 'not-present', 'non-canonical', 'outside-memory', 'bad-root'];
      expect([...seen].sort()).toEqual((mode === 'aarch64' ? want : [...want, 'reserved-bit']).sort());
    });
  }
});
