/**
 * A signed repository file fetched, checked and decompressed as its bytes
 * arrive: the body is hashed chunk by chunk while it is decompressed and
 * handed on, so neither the compressed file nor its text is ever held whole.
 *
 * ```
 *  HTTP body ──chunk──► SHA-256 (running) ──► size count ≤ signed size
 *      │
 *      └──────chunk──► decompressor ─────► onChunk(text bytes) ─► parser ─► new index
 *                      (`xz -dc` child in Node; wasm xz,
 *                       DecompressionStream, fzstd elsewhere)
 *  end of body: size and SHA-256 against the signed release file
 *      mismatch ─► INTEGRITY   (whatever the parser built is thrown away by the caller)
 *      match, but the decompressor or parser failed ─► that error (CORRUPT, LIMIT)
 * ```
 * A failure before the end (bad xz, a parse error) does not decide alone: the
 * rest of the body is read through the hash first, so a file that is not the
 * signed one is INTEGRITY, as when the whole file was checked before parsing.
 *
 * {@link _streamUnsigned} is the same stream before the release file is known
 * (a prefetch): it reports the size and SHA-256 it saw, and its caller keeps
 * what was built only when the verified release file signs exactly those.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { decompressorStream, fetchFor, type Compression, type FetchOptions } from './_io.js';
import { pumpXz, xzCommand } from './_xz-child.js';
import { hexInto } from '../index-store.js';

/** What the release file signs for one file. @internal */
export interface SignedFile {
  /** Signed size, bytes. */
  size: number;
  /** Signed SHA-256 (hex) of the bytes as fetched (compressed). */
  sha256: string;
}

/** Options of {@link _streamSigned}. @internal */
export interface StreamSignedOptions extends FetchOptions {
  signal?: AbortSignal | undefined;
  /** Most decompressed bytes (LIMIT past that). */
  max: number;
  /** Name for messages (the file's path in the repository). */
  what: string;
  /** Message prefix (the source id). */
  id: string;
}

interface RunningHash {
  update(b: Uint8Array): void;
  digest(): Promise<Uint8Array>;
}

type NodeCreateHash = (alg: string) => { update(d: Uint8Array): unknown; digest(): Uint8Array };
let createHash: NodeCreateHash | null | undefined;

// node:crypto's incremental hash; elsewhere (WebCrypto hashes whole buffers only) the chunks are
// kept, compressed, and hashed at the end: the compressed file is a fifth of its text.
async function runningSha256(): Promise<RunningHash> {
  if (createHash === undefined) {
    createHash = null;
    if (typeof process !== 'undefined' && process.versions?.node) {
      try {
        const name = 'node:crypto'; // hidden from bundlers
        createHash = ((await import(/* @vite-ignore */ name)) as { createHash: NodeCreateHash }).createHash;
      } catch {
        createHash = null;
      }
    }
  }
  if (createHash) {
    const h = createHash('sha256');
    return { update: (b) => void h.update(b), digest: async () => new Uint8Array(h.digest()) };
  }
  const parts: Uint8Array[] = [];
  let n = 0;
  return {
    update: (b) => {
      parts.push(b.slice());
      n += b.length;
    },
    digest: async () => {
      const all = new Uint8Array(n);
      let o = 0;
      for (const p of parts) {
        all.set(p, o);
        o += p.length;
      }
      return new Uint8Array(await globalThis.crypto.subtle.digest('SHA-256', all));
    },
  };
}

/**
 * GETs `url`, a file the release file signs as `signed`, and passes its
 * decompressed bytes to `onChunk` as they arrive (`onChunk` may throw: the
 * stream stops). Resolves once the whole body matched the signed size and
 * SHA-256. Throws NOT_FOUND (404/410, before any byte reached `onChunk`),
 * INTEGRITY (not the signed file), CORRUPT (bad compressed data), LIMIT,
 * NETWORK, CANCELLED, or what `onChunk` threw.
 * @internal
 */
export async function _streamSigned(url: string, signed: SignedFile, kind: Compression, o: StreamSignedOptions, onChunk: (c: Uint8Array) => void): Promise<void> {
  await stream(url, signed, kind, o, onChunk);
}

/**
 * What {@link _streamUnsigned} saw of a body: its size and SHA-256, to be
 * compared with the release file once that is verified. @internal
 */
export interface SeenFile {
  size: number;
  sha256: Uint8Array;
}

/**
 * {@link _streamSigned} for a file the release file has not signed yet (a
 * prefetch beside the release file's fetch and signature check): the body is
 * hashed and counted as it is decompressed into `onChunk`, up to the source's
 * byte limit, and the size and SHA-256 seen are returned. Nothing built from
 * it may be used until the verified release file lists exactly that size and
 * SHA-256 for this file. Throws as {@link _streamSigned} (never INTEGRITY).
 * @internal
 */
export async function _streamUnsigned(url: string, kind: Compression, o: StreamSignedOptions, onChunk: (c: Uint8Array) => void): Promise<SeenFile> {
  return stream(url, undefined, kind, o, onChunk);
}

