/**
 * An RPM repository (repodata, as `createrepo_c` writes it) as a
 * {@link RepositorySource}:
 *
 * ```
 * keyring ──verifies──► repodata/repomd.xml.asc (detached, armored) over repomd.xml
 *                          │ <data type="primary"> checksum + size + location
 *                          ▼
 *                       repodata/<hash>-primary.xml(.gz|.xz|.zst)
 *                          │ <package><checksum type="sha256" pkgid="YES">… per .rpm
 *                          ▼
 *                       name, epoch:version-release, arch, location
 *                       repodata/<hash>-filelists-ext.xml(.gz|…), when listed (createrepo_c --filelists-ext)
 *                          │ <package pkgid=…><checksum type=…/><file hash=…>path
 *                          ▼
 *                       file digests with their package, path
 *
 * fileDigests(entry): <location>.rpm ── size + checksum from primary.xml
 *                          │ signature header SHA256 (tag 273) = SHA-256 of the main header as stored
 *                          ▼
 *                       main header FILEDIGESTS + FILEDIGESTALGO by DIRNAMES/BASENAMES (no payload read)
 * ```
 * Spec followed: the createrepo_c repodata format
 * (https://github.com/rpm-software-management/createrepo_c, `doc/`), XML
 * parsed with the streaming parser saxes (no DTDs, no entity expansion).
 * @module
 */
import { SaxesParser } from 'saxes';
import { VmkitError } from '../../errors.js';
import { _checkReleaseDate, type ReleaseState } from './release-state.js';
import type { Keyring } from '../_openpgp.js';
import { DigestIndex, digestLength, hexInto, ownString } from '../index-store.js';
import type { Digest, DigestAlgorithm, PackageEntry, Provenance, RefreshResult, RepositorySource } from '../types.js';
import { _rpmHeaderDigest, rpmFileDigests } from '../_rpm.js';
import { compressionOf, decompressChunks, httpGet, joinUrl, sameBytes, sha, DEFAULT_MAX_BYTES, type FetchOptions, type Validators } from './_io.js';
import { _lookupDigest, _lookupMany, _lookupPackage } from './_lookups.js';

// openpgp.js (a large module) loads on first use, not with every source module.
const pgp = (): Promise<typeof import('../_openpgp.js')> => import('../_openpgp.js');

/**
 * One `<data>` record of repomd.xml.
 *
 * @example
 * ```ts
 * const primary = parseRepomd(xml).find((d: RepomdData) => d.type === 'primary');
 * console.log(primary?.location, primary?.checksum.hex);
 * ```
 */
export interface RepomdData {
  type: string;
  location: string;
  checksum: { type: string; hex: string };
  openChecksum?: { type: string; hex: string };
  size?: number;
  /** `<timestamp>`: when the file was made, seconds since the epoch. */
  timestamp?: number;
}

/**
 * A package record of primary.xml.
 *
 * @example
 * ```ts
 * const pp = primaryParser((p: PrimaryPackage) => console.log(p.name, p.version, p.arch));
 * ```
 */
export interface PrimaryPackage {
  name: string;
  arch: string;
  /** `epoch:ver-rel`, the epoch only when not 0. */
  version: string;
  checksum: { type: string; hex: string };
  location: string;
  /** Size of the .rpm in bytes (`<size package=…>`), when given. */
  size?: number;
}

function xmlCorrupt(what: string, e: unknown): VmkitError {
  if (e instanceof VmkitError) return e;
  return new VmkitError('CORRUPT', `${what}: ${(e as Error).message}`, { cause: e });
}

/**
 * GET a file whose size signed metadata declares: the download stops at that
 * size, and a body longer than it is an INTEGRITY failure (the server does not
 * serve what the signature covers), not a LIMIT one (a configured cap).
 */
