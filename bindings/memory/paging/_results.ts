/**
 * The paging core's result slots (`assembly/paging.ts` R_*): where a
 * translation, a batch or a mapping walk leaves what does not fit its return
 * value (page size, flags, level, the entry, the frame it needs, the walk's
 * cursor), read in place from core memory without allocating per call.
 * @module
 * @internal
 */
import type { Core } from '../../core.js';
import type { FaultReason, TranslationResult } from './types.js';

// Result slots, u64 each (assembly/paging.ts R_*).
/** The guest-physical address. @internal */
export const R_GPA = 0;
/** The leaf (or faulting) entry. @internal */
export const R_LEAF = 1;
/** The page size in bytes. @internal */
export const R_SIZE = 2;
/** The effective flags (PF bits). @internal */
export const R_FLAGS = 3;
/** The level of the leaf, or of the fault. @internal */
export const R_LEVEL = 4;
/** The fault's reason code (see REASONS). @internal */
export const R_REASON = 5;
/** 1 when the fault has an entry (not for a non-canonical address or a bad root). @internal */
export const R_HAS_ENTRY = 6;
/** The table frame the core asks for (NEED_DATA). @internal */
export const R_FRAME = 7;
/** Where a mapping walk goes on. @internal */
export const R_CURSOR = 8;
/** A mapping walk's state: 0 done, 1 stopped (budget, full buffer), 2 needs R_FRAME. @internal */
export const R_STATE = 9;
/** How many of a batch translated. @internal */
export const R_MAPPED = 10;

const REASONS: readonly FaultReason[] = ['not-present', 'not-present', 'reserved-bit', 'non-canonical', 'outside-memory', 'bad-root'];

/** The slots, viewed (re-made when the memory buffer changes: growth, or a new core). */
let view: BigUint64Array | undefined;
let viewCore: Core | undefined;
/** The same slots as u32 halves (read without allocating a bigint per slot). */
let words: Uint32Array | undefined;
let wordsCore: Core | undefined;

/**
 * The result slots of core `c` as u64s.
 * @example
 * const frame = resultSlots(c)[R_FRAME]!;
 * @internal
 */
export function resultSlots(c: Core): BigUint64Array {
  // One view per memory buffer: a grown memory detaches the old one (length 0), a reset
  // core is another object (no memory.buffer getter on this path: translate() calls it).
  if (view === undefined || view.length === 0 || viewCore !== c) {
    view = new BigUint64Array(c.exports.memory.buffer, c.exports.pagingResult(), 16);
    viewCore = c;
  }
  return view;
}

/**
 * Copies the result slots of the translation that returned `r` into `into`, as numbers.
 * @example
 * fillResult(c, c.exports.pagingTranslateGpa(h, va), into);
 * @internal
 */
export function fillResult(c: Core, r: number, into: TranslationResult): void {
  let w = words;
  // A grown memory detaches the old buffer (length 0); a reset core is another object.
  if (w === undefined || w.length === 0 || wordsCore !== c) {
    w = words = new Uint32Array(c.exports.memory.buffer, c.exports.pagingResult(), 32);
    wordsCore = c;
  }
  const ok = r >= 0;
  into.ok = ok;
  into.gpa = ok ? r : -1;
  into.pageSize = ok ? w[R_SIZE * 2]! + w[R_SIZE * 2 + 1]! * 0x1_0000_0000 : 0;
  into.flags = ok ? w[R_FLAGS * 2]! : 0;
  into.level = w[R_LEVEL * 2]!;
  into.reason = ok ? undefined : (REASONS[w[R_REASON * 2]!] ?? 'not-present');
  into.hasEntry = ok || w[R_HAS_ENTRY * 2] !== 0;
  into.entryLo = into.hasEntry ? w[R_LEAF * 2]! : 0;
  into.entryHi = into.hasEntry ? w[R_LEAF * 2 + 1]! : 0;
}
