// Hashing a machine's files for `attest request --installed`: the worker-thread
// pool (from dist, where the worker script exists) and the in-thread fallback
// give sha256sum's digests for files of every size; the digest cache skips a
// file only while its identity (dev, ino, size, mtime, ctime) is unchanged, and
// never caches a file changed within the last two seconds.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { needTool } from './_tools.js';
import * as src from '../bindings/attest/_hash-pool.js';
import { collectInstalled } from '../bindings/attest/installed.js';

type Pool = typeof src;
const dist = async (): Promise<Pool> => (await import(/* @vite-ignore */ new URL('../dist/attest/_hash-pool.js', import.meta.url).href)) as Pool;
const hasSha = needTool('sha256sum', 'coreutils');
let dir = '';
const sizes = [0, 1, 4095, 65536, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 17];

async function fill(path: string, size: number): Promise<void> {
  await writeFile(path, randomBytes(size));
}

const sha = (p: string): string => shaAll([p])[0]!;
// One sha256sum for many files (a process per file made the spec slow).
const shaAll = (ps: string[]): string[] => execFileSync('sha256sum', ['--', ...ps], { encoding: 'utf8' }).trim().split('\n').map((l) => l.split(' ')[0]!);
const old = async (p: string): Promise<void> => {
  // Any timestamp in the past: the test needs ctime (set by the kernel) to be older than 2 s
  // for the digest to be cached; ctime cannot be set, so wait for it instead (see below).
  await utimes(p, new Date(2020, 0, 1), new Date(2020, 0, 1));
};

describe.skipIf(!hasSha)('hashing files for whole-machine evidence', () => {
  const files: string[] = [];
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmkit-hash-'));
    for (let i = 0; i < 64; i++) {
      const p = join(dir, `f${i}`);
      await fill(p, sizes[i % sizes.length]!);
      await old(p);
      files.push(p);
    }
    await mkdir(join(dir, 'sub'));
    await symlink('f1', join(dir, 'link'));
    // Let every ctime age past the racy window once, for all cache tests.
    await new Promise((r) => setTimeout(r, 2100));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('worker threads and this thread give sha256sum digests; other kinds are named', async () => {
    const items = [...files, join(dir, 'sub'), join(dir, 'link'), join(dir, 'gone')].map((p) => ({ p }));
    const onWorkers = await (await dist())._hashMany(items, { threads: 2, batch: 7 });
    const here = await src._hashMany(items, { threads: 0, batch: 7 });
    expect(here).toEqual(onWorkers);
    expect(onWorkers.slice(0, files.length).map((r) => r.h)).toEqual(shaAll(files));
    expect(onWorkers.slice(files.length).map((r) => r.k)).toEqual([1, 1, 0]);
    // Aged files carry an identity to cache.
    expect(onWorkers.slice(0, files.length).every((r) => typeof r.s === 'string')).toBe(true);
  });

  it('the digest cache answers for unchanged files and notices a rewrite that keeps size and mtime', async () => {
    const cacheFile = join(dir, 'cache.json');
    const pool = await dist();
    const first = await pool._hashMany(files.map((p) => ({ p })), { threads: 2 });
    pool._DigestCacheFile.load(cacheFile).save(new Map(files.map((p, i) => [p, [first[i]!.s!, first[i]!.h!]])));
    expect((await stat(cacheFile)).mode & 0o777).toBe(0o600);
    const cache = pool._DigestCacheFile.load(cacheFile);
    expect(cache.entries.size).toBe(files.length);
    // A cache entry with an identity that matches is believed: a planted digest comes back,
    // which shows the file was not read again.
    const planted = 'ab'.repeat(32);
    const [id] = cache.entries.get(files[3]!)!;
    const r1 = await pool._hashMany([{ p: files[3]!, c: [id, planted] }], { threads: 0 });
    expect(r1[0]!.h).toBe(planted);
    // Same size, mtime put back: ctime moved, so the file is read again.
    const before = await stat(files[3]!);
    const bytes = new Uint8Array(await readFile(files[3]!));
    bytes[0]! ^= 0xff;
    await writeFile(files[3]!, bytes);
    await utimes(files[3]!, before.atime, before.mtime);
    const r2 = await pool._hashMany([{ p: files[3]!, c: [id, planted] }], { threads: 0 });
    expect(r2[0]!.h).toBe(sha(files[3]!));
    expect(r2[0]!.h).not.toBe(planted);
    // Written just now: its digest is right but not offered for caching (racily clean).
    expect(r2[0]!.s).toBeUndefined();
  });

  it('a missing or garbled cache file is an empty cache', async () => {
    expect(src._DigestCacheFile.load(join(dir, 'none.json')).entries.size).toBe(0);
    await writeFile(join(dir, 'bad.json'), '{"version":1,"entries":{"/x":["id","not-hex"]}');
    expect(src._DigestCacheFile.load(join(dir, 'bad.json')).entries.size).toBe(0);
    const good = 'cd'.repeat(32);
    await writeFile(join(dir, 'bad2.txt'), `vmkit-digest-cache 1\n${'zz'.repeat(32)} 1:2:3:4:5 /x\n${good} 1:2:3:4:5 /y y\n${good}  /z\n${good.slice(2)} 1:2 /w\ntruncated`);
    const c = src._DigestCacheFile.load(join(dir, 'bad2.txt'));
    expect([...c.entries]).toEqual([['/y y', ['1:2:3:4:5', good]]]);
    // What it writes it reads back, paths with spaces included; a path with a newline is left out.
    c.save(new Map([['/a b', ['1:2', good]], ['/n\nl', ['3:4', good]]]));
    expect([...src._DigestCacheFile.load(join(dir, 'bad2.txt')).entries]).toEqual([['/a b', ['1:2', good]]]);
  });

  it('collectInstalled writes the cache and answers the same from it', async () => {
    const root = join(dir, 'root');
    await mkdir(join(root, 'var/lib/dpkg/info'), { recursive: true });
    await mkdir(join(root, 'usr/bin'), { recursive: true });
    await writeFile(join(root, 'var/lib/dpkg/status'), 'Package: demo\nStatus: install ok installed\nVersion: 1.0\nArchitecture: amd64\n\n');
    const listed = ['/usr', '/usr/bin', ...Array.from({ length: 80 }, (_, i) => `/usr/bin/t${i}`)];
    await writeFile(join(root, 'var/lib/dpkg/info/demo.list'), listed.join('\n') + '\n');
    for (let i = 0; i < 80; i++) {
      await fill(join(root, `usr/bin/t${i}`), sizes[i % sizes.length]!);
      await old(join(root, `usr/bin/t${i}`));
    }
    await new Promise((r) => setTimeout(r, 2100));
    const cacheFile = join(dir, 'machine-cache.json');
    const a = await collectInstalled({ root, digestCache: cacheFile, threads: 0 });
    expect(src._DigestCacheFile.load(cacheFile).entries.size).toBe(80);
    const b = await collectInstalled({ root, digestCache: cacheFile, threads: 0 });
    expect(b).toEqual(a);
    expect(a.packages[0]!.files).toHaveLength(80);
    expect(a.packages[0]!.files.map((f) => f.sha256)).toEqual(shaAll(a.packages[0]!.files.map((f) => join(root, f.path))));
  });
});
