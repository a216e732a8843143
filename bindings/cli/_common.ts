/**
 * Shared pieces of the command-line interface: argument parsing, output
 * (text or `--json`), progress bars on a TTY and error reporting.
 * @module
 */
import type { ParseArgsConfig } from 'node:util';
import { VmkitError } from '../errors.js';

/** Where a command writes. Tests pass their own to capture output. */
export interface CliIO {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
}

/** Runs one subcommand with its arguments (after `vmkit <group> <sub>`); resolves to the exit code. */
export type Runner = (argv: string[], io: CliIO) => Promise<number>;

/**
 * A command group's implementations (`commands/<group>.ts` exports one as
 * `command`), keyed by subcommand name: the same keys as its
 * {@link CommandHelp}, which main.ts checks.
 */
export interface Command {
  run: Record<string, Runner>;
}

/** The help of one subcommand: what `vmkit <group> <sub> --help` prints. */
export interface SubcommandHelp {
  /** One line for the group's help. */
  summary: string;
  /** The synopsis after `vmkit <group> <sub> ` (arguments and options). */
  synopsis: string;
  /** What it does, a few lines (optional). */
  about?: string;
  /** Every option: [flags, description]. `-h, --help` is added when printed. */
  options: readonly (readonly [string, string])[];
  /** One command line that works. */
  example: string;
  /** Exit codes: [code, meaning]. */
  exits: readonly (readonly [number, string])[];
}

/**
 * The help of a command group (`bindings/cli/help/<group>.ts`, which imports
 * nothing heavy, so `--help` loads no format, protocol or core module).
 */
export interface CommandHelp {
  /** One line for `vmkit --help`. */
  summary: string;
  /** Shared notes printed under the group's subcommand list. */
  about?: string;
  subcommands: Record<string, SubcommandHelp>;
}

/** The exit codes most commands share. */
export const EXITS: readonly (readonly [number, string])[] = [
  [0, 'success'],
  [1, 'failure (the error is printed; with --json also as {"error": {code, message}} on stdout)'],
  [2, 'usage error (unknown option, bad value)'],
];

/** `--json` / `--output=json` as printed in every subcommand's options. */
export const JSON_OPTION: readonly [string, string] = ['--json, --output=json', 'machine-readable output (one JSON document on stdout)'];

/**
 * Formats `vmkit <group> <sub> --help`.
 * @example
 * ```ts
 * io.stdout.write(subcommandHelp('disk', 'info', help.subcommands.info!));
 * ```
 */
export function subcommandHelp(group: string, sub: string, h: SubcommandHelp): string {
  const opts = [...h.options, ['-h, --help', 'show this help and exit 0'] as const];
  const w = Math.min(34, Math.max(...opts.map(([f]) => f.length)) + 2);
  const lines = [`Usage: vmkit ${group} ${sub} ${h.synopsis}`, '', h.summary];
  if (h.about) lines.push('', h.about);
  lines.push('', 'Options:');
  for (const [f, d] of opts) lines.push(f.length + 2 > w ? `  ${f}
  ${' '.repeat(w)}${d}` : `  ${f.padEnd(w)}${d}`);
  lines.push('', 'Example:', `  ${h.example}`, '', 'Exit codes:', ...h.exits.map(([c, m]) => `  ${String(c).padEnd(3)} ${m}`));
  return lines.join('\n') + '\n';
}

/**
 * Formats `vmkit <group> --help`: each subcommand's synopsis and summary.
 * @example
 * ```ts
 * io.stdout.write(groupHelp('disk', help));
 * ```
 */
export function groupHelp(group: string, h: CommandHelp): string {
  const lines = [`Usage: vmkit ${group} <subcommand> [options]`, '', h.summary, '', 'Subcommands:'];
  for (const [name, s] of Object.entries(h.subcommands)) lines.push(`  ${name.padEnd(12)} ${s.summary}`);
  if (h.about) lines.push('', h.about);
  lines.push('', `Run vmkit ${group} <subcommand> --help for its options, an example and its exit codes.`);
  return lines.join('\n') + '\n';
}

