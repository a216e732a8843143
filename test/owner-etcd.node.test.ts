// The etcd owner store against a real etcd (Debian's etcd-server, started by
// the spec on free ports): missing keys, create-once, compare-and-swap races
// between many clients (exactly one wins per revision), corrupt and hostile
// values written behind the store's back, and an etcd that is down (NETWORK,
// fast) or hung (TIMEOUT, within the deadline, not a hang), also through
// openOwned. Malformed gateway answers: owner-etcd-gateway.test.ts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { etcdStore, type EtcdOwnerStore } from '../bindings/disk/owner/etcd-store.js';
import { openOwned } from '../bindings/disk/owner/handoff.js';
import type { OwnerRecord } from '../bindings/disk/owner/types.js';
import { VmkitError } from '../bindings/errors.js';
import { code, rec } from './_owner.js';
import { ownerStoreContract } from './_owner-contract.js';
import { freePort, startEtcd, type EtcdServer } from './_etcd.js';
import { needTool } from './_tools.js';

const have = needTool('etcd', 'etcd-server');
let etcd: EtcdServer;
const stores: EtcdOwnerStore[] = [];
let seq = 0;

function open(opts: Partial<Parameters<typeof etcdStore>[0]> = {}): EtcdOwnerStore {
  const s = etcdStore({ endpoints: etcd.endpoint, prefix: '/t/', timeoutMs: 2000, ...opts });
  stores.push(s);
  return s;
}

/** A fresh disk name per test, so tests share one server without sharing keys. */
const disk = (name: string): string => `${name}-${++seq}.qcow2`;

const b64 = (b: Uint8Array | string): string => Buffer.from(b).toString('base64');

/** Puts raw bytes under the store's key, bypassing it (a hostile or buggy writer). */
async function rawPut(d: string, value: Uint8Array | string): Promise<void> {
  const r = await fetch(`${etcd.endpoint}/v3/kv/put`, { method: 'POST', body: JSON.stringify({ key: b64(`/t/${d}`), value: b64(value) }) });
  expect(r.status).toBe(200);
}

