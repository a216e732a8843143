// IMA measurement-list parsing, template data, PCR replay and exclude lists:
// every template (ima, ima-ng, ima-sig, ima-buf) round-trips through a line
// whose template hash is recomputed, the PCR replay follows its definition
// (H(pcr ‖ H(data)), ones for violations, zero-padded SHA-1 in the old mode),
// streaming in arbitrary chunks equals reading the whole text, globs agree
// with a regex model, and fuzzed lines only ever give CORRUPT.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  compileExcludes,
  imaEntryDigest,
  imaHash,
  imaLines,
  imaTemplateData,
  parseImaLine,
  PcrReplay,
  readImaLog,
  verifyImaLog,
  type ImaEntry,
  type ImaTemplate,
} from '../bindings/attest/ima.js';
import { toHex } from '../bindings/attest/index-store.js';
import { GlobSet } from '../bindings/attest/_glob.js';
import { VmkitError } from '../bindings/errors.js';

const hex = (b: Uint8Array): string => toHex(b);

/** A line for an entry, with the template hash recomputed (unless it is a violation). */
async function lineOf(e: Omit<ImaEntry, 'line' | 'templateHash' | 'violation'>, violation = false): Promise<string> {
  const full: ImaEntry = { ...e, line: 1, templateHash: new Uint8Array(20), violation };
  const th = violation ? '00'.repeat(20) : hex(await imaHash('sha1', imaTemplateData(full)));
  const d = e.template === 'ima' ? hex(e.digest) : `${e.digestAlg}:${hex(e.digest)}`;
  const tail = e.template === 'ima-sig' ? ` ${hex(e.signature ?? new Uint8Array(0))}` : e.template === 'ima-buf' ? ` ${hex(e.buffer ?? new Uint8Array(0))}` : '';
  return `${e.pcr} ${th} ${e.template} ${d} ${e.path}${tail}`;
}

const arbPath = fc
  .array(fc.constantFrom('usr', 'bin', 'lib', 'x.so', 'ä', 'etc', 'a_b', '.', '-'), { minLength: 1, maxLength: 6 })
  .map((p) => '/' + p.join('/'));
const arbEntry = fc
  .record({
    template: fc.constantFrom<ImaTemplate>('ima', 'ima-ng', 'ima-sig', 'ima-buf'),
    alg: fc.constantFrom('sha1', 'sha256', 'sha512', 'md5'),
    seed: fc.uint8Array({ minLength: 64, maxLength: 64 }),
    path: arbPath,
    extra: fc.uint8Array({ maxLength: 40 }),
  })
  .map(({ template, alg, seed, path, extra }) => {
    const a = template === 'ima' ? (alg === 'md5' ? 'md5' : 'sha1') : alg;
    const len = { sha1: 20, sha256: 32, sha512: 64, md5: 16 }[a]!;
    const e: Omit<ImaEntry, 'line' | 'templateHash' | 'violation'> = { pcr: 10, template, digestAlg: a, digest: seed.slice(0, len), path };
    if (template === 'ima-sig') e.signature = extra;
    if (template === 'ima-buf') e.buffer = extra;
    return e;
  });

