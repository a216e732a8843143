// The plain-TypeScript reference walker (bindings/memory/paging/reference.ts)
// on hand-built page tables: each expectation is worked out from the Intel SDM
// (4-/5-level paging) or the Arm ARM (VMSAv8-64, 4 KiB granule), not from the
// walker. Runs in Node and Chromium.
import { describe, expect, it } from 'vitest';
import { VmkitError } from '../bindings/errors.js';
import { QEMU_TLB_LINE_BYTES, qemuTlbLine, qemuTlbLineInto } from '../bindings/memory/paging/qemu.js';
import { referenceMappings, referenceTranslate } from '../bindings/memory/paging/reference.js';
import { PF } from '../bindings/memory/paging/types.js';
import type { AddressSpaceOptions, Mapping, Translation, TranslationFault } from '../bindings/memory/paging/types.js';
import type { Gpa, GuestMemorySource } from '../bindings/memory/types.js';

/** Guest memory of `pages` 4 KiB pages with a bump allocator for tables (page 0 stays free). */
class Mem implements GuestMemorySource {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly size: bigint;
  reads = 0;
  private next = 1;
  constructor(pages: number) {
    this.bytes = new Uint8Array(pages * 4096);
    this.view = new DataView(this.bytes.buffer);
    this.size = BigInt(this.bytes.length);
  }
  readSync(at: Gpa, dst: Uint8Array): void {
    this.reads++;
    if (at + BigInt(dst.length) > this.size) throw new Error(`read past memory at ${at.toString(16)}`);
    dst.set(this.bytes.subarray(Number(at), Number(at) + dst.length));
  }
  table(): bigint {
    return BigInt(this.next++ * 4096);
  }
  set(table: bigint, index: number, entry: bigint): void {
    this.view.setBigUint64(Number(table) + index * 8, entry, true);
  }
}

const P = 1n, W = 2n, U = 4n, PWT = 8n, PCD = 16n, A = 32n, D = 64n, PS = 128n, G = 256n, XD = 1n << 63n;

function ok(t: Translation | TranslationFault): Translation {
  if (!t.ok) throw new Error(`expected a translation, got ${t.reason} at level ${t.level}`);
  return t;
}
function fault(t: Translation | TranslationFault): TranslationFault {
  if (t.ok) throw new Error(`expected a fault, got gpa ${t.gpa.toString(16)}`);
  return t;
}
const va4 = (l4: number, l3: number, l2: number, l1: number, off = 0): bigint => {
  const v = (BigInt(l4) << 39n) | (BigInt(l3) << 30n) | (BigInt(l2) << 21n) | (BigInt(l1) << 12n) | BigInt(off);
  return l4 >= 256 ? v | 0xffff_0000_0000_0000n : v;
};

