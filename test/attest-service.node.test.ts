// The attestation service over real repositories (scripts/attest-fixtures.sh,
// served by test/_attest-server.ts): nonces, request validation and limits,
// refresh that keeps the last verified index, health and metrics; then end
// to end with the real appraisal and EAR signing, in-process and through the
// CLI as a child process.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { join } from 'node:path';
import fc from 'fast-check';
import { imaFixtures } from './_ima-fixtures.js';
import { needTool } from './_tools.js';
import { buildFixtures, FIXTURES, startServer, type FixtureServer } from './_attest-server.js';
import { openSource, readKeyring, type Keyring, type RefreshResult, type RepositorySource } from '../bindings/attest/index.js';
import {
  AttestService,
  NonceStore,
  SourceSet,
  parseAttestRequest,
  statusOf,
  type Verifier,
} from '../bindings/attest/service/index.js';
import type { Appraisal, Evidence } from '../bindings/attest/appraise.js';
import { createVerifier, requestAttestation, verifyToken } from '../bindings/attest/service/verifier.js';
import { runVmkit, serveVmkit, type CliResult } from './_cli.js';
import { imaNgLine } from './_ima-line.js';
import { VmkitError } from '../bindings/errors.js';

const tools = ['apt-ftparchive:apt-utils', 'createrepo_c:createrepo-c', 'rpmbuild:rpm', 'gpg:gnupg', 'dpkg-deb:dpkg', 'zstd:zstd'];
const ready = tools.every((t) => needTool(t.split(':')[0]!, t.split(':')[1]!));
const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

describe('NonceStore', () => {
  it('accepts a nonce once, refuses replays, forgeries, malformed and expired nonces', () => {
    let now = 1_000_000;
    const s = new NonceStore({ ttlMs: 1000, now: () => now });
    const a = s.issue();
    const b = s.issue();
    expect(a).not.toBe(b);
    expect(a.length).toBeLessThanOrEqual(128);
    expect(s.consume(a)).toBeUndefined();
    expect(s.consume(a)).toBe('unknown-or-replayed');
    // One character changed: the MAC no longer matches.
    const flipped = b.slice(0, 5) + (b[5] === 'A' ? 'B' : 'A') + b.slice(6);
    expect(s.consume(flipped)).toBe('forged');
    expect(s.consume('x')).toBe('malformed');
    expect(s.consume(42)).toBe('malformed');
    // Another store's nonce (another secret) is a forgery here.
    expect(s.consume(new NonceStore().issue())).toBe('forged');
    now += 1000;
    expect(s.consume(b)).toBe('expired');
    expect(s.stats.accepted).toBe(1);
    expect(s.stats.refused.forged).toBe(2);
  });

  it('bounds the nonces outstanding and forgets expired ones', () => {
    let now = 0;
    const s = new NonceStore({ ttlMs: 100, maxOutstanding: 3, now: () => now });
    for (let i = 0; i < 3; i++) s.issue();
    expect(() => s.issue()).toThrow(expect.objectContaining({ code: 'LIMIT' }));
    now = 100;
    s.issue();
    expect(s.outstanding).toBe(1);
  });

  it('never throws on any input (fuzz)', () => {
    const s = new NonceStore();
    const good = s.issue();
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.string({ minLength: 54, maxLength: 54 }), fc.anything()), (x) => {
        const r = s.consume(x);
        expect(['malformed', 'forged', 'unknown-or-replayed', 'expired']).toContain(r);
      }),
      { numRuns: 500 },
    );
    expect(s.consume(good)).toBeUndefined();
  });
});

