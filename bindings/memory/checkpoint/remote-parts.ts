/**
 * Writing a checkpoint to a remote target with nothing but HTTP PUT: the
 * file is cut into parts uploaded as separate objects while the save runs
 * (a multipart upload without a multipart API: any WebDAV server, nginx's
 * dav module, a bucket that takes PUT), and a manifest naming the parts is
 * written last, only when the checkpoint is whole. A reader opens the
 * manifest and reads the parts with `Range` requests, as one file.
 *
 * ```
 *  <url>.parts/00000000   bytes [0, partBytes)              PUT while the save runs,
 *  <url>.parts/00000001   bytes [partBytes, 2·partBytes)    one part in flight while the next fills
 *  …
 *  <url>                  manifest (JSON), PUT last:
 *    { "format": "vmkit-checkpoint-parts 1", "size": <bytes>, "partBytes": <n>,
 *      "parts": [ { "name": "00000000", "size": <n>, "sha256": "<hex>" }, … ] }
 * ```
 *
 * The writer writes a checkpoint front to back (header, blocks, index,
 * footer), so parts are filled in order; a write anywhere else is
 * UNSUPPORTED. A save that is abandoned (its last bytes are not a footer
 * that ends the file) writes no manifest: readers never see it.
 * Format: docs/checkpoint-format.md ("Remote writing").
 * @module
 */
import { VmkitError } from '../../errors.js';
import { aint } from '../../_utils.js';
import type { CheckpointSink, CheckpointSource } from './io.js';
import { decodeFooter, decodeHeader, FOOTER_SIZE, HEADER_SIZE } from './format.js';
import { _httpBackend, type HttpStoreOptions } from './store-http.js';
import { httpSource, isHttpUrl, type HttpCheckpointSource, type HttpSourceOptions } from './http.js';

const FORMAT = 'vmkit-checkpoint-parts 1';

/**
 * Options of {@link httpPartsSink}.
 * @example
 * ```ts
 * const opts: HttpPartsSinkOptions = { partBytes: 16 << 20, http: { retries: 2 } };
 * ```
 */
export interface HttpPartsSinkOptions {
  /** Bytes per part (default 8 MiB; 64 KiB to 1 GiB). The sink holds at most two parts in memory. */
  partBytes?: number;
  /** How the parts and the manifest are PUT (fetch, headers, timeouts, retries, signal). */
  http?: HttpStoreOptions;
}

/**
 * What {@link httpPartsSink} uploaded (after `close`).
 * @example
 * ```ts
 * const { parts, bytes, published } = sink.uploaded;
 * ```
 */
export interface HttpPartsStats {
  parts: number;
  bytes: number;
  /** True when the manifest was written (the checkpoint was whole). */
  published: boolean;
}

/** The manifest's JSON. */
interface Manifest {
  format: string;
  size: number;
  partBytes: number;
  parts: { name: string; size: number; sha256: string }[];
}

async function sha256Hex(b: Uint8Array): Promise<string> {
  const d = new Uint8Array(await globalThis.crypto.subtle.digest('SHA-256', b as Uint8Array<ArrayBuffer>));
  let s = '';
  for (const x of d) s += x.toString(16).padStart(2, '0');
  return s;
}

function split(url: string): { dir: string; name: string } {
  const u = String(url);
  const i = u.lastIndexOf('/');
  const name = u.slice(i + 1);
  if (!isHttpUrl(u) || name === '' || i < u.indexOf('//') + 2) throw new VmkitError('ARG_RANGE', `url must be an http(s) URL naming an object, got ${u}`);
  return { dir: u.slice(0, i), name };
}

/**
 * A {@link CheckpointSink} that uploads the checkpoint as parts and a
 * manifest with HTTP PUT (see the module's diagram). Pass it to
 * `CheckpointWriter.create`; `finish()` publishes the manifest, an aborted
 * save publishes nothing.
 * @example
 * ```ts
 * import { CheckpointWriter, httpPartsSink } from 'vmkit/memory';
 * const sink = httpPartsSink('http://127.0.0.1:8080/ckpt/vm1.ckpt');
 * const w = await CheckpointWriter.create(sink, { guestSize: mem.length });
 * await w.writePages(0, mem);
 * await w.finish(); // parts, then the manifest at .../vm1.ckpt
 * ```
 */
