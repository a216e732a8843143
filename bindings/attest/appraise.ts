/**
 * Appraisal: a request's evidence (artifact or file digests, package name +
 * version, an IMA measurement list) looked up in a {@link ReferenceIndex},
 * giving per-item verdicts and, per submodule, an AR4SI trustworthiness vector
 * and status — what ear.ts signs. Pure: no I/O, no clock, no randomness.
 *
 * ```
 *  evidence                     lookup                        verdict            AR4SI claim (worst wins)
 *  digest  alg:hex [path]   ─►  lookupDigest            ─►   found             affirming        file-system 2
 *                                                            found elsewhere   warning          file-system 32  (path-mismatch)
 *                                                            not found         warning          file-system 32  (unknown-digest)
 *  package name version     ─►  lookupPackage           ─►   digest matches    affirming        file-system 2
 *          [arch] [digest]                                   no digest given   warning          file-system 32  (package-without-digest)
 *                                                            digest differs    contraindicated  file-system 96  (digest-mismatch)
 *                                                            unknown           warning          file-system 32  (unknown-package)
 *  IMA entry (not excluded) ─►  lookupDigest            ─►   as digests, on    executables 2 / 33 / 96
 *  IMA log integrity        ─►  template hashes, PCR 10 ─►   failure           contraindicated  executables 99 (crypto_failed)
 * ```
 *
 * Trust tiers (AR4SI §2.3.3): -1..1 none, 2..31 affirming, 32..95 warning,
 * 96..127 contraindicated.
 * @module
 */
import { VmkitError } from '../errors.js';
import { _manyByOne, digestLength, toHex } from './index-store.js';
import { _macrotask, compileExcludes, imaEntryDigest, verifyImaLog, type ImaBank, type ImaEntry, type ImaExcludes, type ImaFailure, type ImaLogResult } from './ima.js';
import type { Digest, DigestAlgorithm, Provenance, ReferenceIndex } from './types.js';
import type { EvidenceDigest, EvidencePackage, ImaEvidence, Evidence } from './evidence.js';

/**
 * AR4SI trust tiers, as EAR's `ear.status` spells them.
 *
 * @example
 * ```ts
 * const s: ArStatus = worst(tierOf(Ar4si.APPROVED_RUNTIME), tierOf(Ar4si.UNRECOGNIZED_FILES)); // 'warning'
 * ```
 */
export type ArStatus = 'none' | 'affirming' | 'warning' | 'contraindicated';

/**
 * AR4SI trustworthiness-vector claim names.
 *
 * @example
 * ```ts
 * const claim: TrustClaimName = 'executables';
 * const value = appraisal.submods['vmkit-software']?.trustVector[claim];
 * ```
 */
export type TrustClaimName =
  | 'instance-identity'
  | 'configuration'
  | 'executables'
  | 'file-system'
  | 'hardware'
  | 'runtime-opaque'
  | 'storage-opaque'
  | 'sourced-data';

/**
 * A trustworthiness vector: claim name → AR4SI value (-128..127).
 *
 * @example
 * ```ts
 * const v: TrustVector = { executables: Ar4si.APPROVED_RUNTIME, 'file-system': Ar4si.UNRECOGNIZED_FILES };
 * vectorStatus(v); // 'warning'
 * ```
 */
export type TrustVector = Partial<Record<TrustClaimName, number>>;

/**
 * The AR4SI values vmkit uses (draft-ietf-rats-ar4si §2.3.4; the same numbers
 * as veraison/ear's constants).
 * @example `vector.executables = Ar4si.APPROVED_RUNTIME // 2`
 */
export const Ar4si = {
  VERIFIER_MALFUNCTION: -1,
  NO_CLAIM: 0,
  UNEXPECTED_EVIDENCE: 1,
  CRYPTO_FAILED: 99,
  /** executables: only approved executables loaded during and after boot. */
  APPROVED_RUNTIME: 2,
  /** executables: runtime includes unrecognized executables or files. */
  UNRECOGNIZED_RUNTIME: 33,
  /** executables: runtime includes contraindicated executables or files. */
  CONTRAINDICATED_RUNTIME: 96,
  /** file-system: only recognized, approved files. */
  APPROVED_FILES: 2,
  /** file-system: unrecognized files found. */
  UNRECOGNIZED_FILES: 32,
  /** file-system: contraindicated files found. */
  CONTRAINDICATED_FILES: 96,
} as const;