describe('request validation', () => {
  const hex = 'ab'.repeat(32);
  it('accepts the documented shape and normalizes hex', () => {
    const r = parseAttestRequest({
      nonce: 'n',
      evidence: {
        digests: [{ alg: 'sha256', hex: hex.toUpperCase(), path: '/usr/bin/x' }],
        packages: [{ name: 'hello', version: '2.10-3', digest: { alg: 'sha256', hex } }],
        ima: { log: '', pcr10: { bank: 'sha1', hex: '00'.repeat(20) }, excludes: ['^/tmp/'] },
      },
    });
    expect(r.evidence.digests![0]).toEqual({ alg: 'sha256', hex, path: '/usr/bin/x' });
    expect(r.evidence.packages![0]!.digest!.hex).toBe(hex);
    expect(r.evidence.ima!.pcr10!.bank).toBe('sha1');
  });
  it('refuses bad shapes with stable codes', () => {
    const bad: [unknown, string][] = [
      [null, 'ARG_TYPE'],
      [[], 'ARG_TYPE'],
      [{ nonce: 'n' }, 'ARG_TYPE'],
      [{ nonce: 'n', evidence: {} }, 'ARG_RANGE'],
      [{ nonce: 'n', evidence: { digests: [{ alg: 'sha256', hex: 'ab' }] } }, 'ARG_RANGE'],
      [{ nonce: 'n', evidence: { digests: [{ alg: 'crc32', hex }] } }, 'ARG_RANGE'],
      [{ nonce: 'n', evidence: { packages: [{ name: 'a' }] } }, 'ARG_TYPE'],
      [{ nonce: 'n', evidence: { digests: 'x' } }, 'ARG_TYPE'],
      [{ nonce: 'n', evidence: { ima: { log: 1 } } }, 'ARG_TYPE'],
      [{ nonce: 'n', evidence: { ima: { log: '', pcr10: { bank: 'sha256', hex: '00' } } } }, 'ARG_RANGE'],
      [{ nonce: 'n', evidence: { digests: [] }, extra: 1 }, 'ARG_RANGE'],
      [{ nonce: 'n'.repeat(129), evidence: { digests: [{ alg: 'sha256', hex }] } }, 'ARG_RANGE'],
    ];
    for (const [b, code] of bad) expect(() => parseAttestRequest(b), JSON.stringify(b)).toThrow(expect.objectContaining({ code }));
    expect(() => parseAttestRequest({ nonce: 'n', evidence: { digests: Array(11).fill({ alg: 'sha256', hex }) } }, 10)).toThrow(expect.objectContaining({ code: 'LIMIT' }));
  });
  it('throws only VmkitError 4xx codes on any JSON (fuzz)', () => {
    fc.assert(
      fc.property(fc.oneof(fc.jsonValue(), fc.record({ nonce: fc.string(), evidence: fc.jsonValue() })), (v) => {
        try {
          parseAttestRequest(v);
        } catch (e) {
          expect(e).toBeInstanceOf(VmkitError);
          const st = statusOf(e);
          expect(st >= 400 && st < 500).toBe(true);
        }
      }),
      { numRuns: 1000 },
    );
  });
});

/** A source that answers from nothing and refreshes as told (scheduling tests). */
function fakeSource(next: () => { validUntil?: Date; fail?: boolean }): RepositorySource & { calls: number } {
  const src = {
    id: 'rpm http://fake.invalid',
    calls: 0,
    size: 1,
    lookupDigest: () => [],
    lookupPackage: () => [],
    async refresh(): Promise<RefreshResult> {
      src.calls++;
      const n = next();
      if (n.fail) throw new VmkitError('NETWORK', 'down');
      return { changed: src.calls === 1, packages: 1, ...(n.validUntil ? { validUntil: n.validUntil } : {}) };
    },
  };
  return src;
}

