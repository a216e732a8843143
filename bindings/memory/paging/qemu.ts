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
 * import { qemuTlbLine } from 'vmkit/dist/memory/paging/qemu.js';
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
