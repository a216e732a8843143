// Package checks: the published shape (publint, are-the-types-wrong with the
// esm-only profile) and the default loading path of the built package.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const bin = (n: string) => join(root, 'node_modules', '.bin', n);
const tmp = mkdtempSync(join(tmpdir(), 'vmkit-pack-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('package', () => {
  it('publint finds nothing to report', () => {
    const out = execFileSync(bin('publint'), ['--strict', root], { encoding: 'utf8' });
    expect(out).toMatch(/All good!/);
  }, 120_000);

  it('are-the-types-wrong (esm-only profile) is clean', () => {
    // --ignore-scripts: dist/ is already built by `npm test`; do not rebuild inside pack.
    // core.wasm is an asset, not a module: it has no types to check.
    execFileSync('npm', ['pack', '--ignore-scripts', '--pack-destination', tmp], { cwd: root, stdio: 'ignore' });
    const tgz = readdirSync(tmp).find((f) => f.endsWith('.tgz'));
    expect(tgz).toBeDefined();
    const out = execFileSync(
      bin('attw'),
      [join(tmp, tgz!), '--profile', 'esm-only', '--format', 'json', '--exclude-entrypoints', 'vmkit/core.wasm'],
      { encoding: 'utf8' },
    );
    const report = JSON.parse(out) as { analysis: { entrypoints: Record<string, unknown>; problems: { kind: string; resolutionKind?: string }[] } };
    // The esm-only profile ignores CommonJS resolutions (node10, node16 from CJS).
    const real = report.analysis.problems.filter((p) => p.resolutionKind !== 'node10' && p.resolutionKind !== 'node16-cjs');
    expect(real).toEqual([]);
    expect(Object.keys(report.analysis.entrypoints)).toEqual(expect.arrayContaining(['.', './memory', './disk', './attest', './attest/service']));
  }, 180_000);

  it('the tarball ships the core and no .wat text dumps, tests or fixtures', () => {
    const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, encoding: 'utf8' });
    const files = (JSON.parse(out) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path);
    expect(files).toContain('dist/core.wasm');
    expect(files).toContain('dist/index.js');
    expect(files.filter((f) => f.endsWith('.wat'))).toEqual([]);
    expect(files.filter((f) => /^(test|bench|scripts|\.cache|\.ci|node_modules)\//.test(f))).toEqual([]);
  }, 120_000);

  it('init() with no argument loads dist/core.wasm next to the module', async () => {
    const m = (await import(/* @vite-ignore */ join(root, 'dist', 'index.js'))) as typeof import('../bindings/index.js');
    const info = await m.init();
    expect(info.abiVersion).toBe(1);
    expect(m.selfCheck()).toBe(0);
  });

  it('the package resolves its own subpath exports', async () => {
    for (const sub of ['vmkit', 'vmkit/memory', 'vmkit/disk', 'vmkit/attest']) {
      const m = (await import(/* @vite-ignore */ sub)) as Record<string, unknown>;
      expect(typeof m.init).toBe('function');
    }
    const svc = (await import(/* @vite-ignore */ 'vmkit/attest/service')) as Record<string, unknown>;
    expect(typeof svc.AttestService).toBe('function');
    expect(typeof svc.createVerifier).toBe('function');
    expect(import.meta.resolve('vmkit/core.wasm')).toMatch(/dist\/core\.wasm$/);
  });
});
