/**
 * VHDX (Hyper-V's format since Windows Server 2012): fixed and dynamic
 * disks, read and write; the format module the registry loads (see
 * ../types.ts for the contract). A log that holds entries is replayed on
 * open (_log.ts); differencing disks are read (their parent through the
 * parent locator), not written. docs/vhdx.md.
 * @module
 */
import { VmkitError } from '../../../errors.js';
import { readAt, type Storage } from '../../backends/storage.js';
import type { BlockDevice } from '../../device.js';
import type { CheckReport, FormatCheckOptions, FormatCreateOptions, FormatOpenOptions, ImageFormatModule } from '../types.js';
import { VhdxDevice } from './device.js';
import { _ReplayedStorage, applyLog, readLog } from './_log.js';
import {
  batEntries,
  chunkRatio,
  crc32c,
  encodeHeader,
  encodeMetadata,
  encodeRegionTable,
  GUID,
  guidText,
  MiB,
  parseHeader,
  parseMetadata,
  parseParentLocator,
  parseRegionTable,
  PAYLOAD_FULLY_PRESENT,
  VHDX_HEADER1,
  VHDX_HEADER2,
  VHDX_HEADER_SIZE,
  VHDX_REGION1,
  VHDX_REGION2,
  VHDX_REGION_SIZE,
  type VhdxHeader,
  type VhdxMetadata,
  type VhdxRegion,
} from './header.js';

export { VhdxDevice } from './device.js';

/** Most BAT entries vmkit loads (16 M: 128 MiB of entries, 16 TiB of 1 MiB blocks). */
const MAX_BAT_ENTRIES = 1 << 24;

/**
 * True when `head` starts with the file type identifier `vhdxfile`.
 *
 * @example
 * ```ts
 * probe(new TextEncoder().encode('vhdxfile')); // true
 * ```
 */
export function probe(head: Uint8Array): boolean {
  return head.length >= 8 && String.fromCharCode(...head.subarray(0, 8)) === 'vhdxfile';
}

const same = (a: Uint8Array, b: Uint8Array): boolean => a.length === b.length && a.every((x, i) => x === b[i]);

/** What {@link readLayout} found. */
export interface VhdxLayout {
  header: VhdxHeader;
  current: 0 | 1;
  metadata: VhdxMetadata;
  regions: VhdxRegion[];
  bat: BigUint64Array;
  batOffset: number;
  batLength: number;
  fileSize: number;
  /** The store to read the image through: `storage`, or a view with the log replayed in memory. */
  storage: Storage;
  /** Log entries replayed on open (absent: the log was empty). */
  replayed?: number;
}

/**
 * Reads and validates the headers (the valid one with the higher sequence
 * number), the log (its active sequence replayed: into the file with
 * `replay: 'write'`, else in a read-only view returned as `storage`), the
 * region tables, the metadata and the BAT.
 *
 * @example
 * ```ts
 * const { metadata, bat } = await readLayout(storage);
 * ```
 */
