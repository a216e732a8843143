/**
 * Appraising a whole machine (installed.ts evidence) against repository
 * sources, with file digests fetched on demand from the signed packages.
 *
 * ```
 *  per installed package (name, version, arch)
 *    lookupPackage ──none──► "version-not-in-sources" (one item per package; its files counted)
 *        │ entry (its .deb SHA-256 from the signed Packages)
 *        ▼
 *    FileDigestCache <dir>/<sha[0..2]>/<sha>.json ──hit──► file map
 *        │ miss: ≤ maxDownloads at once, ≤ fetchPackages per request, ≤ fetchBudgetMs
 *        ▼
 *    source.fileDigests(entry): .deb fetched, size + SHA-256 checked, data.tar hashed ──► cache
 *  per file:  same SHA-256 → affirmed         differs, conffile → modified-conffile (warning)
 *             differs → digest-mismatch (contraindicated)      not in the .deb → not-in-package
 *             missing on the machine → missing                 .deb not fetched → not-fetched
 *  unowned files: warning, or excluded by `ignore` globs / `unowned: 'ignore'`
 * ```
 * @module
 */
import { VmkitError } from '../errors.js';
import { Ar4si, worst, type ArStatus, type ItemVerdict, type SubmodAppraisal } from './appraise.js';
import { compileExcludes, type ImaExcludes } from './ima.js';
import type { InstalledEvidence, InstalledFile, InstalledPackage } from './installed.js';
import type { Digest, PackageEntry } from './types.js';

/**
 * What the machine appraisal needs of the sources (a `SourceSet` has it).
 *
 * @example
 * ```ts
 * const ix: MachineIndex = sourceSet;
 * ```
 */
export interface MachineIndex {
  lookupPackage(name: string, version?: string): PackageEntry[];
  fileDigests?(entry: PackageEntry, signal?: AbortSignal): Promise<Map<string, Digest> | undefined>;
}

/** The categories a file (or package) of a machine falls in, in the EAR's `categories`. */
const CATEGORIES = ['affirmed', 'modified-conffile', 'digest-mismatch', 'not-in-package', 'missing', 'version-not-in-sources', 'not-fetched', 'unowned', 'unowned-ignored'] as const;

/**
 * One of {@link CATEGORIES}: why a file is (not) affirmed.
 * @example `const c: MachineCategory = 'modified-conffile';`
 */
export type MachineCategory = (typeof CATEGORIES)[number];

const STATUS: Record<MachineCategory, ArStatus> = {
  affirmed: 'affirming',
  'modified-conffile': 'warning',
  'digest-mismatch': 'contraindicated',
  'not-in-package': 'warning',
  missing: 'warning',
  'version-not-in-sources': 'warning',
  'not-fetched': 'warning',
  unowned: 'warning',
  'unowned-ignored': 'none',
};

/**
 * A persistent cache of packages' file digests, keyed by the package's own
 * SHA-256 (the one the signed index gives): a file per package,
 * `<dir>/<sha[0..2]>/<sha>.json`, `[[path, sha256hex], …]`, written to a
 * temporary name and renamed. Node only.
 *
 * @example
 * ```ts
 * const cache = new FileDigestCache('/var/cache/vmkit-attest');
 * await cache.put(debSha, files); (await cache.get(debSha))?.get('/usr/bin/hello');
 * ```
 */
export class FileDigestCache {
  readonly dir: string;
  constructor(dir: string) {
    if (typeof dir !== 'string' || dir === '') throw new VmkitError('ARG_TYPE', 'dir must be a directory path');
    this.dir = dir;
  }

  private path(sha: string): string {
    if (!/^[0-9a-f]{64}$/.test(sha)) throw new VmkitError('ARG_RANGE', 'sha must be 64 lowercase hex digits');
    return `${this.dir}/${sha.slice(0, 2)}/${sha}.json`;
  }

