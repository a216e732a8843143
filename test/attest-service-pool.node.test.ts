// The service's appraisal pool (bindings/attest/service/_pool.ts) and small requests first
// (_turns.ts): the pause budget's share and bound on a simulated clock, the flag and turns of
// small requests in flight; the service with either pool: a small request held in flight
// forever neither loses its answer nor starves a large one; a worker process in a session and
// autogroup of its own at the pool's nice value, and killed mid-request: a 500, not a hang.
import { afterEach, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { connect } from 'node:net';
import { existsSync, readFileSync } from 'node:fs';
import { request } from 'node:http';
import { _PauseBudget, _SmallFirst, _yieldToSmall } from '../bindings/attest/service/_turns.js';
import type { AttestService } from '../bindings/attest/service/index.js';
import type { RefreshResult, RepositorySource } from '../bindings/attest/index.js';

describe('pause budget', () => {
  it('starts full, is spent by pauses, refills at its share of wall time', () => {
    let t = 0;
    const b = new _PauseBudget(50, 0.75, () => t);
    expect(b.allowed()).toBe(50);
    b.spent(50);
    expect(b.allowed()).toBe(0);
    t += 10;
    expect(b.allowed()).toBeCloseTo(7.5);
    t += 1000;
    expect(b.allowed()).toBe(50); // never above the cap
  });

  it('under small requests without end, pauses take at most 3/4 of the time and never more than the cap at once', () => {
    let t = 0;
    const b = new _PauseBudget(50, 0.75, () => t);
    let paused = 0;
    let longest = 0;
    // A worker with a checkpoint every 0.2 ms of work, the flag always up, for 20 s.
    while (t < 20_000) {
      t += 0.2;
      const ms = b.allowed();
      if (ms > 0) {
        t += ms;
        b.spent(ms);
        paused += ms;
        longest = Math.max(longest, ms);
      }
    }
    // 3/4 of the time, plus the full budget at the start.
    expect(paused).toBeLessThanOrEqual(0.75 * t + 50);
    expect(paused / t).toBeGreaterThan(0.7);
    expect(longest).toBeLessThanOrEqual(50);
  });
});

describe('small requests in flight', () => {
  it('raise the shared flag while any is in flight', () => {
    const s = new _SmallFirst();
    expect(Atomics.load(s.flag, 0)).toBe(0);
    s.enter();
    s.enter();
    expect(Atomics.load(s.flag, 0)).toBe(1);
    s.leave();
    expect(Atomics.load(s.flag, 0)).toBe(1);
    s.leave();
    expect(Atomics.load(s.flag, 0)).toBe(0);
    expect(s.inFlight).toBe(0);
  });

  it("a large slice's turn waits for the small requests to end", async () => {
    const s = new _SmallFirst(new _PauseBudget(600_000));
    s.enter();
    const order: string[] = [];
    const turn = s.turn().then(() => order.push('turn'));
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    order.push('leave');
    s.leave();
    await turn;
    expect(order).toEqual(['leave', 'turn']);
  });

  it('a turn does not wait once the budget is spent', async () => {
    const t = 0;
    const b = new _PauseBudget(50, 0.75, () => t);
    b.spent(50);
    const spent = new _SmallFirst(b);
    spent.enter();
    await spent.turn(); // resolves with the small request still in flight
    expect(spent.inFlight).toBe(1);
    spent.leave();
  });

  it("a worker's checkpoint returns at once when the flag is down or the budget spent", () => {
    const s = new _SmallFirst();
    let t = 0;
    const b = new _PauseBudget(50, 0.75, () => t);
    _yieldToSmall(s.flag, b);
    expect(b.allowed()).toBe(50); // flag down: nothing spent
    s.enter();
    b.spent(50);
    _yieldToSmall(s.flag, b); // flag up, nothing left: no wait (a wait would spend real time)
    expect(b.allowed()).toBe(0);
    s.leave();
  });
});

// ---------------------------------------------------------------- the service

function emptySource(): RepositorySource {
  return {
    id: 'rpm http://empty.invalid',
    size: 1,
    lookupDigest: () => [],
    lookupPackage: () => [],
    refresh: async (): Promise<RefreshResult> => ({ changed: true, packages: 1 }),
  };
}

function imaNg(i: number): string {
  const hex = createHash('sha256').update(String(i)).digest('hex');
  const path = `/usr/lib/f${i}.so`;
  const d = Buffer.concat([Buffer.from('sha256:\0'), Buffer.from(hex, 'hex')]);
  const p = Buffer.from(path + '\0');
  const le = (n: number): Buffer => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(n);
    return b;
  };
  const th = createHash('sha1').update(Buffer.concat([le(d.length), d, le(p.length), p])).digest('hex');
  return `10 ${th} ima-ng sha256:${hex} ${path}`;
}

