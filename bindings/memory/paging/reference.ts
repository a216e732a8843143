/**
 * The plain-TypeScript reference walker: guest page tables walked one entry
 * at a time with bigint arithmetic, written for clarity from the architecture
 * manuals, kept apart from the core (`address-space.ts`) so that differential
 * tests and the benchmark have an independent peer.
 *
 * x86-64 (Intel SDM vol. 3A §4.5, "4-level and 5-level paging"):
 * ```
 *   63 62      57 56    48 47    39 38    30 29    21 20    12 11        0
 *  | sign extension |PML5 idx|PML4 idx|PDPT idx| PD idx | PT idx | offset |
 *                   (LA57 only)
 *  entry: 63 XD | 62..52 ignored | 51..12 address | 8 G | 7 PS/PAT | 6 D | 5 A
 *         4 PCD | 3 PWT | 2 U/S | 1 R/W | 0 P
 * ```
 * AArch64 stage 1, 4 KiB granule (Arm ARM D8, "VMSAv8-64 translation"):
 * ```
 *  VA bit 55 picks TTBR0 (0) or TTBR1 (1); bits 63..(64-TxSZ) must equal it.
 *  level 0: VA 47..39, level 1: 38..30, level 2: 29..21, level 3: 20..12
 *  descriptor bits 1..0: x0 invalid, 01 block (levels 1, 2), 11 table (0..2) / page (3)
 *  table: 63 NSTable | 62..61 APTable | 60 UXNTable | 59 PXNTable | 47..12 next table
 *  block/page: 54 UXN | 53 PXN | 51 DBM | 47..n output address | 11 nG | 10 AF
 *              7..6 AP[2:1] | 5 NS | 4..2 AttrIndx
 * ```
 *
 * Decisions both walkers share (see the JSDoc of each function):
 * - A fault's `level` is the level of the entry that could not be used: the
 *   entry that is not present or has a reserved bit, or, for `outside-memory`,
 *   the level of the table that lies outside guest memory (no entry was read).
 *   `bad-root` and `non-canonical` report the walk's first level.
 * - Leaf pages may lie outside guest memory (MMIO, or tables-only images): only
 *   the tables a walk reads must be inside it.
 * - Mapping walks skip entries with reserved bits, tables outside memory, and
 *   tables that are already on the path from the root (a loop), so a walk is
 *   bounded by the tables it can reach.
 * @module
 */
import { VmkitError } from '../../errors.js';
import type { Gpa, Gva, GuestMemorySource } from '../types.js';
import { PAGING_MODES, PF } from './types.js';
import type { AddressSpaceOptions, FaultReason, Mapping, Translation, TranslationFault } from './types.js';

const U64 = (1n << 64n) - 1n;
/** x86-64: bits 51..12 of a table entry or CR3 (MAXPHYADDR 52). */
const X86_ADDR = 0x000f_ffff_ffff_f000n;
/** AArch64 (48-bit output addresses): bits 47..12. */
const A64_ADDR = 0x0000_ffff_ffff_f000n;

/** A validated, normalized view of {@link AddressSpaceOptions}. */
interface _Regime {
  readonly mode: AddressSpaceOptions['mode'];
  readonly root: bigint;
  readonly root1: bigint | undefined;
  readonly t0sz: number;
  readonly t1sz: number;
  readonly nxe: boolean;
}

function _u64(v: unknown, name: string): bigint {
  if (typeof v !== 'bigint' || v < 0n || v > U64) throw new VmkitError('ARG_RANGE', `${name} must be a bigint in [0, 2^64)`);
  return v;
}

function _tsz(v: number | undefined, name: string): number {
  const t = v ?? 16;
  // 4 KiB granule without FEAT_LPA2/TTST: 48-bit down to 25-bit regions.
  if (!Number.isInteger(t) || t < 16 || t > 39) throw new VmkitError('ARG_RANGE', `${name} must be an integer in [16, 39], got ${String(v)}`);
  return t;
}

/** Checks the options on every call (they are a plain, mutable object) and normalizes them. */
function _regime(opts: AddressSpaceOptions): _Regime {
  if (typeof opts !== 'object' || opts === null) throw new VmkitError('ARG_TYPE', 'options must be an object');
  if (!(PAGING_MODES as readonly string[]).includes(opts.mode)) {
    throw new VmkitError('ARG_RANGE', `mode must be one of ${PAGING_MODES.join(', ')}, got ${String(opts.mode)}`);
  }
  return {
    mode: opts.mode,
    root: _u64(opts.root, 'root'),
    root1: opts.root1 === undefined ? undefined : _u64(opts.root1, 'root1'),
    t0sz: _tsz(opts.t0sz, 't0sz'),
    t1sz: _tsz(opts.t1sz, 't1sz'),
    nxe: opts.nxe ?? true,
  };
}