const RANK: Record<ArStatus, number> = { none: 0, affirming: 1, warning: 2, contraindicated: 3 };

/**
 * The trust tier of an AR4SI claim value.
 * @example `tierOf(33) // 'warning'`
 */
export function tierOf(claim: number): ArStatus {
  const v = Math.abs(claim);
  if (v <= 1) return 'none';
  if (v <= 31) return 'affirming';
  if (v <= 95) return 'warning';
  return 'contraindicated';
}

/**
 * The worse of two statuses (contraindicated > warning > affirming > none).
 * @example `worst('affirming', 'warning') // 'warning'`
 */
export function worst(a: ArStatus, b: ArStatus): ArStatus {
  return RANK[a] >= RANK[b] ? a : b;
}

/**
 * The status of a trustworthiness vector: the worst tier of its claims
 * (`none` for an empty vector).
 * @example `vectorStatus({ executables: 2, 'file-system': 32 }) // 'warning'`
 */
export function vectorStatus(v: TrustVector): ArStatus {
  let s: ArStatus = 'none';
  for (const k of Object.keys(v) as TrustClaimName[]) s = worst(s, tierOf(v[k]!));
  return s;
}

// Evidence (what a request carries) and its validation live in evidence.ts; re-exported here,
// where they were first, so existing imports keep working.
export { parseEvidence, type EvidenceDigest, type EvidencePackage, type ImaEvidence, type Evidence, type EvidenceLimits } from './evidence.js';

const ALGS: readonly DigestAlgorithm[] = ['md5', 'sha1', 'sha256', 'sha384', 'sha512', 'sm3'];

// ---------------------------------------------------------------- verdicts

/**
 * The verdict on one item of evidence.
 *
 * @example
 * ```ts
 * for (const v of appraisal.submods['vmkit-software']?.items ?? []) {
 *   if (v.status !== 'affirming') console.log(v.kind, v.path ?? v.name, v.reason);
 * }
 * ```
 */
export interface ItemVerdict {
  kind: 'digest' | 'package' | 'ima' | 'file';
  status: ArStatus;
  /** Why it is not affirming (stable ids; Keylime's failure ids for IMA). */
  reason?: string;
  alg?: string;
  hex?: string;
  path?: string;
  name?: string;
  version?: string;
  architecture?: string;
  /** IMA: the entry's line in the log. */
  line?: number;
  /** Where the item was found (repository, package, version, architecture, path), at most `maxMatches`. */
  matches: Provenance[];
}

/**
 * Counts per submodule (always complete, even when `items` is truncated).
 *
 * @example
 * ```ts
 * const { items, affirming, warning, contraindicated }: AppraisalSummary = appraisal.submods['vmkit-software']!.summary;
 * ```
 */
export interface AppraisalSummary {
  items: number;
  affirming: number;
  warning: number;
  contraindicated: number;
  none: number;
  /** IMA entries left out by the exclude list. */
  excluded: number;
  /** Items not listed (affirming ones beyond `maxDetail`, any beyond `maxListed`). */
  omitted: number;
}

/**
 * One submodule's appraisal (an EAR `submods` entry).
 *
 * @example
 * ```ts
 * const ima: SubmodAppraisal | undefined = appraisal.submods['vmkit-ima'];
 * if (ima && !ima.pcr10?.match) console.error('IMA log does not replay to the quoted PCR 10', ima.failures);
 * ```
 */
export interface SubmodAppraisal {
  status: ArStatus;
  trustVector: TrustVector;
  policyId: string;
  summary: AppraisalSummary;
  items: ItemVerdict[];
  /** IMA: the PCR comparison. */
  pcr10?: { bank: ImaBank; expected: string; replayed: string; match: boolean; matchedAfter?: number };
  /** IMA: the replayed PCR 10 values. */
  pcrs?: Partial<Record<ImaBank, string>>;
  /** IMA: log-level failures (template hashes, wrong PCR, PCR mismatch). */
  failures?: ImaFailure[];
  /** IMA: the exclude patterns applied. */
  excludes?: string[];
  /** Whole machine (machine.ts): file counts per category. */
  categories?: Record<string, number>;
}

