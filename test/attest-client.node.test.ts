// The client against a small service that speaks docs/attest-service.md over
// real HTTP (node:http), built from appraise + ear: an affirmed and a refused
// attestation, and every way a dishonest or broken service is caught —
// a forged key in its JWKS vs a pinned key, a replayed nonce, a stale or
// foreign EAR, error statuses, a hang (TIMEOUT), a huge answer (LIMIT), junk.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { appraiseEvidence, parseEvidence } from '../bindings/attest/appraise.js';
import { attest, fetchJwks, fetchNonce } from '../bindings/attest/client.js';
import { exportJwks, generateEarKey, signEar, type EarSigningKey } from '../bindings/attest/ear.js';
import { DigestIndex, toHex } from '../bindings/attest/index-store.js';
import { VmkitError } from '../bindings/errors.js';

const REPO = 'deb http://127.0.0.1/debian bookworm main';
const HELLO = toHex(new Uint8Array(32).fill(2));

type Mode = 'honest' | 'wrong-nonce' | 'stale' | 'forged-key' | 'hang' | 'huge' | 'junk' | 'no-ear';

let server: Server;
let url: string;
let key: EarSigningKey;
let forger: EarSigningKey;
let index: DigestIndex;
let mode: Mode = 'honest';
const nonces = new Set<string>();

async function body(req: IncomingMessage): Promise<string> {
  let s = '';
  for await (const c of req) s += String(c);
  return s;
}

function send(res: ServerResponse, status: number, v: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(v));
}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  if (mode === 'hang') return; // never answers
  if (mode === 'huge') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"nonce":"' + 'x'.repeat(3 << 20) + '"}');
    return;
  }
  if (mode === 'junk') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('<html>');
    return;
  }
  if (req.url === '/nonce') {
    const n = randomBytes(16).toString('base64url');
    nonces.add(n);
    return send(res, 200, { nonce: n, expiresAt: new Date(Date.now() + 60_000).toISOString() });
  }
  if (req.url === '/.well-known/jwks.json') return send(res, 200, exportJwks(mode === 'forged-key' ? forger : key));
  if (req.url === '/attest' && req.method === 'POST') {
    const { nonce, evidence } = JSON.parse(await body(req)) as { nonce: string; evidence: unknown };
    if (!nonces.delete(nonce)) return send(res, 401, { error: { code: 'REFUSED', message: 'nonce refused', reason: 'unknown-or-replayed' } });
    let ev;
    try {
      ev = parseEvidence(evidence);
    } catch (e) {
      return send(res, 400, { error: { code: (e as VmkitError).code, message: (e as Error).message } });
    }
    if (mode === 'no-ear') return send(res, 200, { token: 'x' });
    const a = await appraiseEvidence(index, ev);
    const signer = mode === 'forged-key' ? forger : key;
    const ear = await signEar(a, signer, { nonce: mode === 'wrong-nonce' ? 'someone-else' : nonce, ...(mode === 'stale' ? { now: Date.now() - 3600_000 } : {}) });
    return send(res, 200, { ear });
  }
  send(res, 404, { error: { code: 'NOT_FOUND', message: 'no such endpoint' } });
}

beforeAll(async () => {
  key = await generateEarKey();
  forger = await generateEarKey();
  index = new DigestIndex();
  const p = index.addPackage({ repository: REPO, package: 'hello', version: '2.10-3', architecture: 'amd64' }, { alg: 'sha256', hex: toHex(new Uint8Array(32).fill(1)) });
  index.addFile(p, '/usr/bin/hello', { alg: 'sha256', hex: HELLO });
  server = createServer((req, res) => void handle(req, res).catch((e: unknown) => send(res, 500, { error: { message: String(e) } })));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  index.close();
});

const expectCode = async (p: Promise<unknown>, code: string, re?: RegExp): Promise<void> => {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(VmkitError);
  expect((e as VmkitError).code).toBe(code);
  if (re) expect((e as VmkitError).message).toMatch(re);
};