describe('parseImaLine', () => {
  it('reads each template', () => {
    const z = '0'.repeat(40);
    expect(parseImaLine(`10 ${'1'.repeat(40)} ima ${'ab'.repeat(20)} /bin/sh`)).toMatchObject({ template: 'ima', digestAlg: 'sha1', path: '/bin/sh' });
    expect(parseImaLine(`10 ${'1'.repeat(40)} ima-ng sha256:${'cd'.repeat(32)} /a b`)).toMatchObject({ digestAlg: 'sha256', path: '/a b' });
    const sig = parseImaLine(`10 ${'1'.repeat(40)} ima-sig sha256:${'cd'.repeat(32)} /x 0302`)!;
    expect(Array.from(sig.signature!)).toEqual([3, 2]);
    expect(parseImaLine(`10 ${'1'.repeat(40)} ima-sig sha256:${'cd'.repeat(32)} /x `)!.signature!.length).toBe(0);
    expect(parseImaLine(`10 ${'1'.repeat(40)} ima-sig sha256:${'cd'.repeat(32)} /x`)!.signature!.length).toBe(0);
    const buf = parseImaLine(`10 ${'1'.repeat(40)} ima-buf sha256:${'cd'.repeat(32)} kexec-cmdline 726f6f743d2f\r`)!;
    expect(new TextDecoder().decode(buf.buffer)).toBe('root=/');
    expect(parseImaLine(`10 ${z} ima-ng sha1:${z} boot_aggregate`)!.violation).toBe(true);
    expect(parseImaLine('   ')).toBeNull();
    expect(imaEntryDigest(parseImaLine(`10 ${'1'.repeat(40)} ima-ng sha256:${'cd'.repeat(32)} /x`)!)).toEqual({ alg: 'sha256', hex: 'cd'.repeat(32) });
    expect(imaEntryDigest(parseImaLine(`10 ${'1'.repeat(40)} ima-ng sha224:${'cd'.repeat(28)} /x`)!)).toBeUndefined();
  });

  it('refuses bad lines with CORRUPT and the line number', () => {
    const bad = [
      'x',
      '10 zz ima-ng sha1:00 /x',
      `99 ${'1'.repeat(40)} ima-ng sha1:${'0'.repeat(40)} /x`,
      `10 ${'1'.repeat(38)} ima-ng sha1:${'0'.repeat(40)} /x`,
      `10 ${'1'.repeat(40)} ima-foo sha1:${'0'.repeat(40)} /x`,
      `10 ${'1'.repeat(40)} ima-ng sha1:${'0'.repeat(38)} /x`,
      `10 ${'1'.repeat(40)} ima-ng ${'0'.repeat(40)} /x`,
      `10 ${'1'.repeat(40)} ima-ng sha1:${'0'.repeat(40)}`,
      `10 ${'1'.repeat(40)} ima ${'0'.repeat(64)} /x`,
      `10 ${'1'.repeat(40)} ima-sig sha1:${'0'.repeat(40)} /x 0g`,
      `10 ${'1'.repeat(40)} ima-buf sha1:${'0'.repeat(40)} n 00 11`,
      `10 ${'1'.repeat(40)} ima ${'0'.repeat(40)} /${'a'.repeat(300)}`,
    ];
    for (const l of bad) {
      let err: unknown;
      try {
        parseImaLine(l, 7);
      } catch (e) {
        err = e;
      }
      expect(err, l).toBeInstanceOf(VmkitError);
      expect((err as VmkitError).code, l).toBe('CORRUPT');
      expect((err as VmkitError).offset, l).toBe(7);
    }
  });

  it('fuzz: any line parses or throws CORRUPT, never anything else', () => {
    const tok = fc.oneof(fc.constantFrom('10', 'ima', 'ima-ng', 'ima-sig', 'ima-buf', 'sha1:', 'sha256:', '/x', ' ', '', '0'.repeat(40), 'ff'.repeat(32)), fc.string({ maxLength: 12 }));
    fc.assert(
      fc.property(fc.array(tok, { maxLength: 8 }), (toks) => {
        const l = toks.join(' ');
        try {
          parseImaLine(l);
        } catch (e) {
          expect(e).toBeInstanceOf(VmkitError);
          expect((e as VmkitError).code).toBe('CORRUPT');
        }
      }),
      { numRuns: 500 },
    );
  });
});

