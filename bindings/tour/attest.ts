/**
 * Tour chapter: attestation against a package registry. An npm-style
 * registry is made on the spot (two tarballs, a packument with ECDSA P-256
 * registry signatures under a key generated here, served from memory), the
 * attestation service indexes it through its signed chain, and a client
 * attests three times: a published tarball (affirming), bytes nobody
 * published (not affirming), and a replayed nonce (refused). Nothing is
 * downloaded; the service listens on 127.0.0.1 only for the chapter.
 * @module
 */
import { createHash, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { openSource } from '../attest/sources/parse-source-line.js';
import { AttestService } from '../attest/service/server.js';
import { SourceSet } from '../attest/service/refresh.js';
import { createVerifier, summarize, verifyToken } from '../attest/service/verifier.js';

const REGISTRY = 'http://registry.tour.invalid';

/** A registry of one package, two versions, signed the way registry.npmjs.org signs. */
function makeRegistry(): { fetch: typeof fetch; tarballs: Map<string, Uint8Array>; keys: { keys: { keyid: string; key: string; keytype: string; scheme: string; expires: null }[] } } {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const keyid = 'SHA256:' + createHash('sha256').update(spki).digest('base64');
  const tarballs = new Map<string, Uint8Array>();
  const versions: Record<string, unknown> = {};
  for (const version of ['1.0.0', '1.1.0']) {
    const bytes = new Uint8Array(randomBytes(2048)); // stands in for `npm pack` output
    tarballs.set(version, bytes);
    const integrity = 'sha512-' + createHash('sha512').update(bytes).digest('base64');
    const sig = sign('sha256', Buffer.from(`tour-pkg@${version}:${integrity}`), privateKey).toString('base64');
    versions[version] = { name: 'tour-pkg', version, dist: { integrity, tarball: `${REGISTRY}/tour-pkg/-/tour-pkg-${version}.tgz`, signatures: [{ keyid, sig }] } };
  }
  const packument = JSON.stringify({ name: 'tour-pkg', 'dist-tags': { latest: '1.1.0' }, versions });
  const keys = { keys: [{ keyid, key: spki.toString('base64'), keytype: 'ecdsa-sha2-nistp256', scheme: 'ecdsa-sha2-nistp256', expires: null }] };
  const serve = async (input: string | URL | Request): Promise<Response> => {
    const path = new URL(typeof input === 'string' || input instanceof URL ? input : input.url).pathname;
    if (path === '/tour-pkg') return new Response(packument, { headers: { 'content-type': 'application/json', etag: '"p1"' } });
    if (path === '/-/npm/v1/keys') return new Response(JSON.stringify(keys), { headers: { 'content-type': 'application/json' } });
    return new Response('not found', { status: 404 });
  };
  return { fetch: serve as typeof fetch, tarballs, keys };
}

/**
 * Runs the chapter, printing through `log`.
 *
 * @example
 * ```ts
 * // `npm start` (bindings/bin/tour.ts) runs every chapter this way; the tour is not part of the package's exports.
 * import { chapter } from '../tour/attest.js';
 * await chapter(console.log);
 * ```
 */
export async function chapter(log: (s: string) => void): Promise<void> {
  const reg = makeRegistry();
  const sources = new SourceSet([openSource(`npm ${REGISTRY} tour-pkg`, { fetch: reg.fetch, npmKeys: reg.keys })]);
  await sources.refreshAll({ requireAll: true });
  const [st] = sources.status();
  log(`registry ${REGISTRY}: ${st!.packages} versions of tour-pkg indexed through their registry signatures`);
  const verifier = await createVerifier();
  const svc = new AttestService({ sources, verifier });
  const base = await svc.listen(0, '127.0.0.1');
  log(`attestation service on ${base} (EAR key ${verifier.kid.slice(0, 12)}…)`);
  try {
    const attest = async (hex: string): Promise<{ nonce: string; res: Response }> => {
      const { nonce } = (await (await fetch(`${base}/nonce`)).json()) as { nonce: string };
      const res = await fetch(`${base}/attest`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ nonce, evidence: { digests: [{ alg: 'sha512', hex, path: '/srv/app/tour-pkg.tgz' }] } }),
      });
      return { nonce, res };
    };
    const sha512 = (b: Uint8Array): string => createHash('sha512').update(b).digest('hex');
    for (const [what, bytes] of [['published tarball 1.1.0', reg.tarballs.get('1.1.0')!], ['bytes nobody published', new Uint8Array(randomBytes(2048))]] as const) {
      const { nonce, res } = await attest(sha512(bytes));
      const { ear } = (await res.json()) as { ear: string };
      const v = await verifyToken(ear, `${base}/.well-known/jwks.json`, nonce);
      const [item] = summarize(v);
      log(`${what}: EAR verified (EdDSA, nonce echoed) → ${v.status}${item?.where ? ` — found at ${item.where}` : item?.reason ? ` (${item.reason})` : ''}`);
    }
    // A replayed nonce: the first request consumed it.
    const first = await attest(sha512(reg.tarballs.get('1.0.0')!));
    await first.res.arrayBuffer();
    const replay = await fetch(`${base}/attest`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ nonce: first.nonce, evidence: { digests: [{ alg: 'sha512', hex: sha512(reg.tarballs.get('1.0.0')!) }] } }),
    });
    const err = ((await replay.json()) as { error: { reason: string } }).error;
    log(`same nonce again: HTTP ${replay.status} (${err.reason})`);
  } finally {
    await svc.close();
  }
}
