/**
 * Parsers for the APT repository index files, both in the deb822 control
 * syntax (Debian Policy §5.1; repository format:
 * https://wiki.debian.org/DebianRepository/Format):
 *
 * ```
 * dists/<suite>/InRelease        cleartext-signed Release
 *   Suite: stable                (Codename, Date, Valid-Until, Acquire-By-Hash, …)
 *   SHA256:
 *    <sha256> <size> main/binary-amd64/Packages.xz      ← one line per index file
 * dists/<suite>/main/binary-amd64/Packages(.gz|.xz)
 *   Package: hello               one paragraph per package, blank line between
 *   Version: 2.10-3
 *   Architecture: amd64
 *   Filename: pool/main/h/hello/hello_2.10-3_amd64.deb
 *   Size: 53080
 *   SHA256: <sha256 of the .deb>
 * ```
 * Malformed input is a VmkitError CORRUPT with the byte offset of the line.
 * @module
 */
import { VmkitError } from '../../errors.js';

/**
 * One file listed by a Release file.
 *
 * @example
 * ```ts
 * const f: ReleaseFile | undefined = parseRelease(text).files.get('main/binary-amd64/Packages.xz');
 * console.log(f?.size, f?.sha256);
 * ```
 */
export interface ReleaseFile {
  size: number;
  /** SHA-256, lowercase hex. */
  sha256: string;
}

/**
 * A parsed Release file.
 *
 * @example
 * ```ts
 * const rel: Release = parseRelease(verifiedText);
 * if (rel.validUntil && rel.validUntil < new Date()) throw new Error('stale mirror');
 * ```
 */
export interface Release {
  /** Every field, by name (multi-line values joined with `\n`). */
  fields: Map<string, string>;
  /** Files listed under `SHA256:`, by path relative to the dists/<suite>/ directory. */
  files: Map<string, ReleaseFile>;
  suite?: string;
  codename?: string;
  date?: Date;
  validUntil?: Date;
  /** `Acquire-By-Hash: yes`: index files are also at `…/by-hash/SHA256/<hash>`. */
  acquireByHash: boolean;
}

function corrupt(what: string, msg: string, offset: number): never {
  throw new VmkitError('CORRUPT', `${what}: ${msg}`, { offset });
}

/**
 * Parses one or more deb822 paragraphs into field maps (names as written).
 * @example `parseDeb822('Package: a\nVersion: 1\n')[0].get('Version') // '1'`
 */
export function parseDeb822(text: string, what: string = 'deb822'): Map<string, string>[] {
  const out: Map<string, string>[] = [];
  let cur: Map<string, string> | undefined;
  let last: string | undefined;
  let pos = 0;
  const n = text.length;
  while (pos < n) {
    let eol = text.indexOf('\n', pos);
    if (eol < 0) eol = n;
    let end = eol;
    if (end > pos && text.charCodeAt(end - 1) === 13) end--;
    const c = text.charCodeAt(pos);
    if (end === pos || isBlank(text, pos, end)) {
      cur = undefined;
      last = undefined;
    } else if (c === 35 /* # */) {
      // comment line (allowed by deb822)
    } else if (c === 32 || c === 9) {
      if (!cur || last === undefined) corrupt(what, 'continuation line outside a field', pos);
      const v = text.slice(pos + 1, end);
      cur.set(last, cur.get(last)! + '\n' + (v.trim() === '.' ? '' : v.trimEnd()));
    } else {
      const colon = text.indexOf(':', pos);
      if (colon < 0 || colon >= end || colon === pos) corrupt(what, 'line is not "Field: value"', pos);
      const name = text.slice(pos, colon);
      if (/[\s]/.test(name)) corrupt(what, `bad field name ${JSON.stringify(name.slice(0, 40))}`, pos);
      if (!cur) {
        cur = new Map();
        out.push(cur);
      }
      if (cur.has(name)) corrupt(what, `field ${name} repeated in one paragraph`, pos);
      cur.set(name, text.slice(colon + 1, end).trim());
      last = name;
    }
    pos = eol + 1;
  }
  return out;
}

