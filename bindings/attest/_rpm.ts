/**
 * Reading the file digests an `.rpm` carries in its header (the package's own
 * signed metadata, no payload decompression needed). Spec: RPM v4 package
 * format, https://rpm-software-management.github.io/rpm/manual/format_v4.html
 *
 * ```
 * lead        96 B   magic ed ab ee db
 * signature   header structure, padded to 8 bytes
 * header      header structure:
 *               magic 8e ad e8 01, 4 reserved, nindex u32 BE, hsize u32 BE
 *               nindex × { tag u32, type u32, offset u32, count u32 }   (big-endian)
 *               data store (hsize bytes)
 * payload     (cpio, compressed; not read)
 * ```
 * Tags used: BASENAMES 1117, DIRNAMES 1118, DIRINDEXES 1116, FILEDIGESTS 1035
 * (hex strings, empty for non-regular files), FILEDIGESTALGO 5011 (PGP hash
 * ids: 1 MD5 — the default —, 2 SHA1, 8 SHA256, 9 SHA384, 10 SHA512).
 *
 * The header is bound as rpm binds it (lib/package.c): the signature header's
 * SHA256 (tag 273, hex; SHA1 269 on packages older than rpm 4.6) is the digest
 * of the main header exactly as stored, from its magic to the end of its data
 * store, so the file digests read from it are the ones the package carries.
 * The installed side reads the same header structures from `rpmdb --exportdb`
 * (each installed package's header, magic first, one after another), which
 * adds FILEFLAGS 1037 (CONFIG 1, GHOST 64), FILEMODES 1030 (int16) and
 * FILESTATES 1029 (char: 0 normal, 1 replaced, 2 not installed, 3 net shared,
 * 4 wrong color).
 * @module
 */
import { VmkitError } from '../errors.js';
import type { Digest, DigestAlgorithm } from './types.js';

const T_BASENAMES = 1117, T_DIRNAMES = 1118, T_DIRINDEXES = 1116, T_FILEDIGESTS = 1035, T_FILEDIGESTALGO = 5011;
const T_NAME = 1000, T_VERSION = 1001, T_RELEASE = 1002, T_EPOCH = 1003, T_ARCH = 1022, T_FILESTATES = 1029, T_FILEMODES = 1030, T_FILEFLAGS = 1037;
const S_SHA1 = 269, S_SHA256 = 273;
const TYPE_CHAR = 1, TYPE_INT8 = 2, TYPE_INT16 = 3, TYPE_INT32 = 4, TYPE_STRING = 6, TYPE_STRING_ARRAY = 8, TYPE_I18NSTRING = 9;
const PGP_HASH: Record<number, DigestAlgorithm> = { 1: 'md5', 2: 'sha1', 8: 'sha256', 9: 'sha384', 10: 'sha512' };
const MAX_INDEX = 1 << 16;

interface Header {
  entries: Map<number, { type: number; offset: number; count: number }>;
  store: Uint8Array;
  /** Where the header (its magic) starts and where its data store ends. */
  start: number;
  end: number;
}

function corrupt(msg: string, offset: number): never {
  throw new VmkitError('CORRUPT', `.rpm: ${msg}`, { offset });
}

function readHeader(b: Uint8Array, o: number): Header {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (o + 16 > b.length || b[o] !== 0x8e || b[o + 1] !== 0xad || b[o + 2] !== 0xe8 || b[o + 3] !== 0x01) corrupt('bad header magic', o);
  const n = dv.getUint32(o + 8);
  const size = dv.getUint32(o + 12);
  if (n > MAX_INDEX) corrupt(`header has ${n} index entries`, o);
  const storeAt = o + 16 + n * 16;
  if (storeAt + size > b.length) corrupt('header runs past the end', o);
  const entries = new Map<number, { type: number; offset: number; count: number }>();
  for (let i = 0; i < n; i++) {
    const e = o + 16 + i * 16;
    const tag = dv.getUint32(e);
    const type = dv.getUint32(e + 4);
    const offset = dv.getUint32(e + 8);
    const count = dv.getUint32(e + 12);
    if (offset > size) corrupt(`tag ${tag} data offset past the store`, e);
    entries.set(tag, { type, offset, count });
  }
  return { entries, store: b.subarray(storeAt, storeAt + size), start: o, end: storeAt + size };
}

const dec = new TextDecoder();

