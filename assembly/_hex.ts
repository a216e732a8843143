// Hex text to bytes, shared by the digest index and the Packages scanner (an
// internal module: index.ts does not export it).

// Value 0..15 of a hex digit (either case), or ≥ 16.
@inline
function hexVal(c: u32): u32 {
  const d = c - 48;
  if (d < 10) return d;
  const l = (c | 32) - 97;
  return l < 6 ? l + 10 : 255;
}

// Nibble values of 16 hex characters; lanes of non-hex characters get 0xff.
@inline
function nibbles(c: v128): v128 {
  const d = i8x16.sub(c, i8x16.splat(48));
  const isD = i8x16.lt_u(d, i8x16.splat(10));
  const l = i8x16.sub(v128.or(c, i8x16.splat(32)), i8x16.splat(97));
  const isL = i8x16.lt_u(l, i8x16.splat(6));
  const v = v128.bitselect(d, i8x16.add(l, i8x16.splat(10)), isD);
  return v128.or(v, v128.not(v128.or(isD, isL)));
}

// Bytes of 16 nibble pairs: (even << 4) | odd, as u16 lanes (little-endian pairs).
@inline
function pairs(v: v128): v128 {
  return v128.or(i16x8.shl(v128.and(v, i16x8.splat(0xff)), 4), i16x8.shr_u(v, 8));
}

// Decodes 2·len hex characters at src into len bytes at dst; false on a non-hex
// character. unsafe: src has 2·len readable bytes, dst len writable ones.
export function hexDecode(src: usize, len: usize, dst: usize): bool {
  let i: usize = 0;
  if (ASC_FEATURE_SIMD) {
    // 32 characters → 16 bytes per step; a bad character anywhere sets a high nibble.
    for (; i + 16 <= len; i += 16) {
      const a = nibbles(v128.load(src + (i << 1)));
      const b = nibbles(v128.load(src + (i << 1), 16));
      if (v128.any_true(v128.and(v128.or(a, b), i8x16.splat(<i8>0xf0)))) return false;
      v128.store(dst + i, i8x16.narrow_i16x8_u(pairs(a), pairs(b)));
    }
  }
  for (; i < len; i++) {
    const hi = hexVal(<u32>load<u8>(src + (i << 1)));
    const lo = hexVal(<u32>load<u8>(src + (i << 1) + 1));
    if ((hi | lo) > 15) return false;
    store<u8>(dst + i, <u8>((hi << 4) | lo));
  }
  return true;
}


// hexDecode32: per lane y = (c | 0x20) - '0' (the case folded: 49..54 for a..f, and
// digits keep their value since 0x30..0x39 have that bit); a lane is a digit when
// c - '0' < 10 (unfolded: a control character must not fold into one), a letter when
// y - 49 < 6; its value is y, less 39 unless a digit.
@inline
function hexY(c: v128): v128 {
  return i8x16.sub(v128.or(c, i8x16.splat(0x20)), i8x16.splat(0x30));
}
@inline
function hexNotDigit(c: v128): v128 {
  return i8x16.gt_u(i8x16.sub(c, i8x16.splat(0x30)), i8x16.splat(9));
}

/**
 * Decodes exactly 64 hex characters at src into 32 bytes at dst (a SHA-256):
 * four loads, one validity test, two stores. False on a non-hex character
 * (dst then holds garbage). unsafe: 64 readable bytes at src, 32 writable at dst.
 */
export function hexDecode32(src: usize, dst: usize): bool {
  if (ASC_FEATURE_SIMD) {
    const c0 = v128.load(src);
    const c1 = v128.load(src, 16);
    const c2 = v128.load(src, 32);
    const c3 = v128.load(src, 48);
    const y0 = hexY(c0);
    const y1 = hexY(c1);
    const y2 = hexY(c2);
    const y3 = hexY(c3);
    const n0 = hexNotDigit(c0);
    const n1 = hexNotDigit(c1);
    const n2 = hexNotDigit(c2);
    const n3 = hexNotDigit(c3);
    const adj = i8x16.splat(39);
    v128.store(dst, i8x16.narrow_i16x8_u(pairs(i8x16.sub(y0, v128.and(n0, adj))), pairs(i8x16.sub(y1, v128.and(n1, adj)))));
    v128.store(dst, i8x16.narrow_i16x8_u(pairs(i8x16.sub(y2, v128.and(n2, adj))), pairs(i8x16.sub(y3, v128.and(n3, adj)))), 16);
    // Bad: not a digit and not a letter (y - 49 ≥ 6, unsigned).
    const a = i8x16.splat(49);
    const five = i8x16.splat(5);
    const b0 = v128.and(n0, i8x16.gt_u(i8x16.sub(y0, a), five));
    const b1 = v128.and(n1, i8x16.gt_u(i8x16.sub(y1, a), five));
    const b2 = v128.and(n2, i8x16.gt_u(i8x16.sub(y2, a), five));
    const b3 = v128.and(n3, i8x16.gt_u(i8x16.sub(y3, a), five));
    return !v128.any_true(v128.or(v128.or(b0, b1), v128.or(b2, b3)));
  }
  return hexDecode(src, 32, dst);
}
