// Digest index (docs/abi.md, "digest index"): open-addressing hash tables of
// 32-byte keys to u32 values, for the attestation reference values (millions
// of SHA-256 digests of packages and files). The host keeps provenance in a
// side table and stores here only the digest → entry id mapping; a key that is
// inserted again returns the id it replaces, so the host can chain duplicates.
//
// Layout of one table, in unmanaged memory:
//   keys   cap × 32 bytes
//   vals   cap × u32     0 = empty slot, else value + 1
// Linear probing, capacity a power of two, grown (rehashed to 2×) before the
// load factor passes 3/4. The slot of a key is the top bits of
// (first 8 key bytes XOR seed) × a 64-bit odd constant: digests are uniform,
// the seed (chosen by the host at random) keeps crafted prefixes from piling
// into one run.

import { E_ARG, E_HANDLE, E_LIMIT, E_NO_MEMORY } from "./_errors";

const MAX_TABLES: i32 = 256;
const MIN_CAP: u32 = 16;
const MAX_CAP: u32 = 1 << 26; // 64 Mi slots = 2.25 GiB: past the 2 GiB allocation bound anyway
const KEY: usize = 32;
const MUL: u64 = 0x9e3779b97f4a7c15;

// Per-table state, indexed by handle - 1. A handle is live when tKeys != 0.
const tKeys = new StaticArray<usize>(MAX_TABLES);
const tVals = new StaticArray<usize>(MAX_TABLES);
const tCap = new StaticArray<u32>(MAX_TABLES);
const tShift = new StaticArray<u32>(MAX_TABLES);
const tCount = new StaticArray<u32>(MAX_TABLES);
const tSeed = new StaticArray<u64>(MAX_TABLES);

function slotOf(key: usize, seed: u64, shift: u32): u32 {
  // unsafe: key points at 32 readable bytes (checked by the callers' contract).
  return <u32>(((load<u64>(key) ^ seed) * MUL) >> (<u64>shift));
}

// unsafe: a and b each point at 32 readable bytes.
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

function allocTable(cap: u32): usize {
  const bytes = <usize>cap * (KEY + 4);
  if (bytes > (<usize>1 << 31)) return 0;
  const p = heap.alloc(bytes);
  // Values must start empty; keys of empty slots are never read.
  memory.fill(p + <usize>cap * KEY, 0, <usize>cap * 4);
  return p;
}

function live(h: i32): bool {
  return h >= 1 && h <= MAX_TABLES && unchecked(tKeys[h - 1]) != 0;
}

/**
 * Creates a table sized for `expected` keys. `seedLo`/`seedHi` form the 64-bit
 * hashing seed (random, from the host). Returns a handle ≥ 1, E_ARG, E_LIMIT
 * (no free handle) or E_NO_MEMORY.
 */
export function dixCreate(expected: i32, seedLo: i32, seedHi: i32): i32 {
  if (expected < 0) return E_ARG;
  let cap = MIN_CAP;
  while (cap < MAX_CAP && <u64>cap * 3 < <u64>expected * 4 + 4) cap <<= 1;
  let h = 0;
  for (let i = 0; i < MAX_TABLES; i++) {
    if (unchecked(tKeys[i]) == 0) {
      h = i + 1;
      break;
    }
  }
  if (h == 0) return E_LIMIT;
  const p = allocTable(cap);
  if (p == 0) return E_NO_MEMORY;
  const i = h - 1;
  unchecked((tKeys[i] = p));
  unchecked((tVals[i] = p + <usize>cap * KEY));
  unchecked((tCap[i] = cap));
  unchecked((tShift[i] = 64 - log2(cap)));
  unchecked((tCount[i] = 0));
  unchecked((tSeed[i] = (<u64>(<u32>seedHi) << 32) | <u64>(<u32>seedLo)));
  return h;
}