/**
 * The result of an appraisal: what ear.ts signs.
 *
 * @example
 * ```ts
 * const a: Appraisal = appraise(source, { digests: [{ alg: 'sha256', hex, path: '/usr/bin/hello' }] });
 * console.log(a.status, Object.keys(a.submods)); // 'affirming' [ 'vmkit-software' ]
 * ```
 */
export interface Appraisal {
  /** The worst status of all submodules. */
  status: ArStatus;
  /** `vmkit-software` (digests and packages) and/or `vmkit-ima`. */
  submods: Record<string, SubmodAppraisal>;
}

/**
 * Options of {@link appraise}.
 *
 * @example
 * ```ts
 * const a = appraise(source, input, { unknown: 'contraindicated', maxMatches: 2, policyId: 'site:strict/1' });
 * ```
 */
export interface AppraiseOptions {
  /** Status of an unknown digest or package (default `warning`, AR4SI "unrecognized"). */
  unknown?: 'warning' | 'contraindicated';
  /** Most matches listed per item (default 8). */
  maxMatches?: number;
  /** Most items listed per submodule; beyond it affirming items are only counted (default 10 000). */
  maxDetail?: number;
  /**
   * Most items listed per submodule whatever their status (default: no bound);
   * beyond it items are only counted. A service sets it to bound its answers:
   * a log of 100 000 unknown files would otherwise list every one.
   */
  maxListed?: number;
  /** Policy id recorded per submodule (default `vmkit:repository-match/1`). */
  policyId?: string;
}

/**
 * Input of {@link appraise}: parsed evidence, the IMA log already verified.
 *
 * @example
 * ```ts
 * const ima = await verifyImaLog(log, { expectedPcr: { bank: 'sha256', hex: quotedPcr10 } });
 * const a = appraise(source, { packages: [{ name: 'hello', version: '2.10-3' }], ima });
 * ```
 */
export interface AppraisalInput {
  digests?: EvidenceDigest[];
  packages?: EvidencePackage[];
  /** The verified IMA log (its `entries` are the non-excluded ones). */
  ima?: ImaLogResult & { excludes?: string[] };
}

class Collector {
  readonly summary: AppraisalSummary = { items: 0, affirming: 0, warning: 0, contraindicated: 0, none: 0, excluded: 0, omitted: 0 };
  readonly items: ItemVerdict[] = [];
  worst: ArStatus = 'none';
  private readonly maxDetail: number;
  private readonly maxListed: number;
  constructor(maxDetail: number, maxListed: number) {
    this.maxDetail = maxDetail;
    this.maxListed = maxListed;
  }
  add(v: ItemVerdict): void {
    if (this.keeps(v.status)) {
      this.summary.items++;
      this.summary[v.status]++;
      this.worst = worst(this.worst, v.status);
      this.items.push(v);
    } else this.count(v.status);
  }
  /** Whether an item of status `s` would be listed now (else it is only counted). */
  keeps(s: ArStatus): boolean {
    return (this.items.length < this.maxDetail || s !== 'affirming') && this.items.length < this.maxListed;
  }
  /** add() of an item that is not listed (`keeps(s)` is false): counted, never made. */
  count(s: ArStatus): void {
    this.summary.items++;
    this.summary[s]++;
    this.worst = worst(this.worst, s);
    this.summary.omitted++;
  }
}

// Every digest's entries: per algorithm one lookupMany call for the whole list (the
// index decodes the hex itself), or one lookupDigest per digest for an index without it.
function lookupAll(index: ReferenceIndex, items: readonly Digest[]): (Provenance[] | undefined)[] {
  const n = items.length;
  if (n === 0) return [];
  const alg0 = items[0]!.alg;
  let oneAlg = true;
  for (let i = 1; i < n; i++) if (items[i]!.alg !== alg0) oneAlg = false;
  const many = (alg: DigestAlgorithm, hex: string[]) => (index.lookupMany ? index.lookupMany(alg, hex) : _manyByOne(index, alg, hex));
  if (oneAlg) return many(alg0, items.map((d) => d.hex));
  const out = new Array<Provenance[] | undefined>(n).fill(undefined);
  const groups = new Map<DigestAlgorithm, number[]>();
  for (let i = 0; i < n; i++) {
    const a = items[i]!.alg;
    const g = groups.get(a);
    if (g) g.push(i);
    else groups.set(a, [i]);
  }
  for (const [alg, idx] of groups) {
    const r = many(alg, idx.map((i) => items[i]!.hex));
    for (let k = 0; k < idx.length; k++) out[idx[k]!] = r[k];
  }
  return out;
}