describe('template hashes and replay', () => {
  it('every template round-trips through a line and its recomputed template hash', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(arbEntry, { minLength: 1, maxLength: 8 }), async (es) => {
        const text = (await Promise.all(es.map((e) => lineOf(e)))).join('\n') + '\n';
        const r = await verifyImaLog(text, { banks: ['sha1', 'sha256'] });
        expect(r.count).toBe(es.length);
        expect(r.failureCount).toBe(0);
        for (let i = 0; i < es.length; i++) {
          const got = r.entries[i]!;
          const want = es[i]!;
          expect(got.path).toBe(want.path);
          expect(got.digestAlg).toBe(want.digestAlg);
          expect(hex(got.digest)).toBe(hex(want.digest));
          if (want.template === 'ima-sig') expect(hex(got.signature!)).toBe(hex(want.signature!));
          if (want.template === 'ima-buf') expect(hex(got.buffer!)).toBe(hex(want.buffer!));
        }
        // Changing one digest byte breaks exactly that entry's template hash.
        const k = es.length - 1;
        const bent = { ...es[k]!, digest: es[k]!.digest.map((b, i) => (i === 0 ? b ^ 1 : b)) };
        const lines = text.trimEnd().split('\n');
        const orig = lines[k]!.split(' ');
        const moved = (await lineOf(bent)).split(' ');
        moved[1] = orig[1]!; // keep the old template hash
        lines[k] = moved.join(' ');
        const r2 = await verifyImaLog(lines.join('\n'));
        expect(r2.templateHashFailures).toBe(1);
        expect(r2.failures[0]!.line).toBe(k + 1);
      }),
      { numRuns: 40 },
    );
  });

  it('replays by definition: H(pcr ‖ H(data)), all ones for violations, zero-padded SHA-1 in the old mode', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.tuple(arbEntry, fc.boolean()), { minLength: 1, maxLength: 6 }), fc.constantFrom('sha1', 'sha256', 'sha384', 'sha512') as fc.Arbitrary<'sha1' | 'sha256' | 'sha384' | 'sha512'>, async (es, bank) => {
        const text = (await Promise.all(es.map(([e, v]) => lineOf(e, v)))).join('\n');
        const len = { sha1: 20, sha256: 32, sha384: 48, sha512: 64 }[bank];
        let perBank: Uint8Array = new Uint8Array(len);
        let padded: Uint8Array = new Uint8Array(len);
        const ext = async (pcr: Uint8Array, v: Uint8Array): Promise<Uint8Array> => {
          const b = new Uint8Array(len * 2);
          b.set(pcr);
          b.set(v, len);
          return imaHash(bank, b);
        };
        for await (const e of readImaLog(text)) {
          const data = imaTemplateData(e);
          perBank = await ext(perBank, e.violation ? new Uint8Array(len).fill(255) : await imaHash(bank, data));
          const p = new Uint8Array(len);
          p.set((e.violation ? new Uint8Array(20).fill(255) : await imaHash('sha1', data)).subarray(0, Math.min(20, len)));
          padded = await ext(padded, p);
        }
        const a = await verifyImaLog(text, { banks: [bank] });
        const b = await verifyImaLog(text, { banks: [bank], extend: 'sha1-padded' });
        expect(a.pcrs[bank]).toBe(hex(perBank));
        expect(b.pcrs[bank]).toBe(hex(padded));
        expect(a.violations).toBe(es.filter(([, v]) => v).length);
      }),
      { numRuns: 30 },
    );
  });

  it('entries for another PCR are reported and not replayed', async () => {
    const e = await lineOf({ pcr: 11, template: 'ima-ng', digestAlg: 'sha256', digest: new Uint8Array(32), path: '/x' });
    const r = await verifyImaLog(e);
    expect(r.pcrs.sha1).toBe(new PcrReplay('sha1').hex());
    expect(r.failures[0]!.id).toBe('ima.validation.ima_pcr');
  });

  it('checks its arguments', async () => {
    expect(() => new PcrReplay('md5' as 'sha1')).toThrow(VmkitError);
    await expect(verifyImaLog('', { expectedPcr: { bank: 'sha1', hex: 'abc' } })).rejects.toThrow(/40 hex digits/);
    await expect(verifyImaLog(42 as unknown as string)).rejects.toMatchObject({ code: 'ARG_TYPE' });
  });
});

