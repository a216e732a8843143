// Builders of guest page tables in an ArrayBuffer-backed guest memory, for the
// paging specs: by hand (expected values come from how a tree was built) and at
// random (randomPageTree, the one generator of the differential, property and
// fuzz specs; expected values come from the reference walker).
import fc from 'fast-check';
import type { AddressSpaceOptions, Gpa, GuestMemorySource, PagingMode } from '../bindings/memory/index.js';

/** Guest memory in a buffer, counting reads (to see the core's caches work). */
export class BufMemory implements GuestMemorySource {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly size: bigint;
  reads = 0;
  constructor(size: number) {
    this.bytes = new Uint8Array(size);
    this.view = new DataView(this.bytes.buffer);
    this.size = BigInt(size);
  }
  readSync(at: Gpa, dst: Uint8Array): void {
    this.reads++;
    const a = Number(at);
    if (a + dst.length > this.bytes.length) throw new Error(`read past the end: ${a}+${dst.length}`);
    dst.set(this.bytes.subarray(a, a + dst.length));
  }
  set(at: bigint | number, v: bigint): void {
    this.view.setBigUint64(Number(at), v, true);
  }
  get(at: bigint | number): bigint {
    return this.view.getBigUint64(Number(at), true);
  }
  /** Counterexamples print the non-zero entries, not megabytes of zeros. */
  [fc.toStringMethod](): string {
    const words: string[] = [];
    for (let a = 0; a + 8 <= this.bytes.length; a += 8) {
      const v = this.view.getBigUint64(a, true);
      if (v) words.push(`${a.toString(16)}: ${v.toString(16)}`);
    }
    return `BufMemory(${this.bytes.length}) { ${words.join(', ')} }`;
  }
}

/** Hands out 4 KiB frames of a BufMemory, from `first` up. */
export class FrameAlloc {
  next: number;
  readonly mem: BufMemory;
  constructor(mem: BufMemory, first: number = 0x1000) {
    this.mem = mem;
    this.next = first;
  }
  frame(): bigint {
    const f = this.next;
    if (f + 4096 > this.mem.bytes.length) throw new Error('tree memory exhausted');
    this.next += 4096;
    this.mem.bytes.fill(0, f, f + 4096);
    return BigInt(f);
  }
}

/** x86 entry bits. */
export const X = { P: 1n, W: 2n, U: 4n, PWT: 8n, PCD: 16n, A: 32n, D: 64n, PS: 128n, G: 256n, XD: 1n << 63n } as const;
/** AArch64 descriptor bits. */
export const A = {
  VALID: 1n,
  TABLE: 3n,
  BLOCK: 1n,
  PAGE: 3n,
  AP1: 1n << 6n,
  AP2: 1n << 7n,
  AF: 1n << 10n,
  NG: 1n << 11n,
  DBM: 1n << 51n,
  PXN: 1n << 53n,
  UXN: 1n << 54n,
  PXNT: 1n << 59n,
  UXNT: 1n << 60n,
  APT0: 1n << 61n,
  APT1: 1n << 62n,
} as const;

/** Index of `va` at x86 level `level` (1 = PT … 5 = PML5). */
export function x86Index(va: bigint, level: number): bigint {
  return (va >> BigInt(12 + 9 * (level - 1))) & 511n;
}

/** Index of `va` at AArch64 level `level` (0..3), 4 KiB granule. */
export function a64Index(va: bigint, level: number): bigint {
  return (va >> BigInt(12 + 9 * (3 - level))) & 511n;
}

/** Sign-extends a `bits`-wide VA. */
export function canonical(va: bigint, bits: number): bigint {
  return va & (1n << BigInt(bits - 1)) ? BigInt.asUintN(64, va | ~((1n << BigInt(bits)) - 1n)) : va;
}

/** The first `n` items of an iterable (a mapping walk can be far longer than a spec needs). */
export function take<T>(it: Iterable<T>, n: number): T[] {
  const out: T[] = [];
  for (const x of it) {
    if (out.length >= n) break;
    out.push(x);
  }
  return out;
}

// ---------------------------------------------------------------- random trees