/** Index shift of each level's table: SHIFT[n] = 12 + 9n (x86 level n+1, AArch64 level 3-n). */
const SHIFT = [12n, 21n, 30n, 39n, 48n] as const;

const _entry = new Uint8Array(8);
const _entryView = new DataView(_entry.buffer);

/** Reads the little-endian u64 at `at` (the caller has checked it is inside memory). */
function _read64(memory: GuestMemorySource, at: bigint): bigint {
  memory.readSync(at as Gpa, _entry);
  return _entryView.getBigUint64(0, true);
}

function _fault(gva: bigint, reason: FaultReason, level: number, entry?: bigint): TranslationFault {
  return entry === undefined
    ? { ok: false, gva: gva as Gva, reason, level }
    : { ok: false, gva: gva as Gva, reason, level, entry };
}

// ---------------------------------------------------------------- x86-64

/** Levels and virtual-address width of an x86-64 mode. */
function _x86Shape(mode: string): { levels: number; vaBits: number } {
  return mode === 'x86-64-5level' ? { levels: 5, vaBits: 57 } : { levels: 4, vaBits: 48 };
}

/** Sign-extends a 48- or 57-bit address to 64 bits (the canonical form). */
function _canonical(va: bigint, bits: number): bigint {
  const low = bits === 48 ? 0xffff_ffff_ffffn : 0x1ff_ffff_ffff_ffffn;
  const sign = bits === 48 ? 1n << 47n : 1n << 56n;
  return va & sign ? (va | (U64 ^ low)) : va & low;
}

/** Bits of CR3 that must be clear: 62..52 (above MAXPHYADDR; 63 is MOV CR3's no-flush hint). */
const CR3_RESERVED = 0x7ff0_0000_0000_0000n;

/**
 * Reserved bits of a present x86-64 entry at `level` (SDM table 4-20):
 * PS in a PML5E/PML4E, bits 29..13 of a 1 GiB PDPTE, bits 20..13 of a 2 MiB
 * PDE, and XD everywhere when EFER.NXE is clear. MAXPHYADDR is 52, so no
 * address bits are reserved.
 */
function _x86Reserved(e: bigint, level: number, nxe: boolean): boolean {
  if (!nxe && e >> 63n) return true;
  const ps = (e & 0x80n) !== 0n;
  if (level >= 4) return ps;
  if (level === 3 && ps) return (e & 0x3fff_e000n) !== 0n;
  if (level === 2 && ps) return (e & 0x1f_e000n) !== 0n;
  return false;
}

/** Effective flags of an x86-64 leaf given the ANDed W/U and ORed XD over the levels above. */
function _x86Flags(leaf: bigint, w: boolean, u: boolean, nx: boolean): number {
  let f = PF.PRESENT;
  if (w) f |= PF.WRITE;
  if (u) f |= PF.USER;
  if (nx) f |= PF.NX;
  const lo = Number(leaf & 0x1ffn);
  if (lo & 0x08) f |= PF.PWT;
  if (lo & 0x10) f |= PF.PCD;
  if (lo & 0x20) f |= PF.ACCESSED;
  if (lo & 0x40) f |= PF.DIRTY;
  if (lo & 0x100) f |= PF.GLOBAL;
  return f;
}

/** Page-frame mask of a leaf at `level` (1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB). */
function _x86Frame(level: number): bigint {
  return level === 1 ? X86_ADDR : level === 2 ? 0x000f_ffff_ffe0_0000n : 0x000f_ffff_c000_0000n;
}

