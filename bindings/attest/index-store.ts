/**
 * The digest index: reference digests with provenance, compact enough for
 * millions of entries. Digests live in the wasm core (assembly/digest_index.ts:
 * an open-addressing table of 32-byte keys → u32 entry ids); provenance lives
 * here in typed side tables (package id, path id, algorithm, next entry with
 * the same key); paths, architectures and repository ids are kept once.
 *
 * ```
 *   core memory                              side tables (TypeScript)
 *   slots cap  × u32 ─► dense index
 *   keys  n × 32 B  (dense)
 *   vals  n × u32   ─► entry id e ──────►   entry e: pkg[e]  path[e]  alg[e]  next[e] ─► older entry, same key
 *                                           package p: name, version, arch, artifact digest (packed 32 B)
 * ```
 *
 * Digests go to the core raw (or as hex text) with an algorithm tag; the core
 * alone turns them into its 32-byte keys (`keyOf` in assembly/digest_index.ts).
 * Lookups check the algorithm and, for digests longer than 32 bytes, the
 * stored tail, so keys never confuse algorithms.
 * @module
 */
import { core, coreFailure, withCore, type Core } from '../core.js';
import { check } from '../_status.js';
import { VmkitError } from '../errors.js';
import { abytes } from '../_utils.js';
import type { CoreExports } from '../_abi.js';
import type { Digest, DigestAlgorithm, PackageEntry, Provenance, ReferenceIndex } from './types.js';
import { HEX, hexInto, toHex } from '../_hex.js';

export { hexInto, toHex };

const ALGS: readonly DigestAlgorithm[] = ['sha256', 'md5', 'sha1', 'sha384', 'sha512', 'sm3'];
const LEN: Record<DigestAlgorithm, number> = { md5: 16, sha1: 20, sha256: 32, sha384: 48, sha512: 64, sm3: 32 };
const TAG: Record<DigestAlgorithm, number> = { sha256: 0, md5: 1, sha1: 2, sha384: 3, sha512: 4, sm3: 5 };
const BATCH = 4096;
const _ascii = new TextEncoder();
type _NodeBuf = { write(s: string, off: number, len: number, enc: 'latin1'): number };
const _NodeBufferFrom = (globalThis as unknown as { Buffer?: { from(b: ArrayBufferLike): _NodeBuf; byteLength(s: string, enc: 'utf8'): number } }).Buffer;
let _bufOf: ArrayBufferLike | undefined;
let _buf: _NodeBuf | undefined;
/**
 * Writes the ASCII `text` (n characters) into `u8` at `at`; false when it is
 * not all ASCII (nothing useful written then). Node: a one-byte copy after a
 * UTF-8 length check (a latin1 write alone would turn a character above 0xff
 * into its low byte, possibly a hex digit); elsewhere TextEncoder.encodeInto.
 */
function _writeAscii(text: string, u8: Uint8Array, at: number, n: number): boolean {
  if (text.length !== n) return false;
  if (_NodeBufferFrom) {
    if (_NodeBufferFrom.byteLength(text, 'utf8') !== n) return false;
    if (_bufOf !== u8.buffer) {
      _buf = _NodeBufferFrom.from(u8.buffer);
      _bufOf = u8.buffer;
    }
    return _buf!.write(text, at, n, 'latin1') === n;
  }
  const w = _ascii.encodeInto(text, u8.subarray(at, at + n));
  return w.written === n && w.read === n;
}
// Stands in for a hex string of the wrong length or not ASCII (so positions stay fixed): not hex.
const _NOT_HEX = 'g'.repeat(128);

/** Byte length of a digest under `alg`. @example `digestLength('sha256') // 32` */
export function digestLength(alg: DigestAlgorithm): number {
  const n = LEN[alg];
  if (n === undefined) throw new VmkitError('ARG_RANGE', `alg must be one of ${ALGS.join(', ')}, got ${String(alg)}`);
  return n;
}


/**
 * Options of {@link DigestIndex}.
 *
 * @example
 * ```ts
 * const ix = new DigestIndex({ expected: 2_000_000 }); // no table growth while loading
 * ```
 */
export interface DigestIndexOptions {
  /** Expected number of digests (sizes the core table once instead of growing it); at most 2^25 - 128 (LIMIT past it). */
  expected?: number;
}

/**
 * What an index holds in memory, in bytes.
 *
 * @example
 * ```ts
 * const { core, side }: DigestIndexMemory = ix.memory();
 * console.log(`${(core + side) >> 20} MiB`);
 * ```
 */
export interface DigestIndexMemory {
  /** The core's hash table (keys and entry ids). */
  core: number;
  /** Typed side tables (approximate: string payloads of names, versions and paths not counted). */
  side: number;
}

const registry = new FinalizationRegistry<{ h: number; gen: number }>((t) => {
  try {
    const c = core();
    if (c.generation === t.gen) c.exports.dixFree(t.h);
  } catch {
    /* the core is gone: nothing to free */
  }
});

function growI32(a: Int32Array<ArrayBuffer>, n: number): Int32Array<ArrayBuffer> {
  if (n <= a.length) return a;
  const b = new Int32Array(Math.max(n, a.length * 2));
  b.set(a);
  return b;
}
function growU8(a: Uint8Array<ArrayBuffer>, n: number): Uint8Array<ArrayBuffer> {
  if (n <= a.length) return a;
  const b = new Uint8Array(Math.max(n, a.length * 2));
  b.set(a);
  return b;
}


