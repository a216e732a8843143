/**
 * `vmkit` command-line entry: dispatches `vmkit <group> <subcommand> …` to
 * commands/<group>.ts, prints help from help/<group>.ts (which imports
 * nothing heavy, so `--help` loads no format, protocol or core module),
 * reports errors as text or (`--json`) as `{ "error": { code, message } }`,
 * and returns the exit code (0 ok, 1 failure, 2 usage error; a subcommand's
 * help lists its own).
 * @module
 */
import { VmkitError } from '../errors.js';
import type { CliIO, Command, CommandHelp } from './_common.js';

// Start-up is module loading: Node compiles and links each ES module on its own (~0.3-0.5 ms
// apiece), so `vmkit --help` loads no group, `vmkit <group> <sub> --help` only that group's help
// module (and _common.js to format it), a command only its own group, and the core is compiled
// only when a command first uses it (core()'s autoload). Built-ins come from
// process.getBuiltinModule, which skips the ES loader's resolve and translate steps for them.
// Measured in bench/startup.bench.js.

/** `node:fs`, through getBuiltinModule (see above). */
function fs(): typeof import('node:fs') {
  return process.getBuiltinModule('node:fs');
}

/**
 * Subcommand groups, each in commands/<name>.ts exporting `command` (a runner per subcommand)
 * with its help in help/<name>.ts exporting `help`, both keyed by the same subcommand names
 * (test/cli-help.node.test.ts checks). The one-line summaries `vmkit --help` prints are kept here
 * so it loads no group: each must equal its help's `summary` (test/cli.node.test.ts checks).
 * @internal
 */
export const _COMMANDS: Record<string, { summary: string; load: () => Promise<{ command: Command }>; help: () => Promise<{ help: CommandHelp }> }> = {
  pagetable: { summary: 'walk guest page tables in a memory image (dump like QEMU info tlb, translate); make a sample', load: () => import('./commands/pagetable.js'), help: () => import('./help/pagetable.js') },
  prefetch: { summary: 'simulate fault-time prefetch policies on a guest image and an access trace', load: () => import('./commands/prefetch.js'), help: () => import('./help/prefetch.js') },
  checkpoint: { summary: 'save, restore and inspect memory checkpoints (LZ4 blocks, lazy reads)', load: () => import('./commands/checkpoint.js'), help: () => import('./help/checkpoint.js') },
  disk: { summary: 'virtual disks: create, info, map, check, convert; snapshot, backup, consolidate; serve over NBD; ownership', load: () => import('./commands/disk.js'), help: () => import('./help/disk.js') },
  attest: { summary: 'attestation against package repositories: keygen, serve, request, verify, check, index', load: () => import('./commands/attest.js'), help: () => import('./help/attest.js') },
  selfcheck: { summary: 'run the wasm core self-check', load: () => import('./commands/selfcheck.js'), help: () => import('./help/selfcheck.js') },
};

/**
 * Every command group, in the order `vmkit --help` lists them.
 *
 * @example
 * ```ts
 * for (const g of COMMAND_GROUPS) console.log(g, Object.keys((await loadHelp(g)).subcommands));
 * ```
 */
export const COMMAND_GROUPS: readonly string[] = Object.keys(_COMMANDS);

/**
 * The help of a command group (light: no implementation loaded).
 * @example
 * ```ts
 * const h = await loadHelp('disk'); // h.subcommands.check.exits
 * ```
 */
export async function loadHelp(group: string): Promise<CommandHelp> {
  return (await _COMMANDS[group]!.help()).help;
}

/**
 * The implementations of a command group.
 * @example
 * ```ts
 * const c = await loadCommand('disk'); // c.run.check(['vm.qcow2'], process)
 * ```
 */
export async function loadCommand(group: string): Promise<Command> {
  return (await _COMMANDS[group]!.load()).command;
}

/** `--help`/`-h` before a `--` (inlined: _common.js loads only to format help). */
function wantsHelp(argv: readonly string[]): boolean {
  for (const a of argv) {
    if (a === '--') return false;
    if (a === '--help' || a === '-h') return true;
  }
  return false;
}

