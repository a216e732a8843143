/**
 * The only module that imports an OpenPGP implementation (openpgp.js). It
 * reads the keyrings apt uses (binary, as in `/usr/share/keyrings/*.gpg`, or
 * ASCII-armored) and verifies the two signature forms of repository metadata:
 * cleartext-signed (`InRelease`) and detached (`Release` + `Release.gpg`,
 * `repomd.xml` + `repomd.xml.asc`). Every failure is a VmkitError INTEGRITY.
 * Spec: RFC 9580 (OpenPGP), §7 cleartext signature framework.
 * @module
 */
import * as openpgp from 'openpgp';
import { VmkitError } from '../errors.js';

/**
 * Public keys read from one or more keyrings.
 *
 * @example
 * ```ts
 * const ring: Keyring = await readKeyring(await readFile('/usr/share/keyrings/debian-archive-keyring.gpg'));
 * console.log(ring.fingerprints);
 * ```
 */
export interface Keyring {
  /** The keys (opaque to callers). */
  readonly keys: readonly unknown[];
  /** Fingerprints (uppercase hex) of the primary keys, for messages and docs. */
  readonly fingerprints: readonly string[];
}

/**
 * What a valid signature was made with.
 *
 * @example
 * ```ts
 * const { keyId, created }: SignatureInfo = await verifyDetached(releaseBytes, releaseGpgBytes, ring, 'Release.gpg');
 * ```
 */
export interface SignatureInfo {
  /** Key id (hex) of the signing key or subkey. */
  keyId: string;
  /** Creation time of the signature, when it says. */
  created?: Date;
}

const decoder = new TextDecoder();

function isArmored(b: Uint8Array): boolean {
  // Armor begins with "-----BEGIN PGP" (possibly after whitespace).
  let i = 0;
  while (i < b.length && (b[i] === 0x20 || b[i] === 0x0a || b[i] === 0x0d || b[i] === 0x09)) i++;
  return b[i] === 0x2d && decoder.decode(b.subarray(i, i + 14)) === '-----BEGIN PGP';
}

/**
 * Reads a keyring (binary packets as apt's `/usr/share/keyrings/*.gpg`, or
 * armored; several may be concatenated). Throws INTEGRITY when no key can be read.
 *
 * @example
 * ```ts
 * const ring = await readKeyring(await readFile('/usr/share/keyrings/debian-archive-keyring.gpg'));
 * ```
 */
export async function readKeyring(...data: Uint8Array[]): Promise<Keyring> {
  const keys: openpgp.Key[] = [];
  for (const d of data) {
    try {
      if (isArmored(d)) {
        // Several armored blocks may follow one another.
        const text = decoder.decode(d);
        const blocks = text.match(/-----BEGIN PGP PUBLIC KEY BLOCK-----[\s\S]*?-----END PGP PUBLIC KEY BLOCK-----/g) ?? [];
        for (const b of blocks) keys.push(...(await openpgp.readKeys({ armoredKeys: b })));
      } else {
        keys.push(...(await openpgp.readKeys({ binaryKeys: d })));
      }
    } catch (e) {
      throw new VmkitError('INTEGRITY', `keyring could not be read: ${(e as Error).message}`, { cause: e });
    }
  }
  if (keys.length === 0) throw new VmkitError('INTEGRITY', 'keyring holds no public key');
  return { keys, fingerprints: keys.map((k) => k.getFingerprint().toUpperCase()) };
}

async function firstValid(sigs: openpgp.VerifyMessageResult['signatures'], what: string): Promise<SignatureInfo> {
  const errors: string[] = [];
  for (const s of sigs) {
    try {
      await s.verified;
      const info: SignatureInfo = { keyId: s.keyID.toHex() };
      try {
        const sig = await s.signature;
        const t = sig.packets[0]?.created;
        if (t) info.created = t;
      } catch {
        /* creation time is informative only */
      }
      return info;
    } catch (e) {
      errors.push((e as Error).message);
    }
  }
  throw new VmkitError('INTEGRITY', `${what}: no valid signature by a key of the keyring${errors.length ? ` (${errors.join('; ')})` : ''}`);
}

/**
 * Verifies a cleartext-signed message (`InRelease`) and returns the signed
 * text (dash-escaping removed) — only that text may be trusted, never the
 * bytes around the signature. Throws INTEGRITY when it is not signed, the
 * signature is bad, or no key of `ring` made it.
 *
 * @example
 * ```ts
 * const { text } = await verifyCleartext(inReleaseText, ring, 'InRelease');
 * ```
 */
export async function verifyCleartext(signed: string, ring: Keyring, what: string = 'message'): Promise<{ text: string; signature: SignatureInfo }> {
  let msg: openpgp.CleartextMessage;
  try {
    msg = await openpgp.readCleartextMessage({ cleartextMessage: signed });
  } catch (e) {
    throw new VmkitError('INTEGRITY', `${what} is not a cleartext-signed message: ${(e as Error).message}`, { cause: e });
  }
  let r: openpgp.VerifyMessageResult<string>;
  try {
    r = await openpgp.verify({ message: msg, verificationKeys: ring.keys as openpgp.Key[] });
  } catch (e) {
    throw new VmkitError('INTEGRITY', `${what}: signature check failed: ${(e as Error).message}`, { cause: e });
  }
  const signature = await firstValid(r.signatures, what);
  return { text: r.data, signature };
}

/**
 * Verifies a detached signature (binary or armored) over `data`. Throws
 * INTEGRITY unless a key of `ring` made a valid signature.
 *
 * @example
 * ```ts
 * await verifyDetached(releaseBytes, releaseGpgBytes, ring, 'Release.gpg');
 * ```
 */
export async function verifyDetached(data: Uint8Array, signature: Uint8Array, ring: Keyring, what: string = 'signature'): Promise<SignatureInfo> {
  let sig: openpgp.Signature;
  try {
    sig = isArmored(signature)
      ? await openpgp.readSignature({ armoredSignature: decoder.decode(signature) })
      : await openpgp.readSignature({ binarySignature: signature });
  } catch (e) {
    throw new VmkitError('INTEGRITY', `${what} is not an OpenPGP signature: ${(e as Error).message}`, { cause: e });
  }
  let r: openpgp.VerifyMessageResult<Uint8Array>;
  try {
    const message = await openpgp.createMessage({ binary: data });
    r = await openpgp.verify({ message, signature: sig, verificationKeys: ring.keys as openpgp.Key[], format: 'binary' });
  } catch (e) {
    throw new VmkitError('INTEGRITY', `${what}: signature check failed: ${(e as Error).message}`, { cause: e });
  }
  return firstValid(r.signatures, what);
}
