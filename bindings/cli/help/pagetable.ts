/**
 * Help of `vmkit pagetable …` (no imports beyond types: `--help` loads nothing else).
 * @module
 */
import { EXITS, JSON_OPTION, type CommandHelp } from '../_common.js';

const WALK: readonly (readonly [string, string])[] = [
  ['--cr3 <addr>', 'the root table (CR3; for aarch64 TTBR0_EL1), decimal or 0x hex'],
  ['--mode x86-64|x86-64-5level|aarch64', 'paging mode (default x86-64)'],
  ['--ttbr1 <addr>', 'aarch64: TTBR1_EL1'],
  ['--t0sz N, --t1sz N', 'aarch64: TCR_EL1.T0SZ/T1SZ (default 16)'],
  ['--no-nxe', 'treat XD as a reserved bit (EFER.NXE clear)'],
  ['--engine core|reference', 'walk with the wasm core (default) or the plain-TypeScript reference'],
  ['--cpu N', 'a checkpoint imported from a VM: the vCPU whose CR3/CR4/EFER give root and mode (default 0)'],
];

/**
 * The `pagetable` group's help.
 * @example
 * ```ts
 * console.log(help.subcommands.dump!.synopsis);
 * ```
 */
export const help: CommandHelp = {
  summary: 'walk guest page tables in a memory image (dump like QEMU info tlb, translate); make a sample',
  about: `A memory image is raw guest-physical memory, as QEMU's monitor writes it with
\`pmemsave 0 <ram-size> guest.mem\`; \`info registers\` shows the CR3 to pass. \`vmkit pagetable sample\`
makes a small one (with its CR3) to try the commands on. A checkpoint imported from a QEMU VM
(\`vmkit checkpoint import\`) can stand for the image without --cr3 and --mode: its vCPU state gives both
(5-level when CR4.LA57), and its pages are read lazily.`,
  subcommands: {
    dump: {
      summary: "every mapped page, large pages once, in VA order (QEMU's info tlb lines or JSON)",
      synopsis: '<memory-image> --cr3 <addr> [--mode MODE] [--format qemu|json] [--limit N]',
      about: `--format qemu (x86 default) prints QEMU's 'info tlb' lines; --format json (aarch64 default) one object per
mapping. Entries with reserved bits and tables outside the image or looping back are skipped.`,
      options: [
        ...WALK,
        ['--format qemu|json', "output: QEMU's info tlb lines or JSON"],
        ['--limit N', 'stop after N mappings'],
        ['--json, --output=json', 'the same as --format json'],
      ],
      example: 'vmkit pagetable dump guest.mem --cr3 0x1c0a000 --format qemu',
      exits: EXITS,
    },
    translate: {
      summary: 'guest-physical address, page size and flags of each guest-virtual address',
      synopsis: '<memory-image> --cr3 <addr> [--mode MODE] [--json] <gva>...',
      options: [...WALK, JSON_OPTION],
      example: 'vmkit pagetable translate guest.mem --cr3 0x1c0a000 0xffffffff81000000',
      exits: [[0, 'every address translated'], [1, 'an address faulted (where and why is printed), or failure'], [2, 'usage error']],
    },
    sample: {
      summary: 'write a small x86-64 guest memory image with page tables; print its CR3',
      synopsis: '<memory-image> [--trace <file>] [--force] [--json]',
      about: `The image is 32 MiB: the kernel text at 0xffffffff81000000 in 2 MiB pages, a user region at 0x400000
in 4 KiB pages scattered over physical memory, a 1 GiB-page direct map at 0xffff888000000000, with CR3
0x1c0a000. --trace writes an access trace over them for \`vmkit prefetch simulate\`.`,
      options: [['--trace <file>', 'also write an access trace (one hex address per line)'], ['--force', 'overwrite existing files'], JSON_OPTION],
      example: 'vmkit pagetable sample guest.mem --trace trace.txt',
      exits: EXITS,
    },
  },
};