describe.skipIf(!have)('owner store: etcd', () => {
  beforeAll(async () => {
    etcd = await startEtcd();
  });
  afterAll(async () => {
    for (const s of stores) await s.close();
    await etcd?.stop();
  });

  // Missing keys, create-once, compare-and-swap and races between many clients (each its own store).
  ownerStoreContract('etcd', () => ({ client: () => open(), disk, revision: /^[1-9][0-9]*$/ }), { rounds: 12 });

  it('revisions are etcd mod revisions: they grow', async () => {
    const s = open();
    const d = disk('grow');
    const r1 = await s.compareAndSwap(d, null, rec(d, 1));
    const r2 = await s.compareAndSwap(d, r1, rec(d, 2, 'vm-b'));
    expect(BigInt(r2!)).toBeGreaterThan(BigInt(r1!));
  });

  it('refuses corrupt and hostile values with a VmkitError', async () => {
    const s = open();
    const cases: [string, Uint8Array | string, string][] = [
      ['not json', 'owner: vm-a', 'CORRUPT'],
      ['not utf-8', new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]), 'CORRUPT'],
      ['empty', '', 'CORRUPT'],
      ['array', '[1,2]', 'CORRUPT'],
      ['epoch as string', JSON.stringify({ ...rec('x', 1), epoch: '7' }), 'CORRUPT'],
      ['epoch past 2^53', JSON.stringify(rec('x', 1)).replace('"epoch":1', '"epoch":18446744073709551616'), 'LIMIT'],
      ['negative epoch', JSON.stringify({ ...rec('x', 1), epoch: -1 }), 'LIMIT'],
      ['bad state', JSON.stringify({ ...rec('x', 1), state: 'mine' }), 'CORRUPT'],
      ['owned without owner', JSON.stringify({ ...rec('x', 1), owner: undefined }), 'CORRUPT'],
      ['future version', JSON.stringify({ ...rec('x', 1), version: 3 }), 'UNSUPPORTED'],
      ['__proto__ field', JSON.stringify(rec('x', 1)).replace('{', '{"__proto__":{"admin":true},'), 'CORRUPT'],
      ['huge', JSON.stringify({ ...rec('x', 1), pad: 'x'.repeat(100_000) }), 'LIMIT'],
      ['lease for a century', JSON.stringify({ ...rec('x', 1), leaseExpiresAt: Date.now() + 100 * 365 * 86400e3 }), 'LIMIT'],
    ];
    for (const [name, raw, want] of cases) {
      const d = disk('corrupt');
      await rawPut(d, typeof raw === 'string' ? raw.replaceAll('"disk":"x"', `"disk":${JSON.stringify(d)}`) : raw);
      expect([name, await code(s.read(d))]).toEqual([name, want]);
    }
    // A well-formed record that governs another disk (copied from another key).
    const d = disk('foreign');
    await rawPut(d, JSON.stringify(rec('other.qcow2', 5)));
    expect(await code(s.read(d))).toBe('CORRUPT');
    // The store never writes what it would refuse to read.
    const w = disk('write');
    expect(await code(s.compareAndSwap(w, null, { ...rec(w, 1), epoch: -3 }))).toBe('ARG_RANGE');
    expect(await code(s.compareAndSwap(w, null, rec('elsewhere', 1)))).toBe('ARG_RANGE');
    expect(await code(s.compareAndSwap(w, 'abc', rec(w, 1)))).toBe('ARG_RANGE');
    expect(await s.read(w)).toEqual({ record: null, revision: null });
  });

  it('the CLI with --etcd and --name: two paths to one disk (two hosts) share one record', { timeout: 30_000 }, async () => {
    const { spawnSync } = await import('node:child_process');
    const { symlink } = await import('node:fs/promises');
    const bin = join(process.cwd(), 'dist', 'bin', 'vmkit.js');
    const dir = await mkdtemp(join(tmpdir(), 'vmkit-etcd-cli-'));
    let kill = (): void => {};
    try {
      await writeFile(join(dir, 'vm.raw'), new Uint8Array(1 << 16));
      await symlink(join(dir, 'vm.raw'), join(dir, 'other-path.raw')); // the same disk as another host mounts it
      const name = disk('cli-shared');
      const cli = (...a: string[]) => spawnSync(process.execPath, [bin, ...a, '--etcd', etcd.endpoint, '--json'], { cwd: dir, encoding: 'utf8', timeout: 20_000 });
      const { spawn } = await import('node:child_process');
      const holder = spawn(process.execPath, [bin, 'disk', 'open', 'vm.raw', '--as', 'host-a', '--name', name, '--etcd', etcd.endpoint], { cwd: dir });
      let out = '';
      holder.stdout.on('data', (b: Buffer) => (out += b.toString()));
      holder.stderr.on('data', (b: Buffer) => (out += b.toString()));
      const exited = new Promise<number | null>((r) => holder.on('exit', r));
      kill = () => holder.kill('SIGKILL');
      for (let i = 0; i < 200 && !out.includes('holding'); i++) await new Promise((r) => setTimeout(r, 50));
      expect(out, out).toContain('holding');
      const seen = cli('disk', 'owner', 'other-path.raw', '--name', name);
      expect(seen.status).toBe(0);
      const rec1 = JSON.parse(seen.stdout) as { disk: string; record: OwnerRecord | null };
      expect(rec1.disk).toBe(name);
      expect(rec1.record?.owner?.id).toBe('host-a');
      // Without --name the other path is another key: no record there.
      const apart = JSON.parse(cli('disk', 'owner', 'other-path.raw').stdout) as { record: OwnerRecord | null };
      expect(apart.record).toBeNull();
      expect(cli('disk', 'owner', 'vm.raw', '--name', '').status).toBe(2);
      // A release asked for through the other path reaches the holder; it exits 0.
      const rel = cli('disk', 'release', 'other-path.raw', '--name', name);
      expect(rel.status).toBe(0);
      expect(await exited).toBe(0);
      expect((JSON.parse(cli('disk', 'owner', 'vm.raw', '--name', name).stdout) as { record: OwnerRecord }).record.state).toBe('free');
    } finally {
      kill();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('an etcd that is down gives NETWORK at once; one that hangs gives TIMEOUT within the deadline', async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    // A long deadline: NETWORK well before it shows the refusal was not waited out (a wide
    // margin, so a loaded machine does not matter).
    let t = Date.now();
    expect(await code(open({ endpoints: dead, timeoutMs: 60_000 }).read(disk('down')))).toBe('NETWORK');
    const down = disk('down');
    expect(await code(open({ endpoints: dead, timeoutMs: 60_000 }).compareAndSwap(down, null, rec(down, 1)))).toBe('NETWORK');
    expect(Date.now() - t).toBeLessThan(30_000);
    // A dead endpoint first: the store moves on to the live one (a refused connection was never applied).
    const d = disk('failover');
    const both = open({ endpoints: [dead, etcd.endpoint] });
    expect(await both.compareAndSwap(d, null, rec(d, 1))).not.toBeNull();
    expect((await both.read(d)).record!.epoch).toBe(1);

    const s = open({ timeoutMs: 400 });
    const h = disk('hung');
    etcd.pause();
    try {
      t = Date.now();
      expect(await code(s.read(h))).toBe('TIMEOUT');
      expect(await code(s.compareAndSwap(h, null, rec(h, 1)))).toBe('TIMEOUT');
      const took = Date.now() - t;
      expect(took).toBeGreaterThanOrEqual(700);
      expect(took).toBeLessThan(3600); // 2 x 400 ms, not 2 x the 2 s of open()
    } finally {
      etcd.resume();
    }
    // The timed-out txn may or may not have been applied once etcd resumed: read to know.
    const snap = await s.read(h);
    expect(snap.record === null || snap.record.epoch === 1).toBe(true);
  });

  it('through the handoff: a hung etcd fences the holder once its lease ends and fails openers with TIMEOUT, then the next opener takes over', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vmkit-owner-etcd-'));
    const path = join(dir, 'vm.raw');
    await writeFile(path, new Uint8Array(1 << 20));
    const name = disk('handoff');
    const block = new Uint8Array(4096).fill(7);
    try {
      const a = await openOwned(path, { as: 'a', name, store: open({ timeoutMs: 300 }), leaseMs: 1000, maxSkewMs: 50, image: { format: 'raw' } });
      expect(a.epoch).toBe(1);
      await a.device.write(0, block);
      await a.device.flush();
      etcd.pause();
      try {
        // The holder keeps its lease while it cannot reach etcd, then refuses to write: FENCED, not a hang.
        const t = Date.now();
        let err: unknown;
        while (Date.now() - t < 5000) {
          try {
            await a.device.write(4096, block);
            await a.device.flush();
          } catch (e) {
            err = e;
            break;
          }
        }
        expect(err).toBeInstanceOf(VmkitError);
        expect((err as VmkitError).code).toBe('FENCED');
        expect(Date.now() - t).toBeLessThan(2500);
        // An opener cannot read the record: a clear error within its deadline.
        const t2 = Date.now();
        expect(await code(openOwned(path, { as: 'b', name, store: open({ timeoutMs: 300 }), leaseMs: 1000, image: { format: 'raw' } }))).toBe('TIMEOUT');
        expect(Date.now() - t2).toBeLessThan(2500);
      } finally {
        etcd.resume();
      }
      // a's lease has run out: b takes epoch 2 (after asking a, if a still answers, to let go).
      const b = await openOwned(path, { as: 'b', name, store: open(), leaseMs: 1000, maxSkewMs: 50, image: { format: 'raw' }, waitMs: 5000 });
      expect(b.epoch).toBe(2);
      await b.device.write(0, block);
      await b.device.flush();
      expect(await code(a.device.write(0, block))).toBe('FENCED');
      await b.release();
      expect((await open().read(name)).record).toMatchObject({ epoch: 2, state: 'free' });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a hung etcd (SIGSTOP) whose client waits longer than the lease: the holder still refuses within its lease, and stops holding (issue #18)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vmkit-owner-etcd-'));
    const path = join(dir, 'vm.raw');
    await writeFile(path, new Uint8Array(1 << 20));
    const name = disk('lease-bound');
    const block = new Uint8Array(4096).fill(9);
    const leaseMs = 3000;
    const maxSkewMs = 2000;
    try {
      // The store's own deadline (10 s) is far past the lease: only the holder's bound can make it refuse in time.
      const a = await openOwned(path, { as: 'a', name, store: open({ timeoutMs: 10_000 }), leaseMs, maxSkewMs, serve: false, image: { format: 'raw' } });
      await a.device.write(0, block);
      await a.device.flush();
      etcd.pause();
      const paused = Date.now();
      let err: unknown;
      let refusedAt = 0;
      try {
        // Writes go on (each flush asks the store) until one is refused.
        while (Date.now() - paused < 30_000) {
          try {
            await a.device.write(4096, block);
            await a.device.flush();
          } catch (e) {
            err = e;
            refusedAt = Date.now();
            break;
          }
          await new Promise((r) => setTimeout(r, 50));
        }
        expect(err).toBeInstanceOf(VmkitError);
        expect((err as VmkitError).code).toBe('FENCED');
        // Its last renewal was before the pause, so its lease ends at most leaseMs after it; an
        // opener may take over only maxSkewMs after that. The refusal comes first (it came ~10 s
        // after the pause, and later with renewals queued behind each other, before the bound).
        expect(refusedAt - paused).toBeLessThan(leaseMs + maxSkewMs);
        // A lease that ran out unconfirmed ends the holding: whoever waits on `done` hears of it.
        const outcome = await Promise.race([a.done, new Promise((r) => setTimeout(() => r('still holding'), leaseMs))]);
        expect(outcome).toEqual({ reason: 'fenced' });
        expect(a.fenced).toBe(true);
        expect(await code(a.device.write(0, block))).toBe('FENCED');
      } finally {
        etcd.resume();
      }
      // Once etcd answers again the lease has run out: the next opener takes epoch 2 without asking.
      const b = await openOwned(path, { as: 'b', name, store: open(), leaseMs, maxSkewMs, serve: false, image: { format: 'raw' }, waitMs: 20_000 });
      expect(b.epoch).toBe(2);
      await b.release();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe.skipIf(!have)('owner store: a three-member etcd cluster losing a member', () => {
  let cluster: EtcdServer;
  beforeAll(async () => {
    cluster = await startEtcd({ members: 3 });
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  it('moves on to the live members when the first one dies; swaps still have one winner', async () => {
    const mk = (order: number[]): EtcdOwnerStore => {
      const st = etcdStore({ endpoints: order.map((i) => cluster.endpoints[i]!), prefix: '/c/', timeoutMs: 1500 });
      stores.push(st);
      return st;
    };
    const d = 'cluster.qcow2';
    const first = mk([0, 1, 2]);
    const r1 = await first.compareAndSwap(d, null, rec(d, 1));
    expect(r1).not.toBeNull();
    await cluster.members[0]!.kill();
    // Until the survivors agree on a leader, requests may fail, but only with NETWORK or TIMEOUT.
    const t = Date.now();
    let snap: Awaited<ReturnType<EtcdOwnerStore['read']>> | undefined;
    while (!snap && Date.now() - t < 10_000) {
      try {
        snap = await first.read(d);
      } catch (e) {
        expect(e).toBeInstanceOf(VmkitError);
        expect(['NETWORK', 'TIMEOUT']).toContain((e as VmkitError).code);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    expect(snap?.revision).toBe(r1);
    // Clients on different "hosts" (endpoint orders, the dead member first for some) race for epoch 2.
    const clients = [mk([0, 1, 2]), mk([0, 2, 1]), mk([1, 2, 0]), mk([2, 1, 0])];
    const results = await Promise.all(clients.flatMap((c, i) => [0, 1].map((k) => c.compareAndSwap(d, r1, rec(d, 2, `h${i}.${k}`)).catch((e: unknown) => e))));
    for (const r of results) if (r instanceof Error) expect(['NETWORK', 'TIMEOUT']).toContain((r as VmkitError).code);
    const wins = results.filter((r) => typeof r === 'string');
    expect(wins.length).toBeLessThanOrEqual(1);
    const after = await clients[3]!.read(d);
    expect(after.record!.epoch).toBe(2);
    if (wins.length === 1) expect(after.revision).toBe(wins[0]);
    else expect(results.some((r) => r instanceof Error)).toBe(true); // only an unknown outcome may hide the winner
  });
});

