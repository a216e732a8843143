/**
 * A Debian/Ubuntu APT repository as a {@link RepositorySource}, trusted only
 * through its signed chain:
 *
 * ```
 * keyring ──verifies──► InRelease (or Release + Release.gpg)      Valid-Until honoured
 *                          │ SHA256 + size of each index file
 *                          ▼
 *                       <comp>/binary-<arch>/Packages(.xz|.gz|.zst)   by-hash when offered
 *                          │ SHA256 + size of each .deb
 *                          ▼
 *                       pool/…/x.deb ──► data.tar members ──► file SHA-256 (fileDigests, cached)
 * ```
 * Refresh is incremental: the release file is fetched with If-None-Match /
 * If-Modified-Since, and an index file whose hash did not change is not
 * fetched again. Spec followed: https://wiki.debian.org/DebianRepository/Format.
 *
 * A first refresh does not wait for the signature: the Packages.xz the source
 * line implies is fetched, hashed and parsed into a new index beside the
 * release file's fetch and check (openpgp.js loads meanwhile, on first use),
 * and that index is kept only when the verified release file lists exactly
 * the size and SHA-256 seen; else it is thrown away and the signed file fetched.
 * @module
 */
import { VmkitError } from '../../errors.js';
import type { Keyring } from '../_openpgp.js';
import { debFileDigests } from '../_deb.js';
import { DigestIndex, hexInto } from '../index-store.js';
import type { Digest, DigestAlgorithm, PackageEntry, Provenance, RefreshResult, RepositorySource } from '../types.js';
import { parseRelease, type Release } from './deb822.js';
import { _CorePackagesParser } from './_packages-scan.js';
import { _PoolInfo } from './_pool.js';
import { compressionOf, httpGet, joinUrl, sameBytes, sha, DEFAULT_MAX_BYTES, type Compression, type FetchOptions, type Validators } from './_io.js';
import { _streamSigned, _streamUnsigned, type SeenFile } from './_verified-stream.js';
import { _lookupDigest, _lookupMany, _lookupPackage } from './_lookups.js';
import { _checkReleaseDate, type ReleaseState } from './release-state.js';

/**
 * A parsed one-line APT source (`deb [options] uri suite [component…]`).
 *
 * @example
 * ```ts
 * const { uri, suite, components, options }: AptLine = parseAptLine('deb [arch=arm64] http://deb.debian.org/debian bookworm main');
 * // options.get('arch') === 'arm64'
 * ```
 */
export interface AptLine {
  uri: string;
  suite: string;
  /** Empty for a flat repository (suite ends with `/`). */
  components: string[];
  /** The `[key=value …]` options (`arch`, `signed-by`, …). */
  options: Map<string, string>;
}

/**
 * Parses a one-line APT source. Only `deb` (binary) lines are sources.
 * @example `parseAptLine('deb [arch=amd64] http://deb.debian.org/debian bookworm main').components // ['main']`
 */
export function parseAptLine(line: string): AptLine {
  let rest = line.trim();
  if (!rest.startsWith('deb ') && !rest.startsWith('deb\t')) {
    throw new VmkitError('ARG_RANGE', `not a binary APT source line (must start with "deb"): ${JSON.stringify(line.slice(0, 80))}`);
  }
  rest = rest.slice(4).trim();
  const options = new Map<string, string>();
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']');
    if (close < 0) throw new VmkitError('ARG_RANGE', `APT source options lack "]": ${JSON.stringify(line.slice(0, 80))}`);
    for (const kv of rest.slice(1, close).trim().split(/\s+/)) {
      if (!kv) continue;
      const eq = kv.indexOf('=');
      if (eq <= 0) throw new VmkitError('ARG_RANGE', `APT source option is not key=value: ${JSON.stringify(kv)}`);
      options.set(kv.slice(0, eq), kv.slice(eq + 1));
    }
    rest = rest.slice(close + 1).trim();
  }
  const parts = rest.split(/\s+/).filter(Boolean);
  const [uri, suite, ...components] = parts;
  if (!uri || !suite) throw new VmkitError('ARG_RANGE', `APT source line needs a URI and a suite: ${JSON.stringify(line.slice(0, 80))}`);
  // file: as APT's file method, a local mirror (Node: read with node:fs, _file-fetch.ts).
  if (!/^(https?:\/\/|file:\/)/.test(uri)) throw new VmkitError('ARG_RANGE', `APT source URI must be http(s) or file: ${JSON.stringify(uri)}`);
  const flat = suite.endsWith('/');
  if (flat && components.length) throw new VmkitError('ARG_RANGE', 'a flat APT repository (suite ending in /) takes no components');
  if (!flat && !components.length) throw new VmkitError('ARG_RANGE', 'APT source line needs at least one component');
  return { uri, suite, components, options };
}