// The same for IMA entries, whose digests are bytes already: packed back to back per
// algorithm, looked up in one call; their hex (for the verdicts) made in one go per group too.
function lookupImaAll(index: ReferenceIndex, entries: readonly ImaEntry[], want: readonly number[]): { found: (Provenance[] | undefined)[]; hex: (string | undefined)[] } {
  const found = new Array<Provenance[] | undefined>(entries.length).fill(undefined);
  const hex = new Array<string | undefined>(entries.length).fill(undefined);
  const groups = new Map<DigestAlgorithm, number[]>();
  for (const i of want) {
    const e = entries[i]!;
    const a = e.digestAlg as DigestAlgorithm;
    if (e.digest.length !== digestLength(a)) continue;
    const g = groups.get(a);
    if (g) g.push(i);
    else groups.set(a, [i]);
  }
  for (const [alg, idx] of groups) {
    const len = digestLength(alg);
    const packed = new Uint8Array(idx.length * len);
    for (let k = 0; k < idx.length; k++) packed.set(entries[idx[k]!]!.digest, k * len);
    const r = index.lookupMany ? index.lookupMany(alg, packed) : _manyByOne(index, alg, packed);
    const all = toHex(packed);
    for (let k = 0; k < idx.length; k++) {
      found[idx[k]!] = r[k];
      hex[idx[k]!] = all.slice(k * 2 * len, (k + 1) * 2 * len);
    }
  }
  return { found, hex };
}

function digestVerdict(found: Provenance[] | undefined, d: Digest, path: string | undefined, o: Required<AppraiseOptions>, kind: 'digest' | 'ima'): ItemVerdict {
  const v: ItemVerdict = { kind, status: 'affirming', alg: d.alg, hex: d.hex, matches: [] };
  if (path !== undefined) v.path = path;
  if (found === undefined || found.length === 0) {
    v.status = o.unknown;
    v.reason = 'unknown-digest';
    return v;
  }
  if (found.length === 1) {
    // The common case, without the sorting arrays below: the one match, at this path or not.
    const p = found[0]!;
    if (o.maxMatches > 0) v.matches = [p];
    if (path !== undefined && p.path !== undefined && p.path !== path) {
      v.status = 'warning';
      v.reason = 'path-mismatch';
    }
    return v;
  }
  // Matches at the same path first: they are the strongest statement.
  const same = path === undefined ? found : found.filter((p) => p.path === path || p.path === undefined);
  const rest = path === undefined ? [] : found.filter((p) => !(p.path === path || p.path === undefined));
  v.matches = [...same, ...rest].slice(0, o.maxMatches);
  if (same.length === 0) {
    v.status = 'warning';
    v.reason = 'path-mismatch';
  }
  return v;
}

function packageVerdict(index: ReferenceIndex, p: EvidencePackage, o: Required<AppraiseOptions>): ItemVerdict {
  const v: ItemVerdict = { kind: 'package', status: 'affirming', name: p.name, version: p.version, matches: [] };
  if (p.architecture !== undefined) v.architecture = p.architecture;
  let entries = index.lookupPackage(p.name, p.version);
  if (p.architecture !== undefined) entries = entries.filter((e) => e.provenance.architecture === undefined || e.provenance.architecture === p.architecture);
  if (entries.length === 0) {
    v.status = o.unknown;
    v.reason = 'unknown-package';
    return v;
  }
  if (!p.digest) {
    v.status = 'warning';
    v.reason = 'package-without-digest';
    v.matches = entries.slice(0, o.maxMatches).map((e) => e.provenance);
    return v;
  }
  v.alg = p.digest.alg;
  v.hex = p.digest.hex;
  const hit = entries.filter((e) => e.digests.some((d) => d.alg === p.digest!.alg && d.hex.toLowerCase() === p.digest!.hex));
  if (hit.length > 0) {
    v.matches = hit.slice(0, o.maxMatches).map((e) => e.provenance);
    return v;
  }
  v.matches = entries.slice(0, o.maxMatches).map((e) => e.provenance);
  if (entries.some((e) => e.digests.some((d) => d.alg === p.digest!.alg))) {
    v.status = 'contraindicated';
    v.reason = 'digest-mismatch';
  } else {
    v.status = 'warning';
    v.reason = 'digest-unverifiable';
  }
  return v;
}

