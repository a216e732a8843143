/**
 * vmkit/disk.
 * @module
 */
export { init, initSync } from '../core.js';
export { VmkitError } from '../errors.js';
// Block devices, storage backends and image formats (docs/qcow2.md, docs/vmdk.md).
export {
  SECTOR_SIZE,
  sectorToByte,
  byteToSector,
  mapExtents,
  toQemuMap,
  type BlockDevice,
  type BlockExtent,
  type BlockKind,
  type ByteOffset,
  type ByteLength,
  type Sector,
  type DeviceOptions,
  type QemuMapEntry,
} from './device.js';
export { readAt, type Storage, type StorageProvider } from './backends/storage.js';
export { alignedBuffer } from './backends/storage.js';
export { MemoryStorage, MemoryProvider } from './backends/memory.js';
export { FileStorage, fileProvider } from './backends/file.js';
export { BlobStorage } from './backends/blob.js';
export { OpfsStorage, OpfsProvider } from './backends/opfs.js';
export {
  openImage,
  createImage,
  checkImage,
  probeFormat,
  loadFormat,
  chainOf,
  MAX_CHAIN_DEPTH,
  fileFormatDriver,
  formatDriverWith,
  type OpenImageOptions,
  type CreateImageOptions,
} from './image.js';
export type {
  FormatName,
  ImageDevice,
  ImageInfo,
  CheckReport,
  ImageFormatModule,
  FormatOpenOptions,
  FormatCreateOptions,
  FormatCheckOptions,
} from './formats/types.js';
export { Qcow2Device } from './formats/qcow2/device.js';
export { VmdkDevice } from './formats/vmdk/device.js';
export { VhdDevice } from './formats/vhd/device.js';
export { VhdxDevice } from './formats/vhdx/device.js';
export type { WriteGuard } from './_guard.js';
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
  NodeChainOps,
  RateLimiter,
  readJobRecord,
  type BackupDevice,
  type ChainOps,
  type FormatDriver,
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
// Disk ownership handoff (docs/ownership.md).
export * from './owner/index.js';
export { etcdStore, EtcdOwnerStore, type EtcdStoreOptions } from './owner/etcd-store.js';
// Serving disks over NBD (docs/nbd.md).
export { serveNbd, NbdServer, type NbdServerOptions, type NbdExportSpec, type NbdTlsOptions, type NbdServerStats } from './nbd/server.js';
