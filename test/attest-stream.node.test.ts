// Packages files streamed into the index as they arrive (bindings/attest/sources/_verified-stream.ts):
// through the system's `xz -dc` (inputs of 256 KiB and more) and through the in-process decoders,
// a file that is not the signed one is INTEGRITY even when the decoder or parser fails first or when
// the mismatch only shows at the end, a signed but broken file is CORRUPT, and in every failure the
// index in use stays and nothing of the new file is used. The repository is served unsigned here
// (allowUnsigned: the release file's SHA256 list is still enforced) so each spec can write its own.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { gzipSync } from 'node:zlib';
import { AptSource } from '../bindings/attest/index.js';
import { _useSystemXz } from '../bindings/attest/sources/_io.js';
import { VmkitError } from '../bindings/errors.js';
import { needTool } from './_tools.js';

const ready = needTool('xz', 'xz-utils');

/** A Packages text of n paragraphs named <prefix>N, with random (incompressible) SHA256 values. */
function packages(prefix: string, n: number): { text: string; sha: Map<string, string> } {
  const sha = new Map<string, string>();
  const parts: string[] = [];
  for (let i = 0; i < n; i++) {
    const h = randomBytes(32).toString('hex');
    sha.set(`${prefix}${i}`, h);
    // Fields the index skips (and a UTF-8 one) around the ones it keeps, as in Debian's files.
    parts.push(`Package: ${prefix}${i}\nSource: src${i % 7}\nVersion: 1:${i}.0-${i % 3}\nInstalled-Size: ${i}\nMaintainer: Jörg Ünïcode <j@example.org>\n` +
      `Architecture: amd64\nDepends: libc6 (>= 2.36)\nDescription: package number ${i}\nFilename: pool/main/${prefix}${i}_${i}_amd64.deb\nSize: ${1000 + i}\n` +
      `MD5sum: ${randomBytes(16).toString('hex')}\nSHA256: ${h}\n\n`);
  }
  return { text: parts.join(''), sha };
}

const xz = (text: string | Uint8Array): Buffer => execFileSync('xz', ['-c', '-6'], { input: text, maxBuffer: 1 << 28 });
const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const release = (files: { path: string; body: Uint8Array; sha?: string; size?: number }[]): string =>
  `Origin: test\nSuite: stable\nCodename: bookworm\nSHA256:\n${files.map((f) => ` ${f.sha ?? sha256(f.body)} ${f.size ?? f.body.length} ${f.path}`).join('\n')}\n`;

async function refused(p: Promise<unknown>, code: string): Promise<VmkitError> {
  const e = await p.then(() => undefined, (x: unknown) => x);
  expect(e, `expected ${code}`).toBeInstanceOf(VmkitError);
  expect((e as VmkitError).code, (e as Error).message).toBe(code);
  return e as VmkitError;
}

