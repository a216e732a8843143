/**
 * A request's evidence as columns (typed arrays and one string per field),
 * the form in which an appraisal worker hands its result to the main thread:
 * structured-cloning 100 000 small objects would cost the main thread tens of
 * milliseconds at once; columns cost a few copies, and the objects are made
 * again a slice at a time while the appraisal yields between slices.
 *
 * ```
 * strings  { s: all values concatenated, end: Uint32Array (end offset of each), has?: Uint8Array (0 = absent) }
 * digests  alg: Uint8Array (index in ALGS), hex: strings, path: strings
 * IMA      line: Int32Array, template: Uint8Array, violation: Uint8Array, digestAlg: strings,
 *          digest: Uint8Array (all digests back to back) + digestEnd: Uint32Array, path: strings
 * ```
 * @module
 */
import type { EvidenceDigest, EvidencePackage, _Column, _ImaRows, _SlicedInput } from '../appraise.js';
import type { ImaEntry, ImaLogResult, ImaTemplate } from '../ima.js';
import type { DigestAlgorithm } from '../types.js';

/** Strings packed as one. @internal */
export interface _Strs {
  s: string;
  end: Uint32Array;
  has: Uint8Array;
}

/** The worker's result. @internal */
export interface _Packed {
  digests?: { alg: Uint8Array; hex: _Strs; path: _Strs };
  packages?: { name: _Strs; version: _Strs; arch: _Strs; dalg: Uint8Array; dhex: _Strs };
  ima?: { result: Omit<ImaLogResult, 'entries'> & { excludes?: string[] }; line: Int32Array; template: Uint8Array; violation: Uint8Array; digestAlg: _Strs; digest: Uint8Array; digestEnd: Uint32Array; path: _Strs };
}

const ALGS: readonly DigestAlgorithm[] = ['md5', 'sha1', 'sha256', 'sha384', 'sha512', 'sm3'];
const TEMPLATES: readonly ImaTemplate[] = ['ima', 'ima-ng', 'ima-sig', 'ima-buf'];
const NONE = 255;

function packStrs(vals: readonly (string | undefined)[]): _Strs {
  const end = new Uint32Array(vals.length);
  const has = new Uint8Array(vals.length);
  const parts: string[] = [];
  let n = 0;
  for (let i = 0; i < vals.length; i++) {
    const v = vals[i];
    if (v !== undefined) {
      parts.push(v);
      n += v.length;
      has[i] = 1;
    }
    end[i] = n;
  }
  return { s: parts.join(''), end, has };
}

function strAt(p: _Strs, i: number): string | undefined {
  if (!p.has[i]) return undefined;
  return p.s.slice(i === 0 ? 0 : p.end[i - 1]!, p.end[i]!);
}

/** The buffers a packed result can transfer rather than copy. @internal */
export function _transferables(p: _Packed): ArrayBuffer[] {
  const out: ArrayBuffer[] = [];
  const add = (...a: ArrayBufferView[]): void => {
    for (const v of a) out.push(v.buffer as ArrayBuffer);
  };
  const strs = (...a: _Strs[]): void => {
    for (const x of a) add(x.end, x.has);
  };
  if (p.digests) {
    add(p.digests.alg);
    strs(p.digests.hex, p.digests.path);
  }
  if (p.packages) {
    add(p.packages.dalg);
    strs(p.packages.name, p.packages.version, p.packages.arch, p.packages.dhex);
  }
  if (p.ima) {
    add(p.ima.line, p.ima.template, p.ima.violation, p.ima.digest, p.ima.digestEnd);
    strs(p.ima.digestAlg, p.ima.path);
  }
  return out;
}

/**
 * IMA entries packed as they are verified (worker side): each entry is
 * copied into the columns and dropped, so the worker's heap holds no
 * 100 000 entry objects (their garbage-collection work runs on threads
 * that are not niced and would compete with the service's event loop).
 * @internal
 */
export class _ImaPacker {
  private n = 0;
  private line = new Int32Array(1024);
  private template = new Uint8Array(1024);
  private violation = new Uint8Array(1024);
  private digestEnd = new Uint32Array(1024);
  private digest = new Uint8Array(32 * 1024);
  private bytes = 0;
  private readonly algs: string[] = [];
  private readonly paths: string[] = [];

  /** Appends one entry. */
  add(e: ImaEntry): void {
    if (this.n === this.line.length) {
      const grow = <T extends Int32Array | Uint8Array | Uint32Array>(a: T): T => {
        const b = new (a.constructor as new (n: number) => T)(a.length * 2);
        b.set(a);
        return b;
      };
      this.line = grow(this.line);
      this.template = grow(this.template);
      this.violation = grow(this.violation);
      this.digestEnd = grow(this.digestEnd);
    }
    if (this.bytes + e.digest.length > this.digest.length) {
      const d = new Uint8Array(Math.max(this.digest.length * 2, this.bytes + e.digest.length));
      d.set(this.digest.subarray(0, this.bytes));
      this.digest = d;
    }
    const i = this.n++;
    this.line[i] = e.line;
    this.template[i] = TEMPLATES.indexOf(e.template);
    this.violation[i] = e.violation ? 1 : 0;
    this.digest.set(e.digest, this.bytes);
    this.bytes += e.digest.length;
    this.digestEnd[i] = this.bytes;
    this.algs.push(e.digestAlg);
    this.paths.push(e.path);
  }

