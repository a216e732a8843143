/**
 * The one error class vmkit throws, with a stable `code` callers can match on.
 * @module
 */

/**
 * Every code a {@link VmkitError} can carry. Codes are stable: new ones may be
 * added, existing ones never change meaning.
 *
 * @example
 * ```ts
 * import { ErrorCode, isVmkitError } from 'vmkit';
 * if (isVmkitError(e, ErrorCode.NOT_FOUND)) createIt();
 * ```
 */
export const ErrorCode = {
  /** An argument has the wrong type (the message names it). */
  ARG_TYPE: 'ARG_TYPE',
  /** An argument has a value out of range (the message names it). */
  ARG_RANGE: 'ARG_RANGE',
  /** A destination buffer is too small for the result. */
  OUTPUT_TOO_SMALL: 'OUTPUT_TOO_SMALL',
  /** The core was used before `init()` / `initSync()`. */
  NOT_INITIALIZED: 'NOT_INITIALIZED',
  /** The `.wasm` could not be loaded or instantiated, or is the wrong ABI. */
  CORE_LOAD: 'CORE_LOAD',
  /** The core trapped (a bug in vmkit); the instance was discarded. */
  CORE_TRAP: 'CORE_TRAP',
  /** The core ran out of memory. */
  CORE_NO_MEMORY: 'CORE_NO_MEMORY',
  /** A handle was used after the core was reset by a trap, or after close. */
  STALE_HANDLE: 'STALE_HANDLE',
  /** Input data is malformed (a format, a compressed block, a log line). */
  CORRUPT: 'CORRUPT',
  /** A structure breaks a safety bound (a loop, an absurd size or depth). */
  LIMIT: 'LIMIT',
  /** A format feature vmkit does not implement. */
  UNSUPPORTED: 'UNSUPPORTED',
  /** A file, disk or resource was not found. */
  NOT_FOUND: 'NOT_FOUND',
  /** An I/O operation failed (`cause` holds the system error). */
  IO: 'IO',
  /** The operation is not allowed in this state (read-only layer, closed handle). */
  INVALID_STATE: 'INVALID_STATE',
  /** An integrity check failed (checksum, digest, signature). */
  INTEGRITY: 'INTEGRITY',
  /** A fenced (stale) owner tried to act on a disk. */
  FENCED: 'FENCED',
  /** Another party holds what was asked for, or a compare-and-swap lost. */
  CONFLICT: 'CONFLICT',
  /** A peer refused a request (the message carries its reason). */
  REFUSED: 'REFUSED',
  /** A network or protocol failure talking to a peer. */
  NETWORK: 'NETWORK',
  /** An operation did not finish in time. */
  TIMEOUT: 'TIMEOUT',
  /** An operation was cancelled by its caller. */
  CANCELLED: 'CANCELLED',
  /** A system tool vmkit needed is missing. */
  MISSING_TOOL: 'MISSING_TOOL',
} as const;

/** The union of every stable error code. */
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/**
 * Extra context carried by a {@link VmkitError}.
 *
 * @example
 * ```ts
 * throw new VmkitError('CORRUPT', 'bad L1 entry', { offset: 0x30000, path: 'vm.qcow2' });
 * ```
 */
export interface VmkitErrorOptions {
  /** The underlying error. */
  cause?: unknown;
  /** Byte offset, address or index the error concerns, when there is one. */
  offset?: number | bigint;
  /** Path or name of the resource (file, disk, URL). */
  path?: string;
}

// Marks every VmkitError, whichever copy of this module made it: `vmkit disk` runs from a bundle
// with its own copy (bindings/bin/vmkit.cts) and still imports some modules (the etcd owner
// store) as ES modules, and an application may hold two copies of the package.
const BRAND: unique symbol = Symbol.for('vmkit.VmkitError') as never;

/**
 * The error vmkit throws: match on `code`, read the message for context.
 *
 * @example
 * ```ts
 * import { VmkitError } from 'vmkit';
 * try { doSomething(); } catch (e) {
 *   if (e instanceof VmkitError && e.code === 'CORRUPT') console.error('bad input at', e.offset);
 * }
 * ```
 */
export class VmkitError extends Error {
  /** Stable machine-readable code. */
  readonly code: ErrorCode;
  /** Byte offset or address the error concerns, when known. */
  readonly offset: number | bigint | undefined;
  /** Resource the error concerns, when known. */
  readonly path: string | undefined;

  constructor(code: ErrorCode, message: string, options: VmkitErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'VmkitError';
    this.code = code;
    this.offset = options.offset;
    this.path = options.path;
    Object.defineProperty(this, BRAND, { value: true });
  }

  /**
   * `e instanceof VmkitError` for an error made by any copy of this module (`instanceof` a
   * subclass stays the ordinary prototype check).
   *
   * @example
   * ```ts
   * if (e instanceof VmkitError) console.error(e.code);
   * ```
   */
  static override [Symbol.hasInstance](x: unknown): boolean {
    if (this !== VmkitError) return Function.prototype[Symbol.hasInstance].call(this, x);
    return typeof x === 'object' && x !== null && (x as { [BRAND]?: unknown })[BRAND] === true;
  }

  /**
   * A plain object for `--json` output and logs.
   *
   * @example
   * ```ts
   * console.log(JSON.stringify({ error: e.toJSON() })); // {"error":{"name":"VmkitError","code":"IO",…}}
   * ```
   */
  toJSON(): { name: string; code: ErrorCode; message: string; offset?: string; path?: string } {
    const o: { name: string; code: ErrorCode; message: string; offset?: string; path?: string } = {
      name: this.name,
      code: this.code,
      message: this.message,
    };
    if (this.offset !== undefined) o.offset = String(this.offset);
    if (this.path !== undefined) o.path = this.path;
    return o;
  }
}

/**
 * True when `e` is a {@link VmkitError}, optionally with the given code.
 *
 * @example
 * ```ts
 * if (isVmkitError(e, 'INTEGRITY')) rejectFile();
 * ```
 */
export function isVmkitError(e: unknown, code?: ErrorCode): e is VmkitError {
  return e instanceof VmkitError && (code === undefined || e.code === code);
}
