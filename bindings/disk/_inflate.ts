/**
 * Raw deflate (RFC 1951) decompression for compressed qcow2 clusters, behind
 * one small function: `node:zlib`'s inflateRawSync in Node, the
 * `DecompressionStream('deflate-raw')` everywhere else.
 * @module
 */
import { VmkitError } from '../errors.js';
import { nodeModule } from '../_node.js';

type Zlib = typeof import('node:zlib');
let zlib: Zlib | null | undefined;

async function nodeZlib(): Promise<Zlib | null> {
  if (zlib !== undefined) return zlib;
  const isNode = typeof process !== 'undefined' && typeof process.versions?.node === 'string';
  if (!isNode) return (zlib = null);
  try {
    zlib = await nodeModule<Zlib>('node:zlib');
  } catch {
    zlib = null;
  }
  return zlib;
}

/** Outputs from this size up inflate off the calling thread in Node. */
const _OFFLOAD_BYTES = 16 * 1024;

/**
 * Inflates a raw deflate stream into exactly `outLength` bytes. The input may
 * carry trailing bytes (qcow2 stores whole sectors); output beyond
 * `outLength` or a broken stream is CORRUPT at `at`.
 * @internal
 */
export async function inflateRaw(input: Uint8Array, outLength: number, at: number, path?: string): Promise<Uint8Array> {
  const fail = (e: unknown): VmkitError =>
    new VmkitError('CORRUPT', `compressed cluster at ${at} does not inflate: ${(e as Error)?.message ?? String(e)}`, {
      offset: at,
      cause: e,
      ...(path ? { path } : {}),
    });
  const z = await nodeZlib();
  let out: Uint8Array;
  if (z) {
    try {
      // finishFlush: Z_SYNC_FLUSH tolerates the sector padding after the stream's end.
      const o = { finishFlush: z.constants.Z_SYNC_FLUSH, maxOutputLength: outLength };
      // A large output inflates on libuv's thread pool, so several grains or clusters read
      // concurrently (a convert's reads in flight) inflate on several cores while this thread
      // goes on with I/O; a small one costs less inline than the pool's round trip.
      out =
        outLength >= _OFFLOAD_BYTES
          ? await new Promise<Uint8Array>((res, rej) => z.inflateRaw(input, o, (err, b) => (err ? rej(err) : res(b))))
          : z.inflateRawSync(input, o);
    } catch (e) {
      if ((e as NodeJS.ErrnoException)?.code === 'ERR_BUFFER_TOO_LARGE') throw fail(new Error('inflates past the cluster size'));
      throw fail(e);
    }
  } else {
    out = await inflateStream(input, outLength).catch((e: unknown) => {
      throw fail(e);
    });
  }
  if (out.length !== outLength) throw fail(new Error(`inflated to ${out.length} bytes, expected ${outLength}`));
  return out;
}

async function inflateStream(input: Uint8Array, outLength: number): Promise<Uint8Array> {
  const ds = new DecompressionStream('deflate-raw' as CompressionFormat);
  const writer = ds.writable.getWriter();
  // Trailing padding after the final block makes the stream error at close: ignore that.
  writer.write(input as Uint8Array<ArrayBuffer>).catch(() => {});
  writer.close().catch(() => {});
  const reader = ds.readable.getReader();
  const out = new Uint8Array(outLength);
  let n = 0;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      if (n + value.length > outLength) throw new Error('inflates past the cluster size');
      out.set(value, n);
      n += value.length;
      if (n === outLength) break;
    }
  } catch (e) {
    if (n !== outLength) throw e;
  } finally {
    reader.cancel().catch(() => {});
  }
  return out.subarray(0, n);
}

/**
 * Raw deflate compression (for writing compressed qcow2 clusters), at the
 * default level: `node:zlib` in Node, `CompressionStream('deflate-raw')`
 * elsewhere.
 * @internal
 */
export async function deflateRaw(input: Uint8Array): Promise<Uint8Array> {
  const z = await nodeZlib();
  if (z) return new Uint8Array(z.deflateRawSync(input));
  const cs = new CompressionStream('deflate-raw' as CompressionFormat);
  const res = new Response(new Blob([input as Uint8Array<ArrayBuffer>]).stream().pipeThrough(cs));
  return new Uint8Array(await res.arrayBuffer());
}
