// The remote reader's local cache (httpSource's `localCache`): a directory in
// Node, OPFS in Chromium, against the server the test run starts
// (test/_remote-server.ts). A second restore reads from it without a request;
// it stays under its bound; a damaged entry is detected, removed and fetched
// again; a replaced checkpoint (another ETag) never reads the old entries.
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { CheckpointReader, CheckpointWriter, httpSource, memorySink } from '../bindings/memory/index.js';

const PS = 4096;
const TAIL = 64 << 10;
const base = inject('remoteCheckpointServer');
const isNode = typeof process !== 'undefined' && typeof process.versions?.node === 'string';

function image(pages: number, seed: number): Uint8Array {
  const b = new Uint8Array(pages * PS);
  let x = seed;
  for (let p = 0; p < pages; p++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    // Half the pages random (incompressible), the rest a pattern or zeros.
    if (x >>> 31) for (let i = 0; i < PS; i++) b[p * PS + i] = (x = (Math.imul(x, 1664525) + 1013904223) >>> 0) >>> 24;
    else if (p % 3) b.fill(p & 0xff, p * PS, p * PS + 64);
  }
  return b;
}

async function checkpoint(mem: Uint8Array): Promise<Uint8Array> {
  const sink = memorySink();
  const w = await CheckpointWriter.create(sink, { guestSize: mem.length, blockSize: 256 << 10 });
  await w.writePages(0, mem);
  await w.finish();
  return sink.bytes();
}

async function put(path: string, body: Uint8Array): Promise<string> {
  const res = await fetch(`${base}${path}`, { method: 'PUT', body: body as Uint8Array<ArrayBuffer> });
  expect(res.status).toBe(201);
  return `${base}${path}`;
}

const rand = (): string => Math.random().toString(36).slice(2);

const made: string[] = [];

/** A fresh cache directory: under the temporary directory in Node, an OPFS path in Chromium. */
async function newDir(): Promise<string> {
  if (!isNode) return `vmkit-spec/${rand()}`;
  const [o, p] = ['node:os', 'node:path'];
  const os = (await import(/* @vite-ignore */ o)) as typeof import('node:os');
  const path = (await import(/* @vite-ignore */ p)) as typeof import('node:path');
  const d = path.join(os.tmpdir(), `vmkit-spec-cache-${rand()}`);
  made.push(d);
  return d;
}

afterAll(async () => {
  if (!isNode) {
    const root = (await navigator.storage.getDirectory()) as unknown as { removeEntry(n: string, o: { recursive: boolean }): Promise<void> };
    await root.removeEntry('vmkit-spec', { recursive: true }).catch(() => {});
    return;
  }
  const fs = (await import(/* @vite-ignore */ ['node:fs/promises'][0]!)) as typeof import('node:fs/promises');
  for (const d of made) await fs.rm(d, { recursive: true, force: true });
});

interface Listed {
  sub: string;
  name: string;
  size: number;
}

type Dir = {
  getDirectoryHandle(n: string, o?: { create?: boolean }): Promise<Dir>;
  getFileHandle(n: string): Promise<{ getFile(): Promise<File>; createWritable(): Promise<{ write(b: Uint8Array): Promise<void>; close(): Promise<void> }> }>;
  entries(): AsyncIterable<[string, { kind: string }]>;
};

async function opfsDir(dir: string): Promise<Dir> {
  let d = (await navigator.storage.getDirectory()) as unknown as Dir;
  for (const part of dir.split('/')) d = await d.getDirectoryHandle(part, { create: true });
  return d;
}

