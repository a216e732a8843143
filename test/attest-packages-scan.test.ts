// The core's Packages scanner (assembly/packages_scan.ts through
// bindings/attest/sources/_packages-scan.ts) against the JS parser it replaces
// on the index path (PackagesParser): the same records for any text cut into
// any chunks, the same error code at the same byte offset, its own limits as
// LIMIT; fuzzed with random, truncated and hostile text, never a trap or an
// exception other than a VmkitError. The raw exports' contract is checked too.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { PackagesParser, type PackagesRecord } from '../bindings/attest/sources/deb822.js';
import { _CorePackagesParser, type PackagesScanRecord } from '../bindings/attest/sources/_packages-scan.js';
import { core } from '../bindings/core.js';
import { VmkitError } from '../bindings/errors.js';

const enc = new TextEncoder();
const dec = new TextDecoder();
const HEX = /^[0-9a-fA-F]{64}$/;

const PACKAGES =
  `Package: hello\nVersion: 2.10-3\nArchitecture: amd64\nDepends: libc6 (>= 2.34)\nDescription: hi\n x\n .\n y\nFilename: pool/main/h/hello/hello_2.10-3_amd64.deb\nSize: 53080\nSHA256: ${'a'.repeat(64)}\n\n` +
  `Package: tree\nVersion: 2.1.0-1\nFilename: pool/t.deb\nSize: 1\nSHA256: ${'b'.repeat(64)}\n` +
  `\nPackage: jörg\r\nVersion: 1\r\nArchitecture: all\r\nFilename: p/ö.deb\r\nSize: 7\r\nSHA256: ${'C'.repeat(64)}\r\n \t\n` +
  `Package: z\nVersion: 2\nFilename: z\nSize: 0\nSHA256: ${'d'.repeat(64)}`;

interface Outcome {
  records: string[];
  error?: { code: string; offset: number | bigint | undefined; message: string };
}

const jsLine = (r: PackagesRecord): string =>
  `${r.package}|${r.version}|${r.architecture}|${r.filename}|${r.size}|${dec.decode(r.hex.subarray(r.sha256At, r.sha256At + 64)).toLowerCase()}`;
const coreLine = (r: PackagesScanRecord): string =>
  `${r.package}|${r.version}|${r.architecture}|${dec.decode(r.text.subarray(r.filenameAt, r.filenameAt + r.filenameLength))}|${r.size}|${[...r.digest.subarray(r.digestAt, r.digestAt + 32)].map((b) => b.toString(16).padStart(2, '0')).join('')}`;

function run(parser: { push(c: Uint8Array): void; end(): number }, bytes: Uint8Array, cuts: number[], out: string[]): Outcome {
  try {
    let o = 0;
    for (const c of [...cuts, bytes.length]) {
      parser.push(bytes.slice(o, c));
      o = c;
    }
    const n = parser.end();
    expect(n).toBe(out.length);
    return { records: out };
  } catch (e) {
    if (!(e instanceof VmkitError)) throw e;
    return { records: out, error: { code: e.code, offset: e.offset, message: e.message } };
  }
}

function viaJs(bytes: Uint8Array, cuts: number[] = []): Outcome {
  const out: string[] = [];
  return run(new PackagesParser((r) => out.push(jsLine(r))), bytes, cuts, out);
}
function viaCore(bytes: Uint8Array, cuts: number[] = []): Outcome {
  const out: string[] = [];
  return run(new _CorePackagesParser((r) => out.push(coreLine(r))), bytes, cuts, out);
}

/**
 * The core's outcome must be the JS parser's, with one difference by design:
 * the core checks that SHA256 is hex where it reads it (the JS path leaves that
 * to DigestIndex.addPackageSha256, after the paragraph), so a non-hex SHA256
 * makes the core fail at that line, before the JS parser's error if any.
 */
function agree(bytes: Uint8Array, cuts: number[]): void {
  const js = viaJs(bytes);
  const c = viaCore(bytes, cuts);
  expect(c.error?.code).not.toBe('CORE_TRAP');
  if (c.error && /SHA256 is not 64 hex digits/.test(c.error.message) && c.error.offset !== js.error?.offset) {
    // The line at the offset is a SHA256 line of 64 characters that are not all hex.
    const at = Number(c.error.offset);
    const line = dec.decode(bytes.subarray(at, bytes.indexOf(10, at) < 0 ? bytes.length : bytes.indexOf(10, at)));
    const m = /^SHA256:[ \t]*([^]*?)[ \t]*\r?$/.exec(line);
    expect(m, line).not.toBeNull();
    expect(HEX.test(m![1]!)).toBe(false);
    // Everything before it agrees.
    expect(js.records.slice(0, c.records.length)).toEqual(c.records);
    return;
  }
  if (!js.error && js.records.some((l) => !HEX.test(l.slice(l.lastIndexOf('|') + 1)))) {
    throw new Error('the JS parser passed a non-hex SHA256 that the core did not refuse');
  }
  // Messages may word the same error differently; code, offset and records agree.
  const same = (o: Outcome) => ({ records: o.records, code: o.error?.code, offset: o.error?.offset });
  expect(same(c)).toEqual(same(js));
}