// Digests an index may be sized for up front: 32 bytes each in one core block under 1 GiB.
const MAX_EXPECTED = 2 ** 25 - 128;
/**
 * Digests with provenance: a {@link ReferenceIndex} backed by the wasm core.
 * Add packages (with their artifact digest) and file digests, then look up.
 * Call {@link DigestIndex.close} when done (a finalizer frees it otherwise).
 *
 * @example
 * ```ts
 * import { init } from 'vmkit';
 * import { DigestIndex } from 'vmkit/attest';
 * await init();
 * const ix = new DigestIndex();
 * const p = ix.addPackage({ repository: 'deb http://deb.debian.org/debian bookworm main', package: 'hello', version: '2.10-3', architecture: 'amd64' },
 *   { alg: 'sha256', hex: 'aa'.repeat(32) });
 * ix.addFile(p, '/usr/bin/hello', { alg: 'sha256', hex: 'bb'.repeat(32) });
 * ix.lookupDigest('sha256', new Uint8Array(32).fill(0xbb)); // [{ package: 'hello', path: '/usr/bin/hello', … }]
 * ix.close();
 * ```
 */
export class DigestIndex implements ReferenceIndex {
  private h: number;
  private readonly gen: number;
  private readonly token: object = {};
  private closed = false;
  // Package table.
  private pkgName: string[] = [];
  private pkgVersion: string[] = [];
  private pkgArch: (string | undefined)[] = [];
  private pkgRepo: string[] = [];
  private pkgAlg = new Uint8Array(1024);
  private pkgKey = new Uint8Array(1024 * 32);
  private pkgExtra = new Map<number, Digest[]>();
  // Package ids by name, built on the first lookup by name (indexing a Packages file makes no
  // Map entry per package): ids below byNameUpTo are in it.
  private byName = new Map<string, number | number[]>();
  private byNameUpTo = 0;
  // Provenance of packages that lookups have found (frozen, shared; undefined for the others).
  // Each as a frozen one-element list: what lookupMany returns for a digest only that package has.
  private pkgProv: (readonly Provenance[] | undefined)[] = [];
  // Per entry found by lookupMany under sha256 whose answer is its package's shared list (the
  // entry is a package's own digest and the only one with its key): that list, so the next hit
  // of the entry reads one slot instead of five tables. Filled as lookups find entries.
  private eHit: (readonly Provenance[] | undefined)[] = [];
  // Entry table.
  private nEntries = 0;
  private ePkg = new Int32Array(1024);
  private ePath = new Int32Array(1024);
  private eAlg = new Uint8Array(1024);
  private eNext = new Int32Array(1024);
  private eTail = new Map<number, Uint8Array>();
  private paths: string[] = [];
  private pathIds = new Map<string, number>();
  // Architectures and repository ids repeat on every package: kept once.
  private intern = new Map<string, string>();
  // Pending inserts (flushed in batches to the core): raw digests back to back, per digest
  // its length and tag (the core keys them), its entry id.
  private pendBytes = new Uint8Array(BATCH * 64);
  private pendAt = 0;
  private pendMeta = new Uint32Array(BATCH);
  private pendIds = new Uint32Array(BATCH);
  private nPend = 0;
  private scratch = 0;
  // Core memory for request batches (text, decoded digests, results), kept between calls.
  private batchP = 0;
  private batchCap = 0;
  private u32: Uint32Array<ArrayBufferLike> = new Uint32Array(0);
  private view: Uint8Array = new Uint8Array(0);
  private hexBuf = new Uint8Array(64);
  // The repository and architecture of the last package added (the same on most).
  private lastRepo: string | undefined;
  private lastArch: string | undefined;

  constructor(options: DigestIndexOptions = {}) {
    const expected = options.expected ?? 0;
    if (!Number.isSafeInteger(expected) || expected < 0) {
      throw new VmkitError('ARG_RANGE', `options.expected must be a non-negative integer, got ${expected}`);
    }
    // The core keeps the digests in one array of 32 bytes each, and one core
    // block is at most 1 GiB: more (2^26 was allowed once) trapped the core.
    if (expected > MAX_EXPECTED) {
      throw new VmkitError('LIMIT', `options.expected ${expected} is over the most digests one index is sized for, ${MAX_EXPECTED}`);
    }
    const seed = new Uint32Array(2);
    globalThis.crypto.getRandomValues(seed);
    const c = core();
    this.gen = c.generation;
    this.h = check(this.ex(c).dixCreate(expected, seed[0]! | 0, seed[1]! | 0), 'digest index create');
    registry.register(this, { h: this.h, gen: this.gen }, this.token);
  }

  private ex(c: Core): CoreExports {
    return c.exports;
  }

  private live(): Core {
    const c = core();
    if (this.closed) throw new VmkitError('INVALID_STATE', 'digest index is closed');
    if (c.generation !== this.gen) throw new VmkitError('STALE_HANDLE', 'digest index belongs to a core that was reset');
    return c;
  }

