// The remote checkpoint reader in Node and in Chromium against a server the
// test run starts (test/_remote-server.ts, vitest globalSetup): exact pages
// against the local reader, a lazy memory's coalesced requests, a server that
// ignores Range, and a checkpoint replaced mid-restore (INTEGRITY).
import { beforeAll, describe, expect, inject, it } from 'vitest';
import { guestImage } from './_guest-image.js';
import { CheckpointReader, CheckpointWriter, LazyGuestMemory, createPolicy, gpa, httpSource, memorySink, VmkitError } from '../bindings/memory/index.js';

/** The open's tail in these specs, smaller than their files: they count the requests after it (the default 2 MiB holds them whole). */
const TAIL = 64 << 10;

const PS = 4096;
const base = inject('remoteCheckpointServer');


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

const mem = guestImage(2048, 3); // 8 MiB
let file: Uint8Array;
let url: string;
beforeAll(async () => {
  file = await checkpoint(mem);
  url = await put(`/a-${Math.random().toString(36).slice(2)}.ckpt`, file);
});

describe('remote checkpoints (fetch with Range, Node and Chromium)', () => {
  it('pages and runs read exactly as the local reader; a restore in one request per window', async () => {
    const local = await CheckpointReader.open(file);
    const src = await httpSource(url, { suffixBytes: TAIL });
    expect(src.stats.requests).toBe(2);
    const r = await CheckpointReader.open(src);
    expect(r.info().id).toBe(local.info().id);
    for (const p of [0, 1, 2, 100, 1000, 2047]) expect(await r.readPage(p)).toEqual(await local.readPage(p));
    const a = new Uint8Array(64 * PS);
    await r.readPagesInto(512, 64, a);
    expect(a).toEqual(mem.subarray(512 * PS, 576 * PS));
    const before = src.stats.requests;
    const out = new Uint8Array(mem.length);
    await r.restoreTo(out);
    expect(out).toEqual(mem);
    expect(src.stats.requests - before).toBeLessThanOrEqual(2);
    await r.close();
    await local.close();
  });

  it('a lazy memory fetches a replayed working set in coalesced requests', async () => {
    const r = await CheckpointReader.open(url, { http: { suffixBytes: TAIL } });
    const record: number[] = [];
    for (let c = 0; c < 30; c++) for (let i = 0; i < 4; i++) record.push(c * 67 + i);
    const src = (r as unknown as { src: { stats: { requests: number } } }).src;
    const before = src.stats.requests;
    const m = await LazyGuestMemory.open(r, { policy: createPolicy('replay', { record }) });
    const requests = src.stats.requests - before;
    expect(requests).toBeGreaterThan(0);
    expect(requests).toBeLessThanOrEqual(Math.ceil((record.length * PS) / (64 << 10)));
    const b = new Uint8Array(PS);
    for (const p of record) {
      await m.read(gpa(BigInt(p * PS)), b);
      expect(b).toEqual(mem.subarray(p * PS, (p + 1) * PS));
    }
    expect(src.stats.requests - before).toBe(requests);
    await r.close();
  });

  it('a server that ignores Range is refused past maxUnrangedBytes, read within it', async () => {
    const e = await CheckpointReader.open(`${url}?mode=ignore-range`, { http: { suffixBytes: TAIL } }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(VmkitError);
    expect((e as VmkitError).code).toBe('UNSUPPORTED');
    const r = await CheckpointReader.open(`${url}?mode=ignore-range`, { http: { suffixBytes: TAIL, maxUnrangedBytes: 16 << 20 } });
    expect(await r.readPage(5)).toEqual(mem.subarray(5 * PS, 6 * PS));
    await r.close();
  });

  it('a checkpoint replaced on the server mid-restore is INTEGRITY', async () => {
    const path = `/swap-${Math.random().toString(36).slice(2)}.ckpt`;
    const u = await put(path, file);
    // A 1 MiB cache keeps a restore's windows ahead to 512 KiB: the windows after the swap are fetched after it.
    const r = await CheckpointReader.open(u, { http: { suffixBytes: TAIL, cacheBytes: 1 << 20 } });
    const other = await checkpoint(guestImage(2048, 4));
    let n = 0;
    let replaced: Promise<string> | undefined;
    const e = await r
      .restoreTo(new Uint8Array(mem.length), {
        windowPages: 256,
        onProgress: () => {
          if (++n === 1) replaced = put(path, other);
        },
      })
      .catch((x: unknown) => x);
    await replaced;
    expect(e).toBeInstanceOf(VmkitError);
    expect((e as VmkitError).code).toBe('INTEGRITY');
    await r.close();
  });
});