/**
 * Options of {@link AptSource}.
 *
 * @example
 * ```ts
 * const src = new AptSource('deb http://deb.debian.org/debian bookworm main', { keyring, architectures: ['amd64', 'arm64'] });
 * ```
 */
export interface AptSourceOptions extends FetchOptions {
  /**
   * Trusted keys: a keyring read with `readKeyring`, or keyring bytes (binary
   * or armored). When absent, the line's `signed-by=` file is read (Node).
   */
  keyring?: Keyring | Uint8Array | Uint8Array[];
  /** Architectures to index (default: the line's `arch=`, else `amd64`). */
  architectures?: string[];
  /** Accept a release file without a (valid) signature. Never the default. */
  allowUnsigned?: boolean;
  /** Accept a release file past its Valid-Until. Never the default. */
  allowExpired?: boolean;
  /** Clock (for Valid-Until and Date), default `() => new Date()`. */
  now?: () => Date;
  /**
   * Where the date of the last accepted release is kept (default: in this
   * source, for the life of the process; `fileReleaseState(dir)` keeps it
   * across restarts). A release whose `Date` is older is refused (INTEGRITY):
   * a rollback to an older, correctly signed state.
   */
  releaseState?: ReleaseState;
  /**
   * How far in the future a release's `Date` may be, ms (default 10 000, as
   * APT's `Acquire::Max-FutureTime`); past it the release is refused (INTEGRITY).
   */
  maxFutureSkewMs?: number;
  /** How many packages' file digests to keep (default 256). */
  fileCacheSize?: number;
}

interface IndexFile {
  /** Path under dists/<suite>/ (or the flat directory). */
  path: string;
  sha256: string;
  size: number;
}

// openpgp.js (a large module) loads on first use, while a prefetch already runs.
const pgp = (): Promise<typeof import('../_openpgp.js')> => import('../_openpgp.js');

/** A Packages.xz fetched and parsed before the release file was verified (see refresh). */
interface Prefetch {
  /** Path under dists/<suite>/, as the release file would list it. */
  path: string;
  ix: DigestIndex;
  pool: PoolInfo;
  /** What was seen, once the whole body was read, decompressed and parsed; undefined on any failure. */
  done: Promise<SeenFile | undefined>;
  abort: AbortController;
}

/** Per package of the current index: where its .deb is and how big. */
type PoolInfo = _PoolInfo;

/**
 * An APT repository source.
 *
 * @example
 * ```ts
 * import { init } from 'vmkit';
 * import { AptSource, readKeyring } from 'vmkit/attest';
 * await init();
 * const src = new AptSource('deb http://deb.debian.org/debian bookworm main', {
 *   keyring: await readKeyring(await readFile('/usr/share/keyrings/debian-archive-keyring.gpg')),
 * });
 * await src.refresh();
 * src.lookupPackage('hello');
 * ```
 */
export class AptSource implements RepositorySource {
  readonly id: string;
  readonly line: AptLine;
  private readonly opts: AptSourceOptions;
  private readonly archs: string[];
  private ring: Keyring | undefined;
  private index: DigestIndex | undefined;
  private pool: PoolInfo = new _PoolInfo();
  private validators: Validators = {};
  private release: Release | undefined;
  private indexed = new Map<string, string>(); // index file path → sha256 it was built from
  private files = new Map<string, Promise<Map<string, Digest>>>(); // .deb sha256 → file digests
  private filesOf = new Map<string, Map<string, Digest>>(); // same, settled, to re-add after a rebuild

