/**
 * Reading a Debian binary package far enough to hash what it installs: the
 * `ar` archive, its `data.tar.{xz,zst,gz}` (or uncompressed `data.tar`), and
 * the tar members (ustar, GNU long names, pax `path`). Spec: deb(5),
 * https://man7.org/linux/man-pages/man5/deb.5.html; tar: POSIX.1-2001 pax/ustar.
 *
 * ```
 * "!<arch>\n"                                      ar magic (8 bytes)
 * ┌ header 60 B: name[16] mtime[12] uid[6] gid[6] mode[8] size[10] "`\n"
 * │ data (size bytes, padded to even)              debian-binary "2.0\n"
 * ├ header … control.tar.{xz,zst,gz}
 * └ header … data.tar.{xz,zst,gz}  → tar: 512 B headers, data padded to 512
 * ```
 * Decompressors: gzip through the platform's DecompressionStream, xz through
 * xz-decompress (wasm; in Node the system `xz` for large members, 4× faster) and
 * zstd through fzstd (plain JS): Debian's packages
 * are xz, Ubuntu's zstd, older or third-party ones gzip. bzip2/lzma data
 * members (deprecated by dpkg) are refused as UNSUPPORTED.
 * @module
 */
import { VmkitError } from '../errors.js';
import { decompress, sha, type Compression } from './sources/_io.js';
import { toHex } from './index-store.js';

const dec = new TextDecoder();

/**
 * One member of an ar archive.
 *
 * @example
 * ```ts
 * const control = readAr(debBytes).find((m: ArMember) => m.name.startsWith('control.tar'));
 * ```
 */
export interface ArMember {
  name: string;
  data: Uint8Array;
}

/**
 * Lists the members of an `ar` archive (as `.deb` files are). CORRUPT on a bad
 * magic, header or size.
 * @example `readAr(debBytes).map((m) => m.name) // ['debian-binary', 'control.tar.xz', 'data.tar.xz']`
 */
export function readAr(b: Uint8Array, what: string = 'ar archive'): ArMember[] {
  if (b.length < 8 || dec.decode(b.subarray(0, 8)) !== '!<arch>\n') throw new VmkitError('CORRUPT', `${what}: not an ar archive`, { offset: 0 });
  const out: ArMember[] = [];
  let o = 8;
  while (o < b.length) {
    if (o + 60 > b.length) throw new VmkitError('CORRUPT', `${what}: truncated member header`, { offset: o });
    if (b[o + 58] !== 0x60 || b[o + 59] !== 0x0a) throw new VmkitError('CORRUPT', `${what}: bad member header magic`, { offset: o });
    const name = dec.decode(b.subarray(o, o + 16)).trimEnd().replace(/\/$/, '');
    const sizeText = dec.decode(b.subarray(o + 48, o + 58)).trim();
    if (!/^\d+$/.test(sizeText)) throw new VmkitError('CORRUPT', `${what}: bad member size`, { offset: o + 48 });
    const size = Number(sizeText);
    const start = o + 60;
    if (start + size > b.length) throw new VmkitError('CORRUPT', `${what}: member ${name} runs past the end`, { offset: o });
    out.push({ name, data: b.subarray(start, start + size) });
    o = start + size + (size & 1);
  }
  return out;
}

/**
 * A regular file (or hard link) inside a tar archive.
 *
 * @example
 * ```ts
 * for (const f of readTar(tarBytes)) console.log(f.path, f.mode.toString(8), f.data.length);
 * ```
 */
export interface TarFile {
  /** Absolute path as installed (`./usr/bin/x` → `/usr/bin/x`). */
  path: string;
  /** Contents (a view into the archive). For a hard link: the target's contents. */
  data: Uint8Array;
  mode: number;
}

function octal(b: Uint8Array, o: number, n: number, what: string): number {
  // GNU base-256 for large values: high bit of the first byte set.
  if (b[o]! & 0x80) {
    let v = b[o]! & 0x7f;
    for (let i = 1; i < n; i++) v = v * 256 + b[o + i]!;
    return v;
  }
  const s = dec.decode(b.subarray(o, o + n)).replace(/\0.*$/s, '').trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new VmkitError('CORRUPT', `${what}: bad octal field ${JSON.stringify(s.slice(0, 20))}`, { offset: o });
  return parseInt(s, 8);
}

function cstr(b: Uint8Array, o: number, n: number): string {
  const e = b.subarray(o, o + n).indexOf(0);
  return dec.decode(b.subarray(o, e < 0 ? o + n : o + e));
}

