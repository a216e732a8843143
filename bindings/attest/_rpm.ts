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
 * @module
 */
import { VmkitError } from '../errors.js';
import type { Digest, DigestAlgorithm } from './types.js';

const T_BASENAMES = 1117, T_DIRNAMES = 1118, T_DIRINDEXES = 1116, T_FILEDIGESTS = 1035, T_FILEDIGESTALGO = 5011;
const TYPE_INT32 = 4, TYPE_STRING_ARRAY = 8;
const PGP_HASH: Record<number, DigestAlgorithm> = { 1: 'md5', 2: 'sha1', 8: 'sha256', 9: 'sha384', 10: 'sha512' };
const MAX_INDEX = 1 << 16;

interface Header {
  entries: Map<number, { type: number; offset: number; count: number }>;
  store: Uint8Array;
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
  return { entries, store: b.subarray(storeAt, storeAt + size), end: storeAt + size };
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

/**
 * The digest of every regular file an `.rpm` installs, by absolute path, read
 * from its header. CORRUPT on a malformed package.
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
  const base = strings(main, T_BASENAMES);
  if (!base) return out; // a package without files
  const dirs = strings(main, T_DIRNAMES) ?? [];
  const idx = int32s(main, T_DIRINDEXES) ?? [];
  const digests = strings(main, T_FILEDIGESTS) ?? [];
  const algoId = int32s(main, T_FILEDIGESTALGO)?.[0] ?? 1;
  const alg = PGP_HASH[algoId];
  if (!alg) throw new VmkitError('UNSUPPORTED', `.rpm: file digest algorithm ${algoId}`);
  if (idx.length !== base.length || digests.length !== base.length) corrupt('file tags disagree in length', 0);
  for (let i = 0; i < base.length; i++) {
    const hex = digests[i]!;
    if (hex === '') continue; // directories, symlinks, ghosts
    const dir = dirs[idx[i]!];
    if (dir === undefined) corrupt('dir index out of range', 0);
    if (!/^[0-9a-f]+$/i.test(hex)) corrupt(`file digest of ${base[i]} is not hex`, 0);
    out.set(dir + base[i]!, { alg, hex: hex.toLowerCase() });
  }
  return out;
}
