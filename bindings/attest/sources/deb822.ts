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
  /** The bytes the SHA256 value is in, and where its 64 hex digits start (no copy made). */
  hex: Uint8Array;
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
  const p = new PackagesParser(onRecord, what);
  p.push(new TextEncoder().encode(text));
  return p.end();
}

const _utf8 = new TextDecoder();
type _NodeBufferCtor = { from(b: ArrayBufferLike, off: number, len: number): { utf8Slice(a: number, b: number): string; indexOf(v: number, from: number): number } };
const _Buffer = (globalThis as unknown as { Buffer?: _NodeBufferCtor }).Buffer;

// "Package", "Version", … as bytes, for comparing field names in place.
const NAMES = ['Package', 'Version', 'Architecture', 'Filename', 'Size', 'SHA256'].map((n) => Uint8Array.from(n, (c) => c.charCodeAt(0)));
const FLAGS = [F_PACKAGE, F_VERSION, F_ARCH, F_FILENAME, F_SIZE, F_SHA256];

/**
 * {@link parsePackages} fed with the bytes of a Packages file as they arrive
 * (chunks cut anywhere): the complete lines of each chunk are parsed at once
 * from the bytes, so only a partial line is carried between chunks and no text
 * is made but the values kept (Package, Version, Architecture, Filename: UTF-8).
 * Offsets in errors are byte offsets.
 *
 * @example
 * ```ts
 * const p = new PackagesParser((r) => ix.addPackageSha256(repo, r.package, r.version, r.architecture, r.hex, r.sha256At));
 * for await (const chunk of chunks) p.push(chunk);
 * const count = p.end();
 * ```
 */
export class PackagesParser {
  private readonly r: PackagesRecord = { package: '', version: '', architecture: undefined, filename: '', size: 0, hex: new Uint8Array(0), sha256At: -1 };
  private seen = 0;
  private inPara = false;
  private count = 0;
  private paraStart = 0;
  private carry: Uint8Array[] = [];
  private carried = 0;
  private base = 0;
  private ended = false;
  private readonly onRecord: (r: PackagesRecord) => void;
  private readonly what: string;

  constructor(onRecord: (r: PackagesRecord) => void, what: string = 'Packages') {
    this.onRecord = onRecord;
    this.what = what;
  }

  /** Parses the complete lines that `chunk` ends (the rest is kept for the next chunk). */
  push(chunk: Uint8Array): void {
    if (this.ended) throw new VmkitError('INVALID_STATE', `${this.what}: push after end`);
    let last = chunk.lastIndexOf(10);
    if (last < 0) {
      if (chunk.length) {
        this.carry.push(chunk.slice());
        this.carried += chunk.length;
      }
      return;
    }
    last++;
    let from = 0;
    if (this.carried) {
      // The carried partial line and its end in this chunk: the only bytes ever copied.
      from = chunk.indexOf(10) + 1;
      this.scan(this.joinCarry(chunk.subarray(0, from)));
    }
    const rest = last < chunk.length ? chunk.slice(last) : undefined;
    if (from < last) this.scan(chunk.subarray(from, last));
    if (rest) {
      this.carry.push(rest);
      this.carried = rest.length;
    }
  }

  private joinCarry(tail: Uint8Array): Uint8Array {
    const b = new Uint8Array(this.carried + tail.length);
    let o = 0;
    for (const c of this.carry) {
      b.set(c, o);
      o += c.length;
    }
    b.set(tail, o);
    this.carry = [];
    this.carried = 0;
    return b;
  }

  /** Parses what is left and returns the number of records. */
  end(): number {
    if (!this.ended) {
      this.ended = true;
      if (this.carried) this.scan(this.joinCarry(new Uint8Array(0)));
      if (this.inPara) this.emit();
    }
    return this.count;
  }

  private emit(): void {
    const need = F_PACKAGE | F_VERSION | F_FILENAME | F_SIZE | F_SHA256;
    const seen = this.seen;
    if ((seen & need) !== need) {
      const miss = [[F_PACKAGE, 'Package'], [F_VERSION, 'Version'], [F_FILENAME, 'Filename'], [F_SIZE, 'Size'], [F_SHA256, 'SHA256']]
        .filter(([f]) => !(seen & (f as number))).map(([, s]) => s).join(', ');
      corrupt(this.what, `paragraph lacks ${miss}`, this.paraStart);
    }
    if (!(seen & F_ARCH)) this.r.architecture = undefined;
    this.onRecord(this.r);
    this.count++;
    this.seen = 0;
    this.inPara = false;
  }