export function httpPartsSink(url: string, options: HttpPartsSinkOptions = {}): CheckpointSink & { readonly uploaded: HttpPartsStats } {
  const { dir, name } = split(url);
  const partBytes = options.partBytes ?? 8 << 20;
  aint(partBytes, 'partBytes', 64 << 10, 1 << 30);
  const be = _httpBackend(dir, options.http);
  const parts: Manifest['parts'] = [];
  let buf = new Uint8Array(partBytes);
  let fill = 0;
  let written = 0;
  let head: Uint8Array | undefined;
  const tail = new Uint8Array(FOOTER_SIZE);
  let inflight: Promise<void> | undefined;
  let failed: unknown;
  let closed = false;
  const stats: HttpPartsStats = { parts: 0, bytes: 0, published: false };

  /** Uploads the filled buffer as the next part (one upload in flight; the caller waits for the previous). */
  const flush = async (): Promise<void> => {
    if (inflight) await inflight;
    if (failed !== undefined) throw failed;
    if (fill === 0) return;
    const data = buf.subarray(0, fill);
    const partName = String(parts.length).padStart(8, '0');
    const entry = { name: partName, size: fill, sha256: '' };
    parts.push(entry);
    buf = new Uint8Array(partBytes);
    fill = 0;
    inflight = (async () => {
      entry.sha256 = await sha256Hex(data);
      await be.put(`${name}.parts/${partName}`, data);
      stats.parts++;
      stats.bytes += data.length;
    })().catch((e) => {
      failed = e;
    });
  };

  return {
    get uploaded() {
      return { ...stats };
    },
    async write(data, position) {
      if (closed) throw new VmkitError('INVALID_STATE', `${url}: sink closed`);
      if (failed !== undefined) throw failed;
      if (position !== written) throw new VmkitError('UNSUPPORTED', `${url}: a parts upload is written front to back; write at ${position}, ${written} bytes written`);
      if (!head && written === 0) head = data.slice(0, HEADER_SIZE);
      // The last FOOTER_SIZE bytes written, to tell a finished checkpoint from an abandoned one.
      if (data.length >= FOOTER_SIZE) tail.set(data.subarray(data.length - FOOTER_SIZE));
      else {
        tail.copyWithin(0, data.length);
        tail.set(data, FOOTER_SIZE - data.length);
      }
      for (let at = 0; at < data.length; ) {
        const n = Math.min(partBytes - fill, data.length - at);
        buf.set(data.subarray(at, at + n), fill);
        fill += n;
        at += n;
        if (fill === partBytes) await flush();
      }
      written += data.length;
    },
    async close() {
      if (closed) return;
      closed = true;
      await flush();
      if (inflight) await inflight;
      if (failed !== undefined) throw failed;
      // Publish only a whole checkpoint: its last bytes are a footer that ends the file.
      let whole = false;
      try {
        if (head && written >= HEADER_SIZE + FOOTER_SIZE) whole = decodeFooter(tail, written, decodeHeader(head)).fileLength === written;
      } catch {
        whole = false;
      }
      if (!whole) {
        for (const p of parts) await be.remove(`${name}.parts/${p.name}`).catch(() => {});
        return;
      }
      const manifest: Manifest = { format: FORMAT, size: written, partBytes, parts };
      await be.put(name, new TextEncoder().encode(JSON.stringify(manifest) + '\n'));
      stats.published = true;
    },
  };
}

/**
 * Opens a checkpoint uploaded by {@link httpPartsSink}: reads its manifest,
 * then serves reads from the parts with `Range` requests (each part opened on
 * first use; a read across parts is split). A part whose size is not the
 * manifest's, or that changes while read, is INTEGRITY.
 * @example
 * ```ts
 * import { CheckpointReader, httpPartsSource } from 'vmkit/memory';
 * const r = await CheckpointReader.open(await httpPartsSource('http://127.0.0.1:8080/ckpt/vm1.ckpt'));
 * ```
 */