/** The cache's entries as the filesystem (or OPFS) shows them, read without vmkit. */
async function list(dir: string): Promise<Listed[]> {
  const out: Listed[] = [];
  if (isNode) {
    const fs = (await import(/* @vite-ignore */ ['node:fs/promises'][0]!)) as typeof import('node:fs/promises');
    for (const sub of await fs.readdir(dir)) {
      for (const name of await fs.readdir(`${dir}/${sub}`)) out.push({ sub, name, size: (await fs.stat(`${dir}/${sub}/${name}`)).size });
    }
    return out;
  }
  const d = await opfsDir(dir);
  for await (const [sub, h] of d.entries()) {
    if (h.kind !== 'directory') continue;
    for await (const [name] of (h as unknown as Dir).entries()) out.push({ sub, name, size: (await (await (h as unknown as Dir).getFileHandle(name)).getFile()).size });
  }
  return out;
}

/** Flips one byte of an entry's stored bytes, as a disk error or another program would. */
async function damage(dir: string, e: Listed, at: number): Promise<void> {
  if (isNode) {
    const fs = (await import(/* @vite-ignore */ ['node:fs/promises'][0]!)) as typeof import('node:fs/promises');
    const p = `${dir}/${e.sub}/${e.name}`;
    const b = await fs.readFile(p);
    b[at]! ^= 0x40;
    await fs.writeFile(p, b);
    return;
  }
  const fh = await (await (await opfsDir(dir)).getDirectoryHandle(e.sub)).getFileHandle(e.name);
  const b = new Uint8Array(await (await fh.getFile()).arrayBuffer());
  b[at]! ^= 0x40;
  const w = await fh.createWritable();
  await w.write(b);
  await w.close();
}

const mem = image(1024, 11); // 4 MiB, about half of it incompressible
let file: Uint8Array;
beforeAll(async () => {
  file = await checkpoint(mem);
});