/** xorshift32: deterministic per seed, so a failure names the seed that reproduces it. */
export function rng(seed: number): { int(n: number): number; bit(p: number): boolean; u64(): bigint } {
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

/** What {@link randomPageTree} builds. */
export interface PageTreeOptions {
  mode: PagingMode;
  /** Guest memory in 4 KiB frames (48 by default); tables are frames 1 and up. */
  pages?: number;
  /** Bytes of a last, partial frame (a memory size that is not a multiple of 4 KiB). */
  tailBytes?: number;
  /** Fill memory with random words first, this share of them pointing at frames inside it. */
  noise?: number;
  /** Write the tree (default); `false` leaves the noise alone. */
  tables?: boolean;
}

/** A random tree in guest memory, with the addresses worth translating. */
export interface PageTree {
  mem: BufMemory;
  opts: AddressSpaceOptions;
  /** Interesting addresses: through every entry written, plus random and boundary ones. */
  gvas: bigint[];
  /** Writes a random entry somewhere (the guest changing its tables). */
  mutate(): void;
}

/**
 * The random page-table tree of the paging specs (one generator for the
 * differential, property and fuzz specs), deterministic per `seed`. Each
 * table gets a few entries at random and edge indices; an entry is garbage
 * without its valid bit, a pointer to a fresh table, to an existing one
 * (sharing, loops), or past memory, or a leaf/block with random attribute
 * bits (and sometimes reserved ones). The root register is now and then
 * absurd. With `noise`, guest memory is random bytes first (that share of
 * the words pointing at frames inside memory, or one past it) and the tree
 * is written over them; with `tables: false` the noise is all there is.
 * Expected results come from the reference walker, never from here.
 *
 * @example
 * ```ts
 * const t = randomPageTree(42, { mode: 'x86-64' });
 * for (const gva of t.gvas) expect(core.translate(gva)).toEqual(referenceTranslate(t.mem, t.opts, gva));
 * ```
 */
export function randomPageTree(seed: number, o: PageTreeOptions): PageTree {
  const mode = o.mode;
  const PAGES = o.pages ?? 48;
  const r = rng(seed);
  const mem = new BufMemory(PAGES * 4096 + (o.tailBytes ?? 0));
  if (o.noise !== undefined) {
    for (let a = 0; a + 8 <= mem.bytes.length; a += 8) {
      let w = r.u64();
      if (r.bit(o.noise)) w = (w & ~0x000f_ffff_ffff_f000n) | (BigInt(r.int(PAGES + 1)) << 12n);
      mem.set(a, w);
    }
    for (let a = mem.bytes.length & ~7; a < mem.bytes.length; a++) mem.bytes[a] = r.int(256);
  }
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
  if (o.tables === false || PAGES < 2) {
    // Noise only: a root anywhere in (or just past) memory, with random low bits.
    const root = (BigInt(r.int(PAGES + 2)) << 12n) | BigInt(r.int(4096));
    opts = x86 ? { mode, root, nxe: r.bit(0.8) } : { mode, root, t0sz: 16 + r.int(24), t1sz: 16 + r.int(24), ...(r.bit(0.5) ? { root1: BigInt(r.int(PAGES + 2)) << 12n } : {}) };
  } else if (x86) {
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
      const root = alloc() ?? 1; // out of frames (a small memory): the halves share a root
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
      if (tables.length === 0) return;
      const t = tables[r.int(tables.length)]!;
      const i = r.int(512);
      mem.view.setBigUint64(t * 4096 + i * 8, r.bit(0.3) ? 0n : (BigInt(tables[r.int(tables.length)]!) << 12n) | attrs() | (x86 ? 1n : 3n), true);
    },
  };
}

/**
 * Random trees for property specs: a seed and a mode (any, or one of `modes`)
 * through {@link randomPageTree}, with a frame-cache size for the space.
 *
 * @example
 * ```ts
 * fc.assert(fc.property(pageTreeArb(), ({ tree, cacheFrames }) => { ... }));
 * ```
 */
export function pageTreeArb(o: Omit<PageTreeOptions, 'mode'> & { modes?: readonly PagingMode[] } = {}): fc.Arbitrary<{ tree: PageTree; cacheFrames: number }> {
  const { modes = ['x86-64', 'x86-64-5level', 'aarch64'], ...rest } = o;
  return fc
    .record({ seed: fc.integer(), mode: fc.constantFrom(...modes), cacheFrames: fc.constantFrom(16, 4096) })
    .map(({ seed, mode, cacheFrames }) => ({ tree: randomPageTree(seed, { ...rest, mode }), cacheFrames }));
}