describe('SourceSet scheduling', () => {
  it('refreshes before Valid-Until even when the interval is long', async () => {
    const src = fakeSource(() => ({ validUntil: new Date(Date.now() + 2000) }));
    const set = new SourceSet([src], { intervalMs: 3_600_000 });
    await set.refreshAll({ requireAll: true });
    set.start();
    // Due ~1 s in (half the time left before Valid-Until); the interval alone would wait an hour.
    // Polled rather than slept: a loaded machine runs timers late.
    await vi.waitFor(() => expect(src.calls).toBeGreaterThanOrEqual(2), { timeout: 20_000, interval: 20 });
    set.close();
    expect(set.status()[0]!.validUntil).toBeInstanceOf(Date);
  });
  it('answers requests while a refresh is in flight', async () => {
    let release!: () => void;
    let calls = 0;
    const src = fakeSource(() => ({}));
    const refresh = src.refresh.bind(src);
    src.refresh = async () => {
      if (++calls > 1) await new Promise<void>((r) => (release = r));
      return refresh();
    };
    const set = new SourceSet([src]);
    await set.refreshAll({ requireAll: true });
    const svc = new AttestService({ sources: set, verifier: lookupVerifier() });
    const u = await svc.listen(0);
    try {
      const pending = set.refreshOne(0); // hangs until released
      // Not timed: were requests blocked behind the refresh, this would never answer (release() comes after).
      const { nonce } = (await (await fetch(`${u}/nonce`)).json()) as { nonce: string };
      const r = await fetch(`${u}/attest`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ nonce, evidence: { digests: [{ alg: 'sha256', hex: '00'.repeat(32) }] } }) });
      expect(r.status).toBe(200);
      release();
      expect(await pending).toBeUndefined();
    } finally {
      await svc.close();
    }
  });

  it('backs off after failures and records them; requireAll throws the first', async () => {
    const at: number[] = [];
    const src = fakeSource(() => (at.push(performance.now()), { fail: true }));
    const set = new SourceSet([src], { intervalMs: 3_600_000, retryMs: 100 });
    await expect(set.refreshAll({ requireAll: true })).rejects.toThrow(expect.objectContaining({ code: 'NETWORK' }));
    set.start();
    // Retries at +100, +200 (doubling), then +400. Polled, and only lower bounds on the gaps:
    // a loaded machine runs timers late, never (beyond a ms) early.
    // `calls` rises when a refresh starts, its failure is recorded after: wait for both.
    await vi.waitFor(() => {
      expect(src.calls).toBeGreaterThanOrEqual(3);
      expect(set.status()[0]!.failures).toBe(src.calls);
    }, { timeout: 20_000, interval: 10 });
    set.close();
    expect(at[1]! - at[0]!).toBeGreaterThanOrEqual(95);
    expect(at[2]! - at[1]!).toBeGreaterThanOrEqual(195);
    const st = set.status()[0]!;
    expect(st.failures).toBe(src.calls);
    expect(st.lastError?.code).toBe('NETWORK');
    expect(set.anyReady).toBe(false);
  });
});

/** A verifier that only looks digests up, to test the HTTP layer by itself. */
function lookupVerifier(): Verifier & { seen: Evidence[] } {
  const seen: Evidence[] = [];
  return {
    seen,
    appraise(ev: Evidence, index: SourceSet): Appraisal {
      seen.push(ev);
      const hits = (ev.digests ?? []).map((d) => index.lookupDigest(d.alg, Buffer.from(d.hex, 'hex')).length);
      return { status: hits.length && hits.every((n) => n > 0) ? 'affirming' : 'contraindicated', submods: {} };
    },
    sign: (a: Appraisal, nonce: string) => Buffer.from(JSON.stringify({ ...a, nonce })).toString('base64url'),
    jwks: () => ({ keys: [] }),
  };
}

