// vmkit core: a pure state machine. Numbers in, numbers out, fixed buffers in
// its own memory that the host fills and drains. No I/O, and no import but
// `env.abort`. See docs/abi.md for the full contract.

export { alloc, free } from "./_memory";
export * from "./paging";
export * from "./prefetch";
export * from "./lz4";
export * from "./staging";
export * from "./sectors";
export * from "./digest_index";
export * from "./backup_plan";
export * from "./packages_scan";

import { pagingSelfCheck } from "./paging";
import { prefetchSelfCheck } from "./prefetch";
import { lz4SelfCheck } from "./lz4";
import { stagingSelfCheck } from "./staging";
import { sectorsSelfCheck } from "./sectors";
import { digestindexSelfCheck } from "./digest_index";
import { backupplanSelfCheck } from "./backup_plan";
import { packagesscanSelfCheck } from "./packages_scan";

/** ABI version: bumped on any incompatible change to an export's contract. */
export const ABI_VERSION: i32 = 1;

/** Returns the ABI version (for hosts that cannot read exported globals). */
export function abiVersion(): i32 {
  return ABI_VERSION;
}

/**
 * Runs every module's internal checks. Returns 0 when all pass, otherwise the
 * 1-based index of the first failing module times 1000 plus that module's code.
 * Needs no host buffers, so any runtime (wasm-interp included) can call it.
 */
export function selfCheck(): i32 {
  let r = pagingSelfCheck();
  if (r != 0) return 1000 + r;
  r = prefetchSelfCheck();
  if (r != 0) return 2000 + r;
  r = lz4SelfCheck();
  if (r != 0) return 3000 + r;
  r = stagingSelfCheck();
  if (r != 0) return 4000 + r;
  r = sectorsSelfCheck();
  if (r != 0) return 5000 + r;
  r = digestindexSelfCheck();
  if (r != 0) return 6000 + r;
  r = backupplanSelfCheck();
  if (r != 0) return 7000 + r;
  r = packagesscanSelfCheck();
  if (r != 0) return 8000 + r;
  return 0;
}

/** Deliberately traps through `abort`; used by tests of the host's trap handling. */
export function debugAbort(code: i32): i32 {
  if (code != 0) abort("debugAbort called", "assembly/index.ts", 0, 0);
  return 0;
}
