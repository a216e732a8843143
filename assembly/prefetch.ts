// Fault-time prefetch by guest-virtual neighbourhood (docs/prefetch.md,
// docs/abi.md "prefetch").
//
// A prefetch engine (a handle) keeps the bookkeeping of a lazily restored
// guest memory; page contents live in the host:
//  - the resident set: one bit per guest-physical page;
//  - the prefetched set: pages loaded by prefetch and not used yet, so that an
//    access can tell a prefetch hit, and the wasted pages can be counted;
//  - a translation table (guest-virtual page -> guest-physical page, open
//    addressing) and its reverse (first mapping added wins), filled by the
//    host from the guest's page tables (a walk, or `info tlb`);
//  - counters (accesses, faults, pages loaded, hits, runs, ...).
//
// The fault path: take the faulting page's virtual neighbourhood
// [vpn - back, vpn + ahead], translate every page, drop unmapped and resident
// pages, sort and deduplicate the frames, coalesce them into runs of
// consecutive frames, mark them resident and write the runs for the host,
// which issues one read per run. The host may instead translate the
// neighbourhood itself (through an address space) and hand the frames to
// prefetchFaultList, which does the rest.
//
// Runs are pairs of little-endian u32: (first page, page count).

import { E_ARG, E_HANDLE, E_LIMIT, E_NO_MEMORY, E_OUTPUT_TOO_SMALL } from "./_errors";
import { tryAlloc } from "./_memory";

const MAX_ENGINES: i32 = 16;
/** Largest neighbourhood (back + ahead + 1) one fault may walk. */
export const PREFETCH_MAX_WINDOW: u32 = 65536;
/** Marks an unmapped entry in a frame list (prefetchFaultList). */
/**
 * Most translations an engine's table is made for: 2^24 (64 GiB of 4 KiB
 * pages). Its four arrays are then 256 MiB each, under the allocator's 1 GiB
 * block limit (2^26, the old bound, made 1 GiB arrays and trapped).
 */
export const PREFETCH_MAX_MAP: u32 = 1 << 24;
export const PREFETCH_UNMAPPED: u64 = 0xffff_ffff_ffff_ffff;

// Counter slots (prefetchStats writes them in this order as u64).
const C_ACCESSES: i32 = 0;
const C_FAULTS: i32 = 1;
const C_LOADED: i32 = 2; // pages loaded by faults (faulting page included)
const C_PREFETCHED: i32 = 3; // pages loaded that were not the faulting page
const C_HITS: i32 = 4; // prefetched pages later used
const C_RUNS: i32 = 5; // runs returned = read calls
const C_TRANSLATIONS: i32 = 6;
const C_PT_READS: i32 = 7; // modelled page-table page reads
const C_UNMAPPED: i32 = 8; // accesses to unmapped virtual pages
/** Number of u64 counters prefetchStats writes. */
export const PREFETCH_STATS: i32 = 9;

const ePages = new StaticArray<u32>(MAX_ENGINES);
const eLive = new StaticArray<bool>(MAX_ENGINES);
const eResident = new StaticArray<usize>(MAX_ENGINES);
const ePrefetched = new StaticArray<usize>(MAX_ENGINES);
const eResidentCount = new StaticArray<u32>(MAX_ENGINES);
// forward table: keys vpn+1 (0 = empty), values ppn
const eKeys = new StaticArray<usize>(MAX_ENGINES);
const eVals = new StaticArray<usize>(MAX_ENGINES);
// reverse table: keys ppn+1, values vpn
const eRKeys = new StaticArray<usize>(MAX_ENGINES);
const eRVals = new StaticArray<usize>(MAX_ENGINES);
const eMask = new StaticArray<u32>(MAX_ENGINES);
const eCount = new StaticArray<u32>(MAX_ENGINES);
const eScratch = new StaticArray<usize>(MAX_ENGINES); // u32 frames, PREFETCH_MAX_WINDOW
const eStats = new StaticArray<usize>(MAX_ENGINES); // u64 counters

