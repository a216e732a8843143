// The file store (sidecar directory of immutable revisions swapped in with link(2)) and the
// HTTP release endpoint: CAS races, pruning, hostile files, status codes, a file-backed handoff.
import { execFile, execFileSync } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createImage } from '../bindings/disk/image.js';
import {
  FileOwnerStore,
  createHttpTransport,
  httpTransport,
  newOwnerSecret,
  openOwned,
  readOwner,
  signReleaseRequest,
  type OwnerRecord,
  type ReleaseRequest,
} from '../bindings/disk/owner/index.js';
import { VmkitError } from '../bindings/errors.js';
import { code } from './_owner.js';
import { ownerStoreContract } from './_owner-contract.js';
import { needTool } from './_tools.js';

// Asynchronous: the servers these tools talk to run in this process's event loop.
const run = (cmd: string, args: string[]): Promise<string> =>
  new Promise((resolve, reject) => {
    const c = execFile(cmd, args, { timeout: 20_000 }, (err, out) => (err ? reject(err) : resolve(out)));
    c.stdin?.end();
  });

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmkit-owner-file-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const rec = (epoch: number): OwnerRecord => ({ version: 1, disk: 'x', epoch, state: 'free', leaseExpiresAt: 0, updatedAt: 1 });

// The contract every store keeps; each client is its own FileOwnerStore over the same sidecar.
ownerStoreContract('file', () => {
  let n = 0;
  return { client: () => new FileOwnerStore(), disk: (name) => join(dir, `${name}-${++n}-${Math.random().toString(36).slice(2)}.raw`), revision: /^[1-9][0-9]*\.[0-9a-f]{32}$/ };
});

describe('FileOwnerStore', () => {
  it('numbers revisions from 1 in order; one racing writer per revision; prunes old revisions', async () => {
    const store = new FileOwnerStore();
    const disk = join(dir, 'a.raw');
    const first = await store.compareAndSwap(disk, null, rec(1));
    expect(first).toMatch(/^1\.[0-9a-f]{32}$/); // the first revision of a sidecar is 1
    for (let round = 0; round < 10; round++) {
      const { revision } = await store.read(disk);
      const tries = await Promise.all(Array.from({ length: 8 }, (_, i) => store.compareAndSwap(disk, revision, rec(100 * round + i))));
      const wins = tries.filter((r) => r !== null);
      expect(wins).toHaveLength(1);
      expect(wins[0]!.split('.')[0]).toBe(String(round + 2));
      expect((await store.read(disk)).revision).toBe(wins[0]);
    }
    expect(await store.compareAndSwap(disk, first, rec(5))).toBeNull();
    // Young revisions stay (a paused writer may still check them); once 2 s old, all but the last 8 go.
    const side = store.dirOf(disk);
    expect((await readdir(side)).length).toBe(11);
    const old = new Date(Date.now() - 3_600_000);
    for (const n of await readdir(side)) await utimes(join(side, n), old, old);
    for (let i = 0; i < 8; i++) {
      const { revision } = await store.read(disk);
      expect(await store.compareAndSwap(disk, revision, rec(1000 + i))).not.toBeNull();
    }
    const names = (await readdir(side)).sort();
    expect(names.length).toBeLessThanOrEqual(16);
    expect(names[0]).toBe('r-000000000000008.json'); // 19 written; the prune at revision 16 removed those below 16 - 8
    expect(names.every((n) => /^r-\d{15}\.json$/.test(n))).toBe(true); // no temporary files left
    expect(await code(store.compareAndSwap(disk, 'not-a-revision', rec(1)))).toBe('ARG_RANGE');
  });

  it('refuses hostile sidecars: garbage, oversized files; ignores foreign names', async () => {
    const store = new FileOwnerStore();
    const disk = join(dir, 'h.raw');
    const side = store.dirOf(disk);
    await mkdir(side);
    await writeFile(join(side, 'README'), 'not a revision');
    await writeFile(join(side, '.tmp-1-abc'), '{"half":');
    await writeFile(join(side, 'r-99999999999999999999.json'), '{}'); // not 15 digits: ignored
    expect(await store.read(disk)).toEqual({ record: null, revision: null });
    await writeFile(join(side, 'r-000000000000001.json'), '{"version":1,"disk":"h","epoch":');
    expect(await code(store.read(disk))).toBe('CORRUPT');
    await writeFile(join(side, 'r-000000000000002.json'), ' '.repeat(1 << 20));
    expect(await code(store.read(disk))).toBe('LIMIT');
    const envelope = (seq: number, record: unknown) => JSON.stringify({ revision: { seq, id: 'ab'.repeat(16), prev: '' }, record });
    await writeFile(join(side, 'r-000000000000003.json'), envelope(3, { ...rec(1), epoch: 2 ** 60 }));
    expect(await code(store.read(disk))).toBe('LIMIT');
    await writeFile(join(side, 'r-000000000000004.json'), envelope(9, rec(1))); // a copy under the wrong name
    expect(await code(store.read(disk))).toBe('CORRUPT');
    await writeFile(join(side, 'r-000000000000005.json'), envelope(5, rec(1)));
    expect(await store.read(disk)).toEqual({ record: rec(1), revision: `5.${'ab'.repeat(16)}` });
    await writeFile(join(side, 'r-000000000000006.json'), envelope(6, { ...rec(1), epoch: 2 ** 60 }));
    // The CAS refuses to take over on top of it too (the reader of the current revision fails first).
    expect(await code(openOwned(disk, { as: 'a', serve: false }))).toBe('LIMIT');
  });
});

