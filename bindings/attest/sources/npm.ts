/**
 * The npm registry as a {@link RepositorySource}: for each package named, the
 * packument's `versions[v].dist.integrity` (SHA-512 of the tarball), trusted
 * through the registry's ECDSA P-256 signatures over
 * `<name>@<version>:<integrity>` with the keys at `/-/npm/v1/keys`:
 *
 * ```
 * keys (given, or /-/npm/v1/keys) ──verify──► dist.signatures[{ keyid, sig }]
 *                                               over "name@version:integrity"
 *                                               ▼
 *                                             dist.integrity "sha512-<base64>"
 * ```
 * Spec followed: https://docs.npmjs.com/about-registry-signatures.
 * The registry holds millions of packages, so a source tracks the packages it
 * is told (`npm <registry-url> <name>…` or `packages`).
 * @module
 */
import { VmkitError } from '../../errors.js';
import { DigestIndex, toHex } from '../index-store.js';
import type { Digest, DigestAlgorithm, PackageEntry, Provenance, RefreshResult, RepositorySource } from '../types.js';
import { httpGet, joinUrl, DEFAULT_MAX_BYTES, type FetchOptions, type Validators } from './_io.js';
import { _lookupDigest, _lookupMany, _lookupPackage } from './_lookups.js';

/**
 * The registry keys document (`GET /-/npm/v1/keys`).
 *
 * @example
 * ```ts
 * const keys: NpmKeys = await (await fetch('https://registry.npmjs.org/-/npm/v1/keys')).json();
 * const src = new NpmSource('npm https://registry.npmjs.org left-pad', { keys });
 * ```
 */
export interface NpmKeys {
  keys: { keyid: string; key: string; keytype?: string; scheme?: string; expires?: string | null }[];
}

/**
 * Options of {@link NpmSource}.
 *
 * @example
 * ```ts
 * const src = new NpmSource('npm https://registry.npmjs.org', { packages: ['left-pad', 'react'] });
 * ```
 */
export interface NpmSourceOptions extends FetchOptions {
  /** Packages to track (added to those on the line). */
  packages?: string[];
  /** Registry keys; fetched from `<registry>/-/npm/v1/keys` when absent. */
  keys?: NpmKeys;
  /** Index versions without a valid registry signature. Never the default. */
  allowUnsigned?: boolean;
}

