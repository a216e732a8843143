// Guest page-table walks (docs/paging.md, docs/abi.md "paging").
//
// An address space (a handle) translates guest-virtual addresses through the
// guest's own page tables: x86-64 4-level and 5-level (LA57) paging from CR3,
// or AArch64 stage 1 with the 4 KiB granule from TTBR0/TTBR1.
//
// Guest memory is larger than the core's memory, so the core never holds
// guest RAM. It keeps a bounded cache of page-table frames (4 KiB each,
// hashed by guest-physical address, clock replacement). A walk that needs a
// frame the cache does not have stops with E_NEED_DATA and the frame's
// address in the result slot R_FRAME; the host reads those 4 KiB from guest
// memory into the staging buffer, calls pagingProvide, and calls again.
// Every call is restartable: batches report how many addresses they finished,
// mapping walks a VA cursor.
//
// Caches, per address space:
//  - the frame cache (above); each frame remembers the VA range it was used
//    for as a table ("coverage"), so a range invalidation finds the frames
//    that hold entries for that range even when their parents were evicted;
//  - a direct-mapped cache keyed by the 2 MiB VA region (va >> 21) holding
//    either the large page that maps the region (a TLB entry for 2 MiB/1 GiB
//    pages) or a pointer to the last-level table's cached frame with the
//    permissions accumulated above it (a paging-structure cache entry). A 4 KiB
//    translation that hits is then one probe and one entry load. A pointer
//    entry carries the frame slot's version, so evicting the frame makes the
//    entry stale without a search.
//
// Fault semantics follow bindings/memory/paging/reference.ts (the TypeScript
// reference walker): levels in the architecture's numbering, leaf pages may
// lie outside guest memory, tables may not.

import { E_ARG, E_HANDLE, E_LIMIT, E_NEED_DATA, E_NO_MEMORY } from "./_errors";
import { tryAlloc } from "./_memory";

const MAX_SPACES: i32 = 64;

/** Modes (pagingCreate's `mode`). */
export const PAGING_X86_64: i32 = 0;
export const PAGING_X86_64_LA57: i32 = 1;
export const PAGING_AARCH64: i32 = 2;
/** AArch64 with the 16 KiB granule. */
export const PAGING_AARCH64_16K: i32 = 3;
/** AArch64 with the 64 KiB granule. */
export const PAGING_AARCH64_64K: i32 = 4;

/** Fault reasons (result slot R_REASON). */
export const PAGING_NOT_PRESENT: i32 = 1;
export const PAGING_RESERVED: i32 = 2;
export const PAGING_NON_CANONICAL: i32 = 3;
export const PAGING_OUTSIDE_MEMORY: i32 = 4;
export const PAGING_BAD_ROOT: i32 = 5;

/** The value pagingTranslateBatch writes for an address that does not translate. */
export const PAGING_UNMAPPED: u64 = 0xffff_ffff_ffff_ffff;

// Result slots (u64 each) at pagingResult().
const R_GPA: i32 = 0; // translation: gpa of the address
const R_LEAF: i32 = 1; // leaf entry, or the faulting entry
const R_SIZE: i32 = 2; // page size in bytes
const R_FLAGS: i32 = 3; // effective flags (PF bits of bindings/memory/paging/types.ts)
const R_LEVEL: i32 = 4; // level of the leaf / faulting entry
const R_REASON: i32 = 5; // fault reason (PAGING_*), 0 on success
const R_HAS_ENTRY: i32 = 6; // 1 when R_LEAF holds the faulting entry
const R_FRAME: i32 = 7; // E_NEED_DATA: the guest-physical address of the frame to provide
const R_CURSOR: i32 = 8; // mapping walk: where to continue
const R_STATE: i32 = 9; // mapping walk: 0 done, 1 more (output full / work bound), 2 need a frame
const R_MAPPED: i32 = 10; // batch: how many of this call's addresses translated
/** u64 slots in the result area. */
export const PAGING_RESULT_SLOTS: i32 = 16;

/** Bytes per record written by pagingMappings. */
export const PAGING_MAPPING_BYTES: i32 = 32;

// Effective flag bits (bindings/memory/paging/types.ts PF).
const F_P: u32 = 1;
const F_W: u32 = 2;
const F_U: u32 = 4;
const F_PWT: u32 = 8;
const F_PCD: u32 = 16;
const F_A: u32 = 32;
const F_D: u32 = 64;
const F_G: u32 = 256;
const F_NX: u32 = 512;
const F_UXN: u32 = 1024;
const F_PXN: u32 = 2048;

// Accumulated restrictions of the tables above a leaf.
const ACC_NO_W: u32 = 1;
const ACC_NO_U: u32 = 2;
const ACC_XN: u32 = 4; // x86 XD; AArch64 UXNTable
const ACC_PXN: u32 = 8; // AArch64 PXNTable

/** x86-64: bits 51..12 (MAXPHYADDR 52). */
const X86_ADDR: u64 = 0x000f_ffff_ffff_f000;
/** AArch64, 48-bit output addresses: bits 47..12. */
const A64_ADDR: u64 = 0x0000_ffff_ffff_f000;
/** CR3 bits 62..52 (above MAXPHYADDR; bit 63 is MOV CR3's no-flush hint). */
const CR3_RESERVED: u64 = 0x7ff0_0000_0000_0000;

// Region cache: 8192 entries of 32 bytes, keyed by va >> 21.
const RC_BITS: u32 = 13;
const RC_N: u32 = 1 << RC_BITS;
const RC_MASK: u64 = <u64>(RC_N - 1);
const RC_LEAF: u32 = 0x8000_0000;
// entry: +0 tag (va >> 21) + 1 (0 = empty); +8 leaf: gpa of the region's
// start, table: frame data pointer | slot << 32; +16 leaf: the raw leaf,
// table: the slot's version; +24 meta: RC_LEAF | flags | level << 16 | log2(size) << 24.

const FREE_KEY: u64 = 0xffff_ffff_ffff_ffff;
const CHUNK_FRAMES: u32 = 64; // frames per lazily allocated chunk (256 KiB)
const MAX_PINS: i32 = 8;

class Space {
  mode: i32 = 0;
  root0: u64 = 0;
  root1: u64 = 0;
  hasRoot1: bool = false;
  t0: i32 = 16;
  t1: i32 = 16;
  nxe: bool = true;
  /** AArch64 granule: log2 of the page and table size (12, 14, 16). */
  gshift: i32 = 12;
  memSize: u64 = 0;
  // frame cache
  cap: u32 = 0;
  count: u32 = 0;
  hand: u32 = 0;
  bmask: u32 = 0;
  buckets: usize = 0; // u32 per bucket: slot + 1 (0 = empty)
  keys: usize = 0; // u64 per slot: frame address, FREE_KEY when free
  nexts: usize = 0; // u32 per slot: next slot + 1 in the bucket chain
  vers: usize = 0; // u32 per slot: bumped whenever the slot's contents change
  refs: usize = 0; // u8 per slot: clock reference bit
  covLo: usize = 0; // u64 per slot: lowest VA the frame was a table for
  covHi: usize = 0; // u64 per slot: highest
  ptrs: usize = 0; // u32 per slot: data pointer (0 until its chunk exists)
  chunks: usize = 0; // u32 per chunk
  rc: usize = 0; // region cache
  pins: StaticArray<i32> = new StaticArray<i32>(MAX_PINS);
  npins: i32 = 0;
  pendFrame: u64 = FREE_KEY;
  pendLo: u64 = 0;
  pendHi: u64 = 0;
  // counters
  hits: u64 = 0;
  walks: u64 = 0;
  provided: u64 = 0;
}

