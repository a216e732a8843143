/**
 * xz through the system's `xz -dc` (Node only): the one child-process path for
 * every xz input, whole buffers ({@link decompress}) and bodies streamed as they
 * arrive (`_verified-stream.ts`) alike.
 *
 * The wasm decoder (xz-embedded) reaches about a quarter of liblzma's speed;
 * Debian's data.tar.xz and Packages.xz are xz, so in Node a large input goes
 * through `xz -dc` when the tool exists (xz-utils is essential on Debian),
 * streamed and bounded like the wasm path. Small inputs stay in wasm: a process
 * start costs more than it saves.
 *
 * ```
 *  next() ──chunk──► child stdin (backpressure: wait for 'drain')
 *                    xz -dc -q --memlimit=256MiB   (on another core)
 *  deliver(chunk) ◄── child stdout ('data' events; a promise from deliver pauses it)
 *  exit status ≠ 0, or no xz to run ─► CORRUPT
 * ```
 * @module
 */
import { VmkitError } from '../../errors.js';

const SYSTEM_XZ_MIN = 256 << 10;

/** A child process started by {@link xzCommand}. @internal */
export interface XzChild {
  stdin: { on(ev: 'error', f: () => void): void; write(d: Uint8Array): boolean; once(ev: 'drain', f: () => void): unknown; end(): void };
  stdout: {
    on(ev: 'data', f: (c: Uint8Array) => void): unknown;
    on(ev: 'error', f: (e: Error) => void): unknown;
    on(ev: 'end' | 'close', f: () => void): unknown;
    pause(): unknown;
    resume(): unknown;
    destroy(): void;
  };
  stderr: { on(ev: 'data', f: (c: Uint8Array) => void): void };
  on(ev: 'close', f: (code: number | null) => void): void;
  on(ev: 'error', f: (e: Error) => void): void;
  kill(): void;
}

type SpawnFn = (cmd: string, args: string[], o: { stdio: string[] }) => XzChild;
let systemXz: SpawnFn | null | undefined;
let systemXzEnabled = true;

/** Turns the system-xz path off or on (tests compare both paths). @internal */
export function _useSystemXz(enabled: boolean): void {
  systemXzEnabled = enabled;
}

async function xzSpawn(): Promise<SpawnFn | undefined> {
  if (systemXz === undefined) {
    systemXz = null;
    if (typeof process !== 'undefined' && process.versions?.node) {
      try {
        // Hidden from bundlers, as node:crypto in _io.ts.
        const name = 'node:child_process';
        const cp = (await import(/* @vite-ignore */ name)) as { spawn: SpawnFn };
        // An executable xz on PATH (a look at the directories, not a process: starting
        // `xz --version` cost more than a small file's decompression).
        const fsName = 'node:fs';
        const fs = (await import(/* @vite-ignore */ fsName)) as { accessSync(p: string, mode: number): void; constants: { X_OK: number } };
        const found = (process.env.PATH ?? '').split(':').some((d) => {
          try {
            fs.accessSync(`${d || '.'}/xz`, fs.constants.X_OK);
            return true;
          } catch {
            return false;
          }
        });
        if (found) systemXz = cp.spawn;
      } catch {
        systemXz = null;
      }
    }
  }
  return systemXz ?? undefined;
}

/**
 * Starts `xz -dc` for `size` compressed bytes when the system's xz is the
 * faster way (Node, xz present, input of 256 KiB or more), else undefined.
 * @internal
 */
export async function xzCommand(size: number): Promise<(() => XzChild) | undefined> {
  if (!systemXzEnabled || size < SYSTEM_XZ_MIN) return undefined;
  const spawn = await xzSpawn();
  if (!spawn) return undefined;
  // --memlimit: a stream declaring a huge dictionary is refused instead of allocated.
  return () => spawn('xz', ['-dc', '-q', '--memlimit=256MiB'], { stdio: ['pipe', 'pipe', 'pipe'] });
}

/**
 * Moves the compressed chunks `next()` gives (undefined at the end) through a
 * child from {@link xzCommand} into `deliver`, the body fed with backpressure
 * while its output is read: decompression runs beside the consumer, on another
 * core. `deliver` may throw (everything stops) or return a promise (the child's
 * output waits for it). Rejects with the first failure: what `next` or
 * `deliver` threw, or CORRUPT when xz could not run or refused the data.
 * @internal
 */
export async function pumpXz(spawn: () => XzChild, next: () => Promise<Uint8Array | undefined>, deliver: (c: Uint8Array) => void | Promise<void>, what: string): Promise<void> {
  const p = spawn();
  let err = '';
  let spawnError: Error | undefined;
  const closed = new Promise<number | null>((r) => p.on('close', r));
  p.on('error', (e) => (spawnError = e));
  p.stderr.on('data', (c) => (err += new TextDecoder().decode(c)));
  p.stdin.on('error', () => {}); // EPIPE when xz stops early on bad input: its exit status tells.
  let stop = false;
  const feeding = (async () => {
    try {
      for (let c = await next(); c; c = await next()) {
        if (stop) return;
        // Resolves on drain, or once xz has gone (it stopped reading: bad data, or killed).
        if (!p.stdin.write(c)) await new Promise<void>((r) => (p.stdin.once('drain', r), void closed.then(() => r())));
      }
      p.stdin.end();
    } catch (e) {
      // The body failed (network, longer than signed, cancelled): xz would wait for the rest of
      // its input forever; ending it ends its output, and the reader below rethrows this.
      stop = true;
      p.kill();
      throw e;
    }
  })();
  feeding.catch(() => {});
  let done = false;
  try {
    // 'data' events rather than for-await: some 5 000 chunks of ~10 KiB (xz writes 8 KiB at a
    // time), and an async iterator costs a promise and a microtask turn each (~30 ms of CPU here).
    await new Promise<void>((resolve, reject) => {
      const out = p.stdout;
      const fail = (e: unknown): void => {
        reject(e);
        out.destroy();
      };
      out.on('data', (c: Uint8Array) => {
        try {
          const wait = deliver(new Uint8Array(c.buffer, c.byteOffset, c.length));
          if (wait) {
            out.pause();
            wait.then(() => out.resume(), fail);
          }
        } catch (e) {
          fail(e);
        }
      });
      out.on('error', reject);
      out.on('end', resolve);
      out.on('close', resolve); // destroyed: the rejection above came first
    });
    done = true;
    // xz may have ended early (bad data): the feeder stops writing; a streaming caller reads the rest through its hash.
    stop = true;
  } catch (e) {
    stop = true;
    p.kill();
    // A body that failed to arrive explains more than the broken pipe it left.
    await feeding;
    throw e;
  } finally {
    if (!done) {
      stop = true;
      p.kill();
    }
  }
  await feeding;
  const code = await closed;
  if (spawnError) throw new VmkitError('CORRUPT', `${what}: xz could not run: ${spawnError.message}`, { cause: spawnError, path: what });
  if (code !== 0) throw new VmkitError('CORRUPT', `${what}: not valid xz data: ${err.trim().slice(0, 200) || `xz exited ${code}`}`, { path: what });
}
