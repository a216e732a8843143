/**
 * Evidence of a whole Debian-family machine: what dpkg says is installed and
 * the SHA-256 of every regular file it lists (Node only: reads a root file
 * system). An RPM-based machine gives the same evidence from rpm's database
 * (_installed-rpm.ts: %config files are conffiles, %ghost files skipped). Formats: dpkg's database, https://man7.org/linux/man-pages/man1/dpkg.1.html
 * ("FILES") and dpkg-divert(1).
 *
 * ```
 * <root>/var/lib/dpkg/status          deb822 stanzas: Package, Status "install ok installed",
 *                                      Version, Architecture, Conffiles (" /etc/x <md5>" lines)
 * <root>/var/lib/dpkg/info/<p>[:<arch>].list   one path per line (directories too)
 * <root>/var/lib/dpkg/diversions      triples of lines: from, to, diverting package (":" = local)
 *        │
 *        ▼  per listed path: a diversion by another package moves it to its `to`;
 *           lstat: regular files only (directories, symlinks are not hashed);
 *           SHA-256 on worker threads (one per core), 1 MiB reads; with a digest cache,
 *           files whose identity (dev, ino, size, mtime, ctime) is unchanged are not read
 * InstalledEvidence { packages: [{ name, version, architecture, files: [{ path, sha256 | missing, conffile?, at? }] }],
 *                     unowned: [{ path, sha256 }] }    files under `unownedUnder` no package lists
 * ```
 * @module
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { VmkitError } from '../errors.js';
import type { _HashItem } from './_hash-file.js';
import { _DigestCacheFile, _hashMany } from './_hash-pool.js';
import { _findRpmDb, _listRpm } from './_installed-rpm.js';

/**
 * One file of an installed package as the machine found it.
 *
 * @example
 * ```ts
 * const f: InstalledFile = { path: '/etc/hosts.allow', sha256: hex, conffile: true };
 * ```
 */
export interface InstalledFile {
  /** The path as the package ships it (what its `.deb` holds). */
  path: string;
  /** Lowercase hex SHA-256 of the file on the machine; absent when the file is missing. */
  sha256?: string;
  /** Listed in the package's `Conffiles` (an administrator may change it). */
  conffile?: true;
  /** Where the file really is when another package diverted it (dpkg-divert). */
  at?: string;
  /** The listed file is not on the machine. */
  missing?: true;
}

/**
 * One installed package and its regular files.
 *
 * @example
 * ```ts
 * const p: InstalledPackage = { name: 'hello', version: '2.10-3', architecture: 'amd64', files: [] };
 * ```
 */
export interface InstalledPackage {
  name: string;
  version: string;
  architecture: string;
  files: InstalledFile[];
}

/**
 * A machine's installed-package evidence (see the module diagram).
 *
 * @example
 * ```ts
 * const ev: InstalledEvidence = await collectInstalled({ root: '/' });
 * console.log(ev.packages.length, 'packages,', ev.unowned.length, 'unowned files');
 * ```
 */
export interface InstalledEvidence {
  packages: InstalledPackage[];
  /** Regular files under the scanned directories that no package lists. */
  unowned: { path: string; sha256: string }[];
}

/**
 * One stanza of dpkg's status file that is installed.
 *
 * @example
 * ```ts
 * const [p]: DpkgStatusEntry[] = parseDpkgStatus(text);
 * p.conffiles; // ['/etc/default/hello']
 * ```
 */
export interface DpkgStatusEntry {
  name: string;
  version: string;
  architecture: string;
  /** Paths of the package's conffiles (obsolete ones included: still the package's). */
  conffiles: string[];
}

/**
 * Parses dpkg's `status` file: the packages whose Status is `install ok
 * installed` (or held), with their conffiles. CORRUPT on a stanza without
 * Package or Version.
 * @example `parseDpkgStatus(await readFile('/var/lib/dpkg/status', 'utf8')).length`
 */
export function parseDpkgStatus(text: string): DpkgStatusEntry[] {
  if (typeof text !== 'string') throw new VmkitError('ARG_TYPE', 'text must be a string');
  const out: DpkgStatusEntry[] = [];
  let line = 0;
  for (const stanza of text.split(/\n[ \t]*\n/)) {
    const fields = new Map<string, string>();
    let last = '';
    const start = line;
    for (const l of stanza.split('\n')) {
      line++;
      if (l === '') continue;
      if (l[0] === ' ' || l[0] === '\t') {
        if (!last) throw new VmkitError('CORRUPT', `dpkg status line ${line}: continuation without a field`);
        fields.set(last, fields.get(last) + '\n' + l.trim());
        continue;
      }
      const c = l.indexOf(':');
      if (c <= 0) throw new VmkitError('CORRUPT', `dpkg status line ${line}: not a field`);
      last = l.slice(0, c).toLowerCase();
      fields.set(last, l.slice(c + 1).trim());
    }
    line++;
    if (fields.size === 0) continue;
    const status = (fields.get('status') ?? '').split(/\s+/);
    if (status[2] !== 'installed') continue;
    const name = fields.get('package');
    const version = fields.get('version');
    if (!name || !version) throw new VmkitError('CORRUPT', `dpkg status stanza at line ${start + 1}: installed without Package or Version`);
    const conffiles: string[] = [];
    for (const c of (fields.get('conffiles') ?? '').split('\n')) {
      const path = c.trim().split(/\s+/)[0];
      if (path && path.startsWith('/')) conffiles.push(path);
    }
    out.push({ name, version, architecture: fields.get('architecture') ?? 'all', conffiles });
  }
  return out;
}

