/**
 * The installed packages of an RPM-based root, for installed.ts: rpm's own
 * database read through `rpmdb --exportdb` (the headers rpm stored at install
 * time, parsed by _rpm.ts), so whatever backend the database uses (sqlite,
 * ndb, bdb) rpm reads it. Node only.
 *
 * ```
 * <root><dbpath>/{rpmdb.sqlite | Packages.db | Packages}     dbpath: /usr/lib/sysimage/rpm, /var/lib/rpm
 *    │ rpmdb --root <root> --dbpath <dbpath> --exportdb       (bounded output)
 *    ▼
 * per header: NAME, EPOCH:VERSION-RELEASE, ARCH; per file: path, FILEMODES, FILEFLAGS, FILESTATES
 *    │ regular files (S_IFREG) only; %ghost skipped; state not "normal" (replaced, not installed,
 *    │ net shared, wrong color) skipped, as `rpm -V` does not check their content
 *    ▼
 * { name, version, architecture, files: [{ path, conffile: %config }] }
 * ```
 * @module
 */
import { execFile } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { VmkitError } from '../errors.js';
import { parseRpmdbExport, RPMFILE_CONFIG, RPMFILE_GHOST } from './_rpm.js';

/** Where rpm keeps its database, newest layout first. */
const DBPATHS = ['/usr/lib/sysimage/rpm', '/var/lib/rpm'];
const DBFILES = ['rpmdb.sqlite', 'Packages.db', 'Packages'];
const S_IFMT = 0o170000, S_IFREG = 0o100000;
/** The export of a large machine's database (~2500 packages) is ~150 MiB. */
const MAX_EXPORT = 1 << 30;

/**
 * The rpm database directory of a root (as rpm's `--dbpath` takes it,
 * relative to the root), or undefined when the root has none.
 * @example `await _findRpmDb('/mnt/guest') // '/var/lib/rpm'`
 */
export async function _findRpmDb(root: string): Promise<string | undefined> {
  for (const d of DBPATHS) {
    for (const f of DBFILES) {
      try {
        if ((await stat(join(root, d, f))).isFile()) return d;
      } catch {
        // not this layout
      }
    }
  }
  return undefined;
}

/** One installed package and its files to hash, from rpm's database. */
export interface _RpmListed {
  name: string;
  version: string;
  architecture: string;
  files: { path: string; conffile: boolean }[];
}

/**
 * Lists the installed packages of an RPM root (see the module diagram).
 * NOT_FOUND when rpm (`rpmdb`) is not installed; IO when it fails; CORRUPT on
 * an export that is not rpm headers.
 * @example `const pkgs = await _listRpm('/', '/var/lib/rpm');`
 */
export async function _listRpm(root: string, dbpath: string, signal?: AbortSignal): Promise<_RpmListed[]> {
  const out = await new Promise<Buffer>((resolve, reject) => {
    execFile('rpmdb', ['--root', root, '--dbpath', dbpath, '--exportdb'], { encoding: 'buffer', maxBuffer: MAX_EXPORT, ...(signal ? { signal } : {}) }, (e, stdout, stderr) => {
      if (!e) return resolve(stdout);
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return reject(new VmkitError('NOT_FOUND', 'rpmdb is not installed: reading an RPM database needs rpm', { cause: e }));
      if (code === 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER') return reject(new VmkitError('LIMIT', `rpmdb --exportdb wrote more than ${MAX_EXPORT} bytes`, { cause: e }));
      if (code === 'ABORT_ERR') return reject(new VmkitError('CANCELLED', 'reading the rpm database was cancelled', { cause: e }));
      reject(new VmkitError('IO', `rpmdb --root ${root} --dbpath ${dbpath} --exportdb failed: ${String(stderr).trim().slice(0, 300) || e.message}`, { path: join(root, dbpath), cause: e }));
    });
  });
  const listed: _RpmListed[] = [];
  for (const p of parseRpmdbExport(out)) {
    if (p.name === 'gpg-pubkey') continue; // rpm's imported keys: headers without files
    const files: _RpmListed['files'] = [];
    for (const f of p.files) {
      if ((f.mode & S_IFMT) !== S_IFREG || f.flags & RPMFILE_GHOST || f.state !== 0) continue;
      files.push({ path: f.path, conffile: (f.flags & RPMFILE_CONFIG) !== 0 });
    }
    listed.push({ name: p.name, version: p.version, architecture: p.arch, files });
  }
  return listed;
}