export async function httpPartsSource(url: string, options: { http?: HttpSourceOptions } = {}): Promise<CheckpointSource> {
  const { dir, name } = split(url);
  const be = _httpBackend(dir, { fetch: options.http?.fetch, headers: options.http?.headers, timeoutMs: options.http?.timeoutMs, retries: options.http?.retries, retryDelayMs: options.http?.retryDelayMs, signal: options.http?.signal, maxObjectBytes: 16 << 20 });
  const raw = await be.get(name);
  if (raw === undefined) throw new VmkitError('NOT_FOUND', `${url}: no manifest`, { path: url });
  let m: Manifest;
  try {
    m = JSON.parse(new TextDecoder().decode(raw)) as Manifest;
  } catch (e) {
    throw new VmkitError('CORRUPT', `${url}: the manifest is not JSON`, { path: url, cause: e });
  }
  if (m?.format !== FORMAT || !Array.isArray(m.parts) || !Number.isSafeInteger(m.size) || !Number.isSafeInteger(m.partBytes) || m.partBytes < 1) {
    throw new VmkitError('CORRUPT', `${url}: not a ${FORMAT} manifest`, { path: url });
  }
  // Every part but the last is partBytes long and they add up to size: a read maps to a part by division.
  let total = 0;
  m.parts.forEach((p, i) => {
    const last = i === m.parts.length - 1;
    if (typeof p?.name !== 'string' || !/^[0-9]{8}$/.test(p.name) || !Number.isSafeInteger(p.size) || p.size < 1 || (!last && p.size !== m.partBytes) || p.size > m.partBytes) {
      throw new VmkitError('CORRUPT', `${url}: manifest part ${i} is malformed`, { path: url });
    }
    total += p.size;
  });
  if (total !== m.size) throw new VmkitError('CORRUPT', `${url}: the parts hold ${total} bytes, the manifest says ${m.size}`, { path: url });
  const opened: (Promise<HttpCheckpointSource> | undefined)[] = [];
  const part = (i: number): Promise<HttpCheckpointSource> => {
    let s = opened[i];
    if (!s) {
      const href = `${dir}/${name}.parts/${m.parts[i]!.name}`;
      s = opened[i] = httpSource(href, { ...options.http, suffixBytes: 64 }).then((src) => {
        if (src.size !== m.parts[i]!.size) throw new VmkitError('INTEGRITY', `${href}: ${src.size} bytes, the manifest says ${m.parts[i]!.size}`, { path: href });
        return src;
      });
      s.catch(() => {
        opened[i] = undefined; // a later read tries again
      });
    }
    return s;
  };
  /** Runs fn over the pieces of [position, position + length) in each part. */
  const pieces = (position: number, length: number): { i: number; at: number; n: number; off: number }[] => {
    const out = [];
    for (let p = position; p < position + length; ) {
      const i = Math.floor(p / m.partBytes);
      const at = p - i * m.partBytes;
      const n = Math.min(m.parts[i]!.size - at, position + length - p);
      out.push({ i, at, n, off: p - position });
      p += n;
    }
    return out;
  };
  return {
    size: m.size,
    prefetchBytes: options.http?.cacheBytes ?? 16 << 20,
    async read(position, dst) {
      if (position < 0 || position + dst.length > m.size) throw new VmkitError('CORRUPT', `${url}: read past the end (${position}+${dst.length} of ${m.size})`, { path: url, offset: position });
      await Promise.all(pieces(position, dst.length).map(async ({ i, at, n, off }) => (await part(i)).read(at, dst.subarray(off, off + n))));
    },
    prefetch(position, length) {
      const end = Math.min(position + length, m.size);
      if (position < 0 || end <= position) return;
      for (const { i, at, n } of pieces(position, end - position)) part(i).then((s) => s.prefetch(at, n), () => {});
    },
    async close() {
      await Promise.all(opened.map(async (s) => (await s?.catch(() => undefined))?.close()));
    },
  };
}
