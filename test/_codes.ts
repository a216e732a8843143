// What a promise settles to, as a spec compares it: the VmkitError code it rejects with, or
// 'resolved'. Anything else it throws is rethrown (a bug, not a refusal).
import { VmkitError } from '../bindings/errors.js';

/** The code of the VmkitError `p` rejects with, or 'resolved'. */
export async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (e instanceof VmkitError) return e.code;
    throw e;
  }
  return 'resolved';
}
