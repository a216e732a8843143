/**
 * `vmkit selfcheck`: runs the core's built-in checks and reports the result.
 * @module
 */
import { coreInfo, selfCheck } from '../../core.js';
import { emit, parse, type CliIO, type Command } from '../_common.js';

/** The `selfcheck` command. */
export const command: Command = {
  summary: 'run the wasm core self-check',
  usage: 'Usage: vmkit selfcheck run [--json]\n\nRuns every module check built into the core; exit 0 when all pass.',
  async run(argv: string[], io: CliIO): Promise<number> {
    const { values, positionals } = parse(argv, {});
    if (positionals[0] !== 'run') throw new (await import('../../errors.js')).VmkitError('ARG_RANGE', `unknown selfcheck subcommand ${JSON.stringify(positionals[0])}`);
    const code = selfCheck();
    const info = coreInfo();
    emit(io, values.json, { ok: code === 0, code, abiVersion: info.abiVersion, memoryBytes: info.memoryBytes }, () =>
      code === 0 ? `core self-check passed (ABI ${info.abiVersion})` : `core self-check FAILED with code ${code}`,
    );
    return code === 0 ? 0 : 1;
  },
};
