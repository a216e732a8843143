/**
 * `vmkit pagetable sample`: a small x86-64 guest memory image with real
 * 4-level page tables, to try `pagetable`, `prefetch` and `checkpoint` on
 * without booting a guest (a real one comes from QEMU's monitor:
 * `pmemsave 0 <ram-size> guest.mem`, with CR3 from `info registers`).
 *
 * ```
 *  physical (32 MiB)                         virtual
 *  0x0020_0000 .. 0x0030_0000  user pages  ← 0x40_0000 + i·4 KiB, i < 256, frame 0x200 + (97·i mod 256)
 *  0x0100_0000 .. 0x0200_0000  "kernel"    ← 0xffff_ffff_8100_0000, 8 × 2 MiB (G, executable)
 *  0x01c0_a000 ..              PML4 (CR3), then PDPTs, PDs, the PT
 *  0x0 .. 1 GiB                direct map  ← 0xffff_8880_0000_0000, one 1 GiB page (XD)
 * ```
 * User pages are scattered physically so virtual and physical neighbours
 * differ (the case `prefetch simulate --policy virtual` is for).
 * @module
 */
import { writeFileSync } from 'node:fs';
import { VmkitError } from '../../errors.js';
import { emit, parse, type CliIO } from '../_common.js';

/**
 * The sample's size, root table and regions (docs and specs quote them).
 * @example
 * ```ts
 * AddressSpace.create({ memory, root: SAMPLE.cr3 });
 * ```
 */
export const SAMPLE: {
  readonly size: number;
  readonly cr3: bigint;
  readonly kernelVa: bigint;
  readonly kernelPa: bigint;
  readonly userVa: bigint;
  readonly userPages: number;
  readonly directMapVa: bigint;
} = {
  size: 32 << 20,
  cr3: 0x1c0a000n,
  kernelVa: 0xffff_ffff_8100_0000n,
  kernelPa: 0x100_0000n,
  userVa: 0x40_0000n,
  userPages: 256,
  directMapVa: 0xffff_8880_0000_0000n,
};

const P = 1n, W = 2n, U = 4n, A = 32n, D = 64n, PS = 128n, G = 256n, XD = 1n << 63n;

/** Physical frame of user page `i` (97 is odd, so i ↦ 97·i mod 256 is a permutation). */
function userFrame(i: number): bigint {
  return 0x200n + BigInt((97 * i) % 256);
}

const idx = (va: bigint, level: number): number => Number((va >> BigInt(12 + 9 * (level - 1))) & 511n);

/**
 * Builds the sample image (see the module comment) in memory.
 * @example
 * ```ts
 * const mem = sampleGuest(); // 32 MiB; CR3 = SAMPLE.cr3
 * ```
 */
