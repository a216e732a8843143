// EAR interop with an independent Ed25519 implementation: OpenSSL 3's
// `pkeyutl -verify -rawin` checks our JWS signature over the signing input
// with the public key exported as SPKI PEM, and a token whose signature
// OpenSSL made (`pkeyutl -sign -rawin` with a key from `genpkey`) verifies
// with verifyEar after loadEarKey/loadEarPublicKey read OpenSSL's PEM files.
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createPublicKey } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { base64url } from 'jose';
import { appraise } from '../bindings/attest/appraise.js';
import { earClaims, generateEarKey, loadEarKey, loadEarPublicKey, signEar, verifyEar } from '../bindings/attest/ear.js';
import { DigestIndex } from '../bindings/attest/index-store.js';
import { needTool } from './_tools.js';

function withDir<T>(f: (dir: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), 'vmkit-ear-'));
  try {
    return f(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function opensslVerifies(pem: string, input: string, sig: Uint8Array): boolean {
  return withDir((dir) => {
    writeFileSync(join(dir, 'pub.pem'), pem);
    writeFileSync(join(dir, 'in'), input);
    writeFileSync(join(dir, 'sig'), sig);
    try {
      const out = execFileSync('openssl', ['pkeyutl', '-verify', '-pubin', '-inkey', join(dir, 'pub.pem'), '-rawin', '-in', join(dir, 'in'), '-sigfile', join(dir, 'sig')], { stdio: 'pipe' });
      return /Signature Verified Successfully/.test(String(out));
    } catch {
      return false;
    }
  });
}

const appraisal = (): ReturnType<typeof appraise> => {
  const ix = new DigestIndex();
  try {
    return appraise(ix, { digests: [{ alg: 'sha256', hex: '11'.repeat(32) }] });
  } finally {
    ix.close();
  }
};

describe('EAR interop with OpenSSL', () => {
  it('OpenSSL verifies our signature; a changed payload or key fails there too', async () => {
    if (!needTool('openssl', 'openssl')) return;
    const key = await generateEarKey();
    const other = await generateEarKey();
    const token = await signEar(appraisal(), key, { nonce: 'interop' });
    const [h, p, s] = token.split('.') as [string, string, string];
    const pem = (k: typeof key): string => createPublicKey({ key: k.publicJwk as never, format: 'jwk' }).export({ type: 'spki', format: 'pem' }) as string;
    expect(opensslVerifies(pem(key), `${h}.${p}`, base64url.decode(s))).toBe(true);
    expect(opensslVerifies(pem(key), `${h}.${p}x`, base64url.decode(s))).toBe(false);
    expect(opensslVerifies(pem(other), `${h}.${p}`, base64url.decode(s))).toBe(false);
    // And our verifier reads the same PEM.
    expect((await verifyEar(token, pem(key), { nonce: 'interop' })).status).toBe('warning');
  });

  it('a token OpenSSL signed with its own key verifies; a key from genpkey loads as PKCS#8', async () => {
    if (!needTool('openssl', 'openssl')) return;
    const dir = mkdtempSync(join(tmpdir(), 'vmkit-ear-'));
    try {
      const priv = join(dir, 'k.pem');
      execFileSync('openssl', ['genpkey', '-algorithm', 'ed25519', '-out', priv]);
      const pubPem = String(execFileSync('openssl', ['pkey', '-in', priv, '-pubout']));
      const claims = earClaims(appraisal(), { nonce: 'from-openssl' });
      const enc = (o: object): string => base64url.encode(new TextEncoder().encode(JSON.stringify(o)));
      const input = `${enc({ alg: 'EdDSA', typ: 'JWT' })}.${enc(claims)}`;
      writeFileSync(join(dir, 'in'), input);
      const sig = execFileSync('openssl', ['pkeyutl', '-sign', '-inkey', priv, '-rawin', '-in', join(dir, 'in')]);
      const token = `${input}.${base64url.encode(sig)}`;
      const v = await verifyEar(token, await loadEarPublicKey(pubPem), { nonce: 'from-openssl' });
      expect(v.claims.eat_nonce).toBe('from-openssl');
      await expect(verifyEar(token, await loadEarPublicKey(pubPem), { nonce: 'other' })).rejects.toMatchObject({ code: 'INTEGRITY' });
      // The same PEM private key signs tokens that OpenSSL's public key verifies.
      const key = await loadEarKey(readFileSync(priv));
      const ours = await signEar(appraisal(), key, { nonce: 'pem' });
      expect((await verifyEar(ours, pubPem, { nonce: 'pem' })).status).toBe('warning');
      const [h, p, s] = ours.split('.') as [string, string, string];
      expect(opensslVerifies(pubPem, `${h}.${p}`, base64url.decode(s))).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
