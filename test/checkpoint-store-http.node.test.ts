// The shared page store at a URL: nginx (Debian's, started here with its dav
// module: PUT, DELETE, MKCOL, and JSON autoindex listings) holding a store that
// checkpoints are saved into, restored from and collected, with a save running
// during the collection; the CLI's --store <url>; and a Node server in this
// file for the hostile cases (500s, truncated bodies, no answer, a wrong frame,
// PUT refused, no listings): a VmkitError each, never a hang.
import { spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LazyGuestMemory, PageStore, createPolicy, gpa } from '../bindings/memory/index.js';
import { codeOf } from './_codes.js';
import { needTool } from './_tools.js';
import { startNginx, type Nginx } from './_nginx.js';

const bin = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vmkit-store-http-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const PS = 4096;

/** Guests sharing a "kernel" (pages 0-299), each with its own pages at 600+ and zeros elsewhere. */
const shared = new Uint8Array(300 * PS);
randomFillSync(shared);
function guest(seed: number, own: number): Uint8Array {
  const b = new Uint8Array(1024 * PS);
  b.set(shared, 0);
  const mine = b.subarray(600 * PS, (600 + own) * PS);
  randomFillSync(mine);
  mine[0] = seed;
  return b;
}

async function restore(store: PageStore, name: string): Promise<Uint8Array> {
  const ck = await store.openCheckpoint(name);
  const out = new Uint8Array(ck.pageCount * PS);
  await ck.readPagesInto(0, ck.pageCount, out);
  return out;
}

/** Frame object names under a store directory. */
function frameFiles(store: string): Set<string> {
  const out = new Set<string>();
  if (!existsSync(join(store, 'frames'))) return out;
  for (const d of readdirSync(join(store, 'frames'))) for (const f of readdirSync(join(store, 'frames', d))) if (!f.includes('.tmp')) out.add(f);
  return out;
}

/** Frame hashes the indexes in a store directory use. */
function usedFrames(store: string): Set<string> {
  const used = new Set<string>();
  for (const f of readdirSync(join(store, 'checkpoints'))) {
    const b = readFileSync(join(store, 'checkpoints', f));
    const n = Math.ceil(b.readUInt32LE(40) / b.readUInt32LE(44));
    for (let i = 0; i < n; i++) {
      const h = b.subarray(48 + 32 * i, 80 + 32 * i);
      if (h.some((x) => x !== 0)) used.add(h.toString('hex'));
    }
  }
  return used;
}

const g = [guest(1, 50), guest(2, 60), guest(3, 70)];