  constructor(line: string, options: AptSourceOptions = {}) {
    this.line = parseAptLine(line);
    this.id = line.trim().replace(/\s+/g, ' ');
    this.opts = options;
    const a = options.architectures ?? this.line.options.get('arch')?.split(',') ?? ['amd64'];
    this.archs = a.filter(Boolean);
    if (this.archs.length === 0) throw new VmkitError('ARG_RANGE', 'no architecture to index');
  }

  /** Number of digests held. */
  get size(): number {
    return this.index?.size ?? 0;
  }

  /** When the verified release file stops being valid, if it says. */
  get validUntil(): Date | undefined {
    return this.release?.validUntil;
  }

  private base(): string {
    const { uri, suite, components } = this.line;
    return components.length === 0 ? joinUrl(uri, suite) : joinUrl(uri, `dists/${suite}`);
  }

  private async keyring(): Promise<Keyring | undefined> {
    if (this.ring) return this.ring;
    const k = this.opts.keyring;
    if (k && 'keys' in k && 'fingerprints' in k) this.ring = k as Keyring;
    else if (k instanceof Uint8Array) this.ring = await (await pgp()).readKeyring(k);
    else if (Array.isArray(k)) this.ring = await (await pgp()).readKeyring(...k);
    else {
      const path = this.line.options.get('signed-by');
      if (path && path.startsWith('/')) {
        // Hidden from bundlers so browser builds do not try to resolve node:fs.
        const fsName = 'node:fs/promises';
        const { readFile } = (await import(/* @vite-ignore */ fsName)) as typeof import('node:fs/promises');
        let bytes: Uint8Array;
        try {
          bytes = await readFile(path);
        } catch (e) {
          throw new VmkitError('NOT_FOUND', `signed-by keyring ${path} could not be read`, { cause: e, path });
        }
        this.ring = await (await pgp()).readKeyring(bytes);
      }
    }
    return this.ring;
  }

  private now(): Date {
    return this.opts.now ? this.opts.now() : new Date();
  }

  // Rollback and clock checks on a newly fetched release, before anything of it is used:
  // never older than the last one accepted (APT refuses those too), never dated further
  // in the future than the allowed skew (APT: "not valid yet").
  private checkFresh(rel: Release): void {
    const last = this.opts.releaseState?.get(this.id) ?? this.release?.date?.getTime();
    _checkReleaseDate(this.id, 'release file', rel.date?.getTime(), last, this.now().getTime(), this.opts.maxFutureSkewMs ?? 10_000);
  }

  private async accepted(rel: Release): Promise<void> {
    if (rel.date && this.opts.releaseState) await this.opts.releaseState.set(this.id, rel.date.getTime());
  }

  private checkValid(rel: Release): void {
    if (rel.validUntil && rel.validUntil.getTime() < this.now().getTime() && !this.opts.allowExpired) {
      this.drop();
      throw new VmkitError('INTEGRITY', `${this.id}: release file expired at ${rel.validUntil.toISOString()} (Valid-Until)`);
    }
  }

  private drop(): void {
    this.index?.close();
    this.index = undefined;
    this.release = undefined;
    this.indexed.clear();
    this.validators = {};
  }

