/**
 * Argument checks at the API boundary. Each names the argument it checks and
 * builds its message only on the throw path (as noble-hashes' `abytes` does).
 * @module
 */
import { VmkitError } from './errors.js';

/** Throws ARG_TYPE unless `v` is a Uint8Array. */
export function abytes(v: unknown, name: string, minLength: number = 0): asserts v is Uint8Array {
  if (!(v instanceof Uint8Array)) {
    throw new VmkitError('ARG_TYPE', `${name} must be a Uint8Array, got ${describe(v)}`);
  }
  if (v.length < minLength) {
    throw new VmkitError('ARG_RANGE', `${name} must be at least ${minLength} bytes, got ${v.length}`);
  }
}

/** Throws unless `v` is a non-negative safe integer within [min, max]. */
export function aint(v: unknown, name: string, min: number = 0, max: number = Number.MAX_SAFE_INTEGER): asserts v is number {
  if (typeof v !== 'number' || !Number.isInteger(v)) {
    throw new VmkitError('ARG_TYPE', `${name} must be an integer, got ${describe(v)}`);
  }
  if (v < min || v > max) {
    throw new VmkitError('ARG_RANGE', `${name} must be in [${min}, ${max}], got ${v}`);
  }
}

/**
 * Throws unless `v` is an integer number in [0, limit): ARG_TYPE for what is
 * not a number (a bigint included), ARG_RANGE for NaN, a fraction or a value
 * outside. Every page or frame number gets this before it crosses into the
 * core, whose u32 parameters would otherwise take it modulo 2^32 (2^32 as page
 * 0, NaN as 0).
 */
export function aindex(v: unknown, name: string, limit: number): asserts v is number {
  if (typeof v !== 'number') throw new VmkitError('ARG_TYPE', `${name} must be a number, got ${describe(v)}`);
  if (!Number.isInteger(v) || v < 0 || v >= limit) {
    throw new VmkitError('ARG_RANGE', `${name} must be an integer in [0, ${limit}), got ${v}`);
  }
}

/**
 * Throws unless `v` is a virtual page number: a bigint (or safe integer) in
 * [0, 2^52), the pages of a 64-bit address space of 4 KiB pages. Returns it
 * as a bigint. Larger ones would wrap when shifted back into an address.
 */
export function avpn(v: unknown, name: string): bigint {
  const n = au64(v, name);
  if (n >= 1n << 52n) throw new VmkitError('ARG_RANGE', `${name} must be a virtual page number in [0, 2^52), got ${n}`);
  return n;
}

/** Throws unless `v` is a bigint within [0, 2^64). Returns it. */
export function au64(v: unknown, name: string): bigint {
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return BigInt(v);
  if (typeof v !== 'bigint') {
    throw new VmkitError('ARG_TYPE', `${name} must be a bigint (or safe integer), got ${describe(v)}`);
  }
  if (v < 0n || v > 0xffff_ffff_ffff_ffffn) {
    throw new VmkitError('ARG_RANGE', `${name} must be in [0, 2^64), got ${v}`);
  }
  return v;
}

/** Throws OUTPUT_TOO_SMALL unless `dst` has room for `needed` bytes (or elements). */
export function aoutput(dst: ArrayLike<unknown>, needed: number, name: string = "dst"): void {
  if (dst.length < needed) {
    throw new VmkitError('OUTPUT_TOO_SMALL', `${name} has room for ${dst.length}, needs ${needed}`);
  }
}

/** Throws ARG_RANGE unless `v` is one of `allowed`. Returns it narrowed. */
export function aoneOf<T extends string>(v: unknown, name: string, allowed: readonly T[]): T {
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) {
    throw new VmkitError('ARG_RANGE', `${name} must be one of ${allowed.join(', ')}, got ${describe(v)}`);
  }
  return v as T;
}

/** Short description of a value for error messages. */
export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v === 'object') return (v as object).constructor?.name ?? 'object';
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v);
  return `${typeof v} ${String(v)}`;
}

/** Formats a 64-bit value as 0x-prefixed hex. */
export function hex(v: number | bigint, digits: number = 0): string {
  return '0x' + v.toString(16).padStart(digits, '0');
}
