/**
 * The service's verifier: appraisal (appraise.ts) and EAR signing (ear.ts)
 * behind the {@link Verifier} interface, with the signing key loaded from a
 * PEM or JWK file (or made for the life of the process); and the small
 * helpers the CLI's `request`, `verify` and `check` use.
 * @module
 */
import { readFile } from 'node:fs/promises';
import { VmkitError } from '../../errors.js';
import { appraiseEvidence, type Appraisal, type AppraiseEvidenceOptions, type Evidence, type ItemVerdict } from '../appraise.js';
import { KeyObject, sign as edSign } from 'node:crypto';
import { earClaims, exportJwks, generateEarKey, loadEarKey, verifyEar, VMKIT_VERIFIER, type EarClaims, type EarOptions, type EarSigningKey } from '../ear.js';
import type { ReferenceIndex } from '../types.js';
import { attest } from '../client.js';
import type { Jwks, Verifier } from './server.js';

/**
 * Options of {@link createVerifier}.
 *
 * @example
 * ```ts
 * const verifier = await createVerifier({ keyFile: 'ear.pem' });
 * ```
 */
export interface CreateVerifierOptions {
  /** The Ed25519 signing key (see `loadEarKey` / `generateEarKey`). */
  key?: EarSigningKey;
  /** A file holding the key as an Ed25519 private JWK or PKCS#8 PEM. */
  keyFile?: string;
  /** `ear.verifier-id` build string (default "vmkit <version>"). */
  verifierId?: string;
  /** Token lifetime in seconds (default 300). */
  ttlSeconds?: number;
  /**
   * Appraisal options (the service's own IMA excludes, unknown → warning/contraindicated).
   * The service's bounds default to: `maxListed` 1 000 items per submodule
   * (the rest counted), `maxExcludeWork` 2^22 (about 0.1 s of matching), `yieldMs` 5 (a large log is
   * appraised in slices of about 5 ms, other clients answered between them).
   */
  appraise?: AppraiseEvidenceOptions;
}

/**
 * The verifier the service uses: `appraiseEvidence` over the sources, then
 * an EdDSA-signed EAR echoing the nonce. Without a key, one is made for the
 * life of the process (relying parties then fetch the JWKS again after a restart).
 *
 * @example
 * ```ts
 * const verifier = await createVerifier({ keyFile: '/etc/vmkit/ear-key.pem' });
 * const svc = new AttestService({ sources, verifier });
 * ```
 */
export async function createVerifier(options: CreateVerifierOptions = {}): Promise<Verifier & { kid: string; key: EarSigningKey }> {
  let key: EarSigningKey;
  if (options.key !== undefined) key = options.key;
  else if (options.keyFile !== undefined) {
    let bytes: Uint8Array;
    try {
      bytes = new Uint8Array(await readFile(options.keyFile));
    } catch (e) {
      throw new VmkitError('NOT_FOUND', `key file ${options.keyFile} could not be read`, { cause: e, path: options.keyFile });
    }
    key = await loadEarKey(bytes);
  } else key = await generateEarKey();
  const jwks = exportJwks(key) as unknown as Jwks;
  const signOpts = {
    ...(options.verifierId !== undefined ? { verifierId: { developer: VMKIT_VERIFIER.developer, build: options.verifierId } } : {}),
    ...(options.ttlSeconds !== undefined ? { ttlSeconds: options.ttlSeconds } : {}),
  };
  const fastSign = nodeSigner(key);
  const appraiseOpts: AppraiseEvidenceOptions = { maxListed: 1000, maxExcludeWork: 1 << 22, yieldMs: 5, ...options.appraise };
  return {
    kid: key.kid,
    key,
    appraise: (evidence: Evidence, index: ReferenceIndex) => appraiseEvidence(index, evidence, appraiseOpts),
    appraiseOptions: appraiseOpts,
    sign: (appraisal: Appraisal, nonce: string) => fastSign(appraisal, { nonce, ...signOpts }),
    jwks: () => jwks,
  };
}

/**
 * The same JWS as `signEar` (header `{alg: EdDSA, typ: JWT, kid}`, the claims
 * of `earClaims`), signed with node:crypto's one-shot Ed25519: synchronous
 * and about 3x the rate of the WebCrypto path under load (bench/attest-service),
 * which matters at thousands of attestations a second.
 */
function nodeSigner(key: EarSigningKey): (appraisal: Appraisal, options: EarOptions) => string {
  const ko = KeyObject.from(key.privateKey);
  const header = Buffer.from(JSON.stringify({ alg: 'EdDSA', typ: 'JWT', kid: key.kid })).toString('base64url');
  return (appraisal, options) => {
    const input = `${header}.${Buffer.from(JSON.stringify(earClaims(appraisal, options))).toString('base64url')}`;
    return `${input}.${edSign(null, Buffer.from(input), ko).toString('base64url')}`;
  };
}

/** One line of a result for people: what, verdict, where it was found. */
export interface ItemLine {
  status: string;
  subject: string;
  where?: string;
  reason?: string;
}

