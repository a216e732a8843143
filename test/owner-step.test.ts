// The opener's decision (bindings/disk/owner/_step.ts) as a table: owner records and wall times
// → what openOwned does next, with the edges of a lease's end ± the tolerated skew. Pure, so it
// runs the same in Node and Chromium; the handoff that carries the steps out is covered by
// owner.test.ts and the model check (owner-model.node.test.ts).
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { nextStep, pollMs, type OpenStep } from '../bindings/disk/owner/_step.js';
import type { OwnerRecord, OwnerState } from '../bindings/disk/owner/types.js';

const EXP = 2_000_000_010_000; // the record's leaseExpiresAt
const SKEW = 1000;
const ENDPOINT = 'http://127.0.0.1:7070/release';

function rec(state: OwnerState, endpoint: string | undefined, more: Partial<OwnerRecord> = {}): OwnerRecord {
  const owner = state === 'free' && endpoint === undefined ? undefined : { id: 'a', host: 'h', pid: 1, ...(endpoint === undefined ? {} : { endpoint }) };
  return { version: 2, disk: 'd.raw', epoch: 7, state, ...(owner ? { owner } : {}), leaseExpiresAt: EXP, updatedAt: EXP - 10_000, ...more };
}

describe('nextStep', () => {
  it('decides every case of the table', () => {
    const rows: [string, OwnerRecord | null, number, number, OpenStep][] = [
      ['no record', null, EXP, SKEW, 'take'],
      ['free', rec('free', undefined, { leaseExpiresAt: 0 }), EXP, SKEW, 'take'],
      ['free, endpoint of the last owner kept, lease not over', rec('free', ENDPOINT), EXP - 5000, SKEW, 'take'],
      // A live owner that serves an endpoint is asked, up to and including expiry + skew.
      ['owned, long before expiry', rec('owned', ENDPOINT), EXP - 10_000, SKEW, 'ask'],
      ['owned, 1 ms before expiry', rec('owned', ENDPOINT), EXP - 1, SKEW, 'ask'],
      ['owned, at expiry', rec('owned', ENDPOINT), EXP, SKEW, 'ask'],
      ['owned, inside the skew', rec('owned', ENDPOINT), EXP + SKEW - 1, SKEW, 'ask'],
      ['owned, at expiry + skew', rec('owned', ENDPOINT), EXP + SKEW, SKEW, 'ask'],
      ['owned, 1 ms past expiry + skew', rec('owned', ENDPOINT), EXP + SKEW + 1, SKEW, 'probe-expired'],
      ['owned, long past expiry', rec('owned', ENDPOINT), EXP + 3_600_000, SKEW, 'probe-expired'],
      ['owned, no skew, at expiry', rec('owned', ENDPOINT), EXP, 0, 'ask'],
      ['owned, no skew, 1 ms past', rec('owned', ENDPOINT), EXP + 1, 0, 'probe-expired'],
      ['owned, a clock 10 min behind', rec('owned', ENDPOINT), EXP + 600_000, 600_000, 'ask'],
      // A live owner that cannot be asked is waited for; past expiry + skew it is dead.
      ['owned, no endpoint, at expiry + skew', rec('owned', undefined), EXP + SKEW, SKEW, 'wait'],
      ['owned, no endpoint, 1 ms past', rec('owned', undefined), EXP + SKEW + 1, SKEW, 'take'],
      ['owned, empty endpoint, live', rec('owned', ''), EXP, SKEW, 'wait'],
      ['owned, empty endpoint, dead', rec('owned', ''), EXP + SKEW + 1, SKEW, 'take'],
      ['releasing, live', rec('releasing', ENDPOINT), EXP - 1, SKEW, 'wait'],
      ['releasing, at expiry + skew', rec('releasing', ENDPOINT), EXP + SKEW, SKEW, 'wait'],
      ['releasing, 1 ms past: a drain that stopped is not asked', rec('releasing', ENDPOINT), EXP + SKEW + 1, SKEW, 'take'],
      ['releasing, no endpoint, 1 ms past', rec('releasing', undefined), EXP + SKEW + 1, SKEW, 'take'],
      // The epoch cannot grow past 2^53 - 1, whatever the state.
      ['epoch at the limit, free', rec('free', undefined, { epoch: Number.MAX_SAFE_INTEGER }), EXP, SKEW, 'exhausted'],
      ['epoch at the limit, owned', rec('owned', ENDPOINT, { epoch: Number.MAX_SAFE_INTEGER }), EXP, SKEW, 'exhausted'],
      ['epoch at the limit, dead', rec('owned', undefined, { epoch: Number.MAX_SAFE_INTEGER }), EXP + 3_600_000, SKEW, 'exhausted'],
      ['epoch one below the limit', rec('owned', ENDPOINT, { epoch: Number.MAX_SAFE_INTEGER - 1 }), EXP, SKEW, 'ask'],
    ];
    for (const [what, r, now, skew, step] of rows) expect([what, nextStep(r, now, skew)]).toEqual([what, step]);
  });

  it('switches from a live owner to a dead one exactly 1 ms after expiry + skew, and never back', () => {
    fc.assert(
      fc.property(
        fc.constantFrom<OwnerState>('owned', 'releasing'),
        fc.option(fc.constantFrom(ENDPOINT, ''), { nil: undefined }),
        fc.integer({ min: 0, max: 600_000 }),
        fc.integer({ min: -2_000_000, max: 2_000_000 }),
        (state, endpoint, skew, dt) => {
          const r = rec(state, endpoint);
          const now = EXP + skew + dt;
          const step = nextStep(r, now, skew);
          const askable = state === 'owned' && !!endpoint;
          if (dt <= 0) expect(step).toBe(askable ? 'ask' : 'wait');
          else expect(step).toBe(askable ? 'probe-expired' : 'take');
        },
      ),
    );
  });
});

describe('pollMs', () => {
  it('polls a draining owner more often and never sleeps past expiry + skew', () => {
    const rows: [string, OwnerRecord, number, number][] = [
      ['owned, far from expiry', rec('owned', undefined), EXP - 5000, 20],
      ['releasing, far from expiry', rec('releasing', ENDPOINT), EXP - 5000, 5],
      ['owned, 3 ms before expiry + skew', rec('owned', undefined), EXP + SKEW - 3, 4],
      ['owned, at expiry + skew', rec('owned', undefined), EXP + SKEW, 1],
      ['releasing, 1 ms before expiry + skew', rec('releasing', ENDPOINT), EXP + SKEW - 1, 2],
    ];
    for (const [what, r, now, ms] of rows) expect([what, pollMs(r, now, SKEW)]).toEqual([what, ms]);
  });
});
