/**
 * The three lookups every repository source (apt, rpm, apk, npm) answers from
 * the DigestIndex its last refresh built. One place for what a source without
 * an index says: before its first refresh, and after close, it answers as an
 * empty index would (no provenance; `undefined` per digest from lookupMany),
 * not with an error. The sources keep their own methods (their public types
 * and per-ecosystem docs) and delegate here.
 * @module
 */
import { _noneFound, type DigestIndex } from '../index-store.js';
import type { DigestAlgorithm, PackageEntry, Provenance } from '../types.js';

/**
 * `lookupDigest` of a source whose index is `ix`.
 * @internal
 * @example `return _lookupDigest(this.index, alg, digest);`
 */
export function _lookupDigest(ix: DigestIndex | undefined, alg: DigestAlgorithm, digest: Uint8Array): Provenance[] {
  return ix ? ix.lookupDigest(alg, digest) : [];
}

/**
 * `lookupMany` of a source whose index is `ix`.
 * @internal
 * @example `return _lookupMany(this.index, alg, digests);`
 */
export function _lookupMany(ix: DigestIndex | undefined, alg: DigestAlgorithm, digests: readonly string[] | Uint8Array): (Provenance[] | undefined)[] {
  return ix ? ix.lookupMany(alg, digests) : _noneFound(alg, digests);
}

/**
 * `lookupPackage` of a source whose index is `ix`.
 * @internal
 * @example `return _lookupPackage(this.index, name, version);`
 */
export function _lookupPackage(ix: DigestIndex | undefined, name: string, version?: string): PackageEntry[] {
  return ix ? ix.lookupPackage(name, version) : [];
}
