/**
 * Fault-time prefetch (docs/prefetch.md): the engine over the core's fault
 * path, the policies compared, the trace simulator and the lazy guest memory.
 * @module
 */
export { PrefetchEngine, coalesce, MAX_MAP, MAX_WINDOW, UNMAPPED } from './engine.js';
export type { Translator, PrefetchStats, PrefetchEngineOptions } from './engine.js';
export { createPolicy, POLICY_NAMES } from './policies.js';
export type { PrefetchPolicy, PolicyName, PolicyOptions } from './policies.js';
export { simulate } from './simulate.js';
export type { SimulationResult, SimulateOptions } from './simulate.js';
export { LazyGuestMemory } from './lazy-memory.js';
export { bufferPages, imagePages } from './page-sources.js';
export type { LazyGuestMemoryOptions, LazyMemoryStats } from './lazy-memory.js';