function _x86Translate(memory: GuestMemorySource, r: _Regime, gva: bigint): Translation | TranslationFault {
  const { levels, vaBits } = _x86Shape(r.mode);
  if (_canonical(gva, vaBits) !== gva) return _fault(gva, 'non-canonical', levels);
  if (r.root & CR3_RESERVED) return _fault(gva, 'bad-root', levels);
  let table = r.root & X86_ADDR;
  if (table + 4096n > memory.size) return _fault(gva, 'bad-root', levels);
  let w = true;
  let u = true;
  let nx = false;
  for (let level = levels; ; level--) {
    const index = (gva >> SHIFT[level - 1]!) & 511n;
    const e = _read64(memory, table + index * 8n);
    if (!(e & 1n)) return _fault(gva, 'not-present', level, e);
    if (_x86Reserved(e, level, r.nxe)) return _fault(gva, 'reserved-bit', level, e);
    w &&= (e & 2n) !== 0n;
    u &&= (e & 4n) !== 0n;
    nx ||= r.nxe && e >> 63n === 1n;
    if (level === 1 || (level <= 3 && e & 0x80n)) {
      const size = 1n << SHIFT[level - 1]!;
      return {
        ok: true,
        gva: gva as Gva,
        gpa: ((e & _x86Frame(level)) | (gva & (size - 1n))) as Gpa,
        pageSize: Number(size),
        flags: _x86Flags(e, w, u, nx),
        level,
        leaf: e,
      };
    }
    table = e & X86_ADDR;
    if (table + 4096n > memory.size) return _fault(gva, 'outside-memory', level - 1);
  }
}

function* _x86Mappings(memory: GuestMemorySource, r: _Regime, from: bigint, to: bigint): Generator<Mapping> {
  const { levels, vaBits } = _x86Shape(r.mode);
  if (r.root & CR3_RESERVED) return;
  const root = r.root & X86_ADDR;
  if (root + 4096n > memory.size) return;
  // One table buffer per level: the walk is depth-first, so a level's buffer
  // stays valid while the levels below it are read.
  const bufs = Array.from({ length: levels + 1 }, () => new Uint8Array(4096));
  const path: bigint[] = [];
  function* walk(table: bigint, level: number, base: bigint, w: boolean, u: boolean, nx: boolean): Generator<Mapping> {
    const buf = bufs[level]!;
    memory.readSync(table as Gpa, buf);
    const view = new DataView(buf.buffer);
    path.push(table);
    const shift = BigInt(12 + 9 * (level - 1));
    const span = 1n << shift;
    for (let i = 0; i < 512; i++) {
      // Cheap test on the low word before building a bigint.
      if (!(view.getUint32(i * 8, true) & 1)) continue;
      const va = _canonical(base | (BigInt(i) << shift), vaBits);
      if (va + span <= from || va >= to) continue;
      const e = view.getBigUint64(i * 8, true);
      if (_x86Reserved(e, level, r.nxe)) continue;
      const w2 = w && (e & 2n) !== 0n;
      const u2 = u && (e & 4n) !== 0n;
      const nx2 = nx || (r.nxe && e >> 63n === 1n);
      if (level === 1 || (level <= 3 && e & 0x80n)) {
        yield { gva: va as Gva, gpa: (e & _x86Frame(level)) as Gpa, pageSize: Number(span), flags: _x86Flags(e, w2, u2, nx2), level, leaf: e };
        continue;
      }
      const next = e & X86_ADDR;
      if (next + 4096n > memory.size || path.includes(next)) continue;
      yield* walk(next, level - 1, base | (BigInt(i) << shift), w2, u2, nx2);
    }
    path.pop();
  }
  yield* walk(root, levels, 0n, true, true, false);
}

// ---------------------------------------------------------------- AArch64

/** The half of the address space a VA falls in, with its region size and first level. */
interface _A64Half {
  readonly upper: boolean;
  /** Input-address bits of the region: 64 - TxSZ. */
  readonly ia: number;
  readonly root: bigint | undefined;
  /** First level of the walk (0..2 for the 4 KiB granule). */
  readonly start: number;
  /** Entries in the first-level table (up to 512). */
  readonly entries: number;
}

function _a64Half(r: _Regime, upper: boolean): _A64Half {
  const ia = 64 - (upper ? r.t1sz : r.t0sz);
  // Each level resolves 9 bits above the 12-bit page offset; the first level takes what is left.
  const levels = Math.ceil((ia - 12) / 9);
  const start = 4 - levels;
  const entries = 2 ** (ia - 12 - 9 * (levels - 1));
  return { upper, ia, root: upper ? r.root1 : r.root, start, entries };
}

/** First-level table address of a half: TTBR.BADDR (bits 47..1) aligned to the table's size. */
function _a64Root(h: _A64Half): bigint {
  return (h.root ?? 0n) & 0x0000_ffff_ffff_fffen & ~BigInt(h.entries * 8 - 1);
}

