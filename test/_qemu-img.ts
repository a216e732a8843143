// QEMU's disk tools as the peer of the disk specs (Node only): run qemu-img and
// qemu-io, read an image's guest contents as QEMU and as vmkit see them, and
// compare maps and contents. Callers check for the tools with needTool first.
import { execFileSync, spawnSync } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { openImage } from '../bindings/disk/image.js';
import type { QemuMapEntry } from '../bindings/disk/device.js';

/** Runs qemu-img; its stdout. A failure throws with QEMU's stderr in the error. */
export const qimg = (...args: string[]): string => execFileSync('qemu-img', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

/** Runs qemu-io commands (`-c` each) on an image of `format`. */
export function qemuIo(format: string, file: string, ...cmds: string[]): void {
  execFileSync('qemu-io', ['-f', format, ...cmds.flatMap((c) => ['-c', c]), file], { encoding: 'utf8' });
}

/** Guest contents as QEMU sees them (through the chain); `format` unset lets qemu-img probe. */
export async function qemuRaw(file: string, format?: string): Promise<Uint8Array> {
  const out = join(dirname(file), `q-${Math.random().toString(36).slice(2)}.raw`);
  qimg('convert', ...(format ? ['-f', format] : []), '-O', 'raw', file, out);
  const b = new Uint8Array(await readFile(out));
  await rm(out);
  return b;
}

/** Guest contents as vmkit sees them (through the chain). */
export async function vmkitRaw(file: string): Promise<Uint8Array> {
  const dev = await openImage(file, { readOnly: true });
  try {
    return await dev.read(0, dev.size);
  } finally {
    await dev.close();
  }
}

/** `qemu-img check` counts (qemu-img exits non-zero when it finds any; the JSON is still on stdout). */
export function qemuCheck(file: string): { corruptions: number; leaks: number; checkErrors: number } {
  let out: string;
  try {
    out = qimg('check', '--output=json', file);
  } catch (e) {
    out = (e as { stdout?: string }).stdout ?? '';
    if (!out) throw e;
  }
  const j = JSON.parse(out) as { corruptions?: number; leaks?: number; 'check-errors'?: number };
  return { corruptions: j.corruptions ?? 0, leaks: j.leaks ?? 0, checkErrors: j['check-errors'] ?? 0 };
}

/** First differing byte index, or -1 (toEqual on megabytes is far too slow). */
export function diff(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  if (Buffer.compare(a, b) === 0) return -1;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/** A qemu-img map with adjacent entries of equal kind merged and host offsets of absent ones dropped, so two maps of the same contents compare equal. */
export function mergeMap(m: QemuMapEntry[]): QemuMapEntry[] {
  const out: QemuMapEntry[] = [];
  for (const x of m) {
    const e: QemuMapEntry = { ...x };
    // QEMU also prints host offsets of absent runs (unallocated subclusters in an allocated cluster).
    if (!e.present) delete e.offset;
    const prev = out[out.length - 1];
    if (prev && prev.start + prev.length === e.start && prev.depth === e.depth && prev.present === e.present && prev.zero === e.zero && prev.data === e.data && (prev.offset === undefined ? e.offset === undefined : e.offset === prev.offset + prev.length)) prev.length += e.length;
    else out.push(e);
  }
  return out;
}

/** What a `check --output=json` run gave: the exit code and the JSON (undefined when stdout is empty, as for raw). */
export interface CheckRun {
  status: number | null;
  json: Record<string, unknown> | undefined;
}

/** `qemu-img check --output=json [extra…] file` in `cwd`. */
export function qemuCheckRun(cwd: string, file: string, ...extra: string[]): CheckRun {
  const r = spawnSync('qemu-img', ['check', '--output=json', ...extra, file], { cwd, encoding: 'utf8' });
  return { status: r.status, json: r.stdout.trim() ? (JSON.parse(r.stdout) as Record<string, unknown>) : undefined };
}

/**
 * The keys of qemu-img's check JSON with qemu-img's values: vmkit's JSON must
 * hold every one of them with the same value (it may add `messages`).
 */
export function qemuCheckKeys(q: CheckRun, mine: Record<string, unknown> | undefined): { qemu: Record<string, unknown>; vmkit: Record<string, unknown> } {
  const qemu = q.json ?? {};
  const vmkit = Object.fromEntries(Object.keys(qemu).map((k) => [k, mine?.[k]]));
  return { qemu, vmkit };
}
