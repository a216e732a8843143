/**
 * Shared vocabulary of vmkit/memory: guest-virtual and guest-physical
 * addresses as distinct types, and the two source contracts the page-table
 * walker, the lazy guest memory and checkpoints plug into each other with.
 *
 * Guests are larger than wasm memory (tens of GiB), so addresses are `bigint`
 * (64-bit) and sources are read through windows, never loaded whole.
 * @module
 */
import { VmkitError } from '../errors.js';

declare const gvaBrand: unique symbol;
declare const gpaBrand: unique symbol;

/**
 * A guest-virtual address (what the guest's CPU issues; translated by the
 * guest's page tables). Never mixed with {@link Gpa}: convert through an address space.
 *
 * @example
 * ```ts
 * import { gva } from 'vmkit/memory';
 * const rip: Gva = gva(0xffffffff81000000n);
 * ```
 */
export type Gva = bigint & { readonly [gvaBrand]: true };
/**
 * A guest-physical address (an offset into the guest's physical memory).
 *
 * @example
 * ```ts
 * import { gpa } from 'vmkit/memory';
 * const cr3: Gpa = gpa(0x1000);
 * ```
 */
export type Gpa = bigint & { readonly [gpaBrand]: true };

/**
 * Bytes in a base page (x86-64 and AArch64 with the 4 KiB granule).
 *
 * @example
 * ```ts
 * const pageNumber = Number(addr / BigInt(PAGE_SIZE));
 * ```
 */
export const PAGE_SIZE = 4096;

const U64_MAX = (1n << 64n) - 1n;

function toU64(x: bigint | number, name: string): bigint {
  const v = typeof x === 'number' ? (Number.isSafeInteger(x) ? BigInt(x) : -1n) : x;
  if (typeof v !== 'bigint' || v < 0n || v > U64_MAX) {
    throw new VmkitError('ARG_RANGE', `${name} must be an integer in [0, 2^64), got ${String(x)}`);
  }
  return v;
}

/**
 * Marks a number or bigint as a guest-virtual address (checked to fit in 64 bits).
 * @example
 * const va = gva(0xffff_8000_0000_0000n);
 */
export function gva(x: bigint | number): Gva {
  return toU64(x, 'gva') as Gva;
}

/**
 * Marks a number or bigint as a guest-physical address (checked to fit in 64 bits).
 * @example
 * const pa = gpa(0x1000);
 */
export function gpa(x: bigint | number): Gpa {
  return toU64(x, 'gpa') as Gpa;
}

/**
 * Guest-physical memory as the page-table walker reads it: table pages are
 * fetched through `readSync` (walks are short and latency-bound, so the
 * contract is synchronous; an async source is first made resident through the
 * lazy guest memory). Implementations: an ArrayBuffer, a raw image file, a
 * checkpoint, a lazily restored memory.
 * @example
 * const buf = new Uint8Array(1 << 20);
 * const src: GuestMemorySource = {
 *   size: BigInt(buf.length),
 *   readSync(at, dst) { dst.set(buf.subarray(Number(at), Number(at) + dst.length)); },
 * };
 */
export interface GuestMemorySource {
  /** Bytes of guest-physical memory; reads at or past it are outside guest memory. */
  readonly size: bigint;
  /** Fills `dst` with the bytes at `at` (never crosses `size`: callers check first). */
  readSync(at: Gpa, dst: Uint8Array): void;
}

/**
 * Pages by number, as a lazy guest memory loads them: a raw image, a buffer
 * or a checkpoint. `blockOf` lets the prefetcher coalesce reads by storage
 * block when the source stores pages in blocks (a checkpoint).
 * @example
 * const pages = new Uint8Array(16 * PAGE_SIZE);
 * const src: PageSource = {
 *   pageSize: PAGE_SIZE, pageCount: 16,
 *   async readPagesInto(first, count, dst) { dst.set(pages.subarray(first * PAGE_SIZE, (first + count) * PAGE_SIZE)); },
 * };
 */
export interface PageSource {
  /** Bytes per page (4096). */
  readonly pageSize: number;
  /** Pages in the source (guest size / pageSize). */
  readonly pageCount: number;
  /** Reads pages `[first, first + count)` into `dst` (at least `count * pageSize` bytes). */
  readPagesInto(first: number, count: number, dst: Uint8Array): Promise<void>;
  /** Synchronous variant, when the source can (Node files, buffers). */
  readPagesIntoSync?(first: number, count: number, dst: Uint8Array): void;
  /** The storage block that holds `page` (a checkpoint's block index), or -1 for a zero page. */
  blockOf?(page: number): number;
  /**
   * A hint that these runs (`first, count` pairs) are about to be read: a
   * remote checkpoint merges their records' byte spans into as few range
   * requests as it can and starts them all at once. Never throws.
   */
  prefetchRuns?(runs: Uint32Array): void;
}