/**
 * Parses dpkg's `diversions` file (triples: from, to, package; `:` is a
 * local diversion). CORRUPT when the line count is not a multiple of 3.
 * @example `parseDiversions('/usr/bin/x\n/usr/bin/x.real\nfoo\n').get('/usr/bin/x') // { to: '/usr/bin/x.real', by: 'foo' }`
 */
export function parseDiversions(text: string): Map<string, { to: string; by: string }> {
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  if (lines.length % 3 !== 0) throw new VmkitError('CORRUPT', `dpkg diversions: ${lines.length} lines, not triples`);
  const out = new Map<string, { to: string; by: string }>();
  for (let i = 0; i < lines.length; i += 3) out.set(lines[i]!, { to: lines[i + 1]!, by: lines[i + 2]! });
  return out;
}

/**
 * Options of {@link collectInstalled}.
 *
 * @example
 * ```ts
 * const o: CollectInstalledOptions = { root: '/mnt/guest', concurrency: 16, unownedUnder: ['/usr/bin', '/etc'] };
 * ```
 */
export interface CollectInstalledOptions {
  /** The machine's root directory (default `/`). */
  root?: string;
  /** Files per batch sent to a hashing thread (default 16; 64 at least on worker threads). */
  concurrency?: number;
  /** Worker threads hashing files (default: the machine's cores; 0 hashes on the calling thread). */
  threads?: number;
  /**
   * A digest cache file: a file whose device, inode, size, mtime and ctime (in
   * nanoseconds) are those recorded with its digest is not read again. Created
   * when missing (mode 0600), rewritten at the end. Trusts the kernel's ctime,
   * which no unprivileged process can set back (docs/attest-service.md).
   */
  digestCache?: string;
  /**
   * Which package database to read: `dpkg` (/var/lib/dpkg), `rpm` (rpm's
   * database through `rpmdb --exportdb`, _installed-rpm.ts) or `auto`
   * (default: dpkg's when the root has one, else rpm's).
   */
  format?: 'auto' | 'dpkg' | 'rpm';
  /** rpm's database directory inside the root (default: /usr/lib/sysimage/rpm or /var/lib/rpm, whichever holds one). */
  rpmDbPath?: string;
  /** Directories (as on the machine) searched for files no package lists (default none). */
  unownedUnder?: string[];
  /** Called as files are hashed. */
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new VmkitError('IO', `cannot read ${path}: ${(e as Error).message}`, { path, cause: e });
  }
}

function hashItem(p: string, cache: _DigestCacheFile | undefined): _HashItem {
  const c = cache?.entries.get(p);
  return c ? { p, c } : { p };
}

/**
 * Collects the installed packages of a Debian-family root (or, without a dpkg
 * database, of an RPM-based one: _installed-rpm.ts) and hashes every regular
 * file they list (see the module diagram). NOT_FOUND when the root has
 * neither database.
 * @example `const ev = await collectInstalled({ root: '/', onProgress: (d, t) => process.stderr.write(`\r${d}/${t}`) });`
 */