export function sampleGuest(): Uint8Array {
  const mem = new Uint8Array(SAMPLE.size);
  const view = new DataView(mem.buffer);
  let next = Number(SAMPLE.cr3) + 4096;
  const frame = (): number => {
    const f = next;
    next += 4096;
    return f;
  };
  const set = (table: number, i: number, v: bigint): void => view.setBigUint64(table + 8 * i, v, true);
  const get = (table: number, i: number): bigint => view.getBigUint64(table + 8 * i, true);
  /** The table under entry `i` of `table`, made when absent. */
  const sub = (table: number, i: number, user: boolean): number => {
    const e = get(table, i);
    if (e & P) return Number(e & 0x000f_ffff_ffff_f000n);
    const f = frame();
    set(table, i, BigInt(f) | P | W | A | (user ? U : 0n));
    return f;
  };
  // Contents first (the tables below overwrite their own frames inside the kernel region).
  for (let i = 0; i < SAMPLE.userPages; i++) {
    const at = Number(userFrame(i)) * 4096;
    mem.fill(i & 0xff, at, at + 4096);
    view.setBigUint64(at, SAMPLE.userVa + BigInt(i) * 4096n, true); // each page names its own address
  }
  const text = new TextEncoder().encode('vmkit sample guest kernel text; ');
  for (let at = Number(SAMPLE.kernelPa); at < Number(SAMPLE.kernelPa) + (1 << 20); at += text.length) mem.set(text.subarray(0, Math.min(text.length, Number(SAMPLE.kernelPa) + (1 << 20) - at)), at);

  const pml4 = Number(SAMPLE.cr3);
  // Kernel text: 8 × 2 MiB, global, executable.
  const kpd = sub(sub(pml4, idx(SAMPLE.kernelVa, 4), false), idx(SAMPLE.kernelVa, 3), false);
  for (let i = 0; i < 8; i++) set(kpd, idx(SAMPLE.kernelVa, 2) + i, (SAMPLE.kernelPa + BigInt(i) * 0x20_0000n) | P | W | A | D | PS | G);
  // Direct map: one 1 GiB page, not executable.
  set(sub(pml4, idx(SAMPLE.directMapVa, 4), false), idx(SAMPLE.directMapVa, 3), P | W | A | D | PS | G | XD);
  // User region: 4 KiB pages.
  const pt = sub(sub(sub(pml4, idx(SAMPLE.userVa, 4), true), idx(SAMPLE.userVa, 3), true), idx(SAMPLE.userVa, 2), true);
  for (let i = 0; i < SAMPLE.userPages; i++) set(pt, idx(SAMPLE.userVa, 1) + i, (userFrame(i) << 12n) | P | W | U | A | D);
  return mem;
}

/**
 * An access trace over the sample: the user region walked twice in virtual
 * order (three accesses a page), then the first 64 pages of kernel text.
 * @example
 * ```ts
 * writeFileSync('trace.txt', sampleTrace());
 * ```
 */
export function sampleTrace(): string {
  const lines: string[] = [];
  for (let pass = 0; pass < 2; pass++) {
    for (let i = 0; i < SAMPLE.userPages; i++) for (const off of [0x10n, 0x800n, 0xff0n]) lines.push((SAMPLE.userVa + BigInt(i) * 4096n + off).toString(16));
  }
  for (let k = 0; k < 64; k++) lines.push((SAMPLE.kernelVa + BigInt(k) * 4096n + 0x40n).toString(16));
  return lines.join('\n') + '\n';
}

function writeNew(path: string, data: Uint8Array | string, force: boolean): void {
  try {
    writeFileSync(path, data, { flag: force ? 'w' : 'wx' });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new VmkitError('CONFLICT', `${path} exists; pass --force to overwrite it`, { path });
    throw new VmkitError(code === 'ENOENT' ? 'NOT_FOUND' : 'IO', `${path}: ${(e as Error).message}`, { path, cause: e });
  }
}

/**
 * Runs `vmkit pagetable sample <memory-image> [--trace <file>] [--force]`.
 * @example
 * ```ts
 * process.exitCode = await sampleCmd(['guest.mem', '--trace', 'trace.txt'], process);
 * ```
 */
export async function sampleCmd(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, { trace: { type: 'string' }, force: { type: 'boolean' } });
  const [out] = positionals;
  if (out === undefined || positionals.length !== 1) throw new VmkitError('ARG_RANGE', 'usage: vmkit pagetable sample <memory-image>; see vmkit pagetable sample --help');
  const force = values.force === true;
  writeNew(out, sampleGuest(), force);
  const trace = typeof values.trace === 'string' ? values.trace : undefined;
  if (trace !== undefined) writeNew(trace, sampleTrace(), force);
  const cr3 = `0x${SAMPLE.cr3.toString(16)}`;
  emit(io, values.json, { image: out, size: SAMPLE.size, mode: 'x86-64', cr3, ...(trace !== undefined ? { trace } : {}) }, () =>
    `wrote ${out}: a ${SAMPLE.size >> 20} MiB x86-64 guest, CR3 ${cr3}${trace !== undefined ? `; trace in ${trace}` : ''}\ntry: vmkit pagetable dump ${out} --cr3 ${cr3}`,
  );
  return 0;
}