function live(h: i32): bool {
  return h >= 0 && h < MAX_ENGINES && unchecked(eLive[h]);
}

@inline function bump(h: i32, slot: i32, by: u64): void {
  const p = unchecked(eStats[h]) + (<usize>slot << 3);
  // unsafe: slot < PREFETCH_STATS, the block has PREFETCH_STATS u64.
  store<u64>(p, load<u64>(p) + by);
}

@inline function getBit(bm: usize, i: u32): bool {
  // unsafe: callers check i < pages; the bitmap has ceil(pages / 8) bytes.
  return ((load<u8>(bm + (i >> 3)) >> (i & 7)) & 1) != 0;
}

@inline function setBit(bm: usize, i: u32): void {
  const p = bm + (i >> 3);
  store<u8>(p, load<u8>(p) | (<u8>1 << <u8>(i & 7)));
}

@inline function clearBit(bm: usize, i: u32): void {
  const p = bm + (i >> 3);
  store<u8>(p, load<u8>(p) & ~(<u8>1 << <u8>(i & 7)));
}

@inline function hash64(k: u64): u32 {
  // Fibonacci hashing of the 16-page group, the page's place in the group
  // kept: a neighbourhood walk looks up consecutive pages, which then sit in
  // consecutive slots (one or two cache lines instead of one miss each).
  return (<u32>(((k >> 4) * 0x9e3779b97f4a7c15) >> 32) << 4) | <u32>(k & 15);
}

// A zeroed block, or 0 when the core cannot hold it (see tryAlloc).
function allocZero(n: usize): usize {
  const p = tryAlloc(n == 0 ? 8 : n);
  if (p != 0) memory.fill(p, 0, n);
  return p;
}

function freeAll(a: usize, b: usize, c: usize, d: usize, e: usize, f: usize, g: usize, h: usize): void {
  if (a) heap.free(a);
  if (b) heap.free(b);
  if (c) heap.free(c);
  if (d) heap.free(d);
  if (e) heap.free(e);
  if (f) heap.free(f);
  if (g) heap.free(g);
  if (h) heap.free(h);
}

/**
 * Creates a prefetch engine for a guest of `pages` physical pages with room
 * for `mapCapacity` translations (virtual page -> physical page). Every page
 * starts absent. Returns a handle, or E_ARG (pages 0, or a capacity above
 * PREFETCH_MAX_MAP), E_LIMIT (16 engines live), E_NO_MEMORY (the bitmaps or
 * the table do not fit: nothing is kept).
 */
export function prefetchCreate(pages: u32, mapCapacity: u32): i32 {
  if (pages == 0 || mapCapacity > PREFETCH_MAX_MAP) return E_ARG;
  let h: i32 = -1;
  for (let i = 0; i < MAX_ENGINES; i++) {
    if (!unchecked(eLive[i])) {
      h = i;
      break;
    }
  }
  if (h < 0) return E_LIMIT;
  // Table at most half full: capacity rounded up to a power of two, times 2.
  let slots: u32 = 16;
  while (slots < mapCapacity * 2) slots <<= 1;
  const bmBytes = (<usize>pages + 7) >> 3;
  const res = allocZero(bmBytes);
  const pre = allocZero(bmBytes);
  const keys = allocZero(<usize>slots << 3);
  const vals = allocZero(<usize>slots << 3);
  const rkeys = allocZero(<usize>slots << 3);
  const rvals = allocZero(<usize>slots << 3);
  const scratch = tryAlloc(<usize>PREFETCH_MAX_WINDOW << 2);
  const stats = allocZero(<usize>PREFETCH_STATS << 3);
  if (!res || !pre || !keys || !vals || !rkeys || !rvals || !scratch || !stats) {
    freeAll(res, pre, keys, vals, rkeys, rvals, scratch, stats);
    return E_NO_MEMORY;
  }
  unchecked((ePages[h] = pages));
  unchecked((eResident[h] = res));
  unchecked((ePrefetched[h] = pre));
  unchecked((eResidentCount[h] = 0));
  unchecked((eKeys[h] = keys));
  unchecked((eVals[h] = vals));
  unchecked((eRKeys[h] = rkeys));
  unchecked((eRVals[h] = rvals));
  unchecked((eMask[h] = slots - 1));
  unchecked((eCount[h] = 0));
  unchecked((eScratch[h] = scratch));
  unchecked((eStats[h] = stats));
  unchecked((eLive[h] = true));
  return h;
}