describe('x86-64 4-level', () => {
  // PML4[1] → PDPT: [2] → PD ([3] → PT [4] 4 KiB page; [5] 2 MiB page); [6] 1 GiB page.
  const m = new Mem(64);
  const pml4 = m.table(), pdpt = m.table(), pd = m.table(), pt = m.table();
  m.set(pml4, 1, pdpt | P | W | U);
  m.set(pdpt, 2, pd | P | W | U);
  m.set(pd, 3, pt | P | W | U);
  m.set(pt, 4, 0x1234_5000n | P | W | U | A | D | G | PWT | PCD);
  m.set(pd, 5, 0x4060_0000n | P | W | PS | A);
  m.set(pdpt, 6, 0x8_4000_0000n | P | PS | G);
  const opts: AddressSpaceOptions = { mode: 'x86-64', root: pml4 };

  it('translates 4 KiB, 2 MiB and 1 GiB pages with the page offset', () => {
    const t = ok(referenceTranslate(m, opts, va4(1, 2, 3, 4, 0x567)));
    expect(t).toMatchObject({ gpa: 0x1234_5567n, pageSize: 4096, level: 1, leaf: 0x1234_5000n | P | W | U | A | D | G | PWT | PCD });
    expect(t.flags).toBe(PF.PRESENT | PF.WRITE | PF.USER | PF.ACCESSED | PF.DIRTY | PF.GLOBAL | PF.PWT | PF.PCD);
    const t2 = ok(referenceTranslate(m, opts, va4(1, 2, 5, 0x1ab, 0x123)));
    expect(t2).toMatchObject({ gpa: 0x4060_0000n + 0x1a_b123n, pageSize: 2 << 20, level: 2 });
    expect(t2.flags).toBe(PF.PRESENT | PF.WRITE | PF.ACCESSED);
    const t3 = ok(referenceTranslate(m, opts, va4(1, 6, 0x155, 0x0aa, 0xfff)));
    expect(t3).toMatchObject({ gpa: 0x8_4000_0000n + (0x155n << 21n) + (0xaan << 12n) + 0xfffn, pageSize: 1 << 30, level: 3 });
    expect(t3.flags).toBe(PF.PRESENT | PF.GLOBAL);
  });

  it('reports which level is not present, with the entry', () => {
    expect(fault(referenceTranslate(m, opts, va4(0, 0, 0, 0)))).toMatchObject({ reason: 'not-present', level: 4, entry: 0n });
    expect(fault(referenceTranslate(m, opts, va4(1, 3, 0, 0)))).toMatchObject({ reason: 'not-present', level: 3 });
    expect(fault(referenceTranslate(m, opts, va4(1, 2, 4, 0)))).toMatchObject({ reason: 'not-present', level: 2 });
    expect(fault(referenceTranslate(m, opts, va4(1, 2, 3, 5)))).toMatchObject({ reason: 'not-present', level: 1 });
  });

  it('checks canonical addresses (bits 63..47 equal)', () => {
    expect(fault(referenceTranslate(m, opts, 0x0000_8000_0000_0000n)).reason).toBe('non-canonical');
    expect(fault(referenceTranslate(m, opts, 0xfff0_0000_0000_1000n)).reason).toBe('non-canonical');
    // Canonical upper-half addresses walk (and find nothing here).
    expect(fault(referenceTranslate(m, opts, 0xffff_8000_0000_0000n)).reason).toBe('not-present');
  });

  it('ignores PCID and flag bits of CR3 and the no-flush bit 63', () => {
    const t = ok(referenceTranslate(m, { mode: 'x86-64', root: pml4 | 0xfffn | (1n << 63n) }, va4(1, 2, 3, 4)));
    expect(t.gpa).toBe(0x1234_5000n);
  });

  it('rejects absurd CR3 values as bad-root', () => {
    expect(fault(referenceTranslate(m, { mode: 'x86-64', root: m.size }, va4(1, 2, 3, 4)))).toMatchObject({ reason: 'bad-root', level: 4 });
    expect(fault(referenceTranslate(m, { mode: 'x86-64', root: pml4 | (1n << 55n) }, va4(1, 2, 3, 4))).reason).toBe('bad-root');
  });
});