  private str(s: string | undefined): string | undefined {
    if (s === undefined) return undefined;
    let v = this.intern.get(s);
    if (v === undefined) {
      v = ownString(s);
      // Keyed by the own copy: a key sliced from a Packages text would pin all of it.
      this.intern.set(v, v);
    }
    return v;
  }

  /** Number of digests held (artifact and file level). */
  get size(): number {
    return this.nEntries;
  }

  /** Number of packages held. */
  get packages(): number {
    return this.pkgName.length;
  }

  /**
   * Adds a package version with its artifact digest (`.deb`, `.rpm`, npm
   * tarball) and returns its package id (for {@link DigestIndex.addFile}).
   * Further digests of the same artifact (other algorithms) may follow in `more`.
   *
   * @example
   * ```ts
   * const id = ix.addPackage({ repository: 'npm https://registry.npmjs.org', package: 'left-pad', version: '1.3.0' },
   *   { alg: 'sha512', hex: '…' });
   * ```
   */
  addPackage(p: Omit<Provenance, 'path'>, digest: Digest, ...more: Digest[]): number {
    const c = this.live();
    void c;
    if (typeof p.package !== 'string' || typeof p.version !== 'string' || typeof p.repository !== 'string') {
      throw new VmkitError('ARG_TYPE', 'provenance needs string repository, package and version');
    }
    const id = this.pkgName.length;
    const len = digestLength(digest.alg);
    const bytes = new Uint8Array(len);
    if (digest.hex.length !== len * 2 || !hexInto(digest.hex, bytes)) {
      throw new VmkitError('CORRUPT', `${p.package} ${p.version}: ${digest.alg} digest is not ${len * 2} hex digits`);
    }
    const name = ownString(p.package);
    this.pkgName.push(name);
    this.pkgProv.push(undefined);
    this.pkgVersion.push(ownString(p.version));
    this.pkgArch.push(this.str(p.architecture));
    this.pkgRepo.push(this.str(p.repository)!);
    this.pkgAlg = growU8(this.pkgAlg, id + 1);
    this.pkgKey = growU8(this.pkgKey, (id + 1) * 32);
    this.pkgAlg[id] = TAG[digest.alg];
    this.pkgKey.set(bytes.subarray(0, 32), id * 32);
    if (len > 32 || more.length > 0) {
      this.pkgExtra.set(id, [{ alg: digest.alg, hex: digest.hex.toLowerCase() }, ...more.map((d) => ({ alg: d.alg, hex: d.hex.toLowerCase() }))]);
    }
    this.addEntry(id, -1, digest.alg, bytes);
    for (const d of more) {
      const b = new Uint8Array(digestLength(d.alg));
      if (d.hex.length !== b.length * 2 || !hexInto(d.hex, b)) {
        throw new VmkitError('CORRUPT', `${p.package} ${p.version}: ${d.alg} digest is not ${b.length * 2} hex digits`);
      }
      this.addEntry(id, -1, d.alg, b);
    }
    return id;
  }

  /**
   * Adds a package whose artifact SHA-256 is given as 64 hex digits at
   * `start` in `hex`, a string or ASCII bytes (the hot path of Packages/primary
   * parsing: no substring, no Digest object). Returns the package id.
   * `owned`: `name` and `version` are strings of their own (decoded from
   * bytes), not views into a larger text, so they are kept without a copy.
   * @example `ix.addPackageSha256('deb …', 'hello', '2.10-3', 'amd64', line, 8)`
   */
  addPackageSha256(repository: string, name: string, version: string, arch: string | undefined, hex: string | Uint8Array, start: number, owned: boolean = false): number {
    if (this.closed) this.live();
    const id = this.pkgName.length;
    this.pkgKey = growU8(this.pkgKey, (id + 1) * 32);
    if (!hexSliceInto(hex, start, this.pkgKey, id * 32)) {
      throw new VmkitError('CORRUPT', `${name} ${version}: SHA256 is not 64 hex digits`);
    }
    if (!owned) {
      name = ownString(name);
      version = ownString(version);
    }
    this.pkgName.push(name);
    this.pkgProv.push(undefined);
    this.pkgVersion.push(version);
    this.pkgArch.push(this.str(arch));
    this.pkgRepo.push(this.str(repository)!);
    this.pkgAlg = growU8(this.pkgAlg, id + 1);
    this.pkgAlg[id] = 0;
    this.addEntry(id, -1, 'sha256', this.pkgKey.subarray(id * 32, id * 32 + 32));
    return id;
  }

