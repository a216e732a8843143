/**
 * EAT Attestation Results (EAR, draft-fv-rats-ear,
 * https://datatracker.ietf.org/doc/draft-fv-rats-ear/) as JWTs signed with
 * EdDSA (Ed25519), through `jose` for both signing and verification; key
 * loading (PEM PKCS#8 / SPKI, JWK, JWKS) and the service's JWKS.
 *
 * ```
 *  JWS compact:  base64url(header) . base64url(claims) . base64url(Ed25519 signature)
 *  header:       {"alg":"EdDSA","typ":"JWT","kid":"<RFC 7638 thumbprint>"}
 *  claims:       eat_profile "tag:github.com,2023:veraison/ear", iat, exp, eat_nonce,
 *                ear.verifier-id {developer, build}, ear.status (worst of submods),
 *                submods { <name>: { ear.status, ear.trustworthiness-vector,
 *                                    ear.appraisal-policy-id, vmkit.appraisal } }
 * ```
 * docs/attest-service.md has the claims in full.
 * @module
 */
import { SignJWT, calculateJwkThumbprint, createLocalJWKSet, errors as joseErrors, exportJWK, generateKeyPair, importJWK, importPKCS8, importSPKI, jwtVerify, type CryptoKey, type JSONWebKeySet, type JWK, type JWTPayload } from 'jose';
import { VmkitError } from '../errors.js';
import type { Appraisal, ArStatus, SubmodAppraisal, TrustVector } from './appraise.js';

/**
 * The EAR profile this module produces and accepts.
 *
 * @example
 * ```ts
 * const { claims } = await verifyEar(token, jwks, { nonce });
 * console.assert(claims.eat_profile === EAR_PROFILE);
 * ```
 */
export const EAR_PROFILE = 'tag:github.com,2023:veraison/ear';

/**
 * Who produced a result (`ear.verifier-id`).
 *
 * @example
 * ```ts
 * const verifierId: VerifierId = { developer: 'https://example.com/attest', build: 'attestd 2.1.0' };
 * const token = await signEar(appraisal, key, { nonce, verifierId });
 * ```
 */
export interface VerifierId {
  developer: string;
  build: string;
}

/**
 * The default verifier id.
 *
 * @example
 * ```ts
 * const claims = earClaims(appraisal, { nonce, verifierId: { ...VMKIT_VERIFIER, build: 'vmkit 0.1.0 (site build)' } });
 * ```
 */
export const VMKIT_VERIFIER: VerifierId = { developer: 'https://github.com/vmkit', build: 'vmkit 0.1.0' };

/**
 * One `submods` entry of an EAR.
 *
 * @example
 * ```ts
 * for (const [name, s] of Object.entries(claims.submods) as [string, EarSubmod][]) {
 *   console.log(name, s['ear.status'], s['vmkit.appraisal']?.summary);
 * }
 * ```
 */
export interface EarSubmod {
  'ear.status': ArStatus;
  'ear.trustworthiness-vector': TrustVector;
  'ear.appraisal-policy-id'?: string;
  /** vmkit's appraisal record: counts, per-item verdicts with matches, IMA details, whole-machine categories (the submodule's appraisal without what the EAR's own claims carry). */
  'vmkit.appraisal'?: Pick<SubmodAppraisal, 'summary' | 'items' | 'pcr10' | 'pcrs' | 'failures' | 'excludes' | 'categories'>;
}

/**
 * The claims of an EAR.
 *
 * @example
 * ```ts
 * const claims: EarClaims = earClaims(appraisal, { nonce, ttlSeconds: 60 });
 * console.log(claims['ear.status'], claims.exp - claims.iat); // 60
 * ```
 */
export interface EarClaims {
  eat_profile: string;
  iat: number;
  exp: number;
  eat_nonce: string;
  'ear.verifier-id': VerifierId;
  /** The worst status of all submodules (vmkit extension, also in every submod). */
  'ear.status': ArStatus;
  submods: Record<string, EarSubmod>;
}

/**
 * An Ed25519 signing key with its public JWK and key id.
 *
 * @example
 * ```ts
 * const key: EarSigningKey = await generateEarKey();
 * await writeFile('ear-key.jwk', JSON.stringify(await exportEarKey(key)));
 * const jwks = exportJwks(key); // publish for relying parties
 * ```
 */
export interface EarSigningKey {
  privateKey: CryptoKey;
  /** Public JWK with `kid`, `alg: EdDSA`, `use: sig`. */
  publicJwk: JWK;
  /** RFC 7638 thumbprint of the public key. */
  kid: string;
}

/**
 * What {@link verifyEar} accepts as the verifier's key.
 *
 * @example
 * ```ts
 * const key: EarVerificationKey = await readFile('ear-pub.pem', 'utf8'); // a JWK, JWKS, CryptoKey or PEM
 * const { status } = await verifyEar(token, key, { nonce });
 * ```
 */
