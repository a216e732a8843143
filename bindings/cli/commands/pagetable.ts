/**
 * `vmkit pagetable dump|translate`: walk a guest's page tables inside a raw
 * guest-physical memory image (as QEMU's `pmemsave` writes it).
 *
 * `dump --format qemu` prints what QEMU's monitor prints for `info tlb` on
 * x86-64 (target/i386/monitor.c `print_pte`), so the two can be diffed:
 * ```
 *  ffffffffff5fd000: 00000000fee00000 XG-DACT-W
 *  └ VA, sign-extended └ PA = leaf & frame mask (bits 49..12/21/30)
 *                                     └ leaf's own bits: XD G PS D A PCD PWT U/S R/W
 * ```
 * One line per present leaf, large pages once, in VA order; PS ("P") only for
 * 2 MiB and 1 GiB pages (bit 7 of a 4 KiB PTE is PAT, which QEMU masks).
 * @module
 */
import { once, type EventEmitter } from 'node:events';
import { VmkitError } from '../../errors.js';
import { AddressSpace } from '../../memory/paging/address-space.js';
import { referenceMappings, referenceTranslate } from '../../memory/paging/reference.js';
import { QEMU_TLB_LINE_BYTES, qemuTlbLineInto } from '../../memory/paging/qemu.js';
import { PAGING_MODES, PF } from '../../memory/paging/types.js';
import type { AddressSpaceOptions, Mapping, PagingMode, Translation, TranslationFault } from '../../memory/paging/types.js';
import type { GuestMemorySource } from '../../memory/types.js';
import { emit, parse, parseU64, type CliIO, type Command } from '../_common.js';
import { _openGuest } from './_guest_source.js';

/** Address-space options from the command line. */
function _options(values: Record<string, string | boolean | string[] | undefined>): AddressSpaceOptions {
  const mode = ((values.mode as string | undefined) ?? 'x86-64') as PagingMode;
  if (!PAGING_MODES.includes(mode)) throw new VmkitError('ARG_RANGE', `--mode must be one of ${PAGING_MODES.join(', ')}, got ${mode}`);
  const opts: AddressSpaceOptions = { mode, root: parseU64(values.cr3 as string | undefined, '--cr3') };
  if (values['no-nxe']) opts.nxe = false;
  if (mode === 'aarch64') {
    if (values.ttbr1 !== undefined) opts.root1 = parseU64(values.ttbr1 as string, '--ttbr1');
    if (values.t0sz !== undefined) opts.t0sz = Number(parseU64(values.t0sz as string, '--t0sz'));
    if (values.t1sz !== undefined) opts.t1sz = Number(parseU64(values.t1sz as string, '--t1sz'));
  } else if (values.ttbr1 !== undefined || values.t0sz !== undefined || values.t1sz !== undefined) {
    throw new VmkitError('ARG_RANGE', '--ttbr1, --t0sz and --t1sz apply to --mode aarch64 only');
  }
  return opts;
}

const OPTIONS = {
  cr3: { type: 'string' },
  mode: { type: 'string' },
  ttbr1: { type: 'string' },
  t0sz: { type: 'string' },
  t1sz: { type: 'string' },
  'no-nxe': { type: 'boolean' },
  engine: { type: 'string' },
  cpu: { type: 'string' },
} as const;

/** What the commands need of a walker: the core's AddressSpace or the reference. */
interface _Walker {
  translate(gva: bigint): Translation | TranslationFault;
  mappings(): Iterable<Mapping>;
  dispose(): void;
}

function _walker(memory: GuestMemorySource, opts: AddressSpaceOptions, engine: string | boolean | string[] | undefined): _Walker {
  if (engine === undefined || engine === 'core') {
    const space = AddressSpace.create({ memory, ...opts });
    return { translate: (g) => space.translate(g), mappings: () => space.mappings(), dispose: () => space.dispose() };
  }
  if (engine === 'reference') {
    return { translate: (g) => referenceTranslate(memory, opts, g), mappings: () => referenceMappings(memory, opts), dispose: () => {} };
  }
  throw new VmkitError('ARG_RANGE', `--engine must be core or reference, got ${String(engine)}`);
}

const hex16 = (v: bigint): string => v.toString(16).padStart(16, '0');

/** Names of the effective flags, for text and JSON output. */
function _flagNames(flags: number): string[] {
  return Object.entries(PF)
    .filter(([, v]) => flags & v)
    .map(([k]) => k.toLowerCase());
}

const hex = (v: bigint): string => `0x${v.toString(16)}`;

function _mappingJson(m: Mapping): object {
  return { gva: hex(m.gva), gpa: hex(m.gpa), pageSize: m.pageSize, level: m.level, flags: _flagNames(m.flags), leaf: hex(m.leaf) };
}

function _translationJson(t: Translation | TranslationFault): object {
  return t.ok
    ? { gva: hex(t.gva), ok: true, gpa: hex(t.gpa), pageSize: t.pageSize, level: t.level, flags: _flagNames(t.flags), leaf: hex(t.leaf) }
    : { gva: hex(t.gva), ok: false, reason: t.reason, level: t.level, ...(t.entry === undefined ? {} : { entry: hex(t.entry) }) };
}

/**
 * Writes a chunk, waiting for the reader when the stream's buffer is full (a
 * dump can be far larger than memory: tables shared across many entries).
 * Resolves to false when the reader is gone (a pipe closed by `| head`).
 */