export async function readLayout(storage: Storage, opts: { replay?: 'memory' | 'write'; replayed?: number } = {}): Promise<VhdxLayout> {
  const name = storage.name;
  const fileSize = await storage.size();
  if (fileSize < VHDX_REGION2 + VHDX_REGION_SIZE || !probe(await readAt(storage, 0, 8))) {
    throw new VmkitError('CORRUPT', `vhdx ${name}: no file type identifier "vhdxfile" (or too short)`, { offset: 0, path: name });
  }
  const h1 = parseHeader(await readAt(storage, VHDX_HEADER1, VHDX_HEADER_SIZE));
  const h2 = parseHeader(await readAt(storage, VHDX_HEADER2, VHDX_HEADER_SIZE));
  if (!h1 && !h2) throw new VmkitError('INTEGRITY', `vhdx ${name}: neither header has a valid signature and CRC-32C`, { offset: VHDX_HEADER1 + 4, path: name });
  const current: 0 | 1 = h1 && (!h2 || h1.sequenceNumber >= h2.sequenceNumber) ? 0 : 1;
  const header = current === 0 ? h1! : h2!;
  const hAt = current === 0 ? VHDX_HEADER1 : VHDX_HEADER2;
  if (header.version !== 1) throw new VmkitError('UNSUPPORTED', `vhdx ${name}: header version ${header.version} (only 1)`, { offset: hAt + 66, path: name });
  if (!header.logGuid.every((x) => x === 0) && opts.replayed === undefined) {
    // Metadata updates may sit in the log without having reached their place: replay them, into
    // the file when it is opened writable, else in a view of it (the file unchanged). A log with
    // no valid entry is empty: nothing to replay (QEMU leaves its GUID too).
    const r = await readLog(storage, header, hAt, fileSize);
    if (r && opts.replay === 'write') {
      await applyLog(storage, r);
      await clearLog(storage, header, current);
      return readLayout(storage, { replayed: r.entries });
    }
    if (r) return readLayout(new _ReplayedStorage(storage, r), { replayed: r.entries });
  }
  let regions = parseRegionTable(await readAt(storage, VHDX_REGION1, VHDX_REGION_SIZE), VHDX_REGION1, name);
  let rAt = VHDX_REGION1;
  if (!regions) {
    regions = parseRegionTable(await readAt(storage, VHDX_REGION2, VHDX_REGION_SIZE), VHDX_REGION2, name);
    rAt = VHDX_REGION2;
  }
  if (!regions) throw new VmkitError('INTEGRITY', `vhdx ${name}: neither region table has a valid signature and CRC-32C`, { offset: VHDX_REGION1 + 4, path: name });
  let batR: VhdxRegion | undefined;
  let mdR: VhdxRegion | undefined;
  regions.forEach((r, i) => {
    const at = rAt + 16 + i * 32;
    if (same(r.guid, GUID.bat)) batR = r;
    else if (same(r.guid, GUID.metadata)) mdR = r;
    else if (r.required) throw new VmkitError('UNSUPPORTED', `vhdx ${name}: a required region vmkit does not know`, { offset: at, path: name });
    if (r.offset % MiB !== 0 || r.offset < MiB || r.offset + r.length > fileSize) {
      throw new VmkitError('CORRUPT', `vhdx ${name}: region at ${r.offset} (${r.length} bytes) is not 1 MiB aligned or outside the file`, { offset: at + 16, path: name });
    }
  });
  if (!batR || !mdR) throw new VmkitError('CORRUPT', `vhdx ${name}: the ${batR ? 'metadata' : 'BAT'} region is missing`, { offset: rAt + 8, path: name });
  if (mdR.length > 16 * MiB || mdR.length < 64 * 1024) throw new VmkitError('CORRUPT', `vhdx ${name}: metadata region of ${mdR.length} bytes`, { offset: rAt + 8, path: name });
  const metadata = parseMetadata(await readAt(storage, mdR.offset, mdR.length), mdR.offset, name);
  const entries = batEntries(metadata.virtualSize, metadata.blockSize, metadata.logicalSectorSize, metadata.hasParent);
  if (entries > MAX_BAT_ENTRIES) throw new VmkitError('LIMIT', `vhdx ${name}: ${entries} BAT entries (at most ${MAX_BAT_ENTRIES})`, { offset: batR.offset, path: name });
  if (entries * 8 > batR.length) throw new VmkitError('CORRUPT', `vhdx ${name}: the BAT region (${batR.length} bytes) is smaller than ${entries} entries`, { offset: batR.offset, path: name });
  const raw = await readAt(storage, batR.offset, entries * 8);
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const bat = new BigUint64Array(entries);
  for (let i = 0; i < entries; i++) bat[i] = dv.getBigUint64(i * 8, true);
  return { header, current, metadata, regions, bat, batOffset: batR.offset, batLength: batR.length, fileSize, storage, ...(opts.replayed ? { replayed: opts.replayed } : {}) };
}

