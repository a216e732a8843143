// Digest index (docs/abi.md, "digest index"): hash tables of 32-byte keys to
// u32 values, for the attestation reference values (millions of SHA-256
// digests of packages and files). The host keeps provenance in a side table
// and stores here only the digest → entry id mapping; a key that is inserted
// again returns the id it replaces, so the host can chain duplicates. Digests
// come in raw or as hex with an algorithm tag; keyOf below is the one place
// that turns a digest into its key (the host never builds keys).
//
// Layout of one table, in unmanaged memory:
//   slots  cap  × u32    0 = empty, else bits 0..25 dense index + 1, bits 26..31 fingerprint
//   keys   kcap × 32 B   dense, in insertion order
//   vals   kcap × u32    dense
// Open addressing with linear probing over the slots, capacity a power of two,
// rehashed to 2× before the load passes 3/4. Keys are kept dense, so a slot
// costs 4 bytes and an entry 36: about 40 bytes an entry in all, against
// 48-96 for keys stored in the slots. The 6-bit fingerprint skips most key
// comparisons on a probe. The slot of a key is the top bits of
// (first 8 key bytes XOR seed) × a 64-bit odd constant: digests are uniform,
// and the seed (random, from the host) keeps crafted prefixes from piling into
// one run.

import { E_ARG, E_HANDLE, E_LIMIT, E_NO_MEMORY } from "./_errors";
import { tryAlloc } from "./_memory";
import { hexDecode, hexDecode32 } from "./_hex";

const MAX_TABLES: i32 = 256;
const MIN_CAP: u32 = 16;
const MAX_CAP: u32 = 1 << 27;
/** Most keys one table holds (26-bit dense index). */
const MAX_KEYS: u32 = (1 << 26) - 2;
const KEY: usize = 32;
const MUL: u64 = 0x9e3779b97f4a7c15;
const IDX_MASK: u32 = (1 << 26) - 1;

// Per-table state, indexed by handle - 1. A handle is live when tSlots != 0.
const tSlots = new StaticArray<usize>(MAX_TABLES);
const tKeys = new StaticArray<usize>(MAX_TABLES);
const tVals = new StaticArray<usize>(MAX_TABLES);
const tCap = new StaticArray<u32>(MAX_TABLES);
const tKcap = new StaticArray<u32>(MAX_TABLES);
const tShift = new StaticArray<u32>(MAX_TABLES);
const tCount = new StaticArray<u32>(MAX_TABLES);
const tSeed = new StaticArray<u64>(MAX_TABLES);

// unsafe: key points at 32 readable bytes (the callers' contract).
@inline
function hashOf(key: usize, seed: u64): u64 {
  return (load<u64>(key) ^ seed) * MUL;
}

@inline
function fpOf(h: u64): u32 {
  return (<u32>(h >> 20) & 63) << 26;
}

// unsafe: a and b each point at 32 readable bytes.
@inline
function keyEq(a: usize, b: usize): bool {
  if (ASC_FEATURE_SIMD) {
    const x = v128.xor(v128.load(a), v128.load(b));
    const y = v128.xor(v128.load(a, 16), v128.load(b, 16));
    return !v128.any_true(v128.or(x, y));
  }
  return load<u64>(a) == load<u64>(b) && load<u64>(a, 8) == load<u64>(b, 8) &&
    load<u64>(a, 16) == load<u64>(b, 16) && load<u64>(a, 24) == load<u64>(b, 24);
}

function log2(x: u32): u32 {
  return 31 - clz<u32>(x);
}

function allocZeroed(bytes: usize): usize {
  const p = tryAlloc(bytes);
  if (p != 0) memory.fill(p, 0, bytes);
  return p;
}

function live(h: i32): bool {
  return h >= 1 && h <= MAX_TABLES && unchecked(tSlots[h - 1]) != 0;
}

function capFor(n: u64): u32 {
  let cap = MIN_CAP;
  while (cap < MAX_CAP && <u64>cap * 3 < n * 4 + 4) cap <<= 1;
  return cap;
}

/**
 * Creates a table sized for `expected` keys. `seedLo`/`seedHi` form the 64-bit
 * hashing seed (random, from the host). Returns a handle ≥ 1, E_ARG, E_LIMIT
 * (no free handle) or E_NO_MEMORY.
 */