function normalize(p: string): string {
  let s = p.replace(/^\.\//, '/').replace(/\/+$/, '');
  if (!s.startsWith('/')) s = '/' + s;
  return s;
}

/**
 * Lists the regular files of a tar archive (hard links resolved to their
 * target's data; directories, symlinks and devices skipped). CORRUPT on a bad
 * header checksum or a member running past the end.
 * @example `readTar(tarBytes).map((f) => f.path)`
 */
export function readTar(b: Uint8Array, what: string = 'tar archive'): TarFile[] {
  const out: TarFile[] = [];
  const byPath = new Map<string, TarFile>();
  let o = 0;
  let longName: string | undefined;
  let paxPath: string | undefined;
  while (o + 512 <= b.length) {
    // Two zero blocks end the archive; one is enough to stop.
    let zero = true;
    for (let i = 0; i < 512; i++) if (b[o + i] !== 0) { zero = false; break; }
    if (zero) break;
    const stored = octal(b, o + 148, 8, what);
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : b[o + i]!;
    if (sum !== stored) throw new VmkitError('CORRUPT', `${what}: header checksum mismatch`, { offset: o });
    const size = octal(b, o + 124, 12, what);
    const type = String.fromCharCode(b[o + 156]!);
    const start = o + 512;
    if (start + size > b.length) throw new VmkitError('CORRUPT', `${what}: member runs past the end`, { offset: o });
    const data = b.subarray(start, start + size);
    let name = cstr(b, o, 100);
    const magic = cstr(b, o + 257, 6);
    if (magic.startsWith('ustar')) {
      const prefix = cstr(b, o + 345, 155);
      if (prefix) name = prefix + '/' + name;
    }
    if (longName !== undefined) { name = longName; longName = undefined; }
    if (paxPath !== undefined) { name = paxPath; paxPath = undefined; }
    if (type === 'L') longName = cstr(data, 0, data.length);
    else if (type === 'x') paxPath = paxValue(data, 'path', what);
    else if (type === 'g' || type === 'K') { /* global pax header, GNU long link name: not needed */ }
    else if (type === '0' || type === '\0' || type === '7') {
      const f: TarFile = { path: normalize(name), data, mode: octal(b, o + 100, 8, what) };
      out.push(f);
      byPath.set(f.path, f);
    } else if (type === '1') {
      const target = byPath.get(normalize(cstr(b, o + 157, 100)));
      if (target) {
        const f: TarFile = { path: normalize(name), data: target.data, mode: target.mode };
        out.push(f);
        byPath.set(f.path, f);
      }
    }
    o = start + Math.ceil(size / 512) * 512;
  }
  return out;
}

function paxValue(d: Uint8Array, key: string, what: string): string | undefined {
  // Records: "<len> <key>=<value>\n", len counting the whole record.
  let o = 0;
  let found: string | undefined;
  while (o < d.length) {
    let sp = o;
    while (sp < d.length && d[sp] !== 0x20) sp++;
    const len = Number(dec.decode(d.subarray(o, sp)));
    if (!Number.isInteger(len) || len <= 0 || o + len > d.length) throw new VmkitError('CORRUPT', `${what}: bad pax record`, { offset: o });
    const rec = dec.decode(d.subarray(sp + 1, o + len - 1));
    const eq = rec.indexOf('=');
    if (eq > 0 && rec.slice(0, eq) === key) found = rec.slice(eq + 1);
    o += len;
  }
  return found;
}

/**
 * Options of {@link debFileDigests}.
 *
 * @example
 * ```ts
 * const files = await debFileDigests(debBytes, { maxBytes: 256 << 20 }); // LIMIT beyond 256 MiB
 * ```
 */
export interface DebDigestOptions {
  /** Largest decompressed data.tar accepted (default 1 GiB). */
  maxBytes?: number;
}

/**
 * SHA-256 of every regular file a `.deb` installs, by absolute path.
 *
 * @example
 * ```ts
 * const files = await debFileDigests(await readFile('hello_2.10-3_amd64.deb'));
 * files.get('/usr/bin/hello'); // 'e3b0…'
 * ```
 */
export async function debFileDigests(deb: Uint8Array, options: DebDigestOptions = {}): Promise<Map<string, string>> {
  const members = readAr(deb, '.deb');
  if (members[0]?.name !== 'debian-binary' || !dec.decode(members[0].data).startsWith('2.')) {
    throw new VmkitError('CORRUPT', '.deb: first member is not debian-binary 2.x');
  }
  const data = members.find((m) => m.name.startsWith('data.tar'));
  if (!data) throw new VmkitError('CORRUPT', '.deb has no data.tar member');
  const ext = data.name.slice('data.tar'.length);
  const kinds: Record<string, Compression> = { '': 'none', '.gz': 'gz', '.xz': 'xz', '.zst': 'zst' };
  const kind = kinds[ext];
  if (kind === undefined) throw new VmkitError('UNSUPPORTED', `.deb data member ${data.name} (bzip2/lzma) is not supported`);
  const tar = await decompress(data.data, kind, options.maxBytes ?? 1 << 30, data.name);
  const out = new Map<string, string>();
  for (const f of readTar(tar, data.name)) out.set(f.path, toHex(await sha('SHA-256', f.data)));
  return out;
}