async function _out(io: CliIO, chunk: string | Uint8Array): Promise<boolean> {
  if (io.stdout.write(chunk)) return true;
  try {
    await once(io.stdout as unknown as EventEmitter, 'drain');
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EPIPE' || code === 'ERR_STREAM_DESTROYED') return false;
    throw e;
  }
}

/** A root register outside the image makes an empty dump; say so instead. */
function _checkRoots(memory: GuestMemorySource, opts: AddressSpaceOptions, image: string): void {
  const probes = opts.mode !== 'aarch64' ? [0n] : opts.root1 === undefined ? [0n] : [0n, 0xffff_ffff_ffff_ffffn];
  for (const gva of probes) {
    const t = referenceTranslate(memory, opts, gva);
    if (!t.ok && t.reason === 'bad-root') {
      const name = opts.mode !== 'aarch64' ? '--cr3' : gva ? '--ttbr1' : '--cr3 (TTBR0)';
      throw new VmkitError('ARG_RANGE', `${name} does not point at a table inside ${image} (${memory.size} bytes)`, { path: image });
    }
  }
}

async function dump(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, { ...OPTIONS, format: { type: 'string' }, limit: { type: 'string' } });
  const [image, ...extra] = positionals;
  if (!image || extra.length) throw new VmkitError('ARG_RANGE', 'dump needs exactly one <memory-image>');
  const { memory, opts } = await _openGuest(image, values, _options);
  const format = (values.format as string | undefined) ?? (values.json ? 'json' : opts.mode === 'aarch64' ? 'json' : 'qemu');
  if (format !== 'qemu' && format !== 'json' || (format === 'qemu' && opts.mode === 'aarch64')) memory.close();
  if (format !== 'qemu' && format !== 'json') throw new VmkitError('ARG_RANGE', `--format must be qemu or json, got ${format}`);
  if (format === 'qemu' && opts.mode === 'aarch64') throw new VmkitError('ARG_RANGE', '--format qemu is QEMU\'s x86 "info tlb"; use --format json for aarch64');
  // `vmkit pagetable dump … | head` closes the pipe early: that is not an error worth a stack trace.
  io.stdout.on?.('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE' && e.code !== 'ERR_STREAM_DESTROYED') throw e;
  });
  let walker: _Walker | undefined;
  try {
    _checkRoots(memory, opts, image);
    walker = _walker(memory, opts, values.engine);
    let left = values.limit === undefined ? Infinity : Number(parseU64(values.limit as string, '--limit'));
    const maps = walker.mappings();
    if (format === 'qemu') {
      // ASCII straight into fresh buffers (a written buffer may still be queued on a pipe).
      const per = 8192;
      let buf = new Uint8Array(per * QEMU_TLB_LINE_BYTES);
      let at = 0;
      for (const m of maps) {
        if (left-- <= 0) break;
        at = qemuTlbLineInto(m, buf, at);
        if (at === buf.length) {
          if (!(await _out(io, buf))) return 0;
          buf = new Uint8Array(per * QEMU_TLB_LINE_BYTES);
          at = 0;
        }
      }
      if (at) await _out(io, buf.subarray(0, at));
    } else {
      // One JSON array, one mapping per line (each line waits for the next to know its comma).
      let chunk = '[\n';
      let prev: string | undefined;
      for (const m of maps) {
        if (left-- <= 0) break;
        if (prev !== undefined) chunk += `  ${prev},\n`;
        prev = JSON.stringify(_mappingJson(m));
        if (chunk.length >= 1 << 20) {
          if (!(await _out(io, chunk))) return 0;
          chunk = '';
        }
      }
      await _out(io, chunk + (prev === undefined ? '' : `  ${prev}\n`) + ']\n');
    }
  } finally {
    walker?.dispose();
    memory.close();
  }
  return 0;
}

async function translate(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, OPTIONS);
  const [image, ...gvas] = positionals;
  if (!image || gvas.length === 0) throw new VmkitError('ARG_RANGE', 'translate needs <memory-image> and at least one <gva>');
  const addrs = gvas.map((g, i) => parseU64(g, `gva #${i + 1}`));
  const { memory, opts } = await _openGuest(image, values, _options);
  let results: (Translation | TranslationFault)[];
  let walker: _Walker | undefined;
  try {
    walker = _walker(memory, opts, values.engine);
    results = addrs.map((a) => walker!.translate(a));
  } finally {
    walker?.dispose();
    memory.close();
  }
  emit(io, values.json, results.map(_translationJson), () =>
    results
      .map((t) =>
        t.ok
          ? `${hex16(t.gva)}: ${hex16(t.gpa)} ${t.pageSize >= 1 << 30 ? '1G' : t.pageSize >= 2 << 20 ? '2M' : '4K'} ${_flagNames(t.flags).join(',')}`
          : `${hex16(t.gva)}: fault ${t.reason} at level ${t.level}${t.entry === undefined ? '' : ` (entry ${hex16(t.entry)})`}`,
      )
      .join('\n'),
  );
  return results.every((t) => t.ok) ? 0 : 1;
}

/**
 * The `vmkit pagetable` command group (help: help/pagetable.ts).
 *
 * @example
 * ```sh
 * vmkit pagetable dump mem.bin --cr3 0x2a38000 --format qemu > tlb.txt
 * vmkit pagetable translate mem.bin --cr3 0x2a38000 0xffffffff81000000 --json
 * ```
 */
export const command: Command = {
  run: {
    dump,
    translate,
    async sample(argv: string[], io: CliIO): Promise<number> {
      return (await import('./_sample_guest.js')).sampleCmd(argv, io);
    },
  },
};
