/**
 * QEMU's vmdesc: the JSON description of every device section's fields that
 * QEMU appends to its migration stream (after QEMU_VM_EOF: byte 0x06, be32
 * length, the JSON), as `scripts/analyze-migration.py` reads it. Device
 * sections are not self-delimiting; the vmdesc gives each field's size, so a
 * section's length is the sum of its fields and of its subsections' headers
 * and fields.
 * @module
 */
import { VmkitError } from '../../../errors.js';

/** QEMU_VM_VMDESCRIPTION. */
const VMDESC = 0x06;
/** The largest vmdesc read (a PC's is ~100 KiB). */
export const MAX_VMDESC: number = 16 << 20;

/** A vmdesc field. */
interface Field {
  name: string;
  type?: string;
  size: number;
  array_len?: number;
}

/** A vmdesc (sub)section description. */
interface Vmsd {
  vmsd_name: string;
  fields?: Field[];
  subsections?: Vmsd[];
}

/** One device of the vmdesc. */
export interface VmdescDevice extends Vmsd {
  name: string;
  instance_id: number;
  version: number;
}

/** The parsed vmdesc. */
export interface Vmdesc {
  pageSize: number;
  devices: VmdescDevice[];
  /** Stream offset of the 0x06 byte before the JSON. */
  offset: number;
}

/**
 * Finds and parses the vmdesc at the end of the stream: the JSON runs to the
 * end of the file and holds no NUL byte, so it starts at the first `{` after
 * the last NUL of the tail, and the 5 bytes before it must be 0x06 and its
 * length. `readAt` serves stream offsets `[from, size)`.
 * @example
 * ```ts
 * const d = readVmdesc((dst, pos) => readSync(fd, dst, 0, dst.length, pos), size);
 * ```
 */
export function readVmdesc(readAt: (dst: Uint8Array, position: number) => number, size: number, from: number = 0): Vmdesc {
  const n = Math.min(size - from, MAX_VMDESC + 5);
  const tail = new Uint8Array(n);
  for (let got = 0; got < n; ) {
    const k = readAt(tail.subarray(got), size - n + got);
    if (k <= 0) throw new VmkitError('IO', 'QEMU migration stream: short read of the vmdesc');
    got += k;
  }
  const nul = tail.lastIndexOf(0);
  const j = tail.indexOf(0x7b, nul + 1);
  const at = size - n + j - 5;
  if (nul < 0 || j < 5 || tail[j - 5] !== VMDESC || new DataView(tail.buffer).getUint32(j - 4) !== n - j) {
    throw new VmkitError('UNSUPPORTED', `QEMU migration stream: no vmdesc at its end (truncated, suppress-vmdesc, postcopy, or not a stream) (vmdesc, byte offset ${size})`, {
      offset: size,
    });
  }
  let json: { page_size?: number; devices?: VmdescDevice[] };
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(tail.subarray(j)));
  } catch (e) {
    throw new VmkitError('CORRUPT', `QEMU migration stream: the vmdesc is not JSON (vmdesc, byte offset ${at})`, { offset: at, cause: e });
  }
  if (!json || typeof json.page_size !== 'number' || !Array.isArray(json.devices)) {
    throw new VmkitError('CORRUPT', `QEMU migration stream: vmdesc without page_size/devices (vmdesc, byte offset ${at})`, { offset: at });
  }
  return { pageSize: json.page_size, devices: json.devices, offset: at };
}

function fieldBytes(f: Field, where: string): number {
  const n = f.array_len ?? 1;
  if (!Number.isSafeInteger(f.size) || f.size < 0 || !Number.isSafeInteger(n) || n < 0) {
    throw new VmkitError('CORRUPT', `QEMU migration stream: vmdesc field ${where}.${f.name} has no valid size`);
  }
  return f.size * n;
}

/**
 * Bytes of a (sub)section's data as the vmdesc describes it: its fields,
 * then each subsection as 0x05, u8 name length, name, be32 version, fields.
 * @example
 * ```ts
 * const len = vmsdBytes(device);
 * ```
 */
export function vmsdBytes(d: Vmsd): number {
  let n = 0;
  for (const f of d.fields ?? []) n += fieldBytes(f, d.vmsd_name);
  for (const s of d.subsections ?? []) n += 2 + new TextEncoder().encode(s.vmsd_name).length + 4 + vmsdBytes(s);
  return n;
}

/**
 * Byte offset and size of each top-level field named in `names` within a
 * device section's data (first match).
 * @example
 * ```ts
 * const at = fieldOffsets(cpuDevice, ['env.cr[3]']).get('env.cr[3]');
 * ```
 */
export function fieldOffsets(d: Vmsd, names: readonly string[]): Map<string, { offset: number; size: number }> {
  const out = new Map<string, { offset: number; size: number }>();
  let off = 0;
  for (const f of d.fields ?? []) {
    if (names.includes(f.name) && !out.has(f.name)) out.set(f.name, { offset: off, size: f.size });
    off += fieldBytes(f, d.vmsd_name);
  }
  return out;
}

/**
 * A lookup of vmdesc devices by section idstr and instance id.
 * @example
 * ```ts
 * const dev = devicesByKey(desc).get('cpu\0' + 0);
 * ```
 */
export function devicesByKey(d: Vmdesc): Map<string, VmdescDevice> {
  const m = new Map<string, VmdescDevice>();
  for (const dev of d.devices) {
    if (!dev || typeof dev.name !== 'string') throw new VmkitError('CORRUPT', 'QEMU migration stream: vmdesc device without a name');
    m.set(`${dev.name}\0${dev.instance_id}`, dev);
  }
  return m;
}
