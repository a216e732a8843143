/**
 * vmkit/attest: the attestation API (repository sources, the digest index, IMA
 * logs, appraisal, EAR tokens, the client). Format parsers and `_` modules are
 * internals: import them by path inside the package (tests, CLI), not from here.
 * @module
 */
export { init, initSync } from '../core.js';
export { VmkitError } from '../errors.js';
// Repository sources and the digest index (docs/attest-sources.md).
export * from './types.js';
export { DigestIndex, type DigestIndexOptions, type DigestIndexMemory } from './index-store.js';
export { readKeyring, type Keyring, type SignatureInfo } from './_openpgp.js';
export { type Release, type ReleaseFile, type PackagesRecord } from './sources/deb822.js';
export { AptSource, type AptLine, type AptSourceOptions } from './sources/apt.js';
export { RpmSource, type RpmSourceOptions, type RepomdData, type PrimaryPackage, type FilelistsExtFile } from './sources/rpm.js';
export { NpmSource, type NpmSourceOptions, type NpmKeys } from './sources/npm.js';
export { ApkSource, type ApkSourceOptions, type ApkIndexRecord, type ApkIndexVerified } from './sources/apk.js';
export { openSource, type OpenSourceOptions } from './sources/parse-source-line.js';
export { memoryReleaseState, fileReleaseState, type ReleaseState } from './sources/release-state.js';
// IMA measurement lists (docs/attest-ima.md).
export { parseImaLine, imaTemplateData, imaEntryDigest, imaHash, PcrReplay, compileExcludes, imaLines, readImaLog, verifyImaLog, type ImaEntry, type ImaTemplate, type ImaBank, type ImaExtendMode, type ImaExcludes, type ExcludeOptions, type ImaLogSource, type ImaFailure, type ImaVerifyOptions, type ImaLogResult } from './ima.js';
// Appraisal of evidence against the index (docs/attest-service.md).
export { appraise, appraiseEvidence, parseEvidence, tierOf, worst, vectorStatus, Ar4si, type ArStatus, type TrustClaimName, type TrustVector, type EvidenceDigest, type EvidencePackage, type ImaEvidence, type Evidence, type EvidenceLimits, type ItemVerdict, type AppraisalSummary, type SubmodAppraisal, type Appraisal, type AppraiseOptions, type AppraisalInput, type AppraiseEvidenceOptions } from './appraise.js';
// EAR attestation results as EdDSA JWTs (docs/attest-service.md).
export { EAR_PROFILE, VMKIT_VERIFIER, generateEarKey, loadEarKey, exportEarKey, exportJwks, loadEarPublicKey, earClaims, signEar, verifyEar, type VerifierId, type EarSubmod, type EarClaims, type EarSigningKey, type EarVerificationKey, type EarOptions, type VerifyEarOptions, type VerifiedEar } from './ear.js';
// The remote machine's client (docs/attest-service.md).
export { attest, attestInstalled, splitInstalled, fetchNonce, fetchJwks, type ClientOptions, type AttestOptions, type AttestResult, type AttestInstalledOptions, type InstalledResult } from './client.js';
