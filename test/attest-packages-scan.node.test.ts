// The core's Packages scanner against the JS parser on real Debian Packages
// files: the whole of bookworm main (the real file bench/attest-index fetches
// into .cache/attest-index-bench/, when present) and the fixture repository's
// (.cache/attest, scripts/attest-fixtures.sh), fed in pipe-sized chunks of
// varying length: every record the same.
import { existsSync, readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { PackagesParser } from '../bindings/attest/sources/deb822.js';
import { _CorePackagesParser } from '../bindings/attest/sources/_packages-scan.js';
import { needTool } from './_tools.js';

const root = new URL('../', import.meta.url);
const BOOKWORM = new URL('.cache/attest-index-bench/Packages.xz', root);
const FIXTURE = new URL('.cache/attest/debian/dists/bookworm/main/binary-amd64/Packages', root);
const dec = new TextDecoder();
const hex = (b: Uint8Array, a: number, n: number): string => Buffer.from(b.buffer, b.byteOffset + a, n).toString('hex');

function both(bytes: Uint8Array): { js: string[]; core: string[] } {
  const js: string[] = [];
  const p = new PackagesParser((r) => js.push(`${r.package}|${r.version}|${r.architecture}|${r.filename}|${r.size}|${dec.decode(r.hex.subarray(r.sha256At, r.sha256At + 64)).toLowerCase()}`));
  p.push(bytes);
  expect(p.end()).toBe(js.length);
  const core: string[] = [];
  const c = new _CorePackagesParser((r) => core.push(`${r.package}|${r.version}|${r.architecture}|${dec.decode(r.text.subarray(r.filenameAt, r.filenameAt + r.filenameLength))}|${r.size}|${hex(r.digest, r.digestAt, 32)}`));
  // Chunks of 1 byte to ~100 KiB, as a pipe and an HTTP body deliver them.
  let seed = 12345;
  for (let o = 0; o < bytes.length; ) {
    seed = (seed * 1103515245 + 12345) >>> 0;
    const n = seed % 7 === 0 ? 1 + (seed % 13) : 4096 + (seed % 100_000);
    c.push(bytes.subarray(o, o + n));
    o += n;
  }
  expect(c.end()).toBe(core.length);
  return { js, core };
}

describe('core Packages scanner on real Packages files', () => {
  it.skipIf(!existsSync(FIXTURE))('the fixture repository\'s Packages: the JS parser\'s records', () => {
    const { js, core } = both(readFileSync(FIXTURE));
    expect(js.length).toBeGreaterThan(0);
    expect(core).toEqual(js);
  });

  it.skipIf(!existsSync(BOOKWORM))('Debian bookworm main (63 000 packages): the JS parser\'s records, every one', () => {
    if (!needTool('xz', 'xz-utils')) return;
    const bytes = execFileSync('xz', ['-dc', BOOKWORM.pathname], { maxBuffer: 1 << 30 });
    const { js, core } = both(bytes);
    expect(js.length).toBeGreaterThan(60_000);
    expect(core.length).toBe(js.length);
    for (let i = 0; i < js.length; i++) if (core[i] !== js[i]) expect(core[i]).toBe(js[i]);
  }, 120_000);
});