const spaces = new StaticArray<Space | null>(MAX_SPACES);
const result: usize = heap.alloc(<usize>PAGING_RESULT_SLOTS << 3);
const staging: usize = heap.alloc(4096);

// Mapping-walk stack (at most 5 levels deep).
const stPtr = new StaticArray<usize>(6);
const stAddr = new StaticArray<u64>(6);
const stBase = new StaticArray<u64>(6);
const stIdx = new StaticArray<u32>(6);
const stEnt = new StaticArray<u32>(6);
const stAcc = new StaticArray<u32>(6);
const stSlot = new StaticArray<i32>(6);
const stFrame = new StaticArray<u64>(6); // the 4 KiB frame of the table mapped at stPtr
const stCovLo = new StaticArray<u64>(6); // VA span the table serves (frame-cache coverage)
const stCovHi = new StaticArray<u64>(6);

@inline function res(slot: i32, v: u64): void {
  // unsafe: slot < PAGING_RESULT_SLOTS, `result` holds that many u64.
  store<u64>(result + (<usize>slot << 3), v);
}

@inline function getSpace(h: i32): Space | null {
  if (h < 0 || h >= MAX_SPACES) return null;
  return unchecked(spaces[h]);
}

// A zeroed block, or 0 when the core cannot hold it (see tryAlloc).
function allocZero(n: usize): usize {
  const p = tryAlloc(n);
  if (p != 0) memory.fill(p, 0, n);
  return p;
}

// ------------------------------------------------------------ frame cache

@inline function hashFrame(addr: u64): u32 {
  return <u32>(((addr >> 12) * 0x9e3779b97f4a7c15) >> 40);
}

@inline function slotPtr(s: Space, slot: i32): usize {
  // unsafe: slot < s.count <= s.cap; ptrs has cap entries.
  return <usize>load<u32>(s.ptrs + (<usize>slot << 2));
}

function cacheFind(s: Space, addr: u64): i32 {
  let i = load<u32>(s.buckets + (<usize>(hashFrame(addr) & s.bmask) << 2));
  while (i != 0) {
    const slot = <i32>(i - 1);
    // unsafe: chain links are slot + 1 with slot < cap.
    if (load<u64>(s.keys + (<usize>slot << 3)) == addr) return slot;
    i = load<u32>(s.nexts + (<usize>slot << 2));
  }
  return -1;
}

function cacheUnlink(s: Space, slot: i32): void {
  const key = load<u64>(s.keys + (<usize>slot << 3));
  if (key == FREE_KEY) return;
  let p = s.buckets + (<usize>(hashFrame(key) & s.bmask) << 2);
  // Bounded by the chain length (<= cap).
  while (true) {
    const i = load<u32>(p);
    if (i == 0) break;
    if (<i32>(i - 1) == slot) {
      store<u32>(p, load<u32>(s.nexts + (<usize>slot << 2)));
      break;
    }
    p = s.nexts + (<usize>(i - 1) << 2);
  }
  store<u64>(s.keys + (<usize>slot << 3), FREE_KEY);
  const vp = s.vers + (<usize>slot << 2);
  store<u32>(vp, load<u32>(vp) + 1);
}

@inline function touch(s: Space, slot: i32, lo: u64, hi: u64): void {
  store<u8>(s.refs + <usize>slot, 1);
  const pl = s.covLo + (<usize>slot << 3);
  if (lo < load<u64>(pl)) store<u64>(pl, lo);
  const ph = s.covHi + (<usize>slot << 3);
  if (hi > load<u64>(ph)) store<u64>(ph, hi);
}

function isPinned(s: Space, slot: i32): bool {
  for (let i = 0; i < s.npins; i++) if (unchecked(s.pins[i]) == slot) return true;
  return false;
}

/** A slot for a new frame: an unused one, or one the clock evicts (never a pinned one). */
function cacheVictim(s: Space): i32 {
  if (s.count < s.cap) {
    const slot = s.count;
    let fresh = true;
    if (slot % CHUNK_FRAMES == 0) {
      // The cache grows a chunk at a time while the core has room. When it has
      // none (many spaces with big caches), the cache stops growing and its
      // clock recycles the frames it has, instead of trapping in the allocator.
      const chunk = tryAlloc(<usize>CHUNK_FRAMES << 12);
      if (chunk == 0) {
        if (slot == 0) return -1;
        s.cap = slot;
        fresh = false;
      } else {
        store<u32>(s.chunks + (<usize>(slot / CHUNK_FRAMES) << 2), <u32>chunk);
        for (let i: u32 = 0; i < CHUNK_FRAMES; i++) {
          store<u32>(s.ptrs + (<usize>(slot + i) << 2), <u32>(chunk + (<usize>i << 12)));
        }
      }
    }
    if (fresh) {
      s.count++;
      return <i32>slot;
    }
  }
  // Clock: at most two sweeps clear every reference bit; pins are <= 8 < cap.
  for (let n: u32 = 0; n < 2 * s.cap + 2; n++) {
    const slot = <i32>s.hand;
    s.hand = s.hand + 1 == s.cap ? 0 : s.hand + 1;
    if (isPinned(s, slot)) continue;
    const rp = s.refs + <usize>slot;
    if (load<u8>(rp) != 0 && load<u64>(s.keys + (<usize>slot << 3)) != FREE_KEY) {
      store<u8>(rp, 0);
      continue;
    }
    cacheUnlink(s, slot);
    return slot;
  }
  return -1;
}

/** Puts the 4 KiB at `src` in the cache as frame `addr`. Returns the slot or E_LIMIT. */
function cacheInsert(s: Space, addr: u64, src: usize): i32 {
  let slot = cacheFind(s, addr);
  if (slot >= 0) {
    // Provided again: the host's copy wins; entries that point at it go stale.
    const vp = s.vers + (<usize>slot << 2);
    store<u32>(vp, load<u32>(vp) + 1);
  } else {
    slot = cacheVictim(s);
    if (slot < 0) return E_LIMIT;
    store<u64>(s.keys + (<usize>slot << 3), addr);
    const bp = s.buckets + (<usize>(hashFrame(addr) & s.bmask) << 2);
    store<u32>(s.nexts + (<usize>slot << 2), load<u32>(bp));
    store<u32>(bp, <u32>slot + 1);
    const vp = s.vers + (<usize>slot << 2);
    store<u32>(vp, load<u32>(vp) + 1);
    store<u64>(s.covLo + (<usize>slot << 3), FREE_KEY);
    store<u64>(s.covHi + (<usize>slot << 3), 0);
  }
  // unsafe: slotPtr is a 4 KiB frame in a chunk; src is a 4 KiB buffer.
  memory.copy(slotPtr(s, slot), src, 4096);
  store<u8>(s.refs + <usize>slot, 1);
  if (s.pendFrame == addr) {
    touch(s, slot, s.pendLo, s.pendHi);
    s.pendFrame = FREE_KEY;
  }
  return slot;
}

