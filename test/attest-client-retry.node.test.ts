// The attestation client over a kept-alive connection that the server drops as
// it is reused (an idle timeout racing the client's, as on a loaded machine:
// attest-service once failed with "GET /nonce: fetch failed … ECONNRESET"). A GET
// is sent again (twice at most: the pool may hold two stale connections); a
// server that drops every request still gets NETWORK, after three tries.
import { createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { fetchNonce } from '../bindings/attest/client.js';
import { VmkitError } from '../bindings/errors.js';

let server: Server | undefined;
const sockets = new Set<Socket>();
afterEach(
  () =>
    new Promise<void>((r) => {
      for (const s of sockets) s.destroy(); // kept-alive connections would hold close() for a minute
      sockets.clear();
      if (server) server.close(() => r());
      else r();
    }),
);

/** An HTTP/1.1 server that answers the first request of a connection and resets on the ones after (or on all). */
function start(resetAll: boolean): Promise<{ url: string; requests: () => number; resets: () => number }> {
  let requests = 0;
  let resets = 0;
  server = createServer((sock: Socket) => {
    sockets.add(sock);
    let onThis = 0;
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      while (buf.includes('\r\n\r\n')) {
        buf = buf.slice(buf.indexOf('\r\n\r\n') + 4); // GETs: no body
        requests++;
        if (resetAll || onThis++ > 0) {
          resets++;
          sock.resetAndDestroy();
          return;
        }
        const body = JSON.stringify({ nonce: `n${requests}` });
        sock.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: keep-alive\r\nkeep-alive: timeout=60\r\n\r\n${body}`);
      }
    });
    sock.on('error', () => {});
  });
  return new Promise((r) => server!.listen(0, '127.0.0.1', () => {
    const a = server!.address() as { port: number };
    r({ url: `http://127.0.0.1:${a.port}`, requests: () => requests, resets: () => resets });
  }));
}

describe('attestation client: a dropped kept-alive connection', () => {
  it('a GET is sent again until a connection answers (at most three tries)', async () => {
    const s = await start(false);
    // fetch's pool reuses a kept-alive connection for some of these calls (which one is its
    // choice); the server resets each reuse, and every call still gets its answer.
    const nonces: string[] = [];
    for (let i = 0; i < 6; i++) nonces.push((await fetchNonce(s.url)).nonce);
    expect(s.resets()).toBeGreaterThan(0);
    expect(s.requests()).toBe(6 + s.resets());
    expect(new Set(nonces).size).toBe(6);
  });

  it('a server that drops every request gets NETWORK after three tries', async () => {
    const s = await start(true);
    const err = await fetchNonce(s.url).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VmkitError);
    expect((err as VmkitError).code).toBe('NETWORK');
    expect(s.requests()).toBe(3);
  });
});
