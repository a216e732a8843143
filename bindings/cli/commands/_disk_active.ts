/**
 * The active-layer pointer of a served disk (docs/nbd.md, "Live jobs"): a
 * small module of its own so that a plain `vmkit disk serve` follows the
 * pointer without loading the live-job machinery.
 * @module
 */
import { VmkitError } from '../../errors.js';

/**
 * The file beside a served disk that names its active layer once a live job
 * moved it (a snapshot's delta, a consolidation into another target): JSON
 * `{"active":"<path relative to the disk's folder>"}`. `vmkit disk serve`
 * follows it, so a restarted or successor server opens the layer the guest
 * last wrote, not the frozen one below it (docs/nbd.md, "Live jobs").
 */
export const activePointerOf = (disk: string): string => `${disk}.vmkit-active`;

/** Longest pointer file read. */
const MAX_POINTER = 8192;

/** The active layer of `disk`: the layer its pointer file names, or `disk` itself. */
export async function activeLayer(disk: string): Promise<string> {
  const { readFile, stat } = await import('node:fs/promises');
  const np = await import('node:path');
  const ptr = activePointerOf(disk);
  let text: string;
  try {
    if ((await stat(ptr)).size > MAX_POINTER) throw new VmkitError('LIMIT', `${ptr} is over ${MAX_POINTER} bytes`, { path: ptr });
    text = await readFile(ptr, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return disk;
    throw e instanceof VmkitError ? e : new VmkitError('IO', `cannot read ${ptr}: ${(e as Error).message}`, { cause: e, path: ptr });
  }
  let rel: unknown;
  try {
    rel = (JSON.parse(text) as { active?: unknown }).active;
  } catch (e) {
    throw new VmkitError('CORRUPT', `${ptr} is not JSON: ${(e as Error).message}`, { cause: e, path: ptr });
  }
  if (typeof rel !== 'string' || rel.length === 0 || rel.includes('\0')) throw new VmkitError('CORRUPT', `${ptr}: "active" must name a file`, { path: ptr });
  const active = np.join(np.dirname(disk), rel);
  try {
    await stat(active);
  } catch (e) {
    throw new VmkitError('NOT_FOUND', `${ptr} names ${active} as the active layer of ${disk}, and it is missing: restore it, or remove ${ptr} to serve ${disk} itself`, { cause: e, path: active });
  }
  return active;
}