  /**
   * {@link DigestIndex.addPackageSha256} for a SHA-256 already decoded: the
   * 32 bytes at `at` in `digest` (the core's Packages scanner gives them so).
   * `name` and `version` are kept as they are (strings of their own).
   * @example `ix.addPackageSha256Raw('deb …', 'hello', '2.10-3', 'amd64', sha256Bytes, 0)`
   */
  addPackageSha256Raw(repository: string, name: string, version: string, arch: string | undefined, digest: Uint8Array, at: number): number {
    if (this.closed) this.live();
    if (!(at >= 0 && at + 32 <= digest.length)) throw new VmkitError('ARG_RANGE', `at must leave 32 bytes of digest, got ${at} of ${digest.length}`);
    const id = this.pkgName.length;
    this.pkgKey = growU8(this.pkgKey, (id + 1) * 32);
    this.pkgName.push(name);
    this.pkgProv.push(undefined);
    this.pkgVersion.push(version);
    this.pkgArch.push(arch === this.lastArch ? this.lastArch : this.str(arch));
    this.pkgRepo.push(repository === this.lastRepo ? this.lastRepo : (this.lastRepo = this.str(repository)!));
    this.lastArch = this.pkgArch[id];
    this.pkgAlg = growU8(this.pkgAlg, id + 1);
    this.pkgAlg[id] = 0;
    // The entry, as addEntry makes it, with the 32 bytes copied by a loop into the package
    // table and the pending batch (no view made per package).
    const e = this.nEntries++;
    if (e >= this.ePkg.length) this.growEntries(e + 1);
    this.ePkg[e] = id;
    this.ePath[e] = -1;
    this.eAlg[e] = 0;
    this.eNext[e] = -1;
    const key = this.pkgKey;
    const pend = this.pendBytes;
    const k0 = id * 32;
    const p0 = this.pendAt;
    for (let i = 0; i < 32; i++) {
      const b = digest[at + i]!;
      key[k0 + i] = b;
      pend[p0 + i] = b;
    }
    this.pendAt = p0 + 32;
    this.pendMeta[this.nPend] = 32;
    this.pendIds[this.nPend++] = e;
    if (this.nPend === BATCH) this.flush();
    return id;
  }

  // Adds the packages added since the last lookup by name to byName.
  private names(): Map<string, number | number[]> {
    const n = this.pkgName.length;
    for (let id = this.byNameUpTo; id < n; id++) {
      const name = this.pkgName[id]!;
      const prev = this.byName.get(name);
      if (prev === undefined) this.byName.set(name, id);
      else if (typeof prev === 'number') this.byName.set(name, [prev, id]);
      else prev.push(id);
    }
    this.byNameUpTo = n;
    return this.byName;
  }

  /**
   * Adds a file-level digest (`path` as installed, absolute) of package `pkg`.
   * @example `ix.addFile(id, '/usr/bin/hello', { alg: 'sha256', hex })`
   */
  addFile(pkg: number, path: string, digest: Digest): void {
    if (!Number.isInteger(pkg) || pkg < 0 || pkg >= this.pkgName.length) {
      throw new VmkitError('ARG_RANGE', `pkg must be a package id in [0, ${this.pkgName.length}), got ${pkg}`);
    }
    const len = digestLength(digest.alg);
    const b = new Uint8Array(len);
    if (digest.hex.length !== len * 2 || !hexInto(digest.hex, b)) {
      throw new VmkitError('CORRUPT', `${path}: ${digest.alg} digest is not ${len * 2} hex digits`);
    }
    let pid = this.pathIds.get(path);
    if (pid === undefined) {
      pid = this.paths.length;
      const own = ownString(path);
      this.paths.push(own);
      this.pathIds.set(own, pid);
    }
    this.addEntry(pkg, pid, digest.alg, b);
  }

  private addEntry(pkg: number, path: number, alg: DigestAlgorithm, bytes: Uint8Array): void {
    const e = this.nEntries++;
    if (e >= this.ePkg.length) this.growEntries(e + 1);
    this.ePkg[e] = pkg;
    this.ePath[e] = path;
    this.eAlg[e] = TAG[alg];
    this.eNext[e] = -1;
    if (bytes.length > 32) this.eTail.set(e, bytes.slice(32));
    this.pendBytes.set(bytes, this.pendAt);
    this.pendAt += bytes.length;
    this.pendMeta[this.nPend] = bytes.length | (TAG[alg] << 8);
    this.pendIds[this.nPend++] = e;
    if (this.nPend === BATCH) this.flush();
  }

  private growEntries(n: number): void {
    this.ePkg = growI32(this.ePkg, n);
    this.ePath = growI32(this.ePath, n);
    this.eNext = growI32(this.eNext, n);
    this.eAlg = growU8(this.eAlg, this.ePkg.length);
  }

  /** Moves pending inserts into the core (lookups do this themselves). */
  private flush(): void {
    const n = this.nPend;
    if (n === 0) return;
    const c = this.live();
    const ex = this.ex(c);
    const at = (this.pendAt + 3) & ~3;
    withCore(() => {
      const p = c.alloc(at + n * 12);
      try {
        const u8 = c.u8();
        u8.set(this.pendBytes.subarray(0, this.pendAt), p);
        new Uint32Array(u8.buffer, p + at, n).set(this.pendMeta.subarray(0, n));
        new Uint32Array(u8.buffer, p + at + n * 4, n).set(this.pendIds.subarray(0, n));
        check(ex.dixInsertDigests(this.h, p, p + at, p + at + n * 4, n, p + at + n * 8), 'digest index insert');
        const prev = new Uint32Array(c.u8().buffer, p + at + n * 8, n);
        for (let i = 0; i < n; i++) {
          const pv = prev[i]!;
          if (pv !== 0) this.eNext[this.pendIds[i]!] = pv - 1;
        }
      } finally {
        c.free(p);
      }
    });
    this.nPend = 0;
    this.pendAt = 0;
  }

