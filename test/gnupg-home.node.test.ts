// Fixture scripts that sign with gpg (scripts/attest-fixtures.sh) do it in a
// throwaway home made by scripts/_gnupg-home.sh, which stops the gpg-agent gpg
// starts there: `npm test` builds those fixtures lazily and must leave no
// process behind.
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { needTool } from './_tools.js';
import { buildFixtures } from './_attest-server.js';

/** gpg daemons (agent, keyboxd, dirmngr) whose command line names a home under `dir`. */
function daemonsUnder(dir: string): string[] {
  const out: string[] = [];
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    let cmd: string;
    try {
      cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
    } catch {
      continue; // exited meanwhile
    }
    if (/(gpg-agent|keyboxd|dirmngr)/.test(cmd) && cmd.includes(dir)) out.push(`${pid}: ${cmd}`);
  }
  return out;
}

/** Polls: a killed agent takes a moment to exit. */
async function settle(dir: string, want: (n: number) => boolean): Promise<string[]> {
  let d = daemonsUnder(dir);
  for (let i = 0; i < 50 && !want(d.length); i++) {
    await new Promise((r) => setTimeout(r, 100));
    d = daemonsUnder(dir);
  }
  return d;
}

const sign = `gpg --batch --quiet --passphrase '' --quick-gen-key 'vmkit test <t@vmkit.invalid>' ed25519 sign never
echo hello | gpg --batch --clearsign >/dev/null`;

describe('gpg fixtures leave no process behind', () => {
  it('gnupg_home stops the agent that signing started; without it the agent stays (the check sees it)', async () => {
    if (!needTool('gpg', 'gnupg') || !needTool('gpgconf', 'gnupg')) return;
    const tmp = mkdtempSync(join(tmpdir(), 'vmkit-gnupg-'));
    try {
      execFileSync('bash', ['-c', `. scripts/_gnupg-home.sh\ngnupg_home "$1"\n${sign}`, 'x', join(tmp, 'a')], { stdio: 'pipe' });
      expect(await settle(join(tmp, 'a'), (n) => n === 0)).toEqual([]);
      // The same without the exit trap: gpg-agent keeps running, and daemonsUnder finds it.
      execFileSync('bash', ['-c', `. scripts/_gnupg-home.sh\ngnupg_home "$1"\ntrap - EXIT\n${sign}`, 'x', join(tmp, 'b')], { stdio: 'pipe' });
      expect((await settle(join(tmp, 'b'), (n) => n > 0)).length).toBeGreaterThan(0);
      execFileSync('gpgconf', ['--homedir', join(tmp, 'b'), '--kill', 'all']);
      expect(await settle(join(tmp, 'b'), (n) => n === 0)).toEqual([]);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('after the attestation fixtures are built, no gpg daemon runs in their home', async () => {
    const tools = ['apt-ftparchive:apt-utils', 'createrepo_c:createrepo-c', 'rpmbuild:rpm', 'gpg:gnupg', 'dpkg-deb:dpkg', 'zstd:zstd'];
    if (!tools.every((t) => needTool(...(t.split(':') as [string, string])))) return;
    buildFixtures();
    expect(await settle(resolve('.cache/attest'), (n) => n === 0)).toEqual([]);
  });
});
