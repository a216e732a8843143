/**
 * The last release date accepted per source, for rollback protection: a
 * correctly signed but older release file (a mirror serving yesterday's
 * InRelease, still inside its Valid-Until) must not replace a newer one, or
 * an attacker who kept an old signed state could bring back packages with
 * known holes. Kept in memory by default; in a state directory it survives
 * restarts:
 *
 * ```
 * <dir>/release-dates.json   { "version": 1, "dates": { "<source line>": <ms since epoch>, … } }
 *                            written to a temporary file, fsynced, renamed over the old one
 * ```
 * @module
 */
import { VmkitError } from '../../errors.js';

/**
 * Where sources record the date of the last release they accepted.
 *
 * @example
 * ```ts
 * const state: ReleaseState = memoryReleaseState();
 * await state.set('deb http://deb.debian.org/debian bookworm main', Date.parse('Sat, 11 Jul 2026 10:16:37 UTC'));
 * state.get('deb http://deb.debian.org/debian bookworm main'); // 1783…
 * ```
 */
export interface ReleaseState {
  /** The last accepted release date of source `id` (ms since the epoch), if any. */
  get(id: string): number | undefined;
  /** Records a newly accepted release date (only ever raised). */
  set(id: string, ms: number): void | Promise<void>;
}

/**
 * A {@link ReleaseState} for the life of the process.
 * @example `const src = new AptSource(line, { keyring, releaseState: memoryReleaseState() });`
 */
export function memoryReleaseState(): ReleaseState {
  const m = new Map<string, number>();
  return {
    get: (id) => m.get(id),
    set: (id, ms) => void m.set(id, Math.max(ms, m.get(id) ?? -Infinity)),
  };
}

const FILE = 'release-dates.json';

/**
 * The rollback and clock checks every source makes on a newly fetched,
 * verified release (APT `Date`, RPM repomd `<revision>`/`<timestamp>`), before
 * anything of it is used: never older than the last accepted (`last`, from
 * the state or the source's memory), never dated more than `skewMs` ahead.
 * Throws INTEGRITY naming `what`.
 * @example `_checkReleaseDate(id, 'release file', rel.date?.getTime(), state?.get(id), Date.now(), 10_000)`
 */
export function _checkReleaseDate(id: string, what: string, date: number | undefined, last: number | undefined, now: number, skewMs: number): void {
  const iso = (ms: number): string => new Date(ms).toISOString();
  if (date !== undefined && date > now + skewMs) throw new VmkitError('INTEGRITY', `${id}: ${what} is dated ${iso(date)}, more than ${skewMs} ms in the future (not valid yet)`);
  if (last === undefined) return;
  if (date === undefined) throw new VmkitError('INTEGRITY', `${id}: ${what} has no date, and one dated ${iso(last)} was accepted before`);
  if (date < last) throw new VmkitError('INTEGRITY', `${id}: ${what} dated ${iso(date)} is older than the one accepted before (${iso(last)}): refused as a rollback`);
}

/**
 * A {@link ReleaseState} kept in `dir/release-dates.json` (Node), read once
 * here and rewritten atomically on every change. A file that is not this
 * format is CORRUPT: starting over would forget what protects against rollback.
 * @example `const state = await fileReleaseState('/var/lib/vmkit-attest');`
 */
export async function fileReleaseState(dir: string): Promise<ReleaseState> {
  if (typeof dir !== 'string' || dir === '') throw new VmkitError('ARG_TYPE', 'dir must be a directory path');
  // Hidden from bundlers so browser builds do not try to resolve node:fs.
  const fsName = 'node:fs/promises';
  const fs = (await import(/* @vite-ignore */ fsName)) as typeof import('node:fs/promises');
  const path = `${dir.replace(/\/+$/, '')}/${FILE}`;
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const dates = new Map<string, number>();
  let text: string | undefined;
  try {
    text = await fs.readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new VmkitError('IO', `${path} could not be read`, { cause: e, path });
  }
  if (text !== undefined) {
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch (e) {
      throw new VmkitError('CORRUPT', `${path} is not JSON`, { cause: e, path });
    }
    const d = (doc as { version?: unknown; dates?: unknown }) ?? {};
    if (d.version !== 1 || typeof d.dates !== 'object' || d.dates === null || Array.isArray(d.dates)) throw new VmkitError('CORRUPT', `${path}: not a version 1 release-dates file`, { path });
    for (const [k, v] of Object.entries(d.dates)) {
      if (typeof v !== 'number' || !Number.isFinite(v)) throw new VmkitError('CORRUPT', `${path}: the date of ${JSON.stringify(k.slice(0, 80))} is not a number`, { path });
      dates.set(k, v);
    }
  }
  let writing: Promise<void> = Promise.resolve();
  const write = async (): Promise<void> => {
    const tmp = `${path}.${process.pid}.tmp`;
    const body = JSON.stringify({ version: 1, dates: Object.fromEntries(dates) }, null, 1) + '\n';
    const h = await fs.open(tmp, 'w', 0o600);
    try {
      await h.writeFile(body);
      await h.sync();
    } finally {
      await h.close();
    }
    await fs.rename(tmp, path);
  };
  return {
    get: (id) => dates.get(id),
    set(id, ms) {
      if ((dates.get(id) ?? -Infinity) >= ms) return;
      dates.set(id, ms);
      // One write at a time, each of the whole current map.
      writing = writing.then(write, write);
      return writing;
    },
  };
}
