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