describe('streaming', () => {
  it('any chunking of the bytes gives the same entries and PCRs', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(arbEntry, { minLength: 1, maxLength: 6 }), fc.array(fc.integer({ min: 1, max: 50 }), { minLength: 1, maxLength: 20 }), async (es, cuts) => {
        const text = (await Promise.all(es.map((e) => lineOf(e)))).join('\r\n');
        const bytes = new TextEncoder().encode(text);
        async function* chunks(): AsyncGenerator<Uint8Array> {
          let o = 0;
          let i = 0;
          while (o < bytes.length) {
            const n = cuts[i++ % cuts.length]!;
            yield bytes.subarray(o, o + n);
            o += n;
          }
        }
        const a = await verifyImaLog(chunks(), { banks: ['sha256'] });
        const b = await verifyImaLog(text, { banks: ['sha256'] });
        const c = await verifyImaLog(text.split('\r\n'), { banks: ['sha256'] });
        expect(a.pcrs).toEqual(b.pcrs);
        expect(c.pcrs).toEqual(b.pcrs);
        expect(a.entries.map((e) => e.path)).toEqual(b.entries.map((e) => e.path));
        expect(a.failureCount).toBe(0);
      }),
      { numRuns: 40 },
    );
  });

  it('a line over the limit is LIMIT, also when it never ends', async () => {
    async function* endless(): AsyncGenerator<string> {
      for (let i = 0; i < 1000; i++) yield 'x'.repeat(1000);
    }
    await expect(verifyImaLog(endless(), { maxLine: 10_000 })).rejects.toMatchObject({ code: 'LIMIT' });
    await expect(verifyImaLog('a'.repeat(100), { maxLine: 10 })).rejects.toMatchObject({ code: 'LIMIT' });
    const lines: string[] = [];
    for await (const l of imaLines('a\nb\n\nc')) lines.push(l);
    expect(lines).toEqual(['a', 'b', '', 'c']);
  });

  it('a bad line deep in a stream names its line number', async () => {
    const good = await lineOf({ pcr: 10, template: 'ima-ng', digestAlg: 'sha1', digest: new Uint8Array(20), path: '/ok' });
    const text = [good, good, '', good, 'garbage here', good].join('\n');
    await expect(verifyImaLog(text)).rejects.toMatchObject({ code: 'CORRUPT', offset: 5 });
  });

  it('caps the number of entries', async () => {
    const good = await lineOf({ pcr: 10, template: 'ima-ng', digestAlg: 'sha1', digest: new Uint8Array(20), path: '/ok' });
    await expect(verifyImaLog([good, good, good], { maxEntries: 2 })).rejects.toMatchObject({ code: 'LIMIT' });
  });
});