describe.runIf(needTool('nginx', 'nginx-light'))('a page store served by nginx (dav, JSON autoindex)', () => {
  let nginx: Nginx;
  let base: string;
  const root = join(dir, 'www');
  const sdir = join(root, 'store');

  beforeAll(async () => {
    mkdirSync(root, { recursive: true });
    nginx = await startNginx(dir, root, 'dav_methods PUT DELETE MKCOL; create_full_put_path on; autoindex on; autoindex_format json;');
    base = nginx.base;
  });
  afterAll(() => nginx?.stop());

  it('saves over PUT and restores over GET exactly; frames are shared; the objects are what a directory store holds', async () => {
    const store = await PageStore.open(`${base}/store`, { create: true });
    const st1 = await store.save('g1', g[0]!);
    // 16-page frames: pages 0-299 are frames 0-18, pages 600-649 frames 37-40.
    expect(st1).toMatchObject({ pages: 1024, frames: 64, newFrames: 23, sharedFrames: 0, zeroFrames: 41, zeroPages: 674 });
    const st2 = await store.save('g2', g[1]!);
    expect(st2).toMatchObject({ newFrames: 5, sharedFrames: 19 }); // its own pages 600-659: frames 37-41
    await store.save('g3', g[2]!);
    expect(await store.list()).toEqual(['g1', 'g2', 'g3']);
    for (let i = 0; i < 3; i++) expect(await restore(store, `g${i + 1}`)).toEqual(g[i]);
    // Lazy memory over the URL store: a page fetches its frame (one GET), its neighbours come from it.
    const ck = await store.openCheckpoint('g2');
    const lazy = await LazyGuestMemory.open(ck, { policy: createPolicy('physical', { back: 0, ahead: 0 }) });
    const b = new Uint8Array(PS);
    await lazy.read(gpa(BigInt(605 * PS)), b);
    expect(b).toEqual(g[1]!.subarray(605 * PS, 606 * PS));
    expect(ck.framesFetched).toBe(1);
    // The same images in a directory store: the same frame objects, byte for byte.
    const local = await PageStore.open(join(dir, 'local'), { create: true });
    for (let i = 0; i < 3; i++) await local.save(`g${i + 1}`, g[i]!);
    const names = frameFiles(join(dir, 'local'));
    expect(frameFiles(sdir)).toEqual(names);
    for (const n of names) expect(readFileSync(join(sdir, 'frames', n.slice(0, 2), n))).toEqual(readFileSync(join(dir, 'local', 'frames', n.slice(0, 2), n)));
    expect(readdirSync(join(sdir, 'refs'))).toEqual([]);
  });

  it('gc at the URL drops exactly the frames no checkpoint uses; a save during the collection loses nothing', async () => {
    const store = await PageStore.open(`${base}/store`);
    await store.remove('g1');
    const st = await store.gc();
    expect(st.removed).toBe(4);
    expect(frameFiles(sdir)).toEqual(usedFrames(sdir));
    // Now g3 goes; while the collector has marked (without g3's own frames) a save of g3's image again
    // finds them present; the collection sweeps them; the save waits for it, re-checks and puts them back.
    let reachedPages!: () => void;
    const atPages = new Promise<void>((r) => (reachedPages = r));
    const saver = await PageStore.open(`${base}/store`, { onStep: (s) => void (s === 'save:pages' && reachedPages()) });
    let saving: Promise<unknown> | undefined;
    const collector = await PageStore.open(`${base}/store`, {
      onStep: async (s) => {
        if (s !== 'gc:marked') return;
        saving = saver.save('g3-again', g[2]!);
        await atPages;
      },
    });
    await collector.remove('g3');
    expect((await collector.gc()).removed).toBe(5); // g3's own pages 600-669: frames 37-41
    await saving;
    expect(await restore(saver, 'g3-again')).toEqual(g[2]);
    expect(frameFiles(sdir)).toEqual(usedFrames(sdir));
    await saver.remove('g3-again');
    expect((await saver.gc()).removed).toBe(5);
    expect(frameFiles(sdir)).toEqual(usedFrames(sdir));
    expect(existsSync(join(sdir, 'gc.lock'))).toBe(false);
    // A second collection while one holds the lock: CONFLICT.
    mkdirSync(join(sdir, 'gc.lock'));
    expect(await codeOf(store.gc())).toBe('CONFLICT');
    rmSync(join(sdir, 'gc.lock'), { recursive: true });
  });

  it('vmkit checkpoint save|restore|gc --store <url>', () => {
    const img = join(dir, 'g2.mem');
    writeFileSync(img, g[1]!);
    const s = spawnSync(process.execPath, [bin, 'checkpoint', 'save', '--store', `${base}/cli`, img, 'vm', '--json']);
    expect(s.status, s.stderr.toString()).toBe(0);
    expect(JSON.parse(s.stdout.toString())).toMatchObject({ newFrames: 24, zeroPages: 664 });
    const out = join(dir, 'g2.out');
    const r = spawnSync(process.execPath, [bin, 'checkpoint', 'restore', '--store', `${base}/cli`, 'vm', out]);
    expect(r.status, r.stderr.toString()).toBe(0);
    expect(new Uint8Array(readFileSync(out))).toEqual(g[1]);
    const c = spawnSync(process.execPath, [bin, 'checkpoint', 'gc', '--store', `${base}/cli`, '--json']);
    expect(c.status, c.stderr.toString()).toBe(0);
    expect(JSON.parse(c.stdout.toString())).toMatchObject({ removed: 0, kept: 24 });
  });
});