  /** Fetches the release file and verifies it; undefined on 304. */
  private async fetchRelease(signal: AbortSignal | undefined): Promise<{ text: string; validators: Validators } | undefined> {
    const io = { ...this.opts, signal, maxBytes: Math.min(this.opts.maxBytes ?? DEFAULT_MAX_BYTES, 64 << 20) };
    const ring = await this.keyring();
    if (!ring && !this.opts.allowUnsigned) {
      throw new VmkitError('INTEGRITY', `${this.id}: no keyring to verify the repository with (pass keyring or signed-by=, or allowUnsigned)`);
    }
    const dec = new TextDecoder('utf-8', { fatal: false });
    const haveState = this.release !== undefined;
    try {
      const r = await httpGet(joinUrl(this.base(), 'InRelease'), { ...io, validators: haveState ? this.validators : {} });
      if (r.status === 304) return undefined;
      const signed = dec.decode(r.body);
      const v: Validators = {};
      if (r.etag) v.etag = r.etag;
      if (r.lastModified) v.lastModified = r.lastModified;
      if (ring) {
        try {
          return { text: (await (await pgp()).verifyCleartext(signed, ring, `${this.id} InRelease`)).text, validators: v };
        } catch (e) {
          if (!this.opts.allowUnsigned) throw e;
        }
      }
      // allowUnsigned: take the text inside the signature framing, if any.
      return { text: stripCleartext(signed), validators: v };
    } catch (e) {
      if (!(e instanceof VmkitError) || e.code !== 'NOT_FOUND') throw e;
    }
    const r = await httpGet(joinUrl(this.base(), 'Release'), { ...io, validators: haveState ? this.validators : {} });
    if (r.status === 304) return undefined;
    const v: Validators = {};
    if (r.etag) v.etag = r.etag;
    if (r.lastModified) v.lastModified = r.lastModified;
    let sig: Uint8Array | undefined;
    try {
      sig = (await httpGet(joinUrl(this.base(), 'Release.gpg'), io)).body;
    } catch (e) {
      if (!(e instanceof VmkitError) || e.code !== 'NOT_FOUND') throw e;
    }
    if (ring && sig) {
      try {
        await (await pgp()).verifyDetached(r.body, sig, ring, `${this.id} Release.gpg`);
        return { text: dec.decode(r.body), validators: v };
      } catch (e) {
        if (!this.opts.allowUnsigned) throw e;
      }
    } else if (!this.opts.allowUnsigned) {
      throw new VmkitError('INTEGRITY', `${this.id}: Release is not signed (no InRelease, no Release.gpg)`);
    }
    return { text: dec.decode(r.body), validators: v };
  }

  /** The index directories the line implies: per component × architecture. */
  private dirs(): string[] {
    return this.line.components.length === 0 ? [''] : this.line.components.flatMap((c) => this.archs.map((a) => `${c}/binary-${a}/`));
  }

  // A first refresh of a single index directory: its Packages.xz fetched, hashed and parsed
  // into an index of its own while the release file is fetched and verified. Never used
  // unless the verified release file signs exactly the bytes seen (see adopt).
  private prefetch(signal: AbortSignal | undefined): Prefetch | undefined {
    const dirs = this.dirs();
    if (this.index !== undefined || dirs.length !== 1) return undefined;
    const path = `${dirs[0]}Packages.xz`;
    const abort = new AbortController();
    const onAbort = (): void => abort.abort();
    signal?.addEventListener('abort', onAbort, { once: true });
    const ix = new DigestIndex();
    const pool: PoolInfo = new _PoolInfo();
    const parser = this.parserInto(ix, pool, path);
    const o = { ...this.opts, signal: abort.signal, max: this.opts.maxBytes ?? DEFAULT_MAX_BYTES, what: path, id: this.id };
    const done = _streamUnsigned(joinUrl(this.base(), path), 'xz', o, (c) => {
      // Discarded meanwhile: stop decompressing (the xz child is killed).
      if (abort.signal.aborted) throw new VmkitError('CANCELLED', `${this.id}: prefetch of ${path} discarded`);
      parser.push(c);
    })
      .then((seen) => (parser.end(), seen))
      .catch(() => (parser.close(), undefined)) // any failure: the signed file is fetched as without a prefetch
      .finally(() => signal?.removeEventListener('abort', onAbort));
    return { path, ix, pool, done, abort };
  }

  // The prefetched index when the verified release file lists its path with exactly the
  // size and SHA-256 seen; else undefined (the caller discards it and fetches the signed file).
  private async adopt(pre: Prefetch, variants: IndexFile[][]): Promise<IndexFile | undefined> {
    const f = variants.length === 1 ? variants[0]!.find((v) => v.path === pre.path) : undefined;
    if (!f) return undefined;
    const seen = await pre.done;
    if (!seen || seen.size !== f.size) return undefined;
    const want = new Uint8Array(32);
    hexInto(f.sha256, want);
    return sameBytes(seen.sha256, want) ? f : undefined;
  }