export type EarVerificationKey = CryptoKey | JWK | JSONWebKeySet | string;

const STATUSES: readonly string[] = ['none', 'affirming', 'warning', 'contraindicated'];

async function publicOf(jwk: JWK): Promise<{ publicJwk: JWK; kid: string }> {
  if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || typeof jwk.x !== 'string') {
    throw new VmkitError('UNSUPPORTED', `EAR keys are Ed25519 (OKP), got kty=${String(jwk.kty)} crv=${String(jwk.crv)}`);
  }
  const pub: JWK = { kty: 'OKP', crv: 'Ed25519', x: jwk.x };
  const kid = await calculateJwkThumbprint(pub);
  return { publicJwk: { ...pub, kid, alg: 'EdDSA', use: 'sig' }, kid };
}

async function fromPrivate(privateKey: CryptoKey, jwk: JWK): Promise<EarSigningKey> {
  return { privateKey, ...(await publicOf(jwk)) };
}

/**
 * Makes a fresh Ed25519 signing key (extractable, so it can be saved with
 * {@link exportEarKey}).
 * @example
 * ```ts
 * const key = await generateEarKey();
 * await writeFile('ear-key.jwk', JSON.stringify(await exportEarKey(key)));
 * ```
 */
export async function generateEarKey(): Promise<EarSigningKey> {
  const { privateKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519', extractable: true });
  return fromPrivate(privateKey, await exportJWK(privateKey));
}

function text(v: string | Uint8Array): string {
  return typeof v === 'string' ? v : new TextDecoder().decode(v);
}

/**
 * Loads a signing key from a private JWK (JSON text or object, `kty: OKP`,
 * `crv: Ed25519`, with `d`) or a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, as
 * `openssl genpkey -algorithm ed25519` writes). Other key types are
 * UNSUPPORTED; unreadable input is CORRUPT.
 * @example
 * ```ts
 * const key = await loadEarKey(await readFile('ear-key.pem'));
 * ```
 */
export async function loadEarKey(input: string | Uint8Array | JWK): Promise<EarSigningKey> {
  try {
    if (typeof input === 'object' && !(input instanceof Uint8Array)) return await loadJwkPrivate(input);
    const s = text(input).trim();
    if (s.startsWith('{')) return await loadJwkPrivate(JSON.parse(s) as JWK);
    if (s.includes('-----BEGIN PRIVATE KEY-----')) {
      const k = await importPKCS8(s, 'EdDSA', { extractable: true });
      return await fromPrivate(k, await exportJWK(k));
    }
  } catch (cause) {
    if (cause instanceof VmkitError) throw cause;
    throw new VmkitError('CORRUPT', `cannot read the EAR signing key: ${(cause as Error).message}`, { cause });
  }
  throw new VmkitError('CORRUPT', 'EAR signing key must be an Ed25519 private JWK or a PKCS#8 PEM');
}

async function loadJwkPrivate(jwk: JWK): Promise<EarSigningKey> {
  if (typeof jwk !== 'object' || jwk === null) throw new VmkitError('CORRUPT', 'EAR signing key JWK must be an object');
  await publicOf(jwk); // type check first: a clear UNSUPPORTED for RSA/EC keys
  if (typeof jwk.d !== 'string') throw new VmkitError('CORRUPT', 'EAR signing key JWK has no private part (d)');
  const k = (await importJWK({ ...jwk, alg: 'EdDSA', ext: true }, 'EdDSA', { extractable: true })) as CryptoKey;
  return fromPrivate(k, jwk);
}

/**
 * The private JWK of a key (for a `--key` file; keep it secret).
 * @example `JSON.stringify(await exportEarKey(key))`
 */
export async function exportEarKey(key: EarSigningKey): Promise<JWK> {
  const jwk = await exportJWK(key.privateKey);
  return { ...jwk, kid: key.kid, alg: 'EdDSA', use: 'sig' };
}

/**
 * The JWKS a service publishes at `/.well-known/jwks.json`.
 * @example `sendJson(res, 200, exportJwks(key))`
 */
export function exportJwks(...keys: EarSigningKey[]): { keys: JWK[] } {
  return { keys: keys.map((k) => ({ ...k.publicJwk })) };
}

/**
 * Loads a public key for {@link verifyEar}: a JWK or JWKS (JSON text or object)
 * or an SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
 * @example
 * ```ts
 * const jwks = await loadEarPublicKey(await (await fetch(url + '/.well-known/jwks.json')).text());
 * ```
 */
export async function loadEarPublicKey(input: string | Uint8Array | JWK | JSONWebKeySet): Promise<CryptoKey | JWK | JSONWebKeySet> {
  try {
    if (typeof input === 'object' && !(input instanceof Uint8Array)) return checkPublic(input);
    const s = text(input).trim();
    if (s.startsWith('{')) return checkPublic(JSON.parse(s) as JWK | JSONWebKeySet);
    if (s.includes('-----BEGIN PUBLIC KEY-----')) return (await importSPKI(s, 'EdDSA')) as CryptoKey;
  } catch (cause) {
    if (cause instanceof VmkitError) throw cause;
    throw new VmkitError('CORRUPT', `cannot read the EAR public key: ${(cause as Error).message}`, { cause });
  }
  throw new VmkitError('CORRUPT', 'EAR public key must be a JWK, a JWKS or an SPKI PEM');
}

function checkPublic(v: JWK | JSONWebKeySet): JWK | JSONWebKeySet {
  if (Array.isArray((v as JSONWebKeySet).keys)) return v;
  const j = v as JWK;
  if (j.kty !== 'OKP' || j.crv !== 'Ed25519') throw new VmkitError('UNSUPPORTED', 'EAR public keys are Ed25519 (OKP)');
  return j;
}

/**
 * Options of {@link earClaims} / {@link signEar}.
 *
 * @example
 * ```ts
 * const token = await signEar(appraisal, key, { nonce, ttlSeconds: 120, now: Date.now() });
 * ```
 */
export interface EarOptions {
  /** The request's nonce, echoed as `eat_nonce`. */
  nonce: string;
  /** Lifetime in seconds (default 300). */
  ttlSeconds?: number;
  /** Issue time in milliseconds since the epoch (default now). */
  now?: number;
  /** `ear.verifier-id` (default {@link VMKIT_VERIFIER}). */
  verifierId?: VerifierId;
}

/**
 * The EAR claims for an appraisal (pure; {@link signEar} signs them).
 * @example `earClaims(appraisal, { nonce, now: Date.now() })['ear.status']`
 */
export function earClaims(appraisal: Appraisal, options: EarOptions): EarClaims {
  const { nonce, ttlSeconds = 300, now = Date.now(), verifierId = VMKIT_VERIFIER } = options;
  if (typeof nonce !== 'string' || nonce.length === 0 || nonce.length > 1024) throw new VmkitError('ARG_RANGE', 'nonce must be a string of 1..1024 characters');
  if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1 || ttlSeconds > 366 * 86400) throw new VmkitError('ARG_RANGE', 'ttlSeconds must be an integer in [1, 1 year]');
  const iat = Math.floor(now / 1000);
  const submods: Record<string, EarSubmod> = {};
  for (const [name, s] of Object.entries(appraisal.submods)) {
    const rec: NonNullable<EarSubmod['vmkit.appraisal']> = { summary: s.summary, items: s.items };
    if (s.pcr10) rec.pcr10 = s.pcr10;
    if (s.pcrs) rec.pcrs = s.pcrs;
    if (s.failures) rec.failures = s.failures;
    if (s.excludes) rec.excludes = s.excludes;
    if (s.categories) rec.categories = s.categories;
    submods[name] = { 'ear.status': s.status, 'ear.trustworthiness-vector': s.trustVector, 'ear.appraisal-policy-id': s.policyId, 'vmkit.appraisal': rec };
  }
  return { eat_profile: EAR_PROFILE, iat, exp: iat + ttlSeconds, eat_nonce: nonce, 'ear.verifier-id': verifierId, 'ear.status': appraisal.status, submods };
}

