// Fuzzing the repository parsers: Packages, Release, deb822, repomd.xml,
// primary.xml, filelists-ext.xml, ar, tar, .deb, rpm headers (.rpm, rpmdb --exportdb), SRI integrity, APT lines, APKINDEX and the decompressors.
// Malformed input must end in a VmkitError (or a clean result), never another
// exception, a hang or unbounded memory. Seeds are valid documents of each
// format, mutated by flips, cuts and insertions, plus arbitrary input.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { parsePackages, parseRelease, parseDeb822, PackagesParser, type PackagesRecord } from '../bindings/attest/sources/deb822.js';
import { parseRepomd, primaryParser, filelistsExtParser } from '../bindings/attest/sources/rpm.js';
import { readAr, readTar, debFileDigests } from '../bindings/attest/_deb.js';
import { _rpmHeaderDigest, parseRpmdbExport, rpmFileDigests } from '../bindings/attest/_rpm.js';
import { parseIntegrity } from '../bindings/attest/sources/npm.js';
import { parseAptLine } from '../bindings/attest/sources/apt.js';
import { parseApkIndex, verifyApkIndex } from '../bindings/attest/sources/apk.js';
import { decompress, decompressChunks } from '../bindings/attest/sources/_io.js';
import { VmkitError } from '../bindings/errors.js';

const enc = new TextEncoder();
const dec = new TextDecoder();

function only(fn: () => unknown): void {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof VmkitError)) throw e;
  }
}
async function onlyAsync(fn: () => Promise<unknown>): Promise<void> {
  try {
    await fn();
  } catch (e) {
    if (!(e instanceof VmkitError)) throw e;
  }
}

/** Mutations of a seed: byte flips, a cut, an insertion of random bytes. */
function mutated(seed: Uint8Array): fc.Arbitrary<Uint8Array> {
  return fc.tuple(
    fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }),
    fc.option(fc.nat()),
    fc.option(fc.tuple(fc.nat(), fc.uint8Array({ maxLength: 16 }))),
  ).map(([flips, cut, ins]) => {
    let b = seed.slice();
    for (const [i, v] of flips) if (b.length) b[i % b.length] = v;
    if (ins) {
      const at = b.length ? ins[0] % b.length : 0;
      b = Uint8Array.from([...b.subarray(0, at), ...ins[1], ...b.subarray(at)]);
    }
    if (cut !== null && b.length) b = b.subarray(0, cut % b.length);
    return b;
  });
}
const textOf = (seed: string): fc.Arbitrary<string> => fc.oneof(mutated(enc.encode(seed)).map((b) => dec.decode(b)), fc.string({ maxLength: 300 }));

const SHA = 'a'.repeat(64);
const PACKAGES = `Package: hello\nVersion: 2.10-3\nArchitecture: amd64\nDepends: libc6 (>= 2.34)\nDescription: hi\n x\n .\n y\nFilename: pool/main/h/hello/hello_2.10-3_amd64.deb\nSize: 53080\nSHA256: ${SHA}\n\nPackage: tree\nVersion: 2.1.0-1\nFilename: pool/t.deb\nSize: 1\nSHA256: ${'b'.repeat(64)}\n`;
const RELEASE = `Origin: Debian\nSuite: stable\nCodename: bookworm\nDate: Sat, 11 Jul 2026 10:16:37 UTC\nValid-Until: Sat, 18 Jul 2026 10:16:37 UTC\nAcquire-By-Hash: yes\nSHA256:\n ${SHA} 3991 main/binary-amd64/Packages\n ${'c'.repeat(64)}  2068 main/binary-amd64/Packages.xz\n`;
const REPOMD = `<?xml version="1.0" encoding="UTF-8"?>\n<repomd xmlns="http://linux.duke.edu/metadata/repo"><revision>1</revision><data type="primary"><checksum type="sha256">${SHA}</checksum><open-checksum type="sha256">${SHA}</open-checksum><location href="repodata/x-primary.xml.gz"/><size>645</size></data></repomd>`;
const PRIMARY = `<?xml version="1.0"?>\n<metadata xmlns="http://linux.duke.edu/metadata/common" xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="1"><package type="rpm"><name>bash</name><arch>x86_64</arch><version epoch="0" ver="5.2" rel="1"/><checksum type="sha256" pkgid="YES">${SHA}</checksum><location href="b.rpm"/><format><rpm:provides><rpm:entry name="bash"/></rpm:provides><file>/usr/bin/bash</file></format></package></metadata>`;