  private discard(pre: Prefetch): void {
    pre.abort.abort();
    // Closed once the stream has stopped writing into it.
    void pre.done.then(() => pre.ix.close());
  }

  private parserInto(ix: DigestIndex, pool: PoolInfo, path: string): _CorePackagesParser {
    // Parsed in the core: Package and Version come as strings of their own, SHA256 decoded, Filename as bytes.
    return new _CorePackagesParser((r) => {
      ix.addPackageSha256Raw(this.id, r.package, r.version, r.architecture, r.digest, r.digestAt);
      pool.add(r.text, r.filenameAt, r.filenameLength, r.size);
    }, `${this.id} ${path}`);
  }

  /** The index files to read: per component × architecture, its variants best compression first. */
  private pick(rel: Release): IndexFile[][] {
    const out: IndexFile[][] = [];
    for (const d of this.dirs()) {
      const found: IndexFile[] = [];
      for (const ext of ['.xz', '.gz', '.zst', '']) {
        const f = rel.files.get(d + 'Packages' + ext);
        if (f) found.push({ path: d + 'Packages' + ext, ...f });
      }
      if (!found.length) throw new VmkitError('NOT_FOUND', `${this.id}: the release file lists no ${d}Packages`);
      out.push(found);
    }
    return out;
  }

  // GETs a file whose size is signed, reading no more than that size. A body that runs
  // past it is a file other than the signed one (INTEGRITY); past the source's own byte
  // limit it stays LIMIT (the signed size itself is then more than we read).
  private async getSigned(url: string, size: number, what: string, signal: AbortSignal | undefined): Promise<Uint8Array> {
    const own = this.opts.maxBytes ?? DEFAULT_MAX_BYTES;
    try {
      return (await httpGet(url, { ...this.opts, signal, maxBytes: Math.min(own, size) })).body;
    } catch (e) {
      if (e instanceof VmkitError && e.code === 'LIMIT' && size <= own) {
        throw new VmkitError('INTEGRITY', `${this.id}: ${what} is longer than the ${size} bytes ${what.endsWith('.deb') ? 'the signed Packages file' : 'the signed release file'} gives`, { path: url, cause: e });
      }
      throw e;
    }
  }

  // Streams one Packages file into ix and pool as it arrives (by-hash first when offered),
  // checked against the signed release file on the way (see _verified-stream.ts): the caller
  // throws ix away on any failure, so nothing of a file that is not the signed one is used.
  private async indexFile(f: IndexFile, rel: Release, kind: Compression, ix: DigestIndex, pool: PoolInfo, signal: AbortSignal | undefined): Promise<void> {
    const parser = this.parserInto(ix, pool, f.path);
    const o = { ...this.opts, signal, max: this.opts.maxBytes ?? DEFAULT_MAX_BYTES, what: f.path, id: this.id };
    const urls: string[] = [];
    if (rel.acquireByHash) urls.push(joinUrl(this.base(), `${f.path.slice(0, f.path.lastIndexOf('/') + 1)}by-hash/SHA256/${f.sha256}`));
    urls.push(joinUrl(this.base(), f.path));
    for (let i = 0; i < urls.length; i++) {
      try {
        await _streamSigned(urls[i]!, f, kind, o, (c) => parser.push(c));
      } catch (e) {
        // NOT_FOUND comes with the status line, before any byte reached the parser.
        if (i + 1 < urls.length && e instanceof VmkitError && e.code === 'NOT_FOUND') continue;
        parser.close();
        throw e;
      }
      parser.end();
      return;
    }
  }

