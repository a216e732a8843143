/**
 * The shared vocabulary of guest page-table walks: modes, effective flags,
 * translations and faults. The core's walker (`address-space.ts`) and the
 * plain-TypeScript reference walker (`reference.ts`) both speak it, so that
 * differential tests can compare them field by field.
 * @module
 */
import type { Gpa, Gva } from '../types.js';

/**
 * The translation regime of an address space.
 * - `x86-64`: 4-level paging (CR4.PAE, EFER.LME), 48-bit virtual addresses.
 * - `x86-64-5level`: 5-level paging (CR4.LA57), 57-bit virtual addresses.
 * - `aarch64`: stage-1, 4 KiB granule, TTBR0/TTBR1 split (16/64 KiB granules may follow).
 * @example
 * const mode: PagingMode = 'x86-64';
 */
export type PagingMode = 'x86-64' | 'x86-64-5level' | 'aarch64';

/** Every paging mode, for argument checks and CLI help. @example PAGING_MODES.includes('aarch64') */
export const PAGING_MODES: readonly PagingMode[] = ['x86-64', 'x86-64-5level', 'aarch64'];

/**
 * Effective permission and attribute bits of a translation, combined over all
 * levels as the CPU combines them (writable and user only when every level
 * allows it; no-execute when any level forbids it; the others from the leaf).
 * Bit values are vmkit's own (stable across modes), not the hardware's.
 * @example
 * if (t.ok && (t.flags & PF.WRITE)) console.log('writable');
 */
export const PF = {
  /** Present / valid. Always set on a successful translation. */
  PRESENT: 1,
  /** Writable (x86 R/W on every level; AArch64 AP[2] clear). */
  WRITE: 2,
  /** User-accessible (x86 U/S on every level; AArch64 AP[1] set). */
  USER: 4,
  /** Write-through (x86 PWT of the leaf). */
  PWT: 8,
  /** Cache-disable (x86 PCD of the leaf). */
  PCD: 16,
  /** Accessed (x86 A of the leaf; AArch64 AF). */
  ACCESSED: 32,
  /** Dirty (x86 D of the leaf; AArch64 DBM-managed dirty = AP[2] clear with DBM). */
  DIRTY: 64,
  /** Global (x86 G of the leaf; AArch64 nG clear). */
  GLOBAL: 256,
  /** No-execute for all (x86 XD on any level). */
  NX: 512,
  /** AArch64: unprivileged execute-never (UXN/XN on the leaf or UXNTable above). */
  UXN: 1024,
  /** AArch64: privileged execute-never (PXN on the leaf or PXNTable above). */
  PXN: 2048,
} as const;

/**
 * Why a translation failed.
 * - `not-present`: the entry at `level` is not present (x86 P=0; AArch64 descriptor bit 0 clear,
 *   or a block descriptor where none is allowed).
 * - `reserved-bit`: the entry at `level` has a reserved bit set (x86 #PF with RSVD).
 * - `non-canonical`: the address is not canonical for the mode (or outside T0SZ/T1SZ on AArch64).
 * - `outside-memory`: a table the walk needed lies outside guest memory.
 * - `bad-root`: the root register itself is unusable (e.g. a table address past guest memory or
 *   with bits above the physical address width).
 * @example
 * const r: FaultReason = 'not-present';
 */
export type FaultReason = 'not-present' | 'reserved-bit' | 'non-canonical' | 'outside-memory' | 'bad-root';

/**
 * A successful translation.
 * `level` is the level of the leaf entry, in the architecture's own numbering: x86-64 counts
 * down from 4 (PML4) or 5 (PML5) to 1 (PT); AArch64 counts up from 0 to 3.
 * @example
 * const t: Translation = { ok: true, gva: gva(0x1000n), gpa: gpa(0x5000n), pageSize: 4096, flags: PF.PRESENT, level: 1, leaf: 0x5001n };
 */
export interface Translation {
  readonly ok: true;
  readonly gva: Gva;
  /** The guest-physical address of `gva` itself (page base plus offset). */
  readonly gpa: Gpa;
  /** 4096, 2 MiB or 1 GiB (AArch64 with other granules: 16 KiB, 64 KiB, 32 MiB, 512 MiB …). */
  readonly pageSize: number;
  /** Effective flags, see {@link PF}. */
  readonly flags: number;
  readonly level: number;
  /** The raw leaf entry as read from guest memory. */
  readonly leaf: bigint;
}

