/**
 * Tour chapter: guest page tables. Build a small x86-64 page-table tree in a
 * buffer (user pages, a 2 MiB kernel page, a 1 GiB direct map), translate
 * addresses through it with the core's AddressSpace, dump it the way QEMU's
 * `info tlb` does, time a batch of translations (core against the TypeScript
 * reference walker), find the aliases of a physical page, and walk an AArch64
 * TTBR0/TTBR1 pair.
 * @module
 */
import { AddressSpace } from '../memory/paging/address-space.js';
import { qemuTlbLine } from '../memory/paging/qemu.js';
import { referenceMappings, referenceTranslate } from '../memory/paging/reference.js';
import { PF } from '../memory/paging/types.js';
import type { AddressSpaceOptions, Translation, TranslationFault } from '../memory/paging/types.js';
import type { Gpa, GuestMemorySource } from '../memory/types.js';

/** Guest memory holding only page tables, with a bump allocator. */
function _tables(pages: number): { memory: GuestMemorySource; alloc(): bigint; set(t: bigint, i: number, e: bigint): void } {
  const bytes = new Uint8Array(pages * 4096);
  const view = new DataView(bytes.buffer);
  let next = 1;
  return {
    memory: {
      size: BigInt(bytes.length),
      readSync: (at: Gpa, dst: Uint8Array) => dst.set(bytes.subarray(Number(at), Number(at) + dst.length)),
    },
    alloc: () => BigInt(next++ * 4096),
    set: (t, i, e) => view.setBigUint64(Number(t) + i * 8, e, true),
  };
}

const hex = (v: bigint): string => `0x${v.toString(16)}`;
const names = (f: number): string =>
  Object.entries(PF)
    .filter(([, v]) => f & v)
    .map(([k]) => k.toLowerCase())
    .join(' ');
const show = (t: Translation | TranslationFault): string =>
  t.ok ? `${hex(t.gva)} → ${hex(t.gpa)} (${t.pageSize >= 1 << 30 ? '1 GiB' : t.pageSize >= 1 << 21 ? '2 MiB' : '4 KiB'} page, level ${t.level}; ${names(t.flags)})` : `${hex(t.gva)} → fault: ${t.reason} at level ${t.level}`;

/**
 * Runs the chapter, printing through `log`.
 *
 * @example
 * ```ts
 * // `npm start` (bindings/bin/tour.ts) runs every chapter this way; the tour is not part of the package's exports.
 * import { chapter } from '../tour/paging.js';
 * await chapter(console.log);
 * ```
 */
