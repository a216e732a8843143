// The IMA measurement lists scripts/ima-fixtures.mjs makes in .cache/ima/ (real
// files of this machine, ima-ng / ima-sig / ima, sha1 and sha256 banks, checked
// there by evmctl), and the optional Keylime vectors beside the repository.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { needTool } from './_tools.js';

export interface ImaFixtureLog {
  template: string;
  digestAlg: string;
  count: number;
  violations: number;
  signed: number;
  pcr10: { sha1: string; sha256: string };
  pcr10Sha1Padded: { sha1: string; sha256: string };
  entries: { path: string; digest: string; templateHash: string; violation: boolean; signature?: string }[];
}

export interface ImaFixtures {
  dir: string;
  keyid: string;
  logs: Record<'ima-ng-sha1' | 'ima-ng-sha256' | 'ima-sig' | 'ima', ImaFixtureLog>;
  /** The text of `<name>.ascii`. */
  ascii(name: string): string;
  /** The bytes of `<name>.bin`. */
  binary(name: string): Buffer;
}

/**
 * Builds the fixtures (a no-op once cached) and reads the manifest. Undefined (the
 * caller skips, loudly) when evmctl or openssl is missing outside CI.
 */
export function imaFixtures(): ImaFixtures | undefined {
  if (!needTool('evmctl', 'ima-evm-utils') || !needTool('openssl', 'openssl')) return undefined;
  execFileSync(process.execPath, ['scripts/ima-fixtures.mjs'], { stdio: ['ignore', 'ignore', 'inherit'] });
  const dir = resolve('.cache/ima');
  const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as Pick<ImaFixtures, 'keyid' | 'logs'>;
  return {
    dir,
    keyid: m.keyid,
    logs: m.logs,
    ascii: (name) => readFileSync(join(dir, `${name}.ascii`), 'utf8'),
    binary: (name) => readFileSync(join(dir, `${name}.bin`)),
  };
}

/**
 * Keylime's IMA vectors in `../shared/vectors/ima/` beside the repository (CI has them):
 * an extra cross-check (`VMKIT_IMA_VECTORS` names another folder). Undefined, with a loud
 * message, when that folder is not there.
 */
export function keylimeVectors(): string | undefined {
  const dir = process.env.VMKIT_IMA_VECTORS ?? fileURLToPath(new URL('../../shared/vectors/ima/', import.meta.url));
  if (existsSync(join(dir, 'rust-keylime-agent-sha1.log'))) return dir;
  console.warn(`\n*** SKIPPING the Keylime IMA vectors: ${dir} is not there (an extra cross-check; the specs use .cache/ima/ from scripts/ima-fixtures.mjs) ***\n`);
  return undefined;
}
