// The remote reader's HTTP/1.1 client for http: URLs in Node
// (bindings/memory/checkpoint/_http-raw.ts) against a TCP server that writes
// its responses by hand, split at every awkward place: a head and chunk-size
// lines a byte at a time, chunked bodies with extensions and trailers, bodies
// to the close, an interim 100, and broken responses. A kept-alive
// connection is reused only after a response read to its end.
import { createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { _rawGet, type _NodeBody } from '../bindings/memory/checkpoint/_http-raw.js';
import { CheckpointReader, CheckpointWriter, memorySink } from '../bindings/memory/index.js';
import { VmkitError } from '../bindings/errors.js';

interface Scripted {
  url: URL;
  server: Server;
  connections: number;
  requests: string[];
}

const servers: Server[] = [];
const sockets = new Set<Socket>();
afterEach(async () => {
  for (const s of sockets) s.destroy();
  sockets.clear();
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
});

/** A server that answers each request (its head) with `reply(head, socket)`. */
async function scripted(reply: (head: string, s: Socket, n: number) => void | Promise<void>): Promise<Scripted> {
  const st: Scripted = { url: new URL('http://x'), server: undefined as unknown as Server, connections: 0, requests: [] };
  st.server = createServer((s) => {
    st.connections++;
    sockets.add(s);
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString('latin1');
      let at: number;
      while ((at = buf.indexOf('\r\n\r\n')) >= 0) {
        const head = buf.slice(0, at);
        buf = buf.slice(at + 4);
        st.requests.push(head);
        void reply(head, s, st.requests.length);
      }
    });
    s.on('error', () => {});
  });
  servers.push(st.server);
  await new Promise<void>((r) => st.server.listen(0, '127.0.0.1', r));
  st.url = new URL(`http://127.0.0.1:${(st.server.address() as AddressInfo).port}/f.ckpt?v=1`);
  return st;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Writes `text` in pieces of `size` bytes, a tick apart. */
async function dribble(s: Socket, text: string | Buffer, size: number): Promise<void> {
  const b = typeof text === 'string' ? Buffer.from(text, 'latin1') : text;
  for (let i = 0; i < b.length; i += size) {
    s.write(b.subarray(i, i + size));
    await sleep(0);
  }
}

async function body(res: Response, n: number, exact = true): Promise<{ bytes: Uint8Array; got: number; longer: boolean }> {
  const bytes = new Uint8Array(n);
  const r = await (res.body as unknown as _NodeBody).readInto(bytes, 0, exact);
  return { bytes, ...r };
}

const signal = (): AbortSignal => new AbortController().signal;

