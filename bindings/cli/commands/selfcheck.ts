/**
 * `vmkit selfcheck run`: runs the core's built-in checks and reports the result.
 * @module
 */
import { coreInfo, selfCheck } from '../../core.js';
import { emit, parse, type CliIO, type Command } from '../_common.js';
import { VmkitError } from '../../errors.js';

/**
 * The `selfcheck` command group (help: help/selfcheck.ts).
 * @example
 * ```ts
 * process.exitCode = await command.run.run!(['--json'], process);
 * ```
 */
export const command: Command = {
  run: {
    async run(argv: string[], io: CliIO): Promise<number> {
      const { values, positionals } = parse(argv, {});
      if (positionals.length) throw new VmkitError('ARG_RANGE', `unexpected argument ${JSON.stringify(positionals[0])}`);
      const code = selfCheck();
      const info = coreInfo();
      emit(io, values.json, { ok: code === 0, code, abiVersion: info.abiVersion, memoryBytes: info.memoryBytes }, () =>
        code === 0 ? `core self-check passed (ABI ${info.abiVersion})` : `core self-check FAILED with code ${code}`,
      );
      return code === 0 ? 0 : 1;
    },
  },
};