/** `--json`, `--output=json` or `--output json`: errors are reported as JSON too. */
function wantsJson(argv: readonly string[]): boolean {
  return argv.some((a, i) => a === '--json' || a === '--output=json' || (a === '--output' && argv[i + 1] === 'json'));
}

/** The package version, read from package.json next to dist/. */
export function version(): string {
  const pkg = JSON.parse(fs().readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
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
 * // As bindings/bin/vmkit.ts does; the CLI's internals are not part of the package's exports.
 * import { main } from '../cli/main.js';
 * process.exitCode = await main(['--version'], process);
 * ```
 */
export async function main(argv: string[], io: CliIO): Promise<number> {
  const [name, sub, ...rest] = argv;
  const json = wantsJson(argv);
  try {
    if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
      io.stdout.write(
        `vmkit ${version()}: plumbing under virtual machines\n\nUsage: vmkit <command> <subcommand> [options]\n\nCommands:\n${summaries()}\n\n` +
          `Options:\n  -h, --help             show help (also after a command or subcommand: vmkit disk check --help)\n  --version              print the version\n` +
          `  --json, --output=json  machine-readable output (every command that reports)\n\nExit codes: 0 ok, 1 failure, 2 usage error (a subcommand's --help lists its own).\n`,
      );
      return name === undefined ? 2 : 0;
    }
    if (name === '--version' || name === '-v') {
      io.stdout.write(`${version()}\n`);
      return 0;
    }
    if (!Object.hasOwn(_COMMANDS, name)) throw new VmkitError('ARG_RANGE', `unknown command ${JSON.stringify(name)}; see vmkit --help`);
    const asksHelp = sub === undefined || sub === '--help' || sub === '-h' || sub === 'help' || wantsHelp(rest);
    // A run loads the group's commands alone: its help module is read only for help and usage errors.
    const command = asksHelp
      ? undefined
      : await loadCommand(name).catch((e: unknown) => {
          throw new VmkitError('UNSUPPORTED', `command ${JSON.stringify(name)} is not in this build`, { cause: e });
        });
    const run = command && Object.hasOwn(command.run, sub!) ? command.run[sub!] : undefined;
    if (!run) {
      const help = await loadHelp(name);
      if (sub === undefined || sub === '--help' || sub === '-h' || sub === 'help') {
        const { groupHelp } = await import('./_common.js');
        io.stdout.write(groupHelp(name, help));
        return sub === undefined ? 2 : 0;
      }
      const subHelp = Object.hasOwn(help.subcommands, sub) ? help.subcommands[sub] : undefined;
      if (!subHelp) throw new VmkitError('ARG_RANGE', `unknown ${name} subcommand ${JSON.stringify(sub)}; see vmkit ${name} --help`);
      if (asksHelp) {
        const { subcommandHelp } = await import('./_common.js');
        io.stdout.write(subcommandHelp(name, sub, subHelp));
        return 0;
      }
      throw new VmkitError('UNSUPPORTED', `vmkit ${name} ${sub} is not in this build`);
    }
    const { _setCoreAutoload, initSync, isInitialized } = await import('../core.js');
    // Compiled on first use, synchronously from the file (the async path touches the global
    // Response, whose first use loads undici: 50-90 ms of every CLI run); a command that never
    // uses the core (disk info) never compiles it.
    if (!isInitialized()) _setCoreAutoload(() => initSync(fs().readFileSync(new URL('../core.wasm', import.meta.url))));
    return await run(rest, io);
  } catch (e) {
    const err =
      e instanceof VmkitError ? e : new VmkitError('IO', (e as Error)?.message ?? String(e), { cause: e });
    if (json) io.stdout.write(JSON.stringify({ error: err.toJSON() }, null, 2) + '\n');
    io.stderr.write(`vmkit: ${err.code}: ${err.message}\n`);
    return err.code === 'ARG_RANGE' || err.code === 'ARG_TYPE' ? 2 : 1;
  }
}
