// Replicas of the attestation service behind one load balancer (issue 18): a shared nonce
// secret and the used-nonce set in a real etcd (test/_etcd.ts), so a nonce issued by one
// replica is accepted exactly once by any of them.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import { serveVmkit } from './_cli.js';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildFixtures, FIXTURES, startServer, type FixtureServer } from './_attest-server.js';
import { needTool } from './_tools.js';
import { startEtcd, type EtcdServer } from './_etcd.js';
import { AttestService, NonceStore, SourceSet, etcdReplaySet, type ReplaySet } from '../bindings/attest/service/index.js';
import { createVerifier } from '../bindings/attest/service/verifier.js';
import type { RefreshResult, RepositorySource } from '../bindings/attest/index.js';

const have = needTool('etcd', 'etcd-server');
const fixtures = ['apt-ftparchive:apt-utils', 'createrepo_c:createrepo-c', 'rpmbuild:rpm', 'gpg:gnupg', 'dpkg-deb:dpkg', 'zstd:zstd'].every((t) => needTool(t.split(':')[0]!, t.split(':')[1]!));

function emptySource(): RepositorySource {
  return { id: 'rpm http://empty.invalid', size: 1, lookupDigest: () => [], lookupPackage: () => [], refresh: async (): Promise<RefreshResult> => ({ changed: true, packages: 1 }) };
}

async function replica(secret: Uint8Array, replay: ReplaySet): Promise<{ svc: AttestService; url: string }> {
  const sources = new SourceSet([emptySource()]);
  await sources.refreshAll({ requireAll: true });
  const svc = new AttestService({ sources, verifier: await createVerifier(), nonces: { secret, replay } });
  return { svc, url: await svc.listen(0) };
}

const evidence = { digests: [{ alg: 'sha256', hex: '00'.repeat(32) }] };
async function post(url: string, nonce: string): Promise<{ status: number; reason?: string }> {
  const r = await fetch(`${url}/attest`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ nonce, evidence }) });
  const body = (await r.json()) as { error?: { reason?: string } };
  return { status: r.status, ...(body.error?.reason ? { reason: body.error.reason } : {}) };
}

describe.runIf(have)('replicas sharing a nonce secret and an etcd replay set', () => {
  let etcd: EtcdServer;
  beforeAll(async () => {
    etcd = await startEtcd();
  }, 60_000);
  afterAll(async () => {
    await etcd?.stop();
  });

  it("accepts one replica's nonce once at another, refuses it the second time (at either)", async () => {
    const secret = randomBytes(32);
    const ra = etcdReplaySet({ endpoints: etcd.endpoint });
    const rb = etcdReplaySet({ endpoints: etcd.endpoint });
    const a = await replica(secret, ra);
    const b = await replica(secret, rb);
    try {
      const { nonce } = (await (await fetch(`${a.url}/nonce`)).json()) as { nonce: string };
      expect(await post(b.url, nonce)).toEqual({ status: 200 });
      expect(await post(b.url, nonce)).toEqual({ status: 401, reason: 'unknown-or-replayed' });
      expect(await post(a.url, nonce)).toEqual({ status: 401, reason: 'unknown-or-replayed' });
      // Its issuer counts it as used: the client's quota place is free again.
      expect(a.svc.nonces.outstanding).toBe(0);
      // Many at once, each nonce sent to both replicas concurrently: exactly one wins each.
      const ns = await Promise.all(Array.from({ length: 20 }, async () => ((await (await fetch(`${b.url}/nonce`)).json()) as { nonce: string }).nonce));
      const results = await Promise.all(ns.map((n) => Promise.all([post(a.url, n), post(b.url, n)])));
      for (const [x, y] of results) expect([x.status, y.status].sort()).toEqual([200, 401]);
      // A replica with another secret takes none of them (forged), etcd or not.
      const c = await replica(randomBytes(32), etcdReplaySet({ endpoints: etcd.endpoint }));
      try {
        const { nonce: n2 } = (await (await fetch(`${a.url}/nonce`)).json()) as { nonce: string };
        expect(await post(c.url, n2)).toEqual({ status: 401, reason: 'forged' });
        expect(await post(a.url, n2)).toEqual({ status: 200 });
      } finally {
        await c.svc.close();
      }
    } finally {
      await a.svc.close();
      await b.svc.close();
      ra.close();
      rb.close();
    }
  }, 60_000);

  it('without the replay set, a replica refuses nonces it did not issue (the in-process table)', async () => {
    const secret = randomBytes(32);
    const a = new NonceStore({ secret });
    const b = new NonceStore({ secret });
    const n = a.issue();
    expect(await b.redeem(n)).toBe('unknown-or-replayed');
    expect(await a.redeem(n)).toBeUndefined();
    expect(await a.redeem(n)).toBe('unknown-or-replayed');
  });

  it('fails closed when etcd cannot be reached: 503, not an accepted nonce', async () => {
    const secret = randomBytes(32);
    const dead = etcdReplaySet({ endpoints: 'http://127.0.0.1:9', timeoutMs: 1000 });
    const store = new NonceStore({ secret, replay: dead });
    const n = store.issue();
    await expect(store.redeem(n)).rejects.toMatchObject({ code: 'INVALID_STATE' });
    const r = await replica(secret, dead);
    try {
      const { nonce } = (await (await fetch(`${r.url}/nonce`)).json()) as { nonce: string };
      expect((await post(r.url, nonce)).status).toBe(503);
    } finally {
      await r.svc.close();
    }
  });
});

