// EAR JWTs: claims built from an appraisal, signed with Ed25519 and verified;
// every check of verifyEar can fail: tampered header/payload/signature (each
// byte position, fast-check), another key, another algorithm, an unsigned
// token, expiry, a future iat, the wrong nonce, the wrong profile, a top
// status better than its submods; keys round-trip through JWK and JWKS.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { SignJWT, UnsecuredJWT, base64url, generateKeyPair } from 'jose';
import { appraise } from '../bindings/attest/appraise.js';
import { EAR_PROFILE, earClaims, exportEarKey, exportJwks, generateEarKey, loadEarKey, loadEarPublicKey, signEar, verifyEar, type EarSigningKey } from '../bindings/attest/ear.js';
import { DigestIndex, toHex } from '../bindings/attest/index-store.js';
import { VmkitError } from '../bindings/errors.js';

const REPO = 'deb http://127.0.0.1/debian bookworm main';
const NOW = Date.UTC(2026, 10, 25, 6, 0, 0);

function sample(): ReturnType<typeof appraise> {
  const ix = new DigestIndex();
  try {
    const p = ix.addPackage({ repository: REPO, package: 'hello', version: '2.10-3', architecture: 'amd64' }, { alg: 'sha256', hex: toHex(new Uint8Array(32).fill(1)) });
    ix.addFile(p, '/usr/bin/hello', { alg: 'sha256', hex: toHex(new Uint8Array(32).fill(2)) });
    return appraise(ix, { digests: [{ alg: 'sha256', hex: toHex(new Uint8Array(32).fill(2)), path: '/usr/bin/hello' }] });
  } finally {
    ix.close();
  }
}

async function refused(p: Promise<unknown>, re: RegExp): Promise<void> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e, String(re)).toBeInstanceOf(VmkitError);
  expect((e as VmkitError).code).toBe('INTEGRITY');
  expect((e as VmkitError).message).toMatch(re);
}