function claimFor(s: ArStatus, affirm: number, unrecognized: number, contra: number): number {
  return s === 'contraindicated' ? contra : s === 'warning' ? unrecognized : s === 'affirming' ? affirm : Ar4si.NO_CLAIM;
}


// The verdicts on entries[from, to) of a verified log, looked up in one go.
function imaVerdicts(index: ReferenceIndex, all: readonly ImaEntry[], from: number, to: number, c: Collector, o: Required<AppraiseOptions>): void {
  const entries = from === 0 && to === all.length ? all : all.slice(from, to);
  // The entries that are looked up (files with a known digest algorithm), all in one go.
  const want: number[] = [];
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    if (!e.violation && e.template !== 'ima-buf' && e.path !== 'boot_aggregate' && (ALGS as readonly string[]).includes(e.digestAlg)) want.push(i);
  }
  const { found, hex } = lookupImaAll(index, entries, want);
  for (let i = 0; i < entries.length; i++) c.add(imaVerdict(entries[i]!, found[i], hex[i], o));
}

// The verdict on one IMA entry: `found` and `h` (its digest's hex) when it was looked up.
function imaVerdict(e: ImaEntry, found: Provenance[] | undefined, h: string | undefined, o: Required<AppraiseOptions>): ItemVerdict {
  if (e.violation) return { kind: 'ima', status: 'none', reason: 'ima.validation.tomtou', path: e.path, line: e.line, matches: [] };
  if (e.template === 'ima-buf' || e.path === 'boot_aggregate') {
    // Buffers (kexec command lines, keys) and the boot aggregate are not files a repository holds.
    return { kind: 'ima', status: 'none', reason: e.template === 'ima-buf' ? 'ima-buf' : 'boot_aggregate', path: e.path, line: e.line, matches: [] };
  }
  const d = h !== undefined ? { alg: e.digestAlg as DigestAlgorithm, hex: h } : imaEntryDigest(e);
  let v: ItemVerdict;
  if (!d) v = { kind: 'ima', status: 'warning', reason: 'unsupported-digest-algorithm', alg: e.digestAlg, path: e.path, matches: [] };
  else {
    v = digestVerdict(found, d, e.path, o, 'ima');
    if (v.reason === 'unknown-digest') v.reason = `ima.validation.${e.template}.not_in_allowlist`;
  }
  v.line = e.line;
  return v;
}

/**
 * IMA entries as columns (a pool worker's packed result, _packed.ts), read
 * without an object per entry: a large log's entries are mostly only counted
 * (beyond `maxListed`), and made into objects only when they are listed.
 * @internal
 */
export interface _ImaRows {
  n: number;
  /** Entry `i` as an object. */
  entry(i: number): ImaEntry;
  /** False for a violation, an `ima-buf` entry or the boot aggregate (no file digest to look up). */
  plain(i: number): boolean;
  digestAlg(i: number): string;
  /** All digests back to back; entry `i`'s is `[digestStart(i), digestEnd(i))`. */
  readonly digest: Uint8Array;
  digestStart(i: number): number;
  digestEnd(i: number): number;
  path(i: number): string;
}