/** Releases an engine. Returns 0, or E_HANDLE. */
export function prefetchDestroy(h: i32): i32 {
  if (!live(h)) return E_HANDLE;
  heap.free(unchecked(eResident[h]));
  heap.free(unchecked(ePrefetched[h]));
  heap.free(unchecked(eKeys[h]));
  heap.free(unchecked(eVals[h]));
  heap.free(unchecked(eRKeys[h]));
  heap.free(unchecked(eRVals[h]));
  heap.free(unchecked(eScratch[h]));
  heap.free(unchecked(eStats[h]));
  unchecked((eLive[h] = false));
  return 0;
}

function tableGet(keys: usize, vals: usize, mask: u32, key: u64): i64 {
  const k = key + 1;
  let i = hash64(k) & mask;
  while (true) {
    // unsafe: i <= mask, the tables have mask + 1 u64 slots.
    const s = load<u64>(keys + (<usize>i << 3));
    if (s == 0) return -1;
    if (s == k) return <i64>load<u64>(vals + (<usize>i << 3));
    i = (i + 1) & mask;
  }
}

// Returns 1 when inserted, 0 when the key was there (value kept).
function tablePut(keys: usize, vals: usize, mask: u32, key: u64, val: u64): i32 {
  const k = key + 1;
  let i = hash64(k) & mask;
  while (true) {
    const s = load<u64>(keys + (<usize>i << 3));
    if (s == k) return 0;
    if (s == 0) {
      store<u64>(keys + (<usize>i << 3), k);
      store<u64>(vals + (<usize>i << 3), val);
      return 1;
    }
    i = (i + 1) & mask;
  }
}

/**
 * Adds `n` translations from `pairs` (n × two u64: virtual page number,
 * physical page number). A virtual page already present keeps its first
 * frame; the reverse map keeps the first virtual page added for a frame.
 * Frames at or past the guest's size are skipped (they are not RAM).
 * Returns the number of new translations, or E_HANDLE, E_LIMIT (table full:
 * it holds at least the capacity given at creation, rounded up to a power of
 * two, at least 8).
 */
export function prefetchMap(h: i32, pairs: usize, n: u32): i32 {
  if (!live(h)) return E_HANDLE;
  const mask = unchecked(eMask[h]);
  const pages = unchecked(ePages[h]);
  let added: i32 = 0;
  for (let i: u32 = 0; i < n; i++) {
    // unsafe: the host passes n pairs of u64 at pairs.
    const vpn = load<u64>(pairs + (<usize>i << 4));
    const ppn = load<u64>(pairs + (<usize>i << 4), 8);
    if (ppn >= <u64>pages || vpn >= 0xffff_ffff_ffff_fff0) continue;
    if (unchecked(eCount[h]) >= (mask + 1) >> 1) return E_LIMIT;
    const r = tablePut(unchecked(eKeys[h]), unchecked(eVals[h]), mask, vpn, ppn);
    if (r == 1) {
      unchecked((eCount[h] += 1));
      added++;
      tablePut(unchecked(eRKeys[h]), unchecked(eRVals[h]), mask, ppn, vpn);
    }
  }
  return added;
}

/** Number of translations held. Returns it, or E_HANDLE. */
export function prefetchMapCount(h: i32): i32 {
  if (!live(h)) return E_HANDLE;
  return <i32>unchecked(eCount[h]);
}

