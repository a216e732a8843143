/**
 * Turns a source written the way its ecosystem writes it into a
 * {@link RepositorySource}:
 *
 * ```
 * deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://host/debian bookworm main   → AptSource
 * rpm http://host/fedora/x86_64/os                                                        → RpmSource
 * npm https://registry.npmjs.org left-pad @scope/name                                     → NpmSource
 * apk https://dl-cdn.alpinelinux.org/alpine/v3.20/main/x86_64                            → ApkSource
 * ```
 * @module
 */
import { VmkitError } from '../../errors.js';
import type { RepositorySource } from '../types.js';
import type { Keyring } from '../_openpgp.js';
import { AptSource, type AptSourceOptions } from './apt.js';
import { RpmSource, type RpmSourceOptions } from './rpm.js';
import { NpmSource, type NpmSourceOptions } from './npm.js';
import { ApkSource, type ApkSourceOptions } from './apk.js';

/**
 * Options for {@link openSource}: the union of every source's options.
 *
 * @example
 * ```ts
 * const sources = lines.map((l) => openSource(l, { keyring, allowUnsigned: false }));
 * ```
 */
export interface OpenSourceOptions extends AptSourceOptions, Omit<RpmSourceOptions, 'keyring'>, Omit<NpmSourceOptions, 'keys'> {
  /** OpenPGP keyring(s) for APT and RPM sources (read with `readKeyring`, or raw bytes). */
  keyring?: Keyring | Uint8Array | Uint8Array[];
  /** npm registry keys (`/-/npm/v1/keys` JSON); fetched from the registry when absent. */
  npmKeys?: NpmSourceOptions['keys'];
  /** Alpine signing keys (PEM, by file name as in `/etc/apk/keys`, or a list). */
  apkKeys?: ApkSourceOptions['keys'];
}

/**
 * Opens a source line (`deb …`, `rpm <baseurl>`, `npm <registry-url> [package…]`, `apk <url>`).
 * Nothing is fetched until `refresh()`.
 *
 * @example
 * ```ts
 * const src = openSource('deb http://deb.debian.org/debian bookworm main', { keyring });
 * await src.refresh();
 * src.lookupDigest('sha256', digest);
 * ```
 */
export function openSource(line: string, options: OpenSourceOptions = {}): RepositorySource & { close(): void } {
  if (typeof line !== 'string') throw new VmkitError('ARG_TYPE', 'line must be a string');
  const kind = line.trim().split(/\s+/, 1)[0];
  switch (kind) {
    case 'deb':
      return new AptSource(line, options);
    case 'rpm':
      return new RpmSource(line, options);
    case 'npm': {
      const { npmKeys, ...rest } = options;
      return new NpmSource(line, npmKeys === undefined ? rest : { ...rest, keys: npmKeys });
    }
    case 'apk': {
      const { apkKeys, npmKeys: _n, keyring: _k, ...rest } = options;
      return new ApkSource(line, apkKeys === undefined ? rest : { ...rest, keys: apkKeys });
    }
    default:
      throw new VmkitError('ARG_RANGE', `unknown source kind ${JSON.stringify(kind)}: expected "deb", "rpm", "npm" or "apk"`);
  }
}