function b64(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** DER ECDSA-Sig-Value (SEQUENCE { r INTEGER, s INTEGER }) → r ‖ s, 32 bytes each (WebCrypto's form). */
function derToRaw(der: Uint8Array): Uint8Array | undefined {
  let o = 0;
  if (der[o++] !== 0x30) return undefined;
  let len = der[o++]!;
  if (len & 0x80) {
    if (len !== 0x81) return undefined;
    len = der[o++]!;
  }
  if (o + len !== der.length) return undefined;
  const out = new Uint8Array(64);
  for (let k = 0; k < 2; k++) {
    if (der[o++] !== 0x02) return undefined;
    let n = der[o++]!;
    if (n === undefined || o + n > der.length) return undefined;
    while (n > 32 && der[o] === 0) { o++; n--; }
    if (n > 32) return undefined;
    out.set(der.subarray(o, o + n), k * 32 + 32 - n);
    o += n;
  }
  return o === der.length ? out : undefined;
}

/**
 * Parses an SRI integrity string (`sha512-<base64>`) into a digest; undefined
 * for algorithms outside sha1/sha256/sha384/sha512.
 * @example `parseIntegrity('sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==')?.alg // 'sha512'`
 */
export function parseIntegrity(sri: string): Digest | undefined {
  // Several space-separated hashes may be given; take the strongest we know.
  let best: Digest | undefined;
  const rank: Record<string, number> = { sha1: 1, sha256: 2, sha384: 3, sha512: 4 };
  for (const part of sri.trim().split(/\s+/)) {
    const m = /^(sha1|sha256|sha384|sha512)-([A-Za-z0-9+/]+={0,2})(\?.*)?$/.exec(part);
    if (!m) continue;
    let bytes: Uint8Array;
    try {
      bytes = b64(m[2]!);
    } catch {
      continue;
    }
    const alg = m[1] as DigestAlgorithm;
    const len = { sha1: 20, sha256: 32, sha384: 48, sha512: 64 }[m[1] as 'sha1'];
    if (bytes.length !== len) continue;
    if (!best || rank[alg]! > rank[best.alg]!) best = { alg, hex: toHex(bytes) };
  }
  return best;
}

interface Tracked {
  validators: Validators;
  versions: { version: string; digest: Digest }[];
}

/**
 * An npm registry source.
 *
 * @example
 * ```ts
 * const src = new NpmSource('npm https://registry.npmjs.org left-pad');
 * await src.refresh();
 * src.lookupDigest('sha512', tarballSha512);
 * ```
 */
export class NpmSource implements RepositorySource {
  readonly id: string;
  readonly registry: string;
  private readonly opts: NpmSourceOptions;
  private readonly names: string[];
  private keys: Map<string, CryptoKey> | undefined;
  private tracked = new Map<string, Tracked>();
  private index: DigestIndex | undefined;

  constructor(line: string, options: NpmSourceOptions = {}) {
    const parts = line.trim().split(/\s+/);
    if (parts[0] !== 'npm' || parts.length < 2 || !/^https?:\/\//.test(parts[1]!)) {
      throw new VmkitError('ARG_RANGE', `npm source must be "npm <http(s) registry-url> [package…]", got ${JSON.stringify(line.slice(0, 80))}`);
    }
    this.registry = parts[1]!;
    this.names = [...new Set([...parts.slice(2), ...(options.packages ?? [])])];
    for (const n of this.names) {
      if (!/^(@[a-z0-9][\w.-]*\/)?[a-z0-9][\w.-]*$/i.test(n) || n.length > 214) throw new VmkitError('ARG_RANGE', `not an npm package name: ${JSON.stringify(n)}`);
    }
    this.id = `npm ${this.registry}`;
    this.opts = options;
  }

  /** Number of digests held. */
  get size(): number {
    return this.index?.size ?? 0;
  }

  private async loadKeys(signal: AbortSignal | undefined): Promise<Map<string, CryptoKey>> {
    if (this.keys) return this.keys;
    let doc = this.opts.keys;
    if (!doc) {
      const r = await httpGet(joinUrl(this.registry, '-/npm/v1/keys'), { ...this.opts, signal, maxBytes: 1 << 20 });
      try {
        doc = JSON.parse(new TextDecoder().decode(r.body)) as NpmKeys;
      } catch (e) {
        throw new VmkitError('CORRUPT', `${this.id}: registry keys are not JSON`, { cause: e });
      }
    }
    if (!doc || !Array.isArray(doc.keys)) throw new VmkitError('CORRUPT', `${this.id}: registry keys document has no keys`);
    const m = new Map<string, CryptoKey>();
    for (const k of doc.keys) {
      if (k.keytype !== undefined && k.keytype !== 'ecdsa-sha2-nistp256') continue;
      if (k.expires && Date.parse(k.expires) < Date.now()) continue;
      try {
        m.set(k.keyid, await globalThis.crypto.subtle.importKey('spki', b64(k.key) as Uint8Array<ArrayBuffer>, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['verify']));
      } catch (e) {
        throw new VmkitError('CORRUPT', `${this.id}: registry key ${k.keyid} is not a P-256 public key`, { cause: e });
      }
    }
    this.keys = m;
    return m;
  }

  private async verify(keys: Map<string, CryptoKey>, name: string, version: string, integrity: string, sigs: unknown): Promise<boolean> {
    if (!Array.isArray(sigs) || sigs.length === 0) return false;
    const msg = new TextEncoder().encode(`${name}@${version}:${integrity}`);
    let known = false;
    for (const s of sigs as { keyid?: unknown; sig?: unknown }[]) {
      if (typeof s?.keyid !== 'string' || typeof s.sig !== 'string') continue;
      const key = keys.get(s.keyid);
      if (!key) continue;
      known = true;
      let raw: Uint8Array | undefined;
      try {
        raw = derToRaw(b64(s.sig));
      } catch {
        raw = undefined;
      }
      if (raw && (await globalThis.crypto.subtle.verify({ name: 'ECDSA', hash: 'SHA-256' }, key, raw as Uint8Array<ArrayBuffer>, msg))) return true;
    }
    if (known) throw new VmkitError('INTEGRITY', `${this.id}: registry signature of ${name}@${version} does not verify`);
    return false;
  }

  private async fetchPackage(name: string, keys: Map<string, CryptoKey> | undefined, signal: AbortSignal | undefined): Promise<boolean> {
    const prev = this.tracked.get(name);
    const url = joinUrl(this.registry, name.replace('/', '%2f'));
    const r = await httpGet(url, { ...this.opts, signal, maxBytes: Math.min(this.opts.maxBytes ?? DEFAULT_MAX_BYTES, 256 << 20), validators: prev?.validators ?? {} });
    if (r.status === 304) return false;
    let doc: { name?: unknown; versions?: Record<string, { dist?: { integrity?: unknown; shasum?: unknown; signatures?: unknown } }> };
    try {
      doc = JSON.parse(new TextDecoder().decode(r.body));
    } catch (e) {
      throw new VmkitError('CORRUPT', `${this.id}: packument of ${name} is not JSON`, { cause: e });
    }
    if (doc?.name !== name || typeof doc.versions !== 'object' || doc.versions === null) {
      throw new VmkitError('CORRUPT', `${this.id}: packument of ${name} has no matching name or versions`);
    }
    const versions: Tracked['versions'] = [];
    for (const [version, meta] of Object.entries(doc.versions)) {
      const integrity = meta?.dist?.integrity;
      if (typeof integrity !== 'string') continue;
      const digest = parseIntegrity(integrity);
      if (!digest) continue;
      const signed = keys ? await this.verify(keys, name, version, integrity, meta.dist?.signatures) : false;
      if (!signed && !this.opts.allowUnsigned) continue;
      versions.push({ version, digest });
    }
    const v: Validators = {};
    if (r.etag) v.etag = r.etag;
    if (r.lastModified) v.lastModified = r.lastModified;
    this.tracked.set(name, { validators: v, versions });
    return true;
  }

  /**
   * Fetches each tracked packument (conditionally), verifies the registry
   * signatures and rebuilds the index when something changed. Unsigned
   * versions are left out (unless allowUnsigned); a bad signature is INTEGRITY.
   * @example `await src.refresh()`
   */
  async refresh(signal?: AbortSignal): Promise<RefreshResult> {
    let keys: Map<string, CryptoKey> | undefined;
    try {
      keys = await this.loadKeys(signal);
    } catch (e) {
      if (!this.opts.allowUnsigned) throw e;
    }
    let changed = false;
    for (const n of this.names) if (await this.fetchPackage(n, keys, signal)) changed = true;
    if (changed || !this.index) {
      const ix = new DigestIndex();
      for (const [name, t] of this.tracked) for (const v of t.versions) ix.addPackage({ repository: this.id, package: name, version: v.version }, v.digest);
      this.index?.close();
      this.index = ix;
    }
    return { changed, packages: this.index.packages };
  }

  /** Every version whose tarball has this digest. @example `src.lookupDigest('sha512', d)` */
  lookupDigest(alg: DigestAlgorithm, digest: Uint8Array): Provenance[] {
    return _lookupDigest(this.index, alg, digest);
  }

  /** A request's digests in one call (see DigestIndex.lookupMany). @example `src.lookupMany('sha256', hexes)` */
  lookupMany(alg: DigestAlgorithm, digests: readonly string[] | Uint8Array): (Provenance[] | undefined)[] {
    return _lookupMany(this.index, alg, digests);
  }

  /** Versions of a tracked package. @example `src.lookupPackage('left-pad', '1.3.0')` */
  lookupPackage(name: string, version?: string): PackageEntry[] {
    return _lookupPackage(this.index, name, version);
  }

  /** Frees the index. @example `src.close()` */
  close(): void {
    this.index?.close();
    this.index = undefined;
  }
}