  /**
   * Fetches and verifies the release file, then the Packages files whose hash
   * changed, and rebuilds the index. Throws INTEGRITY (unsigned, bad
   * signature, expired, older than the last accepted, dated in the future,
   * hash mismatch), NETWORK, NOT_FOUND, CORRUPT, LIMIT; the index in use stays.
   * @example `const { changed, packages } = await src.refresh();`
   */
  async refresh(signal?: AbortSignal): Promise<RefreshResult> {
    const pre = this.prefetch(signal);
    let kept = false;
    try {
      const r = await this.refreshWith(pre, signal);
      kept = r.kept;
      return r.result;
    } finally {
      if (pre && !kept) this.discard(pre);
    }
  }

  private async refreshWith(pre: Prefetch | undefined, signal: AbortSignal | undefined): Promise<{ result: RefreshResult; kept: boolean }> {
    const got = await this.fetchRelease(signal);
    if (!got) {
      // 304: the signed state we hold is still the repository's; it may have expired meanwhile.
      this.checkValid(this.release!);
      return { result: this.result(false), kept: false };
    }
    const rel = parseRelease(got.text, `${this.id} Release`);
    if (this.line.components.length && rel.suite !== this.line.suite && rel.codename !== this.line.suite) {
      throw new VmkitError('INTEGRITY', `${this.id}: release file is for suite ${rel.suite ?? '?'} / codename ${rel.codename ?? '?'}, not ${this.line.suite}`);
    }
    this.checkValid(rel);
    this.checkFresh(rel);
    const variants = this.pick(rel);
    // Unchanged when each index file we built from is listed again with the same hash.
    const same = this.index !== undefined && variants.length === this.indexed.size &&
      variants.every((vs) => vs.some((p) => this.indexed.get(p.path) === p.sha256));
    if (same) {
      await this.accepted(rel);
      this.release = rel;
      this.validators = got.validators;
      return { result: this.result(false), kept: false };
    }
    const picks: IndexFile[] = [];
    // The prefetched index, when the verified release file signs exactly what it was built from.
    const adopted = pre ? await this.adopt(pre, variants) : undefined;
    if (adopted) picks.push(adopted);
    const ix = adopted ? pre!.ix : new DigestIndex();
    const pool: PoolInfo = adopted ? pre!.pool : new _PoolInfo();
    try {
      for (const vs of adopted ? [] : variants) {
        // The first variant the server has (a mirror may lack some compressions), streamed
        // into the new index and checked against the release file as it arrives.
        let last: unknown;
        let done = false;
        for (const f of vs) {
          const kind = compressionOf(f.path);
          if (!kind) continue;
          try {
            await this.indexFile(f, rel, kind, ix, pool, signal);
          } catch (e) {
            if (e instanceof VmkitError && e.code === 'NOT_FOUND') {
              last = e;
              continue;
            }
            throw e;
          }
          picks.push(f);
          done = true;
          break;
        }
        if (!done) throw last ?? new VmkitError('UNSUPPORTED', `${this.id}: no index file variant with a supported compression`);
      }
      await this.accepted(rel);
    } catch (e) {
      ix.close();
      throw e;
    }
    this.index?.close();
    this.index = ix;
    this.pool = pool;
    this.release = rel;
    this.validators = got.validators;
    this.indexed = new Map(picks.map((p) => [p.path, p.sha256]));
    // File digests already computed stay valid for the same .deb (same SHA-256).
    for (const [debSha, files] of this.filesOf) this.readdFiles(debSha, files);
    return { result: this.result(true), kept: adopted !== undefined };
  }

  private result(changed: boolean): RefreshResult {
    const r: RefreshResult = { changed, packages: this.index?.packages ?? 0 };
    if (this.release?.validUntil) r.validUntil = this.release.validUntil;
    return r;
  }

  private live(): DigestIndex {
    if (!this.index) throw new VmkitError('INVALID_STATE', `${this.id}: not refreshed (call refresh() first)`);
    return this.index;
  }

  /** Every entry with this digest; empty when none (or before a refresh). @example `src.lookupDigest('sha256', d)` */
  lookupDigest(alg: DigestAlgorithm, digest: Uint8Array): Provenance[] {
    return _lookupDigest(this.index, alg, digest);
  }