function strings(h: Header, tag: number): string[] | undefined {
  const e = h.entries.get(tag);
  if (!e) return undefined;
  if (e.type !== TYPE_STRING_ARRAY) corrupt(`tag ${tag} is not a string array`, 0);
  if (e.count > h.store.length) corrupt(`tag ${tag} count too large`, 0);
  const out: string[] = [];
  let o = e.offset;
  for (let i = 0; i < e.count; i++) {
    const z = h.store.indexOf(0, o);
    if (z < 0) corrupt(`tag ${tag} string runs past the store`, o);
    out.push(dec.decode(h.store.subarray(o, z)));
    o = z + 1;
  }
  return out;
}

function int32s(h: Header, tag: number): number[] | undefined {
  const e = h.entries.get(tag);
  if (!e) return undefined;
  if (e.type !== TYPE_INT32) corrupt(`tag ${tag} is not int32`, 0);
  if (e.offset % 4 !== 0 || e.offset + e.count * 4 > h.store.length) corrupt(`tag ${tag} runs past the store`, 0);
  const dv = new DataView(h.store.buffer, h.store.byteOffset, h.store.byteLength);
  const out: number[] = [];
  for (let i = 0; i < e.count; i++) out.push(dv.getInt32(e.offset + i * 4));
  return out;
}

function string(h: Header, tag: number): string | undefined {
  const e = h.entries.get(tag);
  if (!e) return undefined;
  if (e.type !== TYPE_STRING && e.type !== TYPE_I18NSTRING && e.type !== TYPE_STRING_ARRAY) corrupt(`tag ${tag} is not a string`, 0);
  const z = h.store.indexOf(0, e.offset);
  if (z < 0) corrupt(`tag ${tag} string runs past the store`, e.offset);
  return dec.decode(h.store.subarray(e.offset, z));
}

function int16s(h: Header, tag: number): number[] | undefined {
  const e = h.entries.get(tag);
  if (!e) return undefined;
  if (e.type !== TYPE_INT16) corrupt(`tag ${tag} is not int16`, 0);
  if (e.offset % 2 !== 0 || e.offset + e.count * 2 > h.store.length) corrupt(`tag ${tag} runs past the store`, 0);
  const dv = new DataView(h.store.buffer, h.store.byteOffset, h.store.byteLength);
  const out: number[] = [];
  for (let i = 0; i < e.count; i++) out.push(dv.getUint16(e.offset + i * 2));
  return out;
}

function chars(h: Header, tag: number): Uint8Array | undefined {
  const e = h.entries.get(tag);
  if (!e) return undefined;
  if (e.type !== TYPE_CHAR && e.type !== TYPE_INT8) corrupt(`tag ${tag} is not char`, 0);
  if (e.offset + e.count > h.store.length) corrupt(`tag ${tag} runs past the store`, 0);
  return h.store.subarray(e.offset, e.offset + e.count);
}

// The header's files: absolute path per index, checked against the other per-file tags' lengths.
function paths(h: Header): string[] {
  const base = strings(h, T_BASENAMES);
  if (!base) return [];
  const dirs = strings(h, T_DIRNAMES) ?? [];
  const idx = int32s(h, T_DIRINDEXES) ?? [];
  if (idx.length !== base.length) corrupt('file tags disagree in length', 0);
  return base.map((b, i) => {
    const dir = dirs[idx[i]!];
    if (dir === undefined) corrupt('dir index out of range', 0);
    return dir + b;
  });
}

/**
 * The digest of the main header that the signature header gives, and where
 * the main header lies (see the module comment).
 * @example `const { alg, hex, start, end } = _rpmHeaderDigest(rpmBytes);`
 */
export function _rpmHeaderDigest(b: Uint8Array): { alg: 'sha256' | 'sha1'; hex: string; start: number; end: number } {
  if (b.length < 96 || b[0] !== 0xed || b[1] !== 0xab || b[2] !== 0xee || b[3] !== 0xdb) corrupt('not an rpm (bad lead magic)', 0);
  const sig = readHeader(b, 96);
  const main = readHeader(b, (sig.end + 7) & ~7);
  const s256 = string(sig, S_SHA256);
  const s1 = s256 === undefined ? string(sig, S_SHA1) : undefined;
  const hex = (s256 ?? s1)?.toLowerCase();
  if (hex === undefined) throw new VmkitError('INTEGRITY', '.rpm: the signature header has no header digest (SHA256 or SHA1)');
  if (!/^[0-9a-f]+$/.test(hex) || hex.length !== (s256 !== undefined ? 64 : 40)) corrupt('header digest is not hex', sig.start);
  return { alg: s256 !== undefined ? 'sha256' : 'sha1', hex, start: main.start, end: main.end };
}

