/**
 * What every repository source needs: bounded HTTP GETs with conditional
 * headers, bounded decompression (gzip, xz, zstd) and SHA-2 hashing. Bounds
 * matter: repository metadata comes from the network, and a decompression
 * bomb or an endless body must end in a VmkitError LIMIT, not in exhausted memory.
 * @module
 */
import type { Decompress as ZstdDecompressT } from 'fzstd';
import { VmkitError } from '../../errors.js';
import { concatBytes, readCapped } from '../../_bytes.js';
import { pumpXz, xzCommand, type XzChild } from './_xz-child.js';
import { _fileFetch, _isFileUrl } from './_file-fetch.js';

export { _useSystemXz } from './_xz-child.js';

/** Options every source accepts for its network and size limits. */
export interface FetchOptions {
  /** The fetch to use (default: `globalThis.fetch`; in Node, file: URLs are read with node:fs). */
  fetch?: typeof fetch;
  /** Largest body or decompressed file accepted, in bytes (default 1 GiB). */
  maxBytes?: number;
}

/** The answer to a conditional GET. */
export interface HttpResult {
  /** 200, or 304 when the validators matched. */
  status: 200 | 304;
  body: Uint8Array;
  etag?: string;
  lastModified?: string;
}

/** Validators of the last answer, sent back as If-None-Match / If-Modified-Since. */
export interface Validators {
  etag?: string;
  lastModified?: string;
}

export const DEFAULT_MAX_BYTES: number = 1 << 30;

/**
 * GETs `url`, reading at most `maxBytes`. 404/410 → NOT_FOUND, other failures →
 * NETWORK, abort → CANCELLED, too large → LIMIT.
 * @internal
 */
export async function httpGet(url: string, opts: FetchOptions & { validators?: Validators; signal?: AbortSignal | undefined } = {}): Promise<HttpResult> {
  const f = fetchFor(url, opts);
  const max = opts.maxBytes ?? DEFAULT_MAX_BYTES;
  const headers: Record<string, string> = {};
  if (opts.validators?.etag) headers['if-none-match'] = opts.validators.etag;
  if (opts.validators?.lastModified) headers['if-modified-since'] = opts.validators.lastModified;
  let res: Response;
  try {
    res = await f(url, { headers, signal: opts.signal ?? null, redirect: 'follow' });
  } catch (e) {
    if (opts.signal?.aborted) throw new VmkitError('CANCELLED', `GET ${url} cancelled`, { cause: e, path: url });
    throw new VmkitError('NETWORK', `GET ${url} failed: ${(e as Error).message}`, { cause: e, path: url });
  }
  const v: { etag?: string; lastModified?: string } = {};
  const etag = res.headers.get('etag');
  const lm = res.headers.get('last-modified');
  if (etag) v.etag = etag;
  if (lm) v.lastModified = lm;
  if (res.status === 304) {
    await res.body?.cancel();
    return { status: 304, body: new Uint8Array(0), ...v };
  }
  if (res.status === 404 || res.status === 410) {
    await res.body?.cancel();
    throw new VmkitError('NOT_FOUND', `GET ${url}: ${res.status}`, { path: url });
  }
  if (res.status !== 200) {
    await res.body?.cancel();
    throw new VmkitError('NETWORK', `GET ${url}: HTTP ${res.status}`, { path: url });
  }
  const len = Number(res.headers.get('content-length') ?? NaN);
  if (len > max) {
    await res.body?.cancel();
    throw new VmkitError('LIMIT', `GET ${url}: ${len} bytes is more than the limit ${max}`, { path: url });
  }
  let body: Uint8Array;
  try {
    body = res.body ? await collect(res.body, max, url) : new Uint8Array(0);
  } catch (e) {
    if (e instanceof VmkitError) throw e;
    if (opts.signal?.aborted) throw new VmkitError('CANCELLED', `GET ${url} cancelled`, { cause: e, path: url });
    throw new VmkitError('NETWORK', `GET ${url}: reading the body failed: ${(e as Error).message}`, { cause: e, path: url });
  }
  return { status: 200, body, ...v };
}

/**
 * The fetch for `url`: the caller's, else node:fs for a file: URL in Node (no undici to
 * load, see _file-fetch.ts), else `globalThis.fetch`.
 * @internal
 */
export function fetchFor(url: string, opts: FetchOptions): typeof fetch {
  return opts.fetch ?? (_isFileUrl(url) ? (_fileFetch as unknown as typeof fetch) : globalThis.fetch);
}