async function _getSigned(url: string, io: FetchOptions & { signal?: AbortSignal | undefined }, max: number, signedSize: number | undefined, what: string): Promise<Uint8Array> {
  const bySignature = signedSize !== undefined && signedSize <= max;
  try {
    return (await httpGet(url, { ...io, maxBytes: bySignature ? signedSize : max })).body;
  } catch (e) {
    if (bySignature && e instanceof VmkitError && e.code === 'LIMIT') {
      throw new VmkitError('INTEGRITY', `${what}: larger than the ${signedSize} bytes the signed metadata gives`, { path: url, cause: e });
    }
    throw e;
  }
}

/** A streaming parser's write/close, with parse errors as VmkitError CORRUPT naming `what`; close returns `result()`. */
function _sink(p: SaxesParser, what: string, result: () => number): { write(s: string): void; close(): number } {
  return {
    write(s: string): void {
      try {
        p.write(s);
      } catch (e) {
        throw xmlCorrupt(what, e);
      }
    },
    close(): number {
      try {
        p.close();
      } catch (e) {
        throw xmlCorrupt(what, e);
      }
      return result();
    },
  };
}

function parser(): SaxesParser {
  // Positions cost time and are not needed: errors carry the message only.
  return new SaxesParser({ position: false });
}

/**
 * Parses repomd.xml into its `<data>` records. CORRUPT on malformed XML or a
 * record without checksum or location.
 * @example `parseRepomd(xml).find((d) => d.type === 'primary')?.location`
 */
export function parseRepomd(xml: string, what: string = 'repomd.xml'): RepomdData[] {
  const out: RepomdData[] = [];
  let cur: Partial<RepomdData> | undefined;
  let text = '';
  let ckType = '';
  let root = false;
  const p = parser();
  p.on('opentag', (t) => {
    text = '';
    const a = t.attributes as Record<string, string>;
    if (t.name === 'repomd') root = true;
    else if (t.name === 'data' && root) cur = { type: a.type ?? '' };
    else if (cur && (t.name === 'checksum' || t.name === 'open-checksum')) ckType = a.type ?? '';
    else if (cur && t.name === 'location') cur.location = a.href ?? '';
  });
  p.on('text', (s) => { text += s; });
  p.on('closetag', (t) => {
    if (!cur) return;
    if (t.name === 'checksum') cur.checksum = { type: ckType, hex: text.trim().toLowerCase() };
    else if (t.name === 'open-checksum') cur.openChecksum = { type: ckType, hex: text.trim().toLowerCase() };
    else if (t.name === 'size') {
      const n = text.trim();
      if (!/^\d{1,15}$/.test(n)) throw new VmkitError('CORRUPT', `${what}: bad <size> ${JSON.stringify(n.slice(0, 20))}`);
      cur.size = Number(n);
    } else if (t.name === 'timestamp') {
      const n = text.trim();
      if (!/^\d{1,12}(\.\d+)?$/.test(n)) throw new VmkitError('CORRUPT', `${what}: bad <timestamp> ${JSON.stringify(n.slice(0, 20))}`);
      cur.timestamp = Number(n);
    } else if (t.name === 'data') {
      if (!cur.type || !cur.location || !cur.checksum) throw new VmkitError('CORRUPT', `${what}: <data type="${cur.type ?? ''}"> lacks checksum or location`);
      out.push(cur as RepomdData);
      cur = undefined;
    }
  });
  try {
    p.write(xml).close();
  } catch (e) {
    throw xmlCorrupt(what, e);
  }
  if (!root) throw new VmkitError('CORRUPT', `${what}: no <repomd> root`);
  return out;
}

/**
 * Streams the `<package>` records of primary.xml to `onPackage`. Feed the
 * text in chunks with `write` and finish with `close`; CORRUPT on malformed
 * XML or a package lacking name, arch, version, checksum or location.
 * @example
 * ```ts
 * const pp = primaryParser((p) => console.log(p.name, p.version));
 * pp.write(chunk1); pp.write(chunk2); pp.close();
 * ```
 */