// imaVerdicts over rows [from, to): the same verdicts, counts and order, but an entry that is
// not listed (the collector is past maxListed, or past maxDetail and it affirms) costs a
// lookup and a count, no objects: no garbage per entry on the event loop of a service.
function imaVerdictsRows(index: ReferenceIndex, rows: _ImaRows, from: number, to: number, c: Collector, o: Required<AppraiseOptions>): void {
  const n = to - from;
  const groups = new Map<DigestAlgorithm, number[]>();
  for (let i = from; i < to; i++) {
    if (!rows.plain(i)) continue;
    const a = rows.digestAlg(i);
    if (!(ALGS as readonly string[]).includes(a) || rows.digestEnd(i) - rows.digestStart(i) !== digestLength(a as DigestAlgorithm)) continue;
    const g = groups.get(a as DigestAlgorithm);
    if (g) g.push(i);
    else groups.set(a as DigestAlgorithm, [i]);
  }
  const looked = new Uint8Array(n);
  const found = new Array<Provenance[] | undefined>(n);
  const bytes = rows.digest;
  for (const [alg, idx] of groups) {
    const len = digestLength(alg);
    // Usually every entry of the slice, their digests back to back already: looked up in place.
    const s0 = rows.digestStart(idx[0]!);
    let packed = bytes.subarray(s0, s0 + idx.length * len);
    for (let k = 0; k < idx.length; k++) {
      if (rows.digestStart(idx[k]!) === s0 + k * len) continue;
      packed = new Uint8Array(idx.length * len);
      for (let j = 0; j < idx.length; j++) {
        const s = rows.digestStart(idx[j]!);
        for (let b = 0; b < len; b++) packed[j * len + b] = bytes[s + b]!;
      }
      break;
    }
    const r = index.lookupMany ? index.lookupMany(alg, packed) : _manyByOne(index, alg, packed);
    for (let k = 0; k < idx.length; k++) {
      looked[idx[k]! - from] = 1;
      found[idx[k]! - from] = r[k];
    }
  }
  for (let i = from; i < to; i++) {
    const k = i - from;
    const f = found[k];
    if (looked[k]) {
      // digestVerdict's status, for the cases it decides without sorting matches.
      const status: ArStatus | undefined = f === undefined || f.length === 0 ? o.unknown : f.length === 1 ? (f[0]!.path !== undefined && f[0]!.path !== rows.path(i) ? 'warning' : 'affirming') : undefined;
      if (status !== undefined && !c.keeps(status)) {
        c.count(status);
        continue;
      }
      c.add(imaVerdict(rows.entry(i), f, toHex(bytes.subarray(rows.digestStart(i), rows.digestEnd(i))), o));
    } else c.add(imaVerdict(rows.entry(i), undefined, undefined, o));
  }
}

// The vmkit-software submodule (digests and packages), when there are any.
function softwareSubmod(index: ReferenceIndex, input: AppraisalInput, o: Required<AppraiseOptions>, out: Appraisal): void {
  if (!input.digests?.length && !input.packages?.length) return;
  const c = new Collector(o.maxDetail, o.maxListed);
  const digests = input.digests ?? [];
  const found = lookupAll(index, digests);
  for (let i = 0; i < digests.length; i++) c.add(digestVerdict(found[i], digests[i]!, digests[i]!.path, o, 'digest'));
  for (const p of input.packages ?? []) c.add(packageVerdict(index, p, o));
  const tv: TrustVector = { 'file-system': claimFor(c.worst, Ar4si.APPROVED_FILES, Ar4si.UNRECOGNIZED_FILES, Ar4si.CONTRAINDICATED_FILES) };
  out.submods['vmkit-software'] = { status: vectorStatus(tv), trustVector: tv, policyId: o.policyId, summary: c.summary, items: c.items };
}

// The vmkit-ima submodule from the log's result and the entries' verdicts.
function imaSubmod(r: Omit<ImaLogResult, 'entries'> & { excludes?: string[] }, c: Collector, o: Required<AppraiseOptions>): SubmodAppraisal {
  c.summary.excluded = r.excluded;
  const integrity = r.failureCount === 0;
  const tv: TrustVector = { executables: integrity ? claimFor(c.worst, Ar4si.APPROVED_RUNTIME, Ar4si.UNRECOGNIZED_RUNTIME, Ar4si.CONTRAINDICATED_RUNTIME) : Ar4si.CRYPTO_FAILED };
  const sub: SubmodAppraisal = { status: vectorStatus(tv), trustVector: tv, policyId: o.policyId, summary: c.summary, items: c.items, pcrs: r.pcrs };
  if (r.pcrCheck) sub.pcr10 = r.pcrCheck;
  if (r.failures.length) sub.failures = r.failures;
  if (r.excludes?.length) sub.excludes = r.excludes;
  return sub;
}

function appraiseOptions(options: AppraiseOptions): Required<AppraiseOptions> {
  const o: Required<AppraiseOptions> = { unknown: 'warning', maxMatches: 8, maxDetail: 10_000, maxListed: Infinity, policyId: 'vmkit:repository-match/1', ...options };
  if (o.unknown !== 'warning' && o.unknown !== 'contraindicated') throw new VmkitError('ARG_RANGE', 'options.unknown must be warning or contraindicated');
  if (!(o.maxListed >= 0)) throw new VmkitError('ARG_RANGE', 'options.maxListed must be a number ≥ 0');
  return o;
}