  /** The file digests kept for this package, or undefined. CORRUPT when the entry is not one. @example `await cache.get(sha)` */
  async get(sha: string): Promise<Map<string, Digest> | undefined> {
    const { readFile } = await import('node:fs/promises');
    let text: string;
    try {
      text = await readFile(this.path(sha), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new VmkitError('IO', `file digest cache: ${(e as Error).message}`, { cause: e });
    }
    let rows: unknown;
    try {
      rows = JSON.parse(text);
    } catch (e) {
      throw new VmkitError('CORRUPT', `file digest cache ${this.path(sha)} is not JSON`, { cause: e, path: this.path(sha) });
    }
    if (!Array.isArray(rows)) throw new VmkitError('CORRUPT', `file digest cache ${this.path(sha)} is not a list`, { path: this.path(sha) });
    const out = new Map<string, Digest>();
    for (const r of rows) {
      if (!Array.isArray(r) || typeof r[0] !== 'string' || typeof r[1] !== 'string' || !/^[0-9a-f]{64}$/.test(r[1])) {
        throw new VmkitError('CORRUPT', `file digest cache ${this.path(sha)}: bad row`, { path: this.path(sha) });
      }
      out.set(r[0], { alg: 'sha256', hex: r[1] });
    }
    return out;
  }

  /** Keeps the file digests of this package. @example `await cache.put(sha, files)` */
  async put(sha: string, files: Map<string, Digest>): Promise<void> {
    const { mkdir, rename, writeFile } = await import('node:fs/promises');
    const p = this.path(sha);
    await mkdir(p.slice(0, p.lastIndexOf('/')), { recursive: true });
    const rows = [...files].filter(([, d]) => d.alg === 'sha256').map(([path, d]) => [path, d.hex]);
    const tmp = `${p}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
    await writeFile(tmp, JSON.stringify(rows));
    await rename(tmp, p);
  }
}

/**
 * Options of {@link OnDemandFiles}.
 *
 * @example
 * ```ts
 * const o: OnDemandFilesOptions = { cacheDir: '/var/cache/vmkit-attest', maxDownloads: 4 };
 * ```
 */
export interface OnDemandFilesOptions {
  /** Where the file digests are kept across restarts (default: memory only). */
  cacheDir?: string;
  /** Packages fetched at once, across all requests (default 4). */
  maxDownloads?: number;
  /** Packages' file maps kept in memory when there is no cache dir (default 4096). */
  memoryEntries?: number;
}

/**
 * File digests of packages on demand: from the cache, else fetched by the
 * source (bounded concurrency, one fetch per package however many ask).
 *
 * @example
 * ```ts
 * const files = new OnDemandFiles(sourceSet, { cacheDir: '/var/cache/vmkit-attest' });
 * const map = await files.get(sourceSet.lookupPackage('hello', '2.10-3')[0]!);
 * ```
 */
export class OnDemandFiles {
  private readonly cache: FileDigestCache | undefined;
  private readonly memory = new Map<string, Map<string, Digest>>();
  private readonly pending = new Map<string, Promise<Map<string, Digest> | undefined>>();
  private readonly waiters: (() => void)[] = [];
  private active = 0;
  private readonly max: number;
  private readonly memoryMax: number;
  /** Packages fetched from a source (not from the cache), and their failures. */
  readonly counts = { fetched: 0, cached: 0, failed: 0 };

  private readonly index: MachineIndex;

  constructor(index: MachineIndex, options: OnDemandFilesOptions = {}) {
    this.index = index;
    this.cache = options.cacheDir === undefined ? undefined : new FileDigestCache(options.cacheDir);
    this.max = options.maxDownloads ?? 4;
    if (!Number.isInteger(this.max) || this.max < 1 || this.max > 256) throw new VmkitError('ARG_RANGE', 'maxDownloads must be an integer 1..256');
    this.memoryMax = options.memoryEntries ?? 4096;
  }

  /** The cached file map of this package, if any; never fetches. @example `await files.cached(entry)` */
  async cached(entry: PackageEntry): Promise<Map<string, Digest> | undefined> {
    const sha = shaOf(entry);
    if (!sha) return undefined;
    const m = this.memory.get(sha);
    if (m) return m;
    const d = await this.cache?.get(sha);
    if (d) this.remember(sha, d);
    return d;
  }

  /** The file map of this package: cached, or fetched by its source. @example `await files.get(entry)` */
  async get(entry: PackageEntry, signal?: AbortSignal): Promise<Map<string, Digest> | undefined> {
    const sha = shaOf(entry);
    if (!sha || !this.index.fileDigests) return undefined;
    const hit = await this.cached(entry);
    if (hit) {
      this.counts.cached++;
      return hit;
    }
    let job = this.pending.get(sha);
    if (!job) {
      job = this.fetch(entry, sha, signal).finally(() => this.pending.delete(sha));
      this.pending.set(sha, job);
    }
    return job;
  }

  private remember(sha: string, m: Map<string, Digest>): void {
    this.memory.set(sha, m);
    while (this.memory.size > (this.cache ? 64 : this.memoryMax)) this.memory.delete(this.memory.keys().next().value as string);
  }

  private async fetch(entry: PackageEntry, sha: string, signal: AbortSignal | undefined): Promise<Map<string, Digest> | undefined> {
    while (this.active >= this.max) await new Promise<void>((r) => this.waiters.push(r));
    this.active++;
    try {
      if (signal?.aborted) throw new VmkitError('CANCELLED', 'the request ran out of its fetch budget');
      const m = await this.index.fileDigests!(entry, signal);
      if (!m) return undefined;
      // Old .rpm files carry MD5 file digests: not comparable with the machine's SHA-256 (nor cached).
      for (const d of m.values()) if (d.alg !== 'sha256') throw new VmkitError('UNSUPPORTED', `${entry.provenance.repository}: ${entry.provenance.package} ${entry.provenance.version} gives ${d.alg} file digests, not sha256`);
      this.counts.fetched++;
      await this.cache?.put(sha, m);
      this.remember(sha, m);
      return m;
    } catch (e) {
      this.counts.failed++;
      throw e;
    } finally {
      this.active--;
      this.waiters.shift()?.();
    }
  }
}

function shaOf(e: PackageEntry): string | undefined {
  return e.digests.find((d) => d.alg === 'sha256')?.hex;
}

/**
 * Options of {@link appraiseInstalled}.
 *
 * @example
 * ```ts
 * const o: AppraiseInstalledOptions = { unowned: 'warning', ignore: ['glob:/etc/ssh/ssh_host_*'], fetchPackages: 2000, fetchBudgetMs: 120_000 };
 * ```
 */
export interface AppraiseInstalledOptions {
  /** How a file no package lists counts (default `warning`). */
  unowned?: 'warning' | 'ignore';
  /** Paths (`glob:` patterns or regexes, as IMA excludes) whose unowned files are ignored. */
  ignore?: readonly string[];
  /** Packages fetched (not cached) per request at most (default 2000); the rest are `not-fetched`. */
  fetchPackages?: number;
  /** Time a request may spend fetching, ms (default 120 000); the rest are `not-fetched`. */
  fetchBudgetMs?: number;
  /** Non-affirming items listed at most (default 20 000); beyond it only counted (`omitted`). */
  maxListed?: number;
  policyId?: string;
}

/**
 * Each package's repository entry and file map (cached, or fetched within
 * the request's budgets: `fetchPackages`, `fetchBudgetMs`); a VmkitError in
 * place of a map that could not be had, undefined where there is no entry or
 * `need` says no fetch is worth it. Shared by the file and IMA appraisals.
 * @example `const { plans, maps } = await _packageMaps(index, files, ev.packages, options, () => true);`
 */
export async function _packageMaps(index: MachineIndex, files: OnDemandFiles, packages: readonly InstalledPackage[], options: Pick<AppraiseInstalledOptions, 'fetchPackages' | 'fetchBudgetMs'>, need: (p: InstalledPackage) => boolean): Promise<{ plans: { p: InstalledPackage; entry: PackageEntry | undefined }[]; maps: (Map<string, Digest> | VmkitError | undefined)[] }> {
  const fetchMax = options.fetchPackages ?? 2000;
  const budget = AbortSignal.timeout(options.fetchBudgetMs ?? 120_000);
  let fetches = 0;
  // Resolve every package first (lookups, cache), then fetch the misses concurrently (bounded by OnDemandFiles).
  const plans = packages.map((p) => ({ p, entry: pick(index.lookupPackage(p.name, p.version), p) }));
  const maps = await Promise.all(plans.map(async ({ p, entry }) => {
    if (!entry) return undefined;
    const hit = await files.cached(entry);
    if (hit) return hit;
    if (!need(p)) return undefined;
    if (fetches >= fetchMax) return new VmkitError('LIMIT', `more than ${fetchMax} packages to fetch in one request`);
    fetches++;
    try {
      return (await files.get(entry, budget)) ?? new VmkitError('UNSUPPORTED', `${entry.provenance.repository} gives no file digests`);
    } catch (e) {
      return e instanceof VmkitError ? e : new VmkitError('NETWORK', (e as Error).message, { cause: e });
    }
  }));
  return { plans, maps };
}

/**
 * Appraises a machine's installed-package evidence: one `vmkit-machine`
 * submodule (see the module diagram) with file counts per category. Affirmed
 * files are counted and their packages listed with the repository that
 * affirmed them; every other file (up to `maxListed`) is listed with its
 * reason, package and version.
 * @example `const sub = await appraiseInstalled(sourceSet, new OnDemandFiles(sourceSet), evidence);`
 */
export async function appraiseInstalled(index: MachineIndex, files: OnDemandFiles, ev: InstalledEvidence, options: AppraiseInstalledOptions = {}): Promise<SubmodAppraisal> {
  const maxListed = options.maxListed ?? 20_000;
  const ignore: ImaExcludes | undefined = options.ignore?.length ? compileExcludes(options.ignore) : undefined;
  const categories = Object.fromEntries(CATEGORIES.map((c) => [c, 0])) as Record<MachineCategory, number>;
  const summary = { items: 0, affirming: 0, warning: 0, contraindicated: 0, none: 0, excluded: 0, omitted: 0 };
  const items: ItemVerdict[] = [];
  let status = 'none' as ArStatus;
  const add = (cat: MachineCategory, n: number, item?: ItemVerdict): void => {
    categories[cat] += n;
    summary.items += n;
    const s = STATUS[cat];
    if (cat === 'unowned-ignored') summary.excluded += n;
    else summary[s as 'affirming' | 'warning' | 'contraindicated'] += n;
    if (n > 0 && s !== 'none') status = worst(status, s);
    if (item) {
      if (items.length < maxListed) items.push(item);
      else summary.omitted++;
    } else summary.omitted += n;
  };
  const { plans, maps } = await _packageMaps(index, files, ev.packages, options, (p) => p.files.some((f) => f.sha256 !== undefined));
  for (let i = 0; i < plans.length; i++) {
    const { p, entry } = plans[i]!;
    const m = maps[i];
    const base = { name: p.name, version: p.version, architecture: p.architecture };
    if (!entry) {
      add('version-not-in-sources', p.files.length, { kind: 'package', status: 'warning', reason: 'version-not-in-sources', ...base, matches: [] });
      continue;
    }
    if (!(m instanceof Map)) {
      const listed = p.files.length;
      const why = m ? `${m.code}: ${m.message}` : 'no file digests';
      add('not-fetched', listed, { kind: 'package', status: 'warning', reason: 'not-fetched', ...base, path: why.slice(0, 300), matches: [entry.provenance] });
      continue;
    }
    let affirmed = 0;
    for (const f of p.files) {
      const cat = fileCategory(f, m);
      if (cat === 'affirmed') {
        affirmed++;
        continue;
      }
      const item: ItemVerdict = { kind: 'file', status: STATUS[cat], reason: cat, path: f.at ?? f.path, ...base, matches: [] };
      if (f.sha256) item.hex = f.sha256;
      const want = m.get(f.path);
      if (want) item.matches.push({ ...entry.provenance, path: f.path });
      add(cat, 1, item);
    }
    add('affirmed', affirmed);
    // The package whose .deb affirmed its files: provenance once per package.
    if (items.length < maxListed) items.push({ kind: 'package', status: 'affirming', ...base, matches: [entry.provenance] });
  }
  for (const u of ev.unowned) {
    const ignored = options.unowned === 'ignore' || (ignore !== undefined && ignore(u.path));
    if (ignored) add('unowned-ignored', 1);
    else add('unowned', 1, { kind: 'file', status: 'warning', reason: 'unowned', path: u.path, alg: 'sha256', hex: u.sha256, matches: [] });
  }
  const fs = status === 'contraindicated' ? Ar4si.CONTRAINDICATED_FILES : status === 'warning' ? Ar4si.UNRECOGNIZED_FILES : status === 'affirming' ? Ar4si.APPROVED_FILES : Ar4si.NO_CLAIM;
  return { status, trustVector: { 'file-system': fs }, policyId: options.policyId ?? 'vmkit:installed-packages/1', summary, items, categories };
}

function fileCategory(f: InstalledFile, m: Map<string, Digest>): MachineCategory {
  if (f.missing || f.sha256 === undefined) return 'missing';
  const want = m.get(f.path);
  if (!want) return 'not-in-package';
  if (want.hex === f.sha256) return 'affirmed';
  return f.conffile ? 'modified-conffile' : 'digest-mismatch';
}

// The repository entry of an installed package: same version, its architecture (or all).
function pick(entries: PackageEntry[], p: InstalledPackage): PackageEntry | undefined {
  return entries.find((e) => e.provenance.version === p.version && (e.provenance.architecture === undefined || e.provenance.architecture === p.architecture) && shaOf(e) !== undefined);
}

const HEX64 = /^[0-9a-f]{64}$/;

/**
 * Validates installed-package evidence from a request without trusting it:
 * bounded counts and string lengths. ARG_TYPE / ARG_RANGE on a bad shape,
 * LIMIT past `maxFiles`.
 * @example `const ev = parseInstalled(JSON.parse(body).installed, { maxFiles: 200_000 });`
 */
export function parseInstalled(value: unknown, limits: { maxFiles?: number } = {}): InstalledEvidence {
  const maxFiles = limits.maxFiles ?? 200_000;
  const bad = (what: string, expected: string): VmkitError => new VmkitError('ARG_TYPE', `installed: ${what} must be ${expected}`);
  if (typeof value !== 'object' || value === null) throw bad('the evidence', 'an object');
  const o = value as { packages?: unknown; unowned?: unknown };
  if (!Array.isArray(o.packages)) throw bad('packages', 'a list');
  const unownedIn = o.unowned ?? [];
  if (!Array.isArray(unownedIn)) throw bad('unowned', 'a list');
  let n = unownedIn.length;
  const str = (v: unknown, what: string, max = 4096): string => {
    if (typeof v !== 'string' || v.length === 0 || v.length > max) throw new VmkitError('ARG_TYPE', `installed: ${what} must be a string of 1..${max} characters`);
    return v;
  };
  const path = (v: unknown, what: string): string => {
    const s = str(v, what);
    if (s[0] !== '/') throw new VmkitError('ARG_RANGE', `installed: ${what} must be an absolute path`);
    return s;
  };
  const packages: InstalledPackage[] = o.packages.map((pv: unknown, i: number) => {
    if (typeof pv !== 'object' || pv === null) throw bad(`packages[${i}]`, 'an object');
    const p = pv as Record<string, unknown>;
    if (!Array.isArray(p.files)) throw bad(`packages[${i}].files`, 'a list');
    n += p.files.length;
    if (n > maxFiles) throw new VmkitError('LIMIT', `installed: more than ${maxFiles} files in one request (send it in parts)`);
    const files = p.files.map((fv: unknown, j: number) => {
      if (typeof fv !== 'object' || fv === null) throw bad(`packages[${i}].files[${j}]`, 'an object');
      const f = fv as Record<string, unknown>;
      const out: InstalledFile = { path: path(f.path, `packages[${i}].files[${j}].path`) };
      if (f.sha256 !== undefined) {
        if (typeof f.sha256 !== 'string' || !HEX64.test(f.sha256)) throw new VmkitError('ARG_RANGE', `installed: packages[${i}].files[${j}].sha256 must be 64 lowercase hex digits`);
        out.sha256 = f.sha256;
      } else out.missing = true;
      if (f.conffile === true) out.conffile = true;
      if (f.at !== undefined) out.at = path(f.at, `packages[${i}].files[${j}].at`);
      return out;
    });
    return { name: str(p.name, `packages[${i}].name`, 256), version: str(p.version, `packages[${i}].version`, 256), architecture: str(p.architecture, `packages[${i}].architecture`, 64), files };
  });
  const unowned = unownedIn.map((uv: unknown, i: number) => {
    if (typeof uv !== 'object' || uv === null) throw bad(`unowned[${i}]`, 'an object');
    const u = uv as Record<string, unknown>;
    if (typeof u.sha256 !== 'string' || !HEX64.test(u.sha256)) throw new VmkitError('ARG_RANGE', `installed: unowned[${i}].sha256 must be 64 lowercase hex digits`);
    return { path: path(u.path, `unowned[${i}].path`), sha256: u.sha256 };
  });
  if (n > maxFiles) throw new VmkitError('LIMIT', `installed: more than ${maxFiles} files in one request (send it in parts)`);
  return { packages, unowned };
}
