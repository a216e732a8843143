// A real etcd server for specs (Debian's etcd-server, /usr/bin/etcd): free ports
// on 127.0.0.1, a temporary data dir, waits until /health answers, killed and
// removed by stop(). Specs call needTool('etcd', 'etcd-server') first.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface EtcdServer {
  /** The client URL (`http://127.0.0.1:PORT`), what the store takes as an endpoint. */
  readonly endpoint: string;
  readonly pid: number;
  readonly proc: ChildProcess;
  /** The server's output so far (for a failing spec's message). */
  log(): string;
  /** SIGSTOP / SIGCONT: a server that accepts connections but never answers. */
  pause(): void;
  resume(): void;
  /** Kills the server and removes its data dir. */
  stop(): Promise<void>;
}

/** A port nobody listens on right now (the kernel picks it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a !== null ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/** Starts etcd and resolves once it reports healthy (or rejects with its log after `timeoutMs`). */
export async function startEtcd({ timeoutMs = 15_000 }: { timeoutMs?: number } = {}): Promise<EtcdServer> {
  const dir = mkdtempSync(join(tmpdir(), 'vmkit-etcd-'));
  const [clientPort, peerPort] = [await freePort(), await freePort()];
  const endpoint = `http://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  const proc = spawn(
    'etcd',
    [
      '--name', 'vmkit-test',
      '--data-dir', join(dir, 'data'),
      '--listen-client-urls', endpoint,
      '--advertise-client-urls', endpoint,
      '--listen-peer-urls', peer,
      '--initial-advertise-peer-urls', peer,
      '--initial-cluster', `vmkit-test=${peer}`,
      '--initial-cluster-state', 'new',
      '--log-level', 'warn',
      '--logger', 'zap',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  const keep = (b: Buffer): void => {
    out += b.toString();
    if (out.length > 64 * 1024) out = out.slice(-32 * 1024);
  };
  proc.stdout?.on('data', keep);
  proc.stderr?.on('data', keep);
  let exited = false;
  const exitP = new Promise<void>((r) => proc.once('exit', () => { exited = true; r(); }));

  const stop = async (): Promise<void> => {
    if (!exited) {
      try { process.kill(proc.pid!, 'SIGCONT'); } catch { /* gone */ }
      proc.kill('SIGKILL');
      await exitP;
    }
    rmSync(dir, { recursive: true, force: true });
  };

  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (exited) {
      await stop();
      throw new Error(`etcd exited before it was healthy:\n${out}`);
    }
    try {
      const r = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(500) });
      const j = (await r.json()) as { health?: string };
      if (j.health === 'true') break;
    } catch {
      /* not up yet */
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`etcd not healthy after ${timeoutMs} ms:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    endpoint,
    pid: proc.pid!,
    proc,
    log: () => out,
    pause: () => process.kill(proc.pid!, 'SIGSTOP'),
    resume: () => process.kill(proc.pid!, 'SIGCONT'),
    stop,
  };
}
