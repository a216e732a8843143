/**
 * AWS Signature Version 4 for the remote reader's GETs (a private S3 or
 * S3-compatible bucket), through `aws4fetch`'s signer (WebCrypto, so the
 * same code signs in Node and in browsers). Loaded only when credentials
 * are given. Every header the reader sends is signed, `Range` and
 * `If-Match` included, so a proxy cannot move a signed request to other
 * bytes or drop its precondition.
 * @module
 */
import { VmkitError } from '../../errors.js';

/**
 * Credentials for {@link httpSource}'s SigV4 signing.
 *
 * @example
 * ```ts
 * const sigv4: SigV4Credentials = { accessKeyId: 'AKIA…', secretAccessKey: '…', region: 'eu-west-1' };
 * await CheckpointReader.open('https://bucket.s3.eu-west-1.amazonaws.com/vm.ckpt', { http: { sigv4 } });
 * ```
 */
export interface SigV4Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  /** A temporary credential's token (sent as `X-Amz-Security-Token`). */
  sessionToken?: string;
  /** The bucket's region (default `us-east-1`). */
  region?: string;
  /** The service name in the credential scope (default `s3`). */
  service?: string;
}

const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

/** Signs a GET of `url` with `headers`; answers the headers to send (the given ones plus x-amz-* and Authorization). */
export type _Signer = (url: string, headers: Record<string, string>, datetime?: string) => Promise<Record<string, string>>;

/** Checks `c` and answers a signer that keeps its derived signing keys between requests. */
export async function _sigv4Signer(c: SigV4Credentials): Promise<_Signer> {
  if (c === null || typeof c !== 'object') throw new VmkitError('ARG_TYPE', 'sigv4 must be an object { accessKeyId, secretAccessKey, … }');
  for (const k of ['accessKeyId', 'secretAccessKey'] as const) {
    if (typeof c[k] !== 'string' || c[k] === '') throw new VmkitError('ARG_TYPE', `sigv4.${k} must be a non-empty string`);
  }
  for (const k of ['sessionToken', 'region', 'service'] as const) {
    if (c[k] !== undefined && (typeof c[k] !== 'string' || c[k] === '')) throw new VmkitError('ARG_TYPE', `sigv4.${k} must be a non-empty string when given`);
  }
  if (typeof globalThis.crypto?.subtle?.digest !== 'function') throw new VmkitError('UNSUPPORTED', 'sigv4: no WebCrypto (crypto.subtle) in this runtime (a browser page must be a secure context)');
  const { AwsV4Signer } = await import('aws4fetch');
  const cache = new Map<string, ArrayBuffer>();
  return async (url, headers, datetime) => {
    const signer = new AwsV4Signer({
      method: 'GET',
      url,
      // The empty body's digest, as AWS's own GET examples sign it (some S3-compatible servers refuse UNSIGNED-PAYLOAD).
      headers: { 'x-amz-content-sha256': EMPTY_SHA256, ...headers },
      accessKeyId: c.accessKeyId,
      secretAccessKey: c.secretAccessKey,
      sessionToken: c.sessionToken,
      region: c.region ?? 'us-east-1',
      service: c.service ?? 's3',
      cache,
      datetime,
      allHeaders: true,
    });
    const signed = await signer.sign();
    const out: Record<string, string> = {};
    signed.headers.forEach((v, k) => {
      out[k] = v;
    });
    return out;
  };
}
