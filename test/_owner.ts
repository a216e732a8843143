// Small helpers of the owner-store specs. Browser-safe (no Node APIs): the
// gateway spec runs in Chromium too; Node-only helpers are in _etcd.ts.
import { expect } from 'vitest';
import type { OwnerRecord } from '../bindings/disk/owner/types.js';
import { VmkitError } from '../bindings/errors.js';

/** An `owned` record of disk `d` at `epoch`, leased for 10 s from now. */
export function rec(d: string, epoch: number, id = 'vm-a'): OwnerRecord {
  const now = Date.now();
  return { version: 1, disk: d, epoch, state: 'owned', owner: { id, host: 'h', pid: 1 }, leaseExpiresAt: now + 10_000, updatedAt: now };
}

/** The VmkitError code `p` rejects (or the function `p` throws) with; anything else thrown fails the spec; 'resolved' when none. */
export async function code(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    expect(e).toBeInstanceOf(VmkitError);
    return (e as VmkitError).code;
  }
  return 'resolved';
}