/**
 * A failed translation: where the walk stopped and why.
 * @example
 * const f: TranslationFault = { ok: false, gva: gva(0n), reason: 'not-present', level: 4 };
 */
export interface TranslationFault {
  readonly ok: false;
  readonly gva: Gva;
  readonly reason: FaultReason;
  /** The level whose entry faulted (numbering as in {@link Translation.level}). */
  readonly level: number;
  /** The raw entry that faulted, when one was read. */
  readonly entry?: bigint;
}

/**
 * The reusable result of {@link AddressSpace.translateGpa}: plain numbers
 * written in place, so that translating one address at a time allocates
 * nothing. Guest-physical addresses are below 2^52 in every mode, so `gpa` is
 * exact as a number; the 64-bit entry is split into two 32-bit halves.
 * @example
 * const r = new TranslationResult();
 * if (space.translateGpa(va, r) >= 0) console.log(r.gpa, r.pageSize, r.level);
 * else console.log(r.reason, r.level);
 */
export class TranslationResult {
  /** Whether the last translation succeeded. */
  ok = false;
  /** The guest-physical address (page base plus offset), -1 after a fault. */
  gpa = -1;
  /** The page size in bytes (0 after a fault). */
  pageSize = 0;
  /** Effective flags ({@link PF}); 0 after a fault. */
  flags = 0;
  /** The level of the leaf or of the faulting entry (numbering as in {@link Translation.level}). */
  level = 0;
  /** The fault's reason, `undefined` after a success. */
  reason: FaultReason | undefined = undefined;
  /** Whether `entryLo`/`entryHi` hold an entry (the leaf, or the one that faulted). */
  hasEntry = false;
  /** Bits 31..0 of that entry. */
  entryLo = 0;
  /** Bits 63..32 of that entry. */
  entryHi = 0;

  /**
   * The entry as one bigint (allocates: read it only when needed).
   * @example
   * if (r.hasEntry) console.log(r.entry.toString(16));
   */
  get entry(): bigint {
    return (BigInt(this.entryHi) << 32n) | BigInt(this.entryLo);
  }
}

/**
 * A mapped page or large page, as a mapping walk reports it (in VA order).
 * @example
 * for (const m of space.mappings()) console.log(m.gva.toString(16), m.gpa.toString(16), m.pageSize);
 */
export interface Mapping {
  /** First guest-virtual address of the page (sign-extended/canonical form on x86-64). */
  readonly gva: Gva;
  /** Guest-physical base of the page. */
  readonly gpa: Gpa;
  readonly pageSize: number;
  /** Effective flags, see {@link PF}. */
  readonly flags: number;
  readonly level: number;
  /** The raw leaf entry. */
  readonly leaf: bigint;
}

/**
 * How to build an address space: the guest memory the tables live in, the mode
 * and the root register(s).
 * @example
 * const opts: AddressSpaceOptions = { memory, mode: 'x86-64', root: 0x1234000n };
 */
export interface AddressSpaceOptions {
  mode: PagingMode;
  /**
   * x86-64: the CR3 value (PCID and flag bits are ignored). AArch64: TTBR0_EL1
   * (ASID bits ignored).
   */
  root: bigint;
  /** AArch64: TTBR1_EL1 for the upper half (VA bit 55 set). */
  root1?: bigint;
  /** AArch64: T0SZ (default 16, a 48-bit lower half). */
  t0sz?: number;
  /** AArch64: T1SZ (default 16). */
  t1sz?: number;
  /**
   * AArch64: the translation granule in bytes (default 4096). With 16 KiB and
   * 64 KiB granules, T0SZ/T1SZ may go up to 48/47 and blocks exist at level 2
   * only (32 MiB / 512 MiB). Only the core's walker supports other granules.
   */
  granule?: 4096 | 16384 | 65536;
  /** x86-64: EFER.NXE (default true): when false, the XD bit is reserved. */
  nxe?: boolean;
}
