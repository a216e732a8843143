/**
 * Where checkpoints are written to and read from: files (Node, through
 * positioned reads and writes, 64-bit offsets as safe integers) or buffers
 * (any runtime). The writer and reader count every call, so benchmarks and
 * tests can check "one write per storage block".
 * @module
 */
import { VmkitError } from '../../errors.js';

/**
 * A destination for a checkpoint writer.
 *
 * @example
 * ```ts
 * import { CheckpointWriter, memorySink } from 'vmkit/memory';
 * const sink = memorySink(); // any CheckpointSink: write/close (+ optional writeSync, sync)
 * const w = await CheckpointWriter.create(sink, { guestSize: 1 << 20 });
 * ```
 */
export interface CheckpointSink {
  /** Writes all of `data` at `position`. `data` may be reused by the writer once the promise settles: copy it to keep it. */
  write(data: Uint8Array, position: number): Promise<void>;
  /** Synchronous variant (files in Node): lets the writer write a block straight from core memory, with no copy. */
  writeSync?(data: Uint8Array, position: number): void;
  /** Makes earlier writes durable (files: fdatasync). */
  sync?(): Promise<void>;
  /** Releases the sink. */
  close(): Promise<void>;
}

/**
 * A source for a checkpoint reader.
 *
 * @example
 * ```ts
 * import { CheckpointReader, memorySource } from 'vmkit/memory';
 * const r = await CheckpointReader.open(memorySource(bytes)); // any CheckpointSource
 * ```
 */
export interface CheckpointSource {
  /** Bytes in the source. */
  readonly size: number;
  /** Fills `dst` from `position` (throws CORRUPT if the source ends first). */
  read(position: number, dst: Uint8Array): Promise<void>;
  /**
   * Synchronous variant (files in Node, buffers). The reader reads page
   * records with it straight into core memory: it must not call vmkit.
   */
  readSync?(position: number, dst: Uint8Array): void;
  /**
   * A hint that `[position, position + length)` will be read soon (remote
   * sources fetch it in one request in the background; reads inside it wait
   * for it). A full restore gives the span of the next window's records.
   */
  prefetch?(position: number, length: number): void;
  /**
   * `length` bytes from `position` without a copy when the source holds them
   * (a remote source's cache): the view is read-only and may be shared, to be
   * used before the caller's next await. Same errors as {@link read}.
   */
  readView?(position: number, length: number): Promise<Uint8Array>;
  /**
   * Bytes of prefetched spans the source keeps (its cache): a full restore
   * keeps up to half of it fetching ahead of the window it decodes.
   */
  readonly prefetchBytes?: number;
  /** Releases the source. */
  close(): Promise<void>;
}

type Fs = typeof import('node:fs');
let fsMod: Fs | undefined;

/** node:fs, imported on first use (hidden from bundlers so browser builds never resolve it). */
export async function nodeFs(): Promise<Fs> {
  if (!fsMod) {
    const name = 'node:fs';
    fsMod = (await import(/* @vite-ignore */ name)) as Fs;
  }
  return fsMod;
}

function ioError(e: unknown, path: string): VmkitError {
  const code = (e as NodeJS.ErrnoException)?.code === 'ENOENT' ? 'NOT_FOUND' : 'IO';
  return new VmkitError(code, `${path}: ${(e as Error)?.message ?? String(e)}`, { cause: e, path });
}

/**
 * Opens (creating or truncating) a file as a checkpoint sink.
 * @example
 * ```ts
 * const sink = await fileSink('/tmp/vm.ckpt');
 * ```
 */
