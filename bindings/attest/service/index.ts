/**
 * The attestation service (Node only: it serves HTTP with `node:http`):
 * nonces, request validation, refreshing repository sources, appraisal and
 * signed EARs. Published as `vmkit/attest/service`, apart from `vmkit/attest`
 * which also runs in browsers. See docs/attest-service.md.
 *
 * @example
 * ```ts
 * import { openSource } from 'vmkit/attest';
 * import { AttestService, SourceSet, createVerifier } from 'vmkit/attest/service';
 * const sources = new SourceSet([openSource('deb http://deb.debian.org/debian bookworm main', { keyring })]);
 * await sources.refreshAll({ requireAll: true });
 * const svc = new AttestService({ sources, verifier: await createVerifier({ keyFile: 'ear.pem' }) });
 * console.log(await svc.listen(8080, '127.0.0.1'));
 * ```
 * @module
 */
export { AttestService, parseAttestRequest, parseDigestArg, parsePackageArg, type AttestServiceOptions, type Jwks, type Verifier } from './server.js';
export { NonceStore, NonceQuotaError, type NonceStoreOptions, type NonceRefusal } from './nonces.js';
export { SourceSet, type SourceSetOptions, type SourceStatus } from './refresh.js';
export { statusOf, clientKey } from './_http.js';
export { createVerifier, type CreateVerifierOptions } from './verifier.js';
export { etcdReplaySet, type ReplaySet, type EtcdReplayOptions } from './replay.js';
// Whole-machine attestation: evidence of a Debian-family root, and its appraisal with file digests on demand.
export { collectInstalled, parseDpkgStatus, parseDiversions, type InstalledEvidence, type InstalledPackage, type InstalledFile, type DpkgStatusEntry, type CollectInstalledOptions } from '../installed.js';
export { appraiseInstalled, parseInstalled, FileDigestCache, OnDemandFiles, type MachineIndex, type MachineCategory, type OnDemandFilesOptions, type AppraiseInstalledOptions } from '../machine.js';
export { appraiseMachineIma, type MachineImaCategory } from '../machine-ima.js';
export { parseRpmdbExport, type RpmdbPackage } from '../_rpm.js';