/** Reads a stream to its end, refusing more than `max` bytes (LIMIT). */
export function collect(stream: ReadableStream<Uint8Array>, max: number, what: string): Promise<Uint8Array> {
  return readCapped(stream, max, () => new VmkitError('LIMIT', `${what}: more than the limit of ${max} bytes`, { path: what }));
}

// A source of one chunk, for the streaming paths fed from a whole buffer.
function once(data: Uint8Array): () => Promise<Uint8Array | undefined> {
  let given = false;
  return async () => (given ? undefined : ((given = true), data));
}

// The child's pushed output as a pulled generator: at most a few chunks wait (the child's
// output pauses until they are taken), and a consumer that stops early stops the child.
async function* xzChunks(spawn: () => XzChild, data: Uint8Array, what: string): AsyncGenerator<Uint8Array> {
  const WAITING = 4;
  const queue: Uint8Array[] = [];
  let room: { resolve(): void; reject(e: unknown): void } | undefined;
  let wake: (() => void) | undefined;
  let quit = false;
  let end: { error?: unknown } | undefined;
  const stopped = (): Error => new Error(`${what}: the reader stopped`);
  void pumpXz(spawn, once(data), (c) => {
    if (quit) throw stopped();
    queue.push(c);
    wake?.();
    return queue.length < WAITING ? undefined : new Promise<void>((resolve, reject) => (room = { resolve, reject }));
  }, what).then(
    () => ((end = {}), wake?.()),
    (error: unknown) => ((end = { error }), wake?.()),
  );
  try {
    for (;;) {
      const c = queue.shift();
      if (c) {
        room?.resolve();
        room = undefined;
        yield c;
        continue;
      }
      if (end) {
        if (end.error !== undefined) throw end.error;
        return;
      }
      await new Promise<void>((r) => (wake = r));
      wake = undefined;
    }
  } finally {
    if (!end) {
      quit = true;
      room?.reject(stopped());
    }
  }
}

/** Compression of a repository file, from its name. */
export type Compression = 'none' | 'gz' | 'xz' | 'zst';

/** The compression a file name says (`Packages.xz` → xz). @internal */
export function compressionOf(name: string): Compression | undefined {
  if (name.endsWith('.gz')) return 'gz';
  if (name.endsWith('.xz')) return 'xz';
  if (name.endsWith('.zst')) return 'zst';
  if (/\.(bz2|lzma|lz4|zck)$/.test(name)) return undefined;
  return 'none';
}

type XzCtor = new (s: ReadableStream<Uint8Array>) => ReadableStream<Uint8Array>;
// The in-process decoders load when first needed: most runs never use them (Node's large xz goes
// to the system's xz), and loading both cost ~100 ms of a CLI start.
let xzCtor: XzCtor | undefined;
async function xzReadableStream(): Promise<XzCtor> {
  if (!xzCtor) {
    const xzns = await import('xz-decompress');
    // xz-decompress is CommonJS: its class is a named export under bundlers and a
    // property of the default export under Node.
    xzCtor = ((xzns as unknown as Record<string, unknown>).XzReadableStream ??
      ((xzns as unknown as { default?: Record<string, unknown> }).default?.XzReadableStream)) as XzCtor;
  }
  return xzCtor;
}
let zstdCtor: typeof ZstdDecompressT | undefined;
async function zstdDecompress(): Promise<typeof ZstdDecompressT> {
  return (zstdCtor ??= (await import('fzstd')).Decompress);
}

/**
 * Decompresses `data`, producing at most `max` bytes (LIMIT past that);
 * malformed input → CORRUPT.
 * @internal
 */
export async function decompress(data: Uint8Array, kind: Compression, max: number, what: string): Promise<Uint8Array> {
  if (kind === 'none') {
    if (data.length > max) throw new VmkitError('LIMIT', `${what}: more than the limit of ${max} bytes`, { path: what });
    return data;
  }
  try {
    if (kind === 'zst') return zstd(await zstdDecompress(), data, max, what);
    const xz = kind === 'xz' ? await xzCommand(data.length) : undefined;
    if (xz) {
      const parts: Uint8Array[] = [];
      let n = 0;
      await pumpXz(xz, once(data), (c) => {
        n += c.length;
        if (n > max) throw new VmkitError('LIMIT', `${what}: more than the limit of ${max} bytes`, { path: what });
        parts.push(c);
      }, what);
      return parts.length === 1 ? parts[0]! : concatBytes(parts, n);
    }
    const src = new Blob([data as Uint8Array<ArrayBuffer>]).stream();
    const s = kind === 'gz' ? src.pipeThrough(new DecompressionStream('gzip')) : new (await xzReadableStream())(src);
    return await collect(s as ReadableStream<Uint8Array>, max, what);
  } catch (e) {
    if (e instanceof VmkitError) throw e;
    throw new VmkitError('CORRUPT', `${what}: not valid ${kind} data: ${(e as Error).message}`, { cause: e, path: what });
  }
}