export function dixCreate(expected: i32, seedLo: i32, seedHi: i32): i32 {
  if (expected < 0 || <u32>expected > MAX_KEYS) return E_ARG;
  const cap = capFor(<u64>expected);
  const kcap: u32 = expected < 16 ? 16 : <u32>expected;
  let h = 0;
  for (let i = 0; i < MAX_TABLES; i++) {
    if (unchecked(tSlots[i]) == 0) {
      h = i + 1;
      break;
    }
  }
  if (h == 0) return E_LIMIT;
  const slots = allocZeroed(<usize>cap * 4);
  const keys = tryAlloc(<usize>kcap * KEY);
  const vals = tryAlloc(<usize>kcap * 4);
  if (slots == 0 || keys == 0 || vals == 0) {
    if (slots) heap.free(slots);
    if (keys) heap.free(keys);
    if (vals) heap.free(vals);
    return E_NO_MEMORY;
  }
  const i = h - 1;
  unchecked((tSlots[i] = slots));
  unchecked((tKeys[i] = keys));
  unchecked((tVals[i] = vals));
  unchecked((tCap[i] = cap));
  unchecked((tKcap[i] = kcap));
  unchecked((tShift[i] = 64 - log2(cap)));
  unchecked((tCount[i] = 0));
  unchecked((tSeed[i] = (<u64>(<u32>seedHi) << 32) | <u64>(<u32>seedLo)));
  return h;
}

/** Releases a table. Returns 0, or E_HANDLE. */
export function dixFree(h: i32): i32 {
  if (!live(h)) return E_HANDLE;
  const i = h - 1;
  heap.free(unchecked(tSlots[i]));
  heap.free(unchecked(tKeys[i]));
  heap.free(unchecked(tVals[i]));
  unchecked((tSlots[i] = 0));
  unchecked((tKeys[i] = 0));
  unchecked((tVals[i] = 0));
  unchecked((tCount[i] = 0));
  return 0;
}

/** Number of keys in the table, or E_HANDLE. */
export function dixCount(h: i32): i32 {
  if (!live(h)) return E_HANDLE;
  return <i32>unchecked(tCount[h - 1]);
}

/** Bytes of core memory the table holds, or E_HANDLE. */
export function dixBytes(h: i32): f64 {
  if (!live(h)) return <f64>E_HANDLE;
  return <f64>unchecked(tCap[h - 1]) * 4 + <f64>unchecked(tKcap[h - 1]) * <f64>(KEY + 4);
}

// Doubles the slot array and re-places every key. False when memory is exhausted (unchanged).
function growSlots(i: i32): bool {
  const oldCap = unchecked(tCap[i]);
  if (oldCap >= MAX_CAP) return false;
  const cap = oldCap << 1;
  const slots = allocZeroed(<usize>cap * 4);
  if (slots == 0) return false;
  const shift = 64 - log2(cap);
  const seed = unchecked(tSeed[i]);
  const mask = cap - 1;
  const keys = unchecked(tKeys[i]);
  const n = unchecked(tCount[i]);
  for (let d: u32 = 0; d < n; d++) {
    // unsafe: d < count ≤ kcap, inside the dense keys.
    const hh = hashOf(keys + (<usize>d << 5), seed);
    let j = <u32>(hh >> (<u64>shift));
    while (load<u32>(slots + (<usize>j << 2)) != 0) j = (j + 1) & mask;
    store<u32>(slots + (<usize>j << 2), (d + 1) | fpOf(hh));
  }
  heap.free(unchecked(tSlots[i]));
  unchecked((tSlots[i] = slots));
  unchecked((tCap[i] = cap));
  unchecked((tShift[i] = shift));
  return true;
}

// Grows the dense arrays by half. False when memory is exhausted (unchanged).
function growDense(i: i32): bool {
  const kcap = unchecked(tKcap[i]);
  if (kcap >= MAX_KEYS) return false;
  let nk = kcap + (kcap >> 1);
  if (nk > MAX_KEYS) nk = MAX_KEYS;
  const keys = tryAlloc(<usize>nk * KEY);
  const vals = tryAlloc(<usize>nk * 4);
  if (keys == 0 || vals == 0) {
    if (keys) heap.free(keys);
    if (vals) heap.free(vals);
    return false;
  }
  const n = <usize>unchecked(tCount[i]);
  memory.copy(keys, unchecked(tKeys[i]), n * KEY);
  memory.copy(vals, unchecked(tVals[i]), n * 4);
  heap.free(unchecked(tKeys[i]));
  heap.free(unchecked(tVals[i]));
  unchecked((tKeys[i] = keys));
  unchecked((tVals[i] = vals));
  unchecked((tKcap[i] = nk));
  return true;
}

