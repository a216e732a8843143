/**
 * `file:` repositories (Node only): `deb file:///srv/mirror/debian bookworm main`, as
 * APT's file method reads a local mirror. Node's fetch() has no file: support, and
 * loading it (undici, with zlib) costs some 70–100 ms of the main thread before the
 * first byte, so a file: URL is read with node:fs here instead, answering with the
 * small part of a Response the sources use (status, headers.get, a byte stream body).
 *
 * ```
 *  file:///m/dists/x/InRelease ─► open ─ ENOENT/ENOTDIR ─► 404 (NOT_FOUND)
 *                                  │     other error     ─► thrown (NETWORK)
 *                                  └─► 200, content-length = size, body: 1 MiB reads
 * ```
 * No validators: a refresh re-reads the file and compares its signed hash.
 * @module
 */

/** The part of a Response the repository sources read. @internal */
export interface _FileResponse {
  status: number;
  headers: { get(name: string): string | null };
  body: ReadableStream<Uint8Array> | null;
}

interface FsHandle {
  read(b: Uint8Array, o: number, n: number, at: null): Promise<{ bytesRead: number }>;
  stat(): Promise<{ size: number; isFile(): boolean }>;
  close(): Promise<void>;
}
interface FsPromises {
  open(p: string, flags: string): Promise<FsHandle>;
}

// Large reads: the xz child takes them whole (fewer writes to its stdin, fewer chunks to hash).
const READ = 1 << 20;

/** True for a URL the file reader answers (Node, a file: URL). @internal */
export function _isFileUrl(url: string): boolean {
  return url.startsWith('file:') && typeof process !== 'undefined' && !!process.versions?.node;
}

/**
 * GETs a file: URL with node:fs: 404 when there is no such file, else 200 with
 * the file's bytes streamed in 1 MiB reads. Honours `signal` (an abort ends the
 * body with an error). Throws what the open failed with otherwise.
 * @internal
 */
export async function _fileFetch(url: string, init: { signal?: AbortSignal | null } = {}): Promise<_FileResponse> {
  init.signal?.throwIfAborted();
  // Hidden from bundlers, as in _xz-child.ts.
  const fsName = 'node:fs/promises';
  const urlName = 'node:url';
  const fs = (await import(/* @vite-ignore */ fsName)) as FsPromises;
  const { fileURLToPath } = (await import(/* @vite-ignore */ urlName)) as { fileURLToPath(u: string): string };
  const path = fileURLToPath(url);
  const notFound = (): _FileResponse => ({ status: 404, headers: { get: () => null }, body: null });
  let h: FsHandle;
  try {
    h = await fs.open(path, 'r');
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return notFound();
    throw e;
  }
  let size: number;
  try {
    const st = await h.stat();
    if (!st.isFile()) {
      await h.close();
      return notFound();
    }
    size = st.size;
  } catch (e) {
    await h.close().catch(() => {});
    throw e;
  }
  let closed = false;
  const close = async (): Promise<void> => {
    if (!closed) (closed = true), await h.close().catch(() => {});
  };
  const body = new ReadableStream<Uint8Array>({
    async pull(ctl) {
      try {
        init.signal?.throwIfAborted();
        const b = new Uint8Array(READ);
        const { bytesRead } = await h.read(b, 0, READ, null);
        if (bytesRead === 0) {
          await close();
          ctl.close();
        } else {
          ctl.enqueue(bytesRead === READ ? b : b.subarray(0, bytesRead));
        }
      } catch (e) {
        await close();
        ctl.error(e);
      }
    },
    cancel: close,
  }, { highWaterMark: 0 });
  const headers: Record<string, string> = { 'content-length': String(size) };
  return { status: 200, headers: { get: (n) => headers[n.toLowerCase()] ?? null }, body };
}