/** Effective flags of an AArch64 leaf given the hierarchical controls of the tables above. */
function _a64Flags(d: bigint, noWrite: boolean, noUser: boolean, uxn: boolean, pxn: boolean): number {
  let f = PF.PRESENT;
  const ap2 = (d & 0x80n) !== 0n;
  if (!ap2 && !noWrite) f |= PF.WRITE;
  if (d & 0x40n && !noUser) f |= PF.USER;
  if (d & 0x400n) f |= PF.ACCESSED;
  // Hardware dirty-state management: a DBM page is dirty once AP[2] (read-only) was cleared.
  if (d & (1n << 51n) && !ap2) f |= PF.DIRTY;
  if (!(d & 0x800n)) f |= PF.GLOBAL;
  const u = uxn || (d & (1n << 54n)) !== 0n;
  const p = pxn || (d & (1n << 53n)) !== 0n;
  if (u) f |= PF.UXN;
  if (p) f |= PF.PXN;
  // Executable by nobody: the same meaning as x86's XD.
  if (u && p) f |= PF.NX;
  return f;
}

/** Output-address mask of a block or page at `level` (1 = 1 GiB, 2 = 2 MiB, 3 = 4 KiB). */
function _a64Frame(level: number): bigint {
  return level === 3 ? A64_ADDR : level === 2 ? 0x0000_ffff_ffe0_0000n : 0x0000_ffff_c000_0000n;
}

function _a64Translate(memory: GuestMemorySource, r: _Regime, gva: bigint): Translation | TranslationFault {
  const h = _a64Half(r, ((gva >> 55n) & 1n) === 1n);
  // Bits 63..ia must all equal bit 55 (no top-byte-ignore).
  const top = gva >> BigInt(h.ia);
  if (top !== (h.upper ? (1n << BigInt(64 - h.ia)) - 1n : 0n)) return _fault(gva, 'non-canonical', h.start);
  if (h.root === undefined) return _fault(gva, 'bad-root', h.start);
  let table = _a64Root(h);
  if (table + BigInt(h.entries * 8) > memory.size) return _fault(gva, 'bad-root', h.start);
  let noWrite = false;
  let noUser = false;
  let uxn = false;
  let pxn = false;
  for (let level = h.start; ; level++) {
    const shift = SHIFT[3 - level]!;
    const mask = level === h.start ? BigInt(h.entries - 1) : 511n;
    const d = _read64(memory, table + ((gva >> shift) & mask) * 8n);
    if (!(d & 1n)) return _fault(gva, 'not-present', level, d);
    const isTable = (d & 2n) !== 0n && level < 3;
    const isLeaf = (level === 3 && (d & 2n) !== 0n) || (!(d & 2n) && (level === 1 || level === 2));
    // Level-0 blocks (4 KiB granule without LPA2) and level-3 "01" descriptors are invalid.
    if (!isTable && !isLeaf) return _fault(gva, 'not-present', level, d);
    if (isLeaf) {
      const size = 1n << shift;
      return {
        ok: true,
        gva: gva as Gva,
        gpa: ((d & _a64Frame(level)) | (gva & (size - 1n))) as Gpa,
        pageSize: Number(size),
        flags: _a64Flags(d, noWrite, noUser, uxn, pxn),
        level,
        leaf: d,
      };
    }
    noWrite ||= (d & (1n << 62n)) !== 0n;
    noUser ||= (d & (1n << 61n)) !== 0n;
    uxn ||= (d & (1n << 60n)) !== 0n;
    pxn ||= (d & (1n << 59n)) !== 0n;
    table = d & A64_ADDR;
    if (table + 4096n > memory.size) return _fault(gva, 'outside-memory', level + 1);
  }
}

function* _a64Mappings(memory: GuestMemorySource, r: _Regime, from: bigint, to: bigint): Generator<Mapping> {
  for (const upper of [false, true]) {
    const h = _a64Half(r, upper);
    if (h.root === undefined) continue;
    const root = _a64Root(h);
    if (root + BigInt(h.entries * 8) > memory.size) continue;
    // The upper half's addresses have every bit above the region set.
    const high = upper ? U64 ^ ((1n << BigInt(h.ia)) - 1n) : 0n;
    const bufs = [0, 1, 2, 3].map(() => new Uint8Array(4096));
    const path: bigint[] = [];
    const walk = function* (table: bigint, level: number, entries: number, base: bigint, flags: [boolean, boolean, boolean, boolean]): Generator<Mapping> {
      const buf = bufs[level]!.subarray(0, entries * 8);
      memory.readSync(table as Gpa, buf);
      const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
      path.push(table);
      const shift = BigInt(12 + 9 * (3 - level));
      const span = 1n << shift;
      for (let i = 0; i < entries; i++) {
        const lo = view.getUint32(i * 8, true);
        if (!(lo & 1)) continue;
        const va = high | base | (BigInt(i) << shift);
        if (va + span <= from || va >= to) continue;
        const d = view.getBigUint64(i * 8, true);
        if (level < 3 && lo & 2) {
          const next = d & A64_ADDR;
          if (next + 4096n > memory.size || path.includes(next)) continue;
          const f: [boolean, boolean, boolean, boolean] = [
            flags[0] || (d & (1n << 62n)) !== 0n,
            flags[1] || (d & (1n << 61n)) !== 0n,
            flags[2] || (d & (1n << 60n)) !== 0n,
            flags[3] || (d & (1n << 59n)) !== 0n,
          ];
          yield* walk(next, level + 1, 512, base | (BigInt(i) << shift), f);
        } else if ((level === 3 && lo & 2) || (!(lo & 2) && (level === 1 || level === 2))) {
          yield { gva: va as Gva, gpa: (d & _a64Frame(level)) as Gpa, pageSize: Number(span), flags: _a64Flags(d, ...flags), level, leaf: d };
        }
      }
      path.pop();
    };
    yield* walk(root, h.start, h.entries, 0n, [false, false, false, false]);
  }
}

