/**
 * vmkit: plumbing under virtual machines. The root entry has loading and
 * errors; capabilities live under `vmkit/memory`, `vmkit/disk` and `vmkit/attest`.
 *
 * @example
 * ```ts
 * import { init, VmkitError } from 'vmkit';
 * await init();
 * ```
 * @module
 */
export { init, initSync, isInitialized, coreInfo, selfCheck, CORE_ABI_VERSION, CORE_MAX_ALLOC } from './core.js';
export type { CoreSource, CoreInfo } from './core.js';
export { VmkitError, ErrorCode, isVmkitError } from './errors.js';
export type { VmkitErrorOptions } from './errors.js';
