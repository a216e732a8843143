/**
 * An Alpine Linux repository as a {@link RepositorySource}: its signed
 * `APKINDEX.tar.gz`, trusted through the RSA key the signature names.
 *
 * ```
 * APKINDEX.tar.gz = gzip member 1: tar { .SIGN.RSA.<key>.rsa.pub | .SIGN.RSA256.<key>.rsa.pub }   (end blocks cut)
 *                   gzip member 2: tar { DESCRIPTION, APKINDEX }
 *                          ▲
 *                          └── the signature: RSA PKCS#1 v1.5 over SHA-1 (RSA) or SHA-256 (RSA256)
 *                              of member 2's bytes as they are in the file
 * APKINDEX record:  P:<name>  V:<version>  A:<arch>  C:Q1<base64 SHA-1 of the .apk's control segment>
 * ```
 * As abuild-sign writes it (apk-tools verifies the same way). A package's
 * reference digest is the `C:` SHA-1 (`alg: 'sha1'`): what `apk` itself
 * checks a downloaded package against.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { DigestIndex, toHex } from '../index-store.js';
import { readTar } from '../_deb.js';
import type { DigestAlgorithm, PackageEntry, Provenance, RefreshResult, RepositorySource } from '../types.js';
import { decompress, httpGet, DEFAULT_MAX_BYTES, type FetchOptions, type Validators } from './_io.js';
import { _lookupDigest, _lookupMany, _lookupPackage } from './_lookups.js';

/**
 * Options of {@link ApkSource}.
 *
 * @example
 * ```ts
 * const keys = { 'alpine-devel@lists.alpinelinux.org-6165ee59.rsa.pub': await readFile('/etc/apk/keys/alpine-devel@lists.alpinelinux.org-6165ee59.rsa.pub', 'utf8') };
 * const src = new ApkSource('apk https://dl-cdn.alpinelinux.org/alpine/v3.20/main/x86_64', { keys });
 * ```
 */
export interface ApkSourceOptions extends FetchOptions {
  /**
   * Trusted RSA public keys (PEM `BEGIN PUBLIC KEY`, as in `/etc/apk/keys`): by
   * file name (the name the signature gives, `<name>.rsa.pub`), or a list
   * (then any of them may have signed).
   */
  keys?: Record<string, string | Uint8Array> | (string | Uint8Array)[];
  /** Index an unsigned APKINDEX (or one signed by an unknown key). Never the default. */
  allowUnsigned?: boolean;
}

/**
 * One package of an APKINDEX.
 *
 * @example
 * ```ts
 * const [r]: ApkIndexRecord[] = parseApkIndex('P:musl\nV:1.2.5-r0\nA:x86_64\nC:Q1…=\n\n');
 * r.checksum.alg; // 'sha1'
 * ```
 */
export interface ApkIndexRecord {
  name: string;
  version: string;
  arch?: string;
  /** `C:`: SHA-1 of the package's control segment (from `Q1` + base64). */
  checksum: { alg: 'sha1'; hex: string };
}

function b64bytes(s: string): Uint8Array | undefined {
  try {
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  } catch {
    return undefined;
  }
}

/**
 * Parses an APKINDEX text: records of `X:value` lines separated by blank
 * lines. A record without P, V or a `Q1` SHA-1 `C:` is skipped (old MD5
 * checksums are not kept: too weak to confirm anything).
 *
 * @example
 * ```ts
 * const recs = parseApkIndex(text);
 * recs.find((r) => r.name === 'busybox')?.version;
 * ```
 */
export function parseApkIndex(text: string): ApkIndexRecord[] {
  const out: ApkIndexRecord[] = [];
  for (const block of text.split(/\n[ \t]*\n/)) {
    let name: string | undefined;
    let version: string | undefined;
    let arch: string | undefined;
    let c: string | undefined;
    for (const line of block.split('\n')) {
      if (line.length < 2 || line[1] !== ':') continue;
      const v = line.slice(2).trim();
      switch (line[0]) {
        case 'P': name = v; break;
        case 'V': version = v; break;
        case 'A': arch = v; break;
        case 'C': c = v; break;
      }
    }
    if (!name || !version || !c || !c.startsWith('Q1')) continue;
    const sha1 = b64bytes(c.slice(2));
    if (!sha1 || sha1.length !== 20) continue;
    const r: ApkIndexRecord = { name, version, checksum: { alg: 'sha1', hex: toHex(sha1) } };
    if (arch) r.arch = arch;
    out.push(r);
  }
  return out;
}