/** Writes both headers with a zero log GUID (the log replayed), the current one last. */
async function clearLog(storage: Storage, h: VhdxHeader, current: 0 | 1): Promise<void> {
  const g = new Uint8Array(16);
  globalThis.crypto.getRandomValues(g);
  g[7] = (g[7]! & 0x0f) | 0x40;
  g[8] = (g[8]! & 0x3f) | 0x80;
  const next: VhdxHeader = { ...h, fileWriteGuid: g, logGuid: new Uint8Array(16) };
  const other = current === 0 ? VHDX_HEADER2 : VHDX_HEADER1;
  await storage.write(other, encodeHeader({ ...next, sequenceNumber: h.sequenceNumber + 1n }));
  await storage.write(current === 0 ? VHDX_HEADER1 : VHDX_HEADER2, encodeHeader({ ...next, sequenceNumber: h.sequenceNumber + 2n }));
  await storage.flush();
}

/**
 * Opens a fixed or dynamic VHDX.
 *
 * @example
 * ```ts
 * const dev = await open(await FileStorage.open('disk.vhdx'), { readOnly: true });
 * ```
 */
export async function open(storage: Storage, opts: FormatOpenOptions = {}): Promise<VhdxDevice> {
  const readOnly = opts.readOnly === true || storage.readOnly;
  const l = await readLayout(storage, { replay: readOnly ? 'memory' : 'write' });
  const parent = l.metadata.hasParent ? await openParent(l.storage, l.metadata, readOnly, opts) : undefined;
  return new VhdxDevice(l.storage, {
    ...(parent ? { backing: parent.dev, backingFile: parent.name } : {}),
    header: l.header,
    current: l.current,
    metadata: l.metadata,
    bat: l.bat,
    batOffset: l.batOffset,
    chunkRatio: chunkRatio(l.metadata.blockSize, l.metadata.logicalSectorSize),
    fileSize: l.fileSize,
    readOnly,
    ...(opts.guard ? { guard: opts.guard } : {}),
  });
}

/**
 * A differencing disk's parent: the parent locator's `relative_path`
 * (backslashes as Windows writes them), opened as a VHDX through
 * `opts.openBacking`, whose data-write GUID must be the locator's
 * `parent_linkage` (or `parent_linkage2`): else the parent changed after the
 * child was made (INTEGRITY at the locator). Without `openBacking` (info,
 * check) the child opens alone. Writing a differencing disk is UNSUPPORTED.
 */
async function openParent(storage: Storage, md: VhdxMetadata, readOnly: boolean, opts: FormatOpenOptions): Promise<{ dev: BlockDevice | undefined; name: string }> {
  const name = storage.name;
  const flagAt = md.fileParametersAt! + 4;
  if (!readOnly) throw new VmkitError('UNSUPPORTED', `vhdx ${name}: writing differencing disks (HasParent in the file parameters); open it read-only`, { offset: flagAt, path: name });
  if (!md.parentLocator) throw new VmkitError('CORRUPT', `vhdx ${name}: a differencing disk without a parent locator`, { offset: flagAt, path: name });
  const at = md.parentLocatorAt!;
  const kv = parseParentLocator(md.parentLocator, at, name);
  const rel = kv.get('relative_path');
  if (rel === undefined) {
    throw new VmkitError('UNSUPPORTED', `vhdx ${name}: a parent locator without relative_path (${[...kv.keys()].join(', ')}): vmkit finds parents beside the child only`, { offset: at, path: name });
  }
  const parentName = rel.replace(/\\/g, '/').replace(/^(\.\/)+/, '');
  if (!opts.openBacking) return { dev: undefined, name: parentName };
  const dev = await opts.openBacking(parentName, 'vhdx');
  try {
    const link = [kv.get('parent_linkage'), kv.get('parent_linkage2')].filter((x): x is string => x !== undefined).map((x) => x.toUpperCase());
    const pg = (dev as Partial<VhdxDevice>).dataWriteGuid;
    if (dev.format !== 'vhdx' || pg === undefined) throw new VmkitError('UNSUPPORTED', `vhdx ${name}: parent ${parentName} is a ${dev.format}, not a VHDX`, { offset: at, path: name });
    if (!link.includes(guidText(pg))) {
      throw new VmkitError('INTEGRITY', `vhdx ${name}: parent_linkage ${link[0] ?? '(none)'} is not the data-write GUID ${guidText(pg)} of ${parentName} (the parent changed after this child was made)`, { offset: at, path: name });
    }
    if (dev.size !== md.virtualSize) throw new VmkitError('CORRUPT', `vhdx ${name}: virtual size ${md.virtualSize} differs from the parent's ${dev.size}`, { offset: at, path: name });
  } catch (e) {
    await dev.close().catch(() => {});
    throw e;
  }
  return { dev, name: parentName };
}