function needFrame(s: Space, frame: u64, lo: u64, hi: u64): i32 {
  res(R_FRAME, frame);
  s.pendFrame = frame;
  s.pendLo = lo;
  s.pendHi = hi;
  return E_NEED_DATA;
}

// ------------------------------------------------------------ entries

@inline function x86Reserved(e: u64, level: i32, nxe: bool): bool {
  if (!nxe && (e >> 63) != 0) return true;
  const ps = (e & 0x80) != 0;
  if (level >= 4) return ps;
  if (level == 3 && ps) return (e & 0x3fff_e000) != 0;
  if (level == 2 && ps) return (e & 0x1f_e000) != 0;
  return false;
}

@inline function x86Acc(acc: u32, e: u64, nxe: bool): u32 {
  if ((e & 2) == 0) acc |= ACC_NO_W;
  if ((e & 4) == 0) acc |= ACC_NO_U;
  if (nxe && (e >> 63) != 0) acc |= ACC_XN;
  return acc;
}

/** Effective flags of an x86 leaf; `acc` includes the leaf's own W/U/XD. */
@inline function x86Flags(e: u64, acc: u32): u32 {
  let f = F_P;
  if ((acc & ACC_NO_W) == 0) f |= F_W;
  if ((acc & ACC_NO_U) == 0) f |= F_U;
  if ((acc & ACC_XN) != 0) f |= F_NX;
  const lo = <u32>e;
  if (lo & 0x08) f |= F_PWT;
  if (lo & 0x10) f |= F_PCD;
  if (lo & 0x20) f |= F_A;
  if (lo & 0x40) f |= F_D;
  if (lo & 0x100) f |= F_G;
  return f;
}

@inline function a64Acc(acc: u32, d: u64): u32 {
  if ((d >> 62) & 1) acc |= ACC_NO_W;
  if ((d >> 61) & 1) acc |= ACC_NO_U;
  if ((d >> 60) & 1) acc |= ACC_XN;
  if ((d >> 59) & 1) acc |= ACC_PXN;
  return acc;
}

/** Effective flags of an AArch64 block/page; `acc` holds the table-level controls above it. */
@inline function a64Flags(d: u64, acc: u32): u32 {
  let f = F_P;
  const ap2 = (d & 0x80) != 0;
  if (!ap2 && (acc & ACC_NO_W) == 0) f |= F_W;
  if ((d & 0x40) != 0 && (acc & ACC_NO_U) == 0) f |= F_U;
  if (d & 0x400) f |= F_A;
  if (((d >> 51) & 1) != 0 && !ap2) f |= F_D;
  if ((d & 0x800) == 0) f |= F_G;
  const u = (acc & ACC_XN) != 0 || ((d >> 54) & 1) != 0;
  const p = (acc & ACC_PXN) != 0 || ((d >> 53) & 1) != 0;
  if (u) f |= F_UXN;
  if (p) f |= F_PXN;
  if (u && p) f |= F_NX;
  return f;
}

/** AArch64 region of one half: input-address bits, first level, first-level entries, table address. */
@inline function a64Ia(s: Space, upper: bool): i32 {
  return 64 - (upper ? s.t1 : s.t0);
}
/** Index bits per level: a table is one granule of 8-byte descriptors. */
@inline function a64Stride(g: i32): i32 {
  return g - 3;
}
@inline function a64Levels(ia: i32, g: i32): i32 {
  return (ia - g + a64Stride(g) - 1) / a64Stride(g);
}
@inline function a64Entries(ia: i32, g: i32): u32 {
  return <u32>1 << <u32>(ia - g - a64Stride(g) * (a64Levels(ia, g) - 1));
}
/** Blocks: 1 GiB (level 1) and 2 MiB (level 2) with 4 KiB; level 2 only with 16/64 KiB (32 MiB, 512 MiB) without FEAT_LPA/LPA2. */
@inline function a64BlockLevel(level: i32, g: i32): bool {
  return level == 2 || (level == 1 && g == 12);
}
@inline function a64RootAddr(root: u64, entries: u32): u64 {
  return root & 0x0000_ffff_ffff_fffe & ~(<u64>entries * 8 - 1);
}

// ------------------------------------------------------------ single walks

function fault(reason: i32, level: i32, entry: u64, hasEntry: bool): i32 {
  res(R_REASON, <u64>reason);
  res(R_LEVEL, <u64>level);
  res(R_LEAF, entry);
  res(R_HAS_ENTRY, hasEntry ? 1 : 0);
  return 1;
}

function success(s: Space, va: u64, e: u64, level: i32, shift: u64, frameMask: u64, flags: u32, slot: i32, acc: u32, rcLevel: i32, a64: bool): i32 {
  const size: u64 = (<u64>1) << shift;
  const gpa = (e & frameMask) | (va & (size - 1));
  res(R_GPA, gpa);
  res(R_LEAF, e);
  res(R_SIZE, size);
  res(R_FLAGS, flags);
  res(R_LEVEL, <u64>level);
  res(R_REASON, 0);
  res(R_HAS_ENTRY, 0);
  const p = s.rc + (<usize>((va >> 21) & RC_MASK) << 5);
  if (shift >= 21) {
    // A large page: cache the translation of its 2 MiB region.
    store<u64>(p, (va >> 21) + 1);
    store<u64>(p, gpa & ~(<u64>0x1f_ffff), 8);
    store<u64>(p, e, 16);
    store<u32>(p, RC_LEAF | flags | (<u32>level << 16) | (<u32>shift << 24), 24);
  } else if (slot >= 0) {
    // A 4 KiB page: cache the last-level table for its region.
    store<u64>(p, (va >> 21) + 1);
    store<u64>(p, <u64>slotPtr(s, slot) | (<u64>slot << 32), 8);
    store<u64>(p, <u64>load<u32>(s.vers + (<usize>slot << 2)), 16);
    store<u32>(p, acc | (<u32>rcLevel << 16) | (a64 ? 0x100 : 0), 24);
  }
  return 0;
}

