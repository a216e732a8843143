/**
 * `vmkit` command-line entry: dispatches to a subcommand group, reports
 * errors as text or (`--json`) as `{ "error": { code, message } }`, and
 * returns the exit code (0 ok, 1 failure/negative result, 2 usage error).
 * @module
 */
import { readFileSync } from 'node:fs';
import { VmkitError } from '../errors.js';
import type { CliIO, Command } from './_common.js';

// Start-up is module loading: Node compiles and links each ES module on its own (~0.3-0.5 ms
// apiece), so a command loads only its own group, `--help` loads none, and the core (with its
// loader) only when a command runs. Measured against a bundled single file and a start-up
// snapshot in bench/startup.bench.js.

/**
 * Subcommand groups, each in commands/<name>.ts exporting `command`, loaded on demand. The
 * one-line summaries `vmkit --help` prints are kept here so it loads no group: each must equal
 * its group's `command.summary` (test/cli.node.test.ts checks).
 * @internal
 */
export const _COMMANDS: Record<string, { summary: string; load: () => Promise<{ command: Command }> }> = {
  pagetable: { summary: 'walk guest page tables in a memory image (dump like QEMU info tlb, translate)', load: () => import('./commands/pagetable.js') },
  prefetch: { summary: 'simulate fault-time prefetch policies on a guest image and an access trace', load: () => import('./commands/prefetch.js') },
  checkpoint: { summary: 'save, restore and inspect memory checkpoints (LZ4 blocks, lazy reads)', load: () => import('./commands/checkpoint.js') },
  disk: { summary: 'virtual disks: create, info, map, check; snapshot, backup, consolidate; ownership', load: () => import('./commands/disk.js') },
  attest: { summary: 'attestation against package repositories: serve, request, verify, check, index', load: () => import('./commands/attest.js') },
  selfcheck: { summary: 'run the wasm core self-check', load: () => import('./commands/selfcheck.js') },
};

/** The package version, read from package.json next to dist/. */
export function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

function summaries(): string {
  return Object.entries(_COMMANDS)
    .map(([name, c]) => `  ${name.padEnd(12)} ${c.summary}`)
    .join('\n');
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
      io.stdout.write(`vmkit ${version()}: plumbing under virtual machines\n\nUsage: vmkit <command> [options]\n\nCommands:\n${summaries()}\n\nOptions:\n  --help, -h   show help (also after a command)\n  --version    print the version\n  --json       machine-readable output (every command that reports)\n`);
      return name === undefined ? 2 : 0;
    }
    if (name === '--version' || name === '-v') {
      io.stdout.write(`${version()}\n`);
      return 0;
    }
    const load = Object.hasOwn(_COMMANDS, name) ? _COMMANDS[name]!.load : undefined;
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
    const { init, initSync, isInitialized } = await import('../core.js');
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
