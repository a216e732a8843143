// The layers of bindings/ and the direction of their imports, written as data:
// a module may import its own layer and layers of a lower rank, never a higher
// one nor another layer of the same rank, and no modules import each other in a
// loop. The imports are parsed with the TypeScript compiler (static imports,
// re-exports and import() with a literal), so a comment or a string that looks
// like an import does not count.
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

/**
 * Lowest rank first. A file belongs to the first layer whose pattern matches its
 * path under bindings/. The disk layers follow the block stack: storage and the
 * device vocabulary → formats → the image registry → the jobs and services built
 * on images (backup, ownership, NBD), which do not import each other.
 */
const LAYERS: { name: string; rank: number; files: RegExp }[] = [
  { name: 'base (core loader, errors, shared helpers)', rank: 0, files: /^(?!index\.ts$)[^/]+\.ts$/ },
  { name: 'memory', rank: 1, files: /^memory\// },
  { name: 'attest', rank: 1, files: /^attest\// },
  { name: 'disk internals', rank: 1, files: /^disk\/_[^/]+\.ts$/ },
  { name: 'disk/backends', rank: 2, files: /^disk\/backends\// },
  { name: 'disk/device.ts', rank: 2, files: /^disk\/device\.ts$/ },
  { name: 'disk/formats', rank: 3, files: /^disk\/formats\// },
  { name: 'disk/image.ts', rank: 4, files: /^disk\/image\.ts$/ },
  { name: 'disk/backup', rank: 5, files: /^disk\/backup\// },
  { name: 'disk/owner', rank: 5, files: /^disk\/owner\// },
  { name: 'disk/nbd', rank: 5, files: /^disk\/nbd\// },
  { name: 'disk/convert.ts', rank: 5, files: /^disk\/convert\.ts$/ },
  { name: 'entry points (vmkit, vmkit/disk)', rank: 6, files: /^(index|disk\/index)\.ts$/ },
  { name: 'cli', rank: 7, files: /^cli\// },
  { name: 'tour', rank: 7, files: /^tour\// },
  { name: 'bin', rank: 8, files: /^bin\// },
];

/**
 * Loops through type-only imports (erased at run time). Each entry is the sorted
 * set of files of one loop; an entry that no longer loops fails the spec, so the
 * list only shrinks.
 */
const KNOWN_TYPE_LOOPS: string[][] = [
  // The worker imports the request parser from the server; the pool names the worker's job type.
  ['attest/service/_appraise-worker.ts', 'attest/service/_pool.ts', 'attest/service/server.ts'],
];

interface Edge {
  to: string;
  typeOnly: boolean;
}

/** Every import of every bindings/ file: path under bindings/ → its imports of other bindings/ files. */
function graph(): Map<string, Edge[]> {
  const dir = join(root, 'bindings');
  const files = readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => (f.endsWith('.ts') || f.endsWith('.cts')) && !f.endsWith('.d.ts'));
  const g = new Map<string, Edge[]>();
  for (const f of files) {
    const sf = ts.createSourceFile(f, readFileSync(join(dir, f), 'utf8'), ts.ScriptTarget.Latest, true);
    const edges: Edge[] = [];
    const add = (spec: string, typeOnly: boolean): void => {
      if (!spec.startsWith('.')) return;
      edges.push({ to: normalize(join(dirname(f), spec)).replace(/\.js$/, '.ts').replace(/\.cjs$/, '.cts'), typeOnly });
    };
    const visit = (n: ts.Node): void => {
      if (ts.isImportDeclaration(n) && ts.isStringLiteral(n.moduleSpecifier)) {
        const c = n.importClause;
        const typeOnly = c !== undefined && (c.isTypeOnly || (!c.name && c.namedBindings !== undefined && ts.isNamedImports(c.namedBindings) && c.namedBindings.elements.length > 0 && c.namedBindings.elements.every((e) => e.isTypeOnly)));
        add(n.moduleSpecifier.text, typeOnly);
      } else if (ts.isExportDeclaration(n) && n.moduleSpecifier && ts.isStringLiteral(n.moduleSpecifier)) {
        const typeOnly = n.isTypeOnly || (n.exportClause !== undefined && ts.isNamedExports(n.exportClause) && n.exportClause.elements.length > 0 && n.exportClause.elements.every((e) => e.isTypeOnly));
        add(n.moduleSpecifier.text, typeOnly);
      } else if (ts.isCallExpression(n) && n.expression.kind === ts.SyntaxKind.ImportKeyword && n.arguments[0] && ts.isStringLiteralLike(n.arguments[0])) {
        add(n.arguments[0].text, false);
      } else if (ts.isImportTypeNode(n) && ts.isLiteralTypeNode(n.argument) && ts.isStringLiteral(n.argument.literal)) {
        add(n.argument.literal.text, true);
      }
      ts.forEachChild(n, visit);
    };
    visit(sf);
    g.set(f, edges);
  }
  return g;
}

function layerOf(f: string): { name: string; rank: number } {
  const l = LAYERS.find((x) => x.files.test(f));
  if (!l) throw new Error(`bindings/${f} is in no layer: add it to LAYERS in test/layers.node.test.ts`);
  return l;
}

/** Strongly connected components of more than one file (Tarjan). */
function loops(g: Map<string, Edge[]>, withTypes: boolean): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const on = new Set<string>();
  const out: string[][] = [];
  let n = 0;
  const visit = (v: string): void => {
    index.set(v, n);
    low.set(v, n++);
    stack.push(v);
    on.add(v);
    for (const e of g.get(v) ?? []) {
      if ((e.typeOnly && !withTypes) || !g.has(e.to)) continue;
      if (!index.has(e.to)) {
        visit(e.to);
        low.set(v, Math.min(low.get(v)!, low.get(e.to)!));
      } else if (on.has(e.to)) low.set(v, Math.min(low.get(v)!, index.get(e.to)!));
    }
    if (low.get(v) === index.get(v)) {
      const comp: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        on.delete(w);
        comp.push(w);
      } while (w !== v);
      if (comp.length > 1) out.push(comp.sort());
    }
  };
  for (const v of g.keys()) if (!index.has(v)) visit(v);
  return out;
}

describe('layers of bindings/', () => {
  const g = graph();

  it('parses the imports of every file, and every file is in a layer', () => {
    expect(g.size).toBeGreaterThan(100);
    expect(g.get('disk/image.ts')!.some((e) => e.to === 'disk/backends/storage.ts')).toBe(true); // the parser sees imports
    for (const f of g.keys()) layerOf(f);
    for (const [f, edges] of g) for (const e of edges) expect([f, e.to, g.has(e.to)]).toEqual([f, e.to, true]); // no import of a missing file
  });

  it('imports go down the layers only (never up, never sideways to another layer of the same rank)', () => {
    const bad: string[] = [];
    for (const [f, edges] of g) {
      const from = layerOf(f);
      for (const e of edges) {
        const to = layerOf(e.to);
        if (to.name !== from.name && to.rank >= from.rank) bad.push(`${f} (${from.name}, rank ${from.rank}) imports ${e.to} (${to.name}, rank ${to.rank})${e.typeOnly ? ' [type]' : ''}`);
      }
    }
    expect(bad).toEqual([]);
  });

  it('no import loops (type-only loops: only the known ones, and none that were fixed)', () => {
    expect(loops(g, false)).toEqual([]);
    const typed = loops(g, true).map((c) => c.join(' → '));
    const known = KNOWN_TYPE_LOOPS.map((c) => [...c].sort().join(' → '));
    expect(typed.filter((c) => !known.includes(c))).toEqual([]);
    expect(known.filter((c) => !typed.includes(c)), 'a known type loop is gone: remove it from KNOWN_TYPE_LOOPS').toEqual([]);
  });

  it('the rules catch what they are for (a made-up upward import and loop)', () => {
    const fake = new Map(g);
    fake.set('disk/backends/storage.ts', [...g.get('disk/backends/storage.ts')!, { to: 'disk/image.ts', typeOnly: false }]);
    const up = [...fake].flatMap(([f, es]) => es.filter((e) => layerOf(e.to).rank > layerOf(f).rank).map((e) => `${f} → ${e.to}`));
    expect(up).toContain('disk/backends/storage.ts → disk/image.ts');
    expect(loops(fake, false).some((c) => c.includes('disk/backends/storage.ts') && c.includes('disk/image.ts'))).toBe(true);
  });
});
