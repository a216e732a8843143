/**
 * Converting an image (with its backing chain, as the guest sees it) into a
 * new image of any format vmkit writes, as `qemu-img convert`: only data
 * runs of the source are read and written (zero and unallocated runs stay
 * holes), all-zero chunks are skipped, and a VMDK can be made
 * streamOptimized (an OVA's disk).
 * @module
 */
import { VmkitError } from '../errors.js';
import { fileProvider } from './backends/file.js';
import type { Storage, StorageProvider } from './backends/storage.js';
import type { BlockDevice } from './device.js';
import { isAllZero } from './_sectors.js';
import { loadFormat, openImage } from './image.js';
import type { FormatName } from './formats/types.js';

/** Options of {@link convertImage}. */
export interface ConvertOptions {
  /** Output format (default qcow2). */
  format?: FormatName;
  /**
   * Format variant: `streamOptimized` (vmdk), `fixed`/`dynamic` (vhd,
   * vhdx); the format's default when absent.
   */
  subformat?: string;
  /** Cluster, grain or block size of the output. */
  clusterSize?: number;
  /** Chunks of 1 MiB in flight (default 8, as qemu-img's `-m 8`); see {@link CopyOptions}. */
  inFlight?: number;
  /** Where images live (default: Node files). */
  provider?: StorageProvider;
  /**
   * The output's cache mode, as `qemu-img convert -t`: `writeback` (default)
   * makes the output durable (a flush every 16 MiB beside the copy and one at
   * the end); `unsafe` (qemu-img's default) ignores flushes, so the output may
   * still be in the page cache when the call returns and a power cut can lose it.
   */
  cache?: 'writeback' | 'unsafe';
}

/** Bytes copied per request. */
const CHUNK = 1 << 20;

/** Requests in flight by default (qemu-img convert's `-m 8`). */
const IN_FLIGHT = 8;

/**
 * Bytes written between flushes started beside the copy: the disk writes the
 * output back while the copy goes on, instead of all of it in the final
 * fdatasync (measured, 128 MiB of data into qcow2 on the loaded bench
 * machine, medians of 7: 550 ms with one flush at the end, 449 ms with one
 * every 32 MiB, 386 ms every 16 MiB).
 */
const FLUSH_EVERY = 16 << 20;

/** Options of {@link copyData}. */
export interface CopyOptions {
  /** Chunks of up to 1 MiB read (and written) at once, 1 to 64 (default 8); memory is this many MiB. */
  inFlight?: number;
  /**
   * Writes in guest order (default true), as `qemu-img convert` without `-W`: each chunk is
   * written once every chunk before it is; reads still run ahead. False writes each chunk as
   * soon as it is read (the output's host layout then follows completion order).
   */
  ordered?: boolean;
}

/** `inFlight` checked: an integer from 1 to 64 (8 when absent). */
function inFlightOf(v: number | undefined, who: string): number {
  const n = v ?? IN_FLIGHT;
  if (!Number.isInteger(n) || n < 1 || n > 64) throw new VmkitError('ARG_RANGE', `${who}: inFlight must be an integer from 1 to 64, not ${String(v)}`);
  return n;
}

/** The data runs of `src` as chunks of up to {@link CHUNK} bytes, zero and unallocated runs skipped. */
async function* dataChunks(src: BlockDevice): AsyncGenerator<[number, number]> {
  let pos = 0;
  while (pos < src.size) {
    // Skip zero and unallocated runs whole; copy data in chunks of up to 1 MiB however many
    // extents make them up (compressed clusters and grains are one extent each).
    const st = await src.blockStatus(pos, Math.min(src.size - pos, 1 << 30));
    if (st.kind !== 'data') {
      pos += st.length;
      continue;
    }
    let end = pos + st.length;
    while (end - pos < CHUNK && end < src.size) {
      const nx = await src.blockStatus(end, Math.min(src.size - end, CHUNK));
      if (nx.kind !== 'data') break;
      end += nx.length;
    }
    for (let p = pos; p < end; p += CHUNK) yield [p, Math.min(CHUNK, end - p)];
    pos = end;
  }
}

/**
 * Copies the guest contents of `src` to `dst` (the same size), data runs
 * only, with up to `inFlight` chunks of 1 MiB read at once (reads, inflating
 * and writes overlap; memory stays at `inFlight` MiB); all-zero chunks are
 * not written. Returns the bytes written.
 *
 * @example
 * ```ts
 * const n = await copyData(await openImage('a.qcow2', { readOnly: true }), await openImage('b.vhdx'), { inFlight: 8 });
 * ```
 */
export async function copyData(src: BlockDevice, dst: Pick<BlockDevice, 'size' | 'write' | 'flush'>, opts: CopyOptions = {}): Promise<number> {
  if (dst.size !== src.size) throw new VmkitError('ARG_RANGE', `copyData: the destination holds ${dst.size} bytes, the source ${src.size}`);
  const depth = inFlightOf(opts.inFlight, 'copyData');
  const ordered = opts.ordered ?? true;
  const free: Uint8Array[] = [];
  const running = new Set<Promise<void>>();
  let failure: { e: unknown } | undefined;
  let written = 0;
  let unflushed = 0;
  let syncing: Promise<void> | undefined;
  // The previous chunk's whole job (read, then write): an ordered write waits for it.
  let previous: Promise<void> = Promise.resolve();
  for await (const [pos, len] of dataChunks(src)) {
    while (running.size >= depth) await Promise.race(running);
    if (failure) break;
    const buf = free.pop() ?? new Uint8Array(CHUNK);
    const before = previous;
    const job = (async (): Promise<void> => {
      const d = buf.subarray(0, len);
      await src.readInto(pos, d);
      const zero = isAllZero(d);
      if (ordered) await before;
      if (zero) return;
      await dst.write(pos, d);
      written += len;
      unflushed += len;
      if (unflushed >= FLUSH_EVERY && !syncing) {
        // Write-back of what is written so far starts now, beside the copy, so the final flush
        // waits only for the tail (one in flight at a time; its failure fails the copy).
        unflushed = 0;
        syncing = dst.flush().then(
          () => void (syncing = undefined),
          (e: unknown) => void (failure ??= { e }),
        );
      }
    })();
    previous = job;
    const tracked: Promise<void> = job.then(
      () => {},
      (e: unknown) => {
        failure ??= { e };
      },
    );
    const done = tracked.then(() => {
      running.delete(done);
      free.push(buf);
    });
    running.add(done);
  }
  // Nothing is left running into a buffer or the destination on return or throw.
  await Promise.all(running);
  await syncing;
  if (failure) throw failure.e;
  await dst.flush();
  return written;
}