describe('FileOwnerStore across processes', () => {
  it('no lost update: 4 processes × 40 read-increment-CAS loops end at epoch 160', { timeout: 60_000 }, async () => {
    const distOwner = new URL('../dist/disk/owner/index.js', import.meta.url).href;
    const disk = join(dir, 'counter.raw');
    const script = `
      const { FileOwnerStore } = await import(${JSON.stringify(distOwner)});
      const s = new FileOwnerStore(); let wins = 0, lost = 0;
      while (wins < 40) {
        const { record, revision } = await s.read(process.argv[1]);
        const epoch = (record?.epoch ?? 0) + 1;
        const r = await s.compareAndSwap(process.argv[1], revision, { version: 1, disk: 'counter', epoch, state: 'free', leaseExpiresAt: 0, updatedAt: Date.now() });
        if (r === null) lost++; else wins++;
      }
      console.log(JSON.stringify({ wins, lost }));`;
    const run = () =>
      new Promise<{ wins: number; lost: number }>((resolve, reject) =>
        execFile(process.execPath, ['--input-type=module', '-e', script, disk], (err, out) => (err ? reject(err) : resolve(JSON.parse(out) as { wins: number; lost: number }))),
      );
    const results = await Promise.all([run(), run(), run(), run()]);
    const { record } = await new FileOwnerStore().read(disk);
    expect(record?.epoch).toBe(160);
    expect(results.reduce((n, r) => n + r.wins, 0)).toBe(160);
    console.log(`file store CAS across 4 processes: ${results.reduce((n, r) => n + r.lost, 0)} lost races, 0 lost updates`);
  });
});