/** DER of a PEM `PUBLIC KEY` (SPKI). */
function pemToDer(pem: string | Uint8Array, what: string): Uint8Array {
  const text = typeof pem === 'string' ? pem : new TextDecoder().decode(pem);
  const m = /-----BEGIN PUBLIC KEY-----([\s\S]*?)-----END PUBLIC KEY-----/.exec(text);
  const der = m ? b64bytes(m[1]!.replace(/\s+/g, '')) : undefined;
  if (!der) throw new VmkitError('ARG_RANGE', `${what}: not a PEM public key (BEGIN PUBLIC KEY)`);
  return der;
}

/**
 * What {@link verifyApkIndex} found.
 *
 * @example
 * ```ts
 * const { signer, hash, records }: ApkIndexVerified = await verifyApkIndex(bytes, keys);
 * ```
 */
export interface ApkIndexVerified {
  /** The key file name the signature gave (`…rsa.pub`); undefined when unsigned and allowed. */
  signer?: string;
  hash?: 'SHA-1' | 'SHA-256';
  /** The DESCRIPTION text. */
  description: string;
  records: ApkIndexRecord[];
}

const MAX_SIG_MEMBER = 64 << 10;

/**
 * Verifies an `APKINDEX.tar.gz` against trusted keys and parses it. The
 * signature member ends where the first gzip member ends: found as the first
 * offset holding a gzip header at which the bytes before decompress as one
 * whole member (its CRC-32 and length must match). Throws INTEGRITY when
 * unsigned, signed by none of `keys`, or the signature does not verify
 * (unless `allowUnsigned`), CORRUPT when malformed.
 *
 * @example
 * ```ts
 * const { records } = await verifyApkIndex(new Uint8Array(await readFile('APKINDEX.tar.gz')), { 'me.rsa.pub': pem });
 * ```
 */