/**
 * Appraises evidence against a reference index: per-item verdicts, then per
 * submodule the AR4SI vector and status, and the overall status (the worst).
 * An item is affirming only when its digest is found in the index (for a
 * package: the package's own digest under that name and version), so unknown
 * or undigested items never affirm.
 *
 * @example
 * ```ts
 * const a = appraise(source, { digests: [{ alg: 'sha256', hex, path: '/usr/bin/hello' }] });
 * a.status; // 'affirming' when the digest is a file of a package in the repository
 * ```
 */
export function appraise(index: ReferenceIndex, input: AppraisalInput, options: AppraiseOptions = {}): Appraisal {
  const o = appraiseOptions(options);
  const out: Appraisal = { status: 'none', submods: {} };
  softwareSubmod(index, input, o, out);
  if (input.ima) {
    const c = new Collector(o.maxDetail, o.maxListed);
    imaVerdicts(index, input.ima.entries, 0, input.ima.entries.length, c, o);
    out.submods['vmkit-ima'] = imaSubmod(input.ima, c, o);
  }
  for (const s of Object.values(out.submods)) out.status = worst(out.status, s.status);
  return out;
}

/**
 * Options of {@link appraiseEvidence}.
 *
 * @example
 * ```ts
 * const appraisal = await appraiseEvidence(source, evidence, { excludes: ['glob:/var/log/**'], requestRegex: false });
 * ```
 */
export interface AppraiseEvidenceOptions extends AppraiseOptions {
  /** The service's own exclude list (applied with the request's). */
  excludes?: ImaExcludes | readonly string[];
  /** Accept regular expressions in the request's excludes (default false: `glob:` only, no ReDoS). */
  requestRegex?: boolean;
  /** Work allowed for matching the request's exclude globs (see `compileExcludes`' `maxWork`); past it LIMIT. */
  maxExcludeWork?: number;
  /**
   * Give the event loop a turn after about this many milliseconds of work
   * (default: never): a server's other clients are then answered while a
   * large log is verified and appraised, slice by slice.
   */
  yieldMs?: number;
}

/**
 * Verifies the IMA log of parsed evidence (template hashes, PCR 10, excludes)
 * and appraises everything: the service's one call per request. Async only
 * because hashing is; still no I/O.
 *
 * @example
 * ```ts
 * const appraisal = await appraiseEvidence(sources, parseEvidence(body.evidence));
 * const ear = await signEar(appraisal, key, { nonce });
 * ```
 */
export async function appraiseEvidence(index: ReferenceIndex, evidence: Evidence, options: AppraiseEvidenceOptions = {}): Promise<Appraisal> {
  const input: AppraisalInput = {};
  if (evidence.digests) input.digests = evidence.digests;
  if (evidence.packages) input.packages = evidence.packages;
  if (evidence.ima) input.ima = await _verifyEvidenceIma(evidence.ima, options);
  if (options.yieldMs === undefined) return appraise(index, input, options);
  const arr = <T>(a: readonly T[] | undefined): _Column<T> => ({ n: a?.length ?? 0, at: (from, to) => (a ?? []).slice(from, to) });
  const sliced: _SlicedInput = { digests: arr(input.digests), packages: arr(input.packages) };
  if (input.ima) sliced.ima = { result: input.ima, entries: arr(input.ima.entries) };
  return _appraiseSliced(index, sliced, { ...options, yieldMs: options.yieldMs });
}

/**
 * Verifies a request's IMA log with the service's excludes and the request's
 * (glob: only unless `requestRegex`, within `maxExcludeWork`). With `sink`,
 * each entry that is not excluded goes there as it is verified and the
 * result's `entries` stays empty; `each` is called after every entry,
 * excluded or not (a pool worker's checkpoint). @internal
 */