function x86Walk(s: Space, va: u64): i32 {
  const L: i32 = s.mode == PAGING_X86_64_LA57 ? 5 : 4;
  const sh: u64 = L == 5 ? 7 : 16;
  if (<u64>((<i64>(va << sh)) >> <i64>sh) != va) return fault(PAGING_NON_CANONICAL, L, 0, false);
  if ((s.root0 & CR3_RESERVED) != 0) return fault(PAGING_BAD_ROOT, L, 0, false);
  let table = s.root0 & X86_ADDR;
  if (table + 4096 > s.memSize) return fault(PAGING_BAD_ROOT, L, 0, false);
  const nxe = s.nxe;
  let acc: u32 = 0;
  let lo: u64 = 0;
  let hi: u64 = FREE_KEY;
  s.walks++;
  s.npins = 0;
  for (let level = L; level >= 1; level--) {
    const slot = cacheFind(s, table);
    if (slot < 0) return needFrame(s, table, lo, hi);
    touch(s, slot, lo, hi);
    if (s.npins < MAX_PINS) unchecked((s.pins[s.npins++] = slot));
    const shift: u64 = 12 + 9 * <u64>(level - 1);
    // unsafe: the index is 9 bits, so the entry lies inside the 4 KiB frame.
    const e = load<u64>(slotPtr(s, slot) + (<usize>((va >> shift) & 511) << 3));
    if ((e & 1) == 0) return fault(PAGING_NOT_PRESENT, level, e, true);
    if (x86Reserved(e, level, nxe)) return fault(PAGING_RESERVED, level, e, true);
    const accAbove = acc;
    acc = x86Acc(acc, e, nxe);
    if (level == 1 || (level <= 3 && (e & 0x80) != 0)) {
      return success(s, va, e, level, shift, X86_ADDR & ~((<u64>1 << shift) - 1), x86Flags(e, acc), level == 1 ? slot : -1, accAbove, 1, false);
    }
    table = e & X86_ADDR;
    if (table + 4096 > s.memSize) return fault(PAGING_OUTSIDE_MEMORY, level - 1, 0, false);
    lo = va & ~((<u64>1 << shift) - 1);
    hi = lo | ((<u64>1 << shift) - 1);
  }
  return fault(PAGING_NOT_PRESENT, 1, 0, false); // not reached: level 1 is a leaf
}

function a64Walk(s: Space, va: u64): i32 {
  const upper = ((va >> 55) & 1) != 0;
  const ia = a64Ia(s, upper);
  const g = s.gshift;
  const stride = <u64>a64Stride(g);
  const levels = a64Levels(ia, g);
  const start = 4 - levels;
  const entries = a64Entries(ia, g);
  const granule: u64 = <u64>1 << <u64>g;
  const top = va >> <u64>ia;
  if (top != (upper ? (FREE_KEY >> <u64>ia) : 0)) return fault(PAGING_NON_CANONICAL, start, 0, false);
  if (upper && !s.hasRoot1) return fault(PAGING_BAD_ROOT, start, 0, false);
  let table = a64RootAddr(upper ? s.root1 : s.root0, entries);
  if (table + <u64>entries * 8 > s.memSize) return fault(PAGING_BAD_ROOT, start, 0, false);
  let acc: u32 = 0;
  let lo: u64 = 0;
  let hi: u64 = FREE_KEY;
  s.walks++;
  s.npins = 0;
  for (let level = start; level <= 3; level++) {
    const shift: u64 = <u64>g + stride * <u64>(3 - level);
    const mask: u64 = level == start ? <u64>entries - 1 : (<u64>1 << stride) - 1;
    // A 16/64 KiB table spans several 4 KiB frames: fetch the one holding the entry.
    const ea = table + (((va >> shift) & mask) << 3);
    const frame = ea & ~(<u64>0xfff);
    const slot = cacheFind(s, frame);
    if (slot < 0) return needFrame(s, frame, lo, hi);
    touch(s, slot, lo, hi);
    if (s.npins < MAX_PINS) unchecked((s.pins[s.npins++] = slot));
    // unsafe: ea & 0xfff is an 8-byte-aligned offset inside the 4 KiB frame.
    const d = load<u64>(slotPtr(s, slot) + <usize>(ea & 0xfff));
    if ((d & 1) == 0) return fault(PAGING_NOT_PRESENT, level, d, true);
    const isTable = (d & 2) != 0 && level < 3;
    const isLeaf = (level == 3 && (d & 2) != 0) || ((d & 2) == 0 && a64BlockLevel(level, g));
    if (!isTable && !isLeaf) return fault(PAGING_NOT_PRESENT, level, d, true);
    if (isLeaf) {
      // The region cache's table entries assume 4 KiB tables: other granules cache large pages only.
      return success(s, va, d, level, shift, A64_ADDR & ~((<u64>1 << shift) - 1), a64Flags(d, acc), level == 3 && g == 12 ? slot : -1, acc, 3, true);
    }
    acc = a64Acc(acc, d);
    table = d & A64_ADDR & ~(granule - 1);
    if (table + granule > s.memSize) return fault(PAGING_OUTSIDE_MEMORY, level + 1, 0, false);
    lo = va & ~((<u64>1 << shift) - 1);
    hi = lo | ((<u64>1 << shift) - 1);
  }
  return fault(PAGING_NOT_PRESENT, 3, 0, false); // not reached
}

@inline function walk(s: Space, va: u64): i32 {
  return s.mode == PAGING_AARCH64 ? a64Walk(s, va) : x86Walk(s, va);
}

// ------------------------------------------------------------ exports

/**
 * Creates an address space. `mode`: PAGING_X86_64, PAGING_X86_64_LA57 or
 * PAGING_AARCH64. `root0`: CR3 or TTBR0_EL1; `root1`: TTBR1_EL1 when
 * `hasRoot1`. `t0sz`/`t1sz` in [16, 39] (AArch64). `nxe`: EFER.NXE.
 * `memSize`: bytes of guest-physical memory. `cacheFrames`: frame-cache
 * capacity in 4 KiB frames, [16, 1 << 20] (allocated as it fills, 256 KiB at a
 * time). Returns a handle, E_ARG, E_LIMIT (64 spaces live) or E_NO_MEMORY
 * (its tables do not fit in the core; nothing is kept).
 */
export function pagingCreate(mode: i32, root0: u64, root1: u64, hasRoot1: i32, t0sz: i32, t1sz: i32, nxe: i32, memSize: u64, cacheFrames: u32): i32 {
  if (mode < 0 || mode > 4) return E_ARG;
  const g: i32 = mode == PAGING_AARCH64_16K ? 14 : mode == PAGING_AARCH64_64K ? 16 : 12;
  // Smallest regions without FEAT_TTST: 2^25 (4 KiB), 2^16 (16 KiB), 2^17 (64 KiB).
  const maxTsz: i32 = g == 12 ? 39 : g == 14 ? 48 : 47;
  if (mode >= PAGING_AARCH64 && (t0sz < 16 || t0sz > maxTsz || t1sz < 16 || t1sz > maxTsz)) return E_ARG;
  if (cacheFrames < 16 || cacheFrames > (1 << 20)) return E_ARG;
  let h = -1;
  for (let i = 0; i < MAX_SPACES; i++) {
    if (unchecked(spaces[i]) == null) {
      h = i;
      break;
    }
  }
  if (h < 0) return E_LIMIT;
  const s = new Space();
  s.mode = mode >= PAGING_AARCH64 ? PAGING_AARCH64 : mode;
  s.gshift = g;
  s.root0 = root0;
  s.root1 = root1;
  s.hasRoot1 = hasRoot1 != 0;
  s.t0 = mode >= PAGING_AARCH64 ? t0sz : 16;
  s.t1 = mode >= PAGING_AARCH64 ? t1sz : 16;
  s.nxe = nxe != 0;
  s.memSize = memSize;
  const cap = (cacheFrames + CHUNK_FRAMES - 1) / CHUNK_FRAMES * CHUNK_FRAMES;
  s.cap = cap;
  let nb: u32 = 16;
  while (nb < cap * 2) nb <<= 1;
  s.bmask = nb - 1;
  s.buckets = allocZero(<usize>nb << 2);
  s.keys = tryAlloc(<usize>cap << 3);
  if (s.keys != 0) memory.fill(s.keys, 0xff, <usize>cap << 3);
  s.nexts = allocZero(<usize>cap << 2);
  s.vers = allocZero(<usize>cap << 2);
  s.refs = allocZero(<usize>cap);
  s.covLo = allocZero(<usize>cap << 3);
  s.covHi = allocZero(<usize>cap << 3);
  s.ptrs = allocZero(<usize>cap << 2);
  s.chunks = allocZero(<usize>(cap / CHUNK_FRAMES) << 2);
  s.rc = allocZero(<usize>RC_N << 5);
  if (!s.buckets || !s.keys || !s.nexts || !s.vers || !s.refs || !s.covLo || !s.covHi || !s.ptrs || !s.chunks || !s.rc) {
    // The core is full: give back what was had, keep nothing (heap.free of 0 would trap).
    const blocks: usize[] = [s.buckets, s.keys, s.nexts, s.vers, s.refs, s.covLo, s.covHi, s.ptrs, s.chunks, s.rc];
    for (let i = 0; i < blocks.length; i++) if (unchecked(blocks[i]) != 0) heap.free(unchecked(blocks[i]));
    return E_NO_MEMORY;
  }
  unchecked((spaces[h] = s));
  return h;
}

