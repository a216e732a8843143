/**
 * Writing a streamOptimized VMDK (the disk an OVA carries) from any block
 * device, front to back, as VMware's OVF tools lay it out: header with the
 * grain directory "at the end", descriptor, each non-zero grain as a marker
 * and a zlib stream, then the grain tables and the directory behind their
 * markers, a footer (the header with the real directory offset) and the
 * end-of-stream marker. QEMU and VMware read this layout (stream.ts reads
 * it back). docs/vmdk.md.
 * @module
 */
import { VmkitError } from '../../../errors.js';
import type { Storage } from '../../backends/storage.js';
import type { BlockDevice } from '../../device.js';
import { deflateRaw } from '../../_inflate.js';
import { encodeDescriptor, randomCid, CID_NOPARENT } from './descriptor.js';
import { encodeVmdkHeader, FLAG_COMPRESS, FLAG_MARKER, FLAG_NL_DETECT, geometry, type VmdkHeader } from './header.js';
import { MARKER_EOS, MARKER_FOOTER, MARKER_GD, MARKER_GT } from './stream.js';

/** Options of {@link writeStream}. */
export interface WriteStreamOptions {
  /** Grain size in bytes (default 64 KiB, as VMware and QEMU). */
  grainSize?: number;
  /** Adapter type recorded in the disk database (default lsilogic, as OVF tools). */
  adapterType?: 'ide' | 'buslogic' | 'lsilogic' | 'legacyESX';
}

type Zlib = typeof import('node:zlib');
let nodeZlib: Zlib | null | undefined;
/** node:zlib where there is one (its deflateSync writes the zlib wrapper natively), else null. */
async function zlibOf(): Promise<Zlib | null> {
  if (nodeZlib !== undefined) return nodeZlib;
  const isNode = typeof process !== 'undefined' && typeof process.versions?.node === 'string';
  const name = 'node:zlib';
  nodeZlib = isNode ? ((await import(/* @vite-ignore */ name).catch(() => null)) as Zlib | null) : null;
  return nodeZlib;
}

/** A zlib stream (RFC 1950) of `data`: node:zlib's, or raw deflate with the header and Adler-32 added. */
async function zlibStream(data: Uint8Array): Promise<Uint8Array> {
  const z = await zlibOf();
  if (z) return new Uint8Array(z.deflateSync(data));
  const raw = await deflateRaw(data);
  const out = new Uint8Array(2 + raw.length + 4);
  out[0] = 0x78; // deflate, 32 KiB window, default level (0x789c % 31 === 0)
  out[1] = 0x9c;
  out.set(raw, 2);
  new DataView(out.buffer).setUint32(2 + raw.length, adler32(data), false);
  return out;
}

/** Adler-32 of `b` (the zlib stream trailer). */
function adler32(b: Uint8Array): number {
  let a = 1;
  let s = 0;
  for (let i = 0; i < b.length; ) {
    const end = Math.min(b.length, i + 5552);
    for (; i < end; i++) {
      a += b[i]!;
      s += a;
    }
    a %= 65521;
    s %= 65521;
  }
  return ((s << 16) | a) >>> 0;
}

/**
 * Writes `src` (its whole size, a multiple of 512) to `storage` as a
 * streamOptimized VMDK. All-zero and unallocated grains are left out.
 * Resolves to the bytes written.
 *
 * @example
 * ```ts
 * const src = await openImage('vm.qcow2', { readOnly: true });
 * await writeStream(src, await FileStorage.create('vm-disk1.vmdk'));
 * ```
 */
