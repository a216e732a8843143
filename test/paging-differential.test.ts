// The core's walker (AddressSpace, assembly/paging.ts) against the plain
// TypeScript reference (reference.ts) over many random page-table trees:
// x86-64 4- and 5-level and AArch64, with tables shared and looping, large
// pages, every flag bit, reserved bits, tables past guest memory and bad roots.
// translate(), translateInto() and mappings() must agree exactly, also after
// the guest rewrites entries and the space is invalidated. Runs in Node and Chromium.
import { describe, expect, it } from 'vitest';
import { AddressSpace, UNMAPPED_GPA } from '../bindings/memory/paging/address-space.js';
import { referenceMappings, referenceTranslate } from '../bindings/memory/paging/reference.js';
import type { AddressSpaceOptions, PagingMode } from '../bindings/memory/paging/types.js';
import type { Gpa, GuestMemorySource } from '../bindings/memory/types.js';

/** xorshift32: deterministic per seed, so a failure names the seed that reproduces it. */
function rng(seed: number): { int(n: number): number; bit(p: number): boolean; u64(): bigint } {
  let x = seed * 2654435761 + 1 || 1;
  const next = (): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  return {
    int: (n) => next() % n,
    bit: (p) => next() / 2 ** 32 < p,
    u64: () => (BigInt(next()) << 32n) | BigInt(next()),
  };
}

class Mem implements GuestMemorySource {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly size: bigint;
  constructor(pages: number) {
    this.bytes = new Uint8Array(pages * 4096);
    this.view = new DataView(this.bytes.buffer);
    this.size = BigInt(this.bytes.length);
  }
  readSync(at: Gpa, dst: Uint8Array): void {
    if (at + BigInt(dst.length) > this.size) throw new Error(`read past memory at ${at.toString(16)}`);
    dst.set(this.bytes.subarray(Number(at), Number(at) + dst.length));
  }
}

interface Tree {
  mem: Mem;
  opts: AddressSpaceOptions;
  /** Interesting addresses: through every entry written, plus random and boundary ones. */
  gvas: bigint[];
  /** Writes a random entry somewhere (the guest changing its tables). */
  mutate(): void;
}

const PAGES = 48;

/**
 * A random tree. Each table gets a few entries at random and edge indices;
 * an entry is garbage without its valid bit, a pointer to a fresh table, to an
 * existing one (sharing, loops), or past memory, or a leaf/block with random
 * attribute bits (and sometimes reserved ones).
 */
