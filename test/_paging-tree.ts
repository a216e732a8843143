// Builders of guest page tables in an ArrayBuffer-backed guest memory, for the
// paging specs. Expected values in the specs come from how a tree was built,
// never from a walker.
import fc from 'fast-check';
import type { Gpa, GuestMemorySource } from '../bindings/memory/index.js';

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
  constructor(readonly mem: BufMemory, first: number = 0x1000) {
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