export async function writeStream(src: BlockDevice, storage: Storage, opts: WriteStreamOptions = {}): Promise<number> {
  const gb = opts.grainSize ?? 65536;
  if (!Number.isSafeInteger(gb) || gb < 4096 || gb > 1 << 20 || (gb & (gb - 1)) !== 0) throw new VmkitError('ARG_RANGE', `grainSize ${gb} must be a power of two in 4 KiB..1 MiB`);
  if (src.size % 512 !== 0) throw new VmkitError('ARG_RANGE', `source size ${src.size} is not a multiple of 512`);
  if (src.size > 2 ** 41) throw new VmkitError('LIMIT', `source size ${src.size}: a stream holds at most 2 TiB (32-bit sector offsets)`);
  const capacity = src.size / 512;
  const h: VmdkHeader = {
    version: 3,
    flags: FLAG_NL_DETECT | FLAG_COMPRESS | FLAG_MARKER,
    capacity,
    grainSize: gb / 512,
    descriptorOffset: 1,
    descriptorSize: 2,
    numGTEsPerGT: 512,
    rgdOffset: 0,
    gdOffset: 0,
    overHead: 0,
    uncleanShutdown: 0,
    compressAlgorithm: 1,
  };
  const g = geometry(h);
  h.overHead = Math.ceil((1 + h.descriptorSize) / 128) * 128;
  const name = storage.name.split(/[\\/]/).pop() ?? storage.name;
  const desc = new TextEncoder().encode(
    encodeDescriptor({ cid: randomCid(), parentCid: CID_NOPARENT, createType: 'streamOptimized', sectors: capacity, extentFile: name, adapterType: opts.adapterType ?? 'lsilogic' }),
  );
  if (desc.length > h.descriptorSize * 512) throw new VmkitError('ARG_RANGE', 'vmdk: the descriptor does not fit (file name too long?)');
  await storage.truncate(0);
  let at = 0; // bytes written so far (always a multiple of 512)
  const put = async (b: Uint8Array): Promise<number> => {
    const padded = b.length % 512 === 0 ? b : (() => {
      const p = new Uint8Array(Math.ceil(b.length / 512) * 512);
      p.set(b);
      return p;
    })();
    const sec = at / 512;
    await storage.write(at, padded);
    at += padded.length;
    return sec;
  };
  const marker = (sectors: number, type: number): Uint8Array => {
    const m = new Uint8Array(512);
    const dv = new DataView(m.buffer);
    dv.setBigUint64(0, BigInt(sectors), true);
    dv.setUint32(12, type, true);
    return m;
  };
  const headerAtEnd = encodeVmdkHeader(h);
  new DataView(headerAtEnd.buffer).setBigUint64(56, 0xffff_ffff_ffff_ffffn, true);
  await put(headerAtEnd);
  const d = new Uint8Array(h.descriptorSize * 512);
  d.set(desc);
  await put(d);
  await put(new Uint8Array(h.overHead * 512 - at));
  const gte = new Uint32Array(g.gdEntries * h.numGTEsPerGT);
  const buf = new Uint8Array(gb);
  for (let grain = 0; grain < g.grains; grain++) {
    const off = grain * gb;
    const len = Math.min(gb, src.size - off);
    // Unallocated or zero ranges are skipped without reading them.
    const st = await src.blockStatus(off, len);
    if ((st.kind === 'zero' || st.kind === 'unallocated') && st.length >= len) continue;
    const data = buf.subarray(0, len);
    await src.readInto(off, data);
    if (data.every((x) => x === 0)) continue;
    const z = await zlibStream(data);
    const m = new Uint8Array(12 + z.length);
    const dv = new DataView(m.buffer);
    dv.setBigUint64(0, BigInt(grain * h.grainSize), true);
    dv.setUint32(8, z.length, true);
    m.set(z, 12);
    if (at / 512 > 0xffff_ffff) throw new VmkitError('LIMIT', `vmdk ${storage.name}: the stream passes 2 TiB (32-bit sector offsets)`, { path: storage.name });
    gte[grain] = await put(m);
  }
  const gd = new Uint32Array(g.gdEntries);
  const gtSectors = g.gtBytes / 512;
  for (let t = 0; t < g.gdEntries; t++) {
    await put(marker(gtSectors, MARKER_GT));
    const tb = new Uint8Array(g.gtBytes);
    const tv = new DataView(tb.buffer);
    for (let i = 0; i < h.numGTEsPerGT; i++) tv.setUint32(i * 4, gte[t * h.numGTEsPerGT + i]!, true);
    gd[t] = await put(tb);
  }
  await put(marker(g.gdBytes / 512, MARKER_GD));
  const gdb = new Uint8Array(g.gdBytes);
  const gdv = new DataView(gdb.buffer);
  for (let t = 0; t < g.gdEntries; t++) gdv.setUint32(t * 4, gd[t]!, true);
  h.gdOffset = await put(gdb);
  await put(marker(1, MARKER_FOOTER));
  await put(encodeVmdkHeader(h));
  await put(marker(0, MARKER_EOS));
  await storage.flush();
  return at;
}