// ---------------------------------------------------------------- API

/**
 * Translates one guest-virtual address by walking the guest's page tables in
 * `memory`, entry by entry, as the CPU would (x86-64 4- or 5-level paging, or
 * AArch64 stage 1 with the 4 KiB granule). No caching: every call reads the
 * tables again. Bad options throw `VmkitError` (ARG_TYPE / ARG_RANGE); bad
 * tables give a {@link TranslationFault}.
 *
 * Effective flags: x86 W and U are ANDed over all levels, NX ORed (XD is a
 * reserved bit when `nxe` is false), PWT/PCD/A/D/G come from the leaf.
 * AArch64: WRITE = AP[2] clear and no APTable[1] above, USER = AP[1] set and
 * no APTable[0] above, UXN/PXN from the leaf or any UXNTable/PXNTable above,
 * NX when both, ACCESSED = AF, GLOBAL = nG clear, DIRTY = DBM with AP[2] clear.
 *
 * @example
 * ```ts
 * import { referenceTranslate } from 'vmkit/memory';
 * const t = referenceTranslate(memory, { mode: 'x86-64', root: 0x1000n }, 0x40_1000n);
 * if (t.ok) console.log(t.gpa.toString(16), t.pageSize);
 * else console.log(t.reason, 'at level', t.level);
 * ```
 */
export function referenceTranslate(memory: GuestMemorySource, opts: AddressSpaceOptions, gva: bigint): Translation | TranslationFault {
  const r = _regime(opts);
  if (typeof gva !== 'bigint' || gva < 0n || gva > U64) throw new VmkitError('ARG_RANGE', `gva must be a bigint in [0, 2^64), got ${String(gva)}`);
  return r.mode === 'aarch64' ? _a64Translate(memory, r, gva) : _x86Translate(memory, r, gva);
}

/**
 * Every mapped page or large page whose range overlaps `[from, to)` (default:
 * the whole 64-bit space), in ascending VA order (x86-64 upper-half addresses
 * in their sign-extended form, so after the lower half; AArch64 TTBR0's region
 * before TTBR1's). A large page is reported once. Entries with reserved bits,
 * tables outside guest memory and tables already on the path from the root (a
 * loop) are skipped. The generator reads each table once when it reaches it.
 *
 * @example
 * ```ts
 * import { referenceMappings } from 'vmkit/memory';
 * for (const m of referenceMappings(memory, { mode: 'x86-64', root: cr3 })) {
 *   console.log(m.gva.toString(16), '→', m.gpa.toString(16), m.pageSize);
 * }
 * ```
 */
export function referenceMappings(memory: GuestMemorySource, opts: AddressSpaceOptions, from: bigint = 0n, to: bigint = 1n << 64n): Generator<Mapping> {
  const r = _regime(opts);
  if (typeof from !== 'bigint' || from < 0n || from > U64) throw new VmkitError('ARG_RANGE', 'from must be a bigint in [0, 2^64)');
  if (typeof to !== 'bigint' || to < 0n || to > 1n << 64n) throw new VmkitError('ARG_RANGE', 'to must be a bigint in [0, 2^64]');
  // [from, to) is half-open: an empty range holds no page, not even a large one around `from`.
  if (to <= from) return (function* (): Generator<Mapping> {})();
  return r.mode === 'aarch64' ? _a64Mappings(memory, r, from, to) : _x86Mappings(memory, r, from, to);
}
