// The NBD server against a hostile client: a hand-written client drives the
// handshake and transmission byte by byte and checks the exact error each
// malformed request earns (doc/proto.md's EINVAL, ENOSPC, EPERM, ENOTSUP…);
// fast-check then throws random bytes and random requests at it. Whatever
// arrives, the server answers or hangs up that one connection, keeps its
// memory bounded, and still serves a well-behaved client afterwards.
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { connect, type Socket } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { MemoryStorage } from '../bindings/disk/backends/memory.js';
import { loadFormat } from '../bindings/disk/image.js';
import type { BlockDevice } from '../bindings/disk/device.js';
import { serveNbd, type NbdServer } from '../bindings/disk/nbd/server.js';

const MAGIC_OPT = 0x49484156454f5054n;
const SIZE = 4 << 20;

/** A byte-level NBD client: what it sends is exactly what the test says. */
class RawClient {
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  closed = false;
  readonly sock: Socket;
  constructor(sock: Socket) {
    this.sock = sock;
    sock.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.waiters.splice(0).forEach((w) => w());
    });
    const end = (): void => {
      this.closed = true;
      this.waiters.splice(0).forEach((w) => w());
    };
    sock.on('close', end);
    sock.on('error', end);
  }
  static open(path: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = connect(path, () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }
  /** Exactly n bytes, or null once the server hung up first. */
  async read(n: number, ms = 5000): Promise<Buffer | null> {
    const until = Date.now() + ms;
    while (this.buf.length < n) {
      if (this.closed) return null;
      if (Date.now() > until) throw new Error(`no ${n} bytes from the server within ${ms} ms (have ${this.buf.length})`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  write(b: Uint8Array): void {
    if (!this.closed) this.sock.write(b);
  }
  /** Resolves true once the server closed the connection. */
  async closedWithin(ms: number): Promise<boolean> {
    const until = Date.now() + ms;
    while (!this.closed && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    return this.closed;
  }
  end(): void {
    this.sock.destroy();
  }
  async hello(flags = 3): Promise<void> {
    const h = await this.read(18);
    expect(h!.readBigUInt64BE(0)).toBe(0x4e42444d41474943n);
    expect(h!.readBigUInt64BE(8)).toBe(MAGIC_OPT);
    const f = Buffer.alloc(4);
    f.writeUInt32BE(flags);
    this.write(f);
  }
  option(opt: number, data: Uint8Array = new Uint8Array(0), declaredLength = data.length): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(MAGIC_OPT, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(declaredLength, 12);
    this.write(Buffer.concat([h, data]));
  }
  /** One option reply: its type and data. */
  async reply(): Promise<{ opt: number; type: number; data: Buffer } | null> {
    const h = await this.read(20);
    if (!h) return null;
    expect(h.readBigUInt64BE(0)).toBe(0x3e889045565a9n);
    const data = (await this.read(h.readUInt32BE(16)))!;
    return { opt: h.readUInt32BE(8), type: h.readUInt32BE(12), data };
  }
  /** Replies until a final one (ACK or an error), returning them all. */
  async replies(): Promise<{ opt: number; type: number; data: Buffer }[]> {
    const out = [];
    for (;;) {
      const r = await this.reply();
      if (!r) throw new Error('server hung up during option replies');
      out.push(r);
      if (r.type === 1 || r.type >= 0x80000000) return out;
    }
  }
  /** Handshake to transmission with structured replies and both contexts. */
  async toTransmission(opts: { structured?: boolean; contexts?: boolean; blockSize?: boolean } = {}): Promise<number> {
    await this.hello();
    if (opts.structured !== false) {
      this.option(8);
      expect((await this.replies()).at(-1)!.type).toBe(1);
    }
    if (opts.contexts !== false && opts.structured !== false) {
      this.option(10, metaQuery('vm', ['base:allocation', 'qemu:allocation-depth']));
      const r = await this.replies();
      expect(r.filter((x) => x.type === 4).map((x) => x.data.subarray(4).toString())).toEqual(['base:allocation', 'qemu:allocation-depth']);
    }
    this.option(7, goData('vm', opts.blockSize === false ? [] : [3]));
    const r = await this.replies();
    expect(r.at(-1)!.type).toBe(1);
    return r.find((x) => x.type === 3 && x.data.readUInt16BE(0) === 0)!.data.readUInt16BE(10);
  }
  request(type: number, offset: bigint, length: number, flags = 0, cookie = 7n, payload?: Uint8Array): void {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(cookie, 8);
    h.writeBigUInt64BE(offset, 16);
    h.writeUInt32BE(length, 24);
    this.write(payload ? Buffer.concat([h, payload]) : h);
  }
  /** Structured chunks for one request until DONE; the error value of an error chunk, else 0. */
  async chunks(): Promise<{ error: number; chunks: { type: number; flags: number; data: Buffer }[] } | null> {
    const chunks = [];
    let error = 0;
    for (;;) {
      const h = await this.read(20);
      if (!h) return null;
      expect(h.readUInt32BE(0)).toBe(0x668e33ef);
      const c = { flags: h.readUInt16BE(4), type: h.readUInt16BE(6), data: (await this.read(h.readUInt32BE(16)))! };
      chunks.push(c);
      if (c.type & 0x8000) error = c.data.readUInt32BE(0);
      if (c.flags & 1) return { error, chunks };
    }
  }
}

function goData(name: string, infos: number[]): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((x, i) => b.writeUInt16BE(x, 6 + n.length + 2 * i));
  return b;
}

function metaQuery(name: string, queries: string[]): Buffer {
  const parts = [Buffer.alloc(4), Buffer.from(name), Buffer.alloc(4)];
  parts[0]!.writeUInt32BE(Buffer.byteLength(name));
  parts[2]!.writeUInt32BE(queries.length);
  for (const q of queries) {
    const l = Buffer.alloc(4);
    l.writeUInt32BE(Buffer.byteLength(q));
    parts.push(l, Buffer.from(q));
  }
  return Buffer.concat(parts);
}

let dir = '';
let server: NbdServer;
let dev: BlockDevice;
let sock = '';
const errors: Error[] = [];

describe('NBD server against a hostile client', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmkit-nbdfuzz-'));
    const qcow2 = await loadFormat('qcow2');
    const st = new MemoryStorage('fuzz.qcow2');
    await qcow2.create(st, { size: SIZE });
    dev = await qcow2.open(st, {});
    await dev.write(0, new Uint8Array(65536).fill(0xab));
    sock = join(dir, 'fuzz.sock');
    server = await serveNbd({ listen: `unix:${sock}`, exports: [{ name: 'vm', device: dev }], handshakeTimeoutMs: 2000, maxPayload: 1 << 20, onConnectionError: (e) => errors.push(e) });
  });
  afterAll(async () => {
    await server?.close();
    await dev?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('hangs up on unknown client flags and on a bad option magic; answers bad option data with ERR_INVALID', async () => {
    const a = await RawClient.open(sock);
    await a.hello(0x80);
    expect(await a.closedWithin(2000)).toBe(true);

    const b = await RawClient.open(sock);
    await b.hello();
    b.write(Buffer.alloc(16, 0x41));
    expect(await b.closedWithin(2000)).toBe(true);

    const c = await RawClient.open(sock);
    await c.hello();
    c.option(3, Buffer.from('x')); // LIST with data
    expect((await c.reply())!.type).toBe(0x80000003);
    c.option(7, Buffer.from([0, 0, 0, 200, 1, 2])); // GO whose name length overruns the option
    expect((await c.reply())!.type).toBe(0x80000003);
    c.option(10, metaQuery('vm', ['base:allocation'])); // SET_META_CONTEXT before structured replies
    expect((await c.reply())!.type).toBe(0x80000003);
    c.option(7, goData('nope', [])); // unknown export
    expect((await c.reply())!.type).toBe(0x80000006);
    c.option(99); // unknown option
    expect((await c.reply())!.type).toBe(0x80000001);
    c.option(5); // STARTTLS on a server without TLS
    expect((await c.reply())!.type).toBe(0x80000002);
    c.option(6, goData('vm', [0, 1, 2, 3])); // INFO
    const info = await c.replies();
    expect(info.at(-1)!.type).toBe(1);
    const bs = info.find((x) => x.type === 3 && x.data.readUInt16BE(0) === 3)!.data;
    expect([bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)]).toEqual([512, 4096, 1 << 20]);
    c.option(2); // ABORT
    expect((await c.reply())!.type).toBe(1);
    expect(await c.closedWithin(2000)).toBe(true);
  });

  it('skips an oversized option (ERR_TOO_BIG) and bounds the handshake in options and time', async () => {
    const a = await RawClient.open(sock);
    await a.hello();
    a.option(7, new Uint8Array(70_000));
    expect((await a.reply())!.type).toBe(0x80000009);
    a.option(3);
    expect((await a.replies()).at(-1)!.type).toBe(1); // still in sync after the skip
    const slow = await RawClient.open(sock);
    await slow.hello();
    expect(await slow.closedWithin(4000)).toBe(true); // handshakeTimeoutMs 2000
    a.end();
  });

  it('answers each malformed request with the error doc/proto.md names, and stays in sync', async () => {
    const c = await RawClient.open(sock);
    const flags = await c.toTransmission();
    expect(flags & 1).toBe(1);
    expect(flags & (1 << 8)).toBe(1 << 8); // CAN_MULTI_CONN
    const cases: [string, () => void, number][] = [
      ['read past the end', () => c.request(0, BigInt(SIZE), 512), 22],
      ['read at 2^63', () => c.request(0, 1n << 63n, 512), 22],
      ['write past the end', () => c.request(1, BigInt(SIZE - 512), 1024, 0, 7n, new Uint8Array(1024)), 28],
      ['unaligned read after agreeing to 512', () => c.request(0, 100n, 512), 22],
      ['unknown command', () => c.request(42, 0n, 0), 22],
      ['flag not valid for the command', () => c.request(0, 0n, 512, 1 << 3), 22],
      ['unknown flag', () => c.request(3, 0n, 0, 1 << 9), 22],
      ['read over the maximum payload', () => c.request(0, 0n, 2 << 20), 75],
      ['block status of 0 bytes', () => c.request(7, 0n, 0), 22],
      ['fast zero without NO_HOLE support is refused fast or done', () => c.request(6, 0n, 4096, (1 << 4) | (1 << 1)), 95],
    ];
    for (const [what, send, errno] of cases) {
      send();
      const r = await c.chunks();
      expect(r, what).not.toBeNull();
      expect(r!.error, what).toBe(errno);
    }
    // And a well-formed read still returns what is there.
    c.request(0, 0n, 4096, 0, 99n);
    const ok = await c.chunks();
    expect(ok!.error).toBe(0);
    const data = ok!.chunks.find((x) => x.type === 1)!.data;
    expect(data.readBigUInt64BE(0)).toBe(0n);
    expect(data.subarray(8).every((x) => x === 0xab)).toBe(true);
    // A hole reads as an OFFSET_HOLE chunk, REQ_ONE block status gives one descriptor per context.
    c.request(0, 1n << 20n, 65536, 0, 100n);
    expect((await c.chunks())!.chunks.map((x) => x.type)).toEqual([2, 0]);
    c.request(7, 0n, SIZE, 1 << 3, 101n);
    const bs = (await c.chunks())!.chunks;
    expect(bs.map((x) => x.data.length)).toEqual([12, 12]);
    expect(bs[0]!.data.readUInt32BE(4)).toBe(65536);
    expect(bs[0]!.data.readUInt32BE(8)).toBe(0); // data
    c.request(2, 0n, 0); // DISC
    expect(await c.closedWithin(2000)).toBe(true);
  });

  it('hangs up on a bad request magic and on a write over the maximum payload', async () => {
    const a = await RawClient.open(sock);
    await a.toTransmission();
    a.write(Buffer.alloc(28, 0x55));
    expect(await a.closedWithin(2000)).toBe(true);
    const b = await RawClient.open(sock);
    await b.toTransmission();
    b.request(1, 0n, 0xffff_ffff);
    expect(await b.closedWithin(2000)).toBe(true);
  });

  it('serves clients without structured replies or block-size agreement (simple replies, read-modify-write)', async () => {
    const c = await RawClient.open(sock);
    await c.toTransmission({ structured: false, contexts: false, blockSize: false });
    c.request(1, 1000n, 10, 0, 1n, Buffer.from('0123456789'));
    const w = (await c.read(16))!;
    expect([w.readUInt32BE(0), w.readUInt32BE(4)]).toEqual([0x67446698, 0]);
    c.request(0, 995n, 20, 0, 2n);
    const r = (await c.read(16 + 20))!;
    expect(r.readUInt32BE(4)).toBe(0);
    expect(r.subarray(16).toString('latin1')).toBe('\xab\xab\xab\xab\xab0123456789\xab\xab\xab\xab\xab');
    c.request(7, 0n, 512, 0, 3n); // block status without contexts: EINVAL in a simple reply
    const e = (await c.read(16))!;
    expect(e.readUInt32BE(4)).toBe(22);
    c.end();
  });

  it('random bytes after any prefix of a valid session never break the server (property)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: 3 }), fc.uint8Array({ minLength: 1, maxLength: 2048 }), async (stage, junk) => {
        const c = await RawClient.open(sock);
        try {
          if (stage === 0) await c.hello();
          else if (stage >= 1) await c.toTransmission({ structured: stage !== 2, contexts: stage === 3, blockSize: stage !== 1 });
          c.write(junk);
          // The server answers what parses and hangs up or waits for the rest; either way this connection alone.
          await new Promise((r) => setTimeout(r, 5));
        } finally {
          c.end();
        }
      }),
      { numRuns: 150 },
    );
    // Random well-framed requests: every one gets a reply with its cookie, none kills the connection.
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ type: fc.integer({ min: 0, max: 9 }), flags: fc.integer({ min: 0, max: 63 }), off: fc.bigInt({ min: 0n, max: BigInt(SIZE) + 4096n }), len: fc.integer({ min: 0, max: 70_000 }) }), { minLength: 1, maxLength: 20 }),
        async (reqs) => {
          const c = await RawClient.open(sock);
          try {
            await c.toTransmission();
            let cookie = 1n;
            for (const q of reqs) {
              if (q.type === 2) continue; // DISC ends the session on purpose
              const payload = q.type === 1 ? new Uint8Array(q.len) : undefined;
              c.request(q.type, q.off, q.len, q.flags, cookie, payload);
              const r = await c.chunks();
              expect(r).not.toBeNull();
              cookie++;
            }
          } finally {
            c.end();
          }
        },
      ),
      { numRuns: 60 },
    );
    // Still serving, and the device still reads back what the first spec wrote at 0 unless a write changed it.
    const c = await RawClient.open(sock);
    await c.toTransmission();
    c.request(0, 0n, 512, 0, 5n);
    expect((await c.chunks())!.error).toBe(0);
    c.end();
    expect(server.stats().connections).toBeLessThanOrEqual(2);
    expect(errors.every((e) => e instanceof Error)).toBe(true);
  }, 120_000);
});

