/**
 * vmkit/memory.
 * @module
 */
export { init, initSync } from '../core.js';
export { VmkitError } from '../errors.js';
export { gva, gpa, PAGE_SIZE } from './types.js';
export type { Gva, Gpa, GuestMemorySource, PageSource } from './types.js';