// Dense index of key, or -1. unsafe: key points at 32 readable bytes.
@inline
function find(i: i32, key: usize, hh: u64): i32 {
  const slots = unchecked(tSlots[i]);
  const keys = unchecked(tKeys[i]);
  const mask = unchecked(tCap[i]) - 1;
  const fp = fpOf(hh);
  let j = <u32>(hh >> (<u64>unchecked(tShift[i])));
  while (true) {
    // unsafe: j is masked to the capacity; the load stays below 3/4, so an empty slot ends the probe.
    const s = load<u32>(slots + (<usize>j << 2));
    if (s == 0) return -1;
    if ((s & ~IDX_MASK) == fp) {
      const d = (s & IDX_MASK) - 1;
      if (keyEq(keys + (<usize>d << 5), key)) return <i32>d;
    }
    j = (j + 1) & mask;
  }
  return -1;
}

// Inserts one key; returns 0 (new), previous value + 1 (replaced), E_NO_MEMORY or E_LIMIT.
function insertOne(i: i32, key: usize, value: u32): i32 {
  const hh = hashOf(key, unchecked(tSeed[i]));
  const d = find(i, key, hh);
  if (d >= 0) {
    const vp = unchecked(tVals[i]) + (<usize>d << 2);
    const old = load<u32>(vp);
    store<u32>(vp, value);
    return <i32>(old + 1);
  }
  const n = unchecked(tCount[i]);
  if (n >= MAX_KEYS) return E_LIMIT;
  if ((<u64>n + 1) * 4 > <u64>unchecked(tCap[i]) * 3) {
    if (!growSlots(i)) return E_NO_MEMORY;
  }
  if (n >= unchecked(tKcap[i])) {
    if (!growDense(i)) return E_NO_MEMORY;
  }
  const slots = unchecked(tSlots[i]);
  const mask = unchecked(tCap[i]) - 1;
  let j = <u32>(hh >> (<u64>unchecked(tShift[i])));
  while (load<u32>(slots + (<usize>j << 2)) != 0) j = (j + 1) & mask;
  // unsafe: n < kcap after growDense; j masked to the capacity.
  memory.copy(unchecked(tKeys[i]) + (<usize>n << 5), key, KEY);
  store<u32>(unchecked(tVals[i]) + (<usize>n << 2), value);
  store<u32>(slots + (<usize>j << 2), (n + 1) | fpOf(hh));
  unchecked((tCount[i] = n + 1));
  return 0;
}

// Value + 1 of key, or 0 when absent.
@inline
function getOne(i: i32, key: usize): u32 {
  const d = find(i, key, hashOf(key, unchecked(tSeed[i])));
  if (d < 0) return 0;
  return load<u32>(unchecked(tVals[i]) + (<usize>d << 2)) + 1;
}

/**
 * Inserts `key` (32 bytes at `key`) → `value` (< 2^31 - 1). Returns 0 when the
 * key is new, the replaced value + 1 when it was present, E_ARG, E_HANDLE,
 * E_LIMIT (2^26 - 2 keys) or E_NO_MEMORY.
 */
export function dixInsert(h: i32, key: usize, value: i32): i32 {
  if (!live(h)) return E_HANDLE;
  if (value < 0 || value == i32.MAX_VALUE || key == 0) return E_ARG;
  return insertOne(h - 1, key, <u32>value);
}

/**
 * Inserts `n` keys (n × 32 bytes at `keys`) with values (n × u32 at `values`);
 * writes per key 0 or the replaced value + 1 to `prev` (n × u32). Returns n, or
 * an error (keys before the failing one stay inserted and their `prev` is set).
 */
export function dixInsertBatch(h: i32, keys: usize, values: usize, n: i32, prev: usize): i32 {
  if (!live(h)) return E_HANDLE;
  if (n < 0 || (n > 0 && (keys == 0 || values == 0 || prev == 0))) return E_ARG;
  const i = h - 1;
  for (let k = 0; k < n; k++) {
    // unsafe: the host passes n entries in each buffer.
    const v = load<u32>(values + (<usize>k << 2));
    if (v >= <u32>i32.MAX_VALUE) return E_ARG;
    const r = insertOne(i, keys + (<usize>k << 5), v);
    if (r < 0) return r;
    store<u32>(prev + (<usize>k << 2), <u32>r);
  }
  return n;
}

