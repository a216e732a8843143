// A temporary directory for a spec file (Node only): made before its first spec, removed with
// everything in it after its last. Registers the file-level hooks where it is called.
import { afterAll, beforeAll } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Paths in a fresh directory under the system's temp dir (`prefix` names it): `p('a.qcow2')`. */
export function tempPaths(prefix: string): (name: string) => string {
  let dir = '';
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), prefix));
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });
  return (name) => {
    if (!dir) throw new Error(`tempPaths(${prefix}): used before the specs ran`);
    return join(dir, name);
  };
}