describe('x86-64 effective flags and reserved bits', () => {
  function chain(e4: bigint, e3: bigint, e2: bigint, e1: bigint, nxe = true): Translation | TranslationFault {
    const m = new Mem(8);
    const t4 = m.table(), t3 = m.table(), t2 = m.table(), t1 = m.table();
    m.set(t4, 0, t3 | e4);
    m.set(t3, 0, (e3 & PS ? 0n : t2) | e3);
    m.set(t2, 0, (e2 & PS ? 0n : t1) | e2);
    m.set(t1, 0, e1);
    return referenceTranslate(m, { mode: 'x86-64', root: t4, nxe }, 0x123n);
  }
  const all = P | W | U;

  it('ANDs R/W and U/S over every level', () => {
    expect(ok(chain(all, all, all, 0x5000n | all)).flags & (PF.WRITE | PF.USER)).toBe(PF.WRITE | PF.USER);
    expect(ok(chain(P | U, all, all, 0x5000n | all)).flags & PF.WRITE).toBe(0);
    expect(ok(chain(all, P | W, all, 0x5000n | all)).flags & PF.USER).toBe(0);
    expect(ok(chain(all, all, all, 0x5000n | P)).flags & (PF.WRITE | PF.USER)).toBe(0);
  });

  it('ORs XD over every level when EFER.NXE is set', () => {
    expect(ok(chain(all, all, all, 0x5000n | all)).flags & PF.NX).toBe(0);
    expect(ok(chain(all | XD, all, all, 0x5000n | all)).flags & PF.NX).toBe(PF.NX);
    expect(ok(chain(all, all, all | XD, 0x5000n | all)).flags & PF.NX).toBe(PF.NX);
  });

  it('treats XD as a reserved bit when EFER.NXE is clear', () => {
    expect(fault(chain(all, all | XD, all, 0x5000n | all, false))).toMatchObject({ reason: 'reserved-bit', level: 3 });
    expect(ok(chain(all, all, all, 0x5000n | all, false)).flags & PF.NX).toBe(0);
  });

  it('takes A, D, G, PWT and PCD from the leaf only', () => {
    const upper = all | A | D | G | PWT | PCD;
    expect(ok(chain(upper, upper, upper, 0x5000n | all)).flags).toBe(PF.PRESENT | PF.WRITE | PF.USER);
  });

  it('reads bit 7 of a PTE as PAT, not as a page size', () => {
    const t = ok(chain(all, all, all, 0x5000n | all | PS));
    expect(t).toMatchObject({ pageSize: 4096, gpa: 0x5123n, level: 1 });
  });

  it('faults on PS in a PML4E and on the reserved low bits of large pages', () => {
    expect(fault(chain(all | PS, all, all, 0x5000n | all))).toMatchObject({ reason: 'reserved-bit', level: 4 });
    expect(fault(chain(all, all | PS | 0x4000_0000n | (1n << 13n), all, 0n))).toMatchObject({ reason: 'reserved-bit', level: 3 });
    expect(fault(chain(all, all | PS | 0x4000_0000n | (1n << 29n), all, 0n))).toMatchObject({ reason: 'reserved-bit', level: 3 });
    expect(fault(chain(all, all, all | PS | 0x20_0000n | (1n << 20n), 0n))).toMatchObject({ reason: 'reserved-bit', level: 2 });
    // Bit 12 of a large page is PAT, not reserved, and not part of the address.
    expect(ok(chain(all, all, all | PS | 0x20_0000n | (1n << 12n), 0n)).gpa).toBe(0x20_0123n);
    expect(ok(chain(all, all | PS | 0x4000_0000n | (1n << 12n), all, 0n)).gpa).toBe(0x4000_0123n);
  });

  it('uses all 52 physical address bits and ignores bits 62..52', () => {
    const t = ok(chain(all, all, all, 0x000f_ffff_ffff_f000n | (0x7ffn << 52n) | all));
    expect(t.gpa).toBe(0x000f_ffff_ffff_f123n);
  });

  it('faults with outside-memory when a table lies past guest memory, and never reads it', () => {
    const m = new Mem(4);
    const t4 = m.table();
    m.set(t4, 0, 0x10_0000n | all);
    m.set(t4, 1, m.size | all); // the first page past the end
    expect(fault(referenceTranslate(m, { mode: 'x86-64', root: t4 }, 0x123n))).toMatchObject({ reason: 'outside-memory', level: 3 });
    expect(fault(referenceTranslate(m, { mode: 'x86-64', root: t4 }, 1n << 39n))).toMatchObject({ reason: 'outside-memory', level: 3 });
    expect([...referenceMappings(m, { mode: 'x86-64', root: t4 })]).toEqual([]);
  });
});

describe('x86-64 5-level (LA57)', () => {
  const m = new Mem(16);
  const pml5 = m.table(), pml4 = m.table(), pdpt = m.table(), pd = m.table();
  m.set(pml5, 3, pml4 | P | W);
  m.set(pml5, 300, pml4 | P); // the same PML4 again in the upper half
  m.set(pml4, 7, pdpt | P | W);
  m.set(pdpt, 1, pd | P | W);
  m.set(pd, 2, 0xa0_0000n | P | W | PS);
  const opts: AddressSpaceOptions = { mode: 'x86-64-5level', root: pml5 };
  const lo = (3n << 48n) | (7n << 39n) | (1n << 30n) | (2n << 21n);
  const hi = 0xfe00_0000_0000_0000n | (300n << 48n) | (7n << 39n) | (1n << 30n) | (2n << 21n);

  it('walks five levels and sign-extends from bit 56', () => {
    expect(ok(referenceTranslate(m, opts, lo + 0x1234n))).toMatchObject({ gpa: 0xa0_1234n, pageSize: 2 << 20, level: 2, flags: PF.PRESENT | PF.WRITE });
    expect(ok(referenceTranslate(m, opts, hi + 0x10n))).toMatchObject({ gpa: 0xa0_0010n, flags: PF.PRESENT });
    // Canonical in LA57, not in 4-level paging.
    expect(fault(referenceTranslate(m, { mode: 'x86-64', root: pml5 }, lo)).reason).toBe('non-canonical');
    expect(fault(referenceTranslate(m, opts, 0x0100_0000_0000_0000n))).toMatchObject({ reason: 'non-canonical', level: 5 });
    expect(fault(referenceTranslate(m, opts, 0x0000_8000_0000_0000n))).toMatchObject({ reason: 'not-present', level: 5 });
  });

  it('faults on PS in a PML5E', () => {
    const m2 = new Mem(4);
    const t5 = m2.table();
    m2.set(t5, 0, P | PS);
    expect(fault(referenceTranslate(m2, { mode: 'x86-64-5level', root: t5 }, 0n))).toMatchObject({ reason: 'reserved-bit', level: 5 });
  });

  it('lists mappings in VA order with canonical addresses', () => {
    const maps = [...referenceMappings(m, opts)];
    expect(maps.map((x) => [x.gva, x.gpa, x.pageSize, x.level])).toEqual([
      [lo, 0xa0_0000n, 2 << 20, 2],
      [hi, 0xa0_0000n, 2 << 20, 2],
    ]);
  });
});