function tarHeader(name: string, size: number, type = '0'): Uint8Array {
  const h = new Uint8Array(512);
  h.set(enc.encode(name), 0);
  h.set(enc.encode('0000644\0'), 100);
  h.set(enc.encode(size.toString(8).padStart(11, '0') + '\0'), 124);
  h.set(enc.encode('        '), 148);
  h[156] = type.charCodeAt(0);
  h.set(enc.encode('ustar\0' + '00'), 257);
  let sum = 0;
  for (const b of h) sum += b;
  h.set(enc.encode(sum.toString(8).padStart(6, '0') + '\0 '), 148);
  return h;
}
function tar(files: [string, Uint8Array][]): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const [n, d] of files) {
    parts.push(tarHeader(n, d.length), d, new Uint8Array((512 - (d.length % 512)) % 512));
  }
  parts.push(new Uint8Array(1024));
  return concat(parts);
}
function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
function ar(members: [string, Uint8Array][]): Uint8Array {
  const parts: Uint8Array[] = [enc.encode('!<arch>\n')];
  for (const [n, d] of members) {
    parts.push(enc.encode(n.padEnd(16) + '0'.padEnd(12) + '0'.padEnd(6) + '0'.padEnd(6) + '100644'.padEnd(8) + String(d.length).padEnd(10) + '`\n'), d);
    if (d.length & 1) parts.push(enc.encode('\n'));
  }
  return concat(parts);
}
async function gzip(b: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await new Response(new Blob([b as Uint8Array<ArrayBuffer>]).stream().pipeThrough(new CompressionStream('gzip'))).arrayBuffer());
}

/** An rpm header structure (magic, index, store) of [tag, type, value] entries, as rpm lays it out. */
function rpmHeader(entries: [number, number, string | string[] | number[]][]): Uint8Array {
  const store: number[] = [];
  const index: number[][] = [];
  for (const [tag, type, v] of entries) {
    const align = type === 3 ? 2 : type === 4 ? 4 : 1;
    while (store.length % align) store.push(0);
    const at = store.length;
    if (type === 6 || type === 8) for (const x of (Array.isArray(v) ? v : [v]) as string[]) store.push(...enc.encode(x), 0);
    else for (const n of v as number[]) for (let k = align - 1; k >= 0; k--) store.push((n >>> (8 * k)) & 0xff);
    index.push([tag, type, at, type === 6 ? 1 : (v as unknown[]).length]);
  }
  const out = new Uint8Array(16 + index.length * 16 + store.length);
  const dv = new DataView(out.buffer);
  out.set([0x8e, 0xad, 0xe8, 0x01]);
  dv.setUint32(8, index.length);
  dv.setUint32(12, store.length);
  index.forEach((e, i) => e.forEach((x, j) => dv.setUint32(16 + i * 16 + j * 4, x)));
  out.set(store, 16 + index.length * 16);
  return out;
}
const RPM_MAIN = rpmHeader([
  [1000, 6, 'tool'], [1001, 6, '2.0'], [1002, 6, '1'], [1003, 4, [1]], [1022, 6, 'noarch'],
  [1029, 1, [0, 0, 0]], [1030, 3, [0o100755, 0o100644, 0o100644]], [1035, 8, [SHA, 'b'.repeat(64), '']], [1037, 4, [0, 1, 64]],
  [1116, 4, [0, 1, 2]], [1117, 8, ['tool', 'tool.conf', 'tool.log']], [1118, 8, ['/usr/bin/', '/etc/', '/var/log/']], [5011, 4, [8]],
]);
async function rpmOf(main: Uint8Array): Promise<Uint8Array> {
  const lead = new Uint8Array(96);
  lead.set([0xed, 0xab, 0xee, 0xdb]);
  const hex = [...new Uint8Array(await crypto.subtle.digest('SHA-256', main as Uint8Array<ArrayBuffer>))].map((b) => b.toString(16).padStart(2, '0')).join('');
  const sig = rpmHeader([[273, 6, hex]]);
  return concat([lead, sig, new Uint8Array((8 - (sig.length % 8)) % 8), main]);
}