/** An in-process decompressor fed and read chunk by chunk (see {@link decompressorStream}). @internal */
export interface ChunkDecompressor {
  /** Feeds compressed bytes (resolves when there is room for more). */
  write(c: Uint8Array): Promise<void>;
  /** No more input. */
  end(): Promise<void>;
  /** The next decompressed chunk, undefined at the end; CORRUPT on bad data. */
  read(): Promise<Uint8Array | undefined>;
  /** Stops both sides. */
  abort(reason: unknown): void;
}

/**
 * An in-process decompressor for `kind` (gzip: DecompressionStream, xz: the
 * wasm xz-embedded, zstd: fzstd) driven by writes and reads.
 * @internal
 */
export async function decompressorStream(kind: Exclude<Compression, 'none'>, what: string): Promise<ChunkDecompressor> {
  const bad = (e: unknown): VmkitError =>
    e instanceof VmkitError ? e : new VmkitError('CORRUPT', `${what}: not valid ${kind} data: ${(e as Error)?.message ?? String(e)}`, { cause: e, path: what });
  if (kind === 'zst') {
    const queue: Uint8Array[] = [];
    let ended = false;
    let failed: unknown;
    let wake: (() => void) | undefined;
    const Zstd = await zstdDecompress();
    const d = new Zstd((chunk) => {
      queue.push(chunk);
    });
    let first = true;
    const push = (c: Uint8Array, final: boolean): void => {
      try {
        if (first && c.length) zstdFrameCheck(c, Number.MAX_SAFE_INTEGER, what);
        first = first && c.length === 0;
        d.push(c, final);
      } catch (e) {
        failed = bad(e);
      }
      wake?.();
    };
    return {
      write: async (c) => push(c, false),
      end: async () => {
        push(new Uint8Array(0), true);
        ended = true;
        wake?.();
      },
      read: async () => {
        for (;;) {
          if (queue.length) return queue.shift()!;
          if (failed) throw failed;
          if (ended) return undefined;
          await new Promise<void>((r) => (wake = r));
          wake = undefined;
        }
      },
      abort: (e) => {
        failed ??= e;
        ended = true;
        wake?.();
      },
    };
  }
  const ts = new TransformStream<Uint8Array, Uint8Array>();
  const writer = ts.writable.getWriter();
  const src = ts.readable as ReadableStream<Uint8Array>;
  const out = (kind === 'gz' ? src.pipeThrough(new DecompressionStream('gzip') as unknown as TransformStream<Uint8Array, Uint8Array>) : new (await xzReadableStream())(src)) as ReadableStream<Uint8Array>;
  const reader = out.getReader();
  return {
    write: async (c) => {
      try {
        await writer.write(c);
      } catch (e) {
        throw bad(e);
      }
    },
    end: async () => {
      try {
        await writer.close();
      } catch (e) {
        throw bad(e);
      }
    },
    read: async () => {
      try {
        const r = await reader.read();
        return r.done ? undefined : r.value;
      } catch (e) {
        throw bad(e);
      }
    },
    abort: (e) => {
      writer.abort(e).catch(() => {});
      reader.cancel(e).catch(() => {});
    },
  };
}

/**
 * Decompresses `data` as a sequence of chunks (for streaming parsers: the
 * whole output never has to be in memory at once). At most `max` bytes in all
 * (LIMIT past that); malformed input → CORRUPT.
 * @internal
 */