/**
 * Signs an appraisal as an EAR JWT (EdDSA, `kid` = the key's thumbprint).
 * @example
 * ```ts
 * const token = await signEar(appraisal, key, { nonce });
 * sendJson(res, 200, { ear: token });
 * ```
 */
export async function signEar(appraisal: Appraisal, key: EarSigningKey, options: EarOptions): Promise<string> {
  const claims = earClaims(appraisal, options);
  return new SignJWT(claims as unknown as JWTPayload).setProtectedHeader({ alg: 'EdDSA', typ: 'JWT', kid: key.kid }).sign(key.privateKey);
}

/**
 * Options of {@link verifyEar}.
 *
 * @example
 * ```ts
 * const ear = await verifyEar(token, jwks, { nonce, clockTolerance: 5, maxAgeSeconds: 60 });
 * ```
 */
export interface VerifyEarOptions {
  /** The nonce the relying party sent; the EAR must echo it exactly. */
  nonce: string;
  /** Clock in milliseconds (default now). */
  now?: number;
  /** Tolerance for `exp` / `iat` in seconds (default 30). */
  clockTolerance?: number;
  /** Refuse results issued longer ago than this, in seconds (optional). */
  maxAgeSeconds?: number;
}

/**
 * A verified EAR.
 *
 * @example
 * ```ts
 * const { status, kid, claims }: VerifiedEar = await verifyEar(token, jwks, { nonce });
 * if (status !== 'affirming') console.error('not trusted:', claims.submods);
 * ```
 */
