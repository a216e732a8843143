// Checkpoints over HTTP: nginx (Debian's package, started here on 127.0.0.1 with
// a generated config) serving checkpoints read page by page against the local
// reader and through the CLI; and a Node server in this file for the hostile
// cases (Range ignored, 416, 500s, a slow answer, the file swapped mid-restore).
import { spawn } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { codeOf } from './_codes.js';
import { guestImage } from './_guest-image.js';
import { CheckpointReader, CheckpointWriter, LazyGuestMemory, createPolicy, gpa, httpSource, memorySink, type HttpCheckpointSource } from '../bindings/memory/index.js';
import { VmkitError } from '../bindings/errors.js';
import { needTool } from './_tools.js';
import { startNginx, type Nginx } from './_nginx.js';

/** The open's tail in these specs, smaller than their files: they count the requests after it (the default 2 MiB holds them whole). */
const TAIL = 64 << 10;

const bin = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vmkit-remote-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const PS = 4096;


async function checkpoint(mem: Uint8Array, blockSize = 256 << 10, formatVersion?: number): Promise<Uint8Array> {
  const sink = memorySink();
  const w = await CheckpointWriter.create(sink, { guestSize: mem.length, blockSize, formatVersion });
  await w.writePages(0, mem);
  await w.finish();
  return sink.bytes();
}

function run(args: string[], env: Record<string, string> = {}): Promise<{ status: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [bin, ...args], { env: { ...process.env, ...env } });
    const out: Buffer[] = [];
    let err = '';
    p.stdout.on('data', (d: Buffer) => out.push(d));
    p.stderr.on('data', (d: Buffer) => (err += d));
    p.on("close", (status) => resolve({ status, stdout: Buffer.concat(out), stderr: err }));
  });
}



const mem = guestImage(1024, 7); // 4 MiB
const big = guestImage(4096, 11); // 16 MiB: several restore windows
let file: Uint8Array;
let bigFile: Uint8Array;
let local: CheckpointReader;
beforeAll(async () => {
  file = await checkpoint(mem);
  // Version 2: its 64 KiB index (16 bytes a page, unpacked) is larger than a 64 KiB tail.
  bigFile = await checkpoint(big, 1 << 20, 2);
  local = await CheckpointReader.open(file);
  writeFileSync(join(dir, 'a.ckpt'), file);
  writeFileSync(join(dir, 'big.ckpt'), bigFile);
});