/** Options of {@link create} beyond the registry's. */
export interface VhdxCreateOptions extends FormatCreateOptions {
  /** `dynamic` (default) or `fixed` (every block allocated, LeaveBlocksAllocated set). */
  subformat?: 'dynamic' | 'fixed';
}

/**
 * QEMU's default block size for a disk of `size` bytes: 8 MiB, 32 MiB past
 * 1 TiB, 64 MiB past 32 TiB (block/vhdx.c).
 *
 * @example
 * ```ts
 * defaultBlockSize(1 << 30); // 8 MiB
 * ```
 */
export function defaultBlockSize(size: number): number {
  return size > 32 * 2 ** 40 ? 64 * MiB : size > 2 ** 40 ? 32 * MiB : 8 * MiB;
}

/**
 * Creates an empty VHDX laid out as QEMU lays it out: file identifier,
 * headers at 64 and 128 KiB, region tables at 192 and 256 KiB, a 1 MiB log
 * at 1 MiB, the BAT at 2 MiB, the metadata region after it; a fixed disk's
 * blocks follow, all FULLY_PRESENT.
 *
 * @example
 * ```ts
 * await create(await FileStorage.create('disk.vhdx'), { size: 1 << 30 });
 * ```
 */
export async function create(storage: Storage, opts: VhdxCreateOptions): Promise<void> {
  const size = opts.size;
  if (!Number.isSafeInteger(size) || size < 0 || size % 512 !== 0) throw new VmkitError('ARG_RANGE', `vhdx size ${size} must be a non-negative multiple of 512`);
  if (size > 64 * 2 ** 40) throw new VmkitError('LIMIT', `vhdx size ${size}: VHDX holds at most 64 TiB`);
  if (opts.backing !== undefined) throw new VmkitError('UNSUPPORTED', 'vmkit does not create differencing VHDX disks', { path: storage.name });
  if (opts.extendedL2) throw new VmkitError('UNSUPPORTED', 'vhdx has no extended L2 entries');
  const bs = opts.clusterSize ?? defaultBlockSize(size);
  if (!Number.isSafeInteger(bs) || bs < MiB || bs > 256 * MiB || (bs & (bs - 1)) !== 0) throw new VmkitError('ARG_RANGE', `vhdx block size ${bs} must be a power of two in 1..256 MiB`);
  const fixed = opts.subformat === 'fixed';
  const entries = batEntries(size, bs, 512, false);
  const batOffset = 2 * MiB;
  const batLength = Math.max(MiB, Math.ceil((entries * 8) / MiB) * MiB);
  const mdOffset = batOffset + batLength;
  const mdLength = MiB;
  const diskId = new Uint8Array(16);
  crypto.getRandomValues(diskId);
  const md: VhdxMetadata = { blockSize: bs, leaveBlocksAllocated: fixed, hasParent: false, virtualSize: size, logicalSectorSize: 512, physicalSectorSize: 512, diskId };
  const rnd = (): Uint8Array => {
    const g = new Uint8Array(16);
    crypto.getRandomValues(g);
    return g;
  };
  const h: VhdxHeader = { sequenceNumber: 1n, fileWriteGuid: rnd(), dataWriteGuid: rnd(), logGuid: new Uint8Array(16), logVersion: 0, version: 1, logLength: MiB, logOffset: MiB };
  const regions: VhdxRegion[] = [
    { guid: GUID.bat, offset: batOffset, length: batLength, required: true },
    { guid: GUID.metadata, offset: mdOffset, length: mdLength, required: true },
  ];
  const ident = new Uint8Array(VHDX_HEADER1);
  const creator = 'vmkit';
  for (let i = 0; i < 8; i++) ident[i] = 'vhdxfile'.charCodeAt(i);
  for (let i = 0; i < creator.length; i++) ident[8 + i * 2] = creator.charCodeAt(i);
  await storage.truncate(0);
  let end = mdOffset + mdLength;
  const bat = new Uint8Array(batLength);
  if (fixed) {
    const dv = new DataView(bat.buffer);
    const cr = chunkRatio(bs, 512);
    for (let b = 0; b * bs < size; b++) {
      dv.setBigUint64((b + Math.floor(b / cr)) * 8, (BigInt(end / MiB) << 20n) | BigInt(PAYLOAD_FULLY_PRESENT), true);
      end += bs;
    }
  }
  await storage.truncate(end);
  await storage.write(0, ident);
  await storage.write(VHDX_HEADER1, encodeHeader(h));
  await storage.write(VHDX_HEADER2, encodeHeader({ ...h, sequenceNumber: 2n }));
  const rt = encodeRegionTable(regions);
  await storage.write(VHDX_REGION1, rt);
  await storage.write(VHDX_REGION2, rt);
  await storage.write(batOffset, bat);
  await storage.write(mdOffset, encodeMetadata(md, mdLength));
}