describe.runIf(ready)('attestation service over real repositories', () => {
  let repo: FixtureServer;
  let ring: Keyring;
  let svc: AttestService;
  let base: string;
  let verifier: ReturnType<typeof lookupVerifier>;
  const debs = () => readdirSync(join(FIXTURES, 'debian/pool/main')).filter((f) => f.endsWith('.deb'));

  beforeAll(async () => {
    buildFixtures();
    repo = await startServer();
    ring = await readKeyring(readFileSync(join(FIXTURES, 'keyring.gpg')));
    const sources = new SourceSet(
      [openSource(`deb ${repo.url}/debian bookworm main`, { keyring: ring }), openSource(`rpm ${repo.url}/rpm`, { keyring: ring })],
      { intervalMs: 3_600_000 },
    );
    await sources.refreshAll({ requireAll: true });
    verifier = lookupVerifier();
    svc = new AttestService({ sources, verifier, maxJsonBytes: 64 << 10 });
    base = await svc.listen(0);
  });
  afterAll(async () => {
    await svc?.close();
    await repo?.close();
  });

  const nonce = async (): Promise<string> => ((await (await fetch(`${base}/nonce`)).json()) as { nonce: string }).nonce;
  const post = (body: unknown, headers: Record<string, string> = {}): Promise<Response> =>
    fetch(`${base}/attest`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });

  it('answers a known digest and refuses the same nonce a second time (401)', async () => {
    const bytes = readFileSync(join(FIXTURES, 'debian/pool/main', debs()[0]!));
    const n = await nonce();
    const req = { nonce: n, evidence: { digests: [{ alg: 'sha256', hex: sha256(bytes) }] } };
    const r1 = await post(req);
    expect(r1.status).toBe(200);
    const { ear } = (await r1.json()) as { ear: string };
    const claims = JSON.parse(Buffer.from(ear, 'base64url').toString()) as { status: string; nonce: string };
    expect(claims.status).toBe('affirming');
    expect(claims.nonce).toBe(n);
    const r2 = await post(req);
    expect(r2.status).toBe(401);
    expect(((await r2.json()) as { error: { code: string; reason: string } }).error).toMatchObject({ code: 'REFUSED', reason: 'unknown-or-replayed' });
    // A fresh nonce with one MAC character changed (not the last: its low bits are padding, ignored).
    const m = await nonce();
    const r3 = await post({ ...req, nonce: m.slice(0, -3) + (m.at(-3) === 'A' ? 'B' : 'A') + m.slice(-2) });
    expect(r3.status).toBe(401);
    expect(((await r3.json()) as { error: { reason: string } }).error.reason).toBe('forged');
  });

  it('refuses oversized, malformed and mistyped requests with 4xx and keeps serving', async () => {
    const big = JSON.stringify({ nonce: await nonce(), evidence: { digests: Array(2000).fill({ alg: 'sha256', hex: '00'.repeat(32) }) } });
    expect(big.length).toBeGreaterThan(64 << 10);
    const r1 = await post(big);
    expect(r1.status).toBe(413);
    // Chunked (no Content-Length): refused while streaming.
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        for (let i = 0; i < 20; i++) c.enqueue(new Uint8Array(8192).fill(0x20));
        c.close();
      },
    });
    const r2 = await fetch(`${base}/attest`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: stream, duplex: 'half' } as RequestInit);
    expect(r2.status).toBe(413);
    expect((await post('{"nonce":')).status).toBe(400);
    expect((await post({ nonce: await nonce(), evidence: { digests: [{ alg: 'sha256', hex: 'zz' }] } })).status).toBe(400);
    expect((await post('{}', { 'content-type': 'text/xml' })).status).toBe(415);
    expect((await fetch(`${base}/attest`)).status).toBe(405);
    expect((await fetch(`${base}/nope`)).status).toBe(404);
    for (let i = 0; i < 20; i++) await (await fetch(`${base}/x${i}`)).arrayBuffer();
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toMatch(/vmkit_attest_requests_total\{method="GET",path="other",status="404"\} 21/);
    expect(metrics).not.toMatch(/path="\/x1"/);
    const h = await fetch(`${base}/healthz`);
    expect(h.status).toBe(200);
    const health = (await h.json()) as { ok: boolean; sources: { packages: number }[] };
    expect(health.ok).toBe(true);
    expect(health.sources[0]!.packages).toBe(debs().length);
  });

  it('answers any body with 4xx and keeps serving (fuzz)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.string(), fc.json(), fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b).toString('latin1'))), async (body) => {
        const r = await post(body);
        expect(r.status, body.slice(0, 100)).toBeGreaterThanOrEqual(400);
        expect(r.status).toBeLessThan(500);
        await r.arrayBuffer();
      }),
      { numRuns: 60 },
    );
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
  });

  it('keeps the last verified index when a refresh meets a tampered signature, and recovers', async () => {
    const bytes = readFileSync(join(FIXTURES, 'debian/pool/main', debs()[0]!));
    const digest = Buffer.from(sha256(bytes), 'hex');
    repo.overrides.set('/debian/dists/bookworm/InRelease', (b) => Buffer.from(b!.toString('utf8').replace(/^ ([0-9a-f])/m, (_m, c: string) => ' ' + (c === '0' ? '1' : '0'))));
    try {
      const err = await svc.sources.refreshOne(0);
      expect(err?.code).toBe('INTEGRITY');
      const st = svc.sources.status()[0]!;
      expect(st.lastError?.code).toBe('INTEGRITY');
      expect(st.packages).toBe(debs().length);
      expect(svc.sources.lookupDigest('sha256', digest).length).toBe(1);
      const m = await (await fetch(`${base}/metrics`)).text();
      expect(m).toMatch(/vmkit_attest_source_refresh_failures_total\{source="deb [^"]+"\} 1/);
    } finally {
      repo.overrides.clear();
    }
    expect(await svc.sources.refreshOne(0)).toBeUndefined();
    expect(svc.sources.status()[0]!.lastError).toBeUndefined();
    expect(svc.sources.lookupDigest('sha256', digest).length).toBe(1);
  });

  it('refreshes on its timer, sending validators (304: nothing fetched again)', async () => {
    const sources = new SourceSet([openSource(`rpm ${repo.url}/rpm`, { keyring: ring })], { intervalMs: 150 });
    await sources.refreshAll({ requireAll: true });
    repo.hits.clear();
    sources.start();
    // `refreshes` counts a refresh when it starts, before its GET reaches the server: wait for
    // both the count and the requests (two timed refreshes after the first load).
    await vi.waitFor(() => {
      expect(sources.status()[0]!.refreshes).toBeGreaterThanOrEqual(3);
      expect(repo.hits.get('/rpm/repodata/repomd.xml') ?? 0).toBeGreaterThanOrEqual(2);
    }, { timeout: 20_000, interval: 20 });
    const st = sources.status()[0]!;
    sources.close();
    expect(st.refreshes).toBeGreaterThanOrEqual(3);
    expect(st.failures).toBe(0);
    // Only repomd.xml was asked for again (answered 304 by its ETag), never the packages.
    expect(repo.hits.get('/rpm/repodata/repomd.xml')).toBeGreaterThanOrEqual(2);
    expect([...repo.hits.keys()].filter((k) => k.includes('primary')).length).toBe(0);
  });

  it('answers 503 while no source is loaded and under overload, and closes gracefully', async () => {
    const sources = new SourceSet([openSource(`rpm ${repo.url}/rpm`, { keyring: ring })]);
    // The first request is held inside appraise until released (no race between sleeps).
    let entered!: () => void;
    let release!: () => void;
    const inside = new Promise<void>((r) => (entered = r));
    const gate = new Promise<void>((r) => (release = r));
    const slow: Verifier = { ...lookupVerifier(), appraise: async () => (entered(), await gate, { status: 'warning', submods: {} }) };
    const s2 = new AttestService({ sources, verifier: slow, maxInFlight: 1, maxBufferedBytes: 4096 });
    const u = await s2.listen(0);
    const n = ((await (await fetch(`${u}/nonce`)).json()) as { nonce: string }).nonce;
    const body = JSON.stringify({ nonce: n, evidence: { packages: [{ name: 'x', version: '1' }] } });
    const go = (): Promise<Response> => fetch(`${u}/attest`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    expect((await go()).status).toBe(503);
    expect((await fetch(`${u}/healthz`)).status).toBe(503);
    await sources.refreshAll({ requireAll: true });
    // Bytes held across requests are bounded: a body past the budget gets 503, not memory.
    const fat = await fetch(`${u}/attest`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body + ' '.repeat(8192) });
    expect(fat.status).toBe(503);
    const first = go();
    await inside;
    const n2 = ((await (await fetch(`${u}/nonce`)).json()) as { nonce: string }).nonce;
    const busy = await fetch(`${u}/attest`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body.replace(n, n2) });
    expect(busy.status).toBe(503);
    expect(busy.headers.get('retry-after')).toBe('1');
    const closing = s2.close();
    release();
    expect((await first).status).toBe(200); // the request in flight finishes
    await closing;
    await expect(fetch(`${u}/healthz`)).rejects.toThrow();
  });
});

