/**
 * The embedded owner store: a sidecar directory next to the disk.
 *
 * ```
 * vm.qcow2
 * vm.qcow2.owner/
 *   r-000000000000041.json   older revisions (the last few are kept)
 *   r-000000000000042.json   the current record: the highest number wins
 *                            {"revision":{"seq":42,"id":"…","prev":"…"},"record":{…}}
 *   .tmp-<pid>-<random>      a record being written (never read)
 * ```
 *
 * Every revision is its own immutable file (the record in an envelope naming
 * a random id for this write and the id of the revision it replaced). A
 * compare-and-swap from revision N writes the new file to a temporary name,
 * fsyncs it, and `link(2)`s it to `r-<N+1>.json`: link refuses to replace an
 * existing name, so of all writers that read N exactly one wins, on every
 * POSIX file system, across processes and without a lock that a killed
 * process could leave behind. Readers list
 * the directory and read the highest number, which was complete before it had
 * a name, so no reader ever sees a torn record. See docs/ownership.md for the
 * proof sketch (including why pruning old revisions keeps the CAS exact).
 *
 * Permissions: a record holds the disk's release secret, so the sidecar is
 * readable by whoever can read the disk and by nobody else: revision files
 * get the disk's owner and group bits (`0600`, `0640` or `0660`; never any for
 * others), the directory the matching `0700`/`0750`/`0770`, set explicitly
 * (the umask does not widen or narrow them). Without a disk file to copy
 * from (another `sidecar` naming), `0600`/`0700`.
 *
 * `node:fs` is imported on first use so browser bundles stay free of it.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { encodeRecord, validateRecord, MAX_RECORD_BYTES } from './record.js';
import type { OwnerRecord, OwnerSnapshot, OwnerStore } from './types.js';
import { toHex } from '../../_hex.js';
import { nodeModule } from '../../_node.js';

type Fs = typeof import('node:fs/promises');
const nodeFs = (): Promise<Fs> => nodeModule<Fs>('node:fs/promises');

/**
 * Pruning: revisions more than KEEP behind the top go once they are PRUNE_AGE_MS
 * old, or unconditionally once more than HARD_KEEP behind. A writer paused
 * between its link and its check for longer than that may report a lost CAS
 * that in fact went through (never the reverse): docs/ownership.md.
 */
const KEEP = 8;
const HARD_KEEP = 256;
const PRUNE_AGE_MS = 2000;
/** Prune on every PRUNE_EVERY-th revision only (a listing and a few stats each time). */
const PRUNE_EVERY = 8;
/** More entries than this in a sidecar directory is not something vmkit made. */
const MAX_ENTRIES = 4096;
const NAME = /^r-(\d{15})\.json$/;
const SEQ_DIGITS = 15; // 10^15 - 1 < 2^53: every name is an exact safe integer
/** A revision file is the record plus a small envelope. */
const MAX_FILE_BYTES = MAX_RECORD_BYTES + 256;
const ID = /^[0-9a-f]{32}$/;

function randomId(): string {
  const b = new Uint8Array(16);
  globalThis.crypto.getRandomValues(b);
  return toHex(b);
}

/**
 * A revision file: `{"revision":{"seq":N,"id":"<32 hex>","prev":"<32 hex or empty>"},"record":{…}}`.
 * `id` is random per write; `prev` is the id of the revision it replaced.
 */
function encodeRevisionFile(rec: OwnerRecord, seq: number, id: string, prev: string): Uint8Array {
  const record = new TextDecoder().decode(encodeRecord(rec)).trimEnd();
  return new TextEncoder().encode(`{"revision":${JSON.stringify({ seq, id, prev })},"record":${record}}\n`);
}

function parseRevisionFile(data: Uint8Array, seq: number, path: string): { record: OwnerRecord; id: string; prev: string } {
  let v: unknown;
  try {
    v = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(data));
  } catch (e) {
    throw new VmkitError('CORRUPT', `owner record ${path} is not UTF-8 JSON: ${(e as Error).message}`, { cause: e, path });
  }
  const o = (typeof v === 'object' && v !== null && !Array.isArray(v) ? v : {}) as Record<string, unknown>;
  const r = (typeof o.revision === 'object' && o.revision !== null ? o.revision : {}) as Record<string, unknown>;
  if (Object.keys(o).length !== 2 || o.record === undefined || r.seq !== seq || typeof r.id !== 'string' || !ID.test(r.id) || typeof r.prev !== 'string' || !(r.prev === '' || ID.test(r.prev))) {
    throw new VmkitError('CORRUPT', `owner record ${path}: not a file-store revision (envelope {revision:{seq:${seq},id,prev},record})`, { path });
  }
  return { record: validateRecord(o.record, path), id: r.id, prev: r.prev };
}

/**
 * Options of {@link FileOwnerStore}.
 * @example
 * const store = new FileOwnerStore({ sidecar: (disk) => `/var/lib/vmkit/owners/${disk.replaceAll('/', '_')}` });
 */