  /** The columns, with the log's counts (`result` without its entries). */
  finish(result: Omit<ImaLogResult, 'entries'> & { excludes?: string[] }): NonNullable<_Packed['ima']> {
    const n = this.n;
    return {
      result,
      line: this.line.slice(0, n),
      template: this.template.slice(0, n),
      violation: this.violation.slice(0, n),
      digestAlg: packStrs(this.algs),
      digest: this.digest.slice(0, this.bytes),
      digestEnd: this.digestEnd.slice(0, n),
      path: packStrs(this.paths),
    };
  }
}

/**
 * Packs verified evidence (worker side): digests and packages, and the IMA
 * log's result with its entries (an array, or already in an {@link _ImaPacker}).
 * @internal
 */
export function _pack(
  digests: readonly EvidenceDigest[] | undefined,
  packages: readonly EvidencePackage[] | undefined,
  ima: (Omit<ImaLogResult, 'entries'> & { entries?: readonly ImaEntry[]; excludes?: string[] }) | undefined,
  packer?: _ImaPacker,
): _Packed {
  const out: _Packed = {};
  if (digests?.length) {
    out.digests = { alg: Uint8Array.from(digests, (d) => ALGS.indexOf(d.alg)), hex: packStrs(digests.map((d) => d.hex)), path: packStrs(digests.map((d) => d.path)) };
  }
  if (packages?.length) {
    out.packages = {
      name: packStrs(packages.map((p) => p.name)),
      version: packStrs(packages.map((p) => p.version)),
      arch: packStrs(packages.map((p) => p.architecture)),
      dalg: Uint8Array.from(packages, (p) => (p.digest ? ALGS.indexOf(p.digest.alg) : NONE)),
      dhex: packStrs(packages.map((p) => p.digest?.hex)),
    };
  }
  if (ima) {
    const { entries, ...result } = ima;
    const p = packer ?? new _ImaPacker();
    if (!packer) for (const e of entries ?? []) p.add(e);
    out.ima = p.finish(result);
  }
  return out;
}

const EMPTY = new Uint8Array(0);

/** The packed result as the sliced appraisal reads it (main side). @internal */
export function _unpack(p: _Packed): _SlicedInput {
  const col = <T>(n: number, one: (i: number) => T): _Column<T> => ({
    n,
    at: (from, to) => {
      const out: T[] = [];
      for (let i = from; i < to; i++) out.push(one(i));
      return out;
    },
  });
  const d = p.digests;
  const k = p.packages;
  const out: _SlicedInput = {
    digests: col(d?.alg.length ?? 0, (i) => {
      const v: EvidenceDigest = { alg: ALGS[d!.alg[i]!]!, hex: strAt(d!.hex, i)! };
      const path = strAt(d!.path, i);
      if (path !== undefined) v.path = path;
      return v;
    }),
    packages: col(k?.dalg.length ?? 0, (i) => {
      const v: EvidencePackage = { name: strAt(k!.name, i)!, version: strAt(k!.version, i)! };
      const arch = strAt(k!.arch, i);
      if (arch !== undefined) v.architecture = arch;
      if (k!.dalg[i] !== NONE) v.digest = { alg: ALGS[k!.dalg[i]!]!, hex: strAt(k!.dhex, i)! };
      return v;
    }),
  };
  const m = p.ima;
  if (m) {
    const entry = (i: number): ImaEntry => ({
      line: m.line[i]!,
      pcr: 10,
      template: TEMPLATES[m.template[i]!]!,
      templateHash: EMPTY,
      violation: m.violation[i] === 1,
      digestAlg: strAt(m.digestAlg, i)!,
      digest: m.digest.subarray(i === 0 ? 0 : m.digestEnd[i - 1]!, m.digestEnd[i]!),
      path: strAt(m.path, i)!,
    });
    const start = (x: _Strs, i: number): number => (i === 0 ? 0 : x.end[i - 1]!);
    const BUF = TEMPLATES.indexOf('ima-buf');
    const BOOT = 'boot_aggregate';
    // The algorithm names repeat (one or two per log): the last one made is compared in place,
    // so a row costs no new string.
    let alg = '';
    const rows: _ImaRows = {
      n: m.line.length,
      entry,
      plain: (i) => {
        if (m.violation[i] === 1 || m.template[i] === BUF) return false;
        const s = start(m.path, i);
        return !(m.path.end[i]! - s === BOOT.length && m.path.s.startsWith(BOOT, s));
      },
      digestAlg: (i) => {
        const s = start(m.digestAlg, i);
        const len = m.digestAlg.end[i]! - s;
        if (len !== alg.length || !m.digestAlg.s.startsWith(alg, s)) alg = m.digestAlg.s.slice(s, s + len);
        return alg;
      },
      digest: m.digest,
      digestStart: (i) => (i === 0 ? 0 : m.digestEnd[i - 1]!),
      digestEnd: (i) => m.digestEnd[i]!,
      path: (i) => strAt(m.path, i)!,
    };
    out.ima = { result: m.result, entries: col(m.line.length, entry), rows };
  }
  return out;
}