describe.runIf(ready)('Packages streamed into the index', () => {
  let server: Server;
  let url = '';
  const files = new Map<string, Uint8Array>();
  const hits = new Map<string, number>();
  // Paths answered oddly: a body longer than its file (chunked, no length), or cut mid-way.
  const cutOrLong = new Map<string, { body: Uint8Array; cut: boolean }>();
  // Paths answered with these bodies in turn, one per request (then as files says).
  const inTurn = new Map<string, Uint8Array[]>();
  beforeAll(async () => {
    server = createServer((q, r) => {
      hits.set(q.url ?? '', (hits.get(q.url ?? '') ?? 0) + 1);
      const odd = cutOrLong.get(q.url ?? '');
      if (odd && odd.cut) {
        r.writeHead(200, { 'content-length': odd.body.length });
        r.write(odd.body.subarray(0, odd.body.length >> 1), () => setTimeout(() => r.socket?.destroy(), 50));
        return;
      }
      if (odd) return void r.writeHead(200).end(odd.body);
      const b = inTurn.get(q.url ?? '')?.shift() ?? files.get(q.url ?? '');
      if (!b) return void r.writeHead(404).end();
      r.writeHead(200, { 'content-length': b.length }).end(b);
    });
    // Long keep-alive: a pooled connection the server closes between two slow specs fails a fetch.
    server.keepAliveTimeout = 120_000;
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  });
  afterAll(async () => {
    _useSystemXz(true);
    await new Promise((r) => server.close(r));
  });
  const DIST = '/debian/dists/bookworm/';
  const serve = (rel: string, index: Record<string, Uint8Array>) => {
    files.clear();
    hits.clear();
    files.set(DIST + 'InRelease', new TextEncoder().encode(rel));
    for (const [p, b] of Object.entries(index)) files.set(DIST + p, b);
  };
  const source = () => new AptSource(`deb ${url}/debian bookworm main`, { allowUnsigned: true });
  const XZ = 'main/binary-amd64/Packages.xz';

  // 12 000 paragraphs: about 0.5 MiB of xz (random digests do not compress), past the 256 KiB where
  // the system xz takes over; the wasm decoder is the other path.
  const big = packages('p', 12_000);
  const bigXz = xz(big.text);

  for (const system of [true, false]) {
    const via = system ? 'system xz' : 'in-process xz';
    it(`indexes every package of a large Packages.xz (${via}), the same digests as the text says`, async () => {
      expect(bigXz.length).toBeGreaterThan(256 << 10);
      _useSystemXz(system);
      serve(release([{ path: XZ, body: bigXz }]), { [XZ]: bigXz });
      const src = source();
      try {
        expect((await src.refresh()).packages).toBe(12_000);
        const names = [...big.sha.keys()];
        const found = src.lookupMany('sha256', names.map((n) => big.sha.get(n)!));
        expect(found.map((l) => l?.[0]?.package)).toEqual(names);
        expect(src.lookupPackage('p11999')[0]!.provenance).toMatchObject({ version: '1:11999.0-2', architecture: 'amd64' });
      } finally {
        src.close();
      }
    });

    it(`a file cut mid-way (${via}): CORRUPT when the release signs the cut file, INTEGRITY when it signs the whole; the old index stays`, async () => {
      _useSystemXz(system);
      const old = packages('old', 50);
      const oldXz = xz(old.text);
      serve(release([{ path: XZ, body: oldXz }]), { [XZ]: oldXz });
      const src = source();
      try {
        await src.refresh();
        const cut = bigXz.subarray(0, bigXz.length >> 1);
        // Signed as cut: the hash matches, the xz stream ends early.
        serve(release([{ path: XZ, body: cut }]), { [XZ]: cut });
        const e = await refused(src.refresh(), 'CORRUPT');
        expect(e.message).toMatch(/xz/);
        // The whole file signed, half of it served: not the signed file.
        serve(release([{ path: XZ, body: bigXz }]), { [XZ]: cut });
        await refused(src.refresh(), 'INTEGRITY');
        // Bytes flipped in the middle (the decoder fails long before the end of the body).
        const flipped = Buffer.from(bigXz);
        for (let i = flipped.length >> 1; i < (flipped.length >> 1) + 64; i++) flipped[i]! ^= 0x5a;
        serve(release([{ path: XZ, body: bigXz }]), { [XZ]: flipped });
        await refused(src.refresh(), 'INTEGRITY');
        // Nothing of the new files is used: the old index answers, none of the streamed packages were kept.
        expect(src.lookupPackage('old7').length).toBe(1);
        expect(src.lookupPackage('p1')).toEqual([]);
        expect(src.lookupMany('sha256', [big.sha.get('p1')!])[0]).toBeUndefined();
        expect(src.size).toBe(50);
      } finally {
        src.close();
      }
    });
  }

  for (const system of [true, false]) {
    it(`a body longer than signed is INTEGRITY and a body cut by the server is NETWORK, not a hang (${system ? 'system' : 'in-process'} xz)`, async () => {
      _useSystemXz(system);
      const src = source();
      try {
        // The signed size is the whole file; the server sends it and more (no content-length).
        serve(release([{ path: XZ, body: bigXz }]), {});
        files.set(DIST + XZ, new Uint8Array(0));
        cutOrLong.set(DIST + XZ, { body: Buffer.concat([bigXz, randomBytes(4096)]), cut: false });
        const e = await refused(src.refresh(), 'INTEGRITY');
        expect(e.message).toMatch(/longer than the \d+ bytes/);
        // Half the body, then the connection closes (content-length promised the whole).
        cutOrLong.set(DIST + XZ, { body: bigXz, cut: true });
        await refused(src.refresh(), 'NETWORK');
        expect(src.size).toBe(0);
      } finally {
        cutOrLong.clear();
        src.close();
      }
    });
  }

  it('a Packages.xz prefetched beside the release file but not the one it signs: discarded, the signed file fetched again; INTEGRITY when that differs too', async () => {
    const forged = packages('evil', 3000);
    const forgedXz = xz(forged.text);
    // The first request (the prefetch, started before the release file is read) gets other bytes; the refetch the signed ones.
    serve(release([{ path: XZ, body: bigXz }]), { [XZ]: bigXz });
    inTurn.set(DIST + XZ, [forgedXz]);
    let src = source();
    try {
      expect((await src.refresh()).packages).toBe(12_000);
      expect(hits.get(DIST + XZ)).toBe(2);
      expect(src.lookupPackage('evil5')).toEqual([]);
      expect(src.lookupMany('sha256', [forged.sha.get('evil5')!])[0]).toBeUndefined();
      expect(src.lookupMany('sha256', [big.sha.get('p5')!])[0]?.[0]?.package).toBe('p5');
    } finally {
      src.close();
    }
    // Same size as signed, other bytes, served to the prefetch and the refetch alike: refused, nothing of it indexed.
    const forgedBig = xz(packages('evil', 12_000).text);
    serve(release([{ path: XZ, body: bigXz, size: forgedBig.length }]), { [XZ]: forgedBig });
    src = source();
    try {
      await refused(src.refresh(), 'INTEGRITY');
      expect(hits.get(DIST + XZ)).toBe(2);
      expect(src.size).toBe(0);
      expect(src.lookupPackage('evil5')).toEqual([]);
    } finally {
      src.close();
      inTurn.clear();
    }
    // And a prefetch of the signed bytes is kept: one request, not two.
    serve(release([{ path: XZ, body: bigXz }]), { [XZ]: bigXz });
    src = source();
    try {
      expect((await src.refresh()).packages).toBe(12_000);
      expect(hits.get(DIST + XZ)).toBe(1);
    } finally {
      src.close();
    }
  });

  it('a mismatch found only at the end: the whole forged file parses, yet INTEGRITY and nothing of it used', async () => {
    const old = packages('old', 20);
    const oldXz = xz(old.text);
    serve(release([{ path: XZ, body: oldXz }]), { [XZ]: oldXz });
    const src = source();
    try {
      await src.refresh();
      const forged = packages('evil', 12_000);
      const forgedXz = xz(forged.text);
      // Same size as signed, other bytes: only the hash at the end tells.
      serve(release([{ path: XZ, body: bigXz, size: forgedXz.length }]), { [XZ]: forgedXz });
      const e = await refused(src.refresh(), 'INTEGRITY');
      expect(e.message).toMatch(/SHA256/);
      expect(src.lookupPackage('evil5')).toEqual([]);
      expect(src.lookupMany('sha256', [forged.sha.get('evil5')!])[0]).toBeUndefined();
      expect(src.lookupPackage('old3').length).toBe(1);
      // And once the signed file is served, it is indexed.
      serve(release([{ path: XZ, body: bigXz }]), { [XZ]: bigXz });
      expect((await src.refresh()).packages).toBe(12_000);
    } finally {
      src.close();
    }
  });

  it('a parse error mid-stream: CORRUPT (with its byte offset) when signed, INTEGRITY when not; gzip and plain stream too', async () => {
    const good = packages('g', 3000);
    const at = good.text.indexOf('Package: g1500\n');
    const bad = good.text.slice(0, at) + 'Package g1500 without a colon\n' + good.text.slice(at);
    for (const [path, pack] of [[XZ, (t: string) => xz(t)], ['main/binary-amd64/Packages.gz', (t: string) => gzipSync(t)], ['main/binary-amd64/Packages', (t: string) => Buffer.from(t)]] as const) {
      const body = pack(bad);
      serve(release([{ path, body }]), { [path]: body });
      const src = source();
      const e = await refused(src.refresh(), 'CORRUPT');
      expect(e.message).toMatch(/not "Field: value"/);
      expect(e.offset).toBe(Buffer.byteLength(good.text.slice(0, at)));
      serve(release([{ path, body: pack(good.text) }]), { [path]: body });
      await refused(src.refresh(), 'INTEGRITY');
      serve(release([{ path, body: pack(good.text) }]), { [path]: pack(good.text) });
      expect((await src.refresh()).packages).toBe(3000);
      src.close();
    }
  });
});