function randomTree(seed: number, mode: PagingMode): Tree {
  const r = rng(seed);
  const mem = new Mem(PAGES);
  let next = 1;
  const tables: number[] = [];
  const alloc = (): number | undefined => (next < PAGES ? (tables.push(next), next++) : undefined);
  const x86 = mode !== 'aarch64';
  const top = mode === 'x86-64-5level' ? 5 : mode === 'x86-64' ? 4 : 0;
  // AArch64 levels count up (0..3); x86 levels down (top..1). `depth` 0 is the root table.
  const levelAt = (depth: number, start: number): number => (x86 ? top - depth : start + depth);
  const lastDepth = (start: number): number => (x86 ? top - 1 : 3 - start);
  const frameBits = x86 ? 0x000f_ffff_ffff_f000n : 0x0000_ffff_ffff_f000n;
  const randomFrame = (): bigint =>
    r.bit(0.5) ? BigInt(r.int(PAGES + 4)) << 12n : r.u64() & frameBits;
  const tablePtr = (): bigint => {
    const k = r.int(10);
    if (k < 5) {
      const t = alloc();
      if (t !== undefined) return BigInt(t) << 12n;
    }
    if (k < 9) return BigInt(tables[r.int(tables.length)]!) << 12n; // shared or a loop
    return BigInt(PAGES + r.int(1000)) << 12n; // past memory
  };
  const attrs = (): bigint => {
    // x86: every low flag bit, ignored bits 11..9 and 62..52, XD. AArch64: lower and upper attributes.
    let e = r.u64() & (x86 ? 0xfff0_0000_0000_0ffen : 0xfff8_0000_0000_0ffcn);
    if (r.bit(0.5)) e &= ~(1n << 63n);
    return e;
  };
  const gvas: bigint[] = [];
  const entryVa = (prefix: bigint[], start: number): bigint => {
    // Indices from the root down, the rest random, then a random offset.
    let va = 0n;
    const levels = x86 ? top : 4 - start;
    for (let d = 0; d < levels; d++) {
      const idx = d < prefix.length ? prefix[d]! : BigInt(r.int(512));
      va |= idx << BigInt(12 + 9 * (levels - 1 - d));
    }
    va |= BigInt(r.int(4096));
    return va;
  };
  const canon = (va: bigint, upperHalf: boolean, ia: number): bigint => {
    if (x86) {
      const bits = top === 5 ? 57 : 48;
      return va & (1n << BigInt(bits - 1)) ? va | (((1n << 64n) - 1n) ^ ((1n << BigInt(bits)) - 1n)) : va;
    }
    return upperHalf ? va | (((1n << 64n) - 1n) ^ ((1n << BigInt(ia)) - 1n)) : va;
  };

  const fill = (table: number, depth: number, start: number, prefix: bigint[], entries: number, upperHalf: boolean, ia: number, budget: { n: number }): void => {
    const level = levelAt(depth, start);
    const picks = new Set<number>([0, entries - 1, r.int(entries), r.int(entries)]);
    if (entries === 512) picks.add(255).add(256);
    for (const i of picks) {
      if (budget.n-- <= 0) return;
      let e: bigint;
      const k = r.int(20);
      const last = depth === lastDepth(start);
      if (k < 3) {
        e = r.u64() & ~1n; // not present / invalid, garbage in the other bits
      } else if (x86) {
        if (last || (level <= 3 && k < 10)) {
          // Leaf: a 4 KiB page at level 1, a large page above (PS), sometimes with reserved bits.
          let frame = randomFrame();
          if (level === 3) frame &= r.bit(0.8) ? ~0x3fff_f000n : ~0n;
          if (level === 2) frame &= r.bit(0.8) ? ~0x1f_f000n : ~0n;
          e = frame | attrs() | 1n | (level > 1 ? 0x80n : 0n);
        } else {
          e = tablePtr() | (attrs() & ~0x80n) | 1n | (r.bit(0.05) ? 0x80n : 0n); // PS in a PML4E/PML5E: reserved
        }
      } else {
        if (last || (level > 0 && k < 10) || (level === 0 && k < 5)) {
          // A page at level 3 (11), a block at 1–2 (01); "01" at level 3 and blocks at level 0 are invalid.
          const frame = randomFrame() & (level === 1 ? ~0x3fff_f000n : level === 2 ? ~0x1f_f000n : ~0n);
          e = frame | attrs() | (level === 3 ? (r.bit(0.9) ? 3n : 1n) : 1n);
        } else {
          e = tablePtr() | (attrs() & 0xf800_0000_0000_0000n) | (r.u64() & 0xffcn) | 3n;
        }
      }
      mem.view.setBigUint64(table * 4096 + i * 8, e, true);
      gvas.push(canon(entryVa([...prefix, BigInt(i)], start), upperHalf, ia));
      const isTable = x86 ? (e & 1n) === 1n && !last && !(level <= 3 && e & 0x80n) : (e & 3n) === 3n && !last;
      const child = Number((e & frameBits) >> 12n);
      if (isTable && child < PAGES && child > table) {
        fill(child, depth + 1, start, [...prefix, BigInt(i)], 512, upperHalf, ia, budget);
      }
    }
  };

  let opts: AddressSpaceOptions;
  if (x86) {
    const root = alloc()!;
    fill(root, 0, 0, [], 512, false, 0, { n: 300 });
    // CR3 with PCID bits; now and then an absurd one.
    const k = r.int(20);
    const cr3 = k === 0 ? (r.u64() & ~0xfffn) : k === 1 ? BigInt(PAGES + 3) << 12n : (BigInt(root) << 12n) | BigInt(r.int(4096));
    opts = { mode, root: cr3, nxe: r.bit(0.8) };
  } else {
    const t0sz = r.bit(0.5) ? 16 : 16 + r.int(24);
    const t1sz = r.bit(0.5) ? 16 : 16 + r.int(24);
    const half = (tsz: number, upper: boolean): bigint => {
      const ia = 64 - tsz;
      const levels = Math.ceil((ia - 12) / 9);
      const start = 4 - levels;
      const entries = 2 ** (ia - 12 - 9 * (levels - 1));
      const root = alloc()!;
      fill(root, 0, start, [], entries, upper, ia, { n: 200 });
      return (BigInt(root) << 12n) | (BigInt(r.int(65536)) << 48n); // ASID bits
    };
    opts = { mode, root: half(t0sz, false), t0sz, t1sz };
    if (r.bit(0.85)) opts.root1 = half(t1sz, true);
  }
  for (let i = 0; i < 40; i++) gvas.push(r.u64());
  gvas.push(0n, (1n << 64n) - 1n, 1n << 47n, (1n << 64n) - (1n << 47n), 1n << 56n, (1n << 64n) - (1n << 56n), 1n << 55n);
  return {
    mem,
    opts,
    gvas,
    mutate() {
      const t = tables[r.int(tables.length)]!;
      const i = r.int(512);
      mem.view.setBigUint64(t * 4096 + i * 8, r.bit(0.3) ? 0n : (BigInt(tables[r.int(tables.length)]!) << 12n) | attrs() | (x86 ? 1n : 3n), true);
    },
  };
}

/** Cheap structural key (vitest's deep equality is too slow for ~10^5 comparisons); expect() only on a mismatch. */
const key = (v: unknown): string => JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? `${x}n` : x));
function same(got: unknown, want: unknown, what: string): void {
  if (key(got) !== key(want)) expect(got, what).toEqual(want);
}

function compareAll(space: AddressSpace, t: Tree, seed: number, seen: Set<string>): void {
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
        const t = randomTree(seed * 7 + mode.length, mode);
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
