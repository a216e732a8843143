// Rollback protection of APT sources (issue 18: an older, correctly signed InRelease with a
// still-valid Valid-Until replaced the newer one). The releases here are real: the fixture
// repository's Release with another Date, clear-signed by gpg with the fixture's key.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { needTool } from './_tools.js';
import { buildFixtures, FIXTURES, startServer, type FixtureServer } from './_attest-server.js';
import { AptSource, RpmSource, fileReleaseState, memoryReleaseState, readKeyring, type Keyring } from '../bindings/attest/index.js';
import { VmkitError } from '../bindings/errors.js';

const tools = ['apt-ftparchive:apt-utils', 'createrepo_c:createrepo-c', 'rpmbuild:rpm', 'gpg:gnupg', 'dpkg-deb:dpkg', 'zstd:zstd'];
const ready = tools.every((t) => needTool(t.split(':')[0]!, t.split(':')[1]!));

async function refused(p: Promise<unknown>, code: string): Promise<VmkitError> {
  const e = await p.then(() => undefined, (x: unknown) => x);
  expect(e, `expected ${code}`).toBeInstanceOf(VmkitError);
  expect((e as VmkitError).code).toBe(code);
  return e as VmkitError;
}

describe.runIf(ready)('APT release dates: no rollback, no future', () => {
  let srv: FixtureServer;
  let ring: Keyring;
  let gnupg: string;
  let state: string;
  const line = (): string => `deb ${srv.url}/debian bookworm main`;
  const INRELEASE = '/debian/dists/bookworm/InRelease';

  /** The fixture's Release with `Date:` set to `ms`, clear-signed with the fixture key. */
  const signedAt = (ms: number): Buffer => {
    const release = readFileSync(join(FIXTURES, 'debian/dists/bookworm/Release'), 'utf8');
    const text = release.replace(/^Date: .*$/m, `Date: ${new Date(ms).toUTCString().replace('GMT', 'UTC')}`);
    expect(text).not.toBe(release);
    return execFileSync('gpg', ['--batch', '--quiet', '--yes', '--homedir', gnupg, '--local-user', 'good@vmkit.invalid', '--clearsign', '-o', '-'], { input: text });
  };
  const serve = (body: Buffer): void => void srv.overrides.set(INRELEASE, () => body);
  afterEach(() => srv.overrides.clear());

  beforeAll(async () => {
    buildFixtures();
    srv = await startServer();
    ring = await readKeyring(readFileSync(join(FIXTURES, 'keyring.gpg')));
    // A private copy of the fixture's GnuPG home (without the agent's sockets): other specs use it too.
    gnupg = mkdtempSync(join(tmpdir(), 'vmkit-gnupg-'));
    cpSync(join(FIXTURES, 'gnupg'), gnupg, { recursive: true, filter: (p) => !/S\.|\.lock$|random_seed/.test(p.slice(p.lastIndexOf('/') + 1)) });
    state = mkdtempSync(join(tmpdir(), 'vmkit-release-state-'));
  });
  afterAll(async () => {
    await srv?.close();
    if (gnupg) {
      try {
        execFileSync('gpgconf', ['--homedir', gnupg, '--kill', 'gpg-agent'], { stdio: 'ignore' });
      } catch {
        // no agent was started
      }
      rmSync(gnupg, { recursive: true, force: true });
    }
    if (state) rmSync(state, { recursive: true, force: true });
  });

  it('refuses an older signed release after a newer one, also after a restart (state directory)', async () => {
    const day = 86_400_000;
    const newer = signedAt(Date.now() - day);
    const older = signedAt(Date.now() - 2 * day);
    serve(newer);
    const src = new AptSource(line(), { keyring: ring, releaseState: await fileReleaseState(state) });
    expect((await src.refresh()).packages).toBeGreaterThan(0);
    // The attack: yesterday's InRelease, correctly signed, Valid-Until years away.
    serve(older);
    const e = await refused(src.refresh(), 'INTEGRITY');
    expect(e.message).toMatch(/older than the one accepted before/);
    // The index of the newer release keeps answering.
    expect(src.lookupPackage('hello').length).toBe(1);
    src.close();
    // Written to the state directory, so a restarted service refuses it too…
    const saved = JSON.parse(readFileSync(join(state, 'release-dates.json'), 'utf8')) as { version: number; dates: Record<string, number> };
    expect(saved.version).toBe(1);
    expect(Math.abs(saved.dates[line()]! - (Date.now() - day))).toBeLessThan(120_000);
    const again = new AptSource(line(), { keyring: ring, releaseState: await fileReleaseState(state) });
    await refused(again.refresh(), 'INTEGRITY');
    again.close();
    // …which a source without the state would not (what the state directory is for).
    const amnesiac = new AptSource(line(), { keyring: ring });
    expect((await amnesiac.refresh()).packages).toBeGreaterThan(0);
    // In memory, the same source remembers: the newer one, then the older refused.
    serve(newer);
    await amnesiac.refresh();
    serve(older);
    await refused(amnesiac.refresh(), 'INTEGRITY');
    amnesiac.close();
    // The same release again, and a newer one, are accepted.
    serve(newer);
    const fresh = new AptSource(line(), { keyring: ring, releaseState: await fileReleaseState(state) });
    await fresh.refresh();
    serve(signedAt(Date.now() - 1000));
    await fresh.refresh();
    fresh.close();
    expect(JSON.parse(readFileSync(join(state, 'release-dates.json'), 'utf8')).dates[line()]).toBeGreaterThan(Date.now() - 60_000);
  });

  it('refuses a release dated further in the future than the allowed skew', async () => {
    serve(signedAt(Date.now() + 3600_000));
    const e = await refused(new AptSource(line(), { keyring: ring }).refresh(), 'INTEGRITY');
    expect(e.message).toMatch(/in the future/);
    const lax = new AptSource(line(), { keyring: ring, maxFutureSkewMs: 2 * 3600_000 });
    expect((await lax.refresh()).packages).toBeGreaterThan(0);
    lax.close();
  });

  it('RPM: refuses an older signed repomd.xml (its <timestamp>s) after a newer one, and one from the future', async () => {
    const repomd = readFileSync(join(FIXTURES, 'rpm/repodata/repomd.xml'), 'utf8');
    const at = (ms: number): { xml: Buffer; asc: Buffer } => {
      const text = repomd.replace(/<timestamp>\d+<\/timestamp>/g, `<timestamp>${Math.floor(ms / 1000)}</timestamp>`);
      expect(text).not.toBe(repomd);
      const asc = execFileSync('gpg', ['--batch', '--quiet', '--yes', '--homedir', gnupg, '--local-user', 'good@vmkit.invalid', '--armor', '--detach-sign', '-o', '-'], { input: text });
      return { xml: Buffer.from(text), asc };
    };
    const serveRpm = (r: { xml: Buffer; asc: Buffer }): void => {
      srv.overrides.set('/rpm/repodata/repomd.xml', () => r.xml);
      srv.overrides.set('/rpm/repodata/repomd.xml.asc', () => r.asc);
    };
    const day = 86_400_000;
    const newer = at(Date.now() - day);
    const older = at(Date.now() - 2 * day);
    const state = memoryReleaseState();
    serveRpm(newer);
    const src = new RpmSource(`rpm ${srv.url}/rpm`, { keyring: ring, releaseState: state });
    expect((await src.refresh()).packages).toBeGreaterThan(0);
    serveRpm(older);
    expect((await refused(src.refresh(), 'INTEGRITY')).message).toMatch(/older than the one accepted before/);
    expect(src.lookupPackage('vmkit-fixture').length).toBeGreaterThan(0);
    src.close();
    // Another source with the same state (a restart with --state-dir) refuses it too.
    await refused(new RpmSource(`rpm ${srv.url}/rpm`, { keyring: ring, releaseState: state }).refresh(), 'INTEGRITY');
    serveRpm(at(Date.now() + 3600_000));
    expect((await refused(new RpmSource(`rpm ${srv.url}/rpm`, { keyring: ring }).refresh(), 'INTEGRITY')).message).toMatch(/in the future/);
    srv.overrides.clear();
  });

  it('refuses a state file it cannot read as one (CORRUPT), rather than forgetting', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmkit-release-state-'));
    try {
      writeFileSync(join(dir, 'release-dates.json'), '{"version":1,"dates":{"x":"yesterday"}}');
      await refused(fileReleaseState(dir), 'CORRUPT');
      writeFileSync(join(dir, 'release-dates.json'), 'not json');
      await refused(fileReleaseState(dir), 'CORRUPT');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
