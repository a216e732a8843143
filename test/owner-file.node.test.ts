// The file store (sidecar directory of immutable revisions swapped in with link(2)) and the
// HTTP release endpoint: CAS races, pruning, hostile files, status codes, a file-backed handoff.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readlink, rm, utimes, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createImage } from '../bindings/disk/image.js';
import { FileOwnerStore, httpTransport, openOwned, readOwner, type OwnerRecord } from '../bindings/disk/owner/index.js';
import { VmkitError } from '../bindings/errors.js';
import { code } from './_owner.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmkit-owner-file-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const rec = (epoch: number): OwnerRecord => ({ version: 1, disk: 'x', epoch, state: 'free', leaseExpiresAt: 0, updatedAt: 1 });

describe('FileOwnerStore', () => {
  it('reads nothing, then revisions; a stale revision loses; racing writers: one winner per revision', async () => {
    const store = new FileOwnerStore();
    const disk = join(dir, 'a.raw');
    expect(await store.read(disk)).toEqual({ record: null, revision: null });
    const first = await store.compareAndSwap(disk, null, rec(1));
    expect(first).toMatch(/^1\.[0-9a-f]{32}$/);
    expect(await store.compareAndSwap(disk, null, rec(1))).toBeNull();
    expect(await store.read(disk)).toEqual({ record: rec(1), revision: first });
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
    const wrong = await post(JSON.stringify({ disk, epoch: a.epoch + 7, requester: { id: 'z', host: 'h', pid: 1 } }));
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
});
