// NbdServer.close({ holdClients }): what an ownership handoff needs from the
// server it stops (docs/nbd.md, "Ownership handoff"). The requests in flight
// are answered and close() resolves, but the connections stay open with new
// requests unread until the hold settles; then they close, and a client with
// reconnect (QEMU's) sends those requests to whoever listens next. Before
// this, close() hung up at once and QEMU's NBD client, finding nobody on the
// socket, waited its 1 s backoff: the guest's pause in a handoff.
import { describe, expect, it } from 'vitest';
import { connect, type Socket } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryStorage } from '../bindings/disk/backends/memory.js';
import { loadFormat } from '../bindings/disk/image.js';
import { serveNbd } from '../bindings/disk/nbd/server.js';

/** A minimal NBD client: fixed newstyle, EXPORT_NAME, simple replies. */
class Client {
  private buf = Buffer.alloc(0);
  closed = false;
  readonly sock: Socket;
  constructor(sock: Socket) {
    this.sock = sock;
    sock.on('data', (d) => (this.buf = Buffer.concat([this.buf, d])));
    sock.on('close', () => (this.closed = true));
    sock.on('error', () => (this.closed = true));
  }
  static open(path: string): Promise<Client> {
    return new Promise((res, rej) => {
      const s = connect(path, () => res(new Client(s)));
      s.once('error', rej);
    });
  }
  /** n bytes within ms, or null (none came: timed out, or the server hung up). */
  async read(n: number, ms: number): Promise<Buffer | null> {
    const until = Date.now() + ms;
    while (this.buf.length < n && !this.closed && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    if (this.buf.length < n) return null;
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  async handshake(): Promise<void> {
    const hello = await this.read(18, 5000);
    expect(hello!.subarray(0, 8).toString('latin1')).toBe('NBDMAGIC');
    const opt = Buffer.alloc(4 + 16);
    opt.writeUInt32BE(3, 0); // FIXED_NEWSTYLE | NO_ZEROES
    opt.writeBigUInt64BE(0x49484156454f5054n, 4); // IHAVEOPT
    opt.writeUInt32BE(1, 12); // NBD_OPT_EXPORT_NAME, empty name
    opt.writeUInt32BE(0, 16);
    this.sock.write(opt);
    expect(await this.read(10, 5000)).not.toBeNull(); // size and transmission flags
  }
  request(type: number, cookie: number, offset: number, length: number, data?: Uint8Array): void {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(BigInt(cookie), 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    this.sock.write(data ? Buffer.concat([h, data]) : h);
  }
  async reply(ms: number): Promise<{ error: number; cookie: number } | null> {
    const r = await this.read(16, ms);
    if (!r) return null;
    expect(r.readUInt32BE(0)).toBe(0x67446698);
    return { error: r.readUInt32BE(4), cookie: Number(r.readBigUInt64BE(8)) };
  }
}

describe('NbdServer.close({ holdClients })', () => {
  it('resolves once nothing is in flight, keeps the connection open with later requests unread until the hold settles, then closes it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vmkit-nbdhold-'));
    const qcow2 = await loadFormat('qcow2');
    const st = new MemoryStorage('hold.qcow2');
    await qcow2.create(st, { size: 1 << 20 });
    const dev = await qcow2.open(st, {});
    const sock = join(dir, 'hold.sock');
    const server = await serveNbd({ listen: `unix:${sock}`, exports: [{ device: dev }] });
    const c = await Client.open(sock);
    await c.handshake();
    c.request(1, 1, 0, 4096, new Uint8Array(4096).fill(7)); // WRITE
    expect(await c.reply(5000)).toEqual({ error: 0, cookie: 1 });

    let release!: () => void;
    const hold = new Promise<void>((r) => (release = r));
    await server.close({ holdClients: hold });
    // close() resolved (nothing was in flight) and the client is still connected.
    expect(c.closed).toBe(false);
    // A request sent now is not read, so not answered (no error either): it waits for the next server.
    c.request(0, 3, 0, 4096); // READ
    expect(await c.reply(300)).toBeNull();
    expect(c.closed).toBe(false);
    // A new connection is refused: the listener is gone.
    await expect(Client.open(sock)).rejects.toThrow();

    release();
    for (let i = 0; i < 500 && !c.closed; i++) await new Promise((r) => setTimeout(r, 10));
    expect(c.closed).toBe(true);
    expect(await c.reply(50)).toBeNull(); // the held READ never got a reply
    expect(server.stats().connections).toBe(0);
    expect((await dev.read(0, 4096)).every((x) => x === 7)).toBe(true);
    await dev.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('holds a connection stopped in the middle of a write payload too (the write is not taken, not a violation)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vmkit-nbdhold-'));
    const qcow2 = await loadFormat('qcow2');
    const st = new MemoryStorage('hold2.qcow2');
    await qcow2.create(st, { size: 1 << 20 });
    const dev = await qcow2.open(st, {});
    const sock = join(dir, 'hold2.sock');
    const errors: Error[] = [];
    const server = await serveNbd({ listen: `unix:${sock}`, exports: [{ device: dev }], onConnectionError: (e) => errors.push(e) });
    const c = await Client.open(sock);
    await c.handshake();
    // A WRITE header and 100 of its 4096 payload bytes: the server reads the header and waits for the rest.
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(1, 6);
    h.writeBigUInt64BE(9n, 8);
    h.writeUInt32BE(4096, 24);
    c.sock.write(Buffer.concat([h, Buffer.alloc(100, 9)]));
    await new Promise((r) => setTimeout(r, 200));
    let release!: () => void;
    const hold = new Promise<void>((r) => (release = r));
    await server.close({ holdClients: hold });
    expect(c.closed).toBe(false);
    expect(await c.reply(200)).toBeNull();
    release();
    for (let i = 0; i < 500 && !c.closed; i++) await new Promise((r) => setTimeout(r, 10));
    expect(c.closed).toBe(true);
    expect(errors).toEqual([]);
    expect(server.stats().violations).toBe(0);
    expect((await dev.read(0, 4096)).every((x) => x === 0)).toBe(true); // the half-sent write was not taken
    await dev.close();
    await rm(dir, { recursive: true, force: true });
  });
});
