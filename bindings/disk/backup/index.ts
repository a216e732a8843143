/**
 * Live backup and snapshot consolidation with a mirror driver (docs/backup.md).
 * Re-exported from vmkit/disk.
 * @module
 */
export type { BackupDevice, ChainOps } from './_types.js';
export { LiveDisk } from './live.js';
export { snapshot, defaultDeltaPath, type Snapshot, type SnapshotOptions } from './snapshot.js';
export { backup, type BackupJob, type BackupOptions, type ByteSink } from './backup.js';
export { MirrorDriver, type MirrorOptions, type MirrorStats } from './mirror.js';
export {
  consolidate,
  resumeConsolidation,
  recoverConsolidation,
  allocationMap,
  type ConsolidateJob,
  type ConsolidateOptions,
  type ConsolidateResult,
  type RecoverResult,
} from './consolidate.js';
export {
  RateLimiter,
  readJobRecord,
  recordPath,
  JOB_RECORD_MAGIC,
  JOB_RECORD_VERSION,
  type ErrorPolicy,
  type JobOptions,
  type JobProgress,
  type JobRecord,
  type JobState,
} from './job.js';
export { MemoryChainOps, type MemoryChainOptions } from './memory.js';
export { NodeChainOps, type FormatDriver } from './node.js';