  // Parses the whole lines of b (it ends in a newline, or is the file's last line).
  private scan(b: Uint8Array): void {
    const r = this.r;
    const what = this.what;
    const base = this.base;
    const n = b.length;
    const node = _Buffer ? _Buffer.from(b.buffer, b.byteOffset, b.length) : undefined;
    const str = (a: number, e: number): string => (node ? node.utf8Slice(a, e) : _utf8.decode(b.subarray(a, e)));
    const name = (a: number, e: number): string => JSON.stringify(str(a, e).slice(0, 40));
    // Node's Buffer.indexOf finds line ends with memchr: a few times faster than a loop here.
    const eolFrom = node ? (p: number): number => node.indexOf(10, p) : (p: number): number => b.indexOf(10, p);
    let pos = 0;
    while (pos < n) {
      let eol = eolFrom(pos);
      if (eol < 0) eol = n;
      let end = eol;
      if (end > pos && b[end - 1] === 13) end--;
      if (end === pos) {
        if (this.inPara) this.emit();
        pos = eol + 1;
        continue;
      }
      const c = b[pos]!;
      if (c === 32 || c === 9) {
        // A continuation line, or a line of blanks (ends a paragraph).
        let blank = true;
        for (let i = pos; i < end && blank; i++) blank = b[i] === 32 || b[i] === 9;
        if (!this.inPara) {
          if (!blank) corrupt(what, 'continuation line outside a paragraph', base + pos);
        } else if (blank) this.emit();
        pos = eol + 1;
        continue;
      }
      let colon = pos;
      while (colon < end && b[colon] !== 58) colon++;
      if (colon >= end || colon === pos) corrupt(what, 'line is not "Field: value"', base + pos);
      if (!this.inPara) {
        this.inPara = true;
        this.paraStart = base + pos;
      }
      const len = colon - pos;
      let f = 0;
      // Dispatch on length and first letter before comparing the name.
      if (len <= 12 && (c === 80 || c === 86 || c === 65 || c === 70 || c === 83)) {
        for (let k = 0; k < 6; k++) {
          const want = NAMES[k]!;
          if (want.length !== len || want[0] !== c) continue;
          let i = 1;
          while (i < len && b[pos + i] === want[i]) i++;
          if (i === len) {
            f = FLAGS[k]!;
            break;
          }
        }
      }
      if (f !== 0) {
        if (this.seen & f) corrupt(what, `field ${name(pos, colon)} repeated in one paragraph`, base + pos);
        this.seen |= f;
        let a = colon + 1;
        while (a < end && (b[a] === 32 || b[a] === 9)) a++;
        let e = end;
        while (e > a && (b[e - 1] === 32 || b[e - 1] === 9)) e--;
        if (a === e) corrupt(what, `field ${name(pos, colon)} is empty`, base + pos);
        switch (f) {
          case F_PACKAGE: r.package = str(a, e); break;
          case F_VERSION: r.version = str(a, e); break;
          case F_ARCH: r.architecture = str(a, e); break;
          case F_FILENAME: r.filename = str(a, e); break;
          case F_SIZE: {
            let v = 0;
            const ok = e - a <= 15;
            for (let i = a; i < e && ok; i++) {
              const d = b[i]! - 48;
              if (d < 0 || d > 9) {
                v = -1;
                break;
              }
              v = v * 10 + d;
            }
            if (!ok || v < 0) corrupt(what, `Size is not a number: ${name(a, e)}`, base + pos);
            r.size = v;
            break;
          }
          default:
            if (e - a !== 64) corrupt(what, 'SHA256 is not 64 hex digits', base + pos);
            // The bytes of this block: the paragraph may end in a later one.
            r.hex = b;
            r.sha256At = a;
        }
      }
      pos = eol + 1;
    }
    this.base += n;
  }
}
