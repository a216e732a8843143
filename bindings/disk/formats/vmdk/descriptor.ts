/**
 * The VMDK descriptor: the text embedded in a monolithicSparse file (and
 * standing alone for other create types) that names the disk's content ID
 * (`CID`), its parent's (`parentCID`, ffffffff for a base disk), the parent
 * file (`parentFileNameHint`), the create type, the extents and the disk
 * database (`ddb.*`). A delta is valid while its parentCID equals its
 * parent's CID; a writer picks a new CID on its first write. docs/vmdk.md.
 * @module
 */
import { VmkitError } from '../../../errors.js';

/** parentCID of a disk that has no parent. */
export const CID_NOPARENT = 0xffff_ffff;

/** One extent line: `RW 2097152 SPARSE "disk.vmdk"`. */
export interface VmdkExtentLine {
  access: 'RW' | 'RDONLY' | 'NOACCESS';
  /** Size in sectors. */
  sectors: number;
  /** SPARSE, FLAT, ZERO, VMFS, VMFSSPARSE, … as written. */
  type: string;
  /** File name (absent for ZERO extents). */
  file?: string;
  /** Offset in sectors into the file (FLAT extents). */
  offset?: number;
}

/** A parsed descriptor. The text is kept line by line so rewriting one field keeps the rest. */
export interface VmdkDescriptor {
  /** Descriptor format version (`version=1`). */
  version: number | undefined;
  /** Content ID (changes on every first write after open). */
  cid: number | undefined;
  /** The parent's CID when this disk was created from it; {@link CID_NOPARENT} for a base. */
  parentCid: number;
  createType: string | undefined;
  /** The parent's file name, relative to this file. */
  parentFileNameHint: string | undefined;
  extents: VmdkExtentLine[];
  /** Every `key = value` pair, keys as written (ddb.* included). */
  fields: Map<string, string>;
  /** The lines as read. */
  lines: string[];
}

function unquote(v: string): string {
  const t = v.trim();
  return t.length >= 2 && t.startsWith('"') && t.endsWith('"') ? t.slice(1, -1) : t;
}

/**
 * Parses a descriptor. `text` ends at the first NUL (the rest of the
 * reserved sectors is padding). Lines that are neither comments, extents nor
 * `key = value` pairs, bad CIDs, control bytes and missing required fields
 * throw CORRUPT with the byte offset (`base` + position in `text`).
 *
 * @example
 * ```ts
 * const d = parseDescriptor('# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicSparse"\n');
 * d.cid?.toString(16); // '12345678'
 * ```
 */
export function parseDescriptor(text: string, base: number = 0, path?: string): VmdkDescriptor {
  const where = path ? { path } : {};
  const nul = text.indexOf('\0');
  const body = nul >= 0 ? text.slice(0, nul) : text;
  const d: VmdkDescriptor = {
    version: undefined,
    cid: undefined,
    parentCid: CID_NOPARENT,
    createType: undefined,
    parentFileNameHint: undefined,
    extents: [],
    fields: new Map(),
    lines: body.split('\n'),
  };
  let at = base;
  const corrupt = (msg: string): VmkitError => new VmkitError('CORRUPT', `vmdk descriptor${path ? ' of ' + path : ''}: ${msg}`, { offset: at, ...where });
  const hex32 = (v: string, what: string): number => {
    if (!/^[0-9a-fA-F]{1,8}$/.test(v)) throw corrupt(`${what} "${v.slice(0, 32)}" is not a 32-bit hex number`);
    return parseInt(v, 16);
  };
  for (const raw of d.lines) {
    const line = raw.replace(/\r$/, '');
    // eslint-disable-next-line no-control-regex
    if (/[\x00-\x08\x0b-\x1f\x7f]/.test(line)) throw corrupt('control bytes in the descriptor');
    const t = line.trim();
    if (t === '' || t.startsWith('#')) {
      at += raw.length + 1;
      continue;
    }
    const ext = /^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Za-z]+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$/.exec(t);
    if (ext) {
      const sectors = Number(ext[2]);
      if (!Number.isSafeInteger(sectors)) throw corrupt(`extent size ${ext[2]} is out of range`);
      const e: VmdkExtentLine = { access: ext[1] as VmdkExtentLine['access'], sectors, type: ext[3]!.toUpperCase() };
      if (ext[4] !== undefined) e.file = ext[4];
      if (ext[5] !== undefined) {
        const o = Number(ext[5]);
        if (!Number.isSafeInteger(o)) throw corrupt(`extent offset ${ext[5]} is out of range`);
        e.offset = o;
      }
      if (d.extents.length >= 4096) throw corrupt('more than 4096 extents');
      d.extents.push(e);
      at += raw.length + 1;
      continue;
    }
    const eq = t.indexOf('=');
    if (eq <= 0) throw corrupt(`unreadable line "${t.slice(0, 40)}"`);
    const key = t.slice(0, eq).trim();
    if (!/^[A-Za-z][\w.]*$/.test(key)) throw corrupt(`bad key "${key.slice(0, 40)}"`);
    const value = unquote(t.slice(eq + 1));
    d.fields.set(key, value);
    switch (key) {
      case 'version': {
        if (!/^\d{1,6}$/.test(value)) throw corrupt(`version "${value.slice(0, 32)}"`);
        d.version = Number(value);
        break;
      }
      case 'CID':
        d.cid = hex32(value, 'CID');
        break;
      case 'parentCID':
        d.parentCid = hex32(value, 'parentCID');
        break;
      case 'createType':
        d.createType = value;
        break;
      case 'parentFileNameHint':
        if (value === '') throw corrupt('empty parentFileNameHint');
        d.parentFileNameHint = value;
        break;
      default:
        break;
    }
    at += raw.length + 1;
  }
  at = base;
  if (d.cid === undefined && d.lines.some((l) => l.trim() !== '')) throw corrupt('no CID');
  return d;
}