export function primaryParser(onPackage: (p: PrimaryPackage) => void, what: string = 'primary.xml'): { write(s: string): void; close(): number } {
  const p = parser();
  let depth = 0;
  let pkgDepth = -1;
  let cur: Partial<PrimaryPackage> = {};
  let text = '';
  let ckType = '';
  let count = 0;
  p.on('opentag', (t) => {
    depth++;
    const a = t.attributes as Record<string, string>;
    if (t.name === 'package' && pkgDepth < 0) {
      pkgDepth = depth;
      cur = {};
    } else if (pkgDepth > 0 && depth === pkgDepth + 1) {
      text = '';
      if (t.name === 'version') {
        const { epoch, ver, rel } = a;
        if (ver === undefined || rel === undefined) throw new VmkitError('CORRUPT', `${what}: <version> lacks ver or rel`);
        cur.version = (epoch && epoch !== '0' ? `${epoch}:` : '') + `${ver}-${rel}`;
      } else if (t.name === 'checksum') ckType = a.type ?? '';
      else if (t.name === 'location') cur.location = a.href ?? '';
      else if (t.name === 'size' && a.package !== undefined) {
        if (!/^\d{1,15}$/.test(a.package)) throw new VmkitError('CORRUPT', `${what}: bad <size package>`);
        cur.size = Number(a.package);
      }
    }
  });
  p.on('text', (s) => {
    if (pkgDepth > 0 && depth === pkgDepth + 1) text += s;
  });
  p.on('closetag', (t) => {
    if (pkgDepth > 0 && depth === pkgDepth + 1) {
      if (t.name === 'name') cur.name = text.trim();
      else if (t.name === 'arch') cur.arch = text.trim();
      else if (t.name === 'checksum') cur.checksum = { type: ckType, hex: text.trim().toLowerCase() };
    } else if (depth === pkgDepth) {
      if (!cur.name || !cur.arch || !cur.version || !cur.checksum || !cur.location) {
        throw new VmkitError('CORRUPT', `${what}: <package> ${cur.name ?? ''} lacks name, arch, version, checksum or location`);
      }
      onPackage(cur as PrimaryPackage);
      count++;
      pkgDepth = -1;
    }
    depth--;
  });
  return _sink(p, what, () => count);
}

/**
 * A file with its digest, from filelists-ext.xml.
 *
 * @example
 * ```ts
 * const fp = filelistsExtParser((f: FilelistsExtFile) => console.log(f.pkgid, f.path, f.alg, f.hex));
 * ```
 */
export interface FilelistsExtFile {
  /** `pkgid` of its package: the package checksum in primary.xml. */
  pkgid: string;
  /** Absolute path as installed. */
  path: string;
  /** The package's file digest algorithm (`<checksum type>`), e.g. `sha256`. */
  alg: string;
  /** Lowercase hex digest of the file. */
  hex: string;
}

/**
 * Streams the regular files with digests of filelists-ext.xml (createrepo_c
 * 0.21+ `--filelists-ext`: per `<package pkgid>` a `<checksum type>` naming
 * the file digest algorithm, then `<file hash="…">path</file>`; directories
 * and ghosts carry no hash and are skipped). Feed chunks with `write`, finish
 * with `close` (returns the files seen); CORRUPT on malformed XML, a hash
 * that is not hex or a file outside a package.
 * @example
 * ```ts
 * const fp = filelistsExtParser((f) => console.log(f.path, f.hex));
 * fp.write(xml); fp.close();
 * ```
 */