export interface FileOwnerStoreOptions {
  /** Sidecar directory of a disk (default `<disk>.owner`). */
  sidecar?: (disk: string) => string;
}

/**
 * The modes of a disk's sidecar: its revision files get the disk's owner and
 * group permission bits (owner always read-write), never any for others; the
 * directory lets the same people list (group r → r-x) and create (group w → -wx) files.
 */
function _sidecarModes(diskMode: number | undefined): { file: number; dir: number } {
  const m = diskMode === undefined ? 0o600 : (diskMode & 0o660) | 0o600;
  return { file: m, dir: 0o700 | (m & 0o040 ? 0o050 : 0) | (m & 0o020 ? 0o030 : 0) };
}

function seqName(seq: number): string {
  return `r-${String(seq).padStart(SEQ_DIGITS, '0')}.json`;
}

function ioError(e: unknown, op: string, path: string): VmkitError {
  if (e instanceof VmkitError) return e;
  const code = (e as NodeJS.ErrnoException)?.code;
  return new VmkitError(code === 'ENOENT' ? 'NOT_FOUND' : 'IO', `${op} ${path}: ${(e as Error)?.message ?? String(e)}`, { path, cause: e });
}

/**
 * The file-system {@link OwnerStore}: revisions are immutable files in
 * `<disk>.owner/`, swapped in with `link(2)` (see the module comment).
 *
 * @example
 * ```ts
 * const store = new FileOwnerStore();
 * const { record, revision } = await store.read('vm.qcow2');
 * const rev = await store.compareAndSwap('vm.qcow2', revision, { version: 1, disk: 'vm.qcow2', epoch: 1, state: 'free', leaseExpiresAt: 0, updatedAt: Date.now() });
 * ```
 */
export class FileOwnerStore implements OwnerStore {
  readonly kind: string = 'file';
  private readonly sidecar: (disk: string) => string;

  constructor(opts: FileOwnerStoreOptions = {}) {
    this.sidecar = opts.sidecar ?? ((d) => `${d}.owner`);
  }

  /**
   * The sidecar directory of `disk`.
   *
   * @example
   * ```ts
   * new FileOwnerStore().dirOf('/vms/vm.qcow2'); // '/vms/vm.qcow2.owner'
   * ```
   */
  dirOf(disk: string): string {
    if (typeof disk !== 'string' || disk.length === 0) throw new VmkitError('ARG_TYPE', 'disk must be a non-empty string');
    return this.sidecar(disk);
  }

