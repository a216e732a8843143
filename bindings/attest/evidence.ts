/**
 * What a remote machine sends to be appraised (digests, packages, an IMA
 * measurement list) and its validation: `parseEvidence` checks a request's
 * parsed JSON without trusting any of it, within bounds (docs/attest-service.md).
 *
 * ```
 * evidence { digests?: [{alg, hex, path?}],  packages?: [{name, version, architecture?, digest?}],
 *            ima?: {log, pcr10?: {bank, hex}, excludes?: ["glob:…"]} }
 * ```
 * @module
 */
import { VmkitError } from '../errors.js';
import { describe as describeValue } from '../_utils.js';
import { digestLength } from './index-store.js';
import type { ImaBank } from './ima.js';
import type { Digest, DigestAlgorithm } from './types.js';

/**
 * A digest the remote machine measured (of a package artifact or a file).
 *
 * @example
 * ```ts
 * const d: EvidenceDigest = { alg: 'sha256', hex: sha256Hex, path: '/usr/bin/hello' };
 * ```
 */
export interface EvidenceDigest extends Digest {
  /** The file it was taken of, when it is a file (informational; compared with the match's path). */
  path?: string;
}

/**
 * A package the remote machine says it runs.
 *
 * @example
 * ```ts
 * const p: EvidencePackage = { name: 'hello', version: '2.10-3', architecture: 'amd64', digest: { alg: 'sha256', hex: debSha256 } };
 * ```
 */
export interface EvidencePackage {
  name: string;
  version: string;
  architecture?: string;
  /** Digest of the package artifact; without it the package never confirms. */
  digest?: Digest;
}

/**
 * An IMA measurement list as sent.
 *
 * @example
 * ```ts
 * const ima: ImaEvidence = {
 *   log: await readFile('/sys/kernel/security/ima/ascii_runtime_measurements', 'utf8'),
 *   pcr10: { bank: 'sha256', hex: quotedPcr10 },
 *   excludes: ['glob:/tmp/**'],
 * };
 * ```
 */
export interface ImaEvidence {
  /** The text of `ascii_runtime_measurements`. */
  log: string;
  /** The PCR 10 value to compare the replay with (from a TPM quote). */
  pcr10?: { bank: ImaBank; hex: string };
  /** Exclude patterns (see compileExcludes); recorded in the result. */
  excludes?: string[];
}

/**
 * What a remote machine sends (docs/attest-service.md).
 *
 * @example
 * ```ts
 * const evidence: Evidence = { digests: [{ alg: 'sha256', hex, path: '/usr/bin/hello' }], packages: [{ name: 'hello', version: '2.10-3' }] };
 * const r = await attest({ serviceUrl, evidence });
 * ```
 */
export interface Evidence {
  digests?: EvidenceDigest[];
  packages?: EvidencePackage[];
  ima?: ImaEvidence;
}

/**
 * Bounds of {@link parseEvidence}.
 *
 * @example
 * ```ts
 * const ev = parseEvidence(JSON.parse(body).evidence, { maxItems: 10_000, maxImaLog: 8 << 20 }); // ARG_RANGE beyond
 * ```
 */
export interface EvidenceLimits {
  /** Most digests plus packages (default 200 000). */
  maxItems?: number;
  /** Longest IMA log in characters (default 64 Mi). */
  maxImaLog?: number;
  /** Longest name, version, path (default 4096). */
  maxString?: number;
  /** Most exclude patterns (default 256). */
  maxExcludes?: number;
}

const ALGS: readonly DigestAlgorithm[] = ['md5', 'sha1', 'sha256', 'sha384', 'sha512', 'sm3'];
const BANKS: readonly ImaBank[] = ['sha1', 'sha256', 'sha384', 'sha512', 'sm3'];