/**
 * Checks a VHDX: both headers and region tables valid (a damaged copy is a
 * corruption even though the other one is used), allocated blocks inside
 * the file, 1 MiB aligned, past the metadata regions, not overlapping each
 * other.
 *
 * @example
 * ```ts
 * const r = await check(await FileStorage.open('disk.vhdx', { readOnly: true }));
 * ```
 */
export async function check(storage: Storage, _opts: FormatCheckOptions = {}): Promise<CheckReport> {
  const l = await readLayout(storage);
  const report: CheckReport = { format: 'vhdx', filename: storage.name, corruptions: 0, leaks: 0, checkErrors: 0, messages: [] };
  const corrupt = (message: string, offset: number): void => {
    report.corruptions++;
    if (report.messages.length < 1000) report.messages.push({ severity: 'corruption', message, offset });
  };
  for (const at of [VHDX_HEADER1, VHDX_HEADER2]) if (!parseHeader(await readAt(storage, at, VHDX_HEADER_SIZE))) corrupt(`header at ${at} has a bad signature or CRC-32C`, at);
  for (const at of [VHDX_REGION1, VHDX_REGION2]) {
    const b = await readAt(storage, at, VHDX_REGION_SIZE);
    if (crc32c(b, 4) !== new DataView(b.buffer, b.byteOffset).getUint32(4, true)) corrupt(`region table at ${at} has a bad CRC-32C`, at + 4);
  }
  const used: [number, number, string][] = l.regions.map((r) => [r.offset, r.offset + r.length, 'region']);
  used.push([l.header.logOffset, l.header.logOffset + l.header.logLength, 'log']);
  const bs = l.metadata.blockSize;
  const cr = chunkRatio(bs, l.metadata.logicalSectorSize);
  let allocated = 0;
  for (let b = 0; b * bs < l.metadata.virtualSize; b++) {
    const bi = b + Math.floor(b / cr);
    const e = l.bat[bi]!;
    if (Number(e & 7n) !== PAYLOAD_FULLY_PRESENT) continue;
    const host = Number(e >> 20n) * MiB;
    const len = Math.min(bs, l.metadata.virtualSize - b * bs);
    if (host < MiB || host + len > l.fileSize) {
      corrupt(`block ${b} at ${host} is outside the file (BAT entry at ${l.batOffset + bi * 8})`, l.batOffset + bi * 8);
      continue;
    }
    allocated++;
    used.push([host, host + len, `block ${b}`]);
  }
  used.sort((a, b) => a[0] - b[0]);
  for (let k = 1; k < used.length; k++) {
    if (used[k]![0] < used[k - 1]![1]) corrupt(`${used[k]![2]} at ${used[k]![0]} overlaps ${used[k - 1]![2]} at ${used[k - 1]![0]}`, used[k]![0]);
  }
  report.imageEndOffset = l.fileSize;
  report.totalClusters = Math.ceil(l.metadata.virtualSize / bs);
  report.allocatedClusters = allocated;
  return report;
}

/**
 * The VHDX format module for the registry.
 *
 * @example
 * ```ts
 * if (format.probe(head)) dev = await format.open(storage);
 * ```
 */
export const format: ImageFormatModule = { name: 'vhdx', probe, open, create, check };