  // First entry id for the key of (alg, digest), or -1.
  private firstEntry(alg: DigestAlgorithm, digest: Uint8Array, len: number = digest.length): number {
    if (this.nPend) this.flush();
    const c = this.live();
    if (this.scratch === 0) this.scratch = c.alloc(64);
    const u8 = this.coreView(c);
    u8.set(digest, this.scratch);
    const r = this.ex(c).dixGetDigest(this.h, this.scratch, len, TAG[alg]);
    if (r < 0) check(r, 'digest index lookup');
    return r - 1;
  }

  // A view of core memory, re-made only when the memory grew (growth detaches the old buffer,
  // leaving a view of length 0): cheaper than asking the Memory for its buffer per lookup.
  private coreView(c: Core): Uint8Array {
    if (this.view.byteLength === 0) this.view = c.u8();
    return this.view;
  }

  // First entry id for `hex` (2 × len hex digits under alg), or -1 when absent, -2 when not
  // hex of that length. Decoded by a table into a small JS array, then copied into the core
  // in one call: writing byte by byte into the view of core memory measured several times
  // slower, and so did copying the text for the core to decode (two native calls).
  private firstEntryHex(alg: DigestAlgorithm, len: number, hex: string): number {
    if (hex.length !== len * 2) return -2;
    const b = this.hexBuf;
    for (let i = 0; i < len; i++) {
      const a = hex.charCodeAt(2 * i);
      const c = hex.charCodeAt(2 * i + 1);
      const hi = a < 128 ? HEX[a]! : -1;
      const lo = c < 128 ? HEX[c]! : -1;
      if ((hi | lo) < 0) return -2;
      b[i] = (hi << 4) | lo;
    }
    return this.firstEntry(alg, b, len);
  }

  /**
   * {@link DigestIndex.lookupDigest} for a digest given as hex (either case),
   * decoded into a reused scratch: no byte array made per call. Empty when
   * none, also when `hex` is not `2 × digestLength(alg)` hex digits. For many
   * digests, {@link DigestIndex.lookupMany} is several times faster (the hex is
   * decoded in the core).
   * @example `ix.lookupHex('sha256', 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855')`
   */
  lookupHex(alg: DigestAlgorithm, hex: string): Provenance[] {
    const len = digestLength(alg);
    const out: Provenance[] = [];
    if (typeof hex !== 'string') return out;
    const e0 = this.firstEntryHex(alg, len, hex);
    if (e0 < 0) return out;
    const tag = TAG[alg];
    let tail: Uint8Array | undefined;
    if (len > 32) {
      tail = new Uint8Array(len);
      if (!hexInto(hex, tail)) return out;
    }
    for (let e = e0; e >= 0; e = this.eNext[e]!) {
      if (tail ? this.entryMatches(e, tag, tail) : this.eAlg[e] === tag) out.push(this.hitProvenance(e));
    }
    return out;
  }

  private entryMatches(e: number, tag: number, digest: Uint8Array): boolean {
    if (this.eAlg[e] !== tag) return false;
    if (digest.length <= 32) return true;
    const t = this.eTail.get(e);
    if (!t || t.length !== digest.length - 32) return false;
    for (let i = 0; i < t.length; i++) if (t[i] !== digest[32 + i]) return false;
    return true;
  }

  /**
   * True when some entry has `digest` under `alg` (no provenance objects made).
   * @example `ix.has('sha256', bytes)`
   */
  has(alg: DigestAlgorithm, digest: Uint8Array): boolean {
    abytes(digest, 'digest');
    if (digest.length !== digestLength(alg)) return false;
    const tag = TAG[alg];
    for (let e = this.firstEntry(alg, digest); e >= 0; e = this.eNext[e]!) {
      if (this.entryMatches(e, tag, digest)) return true;
    }
    return false;
  }

  /**
   * Looks up many digests of one algorithm in one call into the core per
   * 4096 (a request's file list, an IMA log): `digests` holds them back to
   * back, `digestLength(alg)` bytes each. Sets `out[i]` to 1 when digest `i`
   * is present, else 0, and returns how many are present. `out` defaults
   * to a new array of one byte per digest; a shorter one throws OUTPUT_TOO_SMALL.
   *
   * @example
   * ```ts
   * const packed = new Uint8Array(32 * 2); // two SHA-256 digests
   * const found = ix.hasMany('sha256', packed); // 0, 1 or 2
   * ```
   */
  hasMany(alg: DigestAlgorithm, digests: Uint8Array, out?: Uint8Array): number {
    abytes(digests, 'digests');
    const len = digestLength(alg);
    if (digests.length % len !== 0) throw new VmkitError('ARG_RANGE', `digests must be a whole number of ${len}-byte ${alg} digests, got ${digests.length} bytes`);
    const n = digests.length / len;
    if (out === undefined) out = new Uint8Array(n);
    else abytes(out, 'out');
    if (out.length < n) throw new VmkitError('OUTPUT_TOO_SMALL', `out needs ${n} bytes, got ${out.length}`);
    if (this.nPend) this.flush();
    const c = this.live();
    const ex = this.ex(c);
    const tag = TAG[alg];
    const B = Math.min(n, BATCH);
    let found = 0;
    const resAt = (B * len + 15) & ~15;
    withCore(() => {
      const p = c.alloc(resAt + B * 4);
      try {
        for (let o = 0; o < n; o += B) {
          const k = Math.min(B, n - o);
          c.u8().set(digests.subarray(o * len, (o + k) * len), p);
          const r = ex.dixGetPacked(this.h, p, k, len, tag, p + resAt);
          if (r < 0) check(r, 'digest index lookup');
          const res = new Uint32Array(c.u8().buffer, p + resAt, k);
          for (let i = 0; i < k; i++) {
            let hit = 0;
            const d = len > 32 ? digests.subarray((o + i) * len, (o + i + 1) * len) : digests;
            for (let e = res[i]! - 1; e >= 0; e = this.eNext[e]!) {
              if (len > 32 ? this.entryMatches(e, tag, d) : this.eAlg[e] === tag) {
                hit = 1;
                break;
              }
            }
            out[o + i] = hit;
            found += hit;
          }
        }
      } finally {
        c.free(p);
      }
    });
    return found;
  }

