/**
 * The attestation service (Node only: it serves HTTP with `node:http`):
 * nonces, request validation, refreshing repository sources, appraisal and
 * signed EARs. See docs/attest-service.md.
 * @module
 */
export { AttestService, parseAttestRequest, parseDigestArg, parsePackageArg, type AttestServiceOptions, type Jwks, type Verifier } from './server.js';
export { NonceStore, NonceQuotaError, type NonceStoreOptions, type NonceRefusal } from './nonces.js';
export { SourceSet, type SourceSetOptions, type SourceStatus } from './refresh.js';
export { statusOf, readBody, sendJson, sendError, clientKey } from './_http.js';
export { etcdReplaySet, type ReplaySet, type EtcdReplayOptions } from './replay.js';
// Whole-machine attestation: evidence of a Debian-family root, and its appraisal with file digests on demand.
export { collectInstalled, parseDpkgStatus, parseDiversions, sha256File, type InstalledEvidence, type InstalledPackage, type InstalledFile, type DpkgStatusEntry, type CollectInstalledOptions } from '../installed.js';
export { appraiseInstalled, parseInstalled, FileDigestCache, OnDemandFiles, type MachineIndex, type MachineCategory, type OnDemandFilesOptions, type AppraiseInstalledOptions } from '../machine.js';
