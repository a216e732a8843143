// README.md's code blocks, as printed: the TypeScript blocks type-check against
// the built package and run (each a whole ES module, resolved through the
// exports map by package self-reference, so the front page cannot drift from
// the API), and the shell blocks run in bash with `vmkit` on the PATH (as
// `npm link` puts it there), all in README order in one empty folder. The
// first block (install, tour, `npm test`) is what runs this spec; it is
// checked by its text.
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
// Inside the package folder, so that `import … from 'vmkit/…'` resolves to this package.
const dir = mkdtempSync(join(root, '.readme-check-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const readme = readFileSync(join(root, 'README.md'), 'utf8');
/** Every fenced block after the first, in order. */
const blocks = [...readme.matchAll(/```(ts|sh)\n([\s\S]*?)```/g)].slice(1).map((m) => ({ lang: m[1] as 'ts' | 'sh', code: m[2]! }));
const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');

/** Whether Debian's archive answers (the attestation blocks index it); CI has the network (its fixtures fetch .debs). */
function online(): boolean {
  const r = spawnSync('curl', ['-sfI', '--max-time', '10', 'http://deb.debian.org/debian/dists/bookworm/InRelease'], { encoding: 'utf8' });
  return r.status === 0;
}

describe('README.md', () => {
  it('opens with the install/tour and test commands', () => {
    const first = /```sh\n([^`]*)```/.exec(readme)?.[1] ?? '';
    expect(first).toMatch(/^npm install && npm start\b/m);
    expect(first).toMatch(/^npm test\b/m);
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts.start).toBeTruthy();
    expect(pkg.scripts.test).toBeTruthy();
  });

  it('every TypeScript block is a whole module that type-checks against the built package, nothing declared for it', () => {
    const ts = blocks.filter((b) => b.lang === 'ts');
    expect(ts.length).toBeGreaterThanOrEqual(6);
    const files = ts.map((b, i) => {
      const f = join(dir, `check${i}.mts`);
      writeFileSync(f, b.code);
      return f;
    });
    let out = '';
    try {
      execFileSync(process.execPath, [tsc, '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--strict', '--noEmit', '--skipLibCheck', '--types', 'node', ...files], { cwd: root, encoding: 'utf8' });
    } catch (e) {
      out = String((e as { stdout?: string }).stdout ?? e);
    }
    expect(out).toBe('');
  }, 120_000);

  const net = online();
  if (!net) console.warn('readme.node.test: deb.debian.org unreachable: the README blocks do not run here (they do in CI)');
  it.skipIf(!net && process.env.CI !== 'true')('every block runs as printed, in order, in one empty folder', () => {
    const work = join(dir, 'run');
    const binDir = join(dir, 'bin');
    mkdirSync(work);
    mkdirSync(binDir);
    // What `npm link` does: a `vmkit` on the PATH running this build.
    writeFileSync(join(binDir, 'vmkit'), `#!/bin/sh\nexec "${process.execPath}" "${join(root, 'dist', 'bin', 'vmkit.js')}" "$@"\n`);
    chmodSync(join(binDir, 'vmkit'), 0o755);
    const env = { ...process.env, PATH: `${binDir}:${process.env.PATH}` };
    // Each block's own process group: background jobs it leaves (the attestation service) end with the spec.
    const groups: number[] = [];
    try {
      blocks.forEach((b, i) => {
        let r;
        if (b.lang === 'ts') {
          const src = join(work, `example${i}.mts`);
          writeFileSync(src, b.code);
          execFileSync(process.execPath, [tsc, '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--skipLibCheck', '--types', 'node', '--outDir', work, '--rootDir', work, src], { cwd: root });
          r = spawnSync(process.execPath, [join(work, `example${i}.mjs`)], { cwd: work, env, encoding: 'utf8', timeout: 300_000 });
        } else {
          // spawnSync honours `detached` (normalizeSpawnArguments) though @types/node leaves it out of its options.
          const opts = { cwd: work, env, encoding: 'utf8' as const, timeout: 300_000, detached: true };
          r = spawnSync('bash', ['-e', '-c', `echo $$ > .pgid-${i}; ${b.code}`], opts);
          const pg = Number(readFileSync(join(work, `.pgid-${i}`), 'utf8'));
          if (pg) groups.push(pg);
        }
        expect(r.status, `README block ${i + 2} (${b.lang}):\n${b.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(0);
      });
    } finally {
      for (const g of groups) {
        try {
          process.kill(-g, 'SIGTERM');
        } catch {
          // the group already ended
        }
      }
    }
    // What the blocks say they make is there and right.
    expect(readFileSync(join(work, 'page.bin')).length).toBe(4096);
    const info = JSON.parse(execFileSync(process.execPath, [join(root, 'dist', 'bin', 'vmkit.js'), 'disk', 'info', '--json', 'vm.qcow2'], { cwd: work, encoding: 'utf8' })) as { chain: unknown[] };
    expect(info.chain).toHaveLength(1); // consolidated: the delta is gone
  }, 900_000);
});