/** The glob rules as a regex: `**` any run, `*` a run without `/`, `?` one character but `/`. */
function globModel(g: string, p: string): boolean {
  let re = '';
  for (let i = 0; i < g.length; i++) {
    const c = g[i]!;
    if (c === '*' && g[i + 1] === '*') {
      re += '.*';
      i++;
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`, 's').test(p);
}

describe('exclude lists', () => {
  it('regexes match at the start of the path (Keylime: re.match), globs the whole path', async () => {
    const ex = compileExcludes(['/tmp/', '.*\\.pyc$', 'glob:/var/log/*', 'glob:/opt/**/bin/?', '# comment', '']);
    expect(ex('/tmp/a')).toBe(true);
    expect(ex('/x/tmp/a')).toBe(false);
    expect(ex('/usr/lib/x.pyc')).toBe(true);
    expect(ex('/var/log/syslog')).toBe(true);
    expect(ex('/var/log/apt/history.log')).toBe(false);
    expect(ex('/opt/a/b/bin/x')).toBe(true);
    expect(ex('/opt/a/b/bin/xy')).toBe(false);
    expect(ex.patterns.length).toBe(6);
    expect(() => compileExcludes(['(unclosed'])).toThrow(VmkitError);
    expect(() => compileExcludes(['/tmp/'], { regex: false })).toThrow(/glob/);
    expect(() => compileExcludes(Array(5).fill('glob:a'), { maxPatterns: 4 })).toThrow(VmkitError);
    const mk = (path: string): Promise<string> => lineOf({ pcr: 10, template: 'ima-ng', digestAlg: 'sha1', digest: new Uint8Array(20), path });
    const text = (await Promise.all(['/tmp/a', '/usr/bin/ls', '/var/log/x'].map(mk))).join('\n');
    const seen: [string, boolean][] = [];
    const r = await verifyImaLog(text, { excludes: ['/tmp', 'glob:/var/log/*'], onEntry: (e, x) => void seen.push([e.path, x]) });
    expect(r.excluded).toBe(2);
    expect(r.entries.map((e) => e.path)).toEqual(['/usr/bin/ls']);
    expect(seen).toEqual([['/tmp/a', true], ['/usr/bin/ls', false], ['/var/log/x', true]]);
    // Excluded entries are still replayed.
    expect(r.pcrs).toEqual((await verifyImaLog(text)).pcrs);
  });

  it('globs agree with a regex model, in bounded time on hostile patterns', () => {
    const ch = fc.constantFrom('a', 'b', '/', '*', '?', '.');
    fc.assert(
      fc.property(fc.array(ch, { maxLength: 10 }), fc.array(fc.constantFrom('a', 'b', '/', '.'), { maxLength: 12 }), (g, p) => {
        expect(compileExcludes(['glob:' + g.join('')])(p.join(''))).toBe(globModel(g.join(''), p.join('')));
      }),
      { numRuns: 1000 },
    );
    const t0 = Date.now();
    expect(compileExcludes(['glob:' + 'a*'.repeat(100) + 'b'], { regex: false })('a'.repeat(2000))).toBe(false);
    expect(Date.now() - t0).toBeLessThan(2000);
  });

  it('many globs in one automaton agree with matching each alone', () => {
    const glob = fc.array(fc.constantFrom('a', 'b', '/', '*', '?'), { maxLength: 8 }).map((a) => a.join(''));
    const path = fc.array(fc.constantFrom('a', 'b', '/'), { maxLength: 10 }).map((a) => a.join(''));
    fc.assert(
      fc.property(fc.array(glob, { minLength: 1, maxLength: 4 }), fc.array(path, { maxLength: 6 }), (gs, ps) => {
        const set = new GlobSet(gs);
        for (const p of ps) expect(set.match(p)).toBe(gs.some((g) => globModel(g, p)));
      }),
      { numRuns: 500 },
    );
  });

  // The probe's attack (issue 18): 100 patterns of 512 characters over 2,000 entries
  // (540 KB) held the service ~577 s with one matcher per pattern. Now every path is read
  // once; what the automaton costs to build is counted, and past the budget it is LIMIT.
  it('the attack of 100 patterns × 512 characters over 2,000 paths is linear or refused (LIMIT)', () => {
    let seed = 7;
    const rnd = (): number => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
    const paths = Array.from({ length: 2000 }, () => '/' + Array.from({ length: 250 }, () => (rnd() < 0.5 ? 'a' : 'b')).join(''));
    // Stars: states stay few, the whole list is matched within the budget.
    const stars = Array.from({ length: 100 }, (_, i) => 'glob:/' + '*a'.repeat(252) + String.fromCharCode(99 + (i % 20)));
    const ex = compileExcludes(stars, { regex: false, maxWork: 1 << 24 });
    for (const p of paths) expect(ex(p)).toBe(false);
    // `**a???…`: the DFA would need 2^n states; building them runs into the budget.
    const blowup = Array.from({ length: 100 }, (_, i) => 'glob:**a' + '?'.repeat(5 + (i % 30)) + '/'.repeat(i % 2));
    const ex2 = compileExcludes(blowup, { regex: false, maxWork: 1 << 22 });
    let matched = 0;
    expect(() => {
      for (const p of paths) {
        ex2(p);
        matched++;
      }
    }).toThrow(expect.objectContaining({ code: 'LIMIT' }));
    expect(matched).toBeLessThan(paths.length);
    // The budget is what bounds it: counted work never passes it by more than one state.
    const g = new GlobSet(blowup.map((b) => b.slice(5)), { maxWork: 1 << 20 });
    expect(() => paths.forEach((p) => g.match(p))).toThrow(expect.objectContaining({ code: 'LIMIT' }));
    expect(g.work).toBeLessThan((1 << 20) + 8000);
  });
});
