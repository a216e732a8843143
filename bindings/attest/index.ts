/**
 * vmkit/attest.
 * @module
 */
export { init, initSync } from '../core.js';
export { VmkitError } from '../errors.js';