describe.runIf(ready)('end to end: appraisal and EdDSA-signed EARs over real repositories', () => {
  let repo: FixtureServer;
  let ring: Keyring;
  let svc: AttestService;
  let base: string;
  const debs = () => readdirSync(join(FIXTURES, 'debian/pool/main')).filter((f) => f.endsWith('.deb'));
  const debBytes = (f: string): Buffer => readFileSync(join(FIXTURES, 'debian/pool/main', f));

  beforeAll(async () => {
    buildFixtures();
    repo = await startServer();
    repo.mounts.set('/npm/vmkit-fixture', '/npm/packument.json');
    repo.mounts.set('/npm/-/npm/v1/keys', '/npm/keys.json');
    ring = await readKeyring(readFileSync(join(FIXTURES, 'keyring.gpg')));
    const sources = new SourceSet([
      openSource(`deb ${repo.url}/debian bookworm main`, { keyring: ring }),
      openSource(`rpm ${repo.url}/rpm`, { keyring: ring }),
      openSource(`npm ${repo.url}/npm vmkit-fixture`),
    ]);
    await sources.refreshAll({ requireAll: true });
    svc = new AttestService({ sources, verifier: await createVerifier() });
    base = await svc.listen(0);
  });
  afterAll(async () => {
    await svc?.close();
    await repo?.close();
  });

  it('affirms a real .deb and its package with digest, names where it was found; a nonce is echoed and checked', async () => {
    const f = debs()[0]!;
    const [name, version] = f.split('_') as [string, string];
    const hex = sha256(debBytes(f));
    const r = await requestAttestation(base, { digests: [{ alg: 'sha256', hex, path: `/var/cache/apt/archives/${f}` }] });
    expect(r.status).toBe('affirming');
    expect(r.items[0]!.where).toContain(`deb ${repo.url}/debian bookworm main: ${name} `);
    expect(r.items[0]!.where).toContain(version);
    // The token verifies against the published JWKS only with its own nonce.
    const jwks = `${base}/.well-known/jwks.json`;
    const n = r.claims.eat_nonce;
    expect((await verifyToken(r.token, jwks, n)).status).toBe('affirming');
    await expect(verifyToken(r.token, jwks, n + 'x')).rejects.toThrow();
    const [h, p, s] = r.token.split('.') as [string, string, string];
    const claims = JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>;
    const forged = `${h}.${Buffer.from(JSON.stringify({ ...claims, 'ear.status': 'affirming', eat_nonce: 'other' })).toString('base64url')}.${s}`;
    await expect(verifyToken(forged, jwks, 'other')).rejects.toThrow();
    const e = svc.sources.lookupPackage(name)[0]!;
    const pk = await requestAttestation(base, { packages: [{ name, version: e.provenance.version, digest: e.digests[0]! }] });
    expect(pk.status).toBe('affirming');
  });

  it('never affirms an unknown digest, a package without digest or with another digest', async () => {
    const unknown = await requestAttestation(base, { digests: [{ alg: 'sha256', hex: sha256(Buffer.from('not in any repository')) }] });
    expect(['warning', 'contraindicated']).toContain(unknown.status);
    expect(unknown.items[0]!.reason).toBe('unknown-digest');
    const f = debs()[0]!;
    const [name] = f.split('_') as [string];
    const e = svc.sources.lookupPackage(name)[0]!;
    const bare = await requestAttestation(base, { packages: [{ name, version: e.provenance.version }] });
    expect(bare.status).not.toBe('affirming');
    const other = await requestAttestation(base, { packages: [{ name, version: e.provenance.version, digest: { alg: 'sha256', hex: '00'.repeat(32) } }] });
    expect(other.status).toBe('contraindicated');
  });

  it('appraises a real IMA log (scripts/ima-fixtures.mjs, 1000 entries) and answers a malformed one with 400', async () => {
    const fx = imaFixtures();
    if (!fx) return;
    const log = fx.ascii('ima-ng-sha1');
    const r = await requestAttestation(base, { ima: { log } });
    // This machine's files, none of them from these repositories: recognized as unknown, never affirmed.
    expect(r.status).toBe('warning');
    expect(r.items.length).toBe(fx.logs['ima-ng-sha1'].count); // one item per entry, the violation included
    const { nonce } = (await (await fetch(`${base}/nonce`)).json()) as { nonce: string };
    const bad = await fetch(`${base}/attest`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ nonce, evidence: { ima: { log: readFileSync(join(fx.dir, 'invalid.ascii'), 'utf8') } } }),
    });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { code: string } }).error.code).toBe('CORRUPT');
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
  });

  it('affirms an RPM and an npm tarball from their signed metadata', async () => {
    const rpm = readdirSync(join(FIXTURES, 'rpm')).find((f) => f.endsWith('.rpm'))!;
    const r1 = await requestAttestation(base, { digests: [{ alg: 'sha256', hex: sha256(readFileSync(join(FIXTURES, 'rpm', rpm))) }] });
    expect(r1.status).toBe('affirming');
    const tgz = readdirSync(join(FIXTURES, 'npm/tarballs'))[0]!;
    const hex = createHash('sha512').update(readFileSync(join(FIXTURES, 'npm/tarballs', tgz))).digest('hex');
    const r2 = await requestAttestation(base, { digests: [{ alg: 'sha512', hex }] });
    expect(r2.status).toBe('affirming');
    expect(r2.items[0]!.where).toContain('vmkit-fixture');
  });
});