describe('HTTP release endpoint and a file-backed handoff', () => {
  it('wrong epoch → 409, bad body → 400, GET → 404; the right request hands the disk over', async () => {
    const disk = join(dir, 'd.raw');
    await createImage(disk, { format: 'raw', size: 1 << 20 });
    const a = await openOwned(disk, { as: 'a', leaseMs: 5000 });
    expect(a.endpoint).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/release$/);
    await a.device.write(0, new Uint8Array(512).fill(0x5a));
    const post = (body: string) => fetch(a.endpoint!, { method: 'POST', body, headers: { 'content-type': 'application/json' } });
    const { secret } = (await readOwner(disk))!;
    const wrong = await post(JSON.stringify(await signReleaseRequest({ disk, epoch: a.epoch + 7, requester: { id: 'z', host: 'h', pid: 1 } }, secret!, Date.now())));
    expect(wrong.status).toBe(409);
    expect(await wrong.json()).toMatchObject({ ok: false, code: 'CONFLICT' });
    const bad = await post('{"disk":1}');
    expect(bad.status).toBe(400);
    expect((await fetch(a.endpoint!.replace('/release', '/'))).status).toBe(404);
    expect(a.fenced).toBe(false);

    const b = await openOwned(disk, { as: 'b', leaseMs: 5000 });
    expect(b.epoch).toBe(a.epoch + 1);
    expect((await b.device.read(0, 512))[0]).toBe(0x5a);
    expect(await code(a.device.write(0, new Uint8Array(512)))).toBe('FENCED');
    expect(await readOwner(disk)).toMatchObject({ epoch: b.epoch, state: 'owned', owner: { id: 'b', endpoint: b.endpoint } });
    await b.release();
    expect(await readOwner(disk)).toMatchObject({ epoch: b.epoch, state: 'free' });
    // An owner that is gone (its endpoint refuses connections) with a dead lease is taken over.
    // A fenced holder lets go of the image file without flushing (no file handle leaks).
    // Open file descriptions of the image in this process (Linux /proc).
    const fds = async () => {
      let n = 0;
      for (const fd of await readdir('/proc/self/fd')) if ((await readlink(`/proc/self/fd/${fd}`).catch(() => '')) === disk) n++;
      return n;
    };
    const base = await fds();
    expect(base).toBe(0);
    const c = await openOwned(disk, { as: 'c', serve: false });
    const d = await openOwned(disk, { as: 'd', serve: false, now: () => Date.now() + 3_600_000 });
    expect(await code(c.device.flush())).toBe('FENCED');
    await c.close(); // nothing left to do
    await d.release();
    expect(await fds()).toBe(0);
    const unreachable = await httpTransport.request(b.endpoint!, { disk, epoch: b.epoch, requester: { id: 'q', host: 'h', pid: 1 } }, 500).catch((e: VmkitError) => e.code);
    expect(unreachable).toBe('NETWORK');
  });

  it('refuses what the probe did: a forged curl POST, a wrong, replayed or stale MAC, text/plain, an Origin; refusals name nothing', async () => {
    const disk = join(dir, 'secret-name.raw');
    await createImage(disk, { format: 'raw', size: 1 << 20 });
    const a = await openOwned(disk, { as: 'holder-xyz', leaseMs: 5000 });
    const { secret, epoch } = (await readOwner(disk))!;
    const me = { id: 'mallory', host: 'h', pid: 1 };
    const post = async (body: unknown, headers: Record<string, string> = { 'content-type': 'application/json' }) => {
      const r = await fetch(a.endpoint!, { method: 'POST', body: typeof body === 'string' ? body : JSON.stringify(body), headers });
      const text = await r.text();
      // No refusal names the disk, the epoch or the holder.
      expect(text).not.toContain('secret-name');
      expect(text).not.toContain('holder-xyz');
      expect(text).not.toMatch(new RegExp(`\\b${epoch}\\b`));
      return { status: r.status, body: JSON.parse(text) as { code: string } };
    };
    // The probe's forged request, as curl sends it.
    const curl = await run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '-X', 'POST', '-H', 'content-type: application/json', '-d', JSON.stringify({ disk, epoch, requester: me }), a.endpoint!]);
    expect(curl).toBe('401');
    const plain = { disk, epoch, requester: me };
    expect(await post(plain)).toEqual({ status: 401, body: { ok: false, code: 'DENIED', reason: 'release request not authenticated' } });
    expect((await post({ ...plain, epoch: epoch + 1 })).status).toBe(401); // no proof: not even the epoch check answers
    expect((await post({ ...plain, disk: 'other.raw' })).status).toBe(401);
    expect((await post(await signReleaseRequest(plain, newOwnerSecret(), Date.now()))).status).toBe(401); // wrong MAC
    expect((await post(await signReleaseRequest(plain, secret!, Date.now() - 60_000))).status).toBe(401); // stale
    const good = await signReleaseRequest({ ...plain, epoch: epoch + 1 }, secret!, Date.now());
    expect((await post(good)).status).toBe(409); // authenticated, wrong epoch: nothing happens…
    expect((await post(good)).status).toBe(401); // … and the same MAC again is a replay
    // A web page: text/plain needs no preflight; JSON from a page carries an Origin.
    const fresh = async (): Promise<ReleaseRequest> => signReleaseRequest(plain, secret!, Date.now());
    expect((await post(await fresh(), { 'content-type': 'text/plain' })).status).toBe(415);
    expect((await post(await fresh(), { 'content-type': 'application/json', origin: 'https://evil.example' })).status).toBe(403);
    expect((await post(await fresh(), { 'content-type': 'application/json', origin: 'null' })).status).toBe(403);
    expect(a.fenced).toBe(false);
    expect(await readOwner(disk)).toMatchObject({ epoch, state: 'owned', owner: { id: 'holder-xyz' } });
    await a.device.write(0, new Uint8Array(512));
    // The real handoff still works.
    const b = await openOwned(disk, { as: 'b', leaseMs: 5000 });
    expect(b.epoch).toBe(epoch + 1);
    expect(await a.done).toMatchObject({ reason: 'requested', by: { id: 'b' } });
    await b.release();
  });

  it('a listener on a non-loopback address needs TLS or --insecure; a handoff works over HTTPS', async () => {
    expect(await code(httpTransport.serve('0.0.0.0:0', async () => ({ ok: true, epoch: 1 })))).toBe('ARG_RANGE');
    expect(await code(httpTransport.serve('[::]:0', async () => ({ ok: true, epoch: 1 })))).toBe('ARG_RANGE');
    const loose = await createHttpTransport({ insecure: true }).serve('0.0.0.0:0', async () => ({ ok: true, epoch: 1 }));
    expect(loose.endpoint).toMatch(/^http:\/\//);
    await loose.close();
    if (!needTool('openssl', 'openssl')) return;
    // A self-signed certificate for this host's loopback address.
    const tlsDir = join(dir, 'tls');
    await mkdir(tlsDir);
    const cert = join(tlsDir, 'cert.pem');
    const key = join(tlsDir, 'key.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'], { stdio: 'ignore' });
    const tls = { cert: await readFile(cert), key: await readFile(key) };
    const t = createHttpTransport({ tls, ca: tls.cert });
    const wide = await t.serve('0.0.0.0:0', async () => ({ ok: true, epoch: 1 })); // TLS: any address
    expect(wide.endpoint).toMatch(/^https:\/\//);
    await wide.close();
    const disk = join(dir, 'tls.raw');
    await createImage(disk, { format: 'raw', size: 1 << 20 });
    const a = await openOwned(disk, { as: 'a', transport: t, leaseMs: 5000 });
    expect(a.endpoint).toMatch(/^https:\/\/127\.0\.0\.1:\d+\/release$/);
    await a.device.write(0, new Uint8Array(512).fill(0x6b));
    // Without the CA the opener cannot reach it (NETWORK: a certificate error), so it waits for the lease.
    expect(await code(openOwned(disk, { as: 'x', serve: false, waitMs: 100 }))).toBe('TIMEOUT');
    // openssl agrees this is TLS with our certificate.
    const port = new URL(a.endpoint!).port;
    const sc = await run('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-CAfile', cert, '-verify_return_error']);
    expect(sc).toContain('Verify return code: 0 (ok)');
    const b = await openOwned(disk, { as: 'b', transport: t, leaseMs: 5000 });
    expect(b.epoch).toBe(a.epoch + 1);
    expect(await a.done).toMatchObject({ reason: 'requested', by: { id: 'b' } });
    expect((await b.device.read(0, 512))[0]).toBe(0x6b);
    await b.release();
  });

  it("keeps the sidecar (and the secret in it) to the disk's readers: 0600/0640 like the disk", async () => {
    for (const [mode, fileMode, dirMode] of [
      [0o600, 0o600, 0o700],
      [0o640, 0o640, 0o750],
      [0o644, 0o640, 0o750], // others may read the disk's bytes, not take it away from its owner
      [0o660, 0o660, 0o770],
    ] as const) {
      const disk = join(dir, `mode-${mode.toString(8)}.raw`);
      await createImage(disk, { format: 'raw', size: 1 << 16 });
      await chmod(disk, mode);
      const d = await openOwned(disk, { as: 'a', serve: false });
      await d.release();
      const side = new FileOwnerStore().dirOf(disk);
      expect(((await stat(side)).mode & 0o777).toString(8)).toBe(dirMode.toString(8));
      for (const n of await readdir(side)) expect([n, ((await stat(join(side, n))).mode & 0o777).toString(8)]).toEqual([n, fileMode.toString(8)]);
      expect((await readFile(join(side, (await readdir(side)).sort().at(-1)!), 'utf8'))).toMatch(/"secret":"[A-Za-z0-9_-]{43}"/);
    }
  });
});
