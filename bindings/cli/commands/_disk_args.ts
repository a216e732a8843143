/**
 * Arguments the `vmkit disk` subcommands share: the image format names and
 * the `-f/--format` (the input's format, as qemu-img -f) and
 * `-F/--backing-format` options.
 * @module
 */
import { VmkitError } from '../../errors.js';
import type { FormatName } from '../../disk/formats/types.js';

/** The image formats, as `--format` takes them. */
export const FORMATS: readonly FormatName[] = ['qcow2', 'vmdk', 'raw', 'vhd', 'vhdx'];

/**
 * `-f/--format` (the input's format) and `-F/--backing-format`, shared by the commands that open a chain.
 * @example
 * ```ts
 * parse(argv, { ...INPUT_FORMAT_OPTIONS, force: { type: 'boolean' } });
 * ```
 */
export const INPUT_FORMAT_OPTIONS = {
  format: { type: 'string', short: 'f' },
  'backing-format': { type: 'string', short: 'F' },
} as const;

/**
 * `--format`/`--backing-format` values checked against the format names.
 * @example
 * ```ts
 * const format = formatOpt(values.format, '--format'); // 'qcow2' | 'vmdk' | 'raw' | undefined
 * ```
 */
export function formatOpt(v: unknown, name: string): FormatName | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !(FORMATS as readonly string[]).includes(v)) {
    throw new VmkitError('ARG_RANGE', `${name} must be one of ${FORMATS.join(', ')}, got ${JSON.stringify(v)}`);
  }
  return v as FormatName;
}