describe.runIf(have && fixtures)('vmkit attest serve replicas (the CLI as child processes)', () => {
  let etcd: EtcdServer;
  let repo: FixtureServer;
  let dir: string;
  const procs: ChildProcess[] = [];
  beforeAll(async () => {
    buildFixtures();
    [etcd, repo] = await Promise.all([startEtcd(), startServer()]);
    dir = mkdtempSync(join(tmpdir(), 'vmkit-replicas-'));
  }, 60_000);
  afterAll(async () => {
    for (const p of procs) p.kill('SIGTERM');
    await etcd?.stop();
    await repo?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const serve = (args: string[]): Promise<string> => {
    const s = serveVmkit(['attest', 'serve', '--repo', `deb ${repo.url}/debian bookworm main`, '--keyring', join(FIXTURES, 'keyring.gpg'), '--port', '0', '--json', ...args]);
    procs.push(s.child);
    return s.listening(60_000);
  };

  it('--nonce-secret-file + --nonce-etcd: a nonce from one process is accepted once by the other; --state-dir keeps the release date', async () => {
    const secret = join(dir, 'nonce.key');
    writeFileSync(secret, randomBytes(32));
    const common = ['--nonce-secret-file', secret, '--nonce-etcd', etcd.endpoint];
    const [a, b] = await Promise.all([serve([...common, '--state-dir', join(dir, 'a')]), serve([...common, '--state-dir', join(dir, 'b')])]);
    const { nonce } = (await (await fetch(`${a}/nonce`)).json()) as { nonce: string };
    expect(await post(b, nonce)).toEqual({ status: 200 });
    expect(await post(b, nonce)).toEqual({ status: 401, reason: 'unknown-or-replayed' });
    expect(await post(a, nonce)).toEqual({ status: 401, reason: 'unknown-or-replayed' });
    const dates = JSON.parse(readFileSync(join(dir, 'a', 'release-dates.json'), 'utf8')) as { dates: Record<string, number> };
    expect(Object.values(dates.dates)[0]).toBeGreaterThan(0);
    // A secret too short to share is refused at start.
    writeFileSync(join(dir, 'short.key'), 'x');
    await expect(serve(['--nonce-secret-file', join(dir, 'short.key')])).rejects.toThrow(/32 bytes/);
    await expect(serve(['--nonce-etcd', etcd.endpoint])).rejects.toThrow(/nonce-secret-file/);
    expect(existsSync(join(dir, 'b', 'release-dates.json'))).toBe(true);
  }, 120_000);
});
