/**
 * Maps the core's negative status codes (assembly/_errors.ts) to VmkitErrors.
 * @module
 */
import { VmkitError, type ErrorCode } from './errors.js';

const STATUS: Record<number, ErrorCode> = {
  [-1]: 'ARG_RANGE',
  [-2]: 'OUTPUT_TOO_SMALL',
  [-3]: 'CORRUPT',
  [-4]: 'CORE_NO_MEMORY',
  [-5]: 'STALE_HANDLE',
  [-6]: 'INVALID_STATE',
  [-7]: 'LIMIT',
  [-8]: 'INTEGRITY',
};

/**
 * Returns `status` when it is not negative; otherwise throws the matching
 * VmkitError with `what` (the operation) in its message.
 *
 * @example
 * ```ts
 * const n = check(core.exports.lz4Compress(src, len, dst, cap), 'lz4 compress');
 * ```
 */
export function check(status: number, what: string, offset?: number | bigint): number {
  if (status >= 0) return status;
  const code = STATUS[status] ?? 'CORRUPT';
  throw new VmkitError(code, `${what} failed: core status ${status} (${code})`, offset === undefined ? {} : { offset });
}
