// Writing a checkpoint to a remote target with HTTP PUT: parts uploaded while
// the save runs and a manifest last (httpPartsSink), read back page by page
// through the parts with Range requests (httpPartsSource) from nginx's dav
// module, the parts checked against the manifest's SHA-256 with node:crypto
// and, joined, read by the local reader and `vmkit checkpoint inspect`; an
// abandoned save publishes nothing; a server that fails PUTs or never answers
// is a VmkitError.
import { spawnSync } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CheckpointReader, CheckpointWriter, httpPartsSink, httpPartsSource } from '../bindings/memory/index.js';
import { codeOf } from './_codes.js';
import { needTool } from './_tools.js';
import { startNginx, type Nginx } from './_nginx.js';

const bin = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vmkit-remote-write-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const PS = 4096;

/** 4 MiB: random pages (incompressible), text-like pages and zero runs. */
const mem = new Uint8Array(1024 * PS);
for (let p = 0; p < 1024; p++) {
  const pg = mem.subarray(p * PS, (p + 1) * PS);
  if (p % 3 === 0) randomFillSync(pg);
  else if (p % 3 === 1) pg.fill(p & 0xff, 0, 1000);
}

describe.runIf(needTool('nginx', 'nginx-light'))('checkpoints written to nginx (dav) as parts and a manifest', () => {
  let nginx: Nginx;
  let base: string;
  const root = join(dir, 'www');

  beforeAll(async () => {
    mkdirSync(root, { recursive: true });
    nginx = await startNginx(dir, root, 'dav_methods PUT DELETE MKCOL; create_full_put_path on;');
    base = nginx.base;
  });
  afterAll(() => nginx?.stop());

  it('uploads parts while saving and the manifest last; reads back exactly; the parts joined are the checkpoint', async () => {
    const sink = httpPartsSink(`${base}/ck/vm1.ckpt`, { partBytes: 256 << 10 });
    const w = await CheckpointWriter.create(sink, { guestSize: mem.length, blockSize: 64 << 10 });
    await w.writePages(0, mem.subarray(0, 512 * PS));
    // Parts go up while the save runs; the manifest is not there yet.
    expect(readdirSync(join(root, 'ck', 'vm1.ckpt.parts')).length).toBeGreaterThan(0);
    expect(existsSync(join(root, 'ck', 'vm1.ckpt'))).toBe(false);
    await w.writePages(512, mem.subarray(512 * PS));
    const st = await w.finish();
    expect(sink.uploaded.published).toBe(true);
    const m = JSON.parse(readFileSync(join(root, 'ck', 'vm1.ckpt'), 'utf8'));
    expect(m.size).toBe(st.fileBytes);
    expect(m.parts.length).toBe(Math.ceil(st.fileBytes / (256 << 10)));
    expect(sink.uploaded.parts).toBe(m.parts.length);
    // The manifest's hashes against node:crypto over the files nginx stored.
    const joined = Buffer.concat(
      m.parts.map((p: { name: string; size: number; sha256: string }) => {
        const b = readFileSync(join(root, 'ck', 'vm1.ckpt.parts', p.name));
        expect(b.length).toBe(p.size);
        expect(createHash('sha256').update(b).digest('hex')).toBe(p.sha256);
        return b;
      }),
    );
    writeFileSync(join(dir, 'joined.ckpt'), joined);
    const local = await CheckpointReader.open(join(dir, 'joined.ckpt'));
    const remote = await CheckpointReader.open(await httpPartsSource(`${base}/ck/vm1.ckpt`));
    expect(remote.info()).toEqual(local.info());
    const a = new Uint8Array(mem.length);
    await remote.readPagesInto(0, 1024, a);
    expect(a).toEqual(mem);
    // Single pages across part boundaries.
    for (const p of [0, 63, 64, 300, 511, 1023]) expect(await remote.readPage(p)).toEqual(mem.subarray(p * PS, (p + 1) * PS));
    await remote.close();
    await local.close();
    const ins = spawnSync(process.execPath, [bin, 'checkpoint', 'inspect', join(dir, 'joined.ckpt'), '--json']);
    expect(ins.status, ins.stderr.toString()).toBe(0);
    expect(JSON.parse(ins.stdout.toString())).toMatchObject({ pages: 1024 });
  });

  it('vmkit checkpoint save <image> <url>, then inspect, restore and read-page of the URL', () => {
    const img = join(dir, 'cli.mem');
    writeFileSync(img, mem);
    const s = spawnSync(process.execPath, [bin, 'checkpoint', 'save', img, `${base}/cli/vm.ckpt`, '--json']);
    expect(s.status, s.stderr.toString()).toBe(0);
    expect(existsSync(join(root, 'cli', 'vm.ckpt.parts', '00000000'))).toBe(true);
    const m = JSON.parse(readFileSync(join(root, 'cli', 'vm.ckpt'), 'utf8'));
    expect(m.size).toBe(JSON.parse(s.stdout.toString()).fileBytes);
    const ins = spawnSync(process.execPath, [bin, 'checkpoint', 'inspect', `${base}/cli/vm.ckpt`, '--json']);
    expect(ins.status, ins.stderr.toString()).toBe(0);
    expect(JSON.parse(ins.stdout.toString())).toMatchObject({ pages: 1024, fileBytes: m.size });
    const out = join(dir, 'cli.out');
    const r = spawnSync(process.execPath, [bin, 'checkpoint', 'restore', `${base}/cli/vm.ckpt`, out]);
    expect(r.status, r.stderr.toString()).toBe(0);
    expect(new Uint8Array(readFileSync(out))).toEqual(mem);
    const pg = spawnSync(process.execPath, [bin, 'checkpoint', 'read-page', `${base}/cli/vm.ckpt`, '0x12000', '--json']);
    expect(pg.status, pg.stderr.toString()).toBe(0);
    expect(Buffer.from(JSON.parse(pg.stdout.toString()).hex, 'hex')).toEqual(Buffer.from(mem.subarray(0x12000, 0x13000)));
    // Neither a checkpoint nor a manifest: the reader's own error.
    writeFileSync(join(root, 'cli', 'junk'), 'not a checkpoint at all'.repeat(10));
    const bad = spawnSync(process.execPath, [bin, 'checkpoint', 'inspect', `${base}/cli/junk`, '--json']);
    expect(bad.status).not.toBe(0);
    expect(bad.stderr.toString()).toMatch(/CORRUPT/);
  });

  it('an abandoned save publishes no manifest and leaves no parts', async () => {
    const sink = httpPartsSink(`${base}/ck/vm2.ckpt`, { partBytes: 64 << 10 });
    const w = await CheckpointWriter.create(sink, { guestSize: mem.length, blockSize: 64 << 10 });
    await w.writePages(0, mem.subarray(0, 512 * PS));
    await w.abort();
    expect(sink.uploaded.published).toBe(false);
    expect(existsSync(join(root, 'ck', 'vm2.ckpt'))).toBe(false);
    expect(readdirSync(join(root, 'ck', 'vm2.ckpt.parts'))).toEqual([]);
    expect(await codeOf(httpPartsSource(`${base}/ck/vm2.ckpt`))).toBe('NOT_FOUND');
  });

  it('a part that does not match the manifest is INTEGRITY; a write out of order UNSUPPORTED', async () => {
    const m = JSON.parse(readFileSync(join(root, 'ck', 'vm1.ckpt'), 'utf8'));
    const f = join(root, 'ck', 'vm1.ckpt.parts', m.parts[1].name);
    const orig = readFileSync(f);
    writeFileSync(f, orig.subarray(0, orig.length - 1));
    const src = await httpPartsSource(`${base}/ck/vm1.ckpt`);
    expect(await codeOf(src.read(m.partBytes + 10, new Uint8Array(10)))).toBe('INTEGRITY');
    await src.close();
    writeFileSync(f, orig);
    const sink = httpPartsSink(`${base}/ck/vm3.ckpt`);
    expect(await codeOf(sink.write(new Uint8Array(10), 100))).toBe('UNSUPPORTED');
    await sink.close();
  });
});

