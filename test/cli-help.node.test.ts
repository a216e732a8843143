// Every `vmkit <command> <subcommand> --help`, discovered from the CLI's own
// command table (a subcommand without help, or help without a subcommand,
// fails here): usage, every option the parser accepts, an example and exit
// codes, exit 0, and nothing loaded beyond the help module.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { COMMAND_GROUPS, loadCommand, loadHelp } from '../dist/cli/main.js';
import { VmkitError } from '../dist/errors.js';

const dist = new URL('../dist/', import.meta.url).href;
// The package's bin (package.json); `vmkit disk` runs from one bundle (dist/cli/_bundle/disk.cjs).
const bin = fileURLToPath(new URL('bin/vmkit.cjs', dist));
const logDir = mkdtempSync(join(tmpdir(), 'vmkit-help-'));
afterAll(() => rmSync(logDir, { recursive: true, force: true }));
// Logs every file module the process resolves (node:module's register; the hooks thread appends to a file synchronously).
const hook = `data:text/javascript,${encodeURIComponent(
  `import { register } from 'node:module'; register('data:text/javascript,' + encodeURIComponent("import { appendFileSync } from 'node:fs'; export async function resolve(s, c, n) { const r = await n(s, c); if (r.url.startsWith('file:')) appendFileSync(process.env.VMKIT_LOAD_LOG, r.url + String.fromCharCode(10)); return r; }"));`,
)}`;
let runs = 0;

function vmkit(...args: string[]) {
  const log = join(logDir, `${runs++}.log`);
  const r = spawnSync(process.execPath, ['--import', hook, bin, ...args], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, VMKIT_LOAD_LOG: log } });
  const loaded = [...new Set(readFileSync(log, 'utf8').split('\n').filter(Boolean).map((u) => u.replace(dist, '')))];
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, loaded };
}

/** The long options a subcommand's parser accepts, from its unknown-option error. */
async function accepted(group: string, sub: string): Promise<string[]> {
  const run = (await loadCommand(group)).run[sub]!;
  const io = { stdout: process.stdout, stderr: process.stderr };
  const e = await run(['--vmkit-no-such-option'], io).then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e, `${group} ${sub}`).toBeInstanceOf(VmkitError);
  const list = /\(options: ([^)]*)\)/.exec((e as Error).message)?.[1];
  expect(list, `${group} ${sub}: ${(e as Error).message}`).toBeTruthy();
  return list!.split(', ').filter((o) => !['--json', '--output', '--help'].includes(o));
}

describe('vmkit --help everywhere', () => {
  it('every command group has help for exactly the subcommands it implements', async () => {
    expect(COMMAND_GROUPS.length).toBeGreaterThanOrEqual(6);
    let n = 0;
    for (const g of COMMAND_GROUPS) {
      const [help, cmd] = [await loadHelp(g), await loadCommand(g)];
      expect(Object.keys(help.subcommands).sort(), g).toEqual(Object.keys(cmd.run).sort());
      n += Object.keys(help.subcommands).length;
    }
    expect(n).toBeGreaterThanOrEqual(25);
  });

  for (const g of COMMAND_GROUPS) {
    it(`vmkit ${g} --help and each subcommand's --help: usage, every option, an example, exit codes; exit 0; light`, async () => {
      const help = await loadHelp(g);
      const top = vmkit(g, '--help');
      expect(top.status).toBe(0);
      for (const s of Object.keys(help.subcommands)) expect(top.stdout).toMatch(new RegExp(`^  ${s} `, 'm'));
      for (const [s, h] of Object.entries(help.subcommands)) {
        const r = vmkit(g, s, '--help');
        const what = `vmkit ${g} ${s} --help`;
        expect(r.status, `${what}: ${r.stderr}`).toBe(0);
        expect(r.stderr, what).toBe('');
        expect(r.stdout, what).toMatch(new RegExp(`^Usage: vmkit ${g} ${s} `));
        expect(r.stdout, what).toMatch(/\nOptions:\n[\s\S]*\n {2}-h, --help /);
        expect(r.stdout, what).toMatch(new RegExp(`\\nExample:\\n {2}.*vmkit ${g} ${s}\\b`));
        expect(r.stdout, what).toMatch(/\nExit codes:\n {2}0 /);
        expect(h.exits.map(([c]) => c), what).toContain(0);
        // Every option the parser takes is documented, and every documented option is taken.
        const opts = await accepted(g, s);
        // The flags column of the Options section (a description may mention other tools' flags).
        const flags = r.stdout.split('\nExample:')[0]!.split('\nOptions:\n')[1]!.split('\n').map((l) => /^ {2}(\S.*?)(?: {2,}|$)/.exec(l)?.[1] ?? '');
        const documented = flags.flatMap((f) => [...f.matchAll(/--[a-z0-9-]+/g)].map((m) => m[0]));
        for (const o of opts) expect(documented, `${what} lacks ${o}`).toContain(o);
        for (const o of documented) if (o !== '--help' && o !== '--json' && o !== '--output') expect(opts, `${what} documents ${o}, which the parser refuses`).toContain(o);
        // -h is the same; after a positional too.
        expect(vmkit(g, s, 'x', '-h').stdout, what).toBe(r.stdout);
        // Nothing heavier than the help module: no format, protocol, core or command module (the
        // disk group's help comes from its bundle: no ES module at all).
        expect(r.loaded.sort(), what).toEqual(g === 'disk' ? ['bin/vmkit.cjs'] : ['bin/vmkit.cjs', 'cli/_common.js', `cli/help/${g}.js`, 'cli/main.js', 'errors.js']);
      }
    }, 240_000);
  }

  it('no subcommand is a usage error that prints the group help; an unknown one names it', () => {
    const r = vmkit('disk');
    expect(r.status).toBe(2);
    expect(r.stdout).toMatch(/^Usage: vmkit disk <subcommand>/);
    const u = vmkit('disk', 'frob', '--json');
    expect(u.status).toBe(2);
    expect(JSON.parse(u.stdout)).toMatchObject({ error: { code: 'ARG_RANGE' } });
    expect(u.stderr).toMatch(/unknown disk subcommand "frob"/);
  });
});