/**
 * One installed package as rpm's database holds it (from `rpmdb --exportdb`).
 *
 * @example
 * ```ts
 * const [p]: RpmdbPackage[] = parseRpmdbExport(exported);
 * p.files.filter((f) => f.config).map((f) => f.path);
 * ```
 */
export interface RpmdbPackage {
  name: string;
  /** `epoch:version-release`, the epoch only when not 0 (as primary.xml versions are written). */
  version: string;
  arch: string;
  files: { path: string; mode: number; flags: number; state: number }[];
}

/**
 * FILEFLAGS bits: a `%config` file, a `%ghost` file (listed, never shipped).
 * @example `const conffile = (f.flags & RPMFILE_CONFIG) !== 0;`
 */
export const RPMFILE_CONFIG = 1, RPMFILE_GHOST = 64;

/**
 * Parses the headers `rpmdb --exportdb` writes (one after another, each from
 * its magic): each package's name, version, arch and files with their mode,
 * flags and state. Headers without a name (none in a sane database) are
 * CORRUPT, as is anything malformed; at most `maxPackages` (default 100 000) — LIMIT.
 * @example `parseRpmdbExport(execFileSync('rpmdb', ['--root', r, '--dbpath', '/var/lib/rpm', '--exportdb']))`
 */
export function parseRpmdbExport(b: Uint8Array, maxPackages: number = 100_000): RpmdbPackage[] {
  if (!(b instanceof Uint8Array)) throw new VmkitError('ARG_TYPE', 'b must be a Uint8Array');
  const out: RpmdbPackage[] = [];
  let o = 0;
  while (o < b.length) {
    if (out.length >= maxPackages) throw new VmkitError('LIMIT', `rpm database export: more than ${maxPackages} packages`);
    const h = readHeader(b, o);
    o = h.end;
    const name = string(h, T_NAME);
    const ver = string(h, T_VERSION);
    const rel = string(h, T_RELEASE);
    if (!name || ver === undefined || rel === undefined) corrupt('installed header without name, version or release', h.start);
    const epoch = int32s(h, T_EPOCH)?.[0] ?? 0;
    const files = paths(h);
    const modes = int16s(h, T_FILEMODES) ?? [];
    const flags = int32s(h, T_FILEFLAGS) ?? [];
    const states = chars(h, T_FILESTATES);
    if (modes.length !== files.length || flags.length !== files.length || (states && states.length !== files.length)) corrupt(`${name}: file tags disagree in length`, h.start);
    out.push({
      name,
      version: `${epoch ? `${epoch}:` : ''}${ver}-${rel}`,
      arch: string(h, T_ARCH) ?? 'noarch',
      files: files.map((path, i) => ({ path, mode: modes[i]!, flags: flags[i]!, state: states?.[i] ?? 0 })),
    });
  }
  return out;
}

/**
 * The digest of every regular file an `.rpm` installs, by absolute path, read
 * from its header. CORRUPT on a malformed package. It does not check the
 * header against its digest: {@link _rpmHeaderDigest} says what to check
 * (RpmSource does, besides the whole package's checksum).
 *
 * @example
 * ```ts
 * const files = rpmFileDigests(await readFile('bash-5.2-1.x86_64.rpm'));
 * files.get('/usr/bin/bash'); // { alg: 'sha256', hex: '…' }
 * ```
 */
export function rpmFileDigests(b: Uint8Array): Map<string, Digest> {
  if (b.length < 96 || b[0] !== 0xed || b[1] !== 0xab || b[2] !== 0xee || b[3] !== 0xdb) corrupt('not an rpm (bad lead magic)', 0);
  const sig = readHeader(b, 96);
  const main = readHeader(b, (sig.end + 7) & ~7);
  const out = new Map<string, Digest>();
  const files = paths(main);
  if (files.length === 0) return out; // a package without files
  const digests = strings(main, T_FILEDIGESTS) ?? [];
  const algoId = int32s(main, T_FILEDIGESTALGO)?.[0] ?? 1;
  const alg = PGP_HASH[algoId];
  if (!alg) throw new VmkitError('UNSUPPORTED', `.rpm: file digest algorithm ${algoId}`);
  if (digests.length !== files.length) corrupt('file tags disagree in length', 0);
  for (let i = 0; i < files.length; i++) {
    const hex = digests[i]!;
    if (hex === '') continue; // directories, symlinks, ghosts
    if (!/^[0-9a-f]+$/i.test(hex)) corrupt(`file digest of ${files[i]} is not hex`, 0);
    out.set(files[i]!, { alg, hex: hex.toLowerCase() });
  }
  return out;
}
