/**
 * The remote reader's transport in Node: a minimal `fetch` — `http:` through
 * `_http-raw.ts` (net sockets reading into a reused buffer), `https:` through
 * node:https with a keep-alive agent — returning just the part of `Response` that
 * {@link httpSource} uses (status, headers.get, body.getReader/cancel).
 * Why: undici's `fetch` turns every 64 KiB of a body into WHATWG stream
 * promises; reading a 45 MiB checkpoint through it cost 150–400 ms of CPU
 * where node:http cost 45–90 ms (bench/checkpoint-remote.bench.js), which
 * made a bulk restore CPU-bound below curl's speed. Browsers keep `fetch`.
 * @module
 */

import { _BodyFill, _rawGet, type _NodeBody } from './_http-raw.js';

export type { _NodeBody } from './_http-raw.js';

type Http = typeof import('node:http');

function readInto(res: import('node:http').IncomingMessage, dst: Uint8Array, skip: number, exact: boolean): Promise<{ got: number; longer: boolean }> {
  return new Promise((resolve, reject) => {
    const fill = new _BodyFill(dst, skip, exact);
    const result = (): { got: number; longer: boolean } => ({ got: fill.got, longer: fill.longer });
    const done = (): void => {
      res.off('data', onData);
      res.off('end', onEnd);
      res.off('close', onClose);
    };
    const onData = (d: Buffer): void => {
      if (fill.push(d)) {
        // Enough (or too much): the rest is not read; the socket goes.
        done();
        if (!res.complete) res.destroy();
        else res.resume();
        resolve(result());
      }
    };
    const onEnd = (): void => {
      done();
      resolve(result());
    };
    const onClose = (): void => {
      done();
      if (res.complete) resolve(result());
      else reject(new Error('connection closed before the body ended'));
    };
    res.on('data', onData);
    res.on('end', onEnd);
    res.on('close', onClose);
  });
}

let mods: { http: Http; https: Http; agents: Map<string, import('node:http').Agent> } | undefined;

async function load(): Promise<NonNullable<typeof mods>> {
  if (!mods) {
    // Hidden from bundlers: browser builds never resolve node:http.
    const [h, s] = ['node:http', 'node:https'];
    const http = (await import(/* @vite-ignore */ h)) as Http;
    const https = (await import(/* @vite-ignore */ s)) as unknown as Http;
    mods = { http, https, agents: new Map() };
  }
  return mods;
}

/** True in Node (where {@link nodeFetch} is the default transport). */
export function _isNode(): boolean {
  return typeof process !== 'undefined' && typeof process.versions?.node === 'string';
}

/**
 * GET `url` with `init.headers` and `init.signal` through node:http(s); the
 * body's reader yields the response's Buffers as they arrive. Idle
 * keep-alive sockets are shared by every source (and do not keep the
 * process alive), so a second reader of the same server skips the handshake.
 */
export async function _nodeFetch(url: string, init: { headers: Record<string, string>; signal: AbortSignal }): Promise<Response> {
  const u = new URL(url);
  // Plain HTTP: sockets reading into a reused buffer, parsed here (a quarter of node:http's CPU per byte).
  if (u.protocol === 'http:') return _rawGet(u, init.headers, init.signal);
  const m = await load();
  const mod = u.protocol === 'https:' ? m.https : m.http;
  let agent = m.agents.get(u.protocol);
  if (!agent) m.agents.set(u.protocol, (agent = new mod.Agent({ keepAlive: true })));
  return new Promise((resolve, reject) => {
    const req = mod.get(u, { headers: init.headers, signal: init.signal, agent }, (res) => {
      const it = res[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
      const reader = {
        async read(): Promise<{ done: boolean; value: Uint8Array }> {
          const r = await it.next();
          return r.done ? { done: true, value: new Uint8Array(0) } : { done: false, value: r.value };
        },
        async cancel(): Promise<void> {
          // A body read to its end leaves the socket to the agent; one that arrived whole but was not read
          // (a 404's page) is drained to get there (else its socket stays busy and keeps the process alive);
          // one still arriving closes the socket.
          if (res.readableEnded) return;
          if (res.complete) res.resume();
          else res.destroy();
        },
      };
      const body: _NodeBody = { getReader: () => reader, cancel: () => reader.cancel(), readInto: (dst, skip, exact) => readInto(res, dst, skip, exact) };
      resolve({
        status: res.statusCode ?? 0,
        statusText: res.statusMessage ?? '',
        headers: {
          get(name: string): string | null {
            const v = res.headers[name.toLowerCase()];
            return v === undefined ? null : Array.isArray(v) ? v.join(', ') : v;
          },
        },
        body,
      } as unknown as Response);
    });
    req.on('error', reject);
  });
}