/** Translates a virtual page number: the physical page, or -1 when unmapped, E_HANDLE. */
export function prefetchTranslate(h: i32, vpn: u64): i64 {
  if (!live(h)) return E_HANDLE;
  return tableGet(unchecked(eKeys[h]), unchecked(eVals[h]), unchecked(eMask[h]), vpn);
}

/** The reverse map: the first virtual page mapped to `ppn`, or -1, E_HANDLE. */
export function prefetchReverse(h: i32, ppn: u64): i64 {
  if (!live(h)) return E_HANDLE;
  return tableGet(unchecked(eRKeys[h]), unchecked(eRVals[h]), unchecked(eMask[h]), ppn);
}

/** 1 when `page` is resident, 0 when absent; E_ARG past the guest, E_HANDLE. */
export function prefetchIsResident(h: i32, page: u32): i32 {
  if (!live(h)) return E_HANDLE;
  if (page >= unchecked(ePages[h])) return E_ARG;
  return getBit(unchecked(eResident[h]), page) ? 1 : 0;
}

// Sets or clears one page's resident bit, clears its prefetched mark, and
// returns the resident count adjusted.
@inline function flip(bm: usize, pf: usize, p: u32, on: i32, rc: u32): u32 {
  const was = getBit(bm, p);
  clearBit(pf, p);
  if (on != 0 && !was) {
    setBit(bm, p);
    return rc + 1;
  }
  if (on == 0 && was) {
    clearBit(bm, p);
    return rc - 1;
  }
  return rc;
}

/**
 * Marks pages [first, first + count) resident (`on` 1) or absent (`on` 0,
 * e.g. after the host drops them); clears their prefetched mark. Returns the
 * resident count after, or E_ARG (range past the guest), E_HANDLE.
 */
export function prefetchSetResident(h: i32, first: u32, count: u32, on: i32): i32 {
  if (!live(h)) return E_HANDLE;
  const pages = unchecked(ePages[h]);
  if (first > pages || count > pages - first) return E_ARG;
  const bm = unchecked(eResident[h]);
  const pf = unchecked(ePrefetched[h]);
  let rc = unchecked(eResidentCount[h]);
  const end = first + count;
  let p = first;
  // Bit by bit up to a byte boundary, whole bytes (popcount for the count)
  // in the middle, bit by bit after: dropping a whole guest is a memset.
  for (; p < end && (p & 7) != 0; p++) rc = flip(bm, pf, p, on, rc);
  let q = end & ~7;
  if (q < p) q = p;
  if (q > p) {
    const b0 = <usize>(p >> 3);
    const nb = <usize>((q - p) >> 3);
    let before: u32 = 0;
    for (let i: usize = 0; i < nb; i++) before += <u32>popcnt(<u32>load<u8>(bm + b0 + i));
    // unsafe: bytes b0 .. b0 + nb lie within ceil(pages / 8).
    memory.fill(bm + b0, on != 0 ? 0xff : 0, nb);
    memory.fill(pf + b0, 0, nb);
    rc = on != 0 ? rc + ((q - p) - before) : rc - before;
  }
  for (let r = q; r < end; r++) rc = flip(bm, pf, r, on, rc);
  unchecked((eResidentCount[h] = rc));
  return <i32>rc;
}

/** Resident pages. Returns the count, or E_HANDLE. */
export function prefetchResidentCount(h: i32): i32 {
  if (!live(h)) return E_HANDLE;
  return <i32>unchecked(eResidentCount[h]);
}

/**
 * Pointer to the resident bitmap (ceil(pages / 8) bytes, bit p of byte p>>3,
 * LSB first), for the host to read. Valid until prefetchDestroy. E_HANDLE.
 */
export function prefetchResidentBitmap(h: i32): usize {
  if (!live(h)) return <usize>0;
  return unchecked(eResident[h]);
}

