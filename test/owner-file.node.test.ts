// The file store (sidecar directory of immutable revisions swapped in with link(2)) and the
// HTTP release endpoint: CAS races, pruning, hostile files, status codes, a file-backed handoff.
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createImage } from '../bindings/disk/image.js';
import { FileOwnerStore, httpTransport, openOwned, readOwner, type OwnerRecord } from '../bindings/disk/owner/index.js';
import { VmkitError } from '../bindings/errors.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmkit-owner-file-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const rec = (epoch: number): OwnerRecord => ({ version: 1, disk: 'x', epoch, state: 'free', leaseExpiresAt: 0, updatedAt: 1 });

async function code(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(VmkitError);
    return (e as VmkitError).code;
  }
  return undefined;
}

describe('FileOwnerStore', () => {
  it('reads nothing, then revisions; a stale revision loses; racing writers: one winner per revision', async () => {
    const store = new FileOwnerStore();
    const disk = join(dir, 'a.raw');
    expect(await store.read(disk)).toEqual({ record: null, revision: null });
    expect(await store.compareAndSwap(disk, null, rec(1))).toBe('1');
    expect(await store.compareAndSwap(disk, null, rec(1))).toBeNull();
    expect(await store.read(disk)).toEqual({ record: rec(1), revision: '1' });
    for (let round = 0; round < 10; round++) {
      const { revision } = await store.read(disk);
      const tries = await Promise.all(Array.from({ length: 8 }, (_, i) => store.compareAndSwap(disk, revision, rec(100 * round + i))));
      expect(tries.filter((r) => r !== null)).toEqual([String(Number(revision) + 1)]);
    }
    expect(await store.compareAndSwap(disk, '1', rec(5))).toBeNull();
    // Old revisions are pruned (the current one and a few before it stay); no temporary files left.
    const names = await readdir(store.dirOf(disk));
    expect(names.length).toBeLessThanOrEqual(5);
    expect(names.every((n) => /^r-\d{15}\.json$/.test(n))).toBe(true);
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
    await writeFile(join(side, 'r-000000000000003.json'), JSON.stringify({ ...rec(1), epoch: 2 ** 60 }));
    expect(await code(store.read(disk))).toBe('LIMIT');
    // The CAS refuses to take over on top of it too (the reader of the current revision fails first).
    expect(await code(openOwned(disk, { as: 'a', serve: false }))).toBe('LIMIT');
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
    const unreachable = await httpTransport.request(b.endpoint!, { disk, epoch: b.epoch, requester: { id: 'q', host: 'h', pid: 1 } }, 500).catch((e: VmkitError) => e.code);
    expect(unreachable).toBe('NETWORK');
  });
});