/** Releases a table. Returns 0, or E_HANDLE. */
export function dixFree(h: i32): i32 {
  if (!live(h)) return E_HANDLE;
  const i = h - 1;
  heap.free(unchecked(tKeys[i]));
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
  return <f64>unchecked(tCap[h - 1]) * <f64>(KEY + 4);
}

// Doubles the table. Returns false when memory is exhausted (the table is unchanged).
function grow(i: i32): bool {
  const oldCap = unchecked(tCap[i]);
  if (oldCap >= MAX_CAP) return false;
  const cap = oldCap << 1;
  const p = allocTable(cap);
  if (p == 0) return false;
  const keys = p;
  const vals = p + <usize>cap * KEY;
  const shift = 64 - log2(cap);
  const seed = unchecked(tSeed[i]);
  const mask = cap - 1;
  const oKeys = unchecked(tKeys[i]);
  const oVals = unchecked(tVals[i]);
  for (let s: u32 = 0; s < oldCap; s++) {
    // unsafe: s < oldCap, inside the old table.
    const v = load<u32>(oVals + (<usize>s << 2));
    if (v == 0) continue;
    const k = oKeys + (<usize>s << 5);
    let j = slotOf(k, seed, shift);
    while (load<u32>(vals + (<usize>j << 2)) != 0) j = (j + 1) & mask;
    memory.copy(keys + (<usize>j << 5), k, KEY);
    store<u32>(vals + (<usize>j << 2), v);
  }
  heap.free(oKeys);
  unchecked((tKeys[i] = keys));
  unchecked((tVals[i] = vals));
  unchecked((tCap[i] = cap));
  unchecked((tShift[i] = shift));
  return true;
}

// Inserts one key; returns 0 (new), previous value + 1 (replaced), or E_NO_MEMORY.
function insertOne(i: i32, key: usize, value: u32): i32 {
  if ((<u64>unchecked(tCount[i]) + 1) * 4 > <u64>unchecked(tCap[i]) * 3) {
    if (!grow(i)) return E_NO_MEMORY;
  }
  const keys = unchecked(tKeys[i]);
  const vals = unchecked(tVals[i]);
  const mask = unchecked(tCap[i]) - 1;
  let j = slotOf(key, unchecked(tSeed[i]), unchecked(tShift[i]));
  while (true) {
    // unsafe: j is masked to the capacity.
    const vp = vals + (<usize>j << 2);
    const v = load<u32>(vp);
    if (v == 0) {
      memory.copy(keys + (<usize>j << 5), key, KEY);
      store<u32>(vp, value + 1);
      unchecked((tCount[i] = tCount[i] + 1));
      return 0;
    }
    if (keyEq(keys + (<usize>j << 5), key)) {
      store<u32>(vp, value + 1);
      return <i32>v;
    }
    j = (j + 1) & mask;
  }
  return 0;
}

// Value + 1 of key, or 0 when absent.
function getOne(i: i32, key: usize): u32 {
  const keys = unchecked(tKeys[i]);
  const vals = unchecked(tVals[i]);
  const mask = unchecked(tCap[i]) - 1;
  let j = slotOf(key, unchecked(tSeed[i]), unchecked(tShift[i]));
  while (true) {
    // unsafe: j is masked to the capacity; the load factor stays below 3/4, so an empty slot ends the probe.
    const v = load<u32>(vals + (<usize>j << 2));
    if (v == 0) return 0;
    if (keyEq(keys + (<usize>j << 5), key)) return v;
    j = (j + 1) & mask;
  }
  return 0;
}

/**
 * Inserts `key` (32 bytes at `key`) → `value` (< 2^31 - 1). Returns 0 when the
 * key is new, the replaced value + 1 when it was present, E_ARG, E_HANDLE or
 * E_NO_MEMORY.
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
  heap.free(key);
  if (dixFree(h) != 0) r = r == 0 ? 8 : r;
  if (r == 0 && dixGet(h, 0) != E_HANDLE) r = 9;
  return r;
}