/**
 * Whether argv asks for help (`--help` or `-h` before a `--`).
 * @example
 * ```ts
 * wantsHelp(['vm.qcow2', '--help']); // true
 * ```
 */
export function wantsHelp(argv: readonly string[]): boolean {
  for (const a of argv) {
    if (a === '--') return false;
    if (a === '--help' || a === '-h') return true;
  }
  return false;
}

/**
 * Whether argv asks for JSON output (`--json`, `--output=json`, `--output json`), for error reports.
 * @example
 * ```ts
 * wantsJson(['--output=json']); // true
 * ```
 */
export function wantsJson(argv: readonly string[]): boolean {
  return argv.some((a, i) => a === '--json' || a === '--output=json' || (a === '--output' && argv[i + 1] === 'json'));
}

type Options = NonNullable<ParseArgsConfig['options']>;

/**
 * parseArgs with vmkit's conventions: unknown options are a usage error
 * (VmkitError ARG_RANGE); `--json`, `--output=json|human` (qemu-img's
 * spelling; sets `json`) and `--help` always allowed.
 * @example
 * ```ts
 * const { values, positionals } = parse(argv, { force: { type: 'boolean' } });
 * ```
 */
export function parse<O extends Options>(
  argv: string[],
  options: O,
): { values: Record<string, string | boolean | string[] | undefined> & { json?: boolean; help?: boolean }; positionals: string[] } {
  let r: { values: Record<string, unknown>; positionals: string[] };
  const all: Options = { json: { type: 'boolean' }, output: { type: 'string' }, help: { type: 'boolean', short: 'h' }, ...options };
  try {
    // Through getBuiltinModule, not the ES loader (start-up: main.ts).
    r = process.getBuiltinModule('node:util').parseArgs({ args: argv, options: all, allowPositionals: true, strict: true });
  } catch (e) {
    // An unknown option lists the known ones (the help spec also reads this list).
    const known = (e as NodeJS.ErrnoException).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' ? ` (options: ${Object.keys(all).map((k) => `--${k}`).join(', ')})` : '';
    throw new VmkitError('ARG_RANGE', `${(e as Error).message.split('. To specify')[0]}${known}`, { cause: e });
  }
  const values = r.values as Record<string, string | boolean | string[] | undefined> & { json?: boolean };
  if (values.output !== undefined && !('output' in options)) {
    if (values.output === 'json') values.json = true;
    else if (values.output !== 'human') throw new VmkitError('ARG_RANGE', `--output must be json or human, got ${JSON.stringify(values.output)}`);
    else if (values.json) throw new VmkitError('ARG_RANGE', '--output=human and --json contradict each other');
    delete values.output;
  }
  return { values, positionals: r.positionals };
}

/** Parses an integer argument (decimal or 0x hex, `_` allowed) as a bigint; names the option on error. */
export function parseU64(text: string | undefined, name: string): bigint {
  if (text === undefined) throw new VmkitError('ARG_RANGE', `${name} is required`);
  const t = text.replace(/_/g, '').trim();
  if (!/^(0x[0-9a-f]+|[0-9]+)$/i.test(t)) throw new VmkitError('ARG_RANGE', `${name} must be an integer (decimal or 0x hex), got ${JSON.stringify(text)}`);
  const v = BigInt(t);
  if (v > 0xffff_ffff_ffff_ffffn) throw new VmkitError('ARG_RANGE', `${name} does not fit in 64 bits: ${text}`);
  return v;
}

