/**
 * zstd decompression of one compressed qcow2 cluster (`compression_type=zstd`),
 * with the `fzstd` decoder (plain JS, Node and browsers). QEMU stores one
 * zstd frame followed by sector padding: the frame's end is found by
 * walking its block headers (RFC 8878 §3.1.1), so the padding is never
 * handed to the decoder, and the output is bounded by the cluster size.
 * @module
 */
import { decompress } from 'fzstd';
import { VmkitError } from '../errors.js';

/**
 * The length of the zstd frame at the start of `b`, or -1 when `b` does not
 * hold a whole well-formed frame.
 *
 * @example
 * ```ts
 * const n = zstdFrameLength(raw); // bytes of the frame; the rest is padding
 * ```
 * @internal
 */
export function zstdFrameLength(b: Uint8Array): number {
  if (b.length < 6 || b[0] !== 0x28 || b[1] !== 0xb5 || b[2] !== 0x2f || b[3] !== 0xfd) return -1;
  const fhd = b[4]!;
  if (fhd & 0x08) return -1; // reserved bit
  const single = (fhd >> 5) & 1;
  const did = [0, 1, 2, 4][fhd & 3]!;
  const fcs = [single ? 1 : 0, 2, 4, 8][fhd >> 6]!;
  let o = 5 + (single ? 0 : 1) + did + fcs;
  for (;;) {
    if (o + 3 > b.length) return -1;
    const h = b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16);
    const last = h & 1;
    const type = (h >> 1) & 3;
    const size = h >>> 3;
    if (type === 3) return -1;
    o += 3 + (type === 1 ? 1 : size);
    if (last) break;
  }
  if (fhd & 0x04) o += 4; // content checksum
  return o <= b.length ? o : -1;
}

/**
 * Decompresses the zstd frame at the start of `input` into exactly
 * `outLength` bytes; anything else is CORRUPT at `at`.
 *
 * @example
 * ```ts
 * const cluster = zstdCluster(raw, 65536, hostOffset, 'disk.qcow2');
 * ```
 * @internal
 */
export function zstdCluster(input: Uint8Array, outLength: number, at: number, path?: string): Uint8Array {
  const fail = (why: string, cause?: unknown): VmkitError =>
    new VmkitError('CORRUPT', `zstd-compressed cluster at ${at} ${why}`, { offset: at, ...(path ? { path } : {}), ...(cause ? { cause } : {}) });
  const n = zstdFrameLength(input);
  if (n < 0) throw fail('is not a whole zstd frame');
  const out = new Uint8Array(outLength);
  let r: Uint8Array;
  try {
    r = decompress(input.subarray(0, n), out);
  } catch (e) {
    throw fail(`does not decompress: ${(e as Error)?.message ?? String(e)}`, e);
  }
  if (r.length !== outLength) throw fail(`decompresses to ${r.length} bytes, expected ${outLength}`);
  return r;
}

/** The wasm encoder, loaded and initialized on the first zstd write (250 KB of wasm nothing else needs). */
let encoder: Promise<(b: Uint8Array, level: number) => Uint8Array> | undefined;

/**
 * Compresses one cluster into a single zstd frame at level 3 (zstd's
 * default, what QEMU's `compression_type=zstd` writes), with the
 * `@bokuweb/zstd-wasm` encoder (the reference C library compiled to wasm:
 * half deflate's CPU per cluster and ~10% smaller, bench/RESULTS.md convert).
 *
 * @example
 * ```ts
 * const frame = await zstdCompress(cluster); // zstdCluster(frame, cluster.length, 0) gives it back
 * ```
 * @internal
 */
export async function zstdCompress(input: Uint8Array): Promise<Uint8Array> {
  encoder ??= (async () => {
    const m = (await import('@bokuweb/zstd-wasm')) as unknown as { init(): Promise<void>; compress(b: Uint8Array, level?: number): Uint8Array };
    await m.init();
    return m.compress;
  })().catch((e: unknown) => {
    encoder = undefined;
    throw new VmkitError('UNSUPPORTED', 'zstd compression: the @bokuweb/zstd-wasm encoder did not load', { cause: e });
  });
  return (await encoder)(input, 3);
}