export async function* decompressChunks(data: Uint8Array, kind: Compression, max: number, what: string): AsyncGenerator<Uint8Array> {
  const CH = 1 << 20;
  let n = 0;
  const count = (c: Uint8Array): Uint8Array => {
    n += c.length;
    if (n > max) throw new VmkitError('LIMIT', `${what}: more than the limit of ${max} bytes`, { path: what });
    return c;
  };
  try {
    if (kind === 'none') {
      for (let o = 0; o < data.length; o += CH) yield count(data.subarray(o, o + CH));
      return;
    }
    if (kind === 'zst') {
      zstdFrameCheck(data, max, what);
      const out: Uint8Array[] = [];
      const Zstd = await zstdDecompress();
      const d = new Zstd((chunk) => {
        out.push(count(chunk));
      });
      for (let o = 0; o < data.length; o += CH) {
        d.push(data.subarray(o, o + CH), o + CH >= data.length);
        while (out.length) yield out.shift()!;
      }
      if (data.length === 0) d.push(new Uint8Array(0), true);
      return;
    }
    const xz = kind === 'xz' ? await xzCommand(data.length) : undefined;
    if (xz) {
      for await (const c of xzChunks(xz, data, what)) yield count(c);
      return;
    }
    const src = new Blob([data as Uint8Array<ArrayBuffer>]).stream();
    const s = (kind === 'gz' ? src.pipeThrough(new DecompressionStream('gzip')) : new (await xzReadableStream())(src)) as ReadableStream<Uint8Array>;
    const reader = s.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        yield count(value);
      }
    } finally {
      await reader.cancel().catch(() => {});
    }
  } catch (e) {
    if (e instanceof VmkitError) throw e;
    throw new VmkitError('CORRUPT', `${what}: not valid ${kind} data: ${(e as Error).message}`, { cause: e, path: what });
  }
}

function zstdFrameCheck(data: Uint8Array, max: number, what: string): void {
  // fzstd allocates a frame's declared content size up front: refuse an absurd
  // one before it does (RFC 8878 §3.1.1.1: Frame_Header_Descriptor, FCS field).
  if (data.length >= 6 && data[0] === 0x28 && data[1] === 0xb5 && data[2] === 0x2f && data[3] === 0xfd) {
    const fhd = data[4]!;
    const fcsFlag = fhd >> 6;
    const single = (fhd >> 5) & 1;
    const didFlag = fhd & 3;
    const o = 5 + (single ? 0 : 1) + [0, 1, 2, 4][didFlag]!;
    const fcsLen = [single ? 1 : 0, 2, 4, 8][fcsFlag]!;
    if (fcsLen > 0 && o + fcsLen <= data.length) {
      let fcs = 0;
      for (let i = fcsLen - 1; i >= 0; i--) fcs = fcs * 256 + data[o + i]!;
      if (fcsLen === 2) fcs += 256;
      if (fcs > max) throw new VmkitError('LIMIT', `${what}: zstd frame declares ${fcs} bytes, more than the limit of ${max}`, { path: what });
    }
  }
}

function zstd(ZstdDecompress: typeof ZstdDecompressT, data: Uint8Array, max: number, what: string): Uint8Array {
  const parts: Uint8Array[] = [];
  let n = 0;
  zstdFrameCheck(data, max, what);
  const d = new ZstdDecompress((chunk) => {
    n += chunk.length;
    if (n > max) throw new VmkitError('LIMIT', `${what}: more than the limit of ${max} bytes`, { path: what });
    parts.push(chunk);
  });
  d.push(data, true);
  return concatBytes(parts, n);
}

type NodeHash = (alg: string) => { update(d: Uint8Array): { digest(): Uint8Array } };
let nodeHash: NodeHash | null | undefined;

/**
 * SHA-256 (or another SHA) of `data`, raw bytes: node:crypto where there is
 * one (synchronous, about 7× faster than WebCrypto for the many small files of
 * a package), WebCrypto elsewhere.
 * @internal
 */
export async function sha(alg: 'SHA-256' | 'SHA-512' | 'SHA-1', data: Uint8Array): Promise<Uint8Array> {
  if (nodeHash === undefined) {
    nodeHash = null;
    if (typeof process !== 'undefined' && process.versions?.node) {
      try {
        // Hidden from bundlers so browser builds do not try to resolve node:crypto.
        const name = 'node:crypto';
        const m = (await import(/* @vite-ignore */ name)) as { createHash: NodeHash; hash?: (alg: string, d: Uint8Array, enc: 'buffer') => Uint8Array };
        nodeHash = m.createHash;
        // The one-shot hash (Node ≥ 20.12) skips a Hash object per call: ~2× for small files.
        const one = m.hash;
        if (typeof one === 'function') nodeHash = (alg) => ({ update: (d) => ({ digest: () => one(alg, d, 'buffer') }) });
      } catch {
        nodeHash = null;
      }
    }
  }
  if (nodeHash) return new Uint8Array(nodeHash(alg.replace('-', '').toLowerCase()).update(data).digest());
  return new Uint8Array(await globalThis.crypto.subtle.digest(alg, data as Uint8Array<ArrayBuffer>));
}

/** Joins a base URL and a relative path with exactly one slash. @internal */
export function joinUrl(base: string, path: string): string {
  return base.replace(/\/+$/, '') + '/' + path.replace(/^\/+/, '');
}

/** Constant-shape comparison of two byte arrays. @internal */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i]! ^ b[i]!;
  return d === 0;
}
