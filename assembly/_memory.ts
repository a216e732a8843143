// Host-visible buffers. The host allocates with `alloc`, writes into the
// returned region through a view of `memory`, passes (pointer, length) pairs to
// other exports and releases with `free`. These blocks are unmanaged: the
// garbage collector never moves or frees them, so a pointer stays valid until
// `free` even if memory grows (only the host's ArrayBuffer views go stale).
//
// The allocator (the runtime's TLSF) traps on two sizes: a block over its
// BLOCK_MAXSIZE (2^30 minus a header: "Allocation too large") and a block the
// memory cannot grow to hold. A trap costs the host the whole instance (every
// live handle goes stale), so every allocation whose size comes from outside
// goes through tryAlloc, which answers 0 for both instead.

/** Largest block handed out: under TLSF's BLOCK_MAXSIZE ((1 << 30) - 4) with room for its rounding. */
export const MAX_ALLOC: usize = (1 << 30) - 4096;

// Pages of 64 KiB the memory may have: asconfig.json's maximumMemory (4 GiB).
const MAX_PAGES: usize = 65536;

/**
 * heap.alloc without its traps: 0 when `size` is 0, over MAX_ALLOC, or more
 * than the memory could still grow to hold within its maximum. The growth
 * test assumes no free block fits (TLSF rounds a request up by at most 1/16 to
 * its size class, and adds headers), so near the 4 GiB ceiling it may refuse
 * a block that free space would have held: refusing is the safe side.
 */
export function tryAlloc(size: usize): usize {
  if (size == 0 || size > MAX_ALLOC) return 0;
  const worst = <u64>size + (<u64>size >> 4) + 0x20000;
  if (<u64>memory.size() + (worst >> 16) > <u64>MAX_PAGES) return 0;
  return heap.alloc(size);
}

/** Allocates `size` bytes, 16-byte aligned. Returns 0 when size is 0 or too large, or memory is exhausted. */
export function alloc(size: usize): usize {
  return tryAlloc(size);
}

/** Releases a block returned by `alloc`. Freeing 0 is a no-op. */
export function free(ptr: usize): void {
  if (ptr != 0) heap.free(ptr);
}
