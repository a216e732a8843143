// A fresh clone works on its own: the repository at this commit (HEAD) is cloned
// into an empty temporary folder (nothing beside it: no ../shared, no .cache),
// built, and the specs that once read ../../shared/vectors/ima/ run there and
// pass, making their fixtures with the clone's own scripts. Only node_modules
// is borrowed (a symlink), as `npm ci` would install the same. The specs and
// benches of the clone are also read for paths that leave the repository.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { needTool } from './_tools.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const parent = mkdtempSync(join(tmpdir(), 'vmkit-clone-'));
const clone = join(parent, 'vmkit');
afterAll(() => rmSync(parent, { recursive: true, force: true }));

/** The specs that needed ../shared before scripts/ima-fixtures.mjs made their logs. */
const SPECS = ['test/attest-ima.node.test.ts', 'test/attest-service.node.test.ts'];

describe('a clone of HEAD with nothing beside it', () => {
  it('builds and passes the specs that used to read ../shared', () => {
    if (!needTool('git', 'git')) return;
    const head = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
    // --no-checkout + checkout of the commit: from a git worktree, `git clone` would check out the
    // main repository's HEAD, not this one's.
    execFileSync('git', ['clone', '--quiet', '--no-checkout', root, clone], { stdio: 'pipe' });
    execFileSync('git', ['checkout', '--quiet', head], { cwd: clone, stdio: 'pipe' });
    expect(readdirSync(parent)).toEqual(['vmkit']);
    symlinkSync(join(root, 'node_modules'), join(clone, 'node_modules'), 'dir');
    const env = { ...process.env };
    delete env.VMKIT_IMA_VECTORS; // the default place, ../shared beside the clone: not there
    execFileSync('npm', ['run', 'build'], { cwd: clone, env, stdio: 'pipe' });
    const r = spawnSync(process.execPath, [join(clone, 'node_modules', 'vitest', 'vitest.mjs'), 'run', '--project', 'node', ...SPECS], {
      cwd: clone,
      env,
      encoding: 'utf8',
      maxBuffer: 64 << 20,
    });
    const out = `${r.stdout}${r.stderr}`;
    expect(r.status, out.slice(-4000)).toBe(0);
    const summary = /tests: (\d+) passed, (\d+) failed, (\d+) skipped/.exec(out);
    expect(summary, out.slice(-2000)).not.toBeNull();
    expect(Number(summary![1])).toBeGreaterThan(30);
    expect(Number(summary![2])).toBe(0);
    // The Keylime vectors are an extra that was looked for beside the clone and not found, loudly.
    expect(out).toContain(`SKIPPING the Keylime IMA vectors: ${join(parent, 'shared', 'vectors', 'ima')}`);
    // The fixtures were made inside the clone.
    expect(readdirSync(join(clone, '.cache', 'ima'))).toContain('manifest.json');
    expect(readdirSync(join(clone, '.cache', 'attest'))).toContain('keyring.gpg');
    expect(readdirSync(parent)).toEqual(['vmkit']);
  }, 900_000);

  it('no spec, bench or script names a path outside the repository but the optional, guarded Keylime vectors', () => {
    const bad: string[] = [];
    for (const dir of ['test', 'bench', 'scripts']) {
      for (const f of readdirSync(join(root, dir))) {
        // This file names the allowed exception below.
        if (!/\.(ts|js|mjs|sh)$/.test(f) || `${dir}/${f}` === 'test/clone.node.test.ts') continue;
        const text = readFileSync(join(root, dir, f), 'utf8');
        for (const m of text.matchAll(/['"`](\.\.\/\.\.\/[^'"`]*|\/work\/[^'"`]*)['"`]/g)) {
          // test/_ima-fixtures.ts: looked for with existsSync, skipped with a message when absent.
          if (`${dir}/${f}` === 'test/_ima-fixtures.ts' && m[1] === '../../shared/vectors/ima/') continue;
          bad.push(`${dir}/${f}: ${m[1]}`);
        }
      }
    }
    expect(bad).toEqual([]);
  });
});
