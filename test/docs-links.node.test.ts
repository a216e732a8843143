// The docs say only true things about the tree: every relative link and every
// repository path written in backticks in README.md and docs/*.md names a file
// or folder that exists, and none points outside the repository (a clone with
// nothing beside it must be able to follow them all).
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const docs = ['README.md', ...readdirSync(join(root, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
const outside = (p: string): boolean => relative(root, p).startsWith('..') || relative(root, p).startsWith('/');

describe.each(docs)('%s', (doc) => {
  const text = readFileSync(join(root, doc), 'utf8');

  it('relative links name files inside the repository that exist', () => {
    const bad: string[] = [];
    for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      const target = m[1]!;
      if (/^(https?:|mailto:|#)/.test(target)) continue;
      const p = resolve(root, dirname(doc), target.split('#')[0]!);
      if (outside(p) || !existsSync(p)) bad.push(target);
    }
    expect(bad).toEqual([]);
  });

  it('paths in backticks exist (build outputs under dist/ and patterns aside)', () => {
    const bad: string[] = [];
    for (const m of text.matchAll(/`((?:\.\.\/)*(?:docs|bench|bindings|scripts|test|assembly|\.ci)\/[^`\s]*)`/g)) {
      const path = m[1]!;
      if (/[*<>…{}|]/.test(path)) continue; // a pattern, not a file
      const p = resolve(root, path.replace(/[:,.]$/, ''));
      if (outside(p) || !existsSync(p)) bad.push(path);
    }
    expect(bad).toEqual([]);
  });

  it('names no place outside the repository', () => {
    expect(text.match(/\.\.\/shared\b|\/work\/[a-z]/g) ?? []).toEqual([]);
  });
});
