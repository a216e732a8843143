/**
 * Disk ownership (docs/ownership.md): owner records, the file / memory
 * stores, release transports and the handoff (`openOwned`). Re-exported by
 * `vmkit/disk`. The etcd store is its own module (`./etcd-store.js`) so that
 * the file-only path never loads it.
 * @module
 */
export type { OwnerState, OwnerIdentity, OwnerRecord, OwnerSnapshot, OwnerStore } from './types.js';
export {
  OWNER_RECORD_VERSION,
  OWNER_SECRET_PATTERN,
  MAX_RECORD_BYTES,
  MAX_NAME_CHARS,
  MAX_LEASE_MS,
  parseRecord,
  validateRecord,
  validateIdentity,
  encodeRecord,
  leaseAlive,
} from './record.js';
export { FileOwnerStore, type FileOwnerStoreOptions } from './file-store.js';
export { MemoryOwnerStore } from './memory-store.js';
export {
  newOwnerSecret,
  signReleaseRequest,
  releaseRequestFor,
  ReleaseAuthenticator,
  RELEASE_DENIED,
  RELEASE_REPLAY_CAPACITY,
  type ReleaseAuthenticatorOptions,
} from './auth.js';
export {
  createHttpTransport,
  type HttpTransportOptions,
  httpTransport,
  inProcessTransport,
  MessagePortTransport,
  validateReleaseRequest,
  type MessagePortLike,
  type ReleaseHandler,
  type ReleaseReply,
  type ReleaseRequest,
  type ReleaseServer,
  type ReleaseTransport,
} from './transport.js';
export {
  openOwned,
  readOwner,
  requestRelease,
  ownerIdentity,
  DEFAULT_LEASE_MS,
  DEFAULT_MAX_SKEW_MS,
  type OpenOwnedOptions,
  type OwnedDisk,
  type OwnedOpen,
  type ReleaseOutcome,
} from './handoff.js';