/**
 * Flattens an appraisal (or verified EAR claims) into one line per item.
 * @example `summarize(appraisal).map((l) => l.status)`
 */
export function summarize(a: Appraisal): ItemLine[] {
  const out: ItemLine[] = [];
  for (const sub of Object.values(a.submods ?? {})) {
    for (const it of sub.items as ItemVerdict[]) {
      const subject = it.kind === 'package' ? `${it.name}=${it.version}` : `${it.path ? it.path + ' ' : ''}${it.alg}:${it.hex}`;
      const m = it.matches[0];
      const line: ItemLine = { status: it.status, subject };
      if (m) line.where = `${m.repository}: ${m.package} ${m.version}${m.architecture ? ' ' + m.architecture : ''}${m.path ? ' ' + m.path : ''}`;
      if (it.reason) line.reason = it.reason;
      out.push(line);
    }
  }
  return out;
}

/**
 * The offline check (`vmkit attest check`): appraisal without a service.
 * @example `const { status, items } = await appraiseSummary(evidence, sources);`
 */
export async function appraiseSummary(evidence: Evidence, index: ReferenceIndex): Promise<{ status: string; items: ItemLine[]; appraisal: Appraisal }> {
  const appraisal = await appraiseEvidence(index, evidence);
  return { status: appraisal.status, items: summarize(appraisal), appraisal };
}

/**
 * A JWKS from a URL (GET) or a file. NETWORK, NOT_FOUND, CORRUPT.
 * @example `const jwks = await loadJwks('http://svc/.well-known/jwks.json');`
 */
export async function loadJwks(where: string): Promise<Jwks> {
  let text: string;
  if (/^https?:\/\//.test(where)) {
    let res: Response;
    try {
      res = await fetch(where);
    } catch (e) {
      throw new VmkitError('NETWORK', `GET ${where}: ${(e as Error).message}`, { cause: e, path: where });
    }
    if (!res.ok) throw new VmkitError('NETWORK', `GET ${where}: HTTP ${res.status}`, { path: where });
    text = await res.text();
  } else {
    try {
      text = await readFile(where, 'utf8');
    } catch (e) {
      throw new VmkitError('NOT_FOUND', `JWKS file ${where} could not be read`, { cause: e, path: where });
    }
  }
  try {
    return JSON.parse(text) as Jwks;
  } catch (e) {
    throw new VmkitError('CORRUPT', `${where} is not a JWKS (JSON)`, { cause: e, path: where });
  }
}

/**
 * Verifies an EAR token against a JWKS (URL or file): signature (EdDSA),
 * profile, expiry and the nonce. Without `nonce` the token's own
 * `eat_nonce` is accepted (freshness then unchecked: `nonceChecked` false).
 * @example `const v = await verifyToken(token, 'http://svc/.well-known/jwks.json', nonce);`
 */
export async function verifyToken(token: string, jwks: string, nonce?: string): Promise<Appraisal & { claims: EarClaims; kid?: string; nonceChecked: boolean }> {
  const set = await loadJwks(jwks);
  let n = nonce;
  if (n === undefined) {
    try {
      n = String((JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as { eat_nonce?: unknown }).eat_nonce ?? '');
    } catch (e) {
      throw new VmkitError('CORRUPT', 'not a JWT', { cause: e });
    }
  }
  const v = await verifyEar(token, set as never, { nonce: n });
  const out: Appraisal & { claims: EarClaims; kid?: string; nonceChecked: boolean } = { ...claimsToAppraisal(v.status, v.claims), claims: v.claims, nonceChecked: nonce !== undefined };
  if (v.kid !== undefined) out.kid = v.kid;
  return out;
}

/** EAR claims → the appraisal shape (status and per-submodule items) for {@link summarize}. */
function claimsToAppraisal(status: Appraisal['status'], claims: EarClaims): Appraisal {
  const submods: Record<string, unknown> = {};
  for (const [name, sm] of Object.entries(claims.submods)) submods[name] = { status: sm['ear.status'], items: sm['vmkit.appraisal']?.items ?? [] };
  return { status, submods: submods as Appraisal['submods'] };
}

/**
 * The client side of `vmkit attest request`: `attest()` of client.ts (nonce,
 * evidence, EAR verified with the JWKS and the nonce), with the JWKS pinned
 * from a URL or file when given, and the result flattened for printing.
 * @example `const r = await requestAttestation('http://svc:8080', { digests }); r.status`
 */
export async function requestAttestation(server: string, evidence: Evidence, options: { jwks?: string } = {}): Promise<{ status: string; items: ItemLine[]; token: string; claims: EarClaims }> {
  const pinned = options.jwks === undefined ? undefined : await loadJwks(options.jwks);
  const r = await attest({ serviceUrl: server, evidence, ...(pinned ? { jwks: pinned as never } : {}) });
  return { status: r.status, items: summarize(claimsToAppraisal(r.status, r.claims)), token: r.token, claims: r.claims };
}