describe.runIf(ready)('IMA measurement lists against file digests of real .debs', () => {
  let repo: FixtureServer;
  let svc: AttestService;
  let base: string;
  let dir: string;


  beforeAll(async () => {
    buildFixtures();
    repo = await startServer();
    const ring = await readKeyring(readFileSync(join(FIXTURES, 'keyring.gpg')));
    const sources = new SourceSet([openSource(`deb ${repo.url}/debian bookworm main`, { keyring: ring })], { filePackages: ['hello'] });
    await sources.refreshAll({ requireAll: true });
    svc = new AttestService({ sources, verifier: await createVerifier() });
    base = await svc.listen(0);
    // The files as dpkg unpacks them: the reference the service's own .deb reading must agree with.
    dir = mkdtempSync(join(tmpdir(), 'vmkit-ima-'));
    execFileSync('dpkg-deb', ['-x', join(FIXTURES, 'debian/pool/main/hello_2.10-3_amd64.deb'), dir]);
  });
  afterAll(async () => {
    await svc?.close();
    await repo?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('affirms an IMA log of files from a package in the repository, not one with a stranger', async () => {
    const st = svc.sources.status()[0]!;
    expect(st.filePackages).toBe(1);
    expect(st.fileErrors).toBe(0);
    const hello = sha256(readFileSync(join(dir, 'usr/bin/hello')));
    const good = [imaNgLine(hello, '/usr/bin/hello')].join('\n') + '\n';
    const r = await requestAttestation(base, { ima: { log: good } });
    expect(r.status, JSON.stringify(r.items)).toBe('affirming');
    expect(r.items.some((i) => i.where?.includes('hello') && i.where.includes('/usr/bin/hello'))).toBe(true);
    const bad = good + imaNgLine(sha256(Buffer.from('dropped in by an attacker')), '/usr/local/bin/evil') + '\n';
    const r2 = await requestAttestation(base, { ima: { log: bad } });
    expect(r2.status).not.toBe('affirming');
    // A template hash that does not match its data is a cryptographic failure.
    const broken = good.replace(/^10 ([0-9a-f])/, (_m, c: string) => `10 ${c === '0' ? '1' : '0'}`);
    const r3 = await requestAttestation(base, { ima: { log: broken } });
    expect(r3.status).toBe('contraindicated');
  });
});

describe.runIf(ready)('vmkit attest (the CLI as a child process)', () => {
  let repo: FixtureServer;
  const keyring = join(FIXTURES, 'keyring.gpg');
  const run = (args: string[], timeoutMs = 30_000): Promise<CliResult> => runVmkit(args, { timeoutMs });

  beforeAll(async () => {
    buildFixtures();
    repo = await startServer();
  });
  afterAll(async () => {
    await repo?.close();
  });

  it('index reports the counts of a signed repository and refuses a tampered one', async () => {
    const deb = `deb ${repo.url}/debian bookworm main`;
    const [ok, bad] = await Promise.all([
      run(['attest', 'index', deb, '--keyring', keyring, '--json']),
      run(['attest', 'index', `deb ${repo.url}/debian-other bookworm main`, '--keyring', keyring, '--json']),
    ]);
    expect(ok.code, ok.stderr).toBe(0);
    const doc = JSON.parse(ok.stdout) as { packages: number; digests: number };
    expect(doc.packages).toBe(readdirSync(join(FIXTURES, 'debian/pool/main')).filter((f) => f.endsWith('.deb')).length);
    expect(bad.code).toBe(1);
    expect((JSON.parse(bad.stdout) as { error: { code: string } }).error.code).toBe('INTEGRITY');
  });

  it('index takes Alpine keys with --apk-key (by file name, as /etc/apk/keys holds them) and refuses without them', async () => {
    const apk = `apk ${repo.url}/apk/x86_64`;
    const key = join(FIXTURES, 'apk', 'vmkit-test.rsa.pub');
    const [ok, none, wrong] = await Promise.all([
      run(['attest', 'index', apk, '--apk-key', key, '--json']),
      run(['attest', 'index', apk, '--json']),
      run(['attest', 'index', apk, '--apk-key', join(FIXTURES, 'apk', 'other.rsa.pub'), '--json']),
    ]);
    expect(ok.code, ok.stderr).toBe(0);
    // One record per control segment the fixture script signed into the index.
    const packages = readdirSync(join(FIXTURES, 'apk', 'pkgs')).filter((f) => f.endsWith('.control.tar.gz')).length;
    expect((JSON.parse(ok.stdout) as { packages: number }).packages).toBe(packages);
    for (const r of [none, wrong]) {
      expect(r.code).toBe(1);
      expect((JSON.parse(r.stdout) as { error: { code: string } }).error.code).toBe('INTEGRITY');
    }
  });

  it('serve + request + verify + check: affirmed exits 0, unknown exits 1', async () => {
    const deb = `deb ${repo.url}/debian bookworm main`;
    // A key as `openssl genpkey -algorithm ed25519` writes it (PKCS#8 PEM).
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const keyDir = mkdtempSync(join(tmpdir(), 'vmkit-key-'));
    const keyFile = join(keyDir, 'ear.pem');
    writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const srv = serveVmkit(['attest', 'serve', '--repo', deb, '--source', `rpm ${repo.url}/rpm`, '--keyring', keyring, '--key', keyFile, '--port', '0', '--json']);
    try {
      const url = await srv.listening();
      const jwks = (await (await fetch(`${url}/.well-known/jwks.json`)).json()) as { keys: { x: string }[] };
      expect(jwks.keys[0]!.x).toBe((publicKey.export({ format: 'jwk' }) as { x: string }).x);
      const file = join(FIXTURES, 'debian/pool/main', readdirSync(join(FIXTURES, 'debian/pool/main')).find((f) => f.endsWith('.deb'))!);
      const good = await run(['attest', 'request', '--server', url, '--json', file]);
      expect(good.code, good.stderr).toBe(0);
      const r = JSON.parse(good.stdout) as { status: string; token: string; claims: { eat_nonce: string } };
      expect(r.status).toBe('affirming');
      // The rest are independent: run them at once (each is a Node process start).
      const rpmDir = join(FIXTURES, 'rpm-ext');
      const rpmFile = join(rpmDir, readdirSync(rpmDir).find((f) => f.endsWith('.rpm'))!);
      const [path, , , hex] = execFileSync('rpm', ['-qp', '--dump', rpmFile]).toString().split('\n').find((l) => / 0100\d+ /.test(l))!.split(' ');
      const [v, unknown, offline, ext] = await Promise.all([
        run(['attest', 'verify', r.token, '--jwks', `${url}/.well-known/jwks.json`, '--nonce', r.claims.eat_nonce]),
        run(['attest', 'request', '--server', url, '--digest', 'sha256:' + 'ab'.repeat(32)]),
        run(['attest', 'check', '--repo', deb, '--keyring', keyring, file]),
        // Offline with the armored keyring, against an RPM repository's filelists-ext.xml:
        // a file digest (rpm's own, from --dump) affirms without any .rpm fetched.
        run(['attest', 'check', '--repo', `rpm ${repo.url}/rpm-ext`, '--keyring', join(FIXTURES, 'keyring.asc'), '--digest', `sha256:${hex}`, '--json']),
      ]);
      expect(v.code, v.stderr).toBe(0);
      expect(v.stdout).toMatch(/nonce matches; status: affirming/);
      expect(unknown.code).toBe(1);
      expect(unknown.stdout).toMatch(/status: (warning|contraindicated)/);
      expect(offline.code, offline.stderr).toBe(0);
      expect(offline.stdout).toMatch(/status: affirming/);
      expect(ext.code, ext.stderr).toBe(0);
      const extDoc = JSON.parse(ext.stdout) as { status: string; items: { where?: string }[] };
      expect(extDoc.status).toBe('affirming');
      expect(extDoc.items[0]!.where).toContain(`vmkit-fixture`);
      expect(extDoc.items[0]!.where).toContain(path);
      const usage = await run(['attest', 'request', '--server', url]);
      expect(usage.code).toBe(2);
    } finally {
      rmSync(keyDir, { recursive: true, force: true });
      srv.kill();
      expect(await srv.exited).toBe(0);
    }
  });
});

describe('tour chapter', () => {
  it('attests against a registry it makes itself: affirming, not affirming, replay refused', async () => {
    const { chapter } = await import('../bindings/tour/attest.js');
    const lines: string[] = [];
    await chapter((s) => lines.push(s));
    expect(lines.find((l) => l.startsWith('published tarball'))).toMatch(/→ affirming — found at npm /);
    expect(lines.find((l) => l.startsWith('bytes nobody published'))).toMatch(/→ (warning|contraindicated)/);
    expect(lines.find((l) => l.startsWith('same nonce again'))).toMatch(/HTTP 401 \(unknown-or-replayed\)/);
  });
});