describe('EAR', () => {
  let key: EarSigningKey;
  let other: EarSigningKey;

  it('signs the appraisal as EAR claims and verifies them', async () => {
    key = await generateEarKey();
    other = await generateEarKey();
    const a = sample();
    const token = await signEar(a, key, { nonce: 'n-1', now: NOW, ttlSeconds: 120 });
    const [h, p] = token.split('.');
    expect(JSON.parse(new TextDecoder().decode(base64url.decode(h!)))).toEqual({ alg: 'EdDSA', typ: 'JWT', kid: key.kid });
    const claims = JSON.parse(new TextDecoder().decode(base64url.decode(p!)));
    expect(claims).toEqual(JSON.parse(JSON.stringify(earClaims(a, { nonce: 'n-1', now: NOW, ttlSeconds: 120 }))));
    expect(claims).toMatchObject({
      eat_profile: EAR_PROFILE,
      iat: NOW / 1000,
      exp: NOW / 1000 + 120,
      eat_nonce: 'n-1',
      'ear.status': 'affirming',
      'ear.verifier-id': { developer: expect.any(String), build: expect.any(String) },
    });
    const sw = claims.submods['vmkit-software'];
    expect(sw['ear.status']).toBe('affirming');
    expect(sw['ear.trustworthiness-vector']).toEqual({ 'file-system': 2 });
    expect(sw['vmkit.appraisal'].items[0].matches[0]).toMatchObject({ repository: REPO, package: 'hello', version: '2.10-3', path: '/usr/bin/hello' });

    const v = await verifyEar(token, key.publicJwk, { nonce: 'n-1', now: NOW + 1000 });
    expect(v.status).toBe('affirming');
    expect(v.kid).toBe(key.kid);
    // Through the JWKS, as a client does, with the right key picked by kid.
    const jwks = exportJwks(other, key);
    expect((await verifyEar(token, jwks, { nonce: 'n-1', now: NOW })).claims.eat_nonce).toBe('n-1');
    expect((await verifyEar(token, JSON.stringify(jwks), { nonce: 'n-1', now: NOW })).status).toBe('affirming');
  });

  it('refuses wrong keys, nonces, expired and future tokens', async () => {
    const token = await signEar(sample(), key, { nonce: 'n-2', now: NOW, ttlSeconds: 60 });
    await refused(verifyEar(token, other.publicJwk, { nonce: 'n-2', now: NOW }), /bad signature/);
    await refused(verifyEar(token, exportJwks(other), { nonce: 'n-2', now: NOW }), /no key in the JWKS/);
    await refused(verifyEar(token, key.publicJwk, { nonce: 'n-3', now: NOW }), /nonce/);
    await refused(verifyEar(token, key.publicJwk, { nonce: 'n-2', now: NOW + 60_000 + 31_000 }), /expired/);
    await refused(verifyEar(token, key.publicJwk, { nonce: 'n-2', now: NOW - 120_000 }), /future/);
    await refused(verifyEar(token, key.publicJwk, { nonce: 'n-2', now: NOW + 50_000, maxAgeSeconds: 10 }), /too old/);
    // Within the tolerance it still verifies.
    expect((await verifyEar(token, key.publicJwk, { nonce: 'n-2', now: NOW + 60_000 + 20_000 })).status).toBe('affirming');
  });

  it('refuses any change to the token (fast-check over byte positions)', async () => {
    const token = await signEar(sample(), key, { nonce: 'n-4', now: NOW });
    await fc.assert(
      fc.asyncProperty(fc.nat({ max: token.length - 1 }), fc.constantFrom(...'ABCDEFGabcdefg0123-_.'), async (i, ch) => {
        if (token[i] === ch) return;
        const bent = token.slice(0, i) + ch + token.slice(i + 1);
        let ok = false;
        try {
          await verifyEar(bent, key.publicJwk, { nonce: 'n-4', now: NOW });
          ok = true;
        } catch (e) {
          expect(e).toBeInstanceOf(VmkitError);
        }
        // base64url's last character may carry unused bits: decoding can ignore them.
        if (ok) expect(bent.split('.').map((s) => base64url.decode(s).join())).toEqual(token.split('.').map((s) => base64url.decode(s).join()));
      }),
      { numRuns: 150 },
    );
  });

  it('refuses other algorithms, unsigned tokens, other profiles and inconsistent statuses', async () => {
    const claims = earClaims(sample(), { nonce: 'n-5', now: NOW });
    const es = await generateKeyPair('ES256');
    const es256 = await new SignJWT({ ...claims }).setProtectedHeader({ alg: 'ES256' }).sign(es.privateKey);
    await refused(verifyEar(es256, key.publicJwk, { nonce: 'n-5', now: NOW }), /algorithm|EdDSA/);
    const none = new UnsecuredJWT({ ...claims }).encode();
    await refused(verifyEar(none, key.publicJwk, { nonce: 'n-5', now: NOW }), /EAR refused/);
    const sign = (c: object): Promise<string> => new SignJWT({ ...c }).setProtectedHeader({ alg: 'EdDSA' }).sign(key.privateKey);
    await refused(verifyEar(await sign({ ...claims, eat_profile: 'tag:example.com,2020:other' }), key.publicJwk, { nonce: 'n-5', now: NOW }), /eat_profile/);
    const worse = JSON.parse(JSON.stringify(claims));
    worse.submods['vmkit-software']['ear.status'] = 'contraindicated';
    await refused(verifyEar(await sign(worse), key.publicJwk, { nonce: 'n-5', now: NOW }), /better than/);
    worse.submods['vmkit-software']['ear.status'] = 'great';
    await refused(verifyEar(await sign(worse), key.publicJwk, { nonce: 'n-5', now: NOW }), /valid ear.status/);
    const { exp: _e, ...noExp } = claims;
    await refused(verifyEar(await sign(noExp), key.publicJwk, { nonce: 'n-5', now: NOW }), /exp/);
    await refused(verifyEar('a.b', key.publicJwk, { nonce: 'n-5', now: NOW }), /EAR refused/);
  });

  it('keys round-trip through JWK, load from JSON, and refuse other key types', async () => {
    const jwk = await exportEarKey(key);
    expect(jwk).toMatchObject({ kty: 'OKP', crv: 'Ed25519', kid: key.kid });
    const again = await loadEarKey(JSON.stringify(jwk));
    expect(again.kid).toBe(key.kid);
    const t = await signEar(sample(), again, { nonce: 'n-6', now: NOW });
    expect((await verifyEar(t, await loadEarPublicKey(JSON.stringify(key.publicJwk)), { nonce: 'n-6', now: NOW })).status).toBe('affirming');
    await expect(loadEarKey(JSON.stringify(key.publicJwk))).rejects.toMatchObject({ code: 'CORRUPT' });
    await expect(loadEarKey('{"kty":"EC","crv":"P-256","x":"a","y":"b","d":"c"}')).rejects.toMatchObject({ code: 'UNSUPPORTED' });
    await expect(loadEarKey('not a key')).rejects.toMatchObject({ code: 'CORRUPT' });
    await expect(loadEarKey('{oops')).rejects.toMatchObject({ code: 'CORRUPT' });
    await expect(loadEarPublicKey('{"kty":"RSA","n":"a","e":"AQAB"}')).rejects.toMatchObject({ code: 'UNSUPPORTED' });
    expect(() => earClaims(sample(), { nonce: '' })).toThrow(VmkitError);
  });
});
