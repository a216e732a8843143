/**
 * QEMU's `info tlb` line format for x86-64 mappings (target/i386/monitor.c
 * `print_pte`), so a mapping walk can be diffed against QEMU's own:
 * ```
 *  ffffffffff5fd000: 00000000fee00000 XG-DACT-W
 *  └ VA, 16 hex digits, sign-extended
 *                    └ PA: the leaf & its frame mask (bits 49..12, 49..21 or 49..30)
 *                                     └ the leaf's own bits: XD G PS D A PCD PWT U/S R/W, '-' when clear
 * ```
 * Bit 7 of a 4 KiB PTE is PAT, which QEMU masks: "P" appears only on 2 MiB and 1 GiB pages.
 * The flags are the leaf's, not the effective ones combined over the levels.
 * @module
 */
import type { Mapping } from './types.js';

/** QEMU's frame masks: PA bits 49..12 / 49..21 / 49..30 of the leaf. */
function _frame(pageSize: number): bigint {
  return pageSize === 4096 ? 0x3_ffff_ffff_f000n : pageSize === 2 << 20 ? 0x3_ffff_ffe0_0000n : 0x3_ffff_c000_0000n;
}

const _hex16 = (v: bigint): string => v.toString(16).padStart(16, '0');

/**
 * Formats one x86-64 mapping as QEMU's monitor prints it in `info tlb`
 * (without the newline).
 *
 * @example
 * ```ts
 * import { qemuTlbLine } from 'vmkit/memory';
 * for (const m of space.mappings()) console.log(qemuTlbLine(m));
 * // 0000000000400000: 000000000ab0d000 X---A--U-
 * ```
 */
export function qemuTlbLine(m: Mapping): string {
  const e = m.leaf;
  const lo = Number(e & 0x1ffn);
  const c = (bit: number, ch: string): string => (lo & bit ? ch : '-');
  return (
    `${_hex16(m.gva)}: ${_hex16(e & _frame(m.pageSize))} ` +
    (e >> 63n ? 'X' : '-') +
    c(0x100, 'G') +
    (m.pageSize > 4096 ? c(0x80, 'P') : '-') +
    c(0x40, 'D') +
    c(0x20, 'A') +
    c(0x10, 'C') +
    c(0x08, 'T') +
    c(0x04, 'U') +
    c(0x02, 'W')
  );
}

/** Bytes of one {@link qemuTlbLineInto} line, newline included. */
export const QEMU_TLB_LINE_BYTES = 45;

const _HEX = new TextEncoder().encode('0123456789abcdef');
const _FLAGS = new TextEncoder().encode('XGPDACTUW');
const _scratch = new BigUint64Array(1);
const _words = new Uint32Array(_scratch.buffer);

/** Writes `v` as 16 lowercase hex digits at `dst[at]` (no bigint → string conversion). */
function _hexInto(v: bigint, dst: Uint8Array, at: number): void {
  _scratch[0] = v;
  // Little- or big-endian host: pick the high word by value, not by index.
  const hi = _LE ? _words[1]! : _words[0]!;
  const lo = _LE ? _words[0]! : _words[1]!;
  for (let i = 0; i < 8; i++) {
    dst[at + 7 - i] = _HEX[(hi >>> (4 * i)) & 15]!;
    dst[at + 15 - i] = _HEX[(lo >>> (4 * i)) & 15]!;
  }
}
const _LE = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;

/**
 * Writes the {@link qemuTlbLine} of `m` plus a newline as ASCII into `dst` at
 * `at` ({@link QEMU_TLB_LINE_BYTES} bytes): the allocation-free form for
 * dumping tens of thousands of mappings. Returns the offset after the line.
 *
 * @example
 * ```ts
 * const out = new Uint8Array(QEMU_TLB_LINE_BYTES * 1024);
 * let at = 0;
 * for (const m of space.mappings()) at = qemuTlbLineInto(m, out, at); // (flush when full)
 * ```
 */
export function qemuTlbLineInto(m: Mapping, dst: Uint8Array, at: number): number {
  const e = m.leaf;
  _hexInto(m.gva, dst, at);
  dst[at + 16] = 0x3a; // ':'
  dst[at + 17] = 0x20;
  _hexInto(e & _frame(m.pageSize), dst, at + 18);
  dst[at + 34] = 0x20;
  _scratch[0] = e;
  const lo = _LE ? _words[0]! : _words[1]!;
  const hi = _LE ? _words[1]! : _words[0]!;
  // The order QEMU prints: XD (bit 63), G, PS (large pages only), D, A, PCD, PWT, U/S, R/W.
  const bits = [hi >>> 31, lo & 0x100, m.pageSize > 4096 ? lo & 0x80 : 0, lo & 0x40, lo & 0x20, lo & 0x10, lo & 0x08, lo & 0x04, lo & 0x02];
  for (let i = 0; i < 9; i++) dst[at + 35 + i] = bits[i] ? _FLAGS[i]! : 0x2d; // '-'
  dst[at + 44] = 0x0a;
  return at + QEMU_TLB_LINE_BYTES;
}
