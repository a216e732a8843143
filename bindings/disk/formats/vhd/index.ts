/**
 * VHD (Microsoft Virtual PC / Hyper-V / Azure; QEMU's `vpc`): fixed,
 * dynamic and differencing disks, the format module the registry loads (see
 * ../types.ts for the contract). docs/vhd.md.
 * @module
 */
import { VmkitError } from '../../../errors.js';
import { readAt, type Storage } from '../../backends/storage.js';
import type { BlockDevice } from '../../device.js';
import type { CheckReport, FormatCheckOptions, FormatCreateOptions, FormatOpenOptions, ImageFormatModule } from '../types.js';
import { check as checkVhd } from './check.js';
import { VhdDevice } from './device.js';
import { readHeaders } from './_read-headers.js';
import {
  encodeDynHeader,
  encodeFooter,
  hasCookie,
  roundedSize,
  VHD_DIFFERENCING,
  VHD_DYNAMIC,
  VHD_FIXED,
  VHD_FOOTER_SIZE,
  VHD_TIMESTAMP_BASE,
  vhdChecksum,
  type VhdDynHeader,
  type VhdFooter,
} from './header.js';

export { VhdDevice } from './device.js';
export { readHeaders, type VhdHeaders } from './_read-headers.js';

/**
 * True when `head` starts with the footer copy of a dynamic or differencing
 * disk (`conectix`, as QEMU probes). A fixed disk has its footer only at the
 * end: {@link probeTail} finds it.
 *
 * @example
 * ```ts
 * probe(new TextEncoder().encode('conectix')); // true
 * ```
 */
export function probe(head: Uint8Array): boolean {
  return hasCookie(head);
}

/**
 * True when the last 512 bytes of a file of `fileSize` bytes are a fixed
 * disk's footer: the cookie, a correct checksum, type 2, no dynamic header,
 * and a current size that is exactly the bytes before the footer (QEMU does
 * not probe fixed disks at all; these checks keep a raw image from passing
 * for one unless it ends in a footer describing precisely itself).
 *
 * @example
 * ```ts
 * probeTail(await readAt(storage, size - 512, 512), size);
 * ```
 */
export function probeTail(tail: Uint8Array, fileSize: number): boolean {
  if (tail.length < VHD_FOOTER_SIZE || !hasCookie(tail)) return false;
  const dv = new DataView(tail.buffer, tail.byteOffset, VHD_FOOTER_SIZE);
  if (vhdChecksum(tail.subarray(0, VHD_FOOTER_SIZE), 64) !== dv.getUint32(64)) return false;
  if (dv.getUint32(60) !== VHD_FIXED || dv.getUint32(16) !== 0xffff_ffff || dv.getUint32(20) !== 0xffff_ffff) return false;
  return dv.getUint32(48) * 2 ** 32 + dv.getUint32(52) === fileSize - VHD_FOOTER_SIZE;
}


