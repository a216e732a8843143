/**
 * Hashes many files on worker threads (one per core by default), each worker
 * reading with synchronous reads into its own buffer (_hash-file.ts), with an
 * optional digest cache: a file whose identity (device, inode, size, mtime and
 * ctime in nanoseconds) is unchanged since it was hashed keeps its digest.
 *
 * ```
 * paths ──batches of `batch`──▶ worker 1..n: lstat → cached identity equal? → digest
 *                                             └─ else read 1 MiB at a time → SHA-256
 *        ◀── results in order ─┘   (two batches in flight per worker, so none idles)
 * ```
 * When the worker script is not there (sources run by a TypeScript loader) the
 * same work runs on this thread in slices that yield.
 * @module
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { VmkitError } from '../errors.js';
import { _hashOne, type _HashItem, type _HashResult } from './_hash-file.js';

/** Options of `_hashMany`. @internal */
export interface _HashManyOptions {
  /** Worker threads (default: the machine's cores); 0 hashes on this thread. */
  threads?: number;
  /** Paths per message to a worker (default 64). */
  batch?: number;
  /** Called with the number of paths answered so far. */
  onProgress?: (done: number) => void;
  signal?: AbortSignal;
}

/** Looks at every item (see `_hashOne`), answers in the items' order. @internal */
export async function _hashMany(items: _HashItem[], opts: _HashManyOptions = {}): Promise<_HashResult[]> {
  const threads = opts.threads ?? availableParallelism();
  const batch = opts.batch ?? 64;
  if (!Number.isInteger(threads) || threads < 0 || threads > 256) throw new VmkitError('ARG_RANGE', 'threads must be an integer 0..256');
  if (!Number.isInteger(batch) || batch < 1 || batch > 65536) throw new VmkitError('ARG_RANGE', 'batch must be an integer 1..65536');
  const url = new URL('./_hash-worker.js', import.meta.url);
  const usable = threads > 0 && items.length > batch && url.protocol === 'file:' && existsSync(fileURLToPath(url));
  return usable ? onWorkers(items, url, Math.min(threads, Math.ceil(items.length / batch)), batch, opts) : onThisThread(items, batch, opts);
}

async function onThisThread(items: _HashItem[], batch: number, opts: _HashManyOptions): Promise<_HashResult[]> {
  const out: _HashResult[] = new Array(items.length);
  for (let i = 0; i < items.length; i += batch) {
    if (opts.signal?.aborted) throw new VmkitError('CANCELLED', 'hashing files was cancelled');
    const end = Math.min(items.length, i + batch);
    for (let j = i; j < end; j++) out[j] = _hashOne(items[j]!);
    opts.onProgress?.(end);
    // Let timers and I/O run between slices (a progress bar, a signal's abort).
    await new Promise((r) => setImmediate(r));
  }
  return out;
}

function onWorkers(items: _HashItem[], url: URL, n: number, batch: number, opts: _HashManyOptions): Promise<_HashResult[]> {
  const out: _HashResult[] = new Array(items.length);
  const workers: Worker[] = [];
  let next = 0;
  let done = 0;
  let settled = false;
  return new Promise<_HashResult[]>((resolve, reject) => {
    const finish = (err?: unknown): void => {
      if (settled) return;
      settled = true;
      opts.signal?.removeEventListener('abort', onAbort);
      for (const w of workers) void w.terminate();
      if (err) reject(err);
      else resolve(out);
    };
    const onAbort = (): void => finish(new VmkitError('CANCELLED', 'hashing files was cancelled'));
    if (opts.signal?.aborted) return onAbort();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const send = (w: Worker): void => {
      if (next >= items.length) return;
      const start = next;
      next = Math.min(items.length, next + batch);
      w.postMessage({ id: start, items: items.slice(start, next) });
    };
    for (let i = 0; i < n; i++) {
      const w = new Worker(url);
      workers.push(w);
      w.on('message', (m: { id: number; results: _HashResult[] }) => {
        for (let j = 0; j < m.results.length; j++) out[m.id + j] = m.results[j]!;
        done += m.results.length;
        opts.onProgress?.(done);
        if (done === items.length) return finish();
        send(w);
      });
      w.on('error', (e) => finish(new VmkitError('IO', `hashing worker failed: ${e.message}`, { cause: e })));
      w.on('exit', (code) => {
        if (!settled) finish(new VmkitError('IO', `hashing worker exited with code ${code}`));
      });
      // Two batches in flight per worker: the next one is queued while this one is answered.
      send(w);
      send(w);
    }
  });
}

/**
 * A file of digests by path and identity, one line each after a version line:
 * `<sha256 hex> <identity> <path>` (identities hold no space; a path with a
 * newline is never cached). Written to a temporary name and renamed, mode 0600.
 * A missing or unreadable cache is an empty one: it only saves work. Lines, not
 * JSON: a JSON object of 100,000 paths cost the main thread more to parse and
 * write than the lstat of every file took on the workers. @internal
 */
export class _DigestCacheFile {
  readonly path: string;
  readonly entries: Map<string, [string, string]>;

  private constructor(path: string, entries: Map<string, [string, string]>) {
    this.path = path;
    this.entries = entries;
  }

  /** Reads `path` (an empty cache when it is not there or not a cache). */
  static load(path: string): _DigestCacheFile {
    const entries = new Map<string, [string, string]>();
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return new _DigestCacheFile(path, entries);
      throw new VmkitError('IO', `cannot read digest cache ${path}: ${(e as Error).message}`, { path, cause: e });
    }
    if (!text.startsWith(HEADER)) return new _DigestCacheFile(path, entries);
    let at = HEADER.length;
    while (at < text.length) {
      let end = text.indexOf('\n', at);
      if (end < 0) end = text.length;
      const sp = text.indexOf(' ', at + 64);
      // 64 hex digits, a space, an identity, a space, the path.
      if (sp === at + 64 && isHex64(text, at)) {
        const sp2 = text.indexOf(' ', sp + 1);
        if (sp2 > sp + 1 && sp2 < end - 1) entries.set(text.slice(sp2 + 1, end), [text.slice(sp + 1, sp2), text.slice(at, at + 64)]);
      }
      at = end + 1;
    }
    return new _DigestCacheFile(path, entries);
  }

  /** Writes the cache with exactly `entries` (paths no longer looked at are dropped). */
  save(entries: Map<string, [string, string]>): void {
    const tmp = `${this.path}.${process.pid}.tmp`;
    const lines: string[] = [HEADER.slice(0, -1)];
    for (const [p, [id, hex]] of entries) if (!p.includes('\n') && !id.includes(' ')) lines.push(`${hex} ${id} ${p}`);
    try {
      writeFileSync(tmp, lines.join('\n') + '\n', { mode: 0o600 });
      renameSync(tmp, this.path);
    } catch (e) {
      throw new VmkitError('IO', `cannot write digest cache ${this.path}: ${(e as Error).message}`, { path: this.path, cause: e });
    }
  }
}

const HEADER = 'vmkit-digest-cache 1\n';

function isHex64(s: string, at: number): boolean {
  for (let i = at; i < at + 64; i++) {
    const c = s.charCodeAt(i);
    if (!((c >= 48 && c <= 57) || (c >= 97 && c <= 102))) return false;
  }
  return true;
}