describe('x86-64 mapping walks', () => {
  const m = new Mem(32);
  const pml4 = m.table(), pdptLo = m.table(), pdptHi = m.table(), pd = m.table(), pt = m.table();
  m.set(pml4, 0, pdptLo | P | W | U);
  m.set(pml4, 511, pdptHi | P | W);
  m.set(pml4, 5, pml4 | P | W); // a self-reference (a loop)
  m.set(pdptLo, 0, pd | P | W | U);
  m.set(pdptLo, 1, 0x4000_0000n | P | PS); // 1 GiB
  m.set(pd, 0, pt | P | W | U);
  m.set(pd, 1, 0x60_0000n | P | W | PS | XD); // 2 MiB
  m.set(pd, 2, pd | P | W); // loops back to its own table
  for (const i of [0, 3, 511]) m.set(pt, i, BigInt(0x10 + i) << 12n | P | U);
  m.set(pdptHi, 510, 0x8000_0000n | P | W | PS | G);
  const opts: AddressSpaceOptions = { mode: 'x86-64', root: pml4 };

  it('yields every page once, in VA order, and terminates on loops', () => {
    const maps = [...referenceMappings(m, opts)];
    expect(maps.map((x) => [x.gva, x.gpa, x.pageSize])).toEqual([
      [0x0000n, 0x10_000n, 4096],
      [0x3000n, 0x13_000n, 4096],
      [0x1f_f000n, 0x20f_000n, 4096],
      [0x20_0000n, 0x60_0000n, 2 << 20],
      [0x4000_0000n, 0x4000_0000n, 1 << 30],
      // PML4[5] points back at the PML4 and PD[2] at the PD: both skipped as loops.
      [0xffff_ff80_0000_0000n | (510n << 30n), 0x8000_0000n, 1 << 30],
    ]);
    expect(maps[3]!.flags).toBe(PF.PRESENT | PF.WRITE | PF.NX);
    expect(maps[0]!.flags).toBe(PF.PRESENT | PF.USER);
    expect(maps[5]!.flags).toBe(PF.PRESENT | PF.WRITE | PF.GLOBAL);
  });

  it('agrees with referenceTranslate on every page', () => {
    for (const x of referenceMappings(m, opts)) {
      const t = ok(referenceTranslate(m, opts, x.gva + BigInt(x.pageSize) - 1n));
      expect([t.gpa, t.flags, t.pageSize, t.level, t.leaf]).toEqual([x.gpa + BigInt(x.pageSize) - 1n, x.flags, x.pageSize, x.level, x.leaf]);
    }
  });

  it('formats mappings as QEMU info tlb lines, as strings and as ASCII into a buffer', () => {
    const maps = [...referenceMappings(m, opts)];
    const lines = maps.map(qemuTlbLine);
    expect(lines).toEqual([
      '0000000000000000: 0000000000010000 -------U-',
      '0000000000003000: 0000000000013000 -------U-',
      '00000000001ff000: 000000000020f000 -------U-',
      '0000000000200000: 0000000000600000 X-P-----W',
      '0000000040000000: 0000000040000000 --P------',
      'ffffffff80000000: 0000000080000000 -GP-----W',
    ]);
    const buf = new Uint8Array(maps.length * QEMU_TLB_LINE_BYTES + 3).fill(0x7e);
    let at = 1;
    for (const x of maps) at = qemuTlbLineInto(x, buf, at);
    expect(at).toBe(1 + maps.length * QEMU_TLB_LINE_BYTES);
    expect(new TextDecoder().decode(buf)).toBe('~' + lines.map((l) => l + '\n').join('') + '~~');
  });

  it('limits to the pages overlapping [from, to)', () => {
    const gvas = (from: bigint, to: bigint): bigint[] => [...referenceMappings(m, opts, from, to)].map((x) => x.gva);
    expect(gvas(0x1000n, 0x4000n)).toEqual([0x3000n]);
    expect(gvas(0x3fffn, 0x20_0001n)).toEqual([0x3000n, 0x1f_f000n, 0x20_0000n]);
    expect(gvas(0x20_0000n + 12345n, 0x20_0000n + 12346n)).toEqual([0x20_0000n]);
    expect(gvas(0xffff_8000_0000_0000n, 1n << 64n)).toEqual([0xffff_ff80_0000_0000n | (510n << 30n)]);
  });

  it('stays bounded when a translation walks through a loop', () => {
    // PML4 index 5 → the PML4 read as a PDPT; [0] → pdptLo read as a PD; [0] → pd read
    // as a PT; pd[0] (the PT pointer) is then taken as a 4 KiB leaf, as the CPU would.
    const t = ok(referenceTranslate(m, opts, va4(5, 0, 0, 0, 0x10)));
    expect([t.gpa, t.pageSize, t.level]).toEqual([pt | 0x10n, 4096, 1]);
  });
});

