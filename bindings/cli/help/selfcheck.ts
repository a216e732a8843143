/**
 * Help of `vmkit selfcheck …` (no imports beyond types: `--help` loads nothing else).
 * @module
 */
import { JSON_OPTION, type CommandHelp } from '../_common.js';

/**
 * The `selfcheck` group's help.
 * @example
 * ```ts
 * console.log(help.subcommands.run!.summary);
 * ```
 */
export const help: CommandHelp = {
  summary: 'run the wasm core self-check',
  subcommands: {
    run: {
      summary: 'run every module check built into the core',
      synopsis: '[--json]',
      options: [JSON_OPTION],
      example: 'vmkit selfcheck run --json',
      exits: [[0, 'every check passed'], [1, 'a check failed (its code is printed)'], [2, 'usage error']],
    },
  },
};
