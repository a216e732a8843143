// IMA measurement lists against real logs (Keylime's test vectors in
// ../shared/vectors/ima/) and against an independent implementation: the
// kernel's binary list is rebuilt from the parsed entries and ima-evm-utils'
// `evmctl ima_measurement` replays it and must agree with our PCR 10 values
// (per bank and sha1-padded). The logged template hashes were computed by the
// kernel / Keylime, so matching them checks our template-data layout.
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createReadStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { imaTemplateData, readImaLog, verifyImaLog, type ImaBank, type ImaExtendMode } from '../bindings/attest/ima.js';
import { VmkitError } from '../bindings/errors.js';
import { needTool } from './_tools.js';

const VEC = fileURLToPath(new URL('../../shared/vectors/ima/', import.meta.url));
const vec = (name: string): string => readFileSync(join(VEC, name), 'utf8');

/** The kernel's binary_runtime_measurements for the parsed entries. */
async function binaryList(text: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const e of readImaLog(text)) {
    const d = imaTemplateData(e);
    const name = Buffer.from(e.template);
    const u32 = (n: number): Buffer => {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(n);
      return b;
    };
    parts.push(u32(e.pcr), Buffer.from(e.templateHash), u32(name.length), name);
    if (e.template !== 'ima') parts.push(u32(d.length)); // the old template's data has a fixed size
    parts.push(Buffer.from(d));
  }
  return Buffer.concat(parts);
}

/** Runs evmctl with our PCR values as the "TPM" values; true when it says they match. */
function evmctlAgrees(bin: Buffer, pcrs: Partial<Record<ImaBank, string>>): boolean {
  const dir = mkdtempSync(join(tmpdir(), 'vmkit-ima-'));
  try {
    writeFileSync(join(dir, 'list.bin'), bin);
    const args = ['ima_measurement', '--ignore-violations'];
    for (const [bank, hex] of Object.entries(pcrs)) {
      const f = join(dir, `pcrs-${bank}`);
      let s = '';
      for (let i = 0; i < 24; i++) s += `PCR-${String(i).padStart(2, '0')}: ${i === 10 ? hex : '00'.repeat(hex!.length / 2)}\n`;
      writeFileSync(f, s);
      args.push('--pcrs', `${bank},${f}`);
    }
    args.push(join(dir, 'list.bin'));
    try {
      execFileSync('evmctl', args, { stdio: 'pipe' });
      return true;
    } catch (e) {
      const out = String((e as { stdout?: Buffer }).stdout ?? '') + String((e as { stderr?: Buffer }).stderr ?? '');
      // evmctl exits non-zero when it cannot find a signing key even though the PCRs matched.
      return /Matched per TPM bank|matched? .*padded/i.test(out) && !/Failed to match/i.test(out);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('IMA logs from Keylime', () => {
  it('parses the 826-entry agent log; every template hash matches its data', async () => {
    const r = await verifyImaLog(vec('rust-keylime-agent-sha1.log'), { banks: ['sha1', 'sha256'] });
    expect(r.count).toBe(826);
    expect(r.templateHashFailures).toBe(0);
    expect(r.failureCount).toBe(0);
    expect(r.entries.length).toBe(826);
    expect(r.entries[1]!.path).toBe('/init');
    expect(r.entries[1]!.digestAlg).toBe('sha1');
  });

  it('checks sha256 file-digest logs and the violation-marked boot_aggregate', async () => {
    for (const f of ['keylime-ima-log-sha1', 'keylime-ima-log-sha256', 'rust-keylime-ima_log.txt']) {
      const r = await verifyImaLog(vec(f));
      expect(r.templateHashFailures, f).toBe(0);
      expect(r.count, f).toBeGreaterThan(0);
    }
    const v = await verifyImaLog(vec('keylime-ima-log-sha1'));
    expect(v.violations).toBe(1);
  });

  it('rejects the invalid log with CORRUPT and its line number', async () => {
    const err = await verifyImaLog(vec('rust-keylime-invalid_ima_log.txt')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VmkitError);
    expect((err as VmkitError).code).toBe('CORRUPT');
    expect((err as VmkitError).offset).toBe(1);
  });

  it('detects a changed file digest as a template-hash failure (Keylime id)', async () => {
    const lines = vec('rust-keylime-agent-sha1.log').split('\n');
    lines[5] = lines[5]!.replace(/sha1:([0-9a-f])/, (_m, c: string) => `sha1:${c === '0' ? '1' : '0'}`);
    const r = await verifyImaLog(lines.join('\n'));
    expect(r.templateHashFailures).toBe(1);
    expect(r.failures[0]).toMatchObject({ id: 'ima.validation.ima_hash', line: 6 });
  });

  it('streams from a file stream the same as from a string', async () => {
    const path = join(VEC, 'rust-keylime-agent-sha1.log');
    const a = await verifyImaLog(createReadStream(path, { highWaterMark: 97 }) as AsyncIterable<Buffer>, { collect: false });
    const b = await verifyImaLog(readFileSync(path, 'utf8'));
    expect(a.pcrs).toEqual(b.pcrs);
    expect(a.count).toBe(b.count);
    expect(a.entries).toEqual([]);
  });

  it('compares with a quoted PCR 10 and finds the prefix a shorter quote covered', async () => {
    const text = vec('rust-keylime-agent-sha1.log');
    const full = await verifyImaLog(text, { banks: ['sha256'] });
    const ok = await verifyImaLog(text, { expectedPcr: { bank: 'sha256', hex: full.pcrs.sha256!.toUpperCase() } });
    expect(ok.pcrCheck?.match).toBe(true);
    expect(ok.failureCount).toBe(0);
    const head = text.split('\n').slice(0, 300).join('\n');
    const quoted = (await verifyImaLog(head, { banks: ['sha256'] })).pcrs.sha256!;
    const grown = await verifyImaLog(text, { expectedPcr: { bank: 'sha256', hex: quoted } });
    expect(grown.pcrCheck).toMatchObject({ match: false, matchedAfter: 300 });
    expect(grown.failures.at(-1)?.id).toBe('ima.pcr_mismatch');
  });
});

describe('PCR 10 replay agrees with evmctl (ima-evm-utils)', () => {
  const cases: [string, ImaExtendMode, ImaBank[]][] = [
    ['rust-keylime-agent-sha1.log', 'per-bank', ['sha1', 'sha256']],
    ['rust-keylime-agent-sha1.log', 'sha1-padded', ['sha256']],
    ['keylime-ima-log-sha256', 'per-bank', ['sha1', 'sha256']],
    ['keylime-ima-log-sha1', 'per-bank', ['sha1', 'sha256']],
  ];
  for (const [file, mode, banks] of cases) {
    it(`${file} ${mode} ${banks.join('+')}`, async () => {
      if (!needTool('evmctl', 'ima-evm-utils')) return;
      const text = vec(file);
      const r = await verifyImaLog(text, { banks, extend: mode });
      const bin = await binaryList(text);
      // One bank at a time: evmctl accepts a list when any one bank matches.
      for (const b of banks) {
        expect(evmctlAgrees(bin, { [b]: r.pcrs[b] }), b).toBe(true);
        // And a wrong value is refused, so the agreement means something.
        expect(evmctlAgrees(bin, { [b]: (r.pcrs[b]!.startsWith('ff') ? '00' : 'ff') + r.pcrs[b]!.slice(2) }), b).toBe(false); // always a different value
      }
    });
  }
});
