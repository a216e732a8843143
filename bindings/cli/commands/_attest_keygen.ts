/**
 * `vmkit attest keygen`: the Ed25519 key `vmkit attest serve --key` signs
 * tokens with, as a PKCS#8 PEM (what `openssl genpkey -algorithm ed25519`
 * writes), and optionally its public JWKS for relying parties.
 * @module
 */
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { VmkitError } from '../../errors.js';
import { loadEarKey, exportJwks } from '../../attest/ear.js';
import { emit, parse, type CliIO } from '../_common.js';

/** Writes `data` to a new file (`wx`: an existing one is CONFLICT unless `force`). */
function writeNew(path: string, data: string, force: boolean, mode: number): void {
  try {
    writeFileSync(path, data, { flag: force ? 'w' : 'wx', mode });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new VmkitError('CONFLICT', `${path} exists; pass --force to overwrite it`, { path });
    throw new VmkitError(code === 'ENOENT' ? 'NOT_FOUND' : 'IO', `${path}: ${(e as Error).message}`, { path, cause: e });
  }
}

/**
 * Runs `vmkit attest keygen <key.pem> [--jwks <file>] [--force]`.
 * @example
 * ```ts
 * process.exitCode = await keygen(['ear.pem', '--jwks', 'ear.jwks.json'], process);
 * ```
 */
export async function keygen(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, { jwks: { type: 'string' }, force: { type: 'boolean' } });
  const [out] = positionals;
  if (out === undefined || positionals.length !== 1) throw new VmkitError('ARG_RANGE', 'usage: vmkit attest keygen <key.pem>; see vmkit attest keygen --help');
  const pem = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  // Read back the way `attest serve --key` reads it, so the file is known to work and the kid is the server's.
  const key = await loadEarKey(pem);
  const force = values.force === true;
  writeNew(out, pem, force, 0o600);
  const jwks = exportJwks(key);
  if (typeof values.jwks === 'string') writeNew(values.jwks, JSON.stringify(jwks, null, 2) + '\n', force, 0o644);
  emit(io, values.json, { key: out, kid: key.kid, jwks }, () =>
    `wrote ${out} (Ed25519, PKCS#8 PEM, mode 0600), kid ${key.kid}${typeof values.jwks === 'string' ? `; public keys in ${values.jwks}` : ''}\nuse: vmkit attest serve --key ${out} …`,
  );
  return 0;
}