export async function collectInstalled(options: CollectInstalledOptions = {}): Promise<InstalledEvidence> {
  const root = options.root ?? '/';
  if (typeof root !== 'string' || root === '') throw new VmkitError('ARG_TYPE', 'root must be a directory path');
  const concurrency = options.concurrency ?? 16;
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 1024) throw new VmkitError('ARG_RANGE', 'concurrency must be an integer 1..1024');
  const at = (p: string): string => join(root, p);
  const format = options.format ?? 'auto';
  if (format !== 'auto' && format !== 'dpkg' && format !== 'rpm') throw new VmkitError('ARG_RANGE', "format must be 'auto', 'dpkg' or 'rpm'");
  const statusText = format === 'rpm' ? undefined : await readOptional(at('/var/lib/dpkg/status'));
  const owned = new Set<string>();
  const packages: InstalledPackage[] = [];
  const jobs: { file: InstalledFile; real: string }[] = [];
  if (statusText !== undefined) {
    const entries = parseDpkgStatus(statusText);
    const diversions = parseDiversions((await readOptional(at('/var/lib/dpkg/diversions'))) ?? '');
    for (const e of entries) {
      // Multi-arch "same" packages name their list <pkg>:<arch>.list; others <pkg>.list.
      const list = (await readOptional(at(`/var/lib/dpkg/info/${e.name}:${e.architecture}.list`))) ?? (await readOptional(at(`/var/lib/dpkg/info/${e.name}.list`))) ?? '';
      const conf = new Set(e.conffiles);
      const pkg: InstalledPackage = { name: e.name, version: e.version, architecture: e.architecture, files: [] };
      for (const path of list.split('\n')) {
        if (!path.startsWith('/') || path === '/.') continue;
        const d = diversions.get(path);
        const real = d && d.by !== e.name ? d.to : path;
        owned.add(real);
        const file: InstalledFile = { path };
        if (real !== path) file.at = real;
        if (conf.has(path)) file.conffile = true;
        jobs.push({ file, real });
        pkg.files.push(file);
      }
      packages.push(pkg);
    }
  } else {
    const dbpath = format === 'dpkg' ? undefined : options.rpmDbPath ?? (await _findRpmDb(root));
    if (dbpath === undefined) throw new VmkitError('NOT_FOUND', `${root}: no dpkg database (${at('/var/lib/dpkg/status')}) and no rpm database (${format === 'dpkg' ? 'not looked for' : '/usr/lib/sysimage/rpm, /var/lib/rpm'})`, { path: root });
    for (const r of await _listRpm(root, dbpath, options.signal)) {
      const pkg: InstalledPackage = { name: r.name, version: r.version, architecture: r.architecture, files: [] };
      for (const f of r.files) {
        owned.add(f.path);
        const file: InstalledFile = { path: f.path };
        if (f.conffile) file.conffile = true;
        jobs.push({ file, real: f.path });
        pkg.files.push(file);
      }
      packages.push(pkg);
    }
  }
  // Files no package lists, under the directories asked for.
  const unownedJobs: { path: string }[] = [];
  const walk = async (dir: string): Promise<void> => {
    let names: import('node:fs').Dirent[];
    try {
      names = await readdir(at(dir), { withFileTypes: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw new VmkitError('IO', `cannot list ${at(dir)}: ${(e as Error).message}`, { path: at(dir), cause: e });
    }
    for (const d of names) {
      const p = dir === '/' ? `/${d.name}` : `${dir}/${d.name}`;
      if (d.isDirectory()) await walk(p);
      else if (d.isFile() && !owned.has(p)) unownedJobs.push({ path: p });
    }
  };
  for (const u of options.unownedUnder ?? []) {
    if (!u.startsWith('/')) throw new VmkitError('ARG_RANGE', `unownedUnder: ${JSON.stringify(u)} is not an absolute path`);
    await walk(u.replace(/\/+$/, '') || '/');
  }
  const unowned: InstalledEvidence['unowned'] = [];
  const total = jobs.length + unownedJobs.length;
  const cache = options.digestCache === undefined ? undefined : _DigestCacheFile.load(options.digestCache);
  const items: _HashItem[] = [];
  for (const j of jobs) items.push(hashItem(at(j.real), cache));
  for (const j of unownedJobs) items.push(hashItem(at(j.path), cache));
  let reported = 0;
  const results = await _hashMany(items, {
    ...(options.threads === undefined ? {} : { threads: options.threads }),
    batch: Math.max(concurrency, options.threads === 0 ? 1 : 64),
    ...(options.signal ? { signal: options.signal } : {}),
    onProgress: (done) => {
      if (options.onProgress && (done - reported >= 256 || done === total)) options.onProgress((reported = done), total);
    },
  });
  const fresh = new Map<string, [string, string]>();
  const fail = (i: number): never => {
    const p = items[i]!.p;
    throw new VmkitError('IO', `cannot read ${p}: ${results[i]!.e}`, { path: p });
  };
  // A list names directories and symlinks too: those are dropped, keeping each package's order.
  const notRegular = new Set<InstalledFile>();
  for (let i = 0; i < jobs.length; i++) {
    const r = results[i]!;
    const f = jobs[i]!.file;
    if (r.k === 3) fail(i);
    if (r.k === 1) notRegular.add(f);
    else if (r.k === 0) f.missing = true;
    else f.sha256 = r.h!;
    if (r.s) fresh.set(items[i]!.p, [r.s, r.h!]);
  }
  if (notRegular.size) for (const p of packages) p.files = p.files.filter((f) => !notRegular.has(f));
  for (let i = jobs.length; i < items.length; i++) {
    const r = results[i]!;
    if (r.k === 3) fail(i);
    if (r.k === 2) unowned.push({ path: unownedJobs[i - jobs.length]!.path, sha256: r.h! });
    if (r.s) fresh.set(items[i]!.p, [r.s, r.h!]);
  }
  cache?.save(fresh);
  unowned.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return { packages, unowned };
}
