// SigV4 signatures of the requests a signed remote restore really sends,
// recomputed by botocore (AWS's own Python SDK, Debian's python3-botocore)
// from the method, URL and headers a server received: every signature must
// match, and every header sent (but the connection's) must be signed.
import { execFileSync } from 'node:child_process';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { CheckpointReader, CheckpointWriter, memorySink } from '../bindings/memory/index.js';

function hasBotocore(): boolean {
  try {
    execFileSync('python3', ['-c', 'import botocore.auth'], { stdio: 'ignore' });
    return true;
  } catch {
    const msg = 'missing python3-botocore (AWS SigV4 reference): apt-get install python3-botocore';
    if (process.env.CI === 'true') throw new Error(msg);
    console.warn(`\n*** SKIPPING: ${msg} ***\n`);
    return false;
  }
}

// botocore's S3SigV4Auth, with the request's own x-amz-date instead of the clock (add_auth's steps).
const BOTOCORE = `
import sys, json
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
d = json.load(sys.stdin)
out = []
for r in d['requests']:
    req = AWSRequest(method='GET', url=r['url'], headers=r['headers'])
    auth = S3SigV4Auth(Credentials(d['key'], d['secret'], d['token']), 's3', d['region'])
    req.context['timestamp'] = r['headers']['x-amz-date']
    cr = auth.canonical_request(req)
    out.append(auth.signature(auth.string_to_sign(req, cr), req))
print(json.dumps(out))
`;

describe('remote checkpoints: SigV4 against botocore', () => {
  it.runIf(hasBotocore())('every request of a signed restore carries the signature botocore computes', async () => {
    const mem = new Uint8Array(512 * 4096);
    for (let i = 0; i < mem.length; i += 61) mem[i] = (i >> 3) & 0xff;
    const sink = memorySink();
    const w = await CheckpointWriter.create(sink, { guestSize: mem.length, blockSize: 256 << 10 });
    await w.writePages(0, mem);
    await w.finish();
    const file = Buffer.from(sink.bytes());
    const seen: { url: string; headers: IncomingHttpHeaders }[] = [];
    const server = createServer((req, res) => {
      seen.push({ url: req.url!, headers: req.headers });
      const m = /^bytes=(\d*)-(\d*)$/.exec(String(req.headers.range))!;
      const a = m[1] === '' ? file.length - Number(m[2]) : Number(m[1]);
      const e = m[1] === '' || m[2] === '' ? file.length - 1 : Math.min(Number(m[2]), file.length - 1);
      res.writeHead(206, { 'content-range': `bytes ${a}-${e}/${file.length}`, 'content-length': e - a + 1, etag: '"e1"' });
      res.end(file.subarray(a, e + 1));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    try {
      // A key with a name needing URI encoding, a query, a session token.
      const url = `http://127.0.0.1:${port}/bucket/vm%20one.ckpt?versionId=3`;
      const creds = { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY', sessionToken: 'tok/en+=', region: 'eu-central-1' };
      const r = await CheckpointReader.open(url, { http: { sigv4: creds, suffixBytes: 8192, cacheBytes: 256 << 10 } });
      const out = new Uint8Array(mem.length);
      await r.restoreTo(out, { windowPages: 64 });
      expect(out).toEqual(mem);
      await r.close();
      expect(seen.length).toBeGreaterThan(3);
      const requests = seen.map(({ url: u, headers }) => {
        const auth = String(headers.authorization);
        const signed = /SignedHeaders=([^,]+)/.exec(auth)![1]!.split(';');
        // Every header sent is signed, but the connection's own (and Authorization itself).
        const sent = Object.keys(headers).filter((k) => k !== 'authorization' && k !== 'connection');
        expect(signed).toEqual([...sent].sort());
        expect(headers['if-match']).toBe(signed.includes('if-match') ? '"e1"' : undefined);
        expect(headers['x-amz-security-token']).toBe(creds.sessionToken);
        const h: Record<string, string> = {};
        for (const k of signed) h[k] = String(headers[k]);
        return { url: `http://127.0.0.1:${port}${u}`, headers: h, auth };
      });
      const input = JSON.stringify({ key: creds.accessKeyId, secret: creds.secretAccessKey, token: creds.sessionToken, region: creds.region, requests });
      const sigs = JSON.parse(execFileSync('python3', ['-c', BOTOCORE], { input, encoding: 'utf8' })) as string[];
      expect(sigs.length).toBe(requests.length);
      for (let i = 0; i < sigs.length; i++) {
        expect(requests[i]!.auth).toMatch(/^AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE\/\d{8}\/eu-central-1\/s3\/aws4_request, ?SignedHeaders=/);
        expect(requests[i]!.auth.endsWith(`Signature=${sigs[i]}`)).toBe(true);
      }
      // Requests after the open carry If-Match (signed), so a signature also pins the precondition.
      expect(requests.slice(2).every((q) => q.headers['if-match'] === '"e1"')).toBe(true);
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
});