function bad(msg: string): VmkitError {
  return new VmkitError('ARG_RANGE', `evidence: ${msg}`);
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(v: unknown, where: string, max: number, optional = false): string | undefined {
  if (v === undefined && optional) return undefined;
  if (typeof v !== 'string') throw new VmkitError('ARG_TYPE', `evidence: ${where} must be a string, got ${describeValue(v)}`);
  if (v.length === 0 || v.length > max) throw bad(`${where} must have 1..${max} characters`);
  return v;
}

function digestOf(v: unknown, where: string): Digest {
  if (!isObj(v)) throw new VmkitError('ARG_TYPE', `evidence: ${where} must be an object {alg, hex}`);
  const alg = v.alg;
  if (typeof alg !== 'string' || !(ALGS as readonly string[]).includes(alg)) throw bad(`${where}.alg must be one of ${ALGS.join(', ')}`);
  const hex = v.hex;
  const n = digestLength(alg as DigestAlgorithm);
  if (typeof hex !== 'string' || hex.length !== n * 2 || !/^[0-9a-fA-F]*$/.test(hex)) throw bad(`${where}.hex must be ${n * 2} hex digits for ${alg}`);
  return { alg: alg as DigestAlgorithm, hex: hex.toLowerCase() };
}

/**
 * Checks a request's `evidence` (parsed JSON) and returns it normalized
 * (hex lowercased, unknown fields dropped). Throws ARG_TYPE / ARG_RANGE /
 * LIMIT naming the bad field — the service answers those with 400 / 413.
 *
 * @example
 * ```ts
 * const ev = parseEvidence(JSON.parse(body).evidence);
 * ```
 */
export function parseEvidence(value: unknown, limits: EvidenceLimits = {}): Evidence {
  const { maxItems = 200_000, maxImaLog = 64 << 20, maxString = 4096, maxExcludes = 256 } = limits;
  if (!isObj(value)) throw new VmkitError('ARG_TYPE', `evidence must be an object, got ${describeValue(value)}`);
  const out: Evidence = {};
  let items = 0;
  if (value.digests !== undefined) {
    if (!Array.isArray(value.digests)) throw new VmkitError('ARG_TYPE', 'evidence: digests must be an array');
    items += value.digests.length;
    if (items > maxItems) throw new VmkitError('LIMIT', `evidence: more than ${maxItems} items`);
    out.digests = value.digests.map((d, i) => {
      const dg: EvidenceDigest = digestOf(d, `digests[${i}]`);
      const path = str((d as Record<string, unknown>).path, `digests[${i}].path`, maxString, true);
      if (path !== undefined) dg.path = path;
      return dg;
    });
  }
  if (value.packages !== undefined) {
    if (!Array.isArray(value.packages)) throw new VmkitError('ARG_TYPE', 'evidence: packages must be an array');
    items += value.packages.length;
    if (items > maxItems) throw new VmkitError('LIMIT', `evidence: more than ${maxItems} items`);
    out.packages = value.packages.map((p, i) => {
      if (!isObj(p)) throw new VmkitError('ARG_TYPE', `evidence: packages[${i}] must be an object`);
      const e: EvidencePackage = { name: str(p.name, `packages[${i}].name`, maxString)!, version: str(p.version, `packages[${i}].version`, maxString)! };
      const arch = str(p.architecture, `packages[${i}].architecture`, 64, true);
      if (arch !== undefined) e.architecture = arch;
      if (p.digest !== undefined) e.digest = digestOf(p.digest, `packages[${i}].digest`);
      return e;
    });
  }
  if (value.ima !== undefined) {
    const m = value.ima;
    if (!isObj(m)) throw new VmkitError('ARG_TYPE', 'evidence: ima must be an object');
    if (typeof m.log !== 'string') throw new VmkitError('ARG_TYPE', 'evidence: ima.log must be a string');
    if (m.log.length > maxImaLog) throw new VmkitError('LIMIT', `evidence: ima.log longer than ${maxImaLog} characters`);
    const ima: ImaEvidence = { log: m.log };
    if (m.pcr10 !== undefined) {
      if (!isObj(m.pcr10)) throw new VmkitError('ARG_TYPE', 'evidence: ima.pcr10 must be an object {bank, hex}');
      const bank = m.pcr10.bank;
      if (typeof bank !== 'string' || !(BANKS as readonly string[]).includes(bank)) throw bad(`ima.pcr10.bank must be one of ${BANKS.join(', ')}`);
      const d = digestOf({ alg: bank, hex: m.pcr10.hex }, 'ima.pcr10');
      ima.pcr10 = { bank: bank as ImaBank, hex: d.hex };
    }
    if (m.excludes !== undefined) {
      if (!Array.isArray(m.excludes)) throw new VmkitError('ARG_TYPE', 'evidence: ima.excludes must be an array of strings');
      if (m.excludes.length > maxExcludes) throw new VmkitError('LIMIT', `evidence: more than ${maxExcludes} exclude patterns`);
      ima.excludes = m.excludes.map((x, i) => str(x, `ima.excludes[${i}]`, 512)!);
    }
    out.ima = ima;
  }
  if (!out.digests?.length && !out.packages?.length && !out.ima) throw bad('nothing to appraise (digests, packages or ima)');
  return out;
}
