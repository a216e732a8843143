// A local HTTP server over .cache/attest/ (the real repositories that
// scripts/attest-fixtures.sh builds) for the attestation specs. It answers
// ETag / If-None-Match and If-Modified-Since with 304, counts requests per
// path, and lets a spec override any path (tamper with it, hide it) or remap
// a prefix onto another fixture directory.
import { createServer, type Server } from 'node:http';
import { readFile, stat } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join, normalize, resolve } from 'node:path';

export const FIXTURES = resolve('.cache/attest');

/**
 * Builds the fixtures (a no-op once cached). Under a lock: spec files run in parallel, and two
 * first builds into the same .cache/attest/ would interleave.
 */
export function buildFixtures(): void {
  mkdirSync('.cache', { recursive: true });
  execFileSync('flock', ['.cache/.attest-fixtures.lock', 'bash', 'scripts/attest-fixtures.sh'], { stdio: ['ignore', 'ignore', 'inherit'] });
}

export type Override = (body: Buffer | undefined) => { status: number; body?: Buffer } | Buffer | undefined;

export interface FixtureServer {
  url: string;
  /** Requests seen, by path. */
  hits: Map<string, number>;
  /** Path → override of the answer (undefined → serve normally). */
  overrides: Map<string, Override>;
  /** URL prefix → fixture subdirectory (default: the path as is). */
  mounts: Map<string, string>;
  close(): Promise<void>;
}

export async function startServer(): Promise<FixtureServer> {
  const hits = new Map<string, number>();
  const overrides = new Map<string, Override>();
  const mounts = new Map<string, string>();
  let base = '';
  const server: Server = createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    hits.set(path, (hits.get(path) ?? 0) + 1);
    let file = path;
    for (const [prefix, dir] of mounts) if (path.startsWith(prefix)) file = dir + path.slice(prefix.length);
    const abs = normalize(join(FIXTURES, file));
    let body: Buffer | undefined;
    let mtime = new Date(0);
    if (abs.startsWith(FIXTURES)) {
      try {
        const st = await stat(abs);
        if (st.isFile()) {
          body = await readFile(abs);
          mtime = st.mtime;
        }
      } catch {
        body = undefined;
      }
    }
    if (body && path.endsWith('.json')) body = Buffer.from(body.toString('utf8').replaceAll('REGISTRY', base));
    let status = body ? 200 : 404;
    const o = overrides.get(path);
    if (o) {
      const r = o(body);
      if (Buffer.isBuffer(r)) body = r;
      else if (r) {
        status = r.status;
        body = r.body;
      }
      if (body && status === 404) status = 200;
    }
    if (!body || status !== 200) {
      res.writeHead(status === 200 ? 404 : status).end();
      return;
    }
    const etag = '"' + createHash('sha1').update(body).digest('hex') + '"';
    const lm = mtime.toUTCString();
    if (req.headers['if-none-match'] === etag) {
      res.writeHead(304, { etag }).end();
      return;
    }
    res.writeHead(200, { etag, 'last-modified': lm, 'content-length': body.length });
    res.end(body);
  });
  // Idle keep-alive sockets stay open for a minute: with the default 5 s the server could close
  // one while a client (undici, whose own idle timer runs late on a busy machine) reuses it
  // after a slow spec, and the next GET would fail with ECONNRESET.
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  base = `http://127.0.0.1:${port}`;
  return {
    url: base,
    hits,
    overrides,
    mounts,
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeIdleConnections();
      }),
  };
}
