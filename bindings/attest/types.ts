/**
 * The contract between repository sources (APT, RPM, npm, …) and the
 * attestation service: a source refreshes itself from its repository, trusting
 * only its signed chain, and answers lookups by digest or by package through a
 * {@link ReferenceIndex}. The service (and `vmkit attest check`) only see these
 * interfaces, so sources and the verifier evolve apart.
 * @module
 */

/**
 * Digest algorithms that repositories and IMA logs use.
 *
 * @example
 * ```ts
 * const alg: DigestAlgorithm = 'sha256';
 * const hits = src.lookupDigest(alg, digestBytes);
 * ```
 */
export type DigestAlgorithm = 'md5' | 'sha1' | 'sha256' | 'sha384' | 'sha512' | 'sm3';

/**
 * A digest with its algorithm, in lowercase hex.
 *
 * @example
 * ```ts
 * const d: Digest = { alg: 'sha256', hex: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855' };
 * ```
 */
export interface Digest {
  alg: DigestAlgorithm;
  hex: string;
}

/**
 * Where a reference value comes from: enough for a relying party to find the
 * same bytes again.
 *
 * @example
 * ```ts
 * for (const p of src.lookupDigest('sha256', digestBytes)) console.log(p.repository, p.package, p.version, p.path);
 * ```
 */
export interface Provenance {
  /** The source as its ecosystem writes it (`deb http://host/debian bookworm main`, `rpm <baseurl>`, `npm <url>`). */
  repository: string;
  /** Package name. */
  package: string;
  /** Package version as the repository spells it (Debian: with epoch). */
  version: string;
  /** Architecture when the ecosystem has one (`amd64`, `x86_64`, `noarch`, `all`). */
  architecture?: string;
  /**
   * For a file-level digest, the file's absolute path as installed (`/usr/bin/ls`);
   * absent when the digest is the package artifact's own.
   */
  path?: string;
}

/**
 * What the index knows about one package version.
 *
 * @example
 * ```ts
 * for (const e of src.lookupPackage('hello')) console.log(e.provenance.version, e.digests[0]?.hex);
 * ```
 */
export interface PackageEntry {
  provenance: Provenance;
  /** Digests of the package artifact (`.deb`, `.rpm`, npm tarball). */
  digests: Digest[];
}

/**
 * Lookups a source answers from its verified metadata. Must be fast (millions of entries).
 *
 * @example
 * ```ts
 * const ix: ReferenceIndex = src; // every source, and a DigestIndex
 * if (ix.lookupDigest('sha256', digestBytes).length === 0) console.log('unknown file');
 * ```
 */
export interface ReferenceIndex {
  /** Every entry whose digest is `digest` (raw bytes) under `alg`; empty when none. */
  lookupDigest(alg: DigestAlgorithm, digest: Uint8Array): Provenance[];
  /**
   * Optional: a whole request's digests of one algorithm in one call (hex
   * strings as they arrive, or raw digests back to back); per digest what
   * `lookupDigest` gives, `undefined` for none. The appraisal uses it when
   * present (DigestIndex, the sources, SourceSet have it).
   */
  lookupMany?(alg: DigestAlgorithm, digests: readonly string[] | Uint8Array): (Provenance[] | undefined)[];
  /** Package versions named `name` (all versions when `version` is absent); empty when none. */
  lookupPackage(name: string, version?: string): PackageEntry[];
  /** Number of digests held (artifact and file level). */
  readonly size: number;
}

/**
 * What a refresh did.
 *
 * @example
 * ```ts
 * const { changed, packages, validUntil }: RefreshResult = await src.refresh();
 * ```
 */
export interface RefreshResult {
  /** False when the repository answered 304 / nothing changed. */
  changed: boolean;
  /** Packages known after the refresh. */
  packages: number;
  /** When the signed metadata stops being valid (Debian `Valid-Until`), if it says. */
  validUntil?: Date;
}

/**
 * A package repository trusted through its signed chain. `refresh()` fetches
 * (incrementally: ETag / If-Modified-Since) and verifies; lookups answer from
 * the last verified state. File-level digests may be loaded on demand
 * (`fileDigests`), since they need the packages themselves.
 *
 * @example
 * ```ts
 * const src: RepositorySource = openSource('deb http://deb.debian.org/debian bookworm main', { keyring });
 * await src.refresh();
 * const [entry] = src.lookupPackage('hello', '2.10-3');
 * const files = entry && (await src.fileDigests?.(entry)); // Map path → Digest
 * ```
 */
export interface RepositorySource extends ReferenceIndex {
  /** The source line (`deb …`, `rpm …`, `npm …`). */
  readonly id: string;
  /** Fetches and verifies the repository's metadata; throws VmkitError (INTEGRITY, NETWORK, …) on failure. */
  refresh(signal?: AbortSignal): Promise<RefreshResult>;
  /**
   * File-level reference values of one package (fetched, checked against the
   * signed metadata, hashed, cached); undefined when the ecosystem has none.
   */
  fileDigests?(entry: PackageEntry, signal?: AbortSignal): Promise<Map<string, Digest> | undefined>;
}
