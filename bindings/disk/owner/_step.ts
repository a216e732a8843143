/**
 * The opener's decision, apart from what carries it out: given the owner
 * record just read, the wall clock and the clock skew tolerated, what
 * `openOwned` does next. Pure (no I/O, no clock of its own), so every case —
 * above all the edges of a lease's end ± the skew — is a row of a table
 * (test/owner-step.test.ts). The executor in handoff.ts performs the step;
 * docs/ownership.md has the method.
 * @module
 * @internal
 */
import { leaseAlive } from './record.js';
import type { OwnerRecord } from './types.js';

/**
 * What an opener does with a record:
 * - `take`: nobody holds the disk (no record, `free`, or a lease that ran out
 *   with no endpoint to ask, or while releasing): take the next epoch by CAS.
 * - `ask`: a live owner serves a release endpoint: ask it to let go.
 * - `probe-expired`: the lease looks over by this clock, but the owner named an
 *   endpoint: ask it briefly first (if it answers, a clock is off), then take.
 * - `wait`: a live owner that cannot be asked (releasing, or no endpoint): poll.
 * - `exhausted`: the epoch cannot grow (LIMIT).
 * @internal
 */
export type OpenStep = 'take' | 'ask' | 'probe-expired' | 'wait' | 'exhausted';

/**
 * The next step for `record` read at wall time `now`, tolerating `maxSkewMs`
 * of clock difference. A lease is alive through `leaseExpiresAt + maxSkewMs`
 * inclusive ({@link leaseAlive}).
 *
 * @example
 * ```ts
 * nextStep(null, Date.now(), 1000); // 'take'
 * ```
 * @internal
 */
export function nextStep(record: OwnerRecord | null, now: number, maxSkewMs: number): OpenStep {
  if (record === null) return 'take';
  if (record.epoch >= Number.MAX_SAFE_INTEGER) return 'exhausted';
  if (record.state === 'free') return 'take';
  const askable = record.state === 'owned' && !!record.owner?.endpoint;
  if (leaseAlive(record, now, maxSkewMs)) return askable ? 'ask' : 'wait';
  return askable ? 'probe-expired' : 'take';
}

/**
 * How long a `wait` step sleeps before reading the record again: a few ms
 * while the owner drains (`releasing`), 20 ms otherwise, and never past the
 * lease's end plus the skew (then the record is read again at once and taken).
 * The executor bounds it by what is left of its own deadline and by 1 ms below.
 *
 * @example
 * ```ts
 * await sleep(Math.max(1, Math.min(left, pollMs(record, Date.now(), 1000))));
 * ```
 * @internal
 */
export function pollMs(record: OwnerRecord, now: number, maxSkewMs: number): number {
  return Math.min(record.state === 'releasing' ? 5 : 20, record.leaseExpiresAt + maxSkewMs - now + 1);
}
