// Zero detection shared by the sector copier and the backup planner. With SIMD
// (release and debug builds) it reads 64 bytes per step with 128-bit loads; the
// nosimd target compiles the scalar 64-bit path (ASC_FEATURE_SIMD is a
// compile-time constant, so only one path is emitted).

// True when [p, p + n) is all zero.
// unsafe: the caller guarantees [p, p + n) lies in memory (a host buffer).
export function isZeroRange(p: usize, n: usize): bool {
  let i: usize = 0;
  if (ASC_FEATURE_SIMD) {
    while (i + 64 <= n) {
      const a = v128.or(v128.load(p + i), v128.load(p + i, 16));
      const b = v128.or(v128.load(p + i, 32), v128.load(p + i, 48));
      if (v128.any_true(v128.or(a, b))) return false;
      i += 64;
    }
    while (i + 16 <= n) {
      if (v128.any_true(v128.load(p + i))) return false;
      i += 16;
    }
  } else {
    while (i + 8 <= n) {
      if (load<u64>(p + i) != 0) return false;
      i += 8;
    }
  }
  while (i < n) {
    if (load<u8>(p + i) != 0) return false;
    i++;
  }
  return true;
}