export interface VerifiedEar {
  claims: EarClaims;
  /** Overall status: `ear.status`, or the worst of the submods when absent. */
  status: ArStatus;
  /** The key id that signed it. */
  kid?: string;
}

function refuse(msg: string, cause?: unknown): VmkitError {
  return new VmkitError('INTEGRITY', `EAR refused: ${msg}`, cause === undefined ? {} : { cause });
}

const RANK: Record<ArStatus, number> = { none: 0, affirming: 1, warning: 2, contraindicated: 3 };

/**
 * Verifies an EAR for a relying party: the EdDSA signature (no other
 * algorithm is accepted), `eat_profile`, `eat_nonce` equal to `nonce`, `exp`
 * not passed and `iat` not in the future (±`clockTolerance`), and the shape of
 * the status claims. Any failure throws VmkitError `INTEGRITY` whose message
 * starts with `EAR refused:` and says which check failed.
 *
 * @example
 * ```ts
 * const { status, claims } = await verifyEar(token, jwks, { nonce });
 * if (status !== 'affirming') throw new Error('not attested');
 * ```
 */
export async function verifyEar(token: string, key: EarVerificationKey, options: VerifyEarOptions): Promise<VerifiedEar> {
  const { nonce, now = Date.now(), clockTolerance = 30, maxAgeSeconds } = options;
  if (typeof token !== 'string') throw new VmkitError('ARG_TYPE', 'token must be a string');
  if (typeof nonce !== 'string' || nonce === '') throw new VmkitError('ARG_TYPE', 'options.nonce must be a non-empty string');
  if (token.length > 16 << 20) throw refuse('token too large');
  let k = key;
  if (typeof k === 'string') k = await loadEarPublicKey(k);
  let payload: JWTPayload;
  let kid: string | undefined;
  try {
    const opts = { algorithms: ['EdDSA', 'Ed25519'], currentDate: new Date(now), clockTolerance };
    const r = Array.isArray((k as JSONWebKeySet).keys)
      ? await jwtVerify(token, createLocalJWKSet(k as JSONWebKeySet), opts)
      : await jwtVerify(token, 'kty' in (k as object) && !('type' in (k as object)) ? await importJWK(k as JWK, 'EdDSA') : (k as CryptoKey), opts);
    payload = r.payload;
    kid = r.protectedHeader.kid;
  } catch (e) {
    if (e instanceof joseErrors.JWTExpired) throw refuse('expired', e);
    if (e instanceof joseErrors.JWSSignatureVerificationFailed) throw refuse('bad signature', e);
    if (e instanceof joseErrors.JWKSNoMatchingKey) throw refuse('no key in the JWKS matches', e);
    if (e instanceof joseErrors.JOSEAlgNotAllowed) throw refuse('algorithm not allowed (EdDSA only)', e);
    if (e instanceof joseErrors.JOSEError) throw refuse(`${e.code}: ${e.message}`, e);
    throw refuse(`cannot verify: ${(e as Error).message}`, e);
  }
  const c = payload as unknown as EarClaims;
  if (c.eat_profile !== EAR_PROFILE) throw refuse(`eat_profile ${JSON.stringify(c.eat_profile)} is not ${EAR_PROFILE}`);
  if (typeof c.eat_nonce !== 'string' || c.eat_nonce !== nonce) throw refuse('nonce does not match');
  const t = Math.floor(now / 1000);
  if (typeof c.exp !== 'number') throw refuse('no exp');
  if (typeof c.iat !== 'number' || c.iat > t + clockTolerance) throw refuse('iat missing or in the future');
  if (maxAgeSeconds !== undefined && t - c.iat > maxAgeSeconds + clockTolerance) throw refuse('too old');
  if (typeof c.submods !== 'object' || c.submods === null) throw refuse('no submods');
  let w: ArStatus = 'none';
  for (const [name, s] of Object.entries(c.submods)) {
    const st = (s as EarSubmod | null)?.['ear.status'];
    if (typeof st !== 'string' || !STATUSES.includes(st)) throw refuse(`submod ${name} has no valid ear.status`);
    if (RANK[st] > RANK[w]) w = st;
  }
  const top = c['ear.status'];
  if (top !== undefined && (typeof top !== 'string' || !STATUSES.includes(top) || RANK[top] < RANK[w])) throw refuse('ear.status is better than its submods');
  const out: VerifiedEar = { claims: c, status: top ?? w };
  if (kid !== undefined) out.kid = kid;
  return out;
}
