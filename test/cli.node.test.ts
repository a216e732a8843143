// The `vmkit` executable as a user runs it: built dist/, a child process.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

// The package's bin (package.json), CommonJS; dist/bin/vmkit.js runs it too.
const bin = fileURLToPath(new URL('../dist/bin/vmkit.cjs', import.meta.url));
const dist = fileURLToPath(new URL('../dist/', import.meta.url));
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

  it('--help lists every group with its own summary, loading none of them', async () => {
    const { _COMMANDS } = (await import(new URL('../dist/cli/main.js', import.meta.url).href)) as {
      _COMMANDS: Record<string, { summary: string; help(): Promise<{ help: { summary: string } }> }>;
    };
    const r = vmkit('--help');
    for (const [name, c] of Object.entries(_COMMANDS)) {
      const { help } = await c.help();
      // main.ts keeps a copy of each summary so that --help imports no group: the copies must agree.
      expect(c.summary, name).toBe(help.summary);
      expect(r.stdout).toContain(`  ${name.padEnd(12)} ${help.summary}`);
    }
    // Start-up is module loading: --help loads no group and no core.
    const hook = 'data:text/javascript,' + encodeURIComponent("export async function resolve(s, c, next) { const r = await next(s, c); if (r.url.includes('/dist/')) process.stderr.write('LOADED ' + r.url + '\\n'); return r; }");
    const traced = spawnSync(process.execPath, ['--no-warnings', '--loader', hook, bin, '--help'], { encoding: 'utf8' });
    expect(traced.status).toBe(0);
    const loaded = [...new Set(traced.stderr.split('\n').filter((l) => l.startsWith('LOADED ')).map((l) => l.slice(l.indexOf('/dist/') + 6)))].sort();
    // From the disk bundle (it holds main): no ES module at all.
    expect(loaded).toEqual(['bin/vmkit.cjs']);
  });

  it('disk info runs from the disk bundle with its code cache, printing what the ES modules print', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmkit-cli-'));
    try {
      const img = join(dir, 'small.qcow2');
      expect(vmkit('disk', 'create', img, '--size', '1M').status).toBe(0);
      const hook = 'data:text/javascript,' + encodeURIComponent("export async function resolve(s, c, next) { const r = await next(s, c); if (r.url.includes('/dist/')) process.stderr.write('LOADED ' + r.url + '\\n'); return r; }");
      // Through the bin: one CommonJS file (npm run build writes it and its V8 code cache), no ES module.
      const traced = spawnSync(process.execPath, ['--no-warnings', '--loader', hook, bin, 'disk', 'info', img], { encoding: 'utf8' });
      expect(traced.status).toBe(0);
      expect(traced.stdout).toMatch(/format: qcow2/);
      const loaded = [...new Set(traced.stderr.split('\n').filter((l) => l.startsWith('LOADED ')).map((l) => l.slice(l.indexOf('/dist/') + 6)))];
      expect(loaded).toEqual(['bin/vmkit.cjs']);
      expect(existsSync(join(dist, 'cli/_bundle/disk.cjs.v8cache'))).toBe(true);
      // The bundle holds main and the disk group only (esbuild names each module it inlines).
      const bundled = [...readFileSync(join(dist, 'cli/_bundle/disk.cjs'), 'utf8').matchAll(/^\/\/ dist\/(\S+)$/gm)].map((m) => m[1]!);
      expect(bundled).toContain('cli/main.js');
      expect(bundled).toContain('cli/commands/disk.js');
      expect(bundled.filter((f) => /^(cli\/commands\/(?!disk\.js|_disk)|memory\/|attest\/)/.test(f))).toEqual([]);
      // The ES modules (what the bundle is built from, and what runs without it) print the same,
      // loading the disk group and its format, not the backup jobs or the other groups.
      const entry = join(dir, 'es-main.mjs');
      writeFileSync(entry, `import { main } from ${JSON.stringify(join(dist, 'cli/main.js'))};\nprocess.exitCode = await main(process.argv.slice(2), process);\n`);
      for (const args of [['disk', 'info', img], ['disk', 'info', '--json', img], ['disk', 'info', join(dir, 'absent.qcow2')], ['disk', 'info', '--json', join(dir, 'absent.qcow2')], ['disk', 'info']]) {
        const a = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' });
        const b = spawnSync(process.execPath, [entry, ...args], { encoding: 'utf8' });
        expect({ status: a.status, stdout: a.stdout, stderr: a.stderr }, args.join(' ')).toEqual({ status: b.status, stdout: b.stdout, stderr: b.stderr });
      }
      const es = spawnSync(process.execPath, ['--no-warnings', '--loader', hook, entry, 'disk', 'info', img], { encoding: 'utf8' });
      expect(es.status).toBe(0);
      const esLoaded = es.stderr.split('\n').filter((l) => l.startsWith('LOADED '));
      expect(esLoaded.some((l) => l.includes('/dist/disk/formats/qcow2/'))).toBe(true);
      expect(esLoaded.filter((l) => /\/dist\/(disk\/backup|disk\/owner|cli\/commands\/(?!disk\.js)|memory|attest)\//.test(l))).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('checkpoint restore loads the reader, not the writer, the page store or the QEMU stream codecs', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmkit-cli-'));
    try {
      const img = join(dir, 'mem.bin');
      const mem = new Uint8Array(64 * 4096);
      for (let i = 0; i < mem.length; i += 7) mem[i] = i & 0xff;
      writeFileSync(img, mem);
      expect(vmkit('checkpoint', 'save', img, join(dir, 'm.ckpt')).status).toBe(0);
      const hook = 'data:text/javascript,' + encodeURIComponent("export async function resolve(s, c, next) { const r = await next(s, c); if (r.url.includes('/dist/')) process.stderr.write('LOADED ' + r.url + '\\n'); return r; }");
      const traced = spawnSync(process.execPath, ['--no-warnings', '--loader', hook, bin, 'checkpoint', 'restore', join(dir, 'm.ckpt'), join(dir, 'out.bin')], { encoding: 'utf8' });
      expect(traced.status).toBe(0);
      expect(Buffer.compare(readFileSync(join(dir, 'out.bin')), Buffer.from(mem))).toBe(0);
      const loaded = traced.stderr.split('\n').filter((l) => l.startsWith('LOADED '));
      expect(loaded.some((l) => l.includes('/dist/memory/checkpoint/reader.js'))).toBe(true);
      expect(loaded.filter((l) => /\/dist\/(memory\/checkpoint\/(writer|store|parallel|qemu\/)|cli\/commands\/_(raw_image|checkpoint_qemu)|disk|attest)/.test(l))).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
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