/** Parses a byte size: an integer with an optional K/M/G/T suffix (powers of 1024). */
export function parseSize(text: string | undefined, name: string): number {
  if (text === undefined) throw new VmkitError('ARG_RANGE', `${name} is required`);
  const m = /^(\d+)([kmgt]i?b?)?$/i.exec(text.trim());
  if (!m) throw new VmkitError('ARG_RANGE', `${name} must be a size like 4096, 64K, 10G; got ${JSON.stringify(text)}`);
  const mult = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[(m[2] ?? '').charAt(0).toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  const v = Number(m[1]) * mult;
  if (!Number.isSafeInteger(v)) throw new VmkitError('ARG_RANGE', `${name} is too large: ${text}`);
  return v;
}

/** Writes a result: JSON (one document, newline-terminated) or text lines. */
export function emit(io: CliIO, json: boolean | undefined, value: unknown, text: () => string): void {
  if (json) io.stdout.write(JSON.stringify(value, jsonReplacer, 2) + '\n');
  else io.stdout.write(text().replace(/\n?$/, '\n'));
}

/** JSON.stringify replacer: bigints as decimal strings, typed arrays as lengths. */
export function jsonReplacer(_k: string, v: unknown): unknown {
  if (typeof v === 'bigint') return v.toString();
  if (v instanceof Uint8Array) return { bytes: v.length };
  return v;
}

/**
 * A progress bar drawn on stderr when it is a TTY (and never with --json):
 * bytes done of the total, the rate over the whole run and the time left at
 * that rate. Elsewhere it does nothing, so pipes and CI logs stay clean.
 * @example
 * ```ts
 * const bar = new Progress(io, 'backup');
 * bar.update(done, total); // bytes
 * bar.done();
 * ```
 */
export class Progress {
  private readonly on: boolean;
  private last = 0;
  private readonly started = Date.now();
  private readonly io: CliIO;
  private readonly label: string;
  private total: number;
  constructor(io: CliIO, label: string, total: number = 0, enabled: boolean = true) {
    this.io = io;
    this.label = label;
    this.total = total;
    this.on = enabled && io.stderr.isTTY === true;
  }
  /** `done` bytes of `total` (default: the total given before); redraws at most every 100 ms. */
  update(done: number, total: number = this.total): void {
    this.total = total;
    if (!this.on || total <= 0) return;
    const now = Date.now();
    if (now - this.last < 100 && done < total) return;
    this.last = now;
    this.io.stderr.write(`\r${progressLine(this.label, done, total, now - this.started)}\x1b[K`);
  }
  /** Clears the bar. */
  done(): void {
    if (this.on) this.io.stderr.write('\r\x1b[K');
  }
}

/**
 * One progress line: `label [####----] 42.0% 84.0 MiB / 200.0 MiB, 1.2 GiB/s, ETA 0:03`.
 * The rate is bytes done over the time elapsed; the ETA is what is left at that rate.
 * @example
 * ```ts
 * progressLine('backup', 100 << 20, 200 << 20, 500); // "... 50.0% 100.0 MiB / 200.0 MiB, 200.0 MiB/s, ETA 0:01"
 * ```
 */
export function progressLine(label: string, done: number, total: number, elapsedMs: number): string {
  const frac = total > 0 ? Math.min(1, done / total) : 1;
  const width = 30;
  const fill = Math.round(frac * width);
  const rate = elapsedMs > 0 ? (done * 1000) / elapsedMs : 0;
  const eta = rate > 0 ? formatDuration(Math.max(0, total - done) / rate) : '?';
  return `${label} [${'#'.repeat(fill)}${'-'.repeat(width - fill)}] ${(frac * 100).toFixed(1)}% ${formatBytes(done)} / ${formatBytes(total)}, ${formatBytes(rate)}/s, ETA ${eta}`;
}

/** 75.2 → "1:15"; 3725 → "1:02:05". */
function formatDuration(seconds: number): string {
  const s = Math.ceil(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

/** 1536 → "1.5 KiB". */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n.toFixed(0) : n.toFixed(1)} ${units[i]}`;
}
