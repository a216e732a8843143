// The contract every owner store keeps (memory, file, etcd, and any store to
// come): a missing disk reads as no record, a record is created once, a swap
// wins only against the current revision, and of many racing writers exactly
// one wins each revision. Browser-safe: the memory store and the etcd client
// over a fake JSON gateway run it in Chromium too.
import { describe, expect, it } from 'vitest';
import type { OwnerStore } from '../bindings/disk/owner/types.js';
import { rec } from './_owner.js';

/** What a store's spec hands the contract. */
export interface OwnerStoreHarness {
  /** A client of the store under test; every call may return a new client of the same backing state. */
  client(): OwnerStore;
  /** A disk name (key) that no other test of this run uses. */
  disk(name: string): string;
  /** The shape of the revisions this store hands out. */
  revision: RegExp;
}

/**
 * Registers the owner-store contract for `name`. `make` runs inside each test
 * (after the spec's beforeAll), so a harness may depend on a started server.
 */
export function ownerStoreContract(name: string, make: () => OwnerStoreHarness, opts: { skip?: boolean; rounds?: number } = {}): void {
  const rounds = opts.rounds ?? 10;
  describe.skipIf(opts.skip ?? false)(`owner store contract: ${name}`, () => {
    it('reads a missing disk as no record', async () => {
      const h = make();
      expect(await h.client().read(h.disk('missing'))).toEqual({ record: null, revision: null });
    });

    it('creates once, reads back, swaps only against the current revision; another client sees the same', async () => {
      const h = make();
      const s = h.client();
      const d = h.disk('cas');
      const first = rec(d, 1);
      const r1 = await s.compareAndSwap(d, null, first);
      expect(r1).toMatch(h.revision);
      expect(await s.compareAndSwap(d, null, rec(d, 1, 'vm-b'))).toBeNull(); // exists already
      const snap = await s.read(d);
      expect(snap.revision).toBe(r1);
      expect(snap.record).toEqual(first);
      expect(snap.record).toMatchObject({ version: 1, disk: d, epoch: 1, state: 'owned', owner: { id: 'vm-a', host: 'h', pid: 1 } });
      const next = rec(d, 2, 'vm-b');
      const r2 = await s.compareAndSwap(d, r1, next);
      expect(r2).toMatch(h.revision);
      expect(r2).not.toBe(r1);
      expect(await s.compareAndSwap(d, r1, rec(d, 3, 'vm-c'))).toBeNull(); // stale revision
      const after = await h.client().read(d);
      expect(after).toEqual({ record: next, revision: r2 });
    });

    it(`racing writers on several clients: exactly one wins the create and each of ${rounds} swaps`, async () => {
      const h = make();
      const clients = Array.from({ length: 8 }, () => h.client());
      const d = h.disk('race');
      const created = await Promise.all(clients.flatMap((c, i) => [c.compareAndSwap(d, null, rec(d, 1, `c${i}`)), c.compareAndSwap(d, null, rec(d, 1, `c${i}x`))]));
      expect(created.filter((r) => r !== null)).toHaveLength(1);
      for (let round = 2; round <= rounds + 1; round++) {
        const snap = await clients[round % clients.length]!.read(d);
        expect(snap.record!.epoch).toBe(round - 1);
        const results = await Promise.all(clients.flatMap((c, i) => [0, 1, 2].map((k) => c.compareAndSwap(d, snap.revision, rec(d, round, `c${i}.${k}`)))));
        const winners = results.filter((r) => r !== null);
        expect(winners).toHaveLength(1);
        const now = await clients[0]!.read(d);
        expect(now.revision).toBe(winners[0]);
        expect(now.record!.epoch).toBe(round);
      }
    });
  });
}
