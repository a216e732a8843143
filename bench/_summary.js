// The one table RESULTS.md opens with: per suite, a few headline rows (what,
// vmkit, peer, ratio, link to the section). A suite names its headline rows in
// `summary: [{ what, section, vmkit, peer, column?, better? }]`: the section
// heading, the task names of two rows of that section's table, the column to
// quote (default: the first after the task) and whether lower (times, the
// default) or higher (rates) is better; the figures
// are read from the table the suite just produced, so the summary can never
// disagree with it. run.js stores each suite's spec in its RESULTS.md block (a
// comment) and rebuilds the table from every block on each --write, so running
// one suite leaves the other suites' rows in place.

/** Parses the markdown tables under `### heading` lines: heading → { header, rows }. */
export function parseTables(markdown) {
  const out = new Map();
  let heading = null;
  let table = null;
  for (const line of markdown.split('\n')) {
    if (line.startsWith('### ')) {
      heading = line.slice(4).trim();
      table = null;
      continue;
    }
    if (!line.startsWith('|')) {
      table = null;
      continue;
    }
    const cells = line.split('|').slice(1, -1).map((c) => c.trim());
    if (cells.every((c) => /^-*:?-+:?$/.test(c))) continue;
    if (!table) {
      table = { header: cells, rows: [] };
      if (heading && !out.has(heading)) out.set(heading, table);
      continue;
    }
    table.rows.push(cells);
  }
  return out;
}

const TIME = { ns: 1e-9, 'µs': 1e-6, us: 1e-6, ms: 1e-3, s: 1 };
const SCALE = { K: 1e3, M: 1e6, G: 1e9, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, k: 1e3 };

/** A table cell as a number in one unit family ('1.23 ms' → 0.00123; '5.96 K' → 5960; '2.42 GB/s' → 2.42e9), or NaN. */
export function quantity(cell) {
  const m = /^`?([0-9][0-9,]*(?:\.[0-9]+)?)\s*([a-zA-Zµ/]*)/.exec(cell.replace(/^~/, ''));
  if (!m) return NaN;
  const v = Number(m[1].replaceAll(',', ''));
  const unit = m[2];
  if (unit in TIME) return v * TIME[unit];
  const r = /^(K|M|G|Ki|Mi|Gi|k)?(B\/s|\/s|B)?$/.exec(unit.replace(/^(Ki|Mi|Gi)B/, '$1B'));
  if (r) return v * (r[1] ? SCALE[r[1]] : 1);
  return v;
}

/** The ratio text: how many times better vmkit is than the peer (`better`: 'lower' for times, 'higher' for rates). */
function ratioOf(v, p, better) {
  const r = better === 'higher' ? v / p : p / v;
  return Number.isFinite(r) ? `${r >= 10 ? r.toFixed(0) : r.toFixed(2)}×` : '—';
}

/** GitHub's anchor for a heading. */
export function anchor(heading) {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N} _-]/gu, '')
    .replaceAll(' ', '-');
}

/**
 * The summary rows of one suite: `specs` resolved against the tables of its
 * RESULTS.md text `md` (with `## title`). Throws when a named row or column is
 * missing, so a renamed task cannot silently drop out of the summary.
 */
export function summaryRows(name, md, specs) {
  const tables = parseTables(md);
  const title = /^## (.*)$/m.exec(md)?.[1] ?? name;
  return specs.map((s) => {
    const t = tables.get(s.section);
    if (!t) throw new Error(`bench summary of ${name}: no table under "### ${s.section}"`);
    const col = s.column ? t.header.indexOf(s.column) : 1;
    if (col < 0) throw new Error(`bench summary of ${name}: no column "${s.column}" in "${s.section}"`);
    const row = (task) => {
      const r = t.rows.find((x) => x[0] === task);
      if (!r) throw new Error(`bench summary of ${name}: no row "${task}" in "${s.section}"`);
      return r[col];
    };
    const v = row(s.vmkit);
    const p = row(s.peer);
    const better = s.better ?? 'lower';
    return {
      what: s.what,
      vmkit: `${v} (${s.vmkit})`,
      peer: `${p} (${s.peer})`,
      ratio: ratioOf(quantity(v), quantity(p), better),
      better,
      link: `[${title}](#${anchor(s.section)})`,
    };
  });
}

const BLOCK = /<!-- suite:([\w-]+) -->([\s\S]*?)<!-- \/suite:\1 -->/g;
const SPEC = /<!-- summary (\[[\s\S]*?\]) -->/;

/** The opening table of RESULTS.md, built from the summary specs stored in every suite block of `doc`. */
export function summaryTable(doc) {
  const lines = [
    '| what | vmkit | peer | ratio (vmkit vs peer; > 1×: vmkit ahead) | section |',
    '|---|---|---|---:|---|',
  ];
  for (const m of doc.matchAll(BLOCK)) {
    const spec = SPEC.exec(m[2]);
    if (!spec) continue;
    for (const r of summaryRows(m[1], m[2], JSON.parse(spec[1]))) {
      lines.push(`| ${r.what} | ${r.vmkit} | ${r.peer} | ${r.ratio} (${r.better === 'lower' ? 'time' : 'rate'}) | ${r.link} |`);
    }
  }
  return lines.join('\n');
}

/** The summary spec as stored in a suite block. */
export function specComment(specs) {
  return `<!-- summary ${JSON.stringify(specs)} -->`;
}

/** `doc` with its summary table (between `<!-- summary -->` markers, after the intro paragraph) rebuilt. */
export function withSummary(doc) {
  const table = `<!-- summary -->\n## At a glance\n\nOne headline row per measurement, read from the section it links to (medians; ratio = peer's time ÷ vmkit's, or vmkit's rate ÷ peer's).\n\n${summaryTable(doc)}\n<!-- /summary -->`;
  const i = doc.indexOf('<!-- summary -->');
  const j = doc.indexOf('<!-- /summary -->');
  if (i >= 0 && j > i) return doc.slice(0, i) + table + doc.slice(j + '<!-- /summary -->'.length);
  const first = doc.indexOf('<!-- suite:');
  return first >= 0 ? doc.slice(0, first) + table + '\n\n' + doc.slice(first) : doc.trimEnd() + '\n\n' + table + '\n';
}