/** Value + 1 stored for `key`, 0 when absent, or E_HANDLE / E_ARG. */
export function dixGet(h: i32, key: usize): i32 {
  if (!live(h)) return E_HANDLE;
  if (key == 0) return E_ARG;
  return <i32>getOne(h - 1, key);
}

/**
 * Looks up `n` keys (n × 32 bytes at `keys`), writing value + 1 or 0 per key
 * to `out` (n × u32). Returns how many were found, or E_HANDLE / E_ARG.
 */
export function dixGetBatch(h: i32, keys: usize, n: i32, out: usize): i32 {
  if (!live(h)) return E_HANDLE;
  if (n < 0 || (n > 0 && (keys == 0 || out == 0))) return E_ARG;
  const i = h - 1;
  let found = 0;
  for (let k = 0; k < n; k++) {
    // unsafe: the host passes n entries in each buffer.
    const v = getOne(i, keys + (<usize>k << 5));
    store<u32>(out + (<usize>k << 2), v);
    if (v != 0) found++;
  }
  return found;
}

// ------------------------------------------------------------ request batches
// An attestation request carries its digests as hex text. The host writes the
// text of a whole request back to back into core memory (one encodeInto) and
// one call decodes and looks up every digest: no per-digest object or call on
// the host side, which is what a Map keyed by the hex strings cannot avoid.

// 32 bytes for building one key (digests of other lengths, tagged algorithms).
const KEYBUF: usize = memory.data(32);

// THE key rule (its one home; the host passes raw digests and a tag, never keys):
// the key of a digest of len bytes under algorithm tag is its first 32 bytes,
// zero-padded, with the last byte XOR tag. Digests are uniform, so the first 32
// bytes keep them apart; the tag keeps algorithms apart (the host still checks
// an entry's algorithm, and the tail of digests longer than 32 bytes). Writes
// the key to dst (32 bytes) unless it is d itself; returns where the key is.
// unsafe: d has len readable bytes, dst 32 writable ones.
@inline
function keyOf(d: usize, len: usize, tag: u32, dst: usize): usize {
  if (len == KEY && tag == 0) return d;
  if (len < KEY) memory.fill(dst, 0, KEY);
  memory.copy(dst, d, len < KEY ? len : KEY);
  store<u8>(dst + 31, load<u8>(dst + 31) ^ <u8>tag);
  return dst;
}

@inline
function badDigest(len: i32, tag: i32): bool {
  return len < 1 || len > 64 || tag < 0 || tag > 255;
}

/**
 * Inserts `n` digests given raw, back to back at `src`, keyed by the key rule
 * above: `meta` (n × u32) gives each one's `len | tag << 8`, `values` (n × u32)
 * its value. Per digest 0 or the replaced value + 1 goes to `prev` (n × u32).
 * Returns n, or an error (digests before the failing one stay inserted).
 */
export function dixInsertDigests(h: i32, src: usize, meta: usize, values: usize, n: i32, prev: usize): i32 {
  if (!live(h)) return E_HANDLE;
  if (n < 0 || (n > 0 && (src == 0 || meta == 0 || values == 0 || prev == 0))) return E_ARG;
  const i = h - 1;
  let at = src;
  for (let k = 0; k < n; k++) {
    // unsafe: the host passes n entries in meta/values/prev and the digests they describe at src.
    const m = load<u32>(meta + (<usize>k << 2));
    const len = <i32>(m & 0xff);
    const tag = <i32>(m >> 8);
    const v = load<u32>(values + (<usize>k << 2));
    if (badDigest(len, tag) || v >= <u32>i32.MAX_VALUE) return E_ARG;
    const r = insertOne(i, keyOf(at, <usize>len, <u32>tag, KEYBUF), v);
    if (r < 0) return r;
    store<u32>(prev + (<usize>k << 2), <u32>r);
    at += <usize>len;
  }
  return n;
}

