// Status codes returned by core exports. Zero and positive values are results;
// negative values are errors. The TypeScript side maps each one to a VmkitError
// code (bindings/_status.ts); keep the two tables in step.
export const OK: i32 = 0;
/** An argument was out of range (a length, an index, a handle). */
export const E_ARG: i32 = -1;
/** The destination buffer is too small for the result. */
export const E_OUTPUT_TOO_SMALL: i32 = -2;
/** Input data is malformed (a corrupt LZ4 block, a bad descriptor). */
export const E_CORRUPT: i32 = -3;
/** The core could not allocate memory for the request. */
export const E_NO_MEMORY: i32 = -4;
/** A handle does not name a live object. */
export const E_HANDLE: i32 = -5;
/** The core needs data from the host first (a frame that is not loaded). */
export const E_NEED_DATA: i32 = -6;
/** A limit was hit (a loop in a structure, a depth bound). */
export const E_LIMIT: i32 = -7;
/** Data does not match its checksum (a checkpoint record). */
export const E_INTEGRITY: i32 = -8;
