// Host-visible buffers. The host allocates with `alloc`, writes into the
// returned region through a view of `memory`, passes (pointer, length) pairs to
// other exports and releases with `free`. These blocks are unmanaged: the
// garbage collector never moves or frees them, so a pointer stays valid until
// `free` even if memory grows (only the host's ArrayBuffer views go stale).

/** Allocates `size` bytes, 16-byte aligned. Returns 0 when size is 0 or memory is exhausted. */
export function alloc(size: usize): usize {
  if (size == 0) return 0;
  // heap.alloc traps when memory cannot grow; check the bound first so the
  // host gets 0 instead of a trap.
  if (size > (<usize>1 << 31)) return 0;
  return heap.alloc(size);
}

/** Releases a block returned by `alloc`. Freeing 0 is a no-op. */
export function free(ptr: usize): void {
  if (ptr != 0) heap.free(ptr);
}
