// System tools the Node-only specs use. A missing tool fails the spec when
// CI=true; elsewhere the spec is skipped with a loud message saying what to
// install.
import { execFileSync } from 'node:child_process';

const cache = new Map<string, boolean>();

/** True when `cmd` is on PATH. */
export function hasTool(cmd: string): boolean {
  let ok = cache.get(cmd);
  if (ok === undefined) {
    try {
      execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
      ok = true;
    } catch {
      ok = false;
    }
    cache.set(cmd, ok);
  }
  return ok;
}

/**
 * Returns true when the tool is there. When it is missing: throws under CI,
 * otherwise warns loudly and returns false (the caller skips).
 */
export function needTool(cmd: string, debianPackage: string): boolean {
  if (hasTool(cmd)) return true;
  const msg = `missing system tool ${cmd}: apt-get install ${debianPackage}`;
  if (process.env.CI === 'true') throw new Error(msg);
  console.warn(`\n*** SKIPPING: ${msg} ***\n`);
  return false;
}
