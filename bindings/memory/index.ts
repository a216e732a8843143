/**
 * vmkit/memory.
 * @module
 */
export { init, initSync } from '../core.js';
export { VmkitError } from '../errors.js';
export { gva, gpa, PAGE_SIZE } from './types.js';
export type { Gva, Gpa, GuestMemorySource, PageSource } from './types.js';
export {
  lz4CompressBlock,
  lz4CompressBlockInto,
  lz4DecompressBlock,
  lz4DecompressBlockInto,
  lz4CompressBound,
  lz4FrameCompress,
  lz4FrameDecompress,
  LZ4_MAX_BLOCK,
  xxh32,
} from './checkpoint/lz4.js';
export type { Lz4FrameOptions, Lz4FrameDecodeOptions } from './checkpoint/lz4.js';
export { CheckpointWriter } from './checkpoint/writer.js';
export type { CheckpointWriterOptions, CheckpointStats } from './checkpoint/writer.js';
export { CheckpointReader } from './checkpoint/reader.js';
export type { CheckpointReaderOptions, CheckpointInfo, CheckpointReadStats } from './checkpoint/reader.js';
export { importQemuMigration } from './checkpoint/qemu/import.js';
export type { QemuImportOptions, QemuImportStats } from './checkpoint/qemu/import.js';
export { exportQemuMigration } from './checkpoint/qemu/export.js';
export type { QemuExportStats, QemuExportOptions } from './checkpoint/qemu/export.js';
export { readStateMeta } from './checkpoint/qemu/state.js';
export type { MachineStateMeta, RamBlockLayout, CpuPaging } from './checkpoint/qemu/state.js';
export { fileSink, fileSource, memorySink, memorySource } from './checkpoint/io.js';
export type { CheckpointSink, CheckpointSource } from './checkpoint/io.js';
export { httpSource, isHttpUrl } from './checkpoint/http.js';
export { PageStore } from './checkpoint/store.js';
export type { PageStoreOptions, StoreSaveStats, StoreGcStats, StoreCheckpoint } from './checkpoint/store.js';
export type { HttpStoreOptions } from './checkpoint/store-http.js';
export { httpPartsSink, httpPartsSource } from './checkpoint/remote-parts.js';
export type { HttpPartsSinkOptions, HttpPartsStats } from './checkpoint/remote-parts.js';
export type { HttpSourceOptions, HttpSourceStats, HttpCheckpointSource, LocalCacheOptions, SigV4Credentials } from './checkpoint/http.js';
export { CHECKPOINT_MAGIC, CHECKPOINT_VERSION, DEFAULT_BLOCK_SIZE } from './checkpoint/format.js';
export type { CheckpointHeader, CheckpointCodec } from './checkpoint/format.js';
export { PrefetchEngine, coalesce, MAX_MAP, MAX_WINDOW, UNMAPPED, createPolicy, POLICY_NAMES, simulate } from './prefetch/index.js';
export type { Translator, PrefetchStats, PrefetchEngineOptions, PrefetchPolicy, PolicyName, PolicyOptions, SimulationResult, SimulateOptions } from './prefetch/index.js';
export { LazyGuestMemory, bufferPages, imagePages } from './prefetch/index.js';
export type { LazyGuestMemoryOptions, LazyMemoryStats } from './prefetch/index.js';
export { referenceTranslate, referenceMappings } from './paging/reference.js';
export { qemuTlbLine } from './paging/qemu.js';
export { PAGING_MODES, PF, TranslationResult } from './paging/types.js';
export type { PagingMode, FaultReason, Translation, TranslationFault, Mapping, AddressSpaceOptions } from './paging/types.js';
export { AddressSpace, UNMAPPED_GPA } from './paging/address-space.js';
export type { AddressSpaceCreateOptions, AddressSpaceStats } from './paging/address-space.js';