export async function _verifyEvidenceIma(ima: ImaEvidence, options: AppraiseEvidenceOptions, sink?: (e: ImaEntry) => void, each?: () => void): Promise<ImaLogResult & { excludes: string[] }> {
  const req = compileExcludes(ima.excludes ?? [], { regex: options.requestRegex ?? false, ...(options.maxExcludeWork !== undefined ? { maxWork: options.maxExcludeWork } : {}) });
  const own = options.excludes === undefined ? undefined : typeof options.excludes === 'function' ? options.excludes : compileExcludes(options.excludes);
  const patterns = [...(own?.patterns ?? []), ...req.patterns];
  const excludes = Object.defineProperty((p: string) => (own !== undefined && own(p)) || req(p), 'patterns', { value: patterns }) as ImaExcludes;
  const r = await verifyImaLog(ima.log, {
    ...(ima.pcr10 ? { expectedPcr: ima.pcr10 } : {}),
    excludes,
    ...(options.yieldMs !== undefined ? { yieldMs: options.yieldMs } : {}),
    ...(sink ? { collect: false, onEntry: (e: ImaEntry, excluded: boolean) => void (excluded || sink(e), each?.()) } : {}),
  });
  return { ...r, excludes: patterns };
}

/** Items of a request read a slice at a time (arrays, or columns packed by a worker). @internal */
export interface _Column<T> {
  n: number;
  at(from: number, to: number): T[];
}

/** What {@link _appraiseSliced} appraises. @internal */
export interface _SlicedInput {
  digests: _Column<EvidenceDigest>;
  packages: _Column<EvidencePackage>;
  ima?: { result: Omit<ImaLogResult, 'entries'> & { excludes?: string[] }; entries: _Column<ImaEntry>; /** The entries as columns, when they are (read instead of `entries`). */ rows?: _ImaRows };
}

/** Items per slice by default: the time is checked between slices. */
const DEFAULT_SLICE = 512;

/**
 * appraise() a slice of items at a time, giving the event loop a turn after
 * about `yieldMs` of work: the same verdicts, counts and order. `slice` items
 * are appraised between two looks at the clock (default 512: under a
 * millisecond of lookups; smaller for finer turns). `turn` is how the turn
 * is given (default: one setImmediate; the service waits for its small
 * requests, _turns.ts). @internal
 */
export async function _appraiseSliced(index: ReferenceIndex, input: _SlicedInput, options: AppraiseOptions & { yieldMs: number; slice?: number; turn?: () => Promise<void> }): Promise<Appraisal> {
  const o = appraiseOptions(options);
  const out: Appraisal = { status: 'none', submods: {} };
  const per = options.slice ?? DEFAULT_SLICE;
  const turn = options.turn ?? _macrotask;
  let t = performance.now();
  const pause = async (): Promise<void> => {
    if (performance.now() - t < options.yieldMs) return;
    await turn();
    t = performance.now();
  };
  const { digests, packages } = input;
  if (digests.n || packages.n) {
    const c = new Collector(o.maxDetail, o.maxListed);
    for (let from = 0; from < digests.n; from += per) {
      await pause();
      const ds = digests.at(from, Math.min(digests.n, from + per));
      const found = lookupAll(index, ds);
      for (let i = 0; i < ds.length; i++) c.add(digestVerdict(found[i], ds[i]!, ds[i]!.path, o, 'digest'));
    }
    for (let from = 0; from < packages.n; from += per) {
      await pause();
      for (const p of packages.at(from, Math.min(packages.n, from + per))) c.add(packageVerdict(index, p, o));
    }
    const tv: TrustVector = { 'file-system': claimFor(c.worst, Ar4si.APPROVED_FILES, Ar4si.UNRECOGNIZED_FILES, Ar4si.CONTRAINDICATED_FILES) };
    out.submods['vmkit-software'] = { status: vectorStatus(tv), trustVector: tv, policyId: o.policyId, summary: c.summary, items: c.items };
  }
  if (input.ima) {
    const c = new Collector(o.maxDetail, o.maxListed);
    const es = input.ima.entries;
    for (let from = 0; from < es.n; from += per) {
      await pause();
      const rows = input.ima.rows;
      if (rows) {
        imaVerdictsRows(index, rows, from, Math.min(es.n, from + per), c, o);
        continue;
      }
      const slice = es.at(from, Math.min(es.n, from + per));
      imaVerdicts(index, slice, 0, slice.length, c, o);
    }
    out.submods['vmkit-ima'] = imaSubmod(input.ima.result, c, o);
  }
  for (const s of Object.values(out.submods)) out.status = worst(out.status, s.status);
  return out;
}