/** Value + 1 stored for the digest of `len` bytes at `src` under `tag`, 0 when absent, or E_HANDLE / E_ARG. */
export function dixGetDigest(h: i32, src: usize, len: i32, tag: i32): i32 {
  if (!live(h)) return E_HANDLE;
  if (src == 0 || badDigest(len, tag)) return E_ARG;
  return <i32>getOne(h - 1, keyOf(src, <usize>len, <u32>tag, KEYBUF));
}

// Looks up n keys of 32 bytes back to back at keys (value + 1 or 0 to out). A pass of its
// own, after the decoding: its iterations only load (slot, key, value: cache misses in a
// large table) and do not depend on each other, so the CPU overlaps the misses of several.
@inline
function getRun(i: i32, keys: usize, n: i32, out: usize): i32 {
  let found = 0;
  for (let k = 0; k < n; k++) {
    // unsafe: n keys at keys and n × u32 at out (the callers' buffers).
    if (load<u32>(out + (<usize>k << 2)) == 0xffffffff) continue;
    const v = getOne(i, keys + (<usize>k << 5));
    store<u32>(out + (<usize>k << 2), v);
    if (v != 0) found++;
  }
  return found;
}

/**
 * Decodes and looks up `n` digests given as hex: `n × 2·len` ASCII characters
 * back to back at `hex` (either case). Each is decoded into `dec` (n × len
 * bytes), keyed under `tag` (0..255) by the key rule above and looked up;
 * `out` (n × u32) gets value + 1, 0 when absent, or 0xffffffff when the text
 * is not hex. Returns how many were found, or E_HANDLE / E_ARG. For 32-byte
 * digests `dec` holds the keys afterwards (last byte XOR tag).
 */
export function dixGetHex(h: i32, hex: usize, n: i32, len: i32, tag: i32, dec: usize, out: usize): i32 {
  if (!live(h)) return E_HANDLE;
  if (n < 0 || badDigest(len, tag) || (n > 0 && (hex == 0 || dec == 0 || out == 0))) return E_ARG;
  const i = h - 1;
  const L = <usize>len;
  if (L == KEY) {
    // The common case: decode every digest into its key in place, then look them all up.
    for (let k = 0; k < n; k++) {
      // unsafe: the host passes n entries in each buffer.
      const d = dec + (<usize>k << 5);
      const ok = hexDecode32(hex + (<usize>k << 6), d);
      store<u8>(d + 31, load<u8>(d + 31) ^ <u8>tag);
      store<u32>(out + (<usize>k << 2), ok ? 0 : 0xffffffff);
    }
    return getRun(i, dec, n, out);
  }
  let found = 0;
  for (let k = 0; k < n; k++) {
    // unsafe: the host passes n entries in each buffer.
    const d = dec + <usize>k * L;
    let v: u32 = 0xffffffff;
    if (hexDecode(hex + <usize>k * (L << 1), L, d)) {
      v = getOne(i, keyOf(d, L, <u32>tag, KEYBUF));
      if (v != 0) found++;
    }
    store<u32>(out + (<usize>k << 2), v);
  }
  return found;
}

/**
 * Looks up `n` digests of `len` bytes each, back to back at `src` (an IMA
 * list's file digests), keyed under `tag` by the key rule above; `out`
 * (n × u32) gets value + 1 or 0. Returns how many were found, or E_HANDLE / E_ARG.
 */
export function dixGetPacked(h: i32, src: usize, n: i32, len: i32, tag: i32, out: usize): i32 {
  if (!live(h)) return E_HANDLE;
  if (n < 0 || badDigest(len, tag) || (n > 0 && (src == 0 || out == 0))) return E_ARG;
  const i = h - 1;
  const L = <usize>len;
  if (L == KEY && tag == 0) {
    memory.fill(out, 0, <usize>n << 2);
    return getRun(i, src, n, out);
  }
  let found = 0;
  for (let k = 0; k < n; k++) {
    // unsafe: the host passes n entries in each buffer.
    const v = getOne(i, keyOf(src + <usize>k * L, L, <u32>tag, KEYBUF));
    if (v != 0) found++;
    store<u32>(out + (<usize>k << 2), v);
  }
  return found;
}

