// The `vmkit` executable as a user runs it: built dist/, a child process.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const bin = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };

function vmkit(...args: string[]) {
  return spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 60_000 });
}

describe('vmkit CLI', () => {
  it('--version prints the package version', () => {
    const r = vmkit('--version');
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe(pkg.version);
  });

  it('--help lists commands and exits 0; no arguments is a usage error', () => {
    const r = vmkit('--help');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/Usage: vmkit <command>/);
    expect(r.stdout).toMatch(/selfcheck/);
    expect(vmkit().status).toBe(2);
  });

  it('selfcheck --json reports a passing core', () => {
    const r = vmkit('selfcheck', 'run', '--json');
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, code: 0, abiVersion: 1 });
  });

  it('unknown commands fail with a usage error, as JSON when asked', () => {
    const r = vmkit('frobnicate', '--json');
    expect(r.status).toBe(2);
    expect(JSON.parse(r.stdout)).toMatchObject({ error: { code: 'ARG_RANGE' } });
    expect(r.stderr).toMatch(/unknown command "frobnicate"/);
  });

  it('unknown options name the option', () => {
    const r = vmkit('selfcheck', 'run', '--bogus');
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/--bogus/);
  });
});