  /**
   * Looks up a whole request's digests of one algorithm at once, as they
   * arrive: hex strings (either case), or raw digests back to back in one
   * array. Hex is written into the core as one text and decoded there, and
   * one core call looks up every digest, so no object is made per digest;
   * provenance is built only for the hits. Returns per digest what
   * {@link DigestIndex.lookupDigest} returns, except that a digest with no
   * entry (also a string that is not `2 × digestLength(alg)` hex digits) gives
   * `undefined` instead of an empty array. The lists and objects returned are
   * read-only (frozen, shared between lookups where they are the same).
   *
   * @example
   * ```ts
   * const found = ix.lookupMany('sha256', request.digests.map((d) => d.hex));
   * found.forEach((p, i) => console.log(request.digests[i].hex, p ? p[0].package : 'unknown'));
   * ```
   */
  lookupMany(alg: DigestAlgorithm, digests: readonly string[] | Uint8Array): (Provenance[] | undefined)[] {
    const len = digestLength(alg);
    if (digests instanceof Uint8Array) {
      if (digests.length % len !== 0) throw new VmkitError('ARG_RANGE', `digests must be a whole number of ${len}-byte ${alg} digests, got ${digests.length} bytes`);
      return this.lookupBytes(alg, len, digests, false);
    }
    if (!Array.isArray(digests)) throw new VmkitError('ARG_TYPE', 'digests must be an array of hex strings or a Uint8Array');
    const n = digests.length;
    const out: (Provenance[] | undefined)[] = new Array(n).fill(undefined);
    if (n === 0) return out;
    if (this.nPend) this.flush();
    const c = this.live();
    const ex = this.ex(c);
    const tag = TAG[alg];
    const W = 2 * len; // input bytes per digest
    const B = Math.min(n, BATCH);
    // Layout: input (B × W), decoded digests (B × len), results (B × u32).
    const decAt = (B * W + 15) & ~15;
    const resAt = (decAt + B * len + 15) & ~15;
    withCore(() => {
      const p = this.batchBuffer(c, resAt + B * 4);
      // Nothing below allocates in the core, so this view of its memory stays valid.
      const u8 = c.u8();
      for (let o = 0; o < n; o += B) {
        const k = Math.min(B, n - o);
        const text = this.hexText(digests, o, k, W);
        if (!_writeAscii(text, u8, p, k * W)) {
          // A character outside ASCII took more than one byte: spell those strings as not hex.
          const safe = digests.slice(o, o + k).map((s) => (/^[\x00-\x7f]*$/.test(s) ? s : _NOT_HEX));
          _writeAscii(this.hexText(safe, 0, k, W), u8, p, k * W);
        }
        const r = ex.dixGetHex(this.h, p, k, len, tag, p + decAt, p + resAt);
        if (r < 0) check(r, 'digest index lookup');
        if (r !== 0) this.results(u8, tag, len, p + resAt, k, out, o, p + decAt);
      }
    });
    return out;
  }

  /**
   * {@link DigestIndex.lookupMany} for digests given as hex text in bytes:
   * `n × 2·digestLength(alg)` ASCII hex digits back to back (either case), as a
   * request body or a file of digests holds them. The text goes into the core
   * as it is and is decoded there: no string is made per digest. A digest
   * whose text is not hex gives `undefined`.
   *
   * @example
   * ```ts
   * const text = new TextEncoder().encode(hexA + hexB); // two SHA-256 digests, 128 characters
   * const [a, b] = ix.lookupManyHexText('sha256', text);
   * ```
   */
  lookupManyHexText(alg: DigestAlgorithm, text: Uint8Array): (Provenance[] | undefined)[] {
    const len = digestLength(alg);
    abytes(text, 'text');
    if (text.length % (2 * len) !== 0) throw new VmkitError('ARG_RANGE', `text must be a whole number of ${2 * len}-character ${alg} digests, got ${text.length} bytes`);
    return this.lookupBytes(alg, len, text, true);
  }