export async function verifyApkIndex(
  data: Uint8Array,
  keys: ApkSourceOptions['keys'] = [],
  options: { allowUnsigned?: boolean; maxBytes?: number; what?: string } = {},
): Promise<ApkIndexVerified> {
  const what = options.what ?? 'APKINDEX.tar.gz';
  const max = options.maxBytes ?? DEFAULT_MAX_BYTES;
  if (data.length < 18 || data[0] !== 0x1f || data[1] !== 0x8b) throw new VmkitError('CORRUPT', `${what}: not gzip`);
  // The signature member: small; its end is the next member's start.
  let sigTar: Uint8Array | undefined;
  let cut = 0;
  for (let c = 18; c + 3 <= data.length && c <= MAX_SIG_MEMBER; c++) {
    if (data[c] !== 0x1f || data[c + 1] !== 0x8b || data[c + 2] !== 8) continue;
    try {
      sigTar = await decompress(data.subarray(0, c), 'gz', MAX_SIG_MEMBER, what);
      cut = c;
      break;
    } catch {
      /* not the end of the first member */
    }
  }
  let sig: { name: string; hash: 'SHA-1' | 'SHA-256'; bytes: Uint8Array } | undefined;
  if (sigTar) {
    let files: { path: string; data: Uint8Array }[];
    try {
      files = readTar(sigTar, `${what} signature`);
    } catch {
      files = [];
    }
    for (const f of files) {
      const m = /^\/?(?:\.\/)?\.SIGN\.(RSA|RSA256)\.(.+)$/.exec(f.path);
      if (m) {
        sig = { name: m[2]!, hash: m[1] === 'RSA' ? 'SHA-1' : 'SHA-256', bytes: f.data };
        break;
      }
    }
    // A first member that is not a signature tar: the whole file is the index (unsigned).
    if (!sig) cut = 0;
  }
  const signed = data.subarray(cut);
  const out: ApkIndexVerified = { description: '', records: [] };
  if (!sig) {
    if (!options.allowUnsigned) throw new VmkitError('INTEGRITY', `${what}: not signed (no .SIGN.RSA member)`);
  } else {
    const list: [string | undefined, string | Uint8Array][] = Array.isArray(keys) ? keys.map((k) => [undefined, k]) : Object.entries(keys);
    const candidates = list.filter(([n]) => n === undefined || n === sig!.name || n.replace(/^.*\//, '') === sig!.name);
    let ok = false;
    for (const [n, pem] of candidates) {
      let key: CryptoKey;
      try {
        key = await globalThis.crypto.subtle.importKey('spki', pemToDer(pem, n ?? 'key') as Uint8Array<ArrayBuffer>, { name: 'RSASSA-PKCS1-v1_5', hash: sig.hash }, false, ['verify']);
      } catch (e) {
        if (e instanceof VmkitError) throw e;
        throw new VmkitError('ARG_RANGE', `${n ?? 'key'}: not an RSA public key`, { cause: e });
      }
      if (await globalThis.crypto.subtle.verify('RSASSA-PKCS1-v1_5', key, sig.bytes as Uint8Array<ArrayBuffer>, signed as Uint8Array<ArrayBuffer>)) {
        ok = true;
        break;
      }
    }
    if (!ok) {
      if (candidates.length === 0 && !options.allowUnsigned) throw new VmkitError('INTEGRITY', `${what}: signed by ${sig.name}, which is not among the trusted keys`);
      if (candidates.length > 0) throw new VmkitError('INTEGRITY', `${what}: signature by ${sig.name} does not verify`);
    } else {
      out.signer = sig.name;
      out.hash = sig.hash;
    }
  }
  const tar = await decompress(signed, 'gz', max, what);
  let index: Uint8Array | undefined;
  for (const f of readTar(tar, what)) {
    const p = f.path.replace(/^\/?(?:\.\/)?/, '');
    if (p === 'APKINDEX') index = f.data;
    else if (p === 'DESCRIPTION') out.description = new TextDecoder().decode(f.data).trim();
  }
  if (!index) throw new VmkitError('CORRUPT', `${what}: no APKINDEX member`);
  out.records = parseApkIndex(new TextDecoder().decode(index));
  return out;
}

/**
 * An Alpine repository (`apk <url>`: the directory holding `APKINDEX.tar.gz`,
 * e.g. `https://dl-cdn.alpinelinux.org/alpine/v3.20/main/x86_64`).
 *
 * @example
 * ```ts
 * const src = new ApkSource('apk https://dl-cdn.alpinelinux.org/alpine/v3.20/main/x86_64', { keys });
 * await src.refresh();
 * src.lookupPackage('musl');
 * ```
 */
export class ApkSource implements RepositorySource {
  readonly id: string;
  /** The URL of the APKINDEX.tar.gz. */
  readonly indexUrl: string;
  private readonly opts: ApkSourceOptions;
  private validators: Validators = {};
  private index: DigestIndex | undefined;
  /** The key that signed the index last loaded. */
  signer: string | undefined;

  constructor(line: string, options: ApkSourceOptions = {}) {
    const parts = line.trim().split(/\s+/);
    if (parts[0] !== 'apk' || parts.length !== 2 || !/^https?:\/\//.test(parts[1]!)) {
      throw new VmkitError('ARG_RANGE', `apk source must be "apk <http(s) repository-url>", got ${JSON.stringify(line.slice(0, 80))}`);
    }
    const url = parts[1]!;
    this.id = `apk ${url}`;
    this.indexUrl = url.endsWith('/APKINDEX.tar.gz') ? url : `${url.replace(/\/+$/, '')}/APKINDEX.tar.gz`;
    this.opts = options;
  }

  /** Number of digests held. */
  get size(): number {
    return this.index?.size ?? 0;
  }

  /**
   * Fetches APKINDEX.tar.gz (conditionally), verifies its signature and
   * rebuilds the index. INTEGRITY when unsigned or badly signed.
   * @example `await src.refresh()`
   */
  async refresh(signal?: AbortSignal): Promise<RefreshResult> {
    const r = await httpGet(this.indexUrl, { ...this.opts, signal, validators: this.validators });
    if (r.status === 304 && this.index) return { changed: false, packages: this.index.packages };
    const v = await verifyApkIndex(r.body, this.opts.keys ?? [], { ...(this.opts.allowUnsigned ? { allowUnsigned: true } : {}), ...(this.opts.maxBytes !== undefined ? { maxBytes: this.opts.maxBytes } : {}), what: this.indexUrl });
    const ix = new DigestIndex({ expected: v.records.length });
    for (const rec of v.records) {
      const p: Omit<Provenance, 'path'> = { repository: this.id, package: rec.name, version: rec.version };
      if (rec.arch) p.architecture = rec.arch;
      ix.addPackage(p, rec.checksum);
    }
    this.index?.close();
    this.index = ix;
    this.signer = v.signer;
    const nv: Validators = {};
    if (r.etag) nv.etag = r.etag;
    if (r.lastModified) nv.lastModified = r.lastModified;
    this.validators = nv;
    return { changed: true, packages: ix.packages };
  }

  /** Every package whose control-segment SHA-1 is `digest`. @example `src.lookupDigest('sha1', d)` */
  lookupDigest(alg: DigestAlgorithm, digest: Uint8Array): Provenance[] {
    return _lookupDigest(this.index, alg, digest);
  }

  /** A request's digests in one call (see DigestIndex.lookupMany). @example `src.lookupMany('sha1', hexes)` */
  lookupMany(alg: DigestAlgorithm, digests: readonly string[] | Uint8Array): (Provenance[] | undefined)[] {
    return _lookupMany(this.index, alg, digests);
  }

  /** Versions of a package. @example `src.lookupPackage('musl')` */
  lookupPackage(name: string, version?: string): PackageEntry[] {
    return _lookupPackage(this.index, name, version);
  }

  /** Frees the index. @example `src.close()` */
  close(): void {
    this.index?.close();
    this.index = undefined;
  }
}
