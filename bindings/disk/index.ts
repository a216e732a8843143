/**
 * vmkit/disk.
 * @module
 */
export { init, initSync } from '../core.js';
export { VmkitError } from '../errors.js';
// Live backup and consolidation (docs/backup.md).
export {
  LiveDisk,
  snapshot,
  backup,
  consolidate,
  resumeConsolidation,
  recoverConsolidation,
  MirrorDriver,
  MemoryChainOps,
  RateLimiter,
  readJobRecord,
  type BackupDevice,
  type ChainOps,
  type Snapshot,
  type SnapshotOptions,
  type BackupJob,
  type BackupOptions,
  type ByteSink,
  type ConsolidateJob,
  type ConsolidateOptions,
  type ConsolidateResult,
  type RecoverResult,
  type JobOptions,
  type JobProgress,
  type JobRecord,
  type JobState,
} from './backup/index.js';