  // The highest revision number in the directory (0 when there is none).
  private async top(dir: string): Promise<number> {
    const fs = await nodeFs();
    let names: string[];
    try {
      names = await fs.readdir(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException)?.code === 'ENOENT') return 0;
      throw ioError(e, 'list', dir);
    }
    if (names.length > MAX_ENTRIES) throw new VmkitError('LIMIT', `${dir} holds ${names.length} entries (max ${MAX_ENTRIES}): not an owner sidecar`, { path: dir });
    let top = 0;
    for (const n of names) {
      const m = NAME.exec(n);
      if (m) top = Math.max(top, Number(m[1]));
    }
    return top;
  }

  // One revision file: its envelope (this revision's random id, its predecessor's id) and record.
  private async readRevision(dir: string, seq: number): Promise<{ record: OwnerRecord; id: string; prev: string } | null> {
    const fs = await nodeFs();
    const file = `${dir}/${seqName(seq)}`;
    let fh: import('node:fs/promises').FileHandle;
    try {
      fh = await fs.open(file, 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException)?.code === 'ENOENT') return null;
      throw ioError(e, 'open', file);
    }
    try {
      const { size } = await fh.stat();
      if (size > MAX_FILE_BYTES) throw new VmkitError('LIMIT', `owner record ${file} is ${size} bytes (max ${MAX_FILE_BYTES})`, { path: file });
      const buf = new Uint8Array(size);
      let got = 0;
      while (got < size) {
        const { bytesRead } = await fh.read(buf, got, size - got, got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return parseRevisionFile(buf.subarray(0, got), seq, file);
    } catch (e) {
      throw ioError(e, 'read', file);
    } finally {
      await fh.close().catch(() => {});
    }
  }

  /**
   * Reads the current record. Throws CORRUPT / LIMIT / UNSUPPORTED when the
   * current revision is not a valid record.
   *
   * @example
   * ```ts
   * const { record, revision } = await store.read('vm.qcow2'); // record null: never owned
   * ```
   */
  async read(disk: string): Promise<OwnerSnapshot> {
    const dir = this.dirOf(disk);
    // A revision can be pruned between the listing and the read only when a
    // newer one exists, so a retry makes progress; bound it anyway.
    for (let attempt = 0; attempt < 16; attempt++) {
      const top = await this.top(dir);
      if (top === 0) return { record: null, revision: null };
      const r = await this.readRevision(dir, top);
      if (r) return { record: r.record, revision: `${top}.${r.id}` };
    }
    throw new VmkitError('CONFLICT', `${dir}: revisions changed under 16 consecutive reads`, { path: dir });
  }

  /**
   * Writes `next` as revision `expected + 1` if `expected` is still current.
   * Resolves to the new revision, or null when another writer got there first.
   *
   * @example
   * ```ts
   * const rev = await store.compareAndSwap('vm.qcow2', revision, { ...record!, state: 'free', updatedAt: Date.now() });
   * if (rev === null) console.log('lost the race: read again');
   * ```
   */
  async compareAndSwap(disk: string, expected: string | null, next: OwnerRecord): Promise<string | null> {
    const dir = this.dirOf(disk);
    let seq = 0;
    let prev = '';
    if (expected !== null) {
      const m = typeof expected === 'string' ? /^(\d{1,15})\.([0-9a-f]{32})$/.exec(expected) : null;
      if (!m) throw new VmkitError('ARG_RANGE', `expected revision ${JSON.stringify(expected)} is not a file-store revision`);
      seq = Number(m[1]);
      prev = m[2]!;
      if (seq === 0) throw new VmkitError('ARG_RANGE', 'expected revision 0 does not exist (use null for "no record")');
    }
    if (seq + 1 > 10 ** SEQ_DIGITS - 1) throw new VmkitError('LIMIT', `${dir}: revision counter exhausted`, { path: dir });
    const id = randomId();
    const bytes = encodeRevisionFile(next, seq + 1, id, prev);
    const fs = await nodeFs();
    // Cheap early answer (and no garbage file) when we already lost.
    if ((await this.top(dir)) !== seq) return null;
    const modes = _sidecarModes((await fs.stat(disk).catch(() => undefined))?.mode);
    if (seq === 0) {
      try {
        // Created here: set its mode exactly (the umask applies to mkdir); an existing one is left as it is.
        if ((await fs.mkdir(dir, { recursive: true, mode: modes.dir })) !== undefined) await fs.chmod(dir, modes.dir);
      } catch (e) {
        throw ioError(e, 'mkdir', dir);
      }
    }
    const tmp = `${dir}/.tmp-${typeof process !== 'undefined' ? process.pid : 0}-${Math.random().toString(36).slice(2)}`;
    const target = `${dir}/${seqName(seq + 1)}`;
    try {
      const fh = await fs.open(tmp, 'wx', modes.file);
      try {
        await fh.chmod(modes.file); // the record holds the secret: exactly the disk's readers, whatever the umask
        await fh.writeFile(bytes);
        await fh.sync();
      } finally {
        await fh.close();
      }
      try {
        await fs.link(tmp, target);
      } catch (e) {
        if ((e as NodeJS.ErrnoException)?.code === 'EEXIST') return null;
        throw e;
      }
    } catch (e) {
      throw ioError(e, 'write', target);
    } finally {
      await fs.unlink(tmp).catch(() => {});
    }
    await syncDir(fs, dir);
    // `target` may have been a pruned old name that we just re-created while
    // the top had moved far ahead: then our record never was current. Ours is
    // in the chain iff it is the top, or the next revision names it as its
    // predecessor (its writer read ours as the top). docs/ownership.md has the proof.
    const top = await this.top(dir);
    if (top !== seq + 1) {
      const after = top > seq + 1 ? await this.readRevision(dir, seq + 2).catch(() => null) : null;
      if (after?.prev !== id) return null;
    }
    if ((seq + 1) % PRUNE_EVERY === 0) await this.prune(dir, seq + 1);
    return `${seq + 1}.${id}`;
  }

  private async prune(dir: string, top: number): Promise<void> {
    if (top <= KEEP) return;
    const fs = await nodeFs();
    let names: string[];
    try {
      names = await fs.readdir(dir);
    } catch {
      return;
    }
    for (const n of names) {
      const m = NAME.exec(n);
      const seq = m ? Number(m[1]) : top;
      if (seq >= top - KEEP) continue;
      if (seq >= top - HARD_KEEP) {
        const st = await fs.stat(`${dir}/${n}`).catch(() => null);
        if (!st || Date.now() - st.mtimeMs < PRUNE_AGE_MS) continue;
      }
      await fs.unlink(`${dir}/${n}`).catch(() => {});
    }
    // Temporary files of writers killed mid-write (older than a minute: nobody is still writing them).
    for (const n of names) {
      if (!n.startsWith('.tmp-')) continue;
      const st = await fs.stat(`${dir}/${n}`).catch(() => null);
      if (st && Date.now() - st.mtimeMs > 60_000) await fs.unlink(`${dir}/${n}`).catch(() => {});
    }
  }

  /**
   * Nothing to release: every call opens and closes its own files.
   *
   * @example
   * ```ts
   * await store.close();
   * ```
   */
  async close(): Promise<void> {}
}

// fsync the directory so the new name survives a crash (POSIX needs it for link/rename).
async function syncDir(fs: Fs, dir: string): Promise<void> {
  let fh: import('node:fs/promises').FileHandle | undefined;
  try {
    fh = await fs.open(dir, 'r');
    await fh.sync();
  } catch {
    // Some file systems refuse fsync on a directory; the link itself is still atomic.
  } finally {
    await fh?.close().catch(() => {});
  }
}