/**
 * Records an access to physical page `page` (counted in the statistics):
 * 0 resident, 1 resident and prefetched, first use (a prefetch hit; the mark
 * is cleared), 2 absent (the host must fault it in). E_ARG, E_HANDLE.
 */
export function prefetchAccess(h: i32, page: u32): i32 {
  if (!live(h)) return E_HANDLE;
  if (page >= unchecked(ePages[h])) return E_ARG;
  bump(h, C_ACCESSES, 1);
  if (!getBit(unchecked(eResident[h]), page)) return 2;
  const pf = unchecked(ePrefetched[h]);
  if (getBit(pf, page)) {
    clearBit(pf, page);
    bump(h, C_HITS, 1);
    return 1;
  }
  return 0;
}

/**
 * Records an access to virtual page `vpn`: translates it and returns
 * (ppn << 2) | status with status as in prefetchAccess, or -1 when `vpn` is
 * unmapped (counted), E_HANDLE. One call per access on the simulator's path.
 */
export function prefetchTouch(h: i32, vpn: u64): i64 {
  if (!live(h)) return E_HANDLE;
  const ppn = tableGet(unchecked(eKeys[h]), unchecked(eVals[h]), unchecked(eMask[h]), vpn);
  if (ppn < 0) {
    bump(h, C_ACCESSES, 1);
    bump(h, C_UNMAPPED, 1);
    return -1;
  }
  const s = prefetchAccess(h, <u32>ppn);
  return (ppn << 2) | <i64>s;
}

// Ciura's gaps, a global so that no call allocates them.
const GAPS: StaticArray<u32> = [701, 301, 132, 57, 23, 10, 4, 1];

// Insertion sort for short lists (a window's frames), shell sort beyond.
function sortU32(p: usize, n: u32): void {
  if (n < 2) return;
  for (let g = n <= 32 ? 7 : 0; g < 8; g++) {
    const gap = unchecked(GAPS[g]);
    if (gap >= n) continue;
    for (let i = gap; i < n; i++) {
      // unsafe: i < n and j - gap >= 0: all within the n u32 at p.
      const v = load<u32>(p + (<usize>i << 2));
      let j = i;
      while (j >= gap) {
        const w = load<u32>(p + (<usize>(j - gap) << 2));
        if (w <= v) break;
        store<u32>(p + (<usize>j << 2), w);
        j -= gap;
      }
      store<u32>(p + (<usize>j << 2), v);
    }
  }
}

/**
 * Sorts the `n` u32 page numbers at `pages` in place, drops duplicates, and
 * writes the runs of consecutive pages to `out` as (first, count) u32 pairs.
 * Returns the number of runs, or E_OUTPUT_TOO_SMALL when more than `cap`
 * runs are needed (nothing meaningful is written then). Pure: no engine.
 */
export function prefetchCoalesce(pages: usize, n: u32, out: usize, cap: u32): i32 {
  sortU32(pages, n);
  let runs: u32 = 0;
  let i: u32 = 0;
  while (i < n) {
    const first = load<u32>(pages + (<usize>i << 2));
    let last = first;
    i++;
    while (i < n) {
      const v = load<u32>(pages + (<usize>i << 2));
      if (v == last) {
        i++;
        continue;
      }
      if (v != last + 1) break;
      last = v;
      i++;
    }
    if (runs >= cap) return E_OUTPUT_TOO_SMALL;
    // unsafe: runs < cap, the host's out holds cap pairs.
    store<u32>(out + (<usize>runs << 3), first);
    store<u32>(out + (<usize>runs << 3), last - first + 1, 4);
    runs++;
  }
  return <i32>runs;
}

