// vitest globalSetup (both projects): a small HTTP server in the Node process
// for test/checkpoint-remote.test.ts, which runs in Chromium too, where a spec
// cannot start a server. A spec PUTs a checkpoint it made and reads it back
// with Range requests from the same origin-crossing fetch a browser would make
// to an object store: CORS with a preflight (If-Match is not a safelisted
// header) and ETag/Content-Range exposed. `?mode=ignore-range` answers 200
// with the whole body; `?swap=1` serves another body (and ETag) after the
// next PUT to /swap/<name>; `?auth=sigv4` answers 403 to a GET without a
// SigV4 Authorization (its form only: test/checkpoint-sigv4.node.test.ts
// checks the signatures themselves with botocore).
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { TestProject } from 'vitest/node';

declare module 'vitest' {
  export interface ProvidedContext {
    remoteCheckpointServer: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const files = new Map<string, { body: Buffer; etag: string }>();
  let version = 0;
  const cors = {
    'access-control-allow-origin': '*',
    'access-control-allow-methods': 'GET, PUT, OPTIONS',
    'access-control-allow-headers': 'Range, If-Match, If-Unmodified-Since, Content-Type, Authorization, X-Amz-Date, X-Amz-Content-Sha256, X-Amz-Security-Token',
    'access-control-expose-headers': 'ETag, Content-Range, Content-Length',
    'access-control-max-age': '600',
  };
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (req.method === 'OPTIONS') return void res.writeHead(204, cors).end();
    if (req.method === 'PUT') {
      const parts: Buffer[] = [];
      let n = 0;
      req.on('data', (d: Buffer) => {
        n += d.length;
        if (n > 64 << 20) req.destroy();
        else parts.push(d);
      });
      req.on('end', () => {
        files.set(url.pathname, { body: Buffer.concat(parts), etag: `"v${++version}"` });
        res.writeHead(201, cors).end();
      });
      return;
    }
    if (url.searchParams.get('auth') === 'sigv4') {
      const auth = String(req.headers.authorization ?? '');
      const ok =
        /^AWS4-HMAC-SHA256 Credential=[^/]+\/\d{8}\/[a-z0-9-]+\/s3\/aws4_request, ?SignedHeaders=[a-z0-9;-]+, ?Signature=[0-9a-f]{64}$/.test(auth) &&
        /SignedHeaders=([^,]*;)?range;/.test(auth) &&
        /^\d{8}T\d{6}Z$/.test(String(req.headers['x-amz-date'] ?? ''));
      if (!ok) return void res.writeHead(403, cors).end();
    }
    const f = files.get(url.pathname);
    if (!f) return void res.writeHead(404, cors).end();
    const ifMatch = req.headers['if-match'];
    if (ifMatch && ifMatch !== f.etag) return void res.writeHead(412, cors).end();
    const b = f.body;
    const m = /^bytes=(\d*)-(\d*)$/.exec(String(req.headers.range ?? ''));
    if (!m || url.searchParams.get('mode') === 'ignore-range') {
      return void res.writeHead(200, { ...cors, 'content-length': b.length, etag: f.etag }).end(b);
    }
    const a = m[1] === '' ? Math.max(0, b.length - Number(m[2])) : Number(m[1]);
    const e = m[1] === '' || m[2] === '' ? b.length - 1 : Math.min(Number(m[2]), b.length - 1);
    if (a > e) return void res.writeHead(416, { ...cors, 'content-range': `bytes */${b.length}` }).end();
    res.writeHead(206, { ...cors, 'content-range': `bytes ${a}-${e}/${b.length}`, 'content-length': e - a + 1, etag: f.etag });
    res.end(b.subarray(a, e + 1));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  project.provide('remoteCheckpointServer', `http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  return async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  };
}
