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
import type { EvidenceDigest, EvidencePackage, _Column, _SlicedInput } from '../appraise.js';
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

/** Packs verified evidence (worker side). @internal */
export function _pack(digests: readonly EvidenceDigest[] | undefined, packages: readonly EvidencePackage[] | undefined, ima: (ImaLogResult & { excludes?: string[] }) | undefined): _Packed {
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
    let bytes = 0;
    for (const e of entries) bytes += e.digest.length;
    const digest = new Uint8Array(bytes);
    const digestEnd = new Uint32Array(entries.length);
    let o = 0;
    for (let i = 0; i < entries.length; i++) {
      digest.set(entries[i]!.digest, o);
      o += entries[i]!.digest.length;
      digestEnd[i] = o;
    }
    out.ima = {
      result,
      line: Int32Array.from(entries, (e) => e.line),
      template: Uint8Array.from(entries, (e) => TEMPLATES.indexOf(e.template)),
      violation: Uint8Array.from(entries, (e) => (e.violation ? 1 : 0)),
      digestAlg: packStrs(entries.map((e) => e.digestAlg)),
      digest,
      digestEnd,
      path: packStrs(entries.map((e) => e.path)),
    };
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
    out.ima = {
      result: m.result,
      entries: col(m.line.length, (i): ImaEntry => ({
        line: m.line[i]!,
        pcr: 10,
        template: TEMPLATES[m.template[i]!]!,
        templateHash: EMPTY,
        violation: m.violation[i] === 1,
        digestAlg: strAt(m.digestAlg, i)!,
        digest: m.digest.subarray(i === 0 ? 0 : m.digestEnd[i - 1]!, m.digestEnd[i]!),
        path: strAt(m.path, i)!,
      })),
    };
  }
  return out;
}