  // lookupMany of raw digests (len bytes each) or of hex text (2 × len each), in batches of BATCH.
  private lookupBytes(alg: DigestAlgorithm, len: number, digests: Uint8Array, hex: boolean): (Provenance[] | undefined)[] {
    const W = hex ? 2 * len : len;
    const n = digests.length / W;
    const out: (Provenance[] | undefined)[] = new Array(n).fill(undefined);
    if (n === 0) return out;
    if (this.nPend) this.flush();
    const c = this.live();
    const ex = this.ex(c);
    const tag = TAG[alg];
    const B = Math.min(n, BATCH);
    const decAt = (B * W + 15) & ~15;
    const resAt = hex ? (decAt + B * len + 15) & ~15 : decAt;
    try {
      const p = this.batchBuffer(c, resAt + B * 4);
      const u8 = c.u8();
      for (let o = 0; o < n; o += B) {
        const k = Math.min(B, n - o);
        u8.set(k === n ? digests : digests.subarray(o * W, (o + k) * W), p);
        const r = hex ? ex.dixGetHex(this.h, p, k, len, tag, p + decAt, p + resAt) : ex.dixGetPacked(this.h, p, k, len, tag, p + resAt);
        if (r < 0) check(r, 'digest index lookup');
        if (r !== 0) this.results(u8, tag, len, p + resAt, k, out, o, hex ? p + decAt : p);
      }
    } catch (e) {
      throw coreFailure(e);
    }
    return out;
  }

  // The answers of one batch: k results (value + 1, 0 absent, 0xffffffff not hex) at res in
  // core memory, into out from o; the batch's decoded digests (k × len) are at dec.
  private results(u8: Uint8Array, tag: number, len: number, res: number, k: number, out: (Provenance[] | undefined)[], o: number, dec: number): void {
    if (this.u32.buffer !== u8.buffer) this.u32 = new Uint32Array(u8.buffer);
    const u32 = this.u32;
    const eHit = this.eHit;
    const r0 = res >>> 2; // 16-byte aligned
    for (let i = 0; i < k; i++) {
      const v = u32[r0 + i]!;
      if (v === 0 || v === 0xffffffff) continue;
      const e0 = v - 1;
      if (tag === 0) {
        const l = eHit[e0];
        if (l !== undefined) {
          out[o + i] = l as Provenance[];
          continue;
        }
      }
      // Longer digests: the tail beyond the key is compared on the host (as lookupDigest does).
      const d = len <= 32 ? undefined : u8.slice(dec + i * len, dec + (i + 1) * len);
      if (!d && this.eNext[e0]! < 0 && this.ePath[e0]! < 0) {
        // The common hit: one entry, a package's own digest — its shared list, nothing made.
        if (this.eAlg[e0] === tag) {
          const l = this.pkgList(this.ePkg[e0]!);
          out[o + i] = l as Provenance[];
          if (tag === 0) {
            while (eHit.length <= e0) eHit.push(undefined);
            eHit[e0] = l;
          }
        }
        continue;
      }
      let list: Provenance[] | undefined;
      for (let e = e0; e >= 0; e = this.eNext[e]!) {
        if (d ? this.entryMatches(e, tag, d) : this.eAlg[e] === tag) (list ??= []).push(this.hitProvenance(e));
      }
      out[o + i] = list;
    }
  }

  // `k` strings from `o` as one text of k × W characters; a string of another length is replaced by non-hex.
  private hexText(s: readonly string[], o: number, k: number, W: number): string {
    let ok = true;
    for (let i = o; i < o + k; i++) {
      const x = s[i];
      if (typeof x !== 'string' || x.length !== W) {
        ok = false;
        break;
      }
    }
    const part = o === 0 && k === s.length ? s : s.slice(o, o + k);
    return ok ? part.join('') : part.map((x) => (typeof x === 'string' && x.length === W ? x : _NOT_HEX.slice(0, W))).join('');
  }

  // The batch area in the core, at least `bytes` long (grown, never shrunk, while the index lives).
  private batchBuffer(c: Core, bytes: number): number {
    if (this.batchCap < bytes) {
      if (this.batchP) c.free(this.batchP);
      this.batchP = 0;
      this.batchCap = 0;
      this.batchP = c.alloc(bytes);
      this.batchCap = bytes;
    }
    return this.batchP;
  }

  /**
   * Every entry whose digest is `digest` under `alg`; empty when none (also
   * when the length does not fit the algorithm).
   * @example `ix.lookupDigest('sha256', sha256(fileBytes))`
   */
  lookupDigest(alg: DigestAlgorithm, digest: Uint8Array): Provenance[] {
    abytes(digest, 'digest');
    const out: Provenance[] = [];
    if (digest.length !== digestLength(alg)) return out;
    const tag = TAG[alg];
    for (let e = this.firstEntry(alg, digest); e >= 0; e = this.eNext[e]!) {
      if (this.entryMatches(e, tag, digest)) out.push(this.hitProvenance(e));
    }
    return out;
  }

  private provenance(p: number, path: number): Provenance {
    const o: Provenance = { repository: this.pkgRepo[p]!, package: this.pkgName[p]!, version: this.pkgVersion[p]! };
    const a = this.pkgArch[p];
    if (a !== undefined) o.architecture = a;
    if (path >= 0) o.path = this.paths[path]!;
    return o;
  }

  private pkgList(p: number): readonly Provenance[] {
    return this.pkgProv[p] ?? (this.pkgProv[p] = Object.freeze([Object.freeze(this.provenance(p, -1))]));
  }

  // What lookups return for entry e: a package's own digest gives one frozen object per
  // package, made on its first hit and shared after (a hit then reads one array slot instead
  // of four tables); a file digest gives a new object with its path.
  private hitProvenance(e: number): Provenance {
    const p = this.ePkg[e]!;
    const o = this.pkgList(p)[0]!;
    const path = this.ePath[e]!;
    if (path < 0) return o;
    const f: Provenance = { repository: o.repository, package: o.package, version: o.version };
    if (o.architecture !== undefined) f.architecture = o.architecture;
    f.path = this.paths[path]!;
    return f;
  }

