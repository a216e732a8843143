/**
 * Help of `vmkit prefetch …` (no imports beyond types: `--help` loads nothing else).
 * @module
 */
import { EXITS, JSON_OPTION, type CommandHelp } from '../_common.js';

/**
 * The `prefetch` group's help.
 * @example
 * ```ts
 * console.log(help.subcommands.simulate!.synopsis);
 * ```
 */
export const help: CommandHelp = {
  summary: 'simulate fault-time prefetch policies on a guest image and an access trace',
  subcommands: {
    simulate: {
      summary: "replay a trace against the image restored lazily under one policy; report faults, hits, waste",
      synopsis: '<memory-image> --cr3 <addr> --trace <file> --policy POLICY [--mode MODE] [--back N] [--ahead N] [--record <file>] [--translate walk|table] [--json]',
      about: `<memory-image> is a raw guest-physical image or a vmkit checkpoint (then reads are counted per storage
block; one imported from a QEMU VM needs no --cr3/--mode: vCPU 0's state gives them). Every page starts absent; a fault loads what the policy picks, coalesced into runs (one read each).`,
      options: [
        ['--cr3 <addr>', 'the root table (CR3; aarch64: TTBR0_EL1)'],
        ['--trace <file>', 'one hex guest-virtual address per line, or valgrind lackey --trace-mem=yes output'],
        ['--policy POLICY', 'none | physical | virtual | adaptive | replay | replay+virtual'],
        ['--mode MODE', 'x86-64 (default), x86-64-5level or aarch64'],
        ['--back N, --ahead N', 'the window in pages (default 8 and 8; adaptive grows from --ahead up to 256)'],
        ['--record <file>', "replay policies: the recorded working set; others: write this run's working set there"],
        ['--translate walk|table', "walk: the core's page-table walker (default); table: all mappings into the engine's table first"],
        JSON_OPTION,
      ],
      example: 'vmkit prefetch simulate guest.mem --cr3 0x1c0a000 --trace trace.txt --policy adaptive --json',
      exits: EXITS,
    },
  },
};
