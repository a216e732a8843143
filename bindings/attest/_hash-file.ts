/**
 * One file looked at for the file-hashing pool (_hash-pool.ts, _hash-worker.ts):
 * `lstat`; a regular file whose identity (device, inode, size, mtime,
 * ctime in nanoseconds) equals the one the caller cached keeps its digest;
 * any other regular file is read with synchronous reads into one reused 1 MiB
 * buffer and hashed (SHA-256). Synchronous I/O is the point: in a worker it
 * blocks nothing, and it costs a fraction of a promise round trip per read.
 * @module
 */
import { createHash } from 'node:crypto';
import { closeSync, fstatSync, lstatSync, openSync, readSync, type BigIntStats } from 'node:fs';

/** One path to look at, with the identity and digest a cache holds for it. @internal */
export interface _HashItem {
  p: string;
  /** Cached identity (`_identity`) and digest, when the cache has this path. */
  c?: [string, string];
}

/**
 * What was found: `k` 0 not there, 1 not a regular file, 2 hashed (`h`), 3
 * error (`e`); `s` the identity to cache (omitted when the file changed while
 * it was read or changed too recently to trust its timestamps). @internal
 */
export interface _HashResult {
  k: 0 | 1 | 2 | 3;
  h?: string;
  s?: string;
  e?: string;
}

/** A file's identity as a string: equal identities mean unchanged content (see docs). @internal */
export function _identity(st: BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

// A file whose ctime is this close to now may still be written within the same timestamp tick:
// its digest is used but not cached (git's "racily clean" rule).
const RACY_NS = 2_000_000_000n;

const buf = Buffer.allocUnsafe(1 << 20);

/** Looks at one path (see `_HashResult`). @internal */
export function _hashOne(item: _HashItem): _HashResult {
  let st: BigIntStats;
  try {
    st = lstatSync(item.p, { bigint: true });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === 'ENOENT' || code === 'ENOTDIR' ? { k: 0 } : { k: 3, e: (e as Error).message };
  }
  if (!st.isFile()) return { k: 1 };
  const before = _identity(st);
  if (item.c && item.c[0] === before) return { k: 2, h: item.c[1], s: before };
  let fd: number;
  try {
    fd = openSync(item.p, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === 'ENOENT' ? { k: 0 } : { k: 3, e: (e as Error).message };
  }
  try {
    const h = createHash('sha256');
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(n === buf.length ? buf : buf.subarray(0, n));
    }
    const after = fstatSync(fd, { bigint: true });
    const id = _identity(after);
    const now = BigInt(Date.now()) * 1_000_000n;
    const trusted = id === before && now - after.ctimeNs > RACY_NS;
    return trusted ? { k: 2, h: h.digest('hex'), s: id } : { k: 2, h: h.digest('hex') };
  } catch (e) {
    return { k: 3, e: (e as Error).message };
  } finally {
    closeSync(fd);
  }
}