/** Releases an address space and its caches. Returns 0 or E_HANDLE. */
export function pagingDestroy(h: i32): i32 {
  const s = getSpace(h);
  if (s == null) return E_HANDLE;
  for (let c: u32 = 0; c < s.cap / CHUNK_FRAMES; c++) {
    const p = <usize>load<u32>(s.chunks + (<usize>c << 2));
    if (p != 0) heap.free(p);
  }
  heap.free(s.buckets);
  heap.free(s.keys);
  heap.free(s.nexts);
  heap.free(s.vers);
  heap.free(s.refs);
  heap.free(s.covLo);
  heap.free(s.covHi);
  heap.free(s.ptrs);
  heap.free(s.chunks);
  heap.free(s.rc);
  unchecked((spaces[h] = null));
  return 0;
}

/** The result area: PAGING_RESULT_SLOTS little-endian u64 (see the R_* slots in docs/abi.md). */
export function pagingResult(): usize {
  return result;
}

/** The 4 KiB staging buffer the host fills before pagingProvide. */
export function pagingStaging(): usize {
  return staging;
}

/**
 * Puts the 4 KiB in the staging buffer into the frame cache as the frame at
 * guest-physical `frame` (4 KiB aligned, inside guest memory; bytes past the
 * end of guest memory should be zero). Returns 0, E_HANDLE, E_ARG or E_LIMIT.
 */
export function pagingProvide(h: i32, frame: u64): i32 {
  const s = getSpace(h);
  if (s == null) return E_HANDLE;
  if ((frame & 0xfff) != 0 || frame >= s.memSize) return E_ARG;
  s.provided++;
  const r = cacheInsert(s, frame, staging);
  return r < 0 ? r : 0;
}

/**
 * Translates one address, filling the result slots. Returns 0 (translated:
 * R_GPA, R_LEAF, R_SIZE, R_FLAGS, R_LEVEL), 1 (a fault: R_REASON, R_LEVEL,
 * R_LEAF when R_HAS_ENTRY), E_NEED_DATA (provide the frame at R_FRAME and call
 * again) or E_HANDLE.
 */
export function pagingTranslate(h: i32, va: u64): i32 {
  const s = getSpace(h);
  if (s == null) return E_HANDLE;
  // The region cache first (as the batch does); a miss or a fault takes the walk,
  // which reports the fault's details.
  const tag = va >> 21;
  const p = s.rc + (<usize>(tag & RC_MASK) << 5);
  if (load<u64>(p) == tag + 1) {
    const meta = load<u32>(p, 24);
    if ((meta & RC_LEAF) != 0) {
      res(R_GPA, load<u64>(p, 8) | (va & 0x1f_ffff));
      res(R_LEAF, load<u64>(p, 16));
      res(R_SIZE, <u64>1 << <u64>((meta >> 24) & 0x7f));
      res(R_FLAGS, <u64>(meta & 0xffff));
      res(R_LEVEL, <u64>((meta >> 16) & 0xff));
      res(R_REASON, 0);
      res(R_HAS_ENTRY, 0);
      s.hits++;
      return 0;
    }
    const val = load<u64>(p, 8);
    const slot = <usize>(val >> 32);
    if (load<u32>(s.vers + (slot << 2)) == <u32>load<u64>(p, 16)) {
      // unsafe: the pointer is a live frame (its version matched); the index is 9 bits.
      const e = load<u64>(<usize>(<u32>val) + (<usize>((va >> 12) & 511) << 3));
      const acc = meta & 0xf;
      let ok = false;
      if (s.mode != PAGING_AARCH64) {
        if ((e & 1) != 0 && !x86Reserved(e, 1, s.nxe)) {
          res(R_FLAGS, x86Flags(e, x86Acc(acc, e, s.nxe)));
          res(R_GPA, (e & X86_ADDR) | (va & 0xfff));
          res(R_LEVEL, 1);
          ok = true;
        }
      } else if ((e & 3) == 3) {
        res(R_FLAGS, a64Flags(e, acc));
        res(R_GPA, (e & A64_ADDR) | (va & 0xfff));
        res(R_LEVEL, 3);
        ok = true;
      }
      if (ok) {
        store<u8>(s.refs + slot, 1);
        res(R_LEAF, e);
        res(R_SIZE, 4096);
        res(R_REASON, 0);
        res(R_HAS_ENTRY, 0);
        s.hits++;
        return 0;
      }
    }
  }
  return walk(s, va);
}

/**
 * pagingTranslate returning the guest-physical address itself, as an f64 (exact:
 * every output address is below 2^52), so that a host calling one address at a
 * time gets a plain number back instead of reading a u64 slot. Returns the
 * address (>= 0) when it translated; -1 for a fault (R_REASON, R_LEVEL, R_LEAF
 * as pagingTranslate); E_NEED_DATA or E_HANDLE otherwise. The other result
 * slots are filled as pagingTranslate fills them.
 */
export function pagingTranslateGpa(h: i32, va: u64): f64 {
  const r = pagingTranslate(h, va);
  if (r == 0) return <f64>load<u64>(result + (<usize>R_GPA << 3));
  return r == 1 ? -1 : <f64>r;
}

/**
 * Translates `n` little-endian u64 addresses at `src` into guest-physical
 * addresses at `dst` (PAGING_UNMAPPED for any fault), starting at index
 * `from`. Returns the index it stopped at: `n` when done, less when a frame is
 * needed (R_FRAME); provide it and call again with `from` = that index.
 * `src` and `dst` may be the same buffer. R_MAPPED: how many of the
 * addresses this call finished translated. E_HANDLE, E_ARG (from > n).
 */