function isBlank(t: string, a: number, b: number): boolean {
  for (let i = a; i < b; i++) {
    const c = t.charCodeAt(i);
    if (c !== 32 && c !== 9) return false;
  }
  return true;
}

function parseDate(v: string, field: string, what: string): Date {
  // RFC 2822 dates as Debian writes them ("Sat, 11 Jul 2026 10:16:37 UTC").
  const t = Date.parse(v);
  if (!Number.isFinite(t)) corrupt(what, `${field} is not a date: ${JSON.stringify(v.slice(0, 60))}`, 0);
  return new Date(t);
}

/**
 * Parses the text of a Release file (after its signature was checked).
 * Requires a `SHA256:` list (MD5/SHA1 alone are refused: INTEGRITY).
 *
 * @example
 * ```ts
 * const rel = parseRelease(verifiedText);
 * rel.files.get('main/binary-amd64/Packages.xz')?.sha256;
 * ```
 */
export function parseRelease(text: string, what: string = 'Release'): Release {
  const paras = parseDeb822(text, what);
  if (paras.length !== 1) corrupt(what, `expected one paragraph, found ${paras.length}`, 0);
  const fields = paras[0]!;
  const sums = fields.get('SHA256');
  if (sums === undefined) throw new VmkitError('INTEGRITY', `${what} has no SHA256 list (weaker hashes are not trusted)`);
  const files = new Map<string, ReleaseFile>();
  for (const line of sums.split('\n')) {
    const l = line.trim();
    if (l === '') continue;
    const m = /^([0-9a-fA-F]{64})\s+(\d{1,15})\s+(\S+)$/.exec(l);
    if (!m) corrupt(what, `bad SHA256 line ${JSON.stringify(l.slice(0, 80))}`, 0);
    files.set(m[3]!, { sha256: m[1]!.toLowerCase(), size: Number(m[2]) });
  }
  const r: Release = { fields, files, acquireByHash: (fields.get('Acquire-By-Hash') ?? '').toLowerCase() === 'yes' };
  const suite = fields.get('Suite');
  const codename = fields.get('Codename');
  if (suite !== undefined) r.suite = suite;
  if (codename !== undefined) r.codename = codename;
  const d = fields.get('Date');
  if (d !== undefined) r.date = parseDate(d, 'Date', what);
  const vu = fields.get('Valid-Until');
  if (vu !== undefined) r.validUntil = parseDate(vu, 'Valid-Until', what);
  return r;
}

/**
 * The fields of one Packages paragraph that the index needs.
 *
 * @example
 * ```ts
 * parsePackages(text, (r: PackagesRecord) => console.log(r.package, r.version, r.text.slice(r.sha256At, r.sha256At + 64)));
 * ```
 */
export interface PackagesRecord {
  package: string;
  version: string;
  architecture: string | undefined;
  filename: string;
  size: number;
  /** The text the SHA256 value is in, and where its 64 hex digits start (no substring made). */
  text: string;
  sha256At: number;
}

const F_PACKAGE = 1, F_VERSION = 2, F_ARCH = 4, F_FILENAME = 8, F_SIZE = 16, F_SHA256 = 32;

/**
 * Streams the paragraphs of a Packages file to `onRecord` (the record object
 * is reused: copy what you keep). Every paragraph must have Package, Version,
 * Filename, Size and a 64-digit SHA256; other fields are skipped without
 * being copied. Returns the number of records.
 *
 * @example
 * ```ts
 * parsePackages(text, (r) => ix.addPackageSha256(repo, r.package, r.version, r.architecture, r.text, r.sha256At));
 * ```
 */