describe('a page store behind a hostile server', () => {
  let server: Server;
  let base: string;
  const sdir = join(dir, 'hostile');
  const scratch = join(dir, 'hostile-writes');
  /** How the server answers requests for frames: ok, 500, truncate, hang, wrong, and PUT/listing refusals. */
  let mode = 'ok';
  let frameRequests = 0;

  beforeAll(async () => {
    const store = await PageStore.open(sdir, { create: true });
    await store.save('g1', g[0]!);
    server = createServer((req, res) => {
      const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
      const file = existsSync(join(scratch, path)) ? join(scratch, path) : join(sdir, path);
      if (req.method === 'PUT' || req.method === 'DELETE') {
        // 'no-list' takes writes (into a scratch folder) but gives no listings.
        if (mode !== 'no-list') return void res.writeHead(mode === 'no-put' ? 405 : 500).end();
        const chunks: Buffer[] = [];
        req.on('data', (d: Buffer) => chunks.push(d));
        req.on('end', () => {
          const f = join(scratch, path);
          if (req.method === 'DELETE') rmSync(f, { force: true });
          else {
            mkdirSync(join(f, '..'), { recursive: true });
            writeFileSync(f, Buffer.concat(chunks));
          }
          res.writeHead(201).end();
        });
        return;
      }
      if (path.endsWith('/')) {
        if (mode === 'no-list') return void res.writeHead(200, { 'content-type': 'text/html' }).end('<html>index</html>');
        return void res.writeHead(404).end();
      }
      if (!existsSync(file)) return void res.writeHead(404).end();
      const body = readFileSync(file);
      if (path.startsWith('/frames/')) {
        frameRequests++;
        if (mode === '500') return void res.writeHead(500).end();
        if (mode === 'hang') return; // never answers
        if (mode === 'truncate') {
          res.writeHead(200, { 'content-length': body.length });
          res.write(body.subarray(0, body.length >> 1));
          return void res.socket?.destroy();
        }
        if (mode === 'wrong') {
          const bad = Buffer.from(body);
          bad[bad.length - 1]! ^= 0x55;
          return void res.writeHead(200, { 'content-length': bad.length }).end(bad);
        }
      }
      res.writeHead(200, { 'content-length': body.length }).end(req.method === 'HEAD' ? undefined : body);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });

  // Generous per attempt (a loaded machine); the server that never answers gets a short one below.
  const http = { retries: 2, retryDelayMs: 1, timeoutMs: 20_000 };

  it('reads exactly from a well-behaved server', async () => {
    mode = 'ok';
    const store = await PageStore.open(base, { http });
    expect(await restore(store, 'g1')).toEqual(g[0]);
  });

  it('500s, truncated bodies and no answer are retried, then NETWORK or TIMEOUT; a wrong frame is INTEGRITY', async () => {
    const store = await PageStore.open(base, { http });
    const impatient = await PageStore.open(base, { http: { ...http, timeoutMs: 300 } });
    const dst = new Uint8Array(16 * PS);
    for (const [m, want] of [
      ['500', 'NETWORK'],
      ['truncate', 'NETWORK'],
      ['hang', 'TIMEOUT'],
      ['wrong', 'INTEGRITY|CORRUPT'],
    ] as const) {
      mode = m;
      frameRequests = 0;
      const ck = await (m === 'hang' ? impatient : store).openCheckpoint('g1');
      const t0 = Date.now();
      expect(await codeOf(ck.readPagesInto(0, 16, dst)), m).toMatch(new RegExp(`^(${want})$`));
      // Retried (1 + retries attempts) where retrying may help; bounded in time either way.
      expect(frameRequests, m).toBe(m === 'wrong' ? 1 : 3);
      expect(Date.now() - t0, m).toBeLessThan(15_000);
    }
    mode = 'ok';
  });

  it('a server that refuses PUT is UNSUPPORTED for a save; one with no JSON listings UNSUPPORTED for gc but saves; the caller can cancel', async () => {
    mode = 'no-put';
    const store = await PageStore.open(base, { http });
    expect(await codeOf(store.save('g2', g[1]!))).toBe('UNSUPPORTED');
    mode = 'no-list';
    expect(await codeOf(store.list())).toBe('UNSUPPORTED');
    expect(await codeOf(store.gc())).toBe('UNSUPPORTED');
    // Saving needs no listing: with none, no collection can be running.
    const st = await store.save('g2', g[1]!);
    expect(st.newFrames).toBe(5);
    expect(await restore(store, 'g2')).toEqual(g[1]);
    mode = 'hang';
    const ac = new AbortController();
    const slow = await PageStore.open(base, { http: { ...http, timeoutMs: 60_000, signal: ac.signal } });
    const ck = await slow.openCheckpoint('g1');
    const p = codeOf(ck.readPagesInto(0, 16, new Uint8Array(16 * PS)));
    setTimeout(() => ac.abort(), 50);
    expect(await p).toBe('CANCELLED');
    mode = 'ok';
  });

  it('an index whose checksum does not match is INTEGRITY', async () => {
    const f = join(sdir, 'checkpoints', 'g1.vmkidx');
    const orig = readFileSync(f);
    const bad = Buffer.from(orig);
    bad[60]! ^= 1;
    writeFileSync(f, bad);
    const store = await PageStore.open(base, { http });
    expect(await codeOf(store.openCheckpoint('g1'))).toBe('INTEGRITY');
    writeFileSync(f, orig);
    expect(await restore(store, 'g1')).toEqual(g[0]);
  });
});
