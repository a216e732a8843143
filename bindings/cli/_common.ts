/**
 * Shared pieces of the command-line interface: argument parsing, output
 * (text or `--json`), progress bars on a TTY and error reporting.
 * @module
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { VmkitError } from '../errors.js';

/** Where a command writes. Tests pass their own to capture output. */
export interface CliIO {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
}

/** A subcommand group (`vmkit disk …`, `vmkit pagetable …`). */
export interface Command {
  /** One line for `vmkit --help`. */
  summary: string;
  /** Full usage text for `vmkit <name> --help`. */
  usage: string;
  /** Runs the command; resolves to the process exit code. */
  run(argv: string[], io: CliIO): Promise<number>;
}

type Options = NonNullable<ParseArgsConfig['options']>;

/**
 * parseArgs with vmkit's conventions: unknown options are a usage error
 * (VmkitError ARG_RANGE), `--json` and `--help` always allowed.
 */
export function parse<O extends Options>(
  argv: string[],
  options: O,
): { values: Record<string, string | boolean | string[] | undefined> & { json?: boolean; help?: boolean }; positionals: string[] } {
  try {
    const r = parseArgs({
      args: argv,
      options: { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' }, ...options },
      allowPositionals: true,
      strict: true,
    });
    return { values: r.values as Record<string, string | boolean | string[] | undefined>, positionals: r.positionals };
  } catch (e) {
    throw new VmkitError('ARG_RANGE', (e as Error).message, { cause: e });
  }
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
 * A progress bar drawn on stderr when it is a TTY (and never with --json);
 * elsewhere it does nothing, so pipes and CI logs stay clean.
 */
export class Progress {
  private readonly on: boolean;
  private last = 0;
  private readonly started = Date.now();
  private readonly io: CliIO;
  private readonly label: string;
  private readonly total: number;
  constructor(io: CliIO, label: string, total: number, enabled: boolean = true) {
    this.io = io;
    this.label = label;
    this.total = total;
    this.on = enabled && io.stderr.isTTY === true && total > 0;
  }
  /** Redraws at most every 100 ms. */
  update(done: number): void {
    if (!this.on) return;
    const now = Date.now();
    if (now - this.last < 100 && done < this.total) return;
    this.last = now;
    const frac = Math.min(1, done / this.total);
    const width = 30;
    const fill = Math.round(frac * width);
    const secs = (now - this.started) / 1000;
    const rate = secs > 0 ? done / secs : 0;
    this.io.stderr.write(
      `\r${this.label} [${'#'.repeat(fill)}${'-'.repeat(width - fill)}] ${(frac * 100).toFixed(1)}% ${formatBytes(rate)}/s `,
    );
  }
  /** Clears the bar. */
  done(): void {
    if (this.on) this.io.stderr.write('\r\x1b[K');
  }
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