async function stream(url: string, signed: SignedFile | undefined, kind: Compression, o: StreamSignedOptions, onChunk: (c: Uint8Array) => void): Promise<SeenFile> {
  const own = o.maxBytes ?? 1 << 30;
  // Unsigned (a prefetch): bounded by the source's own limit; past it LIMIT, not INTEGRITY.
  const cap = signed ? signed.size : own;
  const notSigned = (why: string): VmkitError =>
    new VmkitError('INTEGRITY', `${o.id}: ${o.what} does not match the SHA256 and size in the signed release file (${why})`, { path: o.what });
  const longer = (): VmkitError =>
    signed
      ? new VmkitError('INTEGRITY', `${o.id}: ${o.what} is longer than the ${signed.size} bytes the signed release file gives`, { path: o.what })
      : new VmkitError('LIMIT', `GET ${url}: more than the limit of ${own} bytes`, { path: url });
  const f = fetchFor(url, o);
  let res: Response;
  try {
    res = await f(url, { signal: o.signal ?? null, redirect: 'follow' });
  } catch (e) {
    if (o.signal?.aborted) throw new VmkitError('CANCELLED', `GET ${url} cancelled`, { cause: e, path: url });
    throw new VmkitError('NETWORK', `GET ${url} failed: ${(e as Error).message}`, { cause: e, path: url });
  }
  if (res.status !== 200) {
    await res.body?.cancel();
    if (res.status === 404 || res.status === 410) throw new VmkitError('NOT_FOUND', `GET ${url}: ${res.status}`, { path: url });
    throw new VmkitError('NETWORK', `GET ${url}: HTTP ${res.status}`, { path: url });
  }
  const declared = Number(res.headers.get('content-length') ?? NaN);
  if (declared > cap || cap > own) {
    await res.body?.cancel();
    if (cap > own) throw new VmkitError('LIMIT', `GET ${url}: ${cap} bytes is more than the limit ${own}`, { path: url });
    throw longer();
  }
  const want = new Uint8Array(32);
  if (signed) hexInto(signed.sha256, want);
  const hash = await runningSha256();
  let got = 0;
  let over = false;
  const reader = (res.body ?? new Blob([]).stream()).getReader() as ReadableStreamDefaultReader<Uint8Array>;
  // The next chunk of the body, hashed and counted; undefined at its end.
  const next = async (): Promise<Uint8Array | undefined> => {
    let r: ReadableStreamReadResult<Uint8Array>;
    try {
      r = await reader.read();
    } catch (e) {
      if (o.signal?.aborted) throw new VmkitError('CANCELLED', `GET ${url} cancelled`, { cause: e, path: url });
      throw new VmkitError('NETWORK', `GET ${url}: reading the body failed: ${(e as Error).message}`, { cause: e, path: url });
    }
    if (r.done) return undefined;
    got += r.value.length;
    if (got > cap) {
      over = true;
      await reader.cancel().catch(() => {});
      throw longer();
    }
    hash.update(r.value);
    return r.value;
  };
  // After a failure downstream: the rest of the body through the hash, to tell a forged file from a corrupt one.
  const drain = async (): Promise<void> => {
    while (!over && (await next()) !== undefined);
  };
  const verdict = async (): Promise<SeenFile> => {
    const d = await hash.digest();
    if (!signed) return { size: got, sha256: d };
    if (got !== signed.size) throw notSigned(`${got} bytes, the release file signs ${signed.size}`);
    let diff = 0;
    for (let i = 0; i < 32; i++) diff |= d[i]! ^ want[i]!;
    if (diff !== 0) throw notSigned('SHA-256 differs');
    return { size: got, sha256: d };
  };
  let out = 0;
  const deliver = (c: Uint8Array): void => {
    out += c.length;
    if (out > o.max) throw new VmkitError('LIMIT', `${o.what}: more than the limit of ${o.max} bytes`, { path: o.what });
    onChunk(c);
  };
  let failure: unknown;
  try {
    // The size picks the decoder (the xz child for large files): a prefetch goes by the Content-Length.
    await pump(kind, signed?.size ?? (Number.isFinite(declared) ? declared : own), next, deliver, o.what);
  } catch (e) {
    failure = e;
  }
  if (failure !== undefined) {
    // A prefetch: nothing to tell apart, its caller discards all of it.
    if (!signed) throw failure;
    // INTEGRITY, NETWORK or CANCELLED from the body itself decide at once.
    if (failure instanceof VmkitError && (over || failure.code === 'NETWORK' || failure.code === 'CANCELLED')) throw failure;
    try {
      await drain();
      await verdict();
    } catch (e) {
      throw e instanceof VmkitError && e.code === 'INTEGRITY' ? e : failure;
    }
    throw failure;
  }
  return verdict();
}

// Moves the body through the decompressor into deliver; rejects with the first failure.
async function pump(kind: Compression, size: number, next: () => Promise<Uint8Array | undefined>, deliver: (c: Uint8Array) => void, what: string): Promise<void> {
  if (kind === 'none') {
    for (let c = await next(); c; c = await next()) deliver(c);
    return;
  }
  const xz = kind === 'xz' ? await xzCommand(size) : undefined;
  // `xz -dc` as a child: the body goes to its stdin as it arrives, its output comes back beside the parsing.
  if (xz) return pumpXz(xz, next, deliver, what);
  const d = await decompressorStream(kind, what);
  const feeding = (async () => {
    try {
      for (let c = await next(); c; c = await next()) await d.write(c);
      await d.end();
    } catch (e) {
      d.abort(e);
      throw e;
    }
  })();
  // The feeder's rejection is the one that explains (a failing body read also fails the reader).
  feeding.catch(() => {});
  try {
    for (let c = await d.read(); c; c = await d.read()) deliver(c);
  } catch (e) {
    d.abort(e);
    await feeding.catch((f) => {
      throw f;
    });
    throw e;
  }
  await feeding;
}