  /** A request's digests in one call (see DigestIndex.lookupMany). @example `src.lookupMany('sha256', hexes)` */
  lookupMany(alg: DigestAlgorithm, digests: readonly string[] | Uint8Array): (Provenance[] | undefined)[] {
    return _lookupMany(this.index, alg, digests);
  }

  /** Package versions named `name`. @example `src.lookupPackage('hello', '2.10-3')` */
  lookupPackage(name: string, version?: string): PackageEntry[] {
    return _lookupPackage(this.index, name, version);
  }

  private readdFiles(debSha: string, files: Map<string, Digest>): void {
    const ix = this.index;
    if (!ix) return;
    const want = new Uint8Array(32);
    hexInto(debSha, want);
    const prov = ix.lookupDigest('sha256', want);
    for (const p of prov) {
      if (p.path !== undefined) return; // already there
    }
    const first = prov[0];
    if (!first) return;
    const id = ix.packageIds(first.package).find((i) => {
      const e = ix.packageEntry(i);
      return e.provenance.version === first.version && e.provenance.architecture === first.architecture;
    });
    if (id === undefined) return;
    for (const [path, d] of files) ix.addFile(id, path, d);
  }

  /**
   * File-level reference values of one package: fetches its `.deb`, checks it
   * against the SHA256 and size in the signed Packages file, hashes the members
   * of its data archive and adds them to the index (so `lookupDigest` finds
   * them). Cached per package.
   * @example `const files = await src.fileDigests(src.lookupPackage('hello')[0]);`
   */
  fileDigests(entry: PackageEntry, signal?: AbortSignal): Promise<Map<string, Digest> | undefined> {
    const ix = this.live();
    const p = entry.provenance;
    const id = ix.packageIds(p.package).find((i) => {
      const e = ix.packageEntry(i);
      return e.provenance.version === p.version && e.provenance.architecture === p.architecture;
    });
    if (id === undefined) return Promise.reject(new VmkitError('NOT_FOUND', `${this.id}: no package ${p.package} ${p.version} ${p.architecture ?? ''}`));
    const debSha = ix.packageEntry(id).digests[0]!.hex;
    let job = this.files.get(debSha);
    if (!job) {
      job = this.loadFiles(id, debSha, signal);
      this.files.set(debSha, job);
      job.catch(() => this.files.delete(debSha));
      const cap = this.opts.fileCacheSize ?? 256;
      while (this.files.size > cap) {
        const k = this.files.keys().next().value as string;
        this.files.delete(k);
        this.filesOf.delete(k);
      }
    }
    return job;
  }

  private async loadFiles(id: number, debSha: string, signal: AbortSignal | undefined): Promise<Map<string, Digest>> {
    const filename = this.pool.filename(id);
    const size = this.pool.size(id);
    const url = joinUrl(this.line.uri, filename);
    const body = await this.getSigned(url, size, filename, signal);
    const want = new Uint8Array(32);
    hexInto(debSha, want);
    if (body.length !== size || !sameBytes(await sha('SHA-256', body), want)) {
      throw new VmkitError('INTEGRITY', `${this.id}: ${filename} does not match the SHA256 and size in the signed Packages file`, { path: url });
    }
    const files = new Map<string, Digest>();
    const opts = this.opts.maxBytes === undefined ? {} : { maxBytes: this.opts.maxBytes };
    for (const [path, hex] of await debFileDigests(body, opts)) files.set(path, { alg: 'sha256', hex });
    this.filesOf.set(debSha, files);
    // The index may have been rebuilt meanwhile: find the package again by its .deb digest.
    this.readdFiles(debSha, files);
    return files;
  }

  /** Frees the index. @example `src.close()` */
  close(): void {
    this.drop();
  }
}

// The text of a cleartext-signed message without checking it (allowUnsigned only).
function stripCleartext(s: string): string {
  const m = /^-----BEGIN PGP SIGNED MESSAGE-----\r?\n(?:[^\r\n]+\r?\n)*\r?\n([\s\S]*?)\r?\n-----BEGIN PGP SIGNATURE-----/.exec(s);
  if (!m) return s;
  return m[1]!.replace(/^- /gm, '');
}