  /** The package entry with id `p` (from `addPackage`). @example `ix.packageEntry(0)` */
  packageEntry(p: number): PackageEntry {
    if (!Number.isInteger(p) || p < 0 || p >= this.pkgName.length) {
      throw new VmkitError('ARG_RANGE', `p must be a package id in [0, ${this.pkgName.length}), got ${p}`);
    }
    const extra = this.pkgExtra.get(p);
    const digests: Digest[] = extra
      ? extra.map((d) => ({ ...d }))
      : [{ alg: ALGS[this.pkgAlg[p]!]!, hex: toHex(this.pkgKey.subarray(p * 32, p * 32 + LEN[ALGS[this.pkgAlg[p]!]!])) }];
    return { provenance: this.provenance(p, -1), digests };
  }

  /**
   * Package versions named `name` (all when `version` is absent), in insertion order.
   * @example `ix.lookupPackage('hello', '2.10-3')`
   */
  lookupPackage(name: string, version?: string): PackageEntry[] {
    if (this.closed) this.live();
    const v = this.names().get(name);
    if (v === undefined) return [];
    const ids = typeof v === 'number' ? [v] : v;
    const out: PackageEntry[] = [];
    for (const p of ids) if (version === undefined || this.pkgVersion[p] === version) out.push(this.packageEntry(p));
    return out;
  }

  /** Package ids named `name` (all versions). @example `ix.packageIds('hello')` */
  packageIds(name: string): number[] {
    const v = this.names().get(name);
    return v === undefined ? [] : typeof v === 'number' ? [v] : [...v];
  }

  /** Bytes held in the core and in the side tables. @example `ix.memory().core` */
  memory(): DigestIndexMemory {
    if (this.nPend) this.flush();
    const c = this.live();
    const core = this.ex(c).dixBytes(this.h);
    const side = this.ePkg.byteLength * 3 + this.eAlg.byteLength + this.pkgKey.byteLength + this.pkgAlg.byteLength +
      this.pkgName.length * 4 * 8 + this.byName.size * 40 + this.eTail.size * 80;
    return { core, side };
  }

  /** Frees the core table. Further use throws INVALID_STATE. @example `ix.close()` */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    registry.unregister(this.token);
    const c = core();
    if (c.generation === this.gen) {
      this.ex(c).dixFree(this.h);
      if (this.scratch) c.free(this.scratch);
      if (this.batchP) c.free(this.batchP);
    }
  }
}

/**
 * What `lookupMany` gives for `digests` when there is no index yet: one
 * `undefined` per digest.
 * @internal
 */
export function _noneFound(alg: DigestAlgorithm, digests: readonly string[] | Uint8Array): undefined[] {
  const n = digests instanceof Uint8Array ? Math.floor(digests.length / digestLength(alg)) : digests.length;
  return new Array<undefined>(n).fill(undefined);
}

/**
 * `lookupMany` for an index that has only `lookupDigest`: one lookup per
 * digest (hex decoded on the host).
 * @internal
 */
export function _manyByOne(index: ReferenceIndex, alg: DigestAlgorithm, digests: readonly string[] | Uint8Array): (Provenance[] | undefined)[] {
  const len = digestLength(alg);
  const out = _noneFound(alg, digests) as (Provenance[] | undefined)[];
  const b = new Uint8Array(len);
  for (let i = 0; i < out.length; i++) {
    let d: Uint8Array;
    if (digests instanceof Uint8Array) d = digests.subarray(i * len, (i + 1) * len);
    else {
      const h = digests[i];
      if (typeof h !== 'string' || h.length !== len * 2 || !hexInto(h, b)) continue;
      d = b;
    }
    const r = index.lookupDigest(alg, d);
    if (r.length) out[i] = r;
  }
  return out;
}

/**
 * A copy of `s` that does not keep a larger string alive. V8 makes substrings
 * of 13 or more characters views into their parent, so a name sliced from a
 * 50 MB Packages text would pin all of it; slicing a concatenation flattens
 * it into a new string of its own length first.
 * @internal
 */
export function ownString(s: string): string {
  return s.length < 13 ? s : (s + ' ').slice(0, -1);
}

/** hexInto for the 64 hex digits at `start` in `hex` (a string or ASCII bytes) without making a substring. */
function hexSliceInto(hex: string | Uint8Array, start: number, dst: Uint8Array, off: number): boolean {
  if (!(start >= 0) || start + 64 > hex.length) return false;
  const bytes = typeof hex === 'string' ? undefined : hex;
  const text = typeof hex === 'string' ? hex : '';
  for (let i = start, j = off; j < off + 32; i += 2, j++) {
    const a = bytes ? bytes[i]! : text.charCodeAt(i);
    const b = bytes ? bytes[i + 1]! : text.charCodeAt(i + 1);
    const hi = a < 128 ? HEX[a]! : -1;
    const lo = b < 128 ? HEX[b]! : -1;
    if ((hi | lo) < 0) return false;
    dst[j] = (hi << 4) | lo;
  }
  return true;
}