export function pagingTranslateBatch(h: i32, src: usize, dst: usize, from: u32, n: u32): i32 {
  const s = getSpace(h);
  if (s == null) return E_HANDLE;
  if (from > n || n > 0x1000_0000) return E_ARG;
  const rc = s.rc;
  const vers = s.vers;
  const refs = s.refs;
  const x86 = s.mode != PAGING_AARCH64;
  const rsvXd: u64 = s.nxe ? 0 : 0x8000_0000_0000_0000;
  let hits: u64 = 0;
  let miss: u32 = 0;
  for (let i = from; i < n; i++) {
    // unsafe: the host passes buffers of n u64 each.
    const va = load<u64>(src + (<usize>i << 3));
    const tag = va >> 21;
    const p = rc + (<usize>(tag & RC_MASK) << 5);
    if (load<u64>(p) == tag + 1) {
      const meta = load<u32>(p, 24);
      if ((meta & RC_LEAF) != 0) {
        store<u64>(dst + (<usize>i << 3), load<u64>(p, 8) | (va & 0x1f_ffff));
        hits++;
        continue;
      }
      const val = load<u64>(p, 8);
      const slot = <usize>(val >> 32);
      if (load<u32>(vers + (slot << 2)) == <u32>load<u64>(p, 16)) {
        store<u8>(refs + slot, 1);
        // unsafe: the pointer is a live frame (its version matched); the index is 9 bits.
        const e = load<u64>(<usize>(<u32>val) + (<usize>((va >> 12) & 511) << 3));
        let gpa: u64;
        if (x86) gpa = (e & 1) != 0 && (e & rsvXd) == 0 ? (e & X86_ADDR) | (va & 0xfff) : PAGING_UNMAPPED;
        else gpa = (e & 3) == 3 ? (e & A64_ADDR) | (va & 0xfff) : PAGING_UNMAPPED;
        if (gpa == PAGING_UNMAPPED) miss++;
        store<u64>(dst + (<usize>i << 3), gpa);
        hits++;
        continue;
      }
    }
    const r = walk(s, va);
    if (r == E_NEED_DATA) {
      s.hits += hits;
      res(R_MAPPED, <u64>(i - from - miss));
      return <i32>i;
    }
    if (r != 0) miss++;
    store<u64>(dst + (<usize>i << 3), r == 0 ? load<u64>(result + (<usize>R_GPA << 3)) : PAGING_UNMAPPED);
  }
  s.hits += hits;
  res(R_MAPPED, <u64>(n - from - miss));
  return <i32>n;
}

// ------------------------------------------------------------ mapping walk

let mwN: u32 = 0;
let mwCursor: u64 = 0;

/** Where a stopped walk resumes: never before the caller's cursor. */
@inline function stopAt(va: u64): void {
  if (va > mwCursor) mwCursor = va;
}

/**
 * Walks one region's tables from `rootAddr` in VA order, writing leaves with
 * VA in [mwCursor, last] to `out`. `g`: log2 of the table/page granule, `stride`:
 * index bits per level. Returns 0 (region finished), 1 (stopped: R_STATE says
 * why) or 2 (passed `last`: the whole walk is done).
 */
function walkRegion(s: Space, rootAddr: u64, nLevels: i32, entries0: u32, a64: bool, g: i32, high: u64, startIdx: u32, last: u64, out: usize, cap: u32, budget: u32): i32 {
  s.npins = 0;
  const nxe = s.nxe;
  const stride: u64 = a64 ? <u64>a64Stride(g) : 9;
  const granule: u64 = <u64>1 << <u64>g;
  const tableMask = (a64 ? A64_ADDR : X86_ADDR) & ~(granule - 1);
  const leafMask = a64 ? A64_ADDR : X86_ADDR;
  const signShift: u64 = nLevels == 5 ? 7 : 16;
  const memSize = s.memSize;
  let d = 0;
  unchecked((stFrame[0] = FREE_KEY));
  unchecked((stAddr[0] = rootAddr));
  unchecked((stBase[0] = 0));
  unchecked((stIdx[0] = startIdx));
  unchecked((stEnt[0] = entries0));
  unchecked((stAcc[0] = 0));
  unchecked((stCovLo[0] = 0));
  unchecked((stCovHi[0] = FREE_KEY));
  let work: u32 = 0;
  while (true) {
    let i = unchecked(stIdx[d]);
    const ent = unchecked(stEnt[d]);
    if (i >= ent) {
      if (d == 0) return 0;
      d--;
      unchecked((stIdx[d] = stIdx[d] + 1));
      continue;
    }
    const shift: u64 = <u64>g + stride * <u64>(nLevels - 1 - d);
    // The 4 KiB frame holding entry i (a 16/64 KiB table spans several).
    const ea = unchecked(stAddr[d]) + (<u64>i << 3);
    const frame = ea & ~(<u64>0xfff);
    if (frame != unchecked(stFrame[d])) {
      const slot = cacheFind(s, frame);
      if (slot < 0) {
        const raw0 = unchecked(stBase[d]) | (<u64>i << shift);
        const va0 = a64 ? high | raw0 : <u64>((<i64>(raw0 << signShift)) >> <i64>signShift);
        if (va0 > last) {
          res(R_STATE, 0);
          return 2;
        }
        for (let j = 0; j < d; j++) unchecked((s.pins[j] = stSlot[j]));
        s.npins = d;
        res(R_STATE, 2);
        needFrame(s, frame, unchecked(stCovLo[d]), unchecked(stCovHi[d]));
        stopAt(va0);
        return 1;
      }
      touch(s, slot, unchecked(stCovLo[d]), unchecked(stCovHi[d]));
      unchecked((stFrame[d] = frame));
      unchecked((stPtr[d] = slotPtr(s, slot)));
      unchecked((stSlot[d] = slot));
    }
    // Entry j of this frame is at base + j * 8 (wrapping arithmetic).
    const base = unchecked(stPtr[d]) + <usize>(ea & 0xfff) - (<usize>i << 3);
    const room = <u32>((4096 - (ea & 0xfff)) >> 3);
    const lim = ent - i < room ? ent : i + room;
    // Most entries of a real guest's tables are not present: skip them four at a time
    // (they emit nothing, so passing `last` while skipping is harmless; they count as work).
    const i0 = i;
    while (i + 4 <= lim) {
      // unsafe: i + 4 <= lim, inside this frame.
      const p = base + (<usize>i << 3);
      if (((load<u64>(p) | load<u64>(p, 8) | load<u64>(p, 16) | load<u64>(p, 24)) & 1) != 0) break;
      i += 4;
    }
    while (i < lim && (load<u8>(base + (<usize>i << 3)) & 1) == 0) i++;
    if (i != i0) {
      work += (i - i0) >> 2;
      unchecked((stIdx[d] = i));
      if (i == lim) continue;
    }
    const raw = unchecked(stBase[d]) | (<u64>i << shift);
    const va = a64 ? high | raw : <u64>((<i64>(raw << signShift)) >> <i64>signShift);
    const spanM1: u64 = (<u64>1 << shift) - 1;
    if (va > last) {
      res(R_STATE, 0);
      return 2;
    }
    if (va + spanM1 < mwCursor) {
      unchecked((stIdx[d] = i + 1));
      continue;
    }
    if (++work > budget) {
      res(R_STATE, 1);
      stopAt(va);
      return 1;
    }
    // unsafe: i < lim, inside this frame.
    const e = load<u64>(base + (<usize>i << 3));
    let leaf = false;
    let acc = unchecked(stAcc[d]);
    let level: i32;
    if (a64) {
      level = 4 - nLevels + d;
      if (level < 3 && (e & 2) != 0) {
        acc = a64Acc(acc, e);
      } else if ((level == 3 && (e & 2) != 0) || ((e & 2) == 0 && a64BlockLevel(level, g))) {
        leaf = true;
      } else {
        unchecked((stIdx[d] = i + 1));
        continue;
      }
    } else {
      level = nLevels - d;
      if (x86Reserved(e, level, nxe)) {
        unchecked((stIdx[d] = i + 1));
        continue;
      }
      acc = x86Acc(acc, e, nxe);
      leaf = level == 1 || (level <= 3 && (e & 0x80) != 0);
    }
    if (leaf) {
      if (mwN >= cap) {
        res(R_STATE, 1);
        stopAt(va);
        return 1;
      }
      const flags = a64 ? a64Flags(e, acc) : x86Flags(e, acc);
      const rec = out + (<usize>mwN << 5);
      // unsafe: mwN < cap and the host's buffer holds cap records.
      store<u64>(rec, va);
      store<u64>(rec, e & leafMask & ~spanM1, 8);
      store<u64>(rec, e, 16);
      store<u64>(rec, <u64>flags | (<u64>level << 32) | (shift << 40), 24);
      mwN++;
      unchecked((stIdx[d] = i + 1));
      continue;
    }
    const next = e & tableMask;
    let skip = next + granule > memSize;
    // A table already on the path from the root (a loop) is not entered again.
    for (let j = 0; j <= d && !skip; j++) if (unchecked(stAddr[j]) == next) skip = true;
    if (skip) {
      unchecked((stIdx[d] = i + 1));
      continue;
    }
    const cur = mwCursor;
    unchecked((stIdx[d] = i));
    d++;
    unchecked((stFrame[d] = FREE_KEY));
    unchecked((stAddr[d] = next));
    unchecked((stBase[d] = raw));
    unchecked((stIdx[d] = cur > va ? <u32>((cur - va) >> (shift - stride)) : 0));
    unchecked((stEnt[d] = <u32>1 << <u32>stride));
    unchecked((stAcc[d] = acc));
    unchecked((stCovLo[d] = va));
    unchecked((stCovHi[d] = va + spanM1));
  }
  return 0;
}