describe('AArch64 stage 1, 4 KiB granule', () => {
  const VALID = 1n, TABLE = 3n, PAGE = 3n, BLOCK = 1n;
  const AF = 1n << 10n, NG = 1n << 11n, AP1 = 1n << 6n, AP2 = 1n << 7n, DBM = 1n << 51n, PXN = 1n << 53n, UXN = 1n << 54n;
  const PXNT = 1n << 59n, UXNT = 1n << 60n, APT0 = 1n << 61n, APT1 = 1n << 62n;
  const m = new Mem(32);
  const l0 = m.table(), l1 = m.table(), l2 = m.table(), l3 = m.table();
  m.set(l0, 1, l1 | TABLE);
  m.set(l1, 2, l2 | TABLE);
  m.set(l2, 3, l3 | TABLE);
  m.set(l3, 4, 0x1234_5000n | PAGE | AF | AP1);
  m.set(l3, 5, 0x1234_6000n | BLOCK); // "01" at level 3: reserved/invalid
  m.set(l2, 6, 0x4060_0000n | BLOCK | AF | AP2 | NG | UXN);
  m.set(l1, 7, 0x1_c000_0000n | BLOCK | AF | PXN);
  m.set(l0, 2, 0x80_0000_0000n | BLOCK); // a level-0 block is invalid with the 4 KiB granule
  // TTBR1: its own level-0 table, with hierarchical controls on the way down.
  const h0 = m.table(), h1 = m.table(), h2 = m.table();
  m.set(h0, 511, h1 | TABLE | APT1 | UXNT);
  m.set(h1, 511, h2 | TABLE | APT0 | PXNT);
  m.set(h2, 0, 0x20_0000n | BLOCK | AF | AP1 | DBM);
  const va = (a: number, b: number, c: number, d: number, off = 0): bigint =>
    (BigInt(a) << 39n) | (BigInt(b) << 30n) | (BigInt(c) << 21n) | (BigInt(d) << 12n) | BigInt(off);
  const opts: AddressSpaceOptions = { mode: 'aarch64', root: l0 | (0x42n << 48n), root1: h0 };

  it('walks TTBR0 through levels 0–3 to pages, 2 MiB and 1 GiB blocks', () => {
    expect(ok(referenceTranslate(m, opts, va(1, 2, 3, 4, 0x9ab)))).toMatchObject({
      gpa: 0x1234_59abn, pageSize: 4096, level: 3, flags: PF.PRESENT | PF.WRITE | PF.USER | PF.ACCESSED | PF.GLOBAL,
    });
    expect(ok(referenceTranslate(m, opts, va(1, 2, 6, 0x1ff, 0x10)))).toMatchObject({
      gpa: 0x4060_0000n + 0x1f_f010n, pageSize: 2 << 20, level: 2, flags: PF.PRESENT | PF.ACCESSED | PF.UXN,
    });
    expect(ok(referenceTranslate(m, opts, va(1, 7, 1, 1, 1)))).toMatchObject({
      gpa: 0x1_c020_1001n, pageSize: 1 << 30, level: 1, flags: PF.PRESENT | PF.WRITE | PF.ACCESSED | PF.GLOBAL | PF.PXN,
    });
  });

  it('rejects level-0 blocks, level-3 "01" descriptors and invalid entries', () => {
    expect(fault(referenceTranslate(m, opts, va(2, 0, 0, 0)))).toMatchObject({ reason: 'not-present', level: 0 });
    expect(fault(referenceTranslate(m, opts, va(1, 2, 3, 5)))).toMatchObject({ reason: 'not-present', level: 3 });
    expect(fault(referenceTranslate(m, opts, va(1, 2, 4, 0)))).toMatchObject({ reason: 'not-present', level: 2, entry: 0n });
  });

  it('walks TTBR1 for VA bit 55 and applies APTable/UXNTable/PXNTable', () => {
    const t = ok(referenceTranslate(m, opts, 0xffff_ffff_c000_1234n));
    // AP = 01 (EL1/EL0 read-write) but APTable[1] forbids writes and APTable[0] EL0; DBM with AP[2] clear: dirty.
    expect(t).toMatchObject({ gpa: 0x20_1234n, pageSize: 2 << 20, level: 2 });
    expect(t.flags).toBe(PF.PRESENT | PF.ACCESSED | PF.DIRTY | PF.GLOBAL | PF.UXN | PF.PXN | PF.NX);
    // Without TTBR1 the upper half cannot be walked.
    expect(fault(referenceTranslate(m, { mode: 'aarch64', root: l0 }, 0xffff_ffff_c000_1234n)).reason).toBe('bad-root');
  });

  it('checks the VA against T0SZ/T1SZ', () => {
    expect(fault(referenceTranslate(m, opts, 0x0001_0000_0000_0000n)).reason).toBe('non-canonical');
    expect(fault(referenceTranslate(m, opts, 0xff80_0000_0000_0000n)).reason).toBe('non-canonical');
    expect(fault(referenceTranslate(m, { ...opts, t0sz: 25 }, va(1, 2, 3, 4))).reason).toBe('non-canonical');
  });

  it('starts at level 1 for a 39-bit region and level 2 for a 25-bit one', () => {
    // T0SZ = 25: 39-bit VA, the walk starts at level 1 with the l1 table as root.
    expect(ok(referenceTranslate(m, { mode: 'aarch64', root: l1, t0sz: 25 }, va(0, 2, 3, 4, 8))).gpa).toBe(0x1234_5008n);
    // T0SZ = 39: 25-bit VA, a 16-entry level-2 table.
    const m2 = new Mem(8);
    const t2 = m2.table(), t3 = m2.table();
    m2.set(t2, 15, t3 | TABLE);
    m2.set(t3, 511, 0x7000n | PAGE | AF);
    const r = ok(referenceTranslate(m2, { mode: 'aarch64', root: t2, t0sz: 39 }, 0x1ff_f123n));
    expect(r).toMatchObject({ gpa: 0x7123n, level: 3 });
    expect(fault(referenceTranslate(m2, { mode: 'aarch64', root: t2, t0sz: 39 }, 0x200_0000n)).reason).toBe('non-canonical');
  });

  it('lists TTBR0 mappings before TTBR1 ones', () => {
    const maps: Mapping[] = [...referenceMappings(m, opts)];
    expect(maps.map((x) => [x.gva, x.gpa, x.pageSize])).toEqual([
      [va(1, 2, 3, 4), 0x1234_5000n, 4096],
      [va(1, 2, 6, 0), 0x4060_0000n, 2 << 20],
      [va(1, 7, 0, 0), 0x1_c000_0000n, 1 << 30],
      [0xffff_ffff_c000_0000n, 0x20_0000n, 2 << 20],
    ]);
    for (const x of maps) expect(ok(referenceTranslate(m, opts, x.gva)).flags).toBe(x.flags);
  });
});

describe('bad options', () => {
  const m = new Mem(2);
  it('throws VmkitError for an unknown mode, a bad root or a bad TxSZ', () => {
    const code = (f: () => unknown): string | undefined => {
      try {
        f();
      } catch (e) {
        return e instanceof VmkitError ? e.code : 'not a VmkitError';
      }
      return undefined;
    };
    expect(code(() => referenceTranslate(m, { mode: 'x86' as 'x86-64', root: 0n }, 0n))).toBe('ARG_RANGE');
    expect(code(() => referenceTranslate(m, { mode: 'x86-64', root: -1n }, 0n))).toBe('ARG_RANGE');
    expect(code(() => referenceTranslate(m, { mode: 'aarch64', root: 0n, t0sz: 40 }, 0n))).toBe('ARG_RANGE');
    expect(code(() => referenceTranslate(m, { mode: 'x86-64', root: 0n }, 1n << 64n))).toBe('ARG_RANGE');
  });
});