describe('repository parser fuzzing', () => {
  it('seeds parse', async () => {
    const got: string[] = [];
    expect(parsePackages(PACKAGES, (r) => got.push(`${r.package} ${r.version} ${r.size} ${new TextDecoder().decode(r.hex.subarray(r.sha256At, r.sha256At + 64))}`))).toBe(2);
    expect(got).toEqual([`hello 2.10-3 53080 ${SHA}`, `tree 2.1.0-1 1 ${'b'.repeat(64)}`]);
    const rel = parseRelease(RELEASE);
    expect(rel.files.get('main/binary-amd64/Packages.xz')).toEqual({ sha256: 'c'.repeat(64), size: 2068 });
    expect(rel.validUntil?.toISOString()).toBe('2026-07-18T10:16:37.000Z');
    expect(rel.acquireByHash).toBe(true);
    expect(parseDeb822(PACKAGES)[0]!.get('Description')).toBe('hi\nx\n\ny');
    expect(parseRepomd(REPOMD)[0]).toMatchObject({ type: 'primary', location: 'repodata/x-primary.xml.gz', size: 645 });
    const pk: string[] = [];
    const pp = primaryParser((p) => pk.push(`${p.name} ${p.version} ${p.arch} ${p.checksum.hex}`));
    pp.write(PRIMARY.slice(0, 100));
    pp.write(PRIMARY.slice(100));
    expect(pp.close()).toBe(1);
    expect(pk).toEqual([`bash 5.2-1 x86_64 ${SHA}`]);
    const t = tar([['./usr/bin/x', enc.encode('hello')], ['./etc/y', new Uint8Array(600)]]);
    expect(readTar(t).map((f) => [f.path, f.data.length])).toEqual([['/usr/bin/x', 5], ['/etc/y', 600]]);
    const deb = ar([['debian-binary', enc.encode('2.0\n')], ['control.tar.gz', new Uint8Array(3)], ['data.tar.gz', await gzip(t)]]);
    expect(readAr(deb).map((m) => m.name)).toEqual(['debian-binary', 'control.tar.gz', 'data.tar.gz']);
    const files = await debFileDigests(deb);
    expect(files.get('/usr/bin/x')).toBe('2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824');
    const rpm = await rpmOf(RPM_MAIN);
    expect([...rpmFileDigests(rpm)].map(([p, d]) => [p, d.alg, d.hex])).toEqual([['/usr/bin/tool', 'sha256', SHA], ['/etc/tool.conf', 'sha256', 'b'.repeat(64)]]);
    expect(_rpmHeaderDigest(rpm)).toMatchObject({ alg: 'sha256', start: rpm.length - RPM_MAIN.length, end: rpm.length });
    expect(parseRpmdbExport(concat([RPM_MAIN, RPM_MAIN])).map((p) => [p.name, p.version, p.arch, p.files.map((f) => `${f.path} ${f.mode.toString(8)} ${f.flags} ${f.state}`)])).toEqual(
      Array(2).fill(['tool', '1:2.0-1', 'noarch', ['/usr/bin/tool 100755 0 0', '/etc/tool.conf 100644 1 0', '/var/log/tool.log 100644 64 0']]),
    );
    expect(parseIntegrity('sha1-AAAAAAAAAAAAAAAAAAAAAAAAAAA= sha512-' + 'A'.repeat(86) + '==')?.alg).toBe('sha512');
  });

  it('Packages, Release and deb822 text', () => {
    fc.assert(
      fc.property(textOf(PACKAGES), textOf(RELEASE), (p, r) => {
        only(() => parsePackages(p, () => {}));
        only(() => parseDeb822(p));
        only(() => parseRelease(r));
        only(() => parseRelease(p));
      }),
      { numRuns: 400 },
    );
  });

  it('PackagesParser fed in chunks cut anywhere gives what parsePackages gives for the whole text, errors included', () => {
    const rec = (out: string[]) => (r: PackagesRecord) =>
      out.push(`${r.package}|${r.version}|${r.architecture}|${r.filename}|${r.size}|${dec.decode(r.hex.subarray(r.sha256At, r.sha256At + 64))}`);
    const outcome = (run: (out: string[]) => number): string => {
      const out: string[] = [];
      try {
        return `${run(out)} ${out.join(';')}`;
      } catch (e) {
        if (!(e instanceof VmkitError)) throw e;
        return `${e.code} at ${(e as VmkitError & { offset?: number }).offset} ${out.join(';')}`;
      }
    };
    // UTF-8 values, CRLF lines, blank-line variants: the seeds of the mutations.
    const seed = PACKAGES + '\nPackage: jörg\r\nVersion: 1\r\nFilename: p/ö.deb\r\nSize: 7\r\nSHA256: ' + 'C'.repeat(64) + '\r\n \t\nPackage: z\nVersion: 2\nFilename: z\nSize: 0\nSHA256: ' + 'd'.repeat(64);
    fc.assert(
      fc.property(textOf(seed), fc.array(fc.nat(), { maxLength: 12 }), (text, cuts) => {
        const bytes = enc.encode(text);
        const at = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
        const whole = outcome((out) => parsePackages(text, rec(out)));
        const chunked = outcome((out) => {
          const p = new PackagesParser(rec(out));
          let o = 0;
          for (const c of [...at, bytes.length]) {
            p.push(bytes.slice(o, c));
            o = c;
          }
          return p.end();
        });
        expect(chunked).toBe(whole);
      }),
      { numRuns: 400 },
    );
  });

  it('repomd.xml and primary.xml', () => {
    fc.assert(
      fc.property(textOf(REPOMD), textOf(PRIMARY), fc.nat(), (r, p, split) => {
        only(() => parseRepomd(r));
        only(() => {
          const pp = primaryParser(() => {});
          const at = p.length ? split % p.length : 0;
          pp.write(p.slice(0, at));
          pp.write(p.slice(at));
          pp.close();
        });
      }),
      { numRuns: 400 },
    );
  });

  it('filelists-ext.xml', () => {
    const FLX =
      '<?xml version="1.0" encoding="UTF-8"?>\n<filelists-ext xmlns="http://linux.duke.edu/metadata/filelists-ext" packages="1">\n' +
      `<package pkgid="${SHA}" name="bash" arch="x86_64">\n  <version epoch="0" ver="5.2" rel="1"/>\n  <checksum type="sha256"/>\n` +
      `  <file type="dir">/etc/skel</file>\n  <file hash="${'d'.repeat(64)}">/usr/bin/bash</file>\n</package>\n</filelists-ext>\n`;
    const seen: string[] = [];
    const fp = filelistsExtParser((f) => seen.push(`${f.alg} ${f.path} ${f.hex.length}`));
    fp.write(FLX);
    expect(fp.close()).toBe(1);
    expect(seen).toEqual(['sha256 /usr/bin/bash 64']);
    fc.assert(
      fc.property(textOf(FLX), fc.nat(), (x, split) => {
        only(() => {
          const q = filelistsExtParser((f) => {
            expect(typeof f.path).toBe('string');
            expect(f.hex).toMatch(/^[0-9a-f]+$/);
          });
          const at = x.length ? split % x.length : 0;
          q.write(x.slice(0, at));
          q.write(x.slice(at));
          q.close();
        });
      }),
      { numRuns: 300 },
    );
  });

  it('ar, tar and .deb', async () => {
    const t = tar([['./usr/bin/x', enc.encode('hello')], ['./etc/y', new Uint8Array(600)]]);
    const deb = ar([['debian-binary', enc.encode('2.0\n')], ['data.tar', t]]);
    const debGz = ar([['debian-binary', enc.encode('2.0\n')], ['data.tar.gz', await gzip(t)]]);
    fc.assert(
      fc.property(fc.oneof(mutated(t), fc.uint8Array({ maxLength: 2048 })), mutated(deb), (tb, db) => {
        only(() => readTar(tb));
        only(() => readAr(db));
      }),
      { numRuns: 400 },
    );
    await fc.assert(
      fc.asyncProperty(fc.oneof(mutated(deb), mutated(debGz)), async (db) => {
        await onlyAsync(() => debFileDigests(db, { maxBytes: 1 << 20 }));
      }),
      { numRuns: 150 },
    );
  });

  it('rpm headers: .rpm file digests and header digest, rpmdb --exportdb', async () => {
    const rpm = await rpmOf(RPM_MAIN);
    fc.assert(
      fc.property(fc.oneof(mutated(rpm), fc.uint8Array({ maxLength: 1024 })), fc.oneof(mutated(concat([RPM_MAIN, RPM_MAIN])), fc.uint8Array({ maxLength: 512 })), (r, x) => {
        only(() => rpmFileDigests(r));
        only(() => _rpmHeaderDigest(r));
        only(() => parseRpmdbExport(x));
        only(() => parseRpmdbExport(x, 1));
      }),
      { numRuns: 600 },
    );
  });

  it('decompressors: garbage is CORRUPT, bombs are LIMIT', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 300 }), fc.constantFrom('gz' as const, 'xz' as const, 'zst' as const), async (b, kind) => {
        await onlyAsync(() => decompress(b, kind, 1 << 16, 'fuzz'));
        await onlyAsync(async () => {
          for await (const c of decompressChunks(b, kind, 1 << 16, 'fuzz')) void c;
        });
      }),
      { numRuns: 150 },
    );
    const bomb = await gzip(new Uint8Array(4 << 20));
    const e = await decompress(bomb, 'gz', 1 << 20, 'bomb').catch((x: unknown) => x);
    expect(e).toBeInstanceOf(VmkitError);
    expect((e as VmkitError).code).toBe('LIMIT');
    // A zstd frame header declaring 2^40 bytes of content.
    const zst = Uint8Array.from([0x28, 0xb5, 0x2f, 0xfd, 0xe0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0]);
    const z = await decompress(zst, 'zst', 1 << 20, 'zst bomb').catch((x: unknown) => x);
    expect((z as VmkitError).code).toBe('LIMIT');
  });

  it('APKINDEX text and APKINDEX.tar.gz', async () => {
    const index = `C:Q1${btoa(String.fromCharCode(...new Uint8Array(20).fill(9)))}\nP:musl\nV:1.2.5-r0\nA:x86_64\nS:1\n\nC:Q1AAAA\nP:x\nV:1\n\n`;
    fc.assert(
      fc.property(textOf(index), (t) => {
        for (const r of parseApkIndex(t)) expect(r.checksum.hex).toMatch(/^[0-9a-f]{40}$/);
      }),
      { numRuns: 300 },
    );
    // Signature member (a cut tar) + control member, as abuild-sign lays them out.
    const sig = tar([['.SIGN.RSA.k.rsa.pub', new Uint8Array(256).fill(7)]]).subarray(0, 1024);
    const seed = concat([await gzip(sig), await gzip(tar([['DESCRIPTION', enc.encode('v3')], ['APKINDEX', enc.encode(index)]]))]);
    await fc.assert(
      fc.asyncProperty(fc.oneof(mutated(seed), fc.uint8Array({ maxLength: 600 })), async (b) => {
        await onlyAsync(() => verifyApkIndex(b, [], { allowUnsigned: true, maxBytes: 1 << 20 }));
        await onlyAsync(() => verifyApkIndex(b, { 'k.rsa.pub': 'no key' }));
      }),
      { numRuns: 150 },
    );
    expect((await verifyApkIndex(seed, [], { allowUnsigned: true })).records.map((r) => r.name)).toEqual(['musl']);
  });

  it('SRI strings and APT lines', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 200 }), textOf('deb [arch=amd64 signed-by=/k.gpg] http://deb.debian.org/debian bookworm main contrib'), (s, line) => {
        const d = parseIntegrity(s);
        if (d) expect(d.hex).toMatch(/^[0-9a-f]+$/);
        only(() => parseAptLine(line));
      }),
      { numRuns: 400 },
    );
  });
});