export function filelistsExtParser(onFile: (f: FilelistsExtFile) => void, what: string = 'filelists-ext.xml'): { write(s: string): void; close(): number } {
  const p = parser();
  let pkgid = '';
  let alg = '';
  let hash = '';
  let inFile = false;
  let text = '';
  let count = 0;
  p.on('opentag', (t) => {
    const a = t.attributes as Record<string, string>;
    if (t.name === 'package') {
      pkgid = (a.pkgid ?? '').toLowerCase();
      alg = '';
      if (!pkgid) throw new VmkitError('CORRUPT', `${what}: <package> without pkgid`);
    } else if (t.name === 'checksum' && pkgid) alg = (a.type ?? '').toLowerCase();
    else if (t.name === 'file') {
      if (!pkgid) throw new VmkitError('CORRUPT', `${what}: <file> outside a <package>`);
      hash = (a.hash ?? '').toLowerCase();
      if (hash && !/^[0-9a-f]+$/.test(hash)) throw new VmkitError('CORRUPT', `${what}: <file hash> is not hex`);
      inFile = true;
      text = '';
    }
  });
  p.on('text', (s) => {
    if (inFile) text += s;
  });
  p.on('closetag', (t) => {
    if (t.name === 'file') {
      inFile = false;
      if (hash) {
        onFile({ pkgid, path: text.trim(), alg, hex: hash });
        count++;
      }
    } else if (t.name === 'package') pkgid = '';
  });
  return _sink(p, what, () => count);
}

const ALG: Record<string, DigestAlgorithm> = { sha: 'sha1', sha1: 'sha1', sha256: 'sha256', sha384: 'sha384', sha512: 'sha512', md5: 'md5' };
const SUBTLE: Partial<Record<DigestAlgorithm, 'SHA-256' | 'SHA-512' | 'SHA-1'>> = { sha256: 'SHA-256', sha512: 'SHA-512' };

/**
 * Options of {@link RpmSource}.
 *
 * @example
 * ```ts
 * const src = new RpmSource('rpm https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os', { keyring, filelistsExt: false });
 * ```
 */
export interface RpmSourceOptions extends FetchOptions {
  /** Trusted keys for `repomd.xml.asc`. */
  keyring?: Keyring | Uint8Array | Uint8Array[];
  /** Accept a repomd.xml without a (valid) signature. Never the default. */
  allowUnsigned?: boolean;
  /**
   * Load the file-level digests of every package from filelists-ext.xml when
   * repomd.xml lists one (checked against its signed checksum). Default true;
   * false leaves file digests to {@link RpmSource.fileDigests}.
   */
  filelistsExt?: boolean;
  /** Where the date of the last accepted repomd.xml is kept (see AptSourceOptions.releaseState). */
  releaseState?: ReleaseState;
  /** How far in the future a repomd.xml may be dated, ms (default 10 000). */
  maxFutureSkewMs?: number;
  /** Clock (for the date checks), default `() => new Date()`. */
  now?: () => Date;
}

/**
 * An RPM repository source (`rpm <baseurl>`).
 *
 * @example
 * ```ts
 * const src = new RpmSource('rpm http://127.0.0.1:8080/rpm', { keyring });
 * await src.refresh();
 * src.lookupPackage('vmkit-fixture', '1.0-1');
 * ```
 */
export class RpmSource implements RepositorySource {
  readonly id: string;
  readonly baseurl: string;
  private readonly opts: RpmSourceOptions;
  private ring: Keyring | undefined;
  private index: DigestIndex | undefined;
  private date: number | undefined; // of the last repomd.xml accepted, ms
  private validators: Validators = {};
  private primarySum = '';
  private pool: { location: string[]; size: (number | undefined)[] } = { location: [], size: [] };
  private files = new Map<string, Promise<Map<string, Digest>>>();
  private extFiles = 0;

  constructor(line: string, options: RpmSourceOptions = {}) {
    const parts = line.trim().split(/\s+/);
    if (parts[0] !== 'rpm' || parts.length !== 2 || !/^https?:\/\//.test(parts[1]!)) {
      throw new VmkitError('ARG_RANGE', `RPM source must be "rpm <http(s) baseurl>", got ${JSON.stringify(line.slice(0, 80))}`);
    }
    this.baseurl = parts[1]!;
    this.id = `rpm ${this.baseurl}`;
    this.opts = options;
  }

