/**
 * vmkit/attest.
 * @module
 */
export { init, initSync } from '../core.js';
export { VmkitError } from '../errors.js';
// Repository sources and the digest index (docs/attest-sources.md).
export * from './types.js';
export { DigestIndex, digestLength, hexInto, toHex, type DigestIndexOptions, type DigestIndexMemory } from './index-store.js';
export { readKeyring, verifyCleartext, verifyDetached, type Keyring, type SignatureInfo } from './_openpgp.js';
export { readAr, readTar, debFileDigests, type ArMember, type TarFile, type DebDigestOptions } from './_deb.js';
export { rpmFileDigests } from './_rpm.js';
export { parseDeb822, parseRelease, parsePackages, type Release, type ReleaseFile, type PackagesRecord } from './sources/deb822.js';
export { AptSource, parseAptLine, type AptLine, type AptSourceOptions } from './sources/apt.js';
export { RpmSource, parseRepomd, primaryParser, filelistsExtParser, type RpmSourceOptions, type RepomdData, type PrimaryPackage, type FilelistsExtFile } from './sources/rpm.js';
export { NpmSource, parseIntegrity, type NpmSourceOptions, type NpmKeys } from './sources/npm.js';
export { ApkSource, parseApkIndex, verifyApkIndex, type ApkSourceOptions, type ApkIndexRecord, type ApkIndexVerified } from './sources/apk.js';
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