describe('remote checkpoints: the local cache (a directory in Node, OPFS in Chromium)', () => {
  it('a second restore of the same checkpoint reads every span locally, without a request', async () => {
    const url = await put(`/c-${rand()}.ckpt`, file);
    const dir = await newDir();
    const localCache = { dir, maxBytes: 64 << 20 };
    const src1 = await httpSource(url, { suffixBytes: TAIL, localCache });
    const r1 = await CheckpointReader.open(src1);
    const out = new Uint8Array(mem.length);
    await r1.restoreTo(out);
    expect(out).toEqual(mem);
    expect(src1.stats.localHits).toBe(0);
    const fetched = src1.stats.requests - 2;
    expect(fetched).toBeGreaterThan(0);
    await r1.close();
    const entries = await list(dir);
    expect(entries.length).toBe(fetched);

    const src2 = await httpSource(url, { suffixBytes: TAIL, localCache });
    expect(src2.stats.requests).toBe(2); // the open still asks the server: its ETag validates the entries
    const r2 = await CheckpointReader.open(src2);
    const out2 = new Uint8Array(mem.length);
    await r2.restoreTo(out2);
    expect(out2).toEqual(mem);
    expect(src2.stats.requests).toBe(2);
    expect(src2.stats.localHits).toBe(fetched);
    for (const p of [0, 5, 511, 1023]) expect(await r2.readPage(p)).toEqual(mem.subarray(p * PS, (p + 1) * PS));
    await r2.close();
  });

  it('stays under maxBytes, dropping the least recently used entries', async () => {
    const url = await put(`/b-${rand()}.ckpt`, file);
    const dir = await newDir();
    const maxBytes = 512 << 10;
    expect(file.length).toBeGreaterThan(3 * maxBytes);
    // Lazy reads of 64-page runs across the guest: one span (one entry) each.
    const readAll = async (r: CheckpointReader, backwards = false): Promise<void> => {
      const buf = new Uint8Array(64 * PS);
      for (let i = 0; i < 1024; i += 64) {
        const p = backwards ? 1024 - 64 - i : i;
        await r.readPagesInto(p, 64, buf);
        expect(buf).toEqual(mem.subarray(p * PS, (p + 64) * PS));
      }
    };
    const src = await httpSource(url, { suffixBytes: TAIL, localCache: { dir, maxBytes } });
    const r = await CheckpointReader.open(src);
    await readAll(r);
    await r.close();
    const entries = await list(dir);
    const total = entries.reduce((a, e) => a + e.size, 0);
    expect(total).toBeLessThanOrEqual(maxBytes);
    expect(total).toBeGreaterThan(maxBytes / 4);
    // The last runs stayed, the first were dropped.
    const offsets = entries.map((e) => Number(e.name.split('-')[0]));
    expect(Math.min(...offsets)).toBeGreaterThan(file.length / 2);

    // A second pass, from the end, through the same bound: the kept spans locally, the rest over the network.
    const src2 = await httpSource(url, { suffixBytes: TAIL, localCache: { dir, maxBytes } });
    const r2 = await CheckpointReader.open(src2);
    await readAll(r2, true);
    expect(src2.stats.localHits).toBeGreaterThan(0);
    expect(src2.stats.requests).toBeGreaterThan(2);
    await r2.close();
    expect((await list(dir)).reduce((a, e) => a + e.size, 0)).toBeLessThanOrEqual(maxBytes);
  });

  it('a damaged entry is detected, removed and fetched again; the next open reads the new one', async () => {
    const url = await put(`/d-${rand()}.ckpt`, file);
    const dir = await newDir();
    const localCache = { dir };
    const r1 = await CheckpointReader.open(await httpSource(url, { suffixBytes: TAIL, localCache }));
    const p = 301; // stored (p % 3 !== 0 is never a zero page)
    expect(await r1.readPage(p)).toEqual(mem.subarray(p * PS, (p + 1) * PS));
    await r1.close();
    const [e, ...rest] = await list(dir);
    expect(rest).toEqual([]);
    // A byte of the stored record (past the 64-byte entry header).
    await damage(dir, e!, 64 + 10);

    const src2 = await httpSource(url, { suffixBytes: TAIL, localCache });
    const r2 = await CheckpointReader.open(src2);
    expect(await r2.readPage(p)).toEqual(mem.subarray(p * PS, (p + 1) * PS));
    expect(src2.stats.localCorrupt).toBe(1);
    expect(src2.stats.localHits).toBe(0);
    expect(src2.stats.requests).toBe(3);
    await r2.close();

    const src3 = await httpSource(url, { suffixBytes: TAIL, localCache });
    const r3 = await CheckpointReader.open(src3);
    expect(await r3.readPage(p)).toEqual(mem.subarray(p * PS, (p + 1) * PS));
    expect(src3.stats.localCorrupt).toBe(0);
    expect(src3.stats.localHits).toBe(1);
    expect(src3.stats.requests).toBe(2);
    await r3.close();

    // A damaged entry header (its position) is caught the same way.
    await damage(dir, (await list(dir))[0]!, 9);
    const src4 = await httpSource(url, { suffixBytes: TAIL, localCache });
    const r4 = await CheckpointReader.open(src4);
    expect(await r4.readPage(p)).toEqual(mem.subarray(p * PS, (p + 1) * PS));
    expect(src4.stats.localCorrupt).toBe(1);
    await r4.close();
  });

  it('a checkpoint replaced on the server (another ETag) never reads the old entries', async () => {
    const path = `/r-${rand()}.ckpt`;
    const url = await put(path, file);
    const dir = await newDir();
    const localCache = { dir };
    const r1 = await CheckpointReader.open(await httpSource(url, { suffixBytes: TAIL, localCache }));
    await r1.restoreTo(new Uint8Array(mem.length));
    await r1.close();
    const mem2 = image(1024, 12);
    await put(path, await checkpoint(mem2));
    const src2 = await httpSource(url, { suffixBytes: TAIL, localCache });
    const r2 = await CheckpointReader.open(src2);
    const out = new Uint8Array(mem2.length);
    await r2.restoreTo(out);
    expect(out).toEqual(mem2);
    expect(src2.stats.localHits).toBe(0);
    await r2.close();
  });
});