  /** Number of digests held. */
  get size(): number {
    return this.index?.size ?? 0;
  }

  private async keyring(): Promise<Keyring | undefined> {
    if (this.ring) return this.ring;
    const k = this.opts.keyring;
    if (k && 'keys' in k && 'fingerprints' in k) this.ring = k as Keyring;
    else if (k instanceof Uint8Array) this.ring = await (await pgp()).readKeyring(k);
    else if (Array.isArray(k)) this.ring = await (await pgp()).readKeyring(...k);
    return this.ring;
  }

  private async check(body: Uint8Array, ck: { type: string; hex: string }, what: string): Promise<void> {
    const alg = ALG[ck.type];
    const sub = alg && SUBTLE[alg];
    if (!alg || !sub) throw new VmkitError('INTEGRITY', `${this.id}: ${what} checksum type ${ck.type} is not trusted (sha256 or sha512 needed)`);
    const want = new Uint8Array(digestLength(alg));
    if (ck.hex.length !== want.length * 2 || !hexInto(ck.hex, want)) throw new VmkitError('CORRUPT', `${this.id}: ${what} checksum is not hex`);
    if (!sameBytes(await sha(sub, body), want)) throw new VmkitError('INTEGRITY', `${this.id}: ${what} does not match its checksum in the signed repomd.xml`, { path: what });
  }

  /**
   * Fetches repomd.xml (conditionally), verifies its signature, then
   * primary.xml when its checksum changed, and rebuilds the index.
   * @example `await src.refresh()`
   */
  async refresh(signal?: AbortSignal): Promise<RefreshResult> {
    const ring = await this.keyring();
    if (!ring && !this.opts.allowUnsigned) {
      throw new VmkitError('INTEGRITY', `${this.id}: no keyring to verify repomd.xml with (pass keyring, or allowUnsigned)`);
    }
    const io = { ...this.opts, signal, maxBytes: Math.min(this.opts.maxBytes ?? DEFAULT_MAX_BYTES, 64 << 20) };
    const r = await httpGet(joinUrl(this.baseurl, 'repodata/repomd.xml'), { ...io, validators: this.index ? this.validators : {} });
    if (r.status === 304) return { changed: false, packages: this.index?.packages ?? 0 };
    let sig: Uint8Array | undefined;
    try {
      sig = (await httpGet(joinUrl(this.baseurl, 'repodata/repomd.xml.asc'), io)).body;
    } catch (e) {
      if (!(e instanceof VmkitError) || e.code !== 'NOT_FOUND') throw e;
    }
    if (ring && sig) {
      try {
        await (await pgp()).verifyDetached(r.body, sig, ring, `${this.id} repomd.xml.asc`);
      } catch (e) {
        if (!this.opts.allowUnsigned) throw e;
      }
    } else if (!this.opts.allowUnsigned) {
      throw new VmkitError('INTEGRITY', `${this.id}: repomd.xml is not signed (no repomd.xml.asc)`);
    }
    const data = parseRepomd(new TextDecoder().decode(r.body), `${this.id} repomd.xml`);
    const primary = data.find((d) => d.type === 'primary');
    if (!primary) throw new VmkitError('CORRUPT', `${this.id}: repomd.xml lists no primary`);
    // Its date: the newest <timestamp> of its files (createrepo_c writes them; <revision> is free-form).
    const stamps = data.map((d) => d.timestamp).filter((t): t is number => t !== undefined);
    const date = stamps.length ? Math.max(...stamps) * 1000 : undefined;
    const now = this.opts.now ? this.opts.now().getTime() : Date.now();
    _checkReleaseDate(this.id, 'repomd.xml', date, this.opts.releaseState?.get(this.id) ?? this.date, now, this.opts.maxFutureSkewMs ?? 10_000);
    const accept = async (): Promise<void> => {
      if (date === undefined) return;
      await this.opts.releaseState?.set(this.id, date);
      this.date = Math.max(date, this.date ?? -Infinity);
    };
    const v: Validators = {};
    if (r.etag) v.etag = r.etag;
    if (r.lastModified) v.lastModified = r.lastModified;
    if (this.index && primary.checksum.hex === this.primarySum) {
      await accept();
      this.validators = v;
      return { changed: false, packages: this.index.packages };
    }
    const kind = compressionOf(primary.location);
    if (!kind) throw new VmkitError('UNSUPPORTED', `${this.id}: ${primary.location}: compression not supported (gz, xz, zst)`);
    const max = this.opts.maxBytes ?? DEFAULT_MAX_BYTES;
    const body = await _getSigned(joinUrl(this.baseurl, primary.location), io, max, primary.size, `${this.id}: ${primary.location}`);
    await this.check(body, primary.checksum, primary.location);
    const ix = new DigestIndex();
    const pool: { location: string[]; size: (number | undefined)[] } = { location: [], size: [] };
    const ext = this.opts.filelistsExt === false ? undefined : data.find((d) => d.type === 'filelists-ext' || d.type === 'filelists_ext');
    // pkgid → package id, only when filelists-ext.xml will need it.
    const byPkgid = ext ? new Map<string, number>() : undefined;
    let extFiles = 0;
    try {
      const pp = primaryParser((p) => {
        const alg = ALG[p.checksum.type];
        if (!alg) throw new VmkitError('UNSUPPORTED', `${this.id}: package checksum type ${p.checksum.type}`);
        const id = ix.addPackage({ repository: this.id, package: p.name, version: p.version, architecture: p.arch }, { alg, hex: p.checksum.hex });
        byPkgid?.set(ownString(p.checksum.hex), id);
        pool.location.push(ownString(p.location));
        pool.size.push(p.size);
      }, `${this.id} ${primary.location}`);
      // Streamed: decompressed chunk by chunk into the parser, never whole in memory.
      const dec = new TextDecoder();
      for await (const chunk of decompressChunks(body, kind, max, primary.location)) pp.write(dec.decode(chunk, { stream: true }));
      pp.write(dec.decode());
      pp.close();
      if (ext && byPkgid) extFiles = await this.loadFilelistsExt(ext, ix, byPkgid, io, max);
      await accept();
    } catch (e) {
      ix.close();
      throw e;
    }
    this.index?.close();
    this.index = ix;
    this.pool = pool;
    this.files.clear();
    this.validators = v;
    this.primarySum = primary.checksum.hex;
    this.extFiles = extFiles;
    return { changed: true, packages: ix.packages };
  }