describe('core Packages scanner', () => {
  it('gives the records the JS parser gives, UTF-8, CRLF and blank-line variants included', () => {
    const bytes = enc.encode(PACKAGES);
    const c = viaCore(bytes);
    expect(c.error).toBeUndefined();
    expect(c.records).toHaveLength(4);
    expect(c.records[2]).toBe(`jörg|1|all|p/ö.deb|7|${'c'.repeat(64)}`);
    expect(c.records[1]).toBe(`tree|2.1.0-1|undefined|pool/t.deb|1|${'b'.repeat(64)}`);
    expect(c).toEqual(viaJs(bytes));
  });

  it('gives the same records for every cut of the text into two and three chunks', () => {
    const bytes = enc.encode(PACKAGES);
    const want = viaJs(bytes);
    for (let a = 0; a <= bytes.length; a++) {
      expect(viaCore(bytes, [a])).toEqual(want);
      expect(viaCore(bytes, [a, Math.min(bytes.length, a + 37)])).toEqual(want);
    }
  });

  it('fails with the JS parser\'s code at its byte offset for each kind of malformed paragraph', () => {
    const ok = `Package: a\nVersion: 1\nFilename: f\nSize: 1\nSHA256: ${'e'.repeat(64)}\n\n`;
    const cases: [string, RegExp][] = [
      [' x\n', /continuation line outside a paragraph/],
      ['Package a\n', /line is not "Field: value"/],
      [': a\n', /line is not "Field: value"/],
      ['Package: a\nPackage: b\n', /field "Package" repeated/],
      ['Package: a\nVersion: \t\n', /field "Version" is empty/],
      ['Package: a\nSize: 12x\n', /Size is not a number/],
      ['Package: a\nSize: 1234567890123456\n', /Size is not a number/],
      ['Package: a\nSHA256: abc\n', /SHA256 is not 64 hex digits/],
      ['Package: a\nVersion: 1\n\n', /paragraph lacks Filename, Size, SHA256/],
      ['Version: 1\nFilename: f\nSize: 1\nSHA256: ' + 'f'.repeat(64), /paragraph lacks Package/],
    ];
    for (const [bad, msg] of cases) {
      const bytes = enc.encode(ok + bad);
      const c = viaCore(bytes);
      expect(c.error?.message, bad).toMatch(msg);
      expect(c.error?.code).toBe('CORRUPT');
      expect(c.error?.offset, bad).toBe(viaJs(bytes).error?.offset);
      // The paragraph before the error was delivered first.
      expect(c.records).toHaveLength(1);
      for (let cut = 0; cut <= bytes.length; cut += 7) expect(viaCore(bytes, [cut])).toEqual(c);
    }
  });

  it('refuses a SHA256 that is not hex where it reads it', () => {
    const bytes = enc.encode(`Package: a\nVersion: 1\nFilename: f\nSize: 1\nSHA256: ${'g'.repeat(64)}\n`);
    const c = viaCore(bytes);
    expect(c.error).toMatchObject({ code: 'CORRUPT', offset: 42 });
    expect(viaJs(bytes).error).toBeUndefined(); // the JS path refuses it later, in DigestIndex
    // Characters one case-fold from a digit or a letter (0x10..0x19 | 0x20 is '0'..'9'; '@', '`', 'G').
    for (const bad of ['\x11', '\x19', '@', '`', 'G', 'g', '/', ':', '\xff']) {
      for (const at of [0, 17, 31, 32, 47, 63]) {
        const hex = 'e'.repeat(at) + bad + 'e'.repeat(63 - at);
        const b = enc.encode(`Package: a\nVersion: 1\nFilename: f\nSize: 1\nSHA256: ${hex}\n`);
        const c = viaCore(b);
        expect(c.error, JSON.stringify(bad) + at).toMatchObject({ code: 'CORRUPT', offset: 42 });
      }
    }
  });

  it('takes long lines it does not keep, and answers LIMIT for a line past its buffer or a kept value past 1024 bytes', () => {
    const para = (extra: string): Uint8Array => enc.encode(`Package: a\nDescription: ${extra}\nVersion: 1\nFilename: f\nSize: 1\nSHA256: ${'e'.repeat(64)}\n`);
    const long = viaCore(para('x'.repeat(200_000)), [1000, 70_000, 140_000]);
    expect(long.error).toBeUndefined();
    expect(long.records).toEqual(viaJs(para('x'.repeat(200_000))).records);
    const tooLong = viaCore(para('x'.repeat(300_000)), [100_000, 200_000]);
    expect(tooLong.error).toMatchObject({ code: 'LIMIT', offset: 11 });
    const value = viaCore(enc.encode(`Package: ${'p'.repeat(1025)}\n`));
    expect(value.error).toMatchObject({ code: 'LIMIT', offset: 0 });
    expect(viaCore(enc.encode(`Package: ${'p'.repeat(1024)}\nVersion: 1\nFilename: f\nSize: 1\nSHA256: ${'e'.repeat(64)}`)).records).toHaveLength(1);
  });

  it('delivers thousands of records through its 1024-record area in order', () => {
    const parts: string[] = [];
    for (let i = 0; i < 5000; i++) parts.push(`Package: p${i}\nVersion: ${i}\nArchitecture: ${i % 3 ? 'amd64' : 'all'}\nFilename: pool/p${i}.deb\nSize: ${i}\nSHA256: ${i.toString(16).padStart(64, '0')}\n\n`);
    const bytes = enc.encode(parts.join(''));
    const c = viaCore(bytes, [12345, 300_000]);
    expect(c.records).toHaveLength(5000);
    expect(c).toEqual(viaJs(bytes));
  });

  it('fuzz: random, truncated and hostile text cut anywhere: the JS parser\'s outcome or a refused non-hex SHA256, never a trap', () => {
    const seed = enc.encode(PACKAGES);
    const mutated = fc
      .tuple(fc.array(fc.tuple(fc.nat(), fc.constantFrom(0, 9, 10, 13, 32, 58, 0x41, 0xc3, 0xff, 0x67)), { maxLength: 8 }), fc.option(fc.nat()), fc.option(fc.tuple(fc.nat(), fc.uint8Array({ maxLength: 24 }))))
      .map(([flips, cut, ins]) => {
        let b = seed.slice();
        for (const [i, v] of flips) b[i % b.length] = v;
        if (ins) {
          const at = ins[0] % (b.length + 1);
          b = Uint8Array.from([...b.subarray(0, at), ...ins[1], ...b.subarray(at)]);
        }
        if (cut !== null) b = b.subarray(0, cut % (b.length + 1));
        return b;
      });
    const hostile = fc.array(fc.constantFrom('Package: x\n', 'Version: 1\n', 'Size: 9\n', 'Filename: f\n', `SHA256: ${'a'.repeat(64)}\n`, '\n', ' \n', ' x\n', '\r\n', ':\n', 'Architecture: all\n', 'X: y\n', '\t\t\n'), { maxLength: 40 }).map((l) => enc.encode(l.join('')));
    fc.assert(
      fc.property(fc.oneof(mutated, hostile, fc.uint8Array({ maxLength: 400 })), fc.array(fc.nat(), { maxLength: 10 }), (bytes, cuts) => {
        const at = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
        agree(bytes, at);
      }),
      { numRuns: 1500 },
    );
  });

  it('raw exports: bad handles, arguments out of range, a finished scanner, 256 live at most', () => {
    const ex = core().exports;
    expect(ex.pkgsCreate(1023, 1)).toBe(-1);
    expect(ex.pkgsCreate(1024, 0)).toBe(-1);
    expect(ex.pkgsCreate(1 << 25, 1)).toBe(-1);
    expect(ex.pkgsScan(0, 0)).toBe(-5);
    expect(ex.pkgsScan(99, 0)).toBe(-5);
    expect(ex.pkgsFinish(257)).toBe(-5);
    expect(ex.pkgsInputAt(0)).toBe(0);
    expect(ex.pkgsDestroy(0)).toBe(-5);
    const hs: number[] = [];
    for (let h = ex.pkgsCreate(1024, 1); h > 0; h = ex.pkgsCreate(1024, 1)) hs.push(h);
    expect(hs.length).toBeLessThanOrEqual(256);
    expect(hs.length).toBeGreaterThan(200);
    expect(ex.pkgsCreate(1024, 1)).toBe(-7);
    const h = hs[0]!;
    expect(ex.pkgsInputRoom(h)).toBe(1024);
    expect(ex.pkgsScan(h, 1025)).toBe(-1);
    expect(ex.pkgsScan(h, -1)).toBe(-1);
    expect(ex.pkgsFinish(h)).toBe(0);
    expect(ex.pkgsScan(h, 0)).toBe(-1);
    for (const x of hs) expect(ex.pkgsDestroy(x)).toBe(0);
    expect(ex.pkgsDestroy(h)).toBe(-5);
    expect(ex.selfCheck()).toBe(0);
  });
});
