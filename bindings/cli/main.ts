/**
 * `vmkit` command-line entry: dispatches to a subcommand group, reports
 * errors as text or (`--json`) as `{ "error": { code, message } }`, and
 * returns the exit code (0 ok, 1 failure/negative result, 2 usage error).
 * @module
 */
import { readFileSync } from 'node:fs';
import { init, initSync, isInitialized } from '../core.js';
import { VmkitError } from '../errors.js';
import type { CliIO, Command } from './_common.js';

/** Subcommand groups, loaded on demand so `vmkit --help` stays fast. */
const NAMES = ['pagetable', 'prefetch', 'checkpoint', 'disk', 'attest', 'selfcheck'] as const;
const COMMANDS: Record<string, () => Promise<{ command: Command }>> = Object.fromEntries(
  // Each group lives in commands/<name>.ts and exports `command`.
  NAMES.map((n) => [n, () => import(`./commands/${n}.js`) as Promise<{ command: Command }>]),
);

/** The package version, read from package.json next to dist/. */
export function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

async function summaries(): Promise<string> {
  const lines: string[] = [];
  for (const [name, load] of Object.entries(COMMANDS)) {
    try {
      const { command } = await load();
      lines.push(`  ${name.padEnd(12)} ${command.summary}`);
    } catch {
      // A group whose module is not built yet is simply not listed.
    }
  }
  return lines.join('\n');
}

/**
 * Runs the CLI with `argv` (without node and script). Resolves to the exit code.
 *
 * @example
 * ```ts
 * import { main } from 'vmkit/dist/cli/main.js';
 * process.exitCode = await main(['--version'], process);
 * ```
 */
export async function main(argv: string[], io: CliIO): Promise<number> {
  const [name, ...rest] = argv;
  const json = rest.includes('--json');
  try {
    if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
      io.stdout.write(`vmkit ${version()}: plumbing under virtual machines\n\nUsage: vmkit <command> [options]\n\nCommands:\n${await summaries()}\n\nOptions:\n  --help, -h   show help (also after a command)\n  --version    print the version\n  --json       machine-readable output (every command that reports)\n`);
      return name === undefined ? 2 : 0;
    }
    if (name === '--version' || name === '-v') {
      io.stdout.write(`${version()}\n`);
      return 0;
    }
    const load = COMMANDS[name];
    if (!load) throw new VmkitError('ARG_RANGE', `unknown command ${JSON.stringify(name)}; see vmkit --help`);
    const { command } = await load().catch((e: unknown) => {
      throw new VmkitError('UNSUPPORTED', `command ${JSON.stringify(name)} is not in this build`, { cause: e });
    });
    if (rest.length === 0 || rest[0] === '--help' || rest[0] === '-h') {
      io.stdout.write(command.usage.replace(/\n?$/, '\n'));
      return rest.length === 0 ? 2 : 0;
    }
    // Instantiate synchronously from the file: the async path touches the global
    // Response, whose first use loads undici (50-90 ms of every CLI run).
    if (!isInitialized()) {
      try {
        initSync(readFileSync(new URL('../core.wasm', import.meta.url)));
      } catch {
        // init() below reports why the core does not load.
      }
    }
    await init();
    return await command.run(rest, io);
  } catch (e) {
    const err =
      e instanceof VmkitError ? e : new VmkitError('IO', (e as Error)?.message ?? String(e), { cause: e });
    if (json) io.stdout.write(JSON.stringify({ error: err.toJSON() }, null, 2) + '\n');
    io.stderr.write(`vmkit: ${err.code}: ${err.message}\n`);
    return err.code === 'ARG_RANGE' || err.code === 'ARG_TYPE' ? 2 : 1;
  }
}