// Shared tail of every fault path: `k` frames sit in the scratch (the
// faulting page among them when fault >= 0), their resident bits already set
// by take(). Coalesces, marks the neighbours prefetched, counts. When the
// runs do not fit, the bits are cleared again and nothing is counted.
function finish(h: i32, k: u32, fault: i64, out: usize, cap: u32): i32 {
  const scratch = unchecked(eScratch[h]);
  const r = prefetchCoalesce(scratch, k, out, cap);
  if (r < 0) {
    untake(unchecked(eResident[h]), scratch, k);
    return r;
  }
  const pf = unchecked(ePrefetched[h]);
  for (let i: u32 = 0; i < k; i++) {
    // unsafe: i < k <= PREFETCH_MAX_WINDOW, the scratch's size.
    const p = load<u32>(scratch + (<usize>i << 2));
    if (<i64>p != fault) setBit(pf, p);
  }
  unchecked((eResidentCount[h] += k));
  if (fault >= 0) bump(h, C_FAULTS, 1);
  bump(h, C_LOADED, k);
  bump(h, C_PREFETCHED, fault >= 0 ? k - 1 : k);
  bump(h, C_RUNS, <u64>r);
  return r;
}

// Adds `ppn` to the scratch when it is in the guest, absent and not there yet
// (its resident bit is set: the "taken" mark, which finish keeps).
@inline function take(bm: usize, pages: u32, scratch: usize, k: u32, ppn: i64): u32 {
  if (ppn < 0 || ppn >= <i64>pages) return k;
  const p = <u32>ppn;
  if (getBit(bm, p)) return k;
  setBit(bm, p);
  store<u32>(scratch + (<usize>k << 2), p);
  return k + 1;
}

// Undoes take's marks (when the runs do not fit the host's buffer).
function untake(bm: usize, scratch: usize, k: u32): void {
  for (let i: u32 = 0; i < k; i++) clearBit(bm, load<u32>(scratch + (<usize>i << 2)));
}

/**
 * The fault path by virtual neighbourhood. `vpn` faulted (its frame is
 * absent); walks [vpn - back, vpn + ahead] through the translation table,
 * drops unmapped and resident frames, coalesces the rest (the faulting frame
 * included) into runs at `out` (cap pairs), marks them resident and the
 * neighbours prefetched. Returns the number of runs (0 when the faulting page
 * was resident already), or E_ARG (vpn unmapped, window over
 * PREFETCH_MAX_WINDOW), E_OUTPUT_TOO_SMALL, E_HANDLE.
 */
export function prefetchFaultVirtual(h: i32, vpn: u64, back: u32, ahead: u32, out: usize, cap: u32): i32 {
  if (!live(h)) return E_HANDLE;
  if (<u64>back + <u64>ahead + 1 > <u64>PREFETCH_MAX_WINDOW) return E_ARG;
  const keys = unchecked(eKeys[h]);
  const vals = unchecked(eVals[h]);
  const mask = unchecked(eMask[h]);
  const pages = unchecked(ePages[h]);
  const bm = unchecked(eResident[h]);
  const scratch = unchecked(eScratch[h]);
  const fault = tableGet(keys, vals, mask, vpn);
  if (fault < 0 || fault >= <i64>pages) return E_ARG;
  const lo: u64 = vpn >= <u64>back ? vpn - back : 0;
  const hi: u64 = vpn + <u64>ahead < vpn ? 0xffff_ffff_ffff_fffe : vpn + <u64>ahead;
  let k: u32 = take(bm, pages, scratch, 0, fault);
  if (k == 0) return 0;
  for (let v = lo; v <= hi; v++) {
    if (v == vpn) continue;
    k = take(bm, pages, scratch, k, tableGet(keys, vals, mask, v));
  }
  bump(h, C_TRANSLATIONS, hi - lo + 1);
  // Modelled 4-level walk: the two top levels once, one directory read per
  // 1 GiB and one leaf-table read per 2 MiB the window spans.
  bump(h, C_PT_READS, 2 + ((hi >> 18) - (lo >> 18) + 1) + ((hi >> 9) - (lo >> 9) + 1));
  return finish(h, k, fault, out, cap);
}