  /** File digests read from filelists-ext.xml at the last refresh (0 when the repository has none). */
  get filelistsExtFiles(): number {
    return this.extFiles;
  }

  // Fetches filelists-ext.xml, checks it against repomd.xml and adds each file digest to its package.
  private async loadFilelistsExt(ext: RepomdData, ix: DigestIndex, byPkgid: Map<string, number>, io: FetchOptions, max: number): Promise<number> {
    const kind = compressionOf(ext.location);
    if (!kind) throw new VmkitError('UNSUPPORTED', `${this.id}: ${ext.location}: compression not supported (gz, xz, zst)`);
    const body = await _getSigned(joinUrl(this.baseurl, ext.location), io, max, ext.size, `${this.id}: ${ext.location}`);
    await this.check(body, ext.checksum, ext.location);
    const fp = filelistsExtParser((f) => {
      const id = byPkgid.get(f.pkgid);
      if (id === undefined) throw new VmkitError('CORRUPT', `${this.id}: ${ext.location} names a package ${f.pkgid.slice(0, 16)}… that primary.xml does not list`);
      const alg = ALG[f.alg];
      if (!alg || f.hex.length !== digestLength(alg) * 2) throw new VmkitError('UNSUPPORTED', `${this.id}: ${ext.location}: file digest type ${JSON.stringify(f.alg)} for ${f.path}`);
      ix.addFile(id, f.path, { alg, hex: f.hex });
    }, `${this.id} ${ext.location}`);
    const dec = new TextDecoder();
    for await (const chunk of decompressChunks(body, kind, max, ext.location)) fp.write(dec.decode(chunk, { stream: true }));
    fp.write(dec.decode());
    return fp.close();
  }

