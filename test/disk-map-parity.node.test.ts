// `vmkit disk map --json` against `qemu-img map --output=json` on images
// qemu-io wrote at random (data, zeroes that keep their allocation, zeroes
// that unmap, discards) with 512-byte, 4 KiB and 64 KiB clusters, extended L2
// too, alone and over a backing file: the same list, host offsets of zero
// clusters that keep an allocation included, split where qemu-img splits.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { needTool } from './_tools.js';

const bin = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
const hasQemu = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
let dir = '';
const SIZE = 8 << 20;

/** A small deterministic PRNG (mulberry32), so a failure names its seed. */
function rng(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 2 ** 32) * n);
  };
}

function randomWrites(file: string, unit: number, seed: number): void {
  const r = rng(seed);
  const ops = ['write -P 7', 'write -z', 'write -z -u', 'discard', 'write -P 9'];
  const cmds: string[] = [];
  for (let i = 0; i < 24; i++) {
    const off = r(SIZE / unit) * unit;
    const len = Math.min((1 + r(63)) * unit, SIZE - off);
    cmds.push('-c', `${ops[r(ops.length)]} ${off} ${len}`);
  }
  execFileSync('qemu-io', ['-f', 'qcow2', ...cmds, file], { stdio: 'ignore' });
}

function same(file: string): void {
  const q = JSON.parse(execFileSync('qemu-img', ['map', '--output=json', file], { encoding: 'utf8' })) as unknown;
  const v = spawnSync(process.execPath, [bin, 'disk', 'map', '--output=json', file], { encoding: 'utf8', timeout: 60_000 });
  expect(v.status, v.stderr).toBe(0);
  expect(JSON.parse(v.stdout), file).toEqual(q);
}

describe.skipIf(!hasQemu)('vmkit disk map as qemu-img map', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmkit-map-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('a zero cluster that keeps its allocation shows its host offset (issue 18)', () => {
    const f = join(dir, 'zero-alloc.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', f, '1M']);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 192k', '-c', 'write -z 64k 64k', f], { stdio: 'ignore' });
    const q = JSON.parse(execFileSync('qemu-img', ['map', '--output=json', f], { encoding: 'utf8' })) as { zero: boolean; present: boolean; offset?: number }[];
    expect(q.some((e) => e.zero && e.present && e.offset !== undefined)).toBe(true); // the case is there
    same(f);
  });

  for (const [cs, ext] of [[512, false], [4096, false], [65536, false], [65536, true]] as const) {
    it(`random writes, ${cs}-byte clusters${ext ? ', extended L2' : ''}: alone and over a backing file`, () => {
      for (const seed of [1, 2, 3]) {
        const base = join(dir, `b-${cs}-${ext}-${seed}.qcow2`);
        const top = join(dir, `t-${cs}-${ext}-${seed}.qcow2`);
        execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cs},extended_l2=${ext ? 'on' : 'off'}`, base, String(SIZE)]);
        randomWrites(base, ext ? cs / 32 : cs, seed);
        same(base);
        execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cs},extended_l2=${ext ? 'on' : 'off'}`, '-b', base, '-F', 'qcow2', top]);
        randomWrites(top, ext ? cs / 32 : cs, seed + 100);
        same(top);
      }
    }, 120_000);
  }
});