/**
 * Writes the mapped pages (large pages once) whose first address is in
 * [max(from, page start), last] in VA order to `out`, at most `cap` records of
 * PAGING_MAPPING_BYTES (gva u64, gpa u64, leaf u64, flags u32 | level << 32 |
 * log2(size) << 40), examining at most `budget` entries. Returns the number
 * written; R_STATE says 0 done, 1 more (call again from R_CURSOR), 2 need the
 * frame at R_FRAME (provide it, call again from R_CURSOR). Tables outside
 * guest memory, entries with reserved bits and tables already on the path
 * from the root are skipped. E_HANDLE, E_ARG (cap 0, budget < 16: a
 * budget of 16 always gets past the <= 5 entries on the path back to the cursor).
 */
export function pagingMappings(h: i32, from: u64, last: u64, out: usize, cap: u32, budget: u32): i32 {
  const s = getSpace(h);
  if (s == null) return E_HANDLE;
  if (cap == 0 || budget < 16) return E_ARG;
  mwN = 0;
  mwCursor = from;
  res(R_STATE, 0);
  if (from > last) return 0;
  if (s.mode != PAGING_AARCH64) {
    const L: i32 = s.mode == PAGING_X86_64_LA57 ? 5 : 4;
    const root = s.root0 & X86_ADDR;
    if ((s.root0 & CR3_RESERVED) == 0 && root + 4096 <= s.memSize) {
      const shift0: u64 = 12 + 9 * <u64>(L - 1);
      const half: u64 = <u64>1 << (shift0 + 8);
      const c = from;
      const startIdx: u32 = c < half ? <u32>(c >> shift0) : c < 0 - half ? 256 : 256 + <u32>((c - (0 - half)) >> shift0);
      walkRegion(s, root, L, 512, false, 12, 0, startIdx, last, out, cap, budget);
    }
  } else {
    const g = s.gshift;
    for (let half = 0; half < 2; half++) {
      const upper = half == 1;
      const ia = a64Ia(s, upper);
      const nLevels = a64Levels(ia, g);
      const entries = a64Entries(ia, g);
      const shift0: u64 = <u64>g + <u64>a64Stride(g) * <u64>(nLevels - 1);
      const high: u64 = upper ? ~((<u64>1 << <u64>ia) - 1) : 0;
      const regionLast: u64 = upper ? FREE_KEY : (<u64>1 << <u64>ia) - 1;
      if (mwCursor <= regionLast) {
        if (upper && !s.hasRoot1) break;
        const root = a64RootAddr(upper ? s.root1 : s.root0, entries);
        if (root + <u64>entries * 8 <= s.memSize) {
          const c = mwCursor;
          const startIdx: u32 = c < high ? 0 : <u32>((c - high) >> shift0);
          const r = walkRegion(s, root, nLevels, entries, true, g, high, startIdx, last, out, cap, budget);
          if (r != 0) break;
        }
      }
      // The lower region is done: a later stop must not resume inside it.
      if (!upper) {
        const high1: u64 = ~((<u64>1 << <u64>a64Ia(s, true)) - 1);
        if (mwCursor < high1) mwCursor = high1;
      }
    }
  }
  res(R_CURSOR, mwCursor);
  return <i32>mwN;
}

// ------------------------------------------------------------ invalidation

function dropAll(s: Space): void {
  memory.fill(s.rc, 0, <usize>RC_N << 5);
  for (let slot: u32 = 0; slot < s.count; slot++) cacheUnlink(s, <i32>slot);
  s.npins = 0;
  s.pendFrame = FREE_KEY;
}

/** Forgets every cached frame and translation of one address space. Returns 0 or E_HANDLE. */
export function pagingInvalidate(h: i32): i32 {
  const s = getSpace(h);
  if (s == null) return E_HANDLE;
  dropAll(s);
  return 0;
}

/** Forgets the caches of every address space. Returns how many spaces were live. */
export function pagingInvalidateAll(): i32 {
  let n = 0;
  for (let h = 0; h < MAX_SPACES; h++) {
    const s = unchecked(spaces[h]);
    if (s != null) {
      dropAll(s);
      n++;
    }
  }
  return n;
}

/**
 * Forgets the cached translations of VAs in [from, last] and every cached
 * table frame that was used for any VA in that range (the root included).
 * Returns 0, E_HANDLE or E_ARG (from > last).
 */
export function pagingInvalidateRange(h: i32, from: u64, last: u64): i32 {
  const s = getSpace(h);
  if (s == null) return E_HANDLE;
  if (from > last) return E_ARG;
  for (let i: u32 = 0; i < RC_N; i++) {
    const p = s.rc + (<usize>i << 5);
    const tag = load<u64>(p);
    if (tag == 0) continue;
    const lo = (tag - 1) << 21;
    if (lo <= last && (lo | 0x1f_ffff) >= from) store<u64>(p, 0);
  }
  for (let slot: u32 = 0; slot < s.count; slot++) {
    if (load<u64>(s.keys + (<usize>slot << 3)) == FREE_KEY) continue;
    const lo = load<u64>(s.covLo + (<usize>slot << 3));
    const hi = load<u64>(s.covHi + (<usize>slot << 3));
    if (lo <= last && hi >= from) cacheUnlink(s, <i32>slot);
  }
  s.pendFrame = FREE_KEY;
  return 0;
}

