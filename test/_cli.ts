// The built `vmkit` CLI as a child process, as a user runs it: one command to its end
// (`runVmkit`), or a server (`… serve --json`) read until it prints its one JSON document
// (`serveVmkit`). Node only (the specs that use it are *.node.test.ts).
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

/** The CLI `npm run build` makes. */
export const VMKIT_BIN: string = join(process.cwd(), 'dist/bin/vmkit.js');

/** How a command ended and what it printed. */
export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Where and how long a child runs. */
export interface CliOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Killed (code null) past this many ms; default 30 s. */
  timeoutMs?: number;
}

/** Runs `vmkit <args>` to its end. */
export function runVmkit(args: string[], o: CliOptions = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [VMKIT_BIN, ...args], { cwd: o.cwd, env: o.env, stdio: ['ignore', 'pipe', 'pipe'], timeout: o.timeoutMs ?? 30_000 });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** A server started by {@link serveVmkit}. */
export interface ServedVmkit {
  child: ChildProcess;
  /** What it printed so far. */
  out(): string;
  err(): string;
  exited: Promise<number | null>;
  /** SIGTERM, when it still runs. */
  kill(): void;
  /**
   * Its first JSON document on stdout once whole (with `--json` a server prints one
   * when it listens, or its error). Rejects when it exits first or prints nothing
   * whole within `timeoutMs` (default 30 s).
   */
  json(timeoutMs?: number): Promise<Record<string, unknown>>;
  /** The address in that document's `listening` (an attestation service); rejects on any other document. */
  listening(timeoutMs?: number): Promise<string>;
}

/** Starts `vmkit <args>` (a `serve … --json`) and leaves it running; the caller kills it. */
export function serveVmkit(args: string[], o: Omit<CliOptions, 'timeoutMs'> = {}): ServedVmkit {
  const child = spawn(process.execPath, [VMKIT_BIN, ...args], { cwd: o.cwd, env: o.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  // After 'exit', stdout may still hold the last document: judge once the pipes are closed.
  const closed = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
  let doc: Promise<Record<string, unknown>> | undefined;
  const json = (timeoutMs = 30_000): Promise<Record<string, unknown>> =>
    (doc ??= new Promise((resolve, reject) => {
      const what = `vmkit ${args.join(' ')}`;
      const t = setTimeout(() => reject(new Error(`${what} did not start: ${out} ${err}`)), timeoutMs);
      const look = (): void => {
        try {
          resolve(JSON.parse(out) as Record<string, unknown>);
          clearTimeout(t);
        } catch {
          // not the whole document yet
        }
      };
      child.stdout.on('data', look);
      look();
      void closed.then((code) => {
        look();
        clearTimeout(t);
        reject(new Error(`${what} exited ${code}: ${out} ${err}`));
      });
    }));
  return {
    child,
    out: () => out,
    err: () => err,
    exited,
    kill: () => {
      if (child.exitCode === null) child.kill('SIGTERM');
    },
    json,
    listening: async (timeoutMs) => {
      const d = await json(timeoutMs);
      if (typeof d.listening !== 'string') throw new Error(`vmkit ${args.join(' ')} did not listen: ${out} ${err}`);
      return d.listening;
    },
  };
}