/** Fields of a new descriptor. */
export interface NewDescriptor {
  cid: number;
  parentCid: number;
  createType: string;
  parentFileNameHint?: string;
  /** Capacity in sectors. */
  sectors: number;
  /** The extent file name (this file's base name for monolithicSparse). */
  extentFile: string;
  /** Extent lines as written (`RW 4194304 SPARSE "a-s001.vmdk"`), in place of the one SPARSE line of `extentFile`. */
  extents?: string[];
  adapterType?: string;
}

const hex8 = (n: number): string => (n >>> 0).toString(16).padStart(8, '0');

/**
 * Writes a descriptor as QEMU's `vmdk_co_do_create` lays it out.
 *
 * @example
 * ```ts
 * const text = encodeDescriptor({ cid: 0x1234, parentCid: CID_NOPARENT, createType: 'monolithicSparse', sectors: 2048, extentFile: 'a.vmdk' });
 * ```
 */
export function encodeDescriptor(n: NewDescriptor): string {
  const cyl = Math.min(Math.floor(n.sectors / (16 * 63)), 16383);
  return [
    '# Disk DescriptorFile',
    'version=1',
    `CID=${hex8(n.cid)}`,
    `parentCID=${hex8(n.parentCid)}`,
    `createType="${n.createType}"`,
    ...(n.parentFileNameHint !== undefined ? [`parentFileNameHint="${n.parentFileNameHint}"`] : []),
    '',
    '# Extent description',
    ...(n.extents ?? [`RW ${n.sectors} SPARSE "${n.extentFile}"`]),
    '',
    '# The Disk Data Base',
    '#DDB',
    '',
    'ddb.virtualHWVersion = "4"',
    `ddb.geometry.cylinders = "${cyl}"`,
    'ddb.geometry.heads = "16"',
    'ddb.geometry.sectors = "63"',
    `ddb.adapterType = "${n.adapterType ?? 'ide'}"`,
    'ddb.toolsVersion = "2147483647"',
    '',
  ].join('\n');
}

/**
 * The descriptor text with the `key` line (CID or parentCID) set to `value`
 * as 8 hex digits, every other line kept as written — the way VMware and
 * QEMU update it.
 *
 * @example
 * ```ts
 * const text = withCid(d, 0xcafe0001);
 * const relinked = withCid(d, parentCid, 'parentCID');
 * ```
 */
export function withCid(d: VmdkDescriptor, value: number, key: 'CID' | 'parentCID' = 'CID'): string {
  let done = false;
  const re = new RegExp(`^\\s*${key}\\s*=`);
  const lines = d.lines.map((l) => {
    if (!done && re.test(l)) {
      done = true;
      return `${key}=${hex8(value)}${l.endsWith('\r') ? '\r' : ''}`;
    }
    return l;
  });
  if (!done) lines.splice(Math.min(lines.length, key === 'CID' ? 2 : 3), 0, `${key}=${hex8(value)}`);
  return lines.join('\n');
}

/**
 * A random content ID (never ffffffff or fffffffe, which mean "no parent").
 *
 * @example
 * ```ts
 * const cid = randomCid();
 * ```
 */
export function randomCid(avoid?: number): number {
  const a = new Uint32Array(1);
  for (;;) {
    globalThis.crypto.getRandomValues(a);
    const v = a[0]!;
    if (v !== CID_NOPARENT && v !== 0xffff_fffe && v !== avoid) return v;
  }
}