describe.runIf(needTool('nginx', 'nginx-light'))('checkpoints served by nginx', () => {
  let nginx: Nginx | undefined;
  let base: string;
  const log = join(dir, 'access.log');
  const requests = (): number => readFileSync(log, 'utf8').split('\n').filter(Boolean).length;

  beforeAll(async () => {
    nginx = await startNginx(dir, dir, 'types { application/octet-stream ckpt; }');
    base = nginx.base;
  });
  afterAll(() => {
    nginx?.stop();
  });

  it('opens in one round trip and reads every page exactly as the local reader, one request per page', async () => {
    const r = await CheckpointReader.open(`${base}/a.ckpt`, { http: { suffixBytes: TAIL } });
    const src = (r as unknown as { src: HttpCheckpointSource }).src;
    // The header and the tail (footer and index of a 4 MiB guest) in one round trip of two requests.
    expect(src.stats.requests).toBe(2);
    expect(src.etag).toMatch(/^"/);
    expect(r.info()).toEqual({ ...local.info(), fileBytes: file.length });
    const stored = new Set<number>();
    for (let p = 0; p < r.pageCount; p++) {
      const before = src.stats.requests;
      expect(await r.readPage(p)).toEqual(await local.readPage(p));
      const k = local.blockOf(p) >= 0;
      if (k) stored.add(p);
      // A stored page is one request for its record (or none when the previous read covered it); zero pages none.
      expect(src.stats.requests - before).toBeLessThanOrEqual(k ? 1 : 0);
    }
    expect(src.stats.requests).toBeGreaterThan(stored.size / 2);
    // A run of 64 pages is one request per block it spans.
    const before = src.stats.requests;
    const a = new Uint8Array(64 * PS);
    const b = new Uint8Array(64 * PS);
    await r.readPagesInto(200, 64, a);
    local.readPagesIntoSync(200, 64, b);
    expect(a).toEqual(b);
    const blocks = new Set(Array.from({ length: 64 }, (_, i) => local.blockOf(200 + i)).filter((x) => x >= 0));
    expect(src.stats.requests - before).toBe(blocks.size);
    await r.close();
  });

  it('restores a 16 MiB guest in one request per 1024-page window', async () => {
    const r = await CheckpointReader.open(`${base}/big.ckpt`, { http: { suffixBytes: TAIL } });
    const src = (r as unknown as { src: HttpCheckpointSource }).src;
    const out = new Uint8Array(big.length);
    const n0 = requests();
    await r.restoreTo(join(dir, 'big.out'));
    expect(new Uint8Array(readFileSync(join(dir, 'big.out')))).toEqual(big);
    // Four windows of 1024 pages: one prefetch each, the next window's in flight while one is decoded.
    // The 64 KiB index of 4096 pages does not fit the 64 KiB tail of the open: one more request.
    expect(r.info().indexBytes + 64).toBeGreaterThan(65536);
    expect(src.stats.requests).toBe(2 + 1 + 4);
    expect(requests() - n0).toBe(4);
    await r.restoreTo(out);
    expect(out).toEqual(big);
    await r.close();
  });

  it('the default tail holds the index: open and a first page in two requests, in sequence', async () => {
    const r = await CheckpointReader.open(`${base}/big.ckpt`);
    const src = (r as unknown as { src: HttpCheckpointSource }).src;
    // Header and tail (2 MiB: the 64 KiB index and its footer) in flight together; no request for the index.
    expect(r.info().indexBytes).toBeGreaterThan(TAIL);
    expect(src.stats.requests).toBe(2);
    const local16 = await CheckpointReader.open(bigFile);
    const p = [...Array(64).keys()].find((i) => local16.blockOf(i) >= 0)!;
    expect(await r.readPage(p)).toEqual(await local16.readPage(p));
    expect(src.stats.requests).toBe(3);
    await local16.close();
    await r.close();
  });

  it('a remote restore to a file leaves zero runs as holes and restores them as zeros', async () => {
    // 8 MiB: 1 MiB of data, 6 MiB of zeros, 1 MiB of data.
    const g = new Uint8Array(8 << 20);
    randomFillSync(g.subarray(0, 1 << 20));
    randomFillSync(g.subarray(7 << 20));
    writeFileSync(join(dir, 'holes.ckpt'), await checkpoint(g));
    const r = await CheckpointReader.open(`${base}/holes.ckpt`);
    const out = join(dir, 'holes.out');
    await r.restoreTo(out);
    await r.close();
    expect(new Uint8Array(readFileSync(out))).toEqual(g);
    // Written: the 2 MiB of data (and a file system's rounding), not the 6 MiB of zeros.
    expect(statSync(out).blocks * 512).toBeLessThan(4 << 20);
  });

  it('vmkit checkpoint inspect | read-page | restore <url>', async () => {
    const i = await run(['checkpoint', 'inspect', `${base}/a.ckpt`, '--json']);
    expect(i.status, i.stderr).toBe(0);
    expect(JSON.parse(i.stdout.toString())).toMatchObject({ pages: 1024, id: local.header.id, fileBytes: file.length });
    for (const page of [0, 3, 511, 1023]) {
      const rp = await run(['checkpoint', 'read-page', `${base}/a.ckpt`, `0x${(page * PS + 9).toString(16)}`]);
      expect(rp.status, rp.stderr).toBe(0);
      expect(new Uint8Array(rp.stdout)).toEqual(mem.subarray(page * PS, (page + 1) * PS));
    }
    const out = join(dir, 'cli.out');
    const rs = await run(['checkpoint', 'restore', `${base}/big.ckpt`, out]);
    expect(rs.status, rs.stderr).toBe(0);
    expect(new Uint8Array(readFileSync(out))).toEqual(big);
    const nf = await run(['checkpoint', 'inspect', `${base}/nope.ckpt`, '--json']);
    expect(nf.status).not.toBe(0);
    expect(nf.stderr + nf.stdout.toString()).toMatch(/NOT_FOUND/);
    // --cache-dir: the fetched ranges stay on the host, under --cache-max; a second restore reads them.
    const cacheDir = join(dir, 'cli-cache');
    const made: number[] = [];
    for (let i = 0; i < 2; i++) {
      rmSync(out, { force: true });
      const before = requests();
      const rc = await run(['checkpoint', 'restore', `${base}/big.ckpt`, out, '--cache-dir', cacheDir, '--cache-max', '64M']);
      expect(rc.status, rc.stderr).toBe(0);
      expect(new Uint8Array(readFileSync(out))).toEqual(big);
      made.push(requests() - before);
    }
    // The second process asked nginx only for the open's header and tail.
    expect(made[0]).toBeGreaterThan(2);
    expect(made[1]).toBe(2);
    const entries = readdirSync(cacheDir).flatMap((d) => readdirSync(join(cacheDir, d)));
    expect(entries.length).toBeGreaterThan(0);
    const sv = await run(['checkpoint', 'inspect', `${base}/a.ckpt`, '--sigv4'], { AWS_ACCESS_KEY_ID: '', AWS_SECRET_ACCESS_KEY: '' });
    expect(sv.status).not.toBe(0);
    expect(sv.stderr).toMatch(/ARG_RANGE.*AWS_ACCESS_KEY_ID/s);
  });

  it('LazyGuestMemory, replay policy: the working set in one request per 64 KiB it touches or fewer', async () => {
    const r = await CheckpointReader.open(`${base}/big.ckpt`, { http: { suffixBytes: TAIL } });
    const local16 = await CheckpointReader.open(bigFile);
    const src = (r as unknown as { src: HttpCheckpointSource }).src;
    // A working set of 60 clumps of 1..6 pages spread over the 16 MiB guest (first-touch order shuffled).
    const record: number[] = [];
    let x = 12345;
    for (let c = 0; c < 60; c++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      const at = x % 4090;
      for (let i = 0; i <= (x >>> 8) % 6; i++) if (!record.includes(at + i)) record.push(at + i);
    }
    const before = src.stats.requests;
    const m = await LazyGuestMemory.open(r, { policy: createPolicy('replay', { record }) });
    const requests = src.stats.requests - before;
    const touched = record.length * PS;
    expect(requests).toBeGreaterThan(0);
    expect(requests).toBeLessThanOrEqual(Math.ceil(touched / (64 << 10)));
    // Coalesced: fewer requests than the runs the replay read (a request per run before).
    expect(requests).toBeLessThan(m.stats().sourceReads / 4);
    const b = new Uint8Array(PS);
    for (const p of record) {
      await m.read(gpa(BigInt(p * PS)), b);
      expect(b).toEqual(big.subarray(p * PS, (p + 1) * PS));
    }
    expect(src.stats.requests - before).toBe(requests);
    await r.close();
    await local16.close();
  });

  it('LazyGuestMemory, physical policy: a fault and its neighbourhood are one request', async () => {
    const r = await CheckpointReader.open(`${base}/big.ckpt`, { http: { suffixBytes: TAIL } });
    const src = (r as unknown as { src: HttpCheckpointSource }).src;
    const m = await LazyGuestMemory.open(r, { policy: createPolicy('physical', { back: 8, ahead: 8 }) });
    const b = new Uint8Array(PS);
    // Pages 1500..1516 lie in one storage block of 1 MiB (pages saved in order).
    const lb = await CheckpointReader.open(bigFile);
    const blocks = new Set(Array.from({ length: 17 }, (_, i) => lb.blockOf(1500 + i)).filter((v) => v >= 0));
    const before = src.stats.requests;
    await m.read(gpa(1508n * 4096n), b);
    expect(src.stats.requests - before).toBe(1);
    expect(blocks.size).toBeGreaterThanOrEqual(1);
    for (let p = 1500; p <= 1516; p++) {
      await m.read(gpa(BigInt(p * PS)), b);
      expect(b).toEqual(big.subarray(p * PS, (p + 1) * PS));
    }
    expect(src.stats.requests - before).toBe(1);
    await r.close();
    await lb.close();
  });

  it('a diff checkpoint finds its parent relative to its URL', async () => {
    const changed = mem.slice();
    changed.fill(0x5a, 10 * PS, 12 * PS);
    const sink = memorySink();
    const w = await CheckpointWriter.create(sink, { guestSize: mem.length, parent: { path: 'a.ckpt', id: local.header.id } });
    await w.writePages(10, changed.subarray(10 * PS, 12 * PS));
    await w.finish();
    writeFileSync(join(dir, 'd.ckpt'), sink.bytes());
    const r = await CheckpointReader.open(`${base}/d.ckpt`, { http: { suffixBytes: TAIL } });
    expect(r.info().chain).toEqual([r.header.id, local.header.id]);
    const got = new Uint8Array(mem.length);
    await r.restoreTo(got);
    expect(got).toEqual(changed);
    // To a file: the absent pages come from the parent, decoded into the window in core memory.
    const f = join(dir, 'd-restored.bin');
    await r.restoreTo(f, { windowPages: 8 });
    expect(new Uint8Array(readFileSync(f))).toEqual(changed);
    await r.close();
  });
});

/** A Node server over checkpoint bytes whose behaviour each spec sets. */
interface Hostile {
  url: string;
  server: Server;
  hits: number;
  handle: (req: IncomingMessage, res: ServerResponse, body: Uint8Array, etag: string) => boolean | void;
  body: Uint8Array;
  etag: string;
  honourIfMatch: boolean;
}

async function hostile(body: Uint8Array): Promise<Hostile> {
  const h: Hostile = { url: '', server: undefined as unknown as Server, hits: 0, handle: () => {}, body, etag: '"v1"', honourIfMatch: true };
  h.server = createServer((req, res) => {
    h.hits++;
    if (h.handle(req, res, h.body, h.etag)) return;
    const b = h.body;
    if (h.honourIfMatch && req.headers['if-match'] && req.headers['if-match'] !== h.etag) {
      res.writeHead(412).end();
      return;
    }
    const m = /^bytes=(\d*)-(\d*)$/.exec(String(req.headers.range ?? ''));
    if (!m) {
      res.writeHead(200, { 'content-length': b.length, etag: h.etag }).end(b);
      return;
    }
    let a = m[1] === '' ? b.length - Number(m[2]) : Number(m[1]);
    let e = m[1] === '' || m[2] === '' ? b.length - 1 : Math.min(Number(m[2]), b.length - 1);
    if (a < 0) a = 0;
    if (a > e) {
      res.writeHead(416, { 'content-range': `bytes */${b.length}` }).end();
      return;
    }
    res.writeHead(206, { 'content-range': `bytes ${a}-${e}/${b.length}`, 'content-length': e - a + 1, etag: h.etag });
    res.end(b.subarray(a, e + 1));
  });
  await new Promise<void>((r) => h.server.listen(0, '127.0.0.1', r));
  h.url = `http://127.0.0.1:${(h.server.address() as AddressInfo).port}/a.ckpt`;
  return h;
}

describe('hostile servers', () => {
  const servers: Hostile[] = [];
  afterAll(async () => {
    for (const h of servers) {
      h.server.closeAllConnections();
      await new Promise((r) => h.server.close(r));
    }
  });
  const serve = async (b: Uint8Array): Promise<Hostile> => {
    const h = await hostile(b);
    servers.push(h);
    return h;
  };

  it('a well-behaved server: the same pages as the local reader', async () => {
    const h = await serve(file);
    const r = await CheckpointReader.open(h.url, { http: { suffixBytes: TAIL } });
    const got = new Uint8Array(mem.length);
    await r.restoreTo(got);
    expect(got).toEqual(mem);
    await r.close();
  });

  it('a server that ignores Range: streamed and skipped within maxUnrangedBytes, refused past it', async () => {
    const h = await serve(file);
    h.handle = (_req, res, b) => {
      res.writeHead(200, { 'content-length': b.length, etag: h.etag });
      res.end(b);
      return true;
    };
    // The whole 4 MiB file may be streamed: every read works (and reads no more than it keeps).
    const r = await CheckpointReader.open(h.url, { http: { suffixBytes: TAIL, maxUnrangedBytes: 8 << 20 } });
    const src = (r as unknown as { src: HttpCheckpointSource }).src;
    expect(src.ignoresRange).toBe(true);
    for (const p of [0, 5, 700, 1023]) expect(await r.readPage(p)).toEqual(mem.subarray(p * PS, (p + 1) * PS));
    await r.close();
    // The default bound (1 MiB) refuses to stream 4 MiB to reach the footer.
    const e = await CheckpointReader.open(h.url, { http: { suffixBytes: TAIL } }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(VmkitError);
    expect((e as VmkitError).code).toBe('UNSUPPORTED');
    expect((e as VmkitError).message).toMatch(/ignores Range/);
  });

  it('500s are retried with backoff; a server that keeps failing is NETWORK', async () => {
    const h = await serve(file);
    let fail = 0;
    h.handle = (_req, res) => {
      if (fail > 0) {
        fail--;
        res.writeHead(503).end();
        return true;
      }
    };
    const r = await CheckpointReader.open(h.url, { http: { suffixBytes: TAIL, retryDelayMs: 1 } });
    const src = (r as unknown as { src: HttpCheckpointSource }).src;
    fail = 2;
    const p = local.info().storedPages > 0 ? [...Array(1024).keys()].find((q) => local.blockOf(q) >= 0)! : 0;
    expect(await r.readPage(p)).toEqual(mem.subarray(p * PS, (p + 1) * PS));
    expect(src.stats.retries).toBe(2);
    fail = 1e9;
    expect(await codeOf(r.readPage(p + 1 + [...Array(100).keys()].find((q) => local.blockOf(p + 1 + q) >= 0)!))).toBe('NETWORK');
    expect(src.stats.retries).toBe(2 + 4);
    await r.close();
  });

  it('416 after open (the file shrank) is INTEGRITY; a server that hangs is TIMEOUT; an abort is CANCELLED', async () => {
    const h = await serve(file);
    const r = await CheckpointReader.open(h.url, { http: { suffixBytes: TAIL, retries: 1, retryDelayMs: 1, timeoutMs: 300 } });
    const stored = [...Array(1024).keys()].filter((q) => local.blockOf(q) >= 0);
    h.handle = (_req, res) => {
      res.writeHead(416, { 'content-range': `bytes */100` }).end();
      return true;
    };
    expect(await codeOf(r.readPage(stored[3]!))).toBe('INTEGRITY');
    h.handle = () => true; // never answers
    expect(await codeOf(r.readPage(stored[4]!))).toBe('TIMEOUT');
    await r.close();
    h.handle = () => {};
    const ac = new AbortController();
    const r2 = await CheckpointReader.open(h.url, { http: { suffixBytes: TAIL, signal: ac.signal } });
    h.handle = () => true;
    const pending = r2.readPage(stored[5]!);
    setTimeout(() => ac.abort(), 50);
    expect(await codeOf(pending)).toBe('CANCELLED');
    await r2.close();
  });

  it('a file swapped mid-restore is INTEGRITY (If-Match honoured: 412; ignored: the new ETag)', async () => {
    for (const honour of [true, false]) {
      const h = await serve(bigFile);
      h.honourIfMatch = honour;
      // A 1 MiB cache keeps the windows ahead to 512 KiB, so windows are fetched after the swap whatever the
      // transport's speed (with the default 16 MiB, all of this 4.5 MiB file's windows could be in before it).
      const r = await CheckpointReader.open(h.url, { http: { suffixBytes: TAIL, cacheBytes: 1 << 20 } });
      const other = await checkpoint(guestImage(4096, 99), 1 << 20);
      let windows = 0;
      const e = await r
        .restoreTo(new Uint8Array(big.length), {
          onProgress: () => {
            if (++windows === 1) {
              h.body = other;
              h.etag = '"v2"';
            }
          },
        })
        .catch((x: unknown) => x);
      expect(e).toBeInstanceOf(VmkitError);
      expect((e as VmkitError).code).toBe('INTEGRITY');
      expect((e as VmkitError).message, (e as Error).message).toMatch(honour ? /412/ : /ETag "v1" became "v2"/);
      await r.close();
    }
  });

  it('a response longer or shorter than its range is never kept', async () => {
    const h = await serve(file);
    const r = await httpSource(h.url, { suffixBytes: TAIL, retries: 1, retryDelayMs: 1 });
    h.handle = (req, res, b) => {
      const m = /^bytes=(\d+)-(\d+)$/.exec(String(req.headers.range))!;
      const a = Number(m[1]);
      res.writeHead(206, { 'content-range': `bytes ${a}-${m[2]}/${b.length}`, etag: h.etag });
      res.end(b.subarray(a, Number(m[2]) + 100)); // 99 bytes too many
      return true;
    };
    expect(await codeOf(r.read(8192, new Uint8Array(1000)))).toBe('NETWORK');
    h.handle = (req, res, b) => {
      const m = /^bytes=(\d+)-(\d+)$/.exec(String(req.headers.range))!;
      res.writeHead(206, { 'content-range': `bytes ${m[1]}-${m[2]}/${b.length}`, etag: h.etag });
      res.end(b.subarray(Number(m[1]), Number(m[1]) + 10)); // short
      return true;
    };
    expect(await codeOf(r.read(20000, new Uint8Array(1000)))).toBe('NETWORK');
    await r.close();
  });
});