function http(url: string, method = 'GET', body?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, headers: body ? { 'content-type': 'application/json' } : {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

let svc: AttestService | undefined;
afterEach(async () => {
  await svc?.close({ graceMs: 0 });
  svc = undefined;
});

type Mod = typeof import('../bindings/attest/service/index.js');
// The built service: its pool's worker script exists only in dist/.
async function built(options: { pool: 'threads' | 'processes'; workerNice?: number }): Promise<{ mod: Mod; base: string }> {
  const mod = (await import(/* @vite-ignore */ new URL('../dist/attest/service/index.js', import.meta.url).href)) as Mod;
  const sources = new mod.SourceSet([emptySource()]);
  await sources.refreshAll({ requireAll: true });
  svc = new mod.AttestService({ sources, verifier: await mod.createVerifier(), workers: 1, ...options });
  return { mod, base: await svc.listen(0) };
}

const logOf = (n: number): string => Array.from({ length: n }, (_, i) => imaNg(i)).join('\n') + '\n';
const poolPids = (): number[] => (svc as unknown as { pool: { _pids: number[] } }).pool._pids;

describe.each(['threads', 'processes'] as const)('the service, small requests first (pool: %s)', (pool) => {
  it('a small request held in flight does not starve a large one, and is answered when its body ends', async () => {
    const { base } = await built({ pool });
    expect(svc!.metrics()).toMatch(/vmkit_attest_workers 1\n/);
    // A small request whose body never ends (until we say): in flight all along.
    const sock = connect(Number(new URL(base).port), '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    const nonce1 = (JSON.parse((await http(`${base}/nonce`)).body) as { nonce: string }).nonce;
    const smallBody = JSON.stringify({ nonce: nonce1, evidence: { digests: [{ alg: 'sha256', hex: '00'.repeat(32) }] } });
    sock.write(`POST /attest HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: ${smallBody.length}\r\n\r\n${smallBody.slice(0, 10)}`);
    const answer = new Promise<string>((resolve) => {
      let got = '';
      sock.on('data', (c: Buffer) => {
        got += c.toString();
        if (/\r\n\r\n[\s\S]*\}/.test(got)) resolve(got);
      });
    });
    await new Promise((r) => setTimeout(r, 50));
    expect(svc!.metrics()).toMatch(/vmkit_attest_small_in_flight 1\n/);
    // A large request meanwhile (20,000 entries, 2 MiB): its worker and its slices give way to
    // the small request for at most 3/4 of the time, so it is answered all the same.
    const log = logOf(20_000);
    const nonce2 = (JSON.parse((await http(`${base}/nonce`)).body) as { nonce: string }).nonce;
    const large = await http(`${base}/attest`, 'POST', JSON.stringify({ nonce: nonce2, evidence: { ima: { log } } }));
    expect(large.status).toBe(200);
    const claims = JSON.parse(Buffer.from((JSON.parse(large.body) as { ear: string }).ear.split('.')[1]!, 'base64url').toString('utf8')) as { submods: Record<string, Record<string, { summary: { items: number } }>> };
    expect(claims.submods['vmkit-ima']!['vmkit.appraisal']!.summary.items).toBe(20_000);
    expect(svc!.metrics()).toMatch(/vmkit_attest_small_in_flight 1\n/);
    // The small request ends: answered.
    sock.write(smallBody.slice(10));
    expect(await answer).toMatch(/^HTTP\/1\.1 200/);
    sock.destroy();
    await new Promise((r) => setTimeout(r, 20));
    expect(svc!.metrics()).toMatch(/vmkit_attest_small_in_flight 0\n/);
  }, 120_000);
});

describe('the pool of worker processes', () => {
  it('runs each worker in a session of its own, its autogroup (Linux) at the nice value asked', async () => {
    await built({ pool: 'processes', workerNice: 7 });
    const [pid] = poolPids();
    expect(pid).toBeGreaterThan(0);
    // Its own session: its session id is its pid (setsid), not ours.
    const stat = (): string[] => readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    expect(Number(stat()[3])).toBe(pid);
    const group = `/proc/${pid}/autogroup`;
    if (!existsSync(group)) return; // a kernel without autogroups: the threads' nice value below still holds
    // The child sets its priorities as it starts: wait for it (bounded).
    for (let i = 0; i < 300 && !(/ nice 7$/.test(readFileSync(group, 'utf8').trim()) && Number(stat()[16]) === 7); i++) await new Promise((r) => setTimeout(r, 20));
    expect(readFileSync(group, 'utf8').trim()).toMatch(/ nice 7$/);
    expect(readFileSync(group, 'utf8')).not.toBe(readFileSync('/proc/self/autogroup', 'utf8'));
    expect(Number(stat()[16])).toBe(7); // the main thread's nice value
  });

  it('a worker process killed mid-request: the request is answered 500 (IO), not left hanging; the next is served by a new worker', async () => {
    const { base } = await built({ pool: 'processes' });
    const [pid] = poolPids();
    const nonce = (JSON.parse((await http(`${base}/nonce`)).body) as { nonce: string }).nonce;
    const pending = http(`${base}/attest`, 'POST', JSON.stringify({ nonce, evidence: { ima: { log: logOf(60_000) } } }));
    // Kill it once it has the job.
    for (let i = 0; i < 1000 && !svc!.metrics().includes('vmkit_attest_workers_busy 1\n'); i++) await new Promise((r) => setTimeout(r, 5));
    expect(svc!.metrics()).toContain('vmkit_attest_workers_busy 1\n');
    process.kill(pid!, 'SIGKILL');
    const r = await pending;
    expect(r.status).toBe(500);
    expect((JSON.parse(r.body) as { error: { code: string } }).error.code).toBe('IO');
    // Replaced: another process, and it serves.
    for (let i = 0; i < 500 && (poolPids().length !== 1 || poolPids()[0] === pid); i++) await new Promise((r) => setTimeout(r, 10));
    expect(poolPids()).toHaveLength(1);
    expect(poolPids()[0]).not.toBe(pid);
    const nonce2 = (JSON.parse((await http(`${base}/nonce`)).body) as { nonce: string }).nonce;
    const next = await http(`${base}/attest`, 'POST', JSON.stringify({ nonce: nonce2, evidence: { ima: { log: logOf(2_000) } } }));
    expect(next.status).toBe(200);
  }, 120_000);
});

describe.each(['threads', 'processes'] as const)('a worker that dies while the body is still arriving (pool: %s)', (pool) => {
  it('the request is answered 500 (IO) once its body ends, not left hanging', async () => {
    const { base } = await built({ pool });
    const nonce = (JSON.parse((await http(`${base}/nonce`)).body) as { nonce: string }).nonce;
    const body = JSON.stringify({ nonce, evidence: { ima: { log: logOf(2_000) } } });
    const half = 200 << 10; // past largeBodyBytes: the job is on the worker
    const sock = connect(Number(new URL(base).port), '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    let got = '';
    const answer = new Promise<string>((resolve) => {
      sock.on('data', (c: Buffer) => {
        got += c.toString();
        if (/\r\n\r\n[\s\S]*\}/.test(got)) resolve(got);
      });
    });
    sock.write(`POST /attest HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body.slice(0, half)}`);
    for (let i = 0; i < 1000 && !svc!.metrics().includes('vmkit_attest_workers_busy 1\n'); i++) await new Promise((r) => setTimeout(r, 5));
    expect(svc!.metrics()).toContain('vmkit_attest_workers_busy 1\n');
    // The worker dies (a crash, the OOM killer) with the upload half done.
    await (svc as unknown as { pool: { slots: { worker: { kill(): Promise<void> } }[] } }).pool.slots[0]!.worker.kill();
    for (let i = 0; i < 500 && !svc!.metrics().includes('vmkit_attest_workers_busy 0\n'); i++) await new Promise((r) => setTimeout(r, 10));
    sock.write(body.slice(half));
    const r = await answer;
    expect(r).toMatch(/^HTTP\/1\.1 500/);
    expect(r).toContain('"code":"IO"');
    sock.destroy();
  }, 60_000);
});