  /**
   * File-level reference values of one package: fetches its `.rpm`, checks it
   * against the checksum in the signed primary.xml, reads the file digests
   * from its header and adds them to the index. Cached per package.
   * @example `const files = await src.fileDigests(src.lookupPackage('bash')[0]);`
   */
  fileDigests(entry: PackageEntry, signal?: AbortSignal): Promise<Map<string, Digest> | undefined> {
    const ix = this.index;
    if (!ix) return Promise.reject(new VmkitError('INVALID_STATE', `${this.id}: not refreshed (call refresh() first)`));
    const p = entry.provenance;
    const id = ix.packageIds(p.package).find((i) => {
      const e = ix.packageEntry(i).provenance;
      return e.version === p.version && e.architecture === p.architecture;
    });
    if (id === undefined) return Promise.reject(new VmkitError('NOT_FOUND', `${this.id}: no package ${p.package} ${p.version} ${p.architecture ?? ''}`));
    const key = `${id}`;
    let job = this.files.get(key);
    if (!job) {
      job = this.loadFiles(ix, id, signal);
      this.files.set(key, job);
      job.catch(() => this.files.delete(key));
    }
    return job;
  }

  private async loadFiles(ix: DigestIndex, id: number, signal: AbortSignal | undefined): Promise<Map<string, Digest>> {
    const location = this.pool.location[id]!;
    const size = this.pool.size[id];
    const url = joinUrl(this.baseurl, location);
    const max = this.opts.maxBytes ?? DEFAULT_MAX_BYTES;
    const body = await _getSigned(url, { ...this.opts, signal }, max, size, `${this.id}: ${location}`);
    if (size !== undefined && body.length !== size) throw new VmkitError('INTEGRITY', `${this.id}: ${location} is not the size primary.xml gives`, { path: url });
    const d = ix.packageEntry(id).digests[0]!;
    await this.check(body, { type: d.alg, hex: d.hex }, location);
    // The header's own digest, as rpm checks it before trusting the header's file digests.
    const hd = _rpmHeaderDigest(body);
    const got = await sha(hd.alg === 'sha256' ? 'SHA-256' : 'SHA-1', body.subarray(hd.start, hd.end));
    const want = new Uint8Array(got.length);
    if (!hexInto(hd.hex, want) || !sameBytes(got, want)) throw new VmkitError('INTEGRITY', `${this.id}: ${location}: the header does not match its ${hd.alg} digest in the signature header`, { path: url });
    const files = rpmFileDigests(body);
    // With filelists-ext.xml loaded the index has these already (adding them again would duplicate).
    if (this.index === ix && this.extFiles === 0) for (const [path, fd] of files) ix.addFile(id, path, fd);
    return files;
  }

  /** Every entry with this digest. @example `src.lookupDigest('sha256', d)` */
  lookupDigest(alg: DigestAlgorithm, digest: Uint8Array): Provenance[] {
    return _lookupDigest(this.index, alg, digest);
  }

  /** A request's digests in one call (see DigestIndex.lookupMany). @example `src.lookupMany('sha256', hexes)` */
  lookupMany(alg: DigestAlgorithm, digests: readonly string[] | Uint8Array): (Provenance[] | undefined)[] {
    return _lookupMany(this.index, alg, digests);
  }

  /** Package versions named `name` (version as `epoch:ver-rel`, epoch only when not 0). @example `src.lookupPackage('bash')` */
  lookupPackage(name: string, version?: string): PackageEntry[] {
    return _lookupPackage(this.index, name, version);
  }

  /** Frees the index. @example `src.close()` */
  close(): void {
    this.index?.close();
    this.index = undefined;
  }
}