/**
 * Converts the image `from` (its whole chain) to a new image `to`.
 *
 * @example
 * ```ts
 * await convertImage('vm.qcow2', 'vm.vhdx', { format: 'vhdx' });
 * await convertImage('vm.qcow2', 'disk1.vmdk', { format: 'vmdk', subformat: 'streamOptimized' });
 * ```
 */
export async function convertImage(from: string, to: string, opts: ConvertOptions = {}): Promise<{ format: FormatName; size: number; bytesWritten: number }> {
  const provider = opts.provider ?? fileProvider;
  const format = opts.format ?? 'qcow2';
  const sub = opts.subformat;
  const inFlight = inFlightOf(opts.inFlight, 'convertImage');
  const cache = opts.cache ?? 'writeback';
  if (cache !== 'writeback' && cache !== 'unsafe') throw new VmkitError('ARG_RANGE', `cache must be writeback or unsafe, got ${JSON.stringify(cache)}`);
  const out = cache === 'unsafe' ? unsafe(provider) : provider;
  const subs: Record<string, readonly string[]> = {
    vmdk: ['monolithicSparse', 'streamOptimized', 'monolithicFlat', 'twoGbMaxExtentFlat', 'twoGbMaxExtentSparse'],
    vhd: ['dynamic', 'fixed'],
    vhdx: ['dynamic', 'fixed'],
  };
  const descriptorFile = format === 'vmdk' && (sub === 'monolithicFlat' || sub === 'twoGbMaxExtentFlat' || sub === 'twoGbMaxExtentSparse');
  if (sub !== undefined && !(subs[format] ?? []).includes(sub)) {
    throw new VmkitError('ARG_RANGE', `subformat ${JSON.stringify(sub)} is not one of ${format}'s (${(subs[format] ?? []).join(', ') || 'none'})`);
  }
  const src = await openImage(from, { provider, readOnly: true });
  try {
    if (src.size % 512 !== 0) throw new VmkitError('ARG_RANGE', `${from}: size ${src.size} is not a multiple of 512`);
    const storage = await out.create(to);
    try {
      if (format === 'vmdk' && sub === 'streamOptimized') {
        const { writeStream } = await import('./formats/vmdk/stream-write.js');
        const n = await writeStream(src, storage, opts.clusterSize ? { grainSize: opts.clusterSize } : {});
        return { format, size: src.size, bytesWritten: n };
      }
      const m = await loadFormat(format);
      await m.create(storage, {
        size: src.size,
        ...(opts.clusterSize ? { clusterSize: opts.clusterSize } : {}),
        ...(sub ? { subformat: sub } : {}),
        createFile: (f: string) => out.create(out.resolve(to, f)),
      });
      await storage.flush();
    } finally {
      await storage.close();
    }
    if (descriptorFile) {
      // A descriptor and its extent files: written extent by extent (vmkit opens such disks read-only).
      const { VmdkExtentsWriter } = await import('./formats/vmdk/extents-write.js');
      const vmdk = await loadFormat('vmdk');
      const d = await out.open(to, { readOnly: true });
      let w: Awaited<ReturnType<typeof VmdkExtentsWriter.open>>;
      try {
        w = await VmdkExtentsWriter.open(d, (f) => out.open(out.resolve(to, f), { readOnly: false }), (st) => vmdk.open(st, {}));
      } finally {
        await d.close();
      }
      try {
        const n = await copyData(src, w, { ordered: true, inFlight });
        return { format, size: w.size, bytesWritten: n };
      } finally {
        await w.close();
      }
    }
    const dst = await openImage(to, { provider: out, format });
    try {
      // Devices that place each write by its guest offset take them in any order; the others
      // (VMDK's grains, VHD's blocks, appended at the end of the file) keep guest order.
      const n = await copyData(src, dst, { ordered: !(format === 'qcow2' || format === 'raw' || format === 'vhdx'), inFlight });
      return { format, size: dst.size, bytesWritten: n };
    } finally {
      await dst.close();
    }
  } finally {
    await src.close();
  }
}

/** `provider` whose stores ignore flushes (`qemu-img -t unsafe`): every other call goes to the store. */
function unsafe(provider: StorageProvider): StorageProvider {
  const wrap = (s: Storage): Storage =>
    new Proxy(s, {
      get(t, k) {
        if (k === 'flush') return async (): Promise<void> => {};
        const v: unknown = Reflect.get(t, k, t);
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
      },
    });
  return {
    open: async (n, o) => wrap(await provider.open(n, o)),
    create: async (n) => wrap(await provider.create(n)),
    resolve: (f, r) => provider.resolve(f, r),
    relative: (f, t) => provider.relative(f, t),
  };
}