/** Where a differencing disk's parent may be, in the order vmkit tries them. @internal */
export async function parentNames(storage: Storage, dyn: VhdDynHeader): Promise<string[]> {
  const out: string[] = [];
  const fileSize = await storage.size();
  const rank = (p: string): number => ['W2ru', 'W2ku', 'MacX'].indexOf(p);
  const locs = dyn.locators.filter((l) => rank(l.platform) >= 0).sort((a, b) => rank(a.platform) - rank(b.platform));
  for (const l of locs) {
    if (l.dataLength === 0 || l.dataLength > 4096 || l.dataOffset < 0 || l.dataOffset + l.dataLength > fileSize) {
      throw new VmkitError('CORRUPT', `vhd ${storage.name}: parent locator ${l.platform} data at ${l.dataOffset} (${l.dataLength} bytes) is outside the file`, { offset: l.dataOffset, path: storage.name });
    }
    const b = await readAt(storage, l.dataOffset, l.dataLength);
    let s = l.platform === 'MacX' ? new TextDecoder().decode(b).replace(/^file:\/\//, '') : new TextDecoder('utf-16le').decode(b);
    s = s.replace(/\0+$/, '');
    if (l.platform !== 'MacX') {
      // Windows paths: a relative one is ".\name"; of an absolute one only the file name can mean anything here.
      s = s.replace(/\\/g, '/');
      if (l.platform === 'W2ku' || /^[A-Za-z]:\//.test(s)) s = s.split('/').pop() ?? s;
      s = s.replace(/^\.\//, '');
    }
    if (s && !out.includes(s)) out.push(s);
  }
  if (dyn.parentName && !out.includes(dyn.parentName)) out.push(dyn.parentName);
  return out;
}

/**
 * Opens a VHD; a differencing disk opens its parent through
 * `opts.openBacking` (its relative locator, then its absolute one's file
 * name, then the stored parent name) and is refused with INTEGRITY when the
 * parent's UUID is not the one it was made against.
 *
 * @example
 * ```ts
 * const dev = await open(await FileStorage.open('disk.vhd'), { readOnly: true });
 * ```
 */
export async function open(storage: Storage, opts: FormatOpenOptions = {}): Promise<VhdDevice> {
  const h = await readHeaders(storage);
  const readOnly = opts.readOnly === true || storage.readOnly;
  if (!readOnly && h.footer.savedState) {
    throw new VmkitError('INVALID_STATE', `vhd ${storage.name}: the disk is in a saved state (its VM was suspended); open read-only`, { offset: h.footerAt + 84, path: storage.name });
  }
  let backing: BlockDevice | undefined;
  let backingFile: string | undefined;
  if (h.footer.type === VHD_DIFFERENCING) {
    const names = await parentNames(storage, h.dyn!);
    if (names.length === 0) throw new VmkitError('CORRUPT', `vhd ${storage.name}: a differencing disk with no parent locator or name`, { offset: h.footer.dataOffset + 64, path: storage.name });
    backingFile = names[0];
    if (opts.openBacking) {
      let last: unknown;
      for (const n of names) {
        try {
          backing = await opts.openBacking(n, 'vhd');
          backingFile = n;
          break;
        } catch (e) {
          last = e;
          if (!(e instanceof VmkitError && e.code === 'NOT_FOUND')) throw e;
        }
      }
      if (!backing) throw last;
      try {
        const p = backing as Partial<VhdDevice>;
        if (backing.format === 'vhd' && p.uuid && !p.uuid.every((x, i) => x === h.dyn!.parentUuid[i])) {
          throw new VmkitError('INTEGRITY', `vhd ${storage.name}: parent ${backingFile} is not the disk this one was made against (UUID differs)`, { offset: h.footer.dataOffset + 40, path: storage.name });
        }
        if (backing.size !== h.size) throw new VmkitError('CORRUPT', `vhd ${storage.name}: size ${h.size} differs from the parent's ${backing.size}`, { offset: 48, path: storage.name });
      } catch (e) {
        await backing.close().catch(() => {});
        throw e;
      }
    }
  }
  return new VhdDevice(storage, {
    footer: h.footer,
    footerBytes: h.footerBytes,
    ...(h.dyn ? { dyn: h.dyn, bat: h.bat! } : {}),
    size: h.size,
    fileSize: h.fileSize,
    freeOffset: h.freeOffset,
    metaEnd: h.metaEnd,
    readOnly,
    ...(backing ? { backing } : {}),
    ...(backingFile !== undefined ? { backingFile } : {}),
    ...(opts.guard ? { guard: opts.guard } : {}),
  });
}

/** Options of {@link create} beyond the registry's. */
export interface VhdCreateOptions extends FormatCreateOptions {
  /** `dynamic` (default, as QEMU) or `fixed`; a `backing` makes it differencing. */
  subformat?: 'dynamic' | 'fixed';
  /**
   * `true`: record the exact size (QEMU's `force_size`, creator `qem2`).
   * `false`: round the size up to a CHS geometry, as `qemu-img create -f
   * vpc` does. Unset (default): CHS when the size has an exact geometry,
   * else the exact size, so the disk has the size asked for.
   */
  forceSize?: boolean;
}

function randomUuid(): Uint8Array {
  const u = new Uint8Array(16);
  crypto.getRandomValues(u);
  u[6] = (u[6]! & 0x0f) | 0x40;
  u[8] = (u[8]! & 0x3f) | 0x80;
  return u;
}

/**
 * Creates an empty VHD laid out as QEMU lays it out: a fixed disk is the
 * zeroed data and the footer; a dynamic disk is the footer copy, the
 * dynamic header at 512, the BAT at 1536 (all unused), the footer. See
 * `forceSize` for how the size is recorded. With `opts.backing` (a VHD, `opts.backingDevice`)
 * it is a differencing disk: the parent's UUID, its name (UTF-16) and a
 * relative `W2ru` parent locator are recorded, as Hyper-V writes them.
 *
 * @example
 * ```ts
 * await create(await FileStorage.create('disk.vhd'), { size: 1 << 30 });
 * await create(await FileStorage.create('fixed.vhd'), { size: 1 << 30, subformat: 'fixed' } as VhdCreateOptions);
 * ```
 */
export async function create(storage: Storage, opts: VhdCreateOptions): Promise<void> {
  if (!Number.isSafeInteger(opts.size) || opts.size < 0) throw new VmkitError('ARG_RANGE', `vhd size ${opts.size} must be a non-negative integer`);
  if (opts.extendedL2) throw new VmkitError('UNSUPPORTED', 'vhd has no extended L2 entries');
  const sub = opts.subformat ?? 'dynamic';
  if (sub !== 'dynamic' && sub !== 'fixed') throw new VmkitError('ARG_RANGE', `vhd subformat ${String(sub)} must be dynamic or fixed`);
  const blockSize = opts.clusterSize ?? 2 << 20;
  if (!Number.isSafeInteger(blockSize) || blockSize < 512 || blockSize > 256 << 20 || (blockSize & (blockSize - 1)) !== 0) {
    throw new VmkitError('ARG_RANGE', `vhd block size ${blockSize} must be a power of two in 512..256 MiB`);
  }
  let parent: (BlockDevice & { uuid?: Uint8Array; footer?: VhdFooter }) | undefined;
  if (opts.backing !== undefined) {
    if (sub === 'fixed') throw new VmkitError('UNSUPPORTED', 'a fixed vhd has no parent (differencing disks are dynamic)', { path: storage.name });
    if (opts.backingFormat !== undefined && opts.backingFormat !== 'vhd') throw new VmkitError('UNSUPPORTED', `a vhd differencing disk needs a vhd parent, not ${opts.backingFormat}`, { path: storage.name });
    parent = opts.backingDevice as typeof parent;
    if (parent && parent.format !== 'vhd') throw new VmkitError('UNSUPPORTED', `a vhd differencing disk needs a vhd parent, not ${parent.format}`, { path: storage.name });
    if (parent && parent.size !== opts.size) throw new VmkitError('ARG_RANGE', `a vhd differencing disk has its parent's size (${parent.size}), not ${opts.size}`, { path: storage.name });
  }
  // The size asked for is kept: CHS geometry when it has an exact one, else the exact size (qem2).
  const force = opts.forceSize ?? roundedSize(opts.size, false).size !== opts.size;
  const g = roundedSize(opts.size, force);
  const size = g.size;
  const type = opts.backing !== undefined ? VHD_DIFFERENCING : sub === 'fixed' ? VHD_FIXED : VHD_DYNAMIC;
  const footer: VhdFooter = {
    features: 2,
    version: 0x0001_0000,
    dataOffset: type === VHD_FIXED ? -1 : VHD_FOOTER_SIZE,
    timestamp: Math.max(0, Math.floor(Date.now() / 1000) - VHD_TIMESTAMP_BASE) >>> 0,
    creatorApp: force ? 'qem2' : 'qemu',
    creatorVersion: 0x0005_0003,
    creatorOs: 0x5769_326b, // "Wi2k"
    originalSize: size,
    currentSize: size,
    cylinders: g.cylinders,
    heads: g.heads,
    sectorsPerCylinder: g.sectorsPerCylinder,
    type,
    checksum: 0,
    uuid: randomUuid(),
    savedState: 0,
  };
  await storage.truncate(0);
  if (type === VHD_FIXED) {
    await storage.truncate(size);
    await storage.write(size, encodeFooter(footer));
    return;
  }
  const entries = Math.ceil(size / blockSize);
  const batBytes = Math.ceil((entries * 4) / 512) * 512;
  const tableOffset = 3 * 512;
  const dyn: VhdDynHeader = {
    tableOffset,
    version: 0x0001_0000,
    maxTableEntries: entries,
    blockSize,
    checksum: 0,
    parentUuid: new Uint8Array(16),
    parentTimestamp: 0,
    parentName: '',
    locators: [],
  };
  let end = tableOffset + batBytes;
  let locatorData: Uint8Array | undefined;
  if (opts.backing !== undefined) {
    if (parent?.uuid) dyn.parentUuid = parent.uuid.slice();
    if (parent?.footer) dyn.parentTimestamp = parent.footer.timestamp;
    const base = opts.backing.split(/[\\/]/).pop() ?? opts.backing;
    dyn.parentName = base;
    const rel = `.\\${opts.backing.replace(/\//g, '\\')}`;
    const b = new Uint8Array(rel.length * 2);
    const dv = new DataView(b.buffer);
    for (let i = 0; i < rel.length; i++) dv.setUint16(i * 2, rel.charCodeAt(i), true);
    if (b.length > 4096) throw new VmkitError('ARG_RANGE', `vhd: the parent name ${opts.backing} is too long`, { path: storage.name });
    const space = Math.ceil(b.length / 512) * 512;
    // Hyper-V stores data_space in bytes in W2ru/W2ku entries (the spec says sectors); vmkit writes bytes, as Hyper-V.
    dyn.locators = [{ platform: 'W2ru', dataSpace: space, dataLength: b.length, dataOffset: end }];
    locatorData = new Uint8Array(space);
    locatorData.set(b);
    end += space;
  }
  const bat = new Uint8Array(batBytes).fill(0xff);
  const fb = encodeFooter(footer);
  await storage.write(0, fb);
  await storage.write(VHD_FOOTER_SIZE, encodeDynHeader(dyn));
  await storage.write(tableOffset, bat);
  if (locatorData) await storage.write(tableOffset + batBytes, locatorData);
  await storage.write(end, fb);
}

/**
 * Checks a VHD's structure: footers (both copies of a dynamic disk agree),
 * dynamic header, BAT entries inside the file, past the headers, not
 * overlapping each other. `qemu-img check` does not check VHD; this is
 * vmkit's own.
 *
 * @example
 * ```ts
 * const r = await check(await FileStorage.open('disk.vhd', { readOnly: true }));
 * ```
 */
export function check(storage: Storage, opts: FormatCheckOptions = {}): Promise<CheckReport> {
  return checkVhd(storage, opts);
}

/**
 * The VHD format module for the registry.
 *
 * @example
 * ```ts
 * if (format.probe(head)) dev = await format.open(storage);
 * ```
 */
export const format: ImageFormatModule = { name: 'vhd', probe, probeTail, open, create, check };