/**
 * A batch of virtual faults (as a host queues them, e.g. from several vCPUs):
 * `n` u64 virtual page numbers at `vpns`, each handled as prefetchFaultVirtual
 * with the same window; all runs are written one after another at `out` (cap
 * pairs in all). Faults whose page is resident by then add no runs; unmapped
 * pages are skipped. Returns the total number of runs, or E_ARG (window),
 * E_OUTPUT_TOO_SMALL, E_HANDLE.
 */
export function prefetchFaultVirtualBatch(h: i32, vpns: usize, n: u32, back: u32, ahead: u32, out: usize, cap: u32): i32 {
  if (!live(h)) return E_HANDLE;
  let total: u32 = 0;
  for (let i: u32 = 0; i < n; i++) {
    // unsafe: the host passes n u64 at vpns; total <= cap, so out + total * 8 is within its cap pairs.
    const r = prefetchFaultVirtual(h, load<u64>(vpns + (<usize>i << 3)), back, ahead, out + (<usize>total << 3), cap - total);
    if (r == E_ARG) {
      if (<u64>back + <u64>ahead + 1 > <u64>PREFETCH_MAX_WINDOW) return E_ARG;
      continue; // unmapped
    }
    if (r < 0) return r;
    total += <u32>r;
  }
  return <i32>total;
}

/**
 * The fault path by physical neighbourhood (fault-around): frames
 * [ppn - back, ppn + ahead], absent ones, coalesced. Returns the number of
 * runs (0 when `ppn` was resident), or E_ARG, E_OUTPUT_TOO_SMALL, E_HANDLE.
 */
export function prefetchFaultPhysical(h: i32, ppn: u32, back: u32, ahead: u32, out: usize, cap: u32): i32 {
  if (!live(h)) return E_HANDLE;
  const pages = unchecked(ePages[h]);
  if (ppn >= pages || <u64>back + <u64>ahead + 1 > <u64>PREFETCH_MAX_WINDOW) return E_ARG;
  const bm = unchecked(eResident[h]);
  const scratch = unchecked(eScratch[h]);
  let k: u32 = take(bm, pages, scratch, 0, <i64>ppn);
  if (k == 0) return 0;
  const lo: i64 = <i64>ppn - <i64>back;
  const hi: i64 = <i64>ppn + <i64>ahead;
  for (let p = lo; p <= hi; p++) {
    if (p != <i64>ppn) k = take(bm, pages, scratch, k, p);
  }
  return finish(h, k, <i64>ppn, out, cap);
}

/**
 * The fault path for frames the host translated itself (through an address
 * space's batch translation): `n` u64 frame numbers at `frames`, entries equal
 * to PREFETCH_UNMAPPED (or past the guest) skipped, resident ones dropped.
 * `fault` is the faulting frame (counted as a fault, not as prefetched), or
 * -1 for a pure prefetch (a replay). Returns the number of runs, or E_ARG
 * (n over PREFETCH_MAX_WINDOW), E_OUTPUT_TOO_SMALL, E_HANDLE.
 */
export function prefetchFaultList(h: i32, frames: usize, n: u32, fault: i64, out: usize, cap: u32): i32 {
  if (!live(h)) return E_HANDLE;
  if (n >= PREFETCH_MAX_WINDOW) return E_ARG;
  const pages = unchecked(ePages[h]);
  const bm = unchecked(eResident[h]);
  const scratch = unchecked(eScratch[h]);
  let k: u32 = 0;
  if (fault >= 0) {
    if (fault >= <i64>pages) return E_ARG;
    k = take(bm, pages, scratch, 0, fault);
    if (k == 0) return 0;
  }
  for (let i: u32 = 0; i < n; i++) {
    // unsafe: the host passes n u64 at frames.
    const f = load<u64>(frames + (<usize>i << 3));
    if (f >= <u64>pages) continue;
    k = take(bm, pages, scratch, k, <i64>f);
  }
  return finish(h, k, fault, out, cap);
}