export async function fileSink(path: string): Promise<CheckpointSink> {
  const fs = await nodeFs();
  let fd: number;
  try {
    fd = fs.openSync(path, 'w');
  } catch (e) {
    throw ioError(e, path);
  }
  const write = (data: Uint8Array, position: number): Promise<void> =>
    new Promise((resolve, reject) => {
      const step = (done: number): void => {
        if (done >= data.length) return resolve();
        fs.write(fd, data, done, data.length - done, position + done, (err, n) => {
          if (err) reject(ioError(err, path));
          else step(done + n);
        });
      };
      step(0);
    });
  return {
    write,
    writeSync(data, position) {
      try {
        let done = 0;
        while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, position + done);
      } catch (e) {
        throw ioError(e, path);
      }
    },
    sync: () => new Promise((res, rej) => fs.fdatasync(fd, (e) => (e ? rej(ioError(e, path)) : res()))),
    close: async () => {
      if (fd >= 0) fs.closeSync(fd);
      fd = -1;
    },
  };
}

/**
 * Opens a file as a checkpoint source (positioned reads, sync and async).
 * @example
 * ```ts
 * const src = await fileSource('/tmp/vm.ckpt');
 * ```
 */
export async function fileSource(path: string): Promise<CheckpointSource> {
  const fs = await nodeFs();
  let fd: number;
  let size: number;
  try {
    fd = fs.openSync(path, 'r');
    size = fs.fstatSync(fd).size;
  } catch (e) {
    throw ioError(e, path);
  }
  const short = (position: number): never => {
    throw new VmkitError('CORRUPT', `${path}: unexpected end of file at ${position}`, { path, offset: position });
  };
  return {
    size,
    readSync(position, dst) {
      if (position + dst.length > size) short(position);
      let done = 0;
      while (done < dst.length) {
        const n = fs.readSync(fd, dst, done, dst.length - done, position + done);
        if (n === 0) short(position + done);
        done += n;
      }
    },
    read(position, dst) {
      if (position + dst.length > size) return Promise.reject(new VmkitError('CORRUPT', `${path}: unexpected end of file`, { path, offset: position }));
      return new Promise((resolve, reject) => {
        const step = (done: number): void => {
          if (done >= dst.length) return resolve();
          fs.read(fd, dst, done, dst.length - done, position + done, (err, n) => {
            if (err) reject(ioError(err, path));
            else if (n === 0) reject(new VmkitError('CORRUPT', `${path}: unexpected end of file`, { path, offset: position + done }));
            else step(done + n);
          });
        };
        step(0);
      });
    },
    close: async () => {
      if (fd >= 0) fs.closeSync(fd);
      fd = -1;
    },
  };
}

/**
 * A sink that collects the checkpoint in memory; `bytes()` returns the file.
 * @example
 * ```ts
 * const sink = memorySink();
 * const w = await CheckpointWriter.create(sink, { guestSize: 1 << 20 });
 * await w.finish();
 * const file = sink.bytes();
 * ```
 */
export function memorySink(): CheckpointSink & { bytes(): Uint8Array } {
  let buf = new Uint8Array(1 << 16);
  let len = 0;
  return {
    async write(data, position) {
      const end = position + data.length;
      if (end > buf.length) {
        let cap = buf.length;
        while (cap < end) cap *= 2;
        const nb = new Uint8Array(cap);
        nb.set(buf.subarray(0, len));
        buf = nb;
      }
      buf.set(data, position);
      len = Math.max(len, end);
    },
    async close() {},
    bytes: () => buf.slice(0, len),
  };
}

/**
 * A source over bytes in memory.
 * @example
 * ```ts
 * const reader = await CheckpointReader.open(memorySource(bytes));
 * ```
 */
export function memorySource(bytes: Uint8Array): CheckpointSource {
  const short = (position: number): never => {
    throw new VmkitError('CORRUPT', `checkpoint: unexpected end of data at ${position}`, { offset: position });
  };
  const readSync = (position: number, dst: Uint8Array): void => {
    if (position < 0 || position + dst.length > bytes.length) short(position);
    dst.set(bytes.subarray(position, position + dst.length));
  };
  return {
    size: bytes.length,
    readSync,
    read: async (position, dst) => readSync(position, dst),
    close: async () => {},
  };
}