describe('attest() against a live service', () => {
  it('affirms a known file and shows where it matched', async () => {
    mode = 'honest';
    const r = await attest({ serviceUrl: url + '/', evidence: { digests: [{ alg: 'sha256', hex: HELLO, path: '/usr/bin/hello' }] } });
    expect(r.affirmed).toBe(true);
    expect(r.status).toBe('affirming');
    expect(r.claims.eat_nonce).toBe(r.nonce);
    expect(r.claims.submods['vmkit-software']!['vmkit.appraisal']!.items[0]!.matches[0]).toMatchObject({ repository: REPO, package: 'hello', version: '2.10-3' });
    expect(r.token.split('.').length).toBe(3);
    expect(r.kid).toBe(key.kid);
  });

  it('returns a verified non-affirming result for unknown software', async () => {
    mode = 'honest';
    const r = await attest({ serviceUrl: url, evidence: { digests: [{ alg: 'sha256', hex: 'ee'.repeat(32) }], packages: [{ name: 'hello', version: '2.10-3' }] } });
    expect(r.affirmed).toBe(false);
    expect(r.status).toBe('warning');
    const items = r.claims.submods['vmkit-software']!['vmkit.appraisal']!.items;
    expect(items.map((i) => i.reason)).toEqual(['unknown-digest', 'package-without-digest']);
  });

  it('catches a dishonest service: foreign nonce, stale result, a key not pinned', async () => {
    const evidence = { digests: [{ alg: 'sha256' as const, hex: HELLO }] };
    mode = 'wrong-nonce';
    await expectCode(attest({ serviceUrl: url, evidence }), 'INTEGRITY', /nonce/);
    mode = 'stale';
    await expectCode(attest({ serviceUrl: url, evidence }), 'INTEGRITY', /expired/);
    mode = 'forged-key';
    // The forger controls its own JWKS, so only a pinned key catches it.
    expect((await attest({ serviceUrl: url, evidence })).affirmed).toBe(true);
    await expectCode(attest({ serviceUrl: url, evidence, jwks: exportJwks(key) }), 'INTEGRITY', /JWKS|signature/);
    mode = 'honest';
    expect((await attest({ serviceUrl: url, evidence, jwks: key.publicJwk })).affirmed).toBe(true);
  });

  it('refusals, replays and bad evidence come back as REFUSED with the reason', async () => {
    mode = 'honest';
    const { nonce } = await fetchNonce(url);
    const post = (n: string): Promise<Response> => fetch(url + '/attest', { method: 'POST', body: JSON.stringify({ nonce: n, evidence: { digests: [{ alg: 'sha256', hex: HELLO }] } }) });
    expect((await post(nonce)).status).toBe(200);
    expect((await post(nonce)).status).toBe(401); // replay
    await expectCode(attest({ serviceUrl: url, evidence: { digests: [{ alg: 'sha256', hex: 'zz' }] } }), 'REFUSED', /HTTP 400.*ARG_RANGE/);
    await expectCode(fetchJwks(url + '/missing'), 'REFUSED', /HTTP 404/);
  });

  it('transport trouble: hang, huge answer, junk, no EAR, no server, bad URL, cancel', async () => {
    const evidence = { digests: [{ alg: 'sha256' as const, hex: HELLO }] };
    mode = 'hang';
    await expectCode(attest({ serviceUrl: url, evidence, timeoutMs: 200 }), 'TIMEOUT');
    mode = 'huge';
    await expectCode(attest({ serviceUrl: url, evidence, maxResponseBytes: 1 << 20 }), 'LIMIT');
    mode = 'junk';
    await expectCode(attest({ serviceUrl: url, evidence }), 'CORRUPT');
    mode = 'no-ear';
    await expectCode(attest({ serviceUrl: url, evidence }), 'CORRUPT', /no ear/);
    mode = 'honest';
    await expectCode(attest({ serviceUrl: 'http://127.0.0.1:9', evidence, timeoutMs: 2000 }), 'NETWORK');
    await expectCode(attest({ serviceUrl: 'ftp://x', evidence }), 'ARG_RANGE');
    await expectCode(attest({ serviceUrl: 'not a url', evidence }), 'ARG_RANGE');
    const ac = new AbortController();
    ac.abort();
    await expectCode(attest({ serviceUrl: url, evidence, signal: ac.signal }), 'CANCELLED');
  });
});
