// A real etcd for specs (Debian's etcd-server, /usr/bin/etcd): one member or a
// cluster of several on this host, free ports on 127.0.0.1, temporary data dirs,
// waits until every member's /health answers; stop() kills them and removes the
// dirs. Specs call needTool('etcd', 'etcd-server') first.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface EtcdServer {
  /** The first member's client URL (`http://127.0.0.1:PORT`). */
  readonly endpoint: string;
  /** Every member's client URL, in member order. */
  readonly endpoints: readonly string[];
  readonly pid: number;
  readonly proc: ChildProcess;
  /** The members (one unless `members` was given). */
  readonly members: readonly EtcdMember[];
  /** The servers' output so far (for a failing spec's message). */
  log(): string;
  /** SIGSTOP / SIGCONT every member: a cluster that accepts connections but never answers. */
  pause(): void;
  resume(): void;
  /** Kills every member and removes the data dirs. */
  stop(): Promise<void>;
}

export interface EtcdMember {
  readonly name: string;
  readonly endpoint: string;
  readonly proc: ChildProcess;
  /** SIGKILLs this member (a host that died); resolves once it is gone. */
  kill(): Promise<void>;
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

/** `n` distinct free ports: all held open until every one is picked (one at a time, the kernel may hand out a port twice). */
async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: n }, () => new Promise<ReturnType<typeof createServer>>((resolve, reject) => {
      const s = createServer();
      s.on('error', reject);
      s.listen(0, '127.0.0.1', () => resolve(s));
    })),
  );
  const ports = servers.map((s) => (s.address() as { port: number }).port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

/**
 * Starts etcd (one member, or a cluster of `members` on this host) and resolves once every member
 * reports healthy (or rejects with the log after `timeoutMs`).
 */
export async function startEtcd(opts: { timeoutMs?: number; members?: number } = {}): Promise<EtcdServer> {
  // The ports are free when picked, but another process (a parallel spec) may bind one before etcd
  // does: start again on new ports then.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startEtcdOnce(opts);
    } catch (e) {
      if (attempt >= 3 || !/address already in use/i.test(String(e))) throw e;
    }
  }
}

async function startEtcdOnce({ timeoutMs = 15_000, members = 1 }: { timeoutMs?: number; members?: number } = {}): Promise<EtcdServer> {
  const dir = mkdtempSync(join(tmpdir(), 'vmkit-etcd-'));
  const spec: { name: string; client: string; peer: string }[] = [];
  const ports = await freePorts(2 * members);
  // Names unique to this start: the health check below must know it reached OUR member, not
  // another spec's etcd that won the race for a port this one failed to bind.
  const tag = `${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  for (let i = 0; i < members; i++) spec.push({ name: `m${i}-${tag}`, client: `http://127.0.0.1:${ports[2 * i]}`, peer: `http://127.0.0.1:${ports[2 * i + 1]}` });
  const cluster = spec.map((m) => `${m.name}=${m.peer}`).join(',');
  let out = '';
  const keep = (b: Buffer): void => {
    out += b.toString();
    if (out.length > 64 * 1024) out = out.slice(-32 * 1024);
  };
  const procs = spec.map((m) => {
    const proc = spawn(
      'etcd',
      [
        '--name', m.name,
        '--data-dir', join(dir, m.name),
        '--listen-client-urls', m.client,
        '--advertise-client-urls', m.client,
        '--listen-peer-urls', m.peer,
        '--initial-advertise-peer-urls', m.peer,
        '--initial-cluster', cluster,
        '--initial-cluster-token', `vmkit-${process.pid}`,
        '--initial-cluster-state', 'new',
        '--log-level', 'warn',
        '--logger', 'zap',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    proc.stdout?.on('data', keep);
    proc.stderr?.on('data', keep);
    const exit = new Promise<void>((r) => (proc.exitCode !== null || proc.signalCode !== null ? r() : proc.once('exit', () => r())));
    return { proc, exit };
  });
  const gone = (i: number): boolean => procs[i]!.proc.exitCode !== null || procs[i]!.proc.signalCode !== null;
  const killOne = async (i: number): Promise<void> => {
    const { proc, exit } = procs[i]!;
    if (!gone(i)) {
      try { process.kill(proc.pid!, 'SIGCONT'); } catch { /* gone */ }
      proc.kill('SIGKILL');
    }
    await exit;
  };
  const stop = async (): Promise<void> => {
    await Promise.all(procs.map((_, i) => killOne(i)));
    rmSync(dir, { recursive: true, force: true });
  };

  const deadline = Date.now() + timeoutMs;
  for (let i = 0; i < members; i++) {
    let stranger: string | undefined;
    for (;;) {
      if (gone(i)) {
        await stop();
        throw new Error(`etcd member ${spec[i]!.name} exited before it was healthy:\n${out}`);
      }
      try {
        const r = await fetch(`${spec[i]!.client}/health`, { signal: AbortSignal.timeout(500) });
        const j = (await r.json()) as { health?: string };
        if (j.health === 'true') {
          const ml = await fetch(`${spec[i]!.client}/v3/cluster/member/list`, { method: 'POST', body: '{}', signal: AbortSignal.timeout(500) });
          const names = (((await ml.json()) as { members?: { name?: string }[] }).members ?? []).map((m) => m.name);
          if (names.includes(spec[i]!.name)) break;
          stranger = names.join(', ');
        }
      } catch {
        /* not up yet */
      }
      if (stranger !== undefined) {
        // Someone else's etcd answers on our port: ours could not bind it (the caller retries).
        await stop();
        throw new Error(`address already in use: ${spec[i]!.client} is another etcd (members ${stranger})`);
      }
      if (Date.now() > deadline) {
        await stop();
        throw new Error(`etcd not healthy after ${timeoutMs} ms:\n${out}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  const signalAll = (sig: NodeJS.Signals): void => {
    for (let i = 0; i < members; i++) if (!gone(i)) process.kill(procs[i]!.proc.pid!, sig);
  };
  return {
    endpoint: spec[0]!.client,
    endpoints: spec.map((m) => m.client),
    pid: procs[0]!.proc.pid!,
    proc: procs[0]!.proc,
    members: spec.map((m, i) => ({ name: m.name, endpoint: m.client, proc: procs[i]!.proc, kill: () => killOne(i) })),
    log: () => out,
    pause: () => signalAll('SIGSTOP'),
    resume: () => signalAll('SIGCONT'),
    stop,
  };
}
