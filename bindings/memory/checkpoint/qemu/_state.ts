/**
 * The checkpoint's machine-state section (docs/checkpoint-format.md,
 * "Machine state"): a 64-byte header and a chain of checked chunks holding
 * the QEMU migration stream's non-RAM bytes verbatim, a marker where the RAM
 * pages go, and a JSON metadata chunk (RAM block layout, vCPU paging
 * registers, whose public reader is state.ts).
 * @module
 */
import { VmkitError } from '../../../errors.js';
import { xxh32Of } from '../_codec.js';
import type { CheckpointReader } from '../reader.js';

/** "VMKSTATE": first 8 bytes of the section. */
export const STATE_MAGIC = 'VMKSTATE';
/** Section header bytes. */
export const STATE_HEADER = 64;
/** Chunk header bytes. */
export const CHUNK_HEADER = 16;
/** Largest chunk payload. */
export const MAX_CHUNK: number = 1 << 20;
/** Chunk kinds. */
export const CHUNK_END = 0;
export const CHUNK_STREAM = 1;
export const CHUNK_RAM = 2;
export const CHUNK_META = 3;
/** Source kind in the section header: QEMU's migration stream. */
export const SOURCE_QEMU = 1;

const te = new TextEncoder();

/** Encodes the section header. */
export function encodeStateHeader(): Uint8Array {
  const b = new Uint8Array(STATE_HEADER);
  const v = new DataView(b.buffer);
  b.set(te.encode(STATE_MAGIC), 0);
  v.setUint32(8, 1, true);
  v.setUint32(12, SOURCE_QEMU, true);
  v.setUint32(60, xxh32Of(b.subarray(0, 60)), true);
  return b;
}

/** Encodes one chunk (header + payload). */
export function encodeChunk(kind: number, payload: Uint8Array): Uint8Array {
  if (payload.length > MAX_CHUNK) throw new VmkitError('ARG_RANGE', `chunk payload over ${MAX_CHUNK} bytes`);
  const b = new Uint8Array(CHUNK_HEADER + payload.length);
  const v = new DataView(b.buffer);
  v.setUint32(0, kind, true);
  v.setUint32(4, payload.length, true);
  v.setUint32(8, xxh32Of(payload), true);
  b.set(payload, CHUNK_HEADER);
  return b;
}

/**
 * The first checkpoint of `reader`'s chain (itself, then its parents) that
 * has a machine-state section: a diff checkpoint without one shares its
 * parent's.
 * @example
 * ```ts
 * const owner = stateOwner(reader); // undefined: a plain memory checkpoint
 * ```
 */
export function stateOwner(reader: CheckpointReader): CheckpointReader | undefined {
  for (let r: CheckpointReader | undefined = reader; r; r = r.parent) if (r.stateSection) return r;
  return undefined;
}

function bad(msg: string, at: number): never {
  throw new VmkitError('CORRUPT', `checkpoint machine-state section: ${msg} (byte ${at} of the section)`, { offset: at });
}

/**
 * Walks the chunks of `reader`'s machine-state section in order, each checked
 * by its xxHash32, calling `visit` with its kind and payload (valid until the
 * callback returns). Memory: one chunk (≤ 1 MiB).
 * @example
 * ```ts
 * await walkState(reader, async (kind, payload) => { if (kind === CHUNK_STREAM) await out(payload); });
 * ```
 */
export async function walkState(reader: CheckpointReader, visit: (kind: number, payload: Uint8Array) => Promise<void> | void): Promise<void> {
  const s = reader.stateSection;
  if (!s) throw new VmkitError('NOT_FOUND', 'checkpoint has no machine-state section (not imported from a VM)');
  const h = new Uint8Array(STATE_HEADER);
  await reader.readState(0, h);
  const hv = new DataView(h.buffer);
  if (new TextDecoder().decode(h.subarray(0, 8)) !== STATE_MAGIC) bad('bad magic', 0);
  if (hv.getUint32(60, true) !== xxh32Of(h.subarray(0, 60))) {
    throw new VmkitError('INTEGRITY', 'checkpoint machine-state section: header checksum mismatch', { offset: s.offset + 60 });
  }
  if (hv.getUint32(8, true) !== 1) throw new VmkitError('UNSUPPORTED', `checkpoint machine-state section version ${hv.getUint32(8, true)}`);
  if (hv.getUint32(12, true) !== SOURCE_QEMU) throw new VmkitError('UNSUPPORTED', `checkpoint machine-state source ${hv.getUint32(12, true)}`);
  const ch = new Uint8Array(CHUNK_HEADER);
  const cv = new DataView(ch.buffer);
  let buf = new Uint8Array(64 << 10);
  for (let at = STATE_HEADER; ; ) {
    if (at + CHUNK_HEADER > s.length) bad('no end chunk', at);
    await reader.readState(at, ch);
    const kind = cv.getUint32(0, true);
    const len = cv.getUint32(4, true);
    const sum = cv.getUint32(8, true);
    if (kind > CHUNK_META || len > MAX_CHUNK || at + CHUNK_HEADER + len > s.length) bad(`chunk of kind ${kind}, ${len} bytes, out of range`, at);
    if (kind === CHUNK_END) return;
    if (buf.length < len) buf = new Uint8Array(MAX_CHUNK);
    const payload = buf.subarray(0, len);
    await reader.readState(at + CHUNK_HEADER, payload);
    if (xxh32Of(payload) !== sum) {
      throw new VmkitError('INTEGRITY', `checkpoint machine-state section: chunk checksum mismatch (byte ${at} of the section)`, { offset: s.offset + at });
    }
    await visit(kind, payload);
    at += CHUNK_HEADER + len;
  }
}
