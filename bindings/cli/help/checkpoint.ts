/**
 * Help of `vmkit checkpoint …` (no imports beyond types: `--help` loads nothing else).
 * @module
 */
import { EXITS, JSON_OPTION, type CommandHelp } from '../_common.js';

/**
 * The `checkpoint` group's help.
 * @example
 * ```ts
 * console.log(help.subcommands.save!.synopsis);
 * ```
 */
export const help: CommandHelp = {
  summary: 'save, restore and inspect memory checkpoints (LZ4 blocks, lazy reads)',
  about: `A memory image is raw guest-physical memory, as QEMU's pmemsave writes it (or \`vmkit pagetable sample\` makes one).
restore, inspect and read-page also take an http(s) URL for <checkpoint> (nginx, an S3-compatible gateway, a CDN:
any server that honours Range): the header, footer and index are read once, then pages on demand.
For a URL, --cache-dir <dir> keeps fetched ranges in a bounded local cache (--cache-max SIZE, default 1G) and --sigv4
signs the requests (AWS SigV4) with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY[, AWS_SESSION_TOKEN, AWS_REGION].`,
  subcommands: {
    save: {
      summary: 'write a raw guest memory image as a checkpoint',
      synopsis: '<memory-image> <checkpoint> [--block-size BYTES] [--codec lz4|none] [--threads N] [--parent <checkpoint> [--dirty <bitmap>]] [--force] [--json]',
      about: `Zero pages go to the index only, others are LZ4-compressed into storage blocks, one write per block.
With --parent it writes a diff checkpoint holding the pages the dirty bitmap marks (bit p%8 of byte p/8)
or, without --dirty, the pages that differ from the parent. An existing <checkpoint> is refused unless --force.
An http(s) URL for <checkpoint> uploads it with PUT as 8 MiB parts (<url>.parts/N) while saving, then a manifest
at <url> (docs/checkpoint-format.md, "Remote writing"); restore, inspect and read-page read such a URL through its parts.`,
      options: [
        ['--block-size BYTES', 'storage block size (default 1M; K/M suffixes)'],
        ['--codec lz4|none', 'page compression (default lz4)'],
        ['--threads N', 'compress a full save on N worker threads (the same file as 1 thread)'],
        ['--parent <checkpoint>', 'write a diff checkpoint on this parent'],
        ['--dirty <bitmap-file>', 'with --parent: the pages to write, one bit per page'],
        ['--force', 'overwrite an existing <checkpoint>'],
        ['--store <dir|url>', 'save into a shared page store (a directory, or a URL that allows PUT) as checkpoint <name> (the second argument): each distinct 64 KiB frame once, by SHA-256'],
        JSON_OPTION,
      ],
      example: 'vmkit checkpoint save guest.mem vm.ckpt',
      exits: EXITS,
    },
    restore: {
      summary: 'write the full memory image back (following the parent chain)',
      synopsis: '<checkpoint> <memory-image> [--force] [--cache-dir <dir> [--cache-max SIZE]] [--sigv4] [--json]',
      about: 'An existing <memory-image> is refused unless --force.',
      options: [['--force', 'overwrite an existing <memory-image>'], ['--store <dir|url>', 'restore checkpoint <name> (the first argument) from a shared page store'], ['--cache-dir <dir>', 'for a URL: keep fetched ranges in this local cache'], ['--cache-max SIZE', 'bound of --cache-dir (default 1G)'], ['--sigv4', 'for a URL: sign requests with the AWS_* credentials'], JSON_OPTION],
      example: 'vmkit checkpoint restore vm.ckpt restored.mem',
      exits: EXITS,
    },
    inspect: {
      summary: 'pages, zero pages, stored pages, blocks, file bytes, chain',
      synopsis: '<checkpoint> [--cache-dir <dir> [--cache-max SIZE]] [--sigv4] [--json]',
      options: [['--cache-dir <dir>', 'for a URL: keep fetched ranges in this local cache'], ['--cache-max SIZE', 'bound of --cache-dir (default 1G)'], ['--sigv4', 'for a URL: sign requests with the AWS_* credentials'], JSON_OPTION],
      example: 'vmkit checkpoint inspect vm.ckpt --json',
      exits: EXITS,
    },
    'read-page': {
      summary: 'the raw page holding a guest-physical address',
      synopsis: '<checkpoint> <gpa> [-o <file> [--force]] [--cache-dir <dir> [--cache-max SIZE]] [--sigv4] [--json]',
      about: `Writes the page's bytes to -o <file> or to a redirected stdout; binary is never written to a terminal.
With --json prints {gpa, page, pageSize, hex} instead.`,
      options: [['-o, --out <file>', 'write the page to <file>'], ['--force', 'overwrite an existing -o <file>'], ['--cache-dir <dir>', 'for a URL: keep fetched ranges in this local cache'], ['--cache-max SIZE', 'bound of --cache-dir (default 1G)'], ['--sigv4', 'for a URL: sign requests with the AWS_* credentials'], ['--json, --output=json', 'the page as JSON (hex) on stdout']],
      example: 'vmkit checkpoint read-page vm.ckpt 0x1000 -o page.bin',
      exits: EXITS,
    },
    import: {
      summary: 'a QEMU migration stream (a whole VM) as a checkpoint',
      synopsis: '<vm.mig|-> <checkpoint> [--parent <checkpoint>] [--block-size BYTES] [--codec lz4|none] [--search dense|fast] [--max-ram BYTES] [--json]',
      about: `Reads QEMU's migration stream (migrate "exec:cat > vm.mig"), or stdin with - (migrate "exec:vmkit checkpoint
import - vm.ckpt", one pass in bounded memory): RAM pages become the checkpoint's pages, device state and the vmdesc
are kept byte for byte, vCPU paging registers (CR0, CR3, CR4, EFER) go to its metadata. Written to a temporary name
and renamed when complete (QEMU may report the migration completed a moment before the file appears); a bad stream
is refused naming the section and byte offset.`,
      options: [
        ['--parent <checkpoint>', 'write a diff checkpoint: only the pages that differ from this one (an earlier import of the VM)'],
        ['--block-size BYTES', 'storage block size (default 1M)'],
        ['--codec lz4|none', 'page compression (default lz4)'],
        ['--search dense|fast', "LZ4's page search: dense (default; LZ4HC-like, ~7% smaller, ~4x the compression CPU) or fast"],
        ['--max-ram BYTES', 'refuse a stream declaring more guest RAM (default 64G; bounds the page index)'],
        JSON_OPTION,
      ],
      example: 'vmkit checkpoint import vm.mig vm.ckpt',
      exits: EXITS,
    },
    export: {
      summary: 'the QEMU migration stream of an imported checkpoint',
      synopsis: '<checkpoint> <vm.mig|-> [--threads N|auto] [--json]',
      about: `Writes a stream QEMU loads with -incoming: to a file, or to stdout with -. A diff checkpoint exports its full view.
--threads N decompresses pages on N threads. auto (the default) takes 2 when more than one core is free (cores less the 1-minute load average), else 1: on a machine whose cores QEMU's load already uses, 1 is faster.`,
      options: [['--threads N|auto', 'threads decompressing pages, this one included (default auto: 2 with more than one free core, else 1)'], ['--json, --output=json', 'report bytes and pages written (file output only)']],
      example: 'qemu-system-x86_64 … -incoming "exec:vmkit checkpoint export vm.ckpt -"',
      exits: EXITS,
    },
    gc: {
      summary: 'delete the frames of a shared page store that no checkpoint uses',
      synopsis: '--store <dir|url> [--json]',
      about: 'Mark and sweep under gc.lock; safe while saves run (docs/checkpoint-format.md, "Shared page store").',
      options: [['--store <dir>', 'the page store'], JSON_OPTION],
      example: 'vmkit checkpoint gc --store /var/lib/vmkit/store',
      exits: EXITS,
    },
  },
};