export async function chapter(log: (s: string) => void): Promise<void> {
  // x86-64, 4-level: P=1 W=2 U=4 A=0x20 D=0x40 PS=0x80 G=0x100 XD=bit 63.
  const g = _tables(16);
  const pml4 = g.alloc(), userPdpt = g.alloc(), userPd = g.alloc(), userPt = g.alloc();
  const kPdpt = g.alloc(), kPd = g.alloc(), dmPdpt = g.alloc();
  g.set(pml4, 0, userPdpt | 0x7n);
  g.set(userPdpt, 0, userPd | 0x7n);
  g.set(userPd, 2, userPt | 0x7n); // 0x400000: a program's text and data
  for (let i = 0; i < 4; i++) g.set(userPt, i, (0x0ab0_0000n + BigInt(i) * 0x1000n) | (i < 2 ? 0x25n : 0x8000_0000_0000_0067n));
  g.set(pml4, 511, kPdpt | 0x3n); // 0xffffffff80000000: the kernel image, one 2 MiB page
  g.set(kPdpt, 510, kPd | 0x3n);
  g.set(kPd, 0, 0x0100_0000n | 0x1e1n);
  g.set(pml4, 273, dmPdpt | 0x3n); // 0xffff888000000000: 1 GiB of direct map
  g.set(dmPdpt, 0, 0x8000_0000_0000_01e3n);
  const opts: AddressSpaceOptions = { mode: 'x86-64', root: pml4 };
  log(`x86-64 page tables in ${g.memory.size >> 10n} KiB of guest memory, CR3 = ${hex(pml4)}`);
  const space = AddressSpace.create({ memory: g.memory, ...opts });
  for (const va of [0x40_1234n, 0x40_3008n, 0xffff_ffff_8012_3456n, 0xffff_8880_1234_5678n, 0x50_0000n, 0x8000_0000_0000n]) {
    log('  ' + show(space.translate(va)));
  }
  log('dump, as QEMU\'s "info tlb" prints it (X G P D A C T U W):');
  for (const m of space.mappings()) log('  ' + qemuTlbLine(m));
  const aliases = space.gvasOf(0x0ab0_2000n);
  log(`gpa 0xab02000 is mapped at ${aliases.map(hex).join(' and ')} (the program's page and the direct map)`);

  // Figures: a batch of random addresses over the mapped pages.
  const gvas: bigint[] = [];
  let x = 7;
  for (let i = 0; i < 20000; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    gvas.push(i & 1 ? 0x40_0000n + BigInt(x & 0x3fff) : 0xffff_8880_0000_0000n + BigInt(x & 0x3fff_ffff));
  }
  const batch = BigUint64Array.from(gvas);
  const out = new BigUint64Array(batch.length);
  const rate = (ms: number, n: number): string => `${((n / ms) * 1e3 / 1e6).toFixed(2)} M/s`;
  let t0 = performance.now();
  let ok = 0;
  for (const va of gvas) if (referenceTranslate(g.memory, opts, va).ok) ok++;
  const refMs = performance.now() - t0;
  space.translateInto(batch, out); // warm the core's caches once
  t0 = performance.now();
  const rounds = 20;
  for (let i = 0; i < rounds; i++) space.translateInto(batch, out);
  const coreMs = (performance.now() - t0) / rounds;
  const agree = gvas.every((va, i) => {
    const r = referenceTranslate(g.memory, opts, va);
    return out[i] === (r.ok ? r.gpa : 0xffff_ffff_ffff_ffffn);
  });
  log(`${gvas.length} random translations (${ok} mapped): reference walker ${rate(refMs, gvas.length)}, core translateInto ${rate(coreMs, gvas.length)} (${(refMs / coreMs).toFixed(0)}×); answers ${agree ? 'identical' : 'DIFFER'}`);
  space.dispose();

  // AArch64, 4 KiB granule: TTBR0 for the lower half, TTBR1 (VA bit 55) for the upper.
  const a = _tables(8);
  const l0 = a.alloc(), l1 = a.alloc(), h0 = a.alloc(), h1 = a.alloc();
  a.set(l0, 0, l1 | 0x3n);
  a.set(l1, 1, 0x4000_0000n | 0x441n | (1n << 53n)); // 1 GiB block: AF, EL0 RW, PXN, nG clear
  a.set(h0, 511, h1 | 0x3n | (1n << 62n)); // APTable[1]: nothing below is writable
  a.set(h1, 511, 0x8000_0000n | 0x401n); // 1 GiB block, kernel RW by AP, AF
  const aopts: AddressSpaceOptions = { mode: 'aarch64', root: l0, root1: h0 };
  log(`AArch64: TTBR0 = ${hex(l0)}, TTBR1 = ${hex(h0)}, T0SZ = T1SZ = 16`);
  const aspace = AddressSpace.create({ memory: a.memory, ...aopts });
  for (const va of [0x4567_89abn, 0xffff_ffff_c000_0010n, 0x0001_0000_0000_0000n]) log('  ' + show(aspace.translate(va)));
  const key = (ms: Iterable<{ gva: bigint; gpa: bigint; flags: number }>): string => [...ms].map((m) => `${hex(m.gva)}→${hex(m.gpa)}:${m.flags}`).join(' ');
  const coreMaps = key(aspace.mappings());
  log(`  mappings: ${coreMaps} (reference walker: ${coreMaps === key(referenceMappings(a.memory, aopts)) ? 'identical' : 'DIFFERENT'})`);
  aspace.dispose();
}