describe('NBD server listening', () => {
  it('replaces a socket file nothing answers on, refuses one a live server holds (CONFLICT), and a non-loopback TCP address without TLS', async () => {
    const d = await mkdtemp(join(tmpdir(), 'vmkit-nbdlisten-'));
    const qcow2 = await loadFormat('qcow2');
    const st = new MemoryStorage('l.qcow2');
    await qcow2.create(st, { size: 1 << 20 });
    const device = await qcow2.open(st, {});
    try {
      const path = join(d, 'l.sock');
      // A dead server's socket: a listener that was closed without unlinking (as after SIGKILL).
      const { createServer } = await import('node:net');
      const dead = createServer();
      await new Promise<void>((r) => dead.listen(path, r));
      (dead as unknown as { _handle: { close(): void } })._handle.close(); // close the fd, leave the file
      const a = await serveNbd({ listen: `unix:${path}`, exports: [{ device }] });
      await expect(serveNbd({ listen: `unix:${path}`, exports: [{ device }] })).rejects.toMatchObject({ code: 'CONFLICT' });
      const c = await RawClient.open(path);
      await c.hello();
      c.end();
      await a.close();
      await expect(serveNbd({ listen: '0.0.0.0:0', exports: [{ device }] })).rejects.toMatchObject({ code: 'ARG_RANGE' });
      const ok = await serveNbd({ listen: '0.0.0.0:0', exports: [{ device }], insecure: true });
      await ok.close();
    } finally {
      await device.close();
      await rm(d, { recursive: true, force: true });
    }
  });
});