/**
 * Forgets the cached table frames whose guest-physical addresses fall in
 * [from, last] (the guest wrote those pages) and, when any was cached, every
 * cached translation (they may derive from the dropped frames). Returns how
 * many frames were dropped, E_HANDLE or E_ARG (from > last).
 */
export function pagingInvalidatePhysical(h: i32, from: u64, last: u64): i32 {
  const s = getSpace(h);
  if (s == null) return E_HANDLE;
  if (from > last) return E_ARG;
  const lo = from & ~(<u64>0xfff);
  let n = 0;
  for (let slot: u32 = 0; slot < s.count; slot++) {
    const key = load<u64>(s.keys + (<usize>slot << 3));
    if (key == FREE_KEY || key < lo || key > last) continue;
    cacheUnlink(s, <i32>slot);
    n++;
  }
  if (n > 0) memory.fill(s.rc, 0, <usize>RC_N << 5);
  s.pendFrame = FREE_KEY;
  return n;
}

/**
 * Switches the root registers (a new CR3, TTBR0/TTBR1): cached translations
 * are dropped, cached frames kept (they are guest-physical contents).
 * Returns 0 or E_HANDLE.
 */
export function pagingSetRoot(h: i32, root0: u64, root1: u64, hasRoot1: i32): i32 {
  const s = getSpace(h);
  if (s == null) return E_HANDLE;
  s.root0 = root0;
  s.root1 = root1;
  s.hasRoot1 = hasRoot1 != 0;
  memory.fill(s.rc, 0, <usize>RC_N << 5);
  return 0;
}

/**
 * Writes 4 u64 counters to `dst`: translations served by the region cache,
 * table walks, frames provided, frames cached now. Returns 4 or E_HANDLE.
 */
export function pagingStats(h: i32, dst: usize): i32 {
  const s = getSpace(h);
  if (s == null) return E_HANDLE;
  store<u64>(dst, s.hits);
  store<u64>(dst, s.walks, 8);
  store<u64>(dst, s.provided, 16);
  let live: u64 = 0;
  for (let slot: u32 = 0; slot < s.count; slot++) if (load<u64>(s.keys + (<usize>slot << 3)) != FREE_KEY) live++;
  store<u64>(dst, live, 24);
  return 4;
}

// ------------------------------------------------------------ self-check

function provideWords(h: i32, frame: u64, idx0: i32, e0: u64, idx1: i32, e1: u64): i32 {
  memory.fill(staging, 0, 4096);
  store<u64>(staging + (<usize>idx0 << 3), e0);
  if (idx1 >= 0) store<u64>(staging + (<usize>idx1 << 3), e1);
  return pagingProvide(h, frame);
}

/**
 * A four-level x86-64 tree built in the cache: CR3 0x1000; PML4[1] -> 0x2000;
 * PDPT[0] -> 0x3000, PDPT[1] a 1 GiB page at 0x4000_0000; PD[0] -> PT 0x4000,
 * PD[1] a 2 MiB page; PT[5] -> 0x9000 (read-only, NX).
 */
export function pagingSelfCheck(): i32 {
  const h = pagingCreate(PAGING_X86_64, 0x1000 | 0x18, 0, 0, 16, 16, 1, 0x10000, 16);
  if (h < 0) return 1;
  let code = 0;
  const va: u64 = (<u64>1 << 39) | (5 << 12) | 0x123;
  if (pagingTranslate(h, va) != E_NEED_DATA || load<u64>(result + (<usize>R_FRAME << 3)) != 0x1000) code = 2;
  provideWords(h, 0x1000, 1, 0x2007, -1, 0);
  provideWords(h, 0x2000, 0, 0x3007, 1, 0x4000_0000 | 0x87);
  provideWords(h, 0x3000, 0, 0x4007, 1, 0x60_0000 | 0xe7);
  provideWords(h, 0x4000, 5, 0x8000_0000_0000_9025, -1, 0);
  if (code == 0 && (pagingTranslate(h, va) != 0 || load<u64>(result) != 0x9123 || load<u64>(result + 16) != 4096)) code = 3;
  // flags: P, U (W cleared by the PTE), A, NX
  if (code == 0 && load<u64>(result + 24) != <u64>(F_P | F_U | F_A | F_NX)) code = 4;
  const big: u64 = (<u64>1 << 39) | (<u64>1 << 30) | 0x1234_5678;
  if (code == 0 && (pagingTranslate(h, big) != 0 || load<u64>(result) != 0x4000_0000 + 0x1234_5678 || load<u64>(result + 16) != (<u64>1 << 30))) code = 5;
  if (code == 0 && (pagingTranslate(h, 0x8000_0000_0000) != 1 || load<u64>(result + (<usize>R_REASON << 3)) != <u64>PAGING_NON_CANONICAL)) code = 6;
  if (code == 0 && (pagingTranslate(h, 0) != 1 || load<u64>(result + (<usize>R_LEVEL << 3)) != 4)) code = 7;
  if (code == 0) {
    // batch: region-cache hits after the first walk
    const buf = heap.alloc(32);
    store<u64>(buf, va);
    store<u64>(buf, va + 0x1000, 8);
    store<u64>(buf, (<u64>1 << 39) | (<u64>1 << 21) | 7, 16);
    store<u64>(buf, big, 24);
    if (pagingTranslateBatch(h, buf, buf, 0, 4) != 4) code = 8;
    else if (load<u64>(buf) != 0x9123 || load<u64>(buf, 8) != PAGING_UNMAPPED || load<u64>(buf, 16) != 0x60_0007 || load<u64>(buf, 24) != 0x4000_0000 + 0x1234_5678) code = 9;
    heap.free(buf);
  }
  if (code == 0) {
    const out = heap.alloc(<usize>PAGING_MAPPING_BYTES * 4);
    const n = pagingMappings(h, 0, FREE_KEY, out, 4, 1 << 20);
    if (n != 3 || load<u64>(result + (<usize>R_STATE << 3)) != 0) code = 10;
    else if (load<u64>(out) != ((<u64>1 << 39) | (5 << 12)) || load<u64>(out, 32) != ((<u64>1 << 39) | (<u64>1 << 21)) || load<u64>(out, 64) != ((<u64>1 << 39) | (<u64>1 << 30))) code = 11;
    heap.free(out);
  }
  if (code == 0) {
    // The range's cached translation and every table on its path (the root too) are gone;
    // the 1 GiB page's region keeps its cached translation.
    pagingInvalidateRange(h, va, va);
    if (pagingTranslate(h, va) != E_NEED_DATA || load<u64>(result + (<usize>R_FRAME << 3)) != 0x1000) code = 12;
    else if (pagingTranslate(h, big) != 0) code = 13;
  }
  pagingDestroy(h);
  return code;
}