export function parsePackages(text: string, onRecord: (r: PackagesRecord) => void, what: string = 'Packages'): number {
  const r: PackagesRecord = { package: '', version: '', architecture: undefined, filename: '', size: 0, text, sha256At: -1 };
  let seen = 0;
  let inPara = false;
  let count = 0;
  let paraStart = 0;
  let pos = 0;
  const n = text.length;
  const emit = (): void => {
    const need = F_PACKAGE | F_VERSION | F_FILENAME | F_SIZE | F_SHA256;
    if ((seen & need) !== need) {
      const miss = [[F_PACKAGE, 'Package'], [F_VERSION, 'Version'], [F_FILENAME, 'Filename'], [F_SIZE, 'Size'], [F_SHA256, 'SHA256']]
        .filter(([f]) => !(seen & (f as number))).map(([, s]) => s).join(', ');
      corrupt(what, `paragraph lacks ${miss}`, paraStart);
    }
    if (!(seen & F_ARCH)) r.architecture = undefined;
    onRecord(r);
    count++;
    seen = 0;
    inPara = false;
  };
  while (pos < n) {
    let eol = text.indexOf('\n', pos);
    if (eol < 0) eol = n;
    let end = eol;
    if (end > pos && text.charCodeAt(end - 1) === 13) end--;
    if (end === pos) {
      if (inPara) emit();
      pos = eol + 1;
      continue;
    }
    const c = text.charCodeAt(pos);
    if (c === 32 || c === 9) {
      if (!inPara) {
        if (!isBlank(text, pos, end)) corrupt(what, 'continuation line outside a paragraph', pos);
      } else if (isBlank(text, pos, end)) emit();
      pos = eol + 1;
      continue;
    }
    const colon = text.indexOf(':', pos);
    if (colon < 0 || colon >= end || colon === pos) corrupt(what, 'line is not "Field: value"', pos);
    if (!inPara) {
      inPara = true;
      paraStart = pos;
    }
    const len = colon - pos;
    let f = 0;
    // Dispatch on length and first letter before comparing the name.
    if (len === 7 && c === 80 && text.startsWith('Package', pos)) f = F_PACKAGE;
    else if (len === 7 && c === 86 && text.startsWith('Version', pos)) f = F_VERSION;
    else if (len === 12 && c === 65 && text.startsWith('Architecture', pos)) f = F_ARCH;
    else if (len === 8 && c === 70 && text.startsWith('Filename', pos)) f = F_FILENAME;
    else if (len === 4 && c === 83 && text.startsWith('Size', pos)) f = F_SIZE;
    else if (len === 6 && c === 83 && text.startsWith('SHA256', pos)) f = F_SHA256;
    if (f !== 0) {
      if (seen & f) corrupt(what, `field ${text.slice(pos, colon)} repeated in one paragraph`, pos);
      seen |= f;
      let a = colon + 1;
      while (a < end && (text.charCodeAt(a) === 32 || text.charCodeAt(a) === 9)) a++;
      let b = end;
      while (b > a && (text.charCodeAt(b - 1) === 32 || text.charCodeAt(b - 1) === 9)) b--;
      if (a === b) corrupt(what, `field ${text.slice(pos, colon)} is empty`, pos);
      switch (f) {
        case F_PACKAGE: r.package = text.slice(a, b); break;
        case F_VERSION: r.version = text.slice(a, b); break;
        case F_ARCH: r.architecture = text.slice(a, b); break;
        case F_FILENAME: r.filename = text.slice(a, b); break;
        case F_SIZE: {
          const s = text.slice(a, b);
          if (!/^\d{1,15}$/.test(s)) corrupt(what, `Size is not a number: ${JSON.stringify(s.slice(0, 30))}`, pos);
          r.size = Number(s);
          break;
        }
        default:
          if (b - a !== 64) corrupt(what, 'SHA256 is not 64 hex digits', pos);
          r.sha256At = a;
      }
    }
    pos = eol + 1;
  }
  if (inPara) emit();
  return count;
}
