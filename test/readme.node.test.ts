// README.md's TypeScript examples must compile against the built package, as a
// user would import it (`vmkit`, `vmkit/memory`, … resolved through the exports
// map by package self-reference), so the front page cannot drift from the API.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
// Inside the package folder, so that `import … from 'vmkit/…'` resolves to this package.
const dir = mkdtempSync(join(root, '.readme-check-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('README.md', () => {
  it('opens with the install/tour and test commands', () => {
    const readme = readFileSync(join(root, 'README.md'), 'utf8');
    const first = /```sh\n([^`]*)```/.exec(readme)?.[1] ?? '';
    expect(first).toMatch(/^npm install && npm start\b/m);
    expect(first).toMatch(/^npm test\b/m);
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts.start).toBeTruthy();
    expect(pkg.scripts.test).toBeTruthy();
  });

  it('every TypeScript example type-checks against the built package', () => {
    const readme = readFileSync(join(root, 'README.md'), 'utf8');
    const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);
    expect(blocks.length).toBeGreaterThanOrEqual(5);
    const files: string[] = [];
    blocks.forEach((b, i) => {
      // Free names the examples use as "your data"; declared only where the example does not bind them.
      const free = ['mem: Uint8Array', 'data: Uint8Array', 'hex: string'].filter((d) => !new RegExp(`const ${d.split(':')[0]}\\b`).test(b));
      const f = join(dir, `example${i}.mts`);
      writeFileSync(f, `${free.map((d) => `declare const ${d};`).join('\n')}\n${b}\nexport {};\n`);
      files.push(f);
    });
    const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
    let out = '';
    try {
      execFileSync(process.execPath, [tsc, '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--strict', '--noEmit', '--skipLibCheck', '--types', 'node', ...files], { cwd: root, encoding: 'utf8' });
    } catch (e) {
      out = String((e as { stdout?: string }).stdout ?? e);
    }
    expect(out).toBe('');
  }, 120_000);
});