describe('remote writing to a hostile server', () => {
  let server: Server;
  let base: string;
  let mode = '500';
  let puts = 0;
  beforeAll(async () => {
    server = createServer((req, res) => {
      req.resume();
      if (req.method === 'PUT') puts++;
      if (mode === 'hang') return;
      res.writeHead(mode === '500' ? 500 : 403).end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });

  for (const [m, want] of [
    ['500', 'NETWORK'],
    ['hang', 'TIMEOUT'],
    ['403', 'REFUSED'],
  ] as const) {
    it(`PUT answered ${m}: the save fails with ${want}, bounded`, async () => {
      mode = m;
      puts = 0;
      const t0 = Date.now();
      const save = async (): Promise<void> => {
        const w = await CheckpointWriter.create(httpPartsSink(`${base}/x.ckpt`, { partBytes: 64 << 10, http: { retries: 2, retryDelayMs: 1, timeoutMs: m === 'hang' ? 300 : 20_000 } }), { guestSize: mem.length, blockSize: 64 << 10 });
        try {
          await w.writePages(0, mem);
          await w.finish();
        } catch (e) {
          await w.abort().catch(() => {});
          throw e;
        }
      };
      expect(await codeOf(save())).toBe(want);
      expect(puts).toBe(m === '403' ? 1 : 3);
      expect(Date.now() - t0).toBeLessThan(15_000);
    });
  }
});