/** 0 when the module's checks pass (selfCheck module 6); needs no host buffers. */
export function digestindexSelfCheck(): i32 {
  const h = dixCreate(0, 0x12345678, 0x9abcdef0);
  if (h < 1) return 1;
  const key = heap.alloc(KEY);
  let r = 0;
  // Enough keys to force several growths; keys differ in their first and last bytes.
  for (let n: u32 = 0; n < 200 && r == 0; n++) {
    memory.fill(key, 0, KEY);
    store<u32>(key, n * 2654435761);
    store<u8>(key, <u8>n, 31);
    if (dixInsert(h, key, <i32>n) != 0) r = 2;
  }
  for (let n: u32 = 0; n < 200 && r == 0; n++) {
    memory.fill(key, 0, KEY);
    store<u32>(key, n * 2654435761);
    store<u8>(key, <u8>n, 31);
    if (dixGet(h, key) != <i32>n + 1) r = 3;
    store<u8>(key, <u8>(n + 1), 31);
    if (dixGet(h, key) != 0) r = 4;
  }
  if (r == 0 && dixCount(h) != 200) r = 5;
  // Re-inserting returns the replaced value + 1.
  memory.fill(key, 0, KEY);
  store<u32>(key, 7 * 2654435761);
  store<u8>(key, 7, 31);
  if (r == 0 && dixInsert(h, key, 1000) != 8) r = 6;
  if (r == 0 && dixGet(h, key) != 1001) r = 7;
  // The hex path finds what was inserted (key of n = 7 is 07 00 00 00 … 07, replaced by 1000 above)
  // and flags text that is not hex; 64 characters cover the SIMD steps, 40 the scalar tail.
  const text = heap.alloc(128);
  const dec = heap.alloc(64);
  const out = heap.alloc(8);
  memory.fill(key, 0, KEY);
  store<u32>(key, 7 * 2654435761);
  store<u8>(key, 7, 31);
  for (let b = 0; b < 32; b++) {
    const v = <u32>load<u8>(key + b);
    store<u8>(text + (b << 1), <u8>(v >> 4 < 10 ? 48 + (v >> 4) : 55 + (v >> 4)));
    store<u8>(text + (b << 1) + 1, <u8>((v & 15) < 10 ? 48 + (v & 15) : 87 + (v & 15)));
  }
  memory.copy(text + 64, text, 64);
  store<u8>(text + 64 + 63, 0x67); // 'g'
  if (r == 0 && (dixGetHex(h, text, 2, 32, 0, dec, out) != 1 || load<u32>(out) != 1001 || load<u32>(out, 4) != 0xffffffff)) r = 10;
  if (r == 0 && (memory.compare(dec, key, KEY) != 0 || dixGetPacked(h, key, 1, 32, 0, out) != 1 || load<u32>(out) != 1001)) r = 11;
  if (r == 0 && (!hexDecode(text, 20, dec) || memory.compare(dec, key, 20) != 0)) r = 12;
  store<u8>(text + 39, 0x3a); // ':' in the scalar tail
  if (r == 0 && hexDecode(text, 20, dec)) r = 13;
  // Raw digests in, keyed by the rule: a 20-byte digest under tag 2 and a 64-byte one under
  // tag 4 that shares its first 32 bytes with another under tag 4 (the same key: chained).
  const raw = heap.alloc(20 + 64 + 64);
  const meta = heap.alloc(12);
  const vals = heap.alloc(12);
  const prev = heap.alloc(12);
  for (let b = 0; b < 148; b++) store<u8>(raw + b, <u8>(b * 37 + 11));
  memory.copy(raw + 84, raw + 20, 32);
  store<u32>(meta, 20 | (2 << 8));
  store<u32>(meta, 64 | (4 << 8), 4);
  store<u32>(meta, 64 | (4 << 8), 8);
  store<u32>(vals, 500);
  store<u32>(vals, 501, 4);
  store<u32>(vals, 502, 8);
  if (r == 0 && (dixInsertDigests(h, raw, meta, vals, 3, prev) != 3 || load<u32>(prev) != 0 || load<u32>(prev, 8) != 502)) r = 14;
  if (r == 0 && (dixGetDigest(h, raw, 20, 2) != 501 || dixGetDigest(h, raw, 20, 1) != 0 || dixGetDigest(h, raw + 20, 64, 4) != 503)) r = 15;
  heap.free(raw);
  heap.free(meta);
  heap.free(vals);
  heap.free(prev);
  heap.free(text);
  heap.free(dec);
  heap.free(out);
  heap.free(key);
  if (dixFree(h) != 0) r = r == 0 ? 8 : r;
  if (r == 0 && dixGet(h, 0) != E_HANDLE) r = 9;
  return r;
}