/**
 * Adds to the counters what the host measured itself (translations and
 * page-table reads done through an address space). Returns 0, or E_HANDLE.
 */
export function prefetchCountWalk(h: i32, translations: u32, tableReads: u32): i32 {
  if (!live(h)) return E_HANDLE;
  bump(h, C_TRANSLATIONS, translations);
  bump(h, C_PT_READS, tableReads);
  return 0;
}

/**
 * Writes the PREFETCH_STATS u64 counters to `out`: accesses, faults, pages
 * loaded, prefetched, prefetch hits, runs (read calls), translations,
 * page-table reads, unmapped accesses. Returns PREFETCH_STATS, or E_HANDLE.
 */
export function prefetchStats(h: i32, out: usize): i32 {
  if (!live(h)) return E_HANDLE;
  memory.copy(out, unchecked(eStats[h]), <usize>PREFETCH_STATS << 3);
  return PREFETCH_STATS;
}

/** Number of prefetched pages not used (yet): the waste so far. E_HANDLE. */
export function prefetchUnused(h: i32): i32 {
  if (!live(h)) return E_HANDLE;
  const pf = unchecked(ePrefetched[h]);
  const bytes = (<usize>unchecked(ePages[h]) + 7) >> 3;
  let n: i32 = 0;
  let i: usize = 0;
  for (; i + 8 <= bytes; i += 8) n += <i32>popcnt(load<u64>(pf + i));
  for (; i < bytes; i++) n += <i32>popcnt(<u32>load<u8>(pf + i));
  return n;
}

// ---- self-check ----

export function prefetchSelfCheck(): i32 {
  // coalesce: [5,3,4,9,9,1] -> (1,1) (3,3) (9,1)
  const buf = heap.alloc(64);
  const out = heap.alloc(64);
  const xs: StaticArray<u32> = [5, 3, 4, 9, 9, 1];
  for (let i = 0; i < 6; i++) store<u32>(buf + (<usize>i << 2), unchecked(xs[i]));
  let r = prefetchCoalesce(buf, 6, out, 8);
  let code: i32 = 0;
  if (r != 3 || load<u32>(out) != 1 || load<u32>(out, 4) != 1 || load<u32>(out, 8) != 3 || load<u32>(out, 12) != 3 || load<u32>(out, 16) != 9) code = 1;
  if (code == 0 && prefetchCoalesce(buf, 6, out, 2) != E_OUTPUT_TOO_SMALL) code = 2;
  if (code == 0) {
    // virtual neighbours 10..12 map to scattered frames 7, 3, 8; 13 unmapped.
    const h = prefetchCreate(16, 8);
    if (h < 0) code = 3;
    else {
      const pairs = heap.alloc(48);
      store<u64>(pairs, 10);
      store<u64>(pairs, 7, 8);
      store<u64>(pairs, 11, 16);
      store<u64>(pairs, 3, 24);
      store<u64>(pairs, 12, 32);
      store<u64>(pairs, 8, 40);
      if (prefetchMap(h, pairs, 3) != 3) code = 4;
      else {
        r = prefetchFaultVirtual(h, 11, 1, 2, out, 8);
        // frames {3, 7, 8} -> runs (3,1) (7,2)
        if (r != 2 || load<u32>(out) != 3 || load<u32>(out, 8) != 7 || load<u32>(out, 12) != 2) code = 5;
        else if (prefetchResidentCount(h) != 3 || prefetchAccess(h, 7) != 1 || prefetchAccess(h, 3) != 0) code = 6;
        else if (prefetchFaultVirtual(h, 10, 4, 4, out, 8) != 0) code = 7;
        else if (prefetchUnused(h) != 1 || prefetchReverse(h, 8) != 12) code = 8;
      }
      heap.free(pairs);
      prefetchDestroy(h);
    }
  }
  heap.free(buf);
  heap.free(out);
  return code;
}