describe('the http: transport (net sockets, its own response parser)', () => {
  it('a Content-Length body in pieces; the kept-alive connection is reused', async () => {
    const payload = Buffer.from(Array.from({ length: 3000 }, (_, i) => i & 0xff));
    const st = await scripted(async (_h, s) => {
      await dribble(s, `HTTP/1.1 206 Partial Content\r\nContent-Length: ${payload.length}\r\nETag: "e"\r\nX-Two: a\r\nx-two: b\r\n\r\n`, 7);
      await dribble(s, payload, 1000);
    });
    for (let i = 0; i < 3; i++) {
      const res = await _rawGet(st.url, { Range: 'bytes=0-2999', 'If-Match': '"e"' }, signal());
      expect(res.status).toBe(206);
      expect(res.headers.get('etag')).toBe('"e"');
      expect(res.headers.get('X-Two')).toBe('a, b');
      const b = await body(res, payload.length);
      expect(b.got).toBe(payload.length);
      expect(b.longer).toBe(false);
      expect(Buffer.from(b.bytes).equals(payload)).toBe(true);
    }
    expect(st.connections).toBe(1);
    expect(st.requests[0]).toMatch(/^GET \/f\.ckpt\?v=1 HTTP\/1\.1\r\nHost: 127\.0\.0\.1:\d+\r\nRange: bytes=0-2999\r\nIf-Match: "e"\r\nConnection: keep-alive$/);
  });

  it('a chunked body, split a byte at a time, with extensions and trailers', async () => {
    const payload = Buffer.from('The quick brown fox jumps over the lazy dog, twice: the quick brown fox.');
    const st = await scripted(async (_h, s) => {
      const chunks = [payload.subarray(0, 10), payload.subarray(10, 11), payload.subarray(11)];
      let text = 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n';
      for (const c of chunks) text += `${c.length.toString(16)};ext=1\r\n${c.toString('latin1')}\r\n`;
      text += '0\r\nX-Trailer: t\r\n\r\n';
      await dribble(s, text, 1);
    });
    for (let i = 0; i < 2; i++) {
      const res = await _rawGet(st.url, {}, signal());
      expect(res.status).toBe(200);
      const b = await body(res, payload.length);
      expect(Buffer.from(b.bytes).toString()).toBe(payload.toString());
      expect(b.longer).toBe(false);
    }
    expect(st.connections).toBe(1);
  });

  it('a body to the close, after an interim 100; the connection is not reused', async () => {
    const st = await scripted(async (_h, s) => {
      await dribble(s, 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\nContent-Type: x\r\n\r\nhello, ', 5);
      await dribble(s, 'world', 2);
      s.end();
    });
    for (let i = 0; i < 2; i++) {
      const res = await _rawGet(st.url, {}, signal());
      expect(res.status).toBe(200);
      const b = await body(res, 12);
      expect(Buffer.from(b.bytes).toString()).toBe('hello, world');
    }
    expect(st.connections).toBe(2);
  });

  it('a body longer than asked is reported; a short one is counted (whole bodies: the connection is kept)', async () => {
    const st = await scripted((_h, s) => void s.write('HTTP/1.1 206 x\r\nContent-Length: 10\r\n\r\n0123456789'));
    const long = await body(await _rawGet(st.url, {}, signal()), 6);
    expect(long.longer).toBe(true);
    expect(Buffer.from(long.bytes).toString()).toBe('012345');
    // Without exact, the first bytes are enough.
    const some = await body(await _rawGet(st.url, {}, signal()), 4, false);
    expect(some.got).toBe(4);
    const short = await _rawGet(st.url, {}, signal());
    const s = new Uint8Array(16);
    const r = await (short.body as unknown as _NodeBody).readInto(s, 2, true);
    expect(r.got).toBe(8);
    expect(Buffer.from(s.subarray(0, 8)).toString()).toBe('23456789');
    // Each body arrived whole with its head: the parser read it to its end, so the connection stays usable.
    expect(st.connections).toBe(1);
  });

  it('a small error page cancelled unread is drained: its connection is reused', async () => {
    const st = await scripted((_h, s, n) => {
      if (n === 1) s.write('HTTP/1.1 404 Not Found\r\nContent-Length: 20\r\n\r\n<html>not here</html');
      else s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    });
    const a = await _rawGet(st.url, {}, signal());
    expect(a.status).toBe(404);
    await a.body!.cancel();
    await sleep(20);
    const b = await _rawGet(st.url, {}, signal());
    expect(Buffer.from((await body(b, 2)).bytes).toString()).toBe('ok');
    expect(st.connections).toBe(1);
  });

  it('broken responses fail (a plain Error, which the source retries); a header with CR/LF is ARG_RANGE', async () => {
    const bad = [
      'SSH-2.0-OpenSSH_9.2\r\n\r\n',
      'HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n',
      'HTTP/1.1 200 OK\r\nno colon here\r\n\r\n',
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n',
      `HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(70_000)}\r\n\r\n`,
    ];
    for (const text of bad) {
      const st = await scripted((_h, s) => void s.write(text));
      const e = await _rawGet(st.url, {}, signal()).catch((x: unknown) => x);
      expect(e, text.slice(0, 30)).toBeInstanceOf(Error);
      expect(e).not.toBeInstanceOf(VmkitError);
    }
    const st = await scripted((_h, s) => void s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n'));
    const res = await _rawGet(st.url, {}, signal());
    await expect(body(res, 4)).rejects.toThrow(/chunk size/);
    const e = await _rawGet(st.url, { 'X-A': 'b\r\nHost: evil' }, signal()).catch((x: unknown) => x);
    expect((e as VmkitError).code).toBe('ARG_RANGE');
  });

  it('a kept-alive connection the server drops unanswered fails that request (the source retries); the next gets a new one', async () => {
    const st = await scripted((_h, s, n) => {
      if (n === 2) s.destroy();
      else s.write(`HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n${n}`);
    });
    expect(Buffer.from((await body(await _rawGet(st.url, {}, signal()), 1)).bytes).toString()).toBe('1');
    await expect(_rawGet(st.url, {}, signal())).rejects.toThrow(/without answering/);
    const again = await _rawGet(st.url, {}, signal());
    expect(Buffer.from((await body(again, 1)).bytes).toString()).toBe('3');
    expect(st.connections).toBe(2);
    expect(st.requests.length).toBe(3);
  });

  it('an abort ends a request whose answer never comes', async () => {
    const st = await scripted(() => {});
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 30);
    await expect(_rawGet(st.url, {}, ac.signal)).rejects.toThrow();
  });

  it('a restore through a server answering every range chunked, in odd pieces, equals the guest', async () => {
    const mem = new Uint8Array(512 * 4096);
    for (let i = 0; i < mem.length; i += 13) mem[i] = (i * 7) & 0xff;
    const sink = memorySink();
    const w = await CheckpointWriter.create(sink, { guestSize: mem.length, blockSize: 256 << 10 });
    await w.writePages(0, mem);
    await w.finish();
    const file = Buffer.from(sink.bytes());
    const st = await scripted(async (head, s) => {
      const m = /Range: bytes=(\d*)-(\d*)/i.exec(head)!;
      const a = m[1] === '' ? file.length - Number(m[2]) : Number(m[1]);
      const e = m[1] === '' ? file.length - 1 : Math.min(Number(m[2]), file.length - 1);
      const part = file.subarray(a, e + 1);
      const out = `HTTP/1.1 206 Partial Content\r\nContent-Range: bytes ${a}-${e}/${file.length}\r\nETag: "c"\r\nTransfer-Encoding: chunked\r\n\r\n`;
      const pieces: Buffer[] = [Buffer.from(out, 'latin1')];
      for (let i = 0; i < part.length; i += 7777) {
        const c = part.subarray(i, i + 7777);
        pieces.push(Buffer.from(`${c.length.toString(16)}\r\n`, 'latin1'), c, Buffer.from('\r\n', 'latin1'));
      }
      pieces.push(Buffer.from('0\r\n\r\n', 'latin1'));
      await dribble(s, Buffer.concat(pieces), 65_000);
    });
    const r = await CheckpointReader.open(st.url.href, { http: { suffixBytes: 8192 } });
    const got = new Uint8Array(mem.length);
    await r.restoreTo(got, { windowPages: 64 });
    expect(got).toEqual(mem);
    await r.close();
    expect(st.connections).toBeLessThanOrEqual(6);
  });
});
