// IMA measurement lists against real logs and an independent implementation.
// scripts/ima-fixtures.mjs makes them from real files of this machine, in the
// kernel's text and binary forms (ima-ng with SHA-1 and SHA-256 file digests,
// ima-sig with signatures by evmctl and openssl, the old ima template), and
// ima-evm-utils' `evmctl ima_measurement` has replayed each binary list against
// its PCR 10 there. Here vmkit reads the text form and must give the same
// entries, template hashes and PCR 10 values; the binary list rebuilt from our
// entries must equal the kernel-format file byte for byte, and evmctl must agree
// with our PCR values (per bank and sha1-padded) and refuse a wrong one.
// Keylime's vectors (../shared/vectors/ima/, when present) are an extra check.
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { createPublicKey, publicDecrypt, constants } from 'node:crypto';
import { createReadStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { imaTemplateData, readImaLog, verifyImaLog, type ImaBank, type ImaEntry, type ImaExtendMode } from '../bindings/attest/ima.js';
import { VmkitError } from '../bindings/errors.js';
import { needTool } from './_tools.js';
import { imaFixtures, keylimeVectors } from './_ima-fixtures.js';

const FX = imaFixtures();
const VEC = keylimeVectors();
const vec = (name: string): string => readFileSync(join(VEC!, name), 'utf8');
const hex = (b: Uint8Array | undefined): string => Buffer.from(b ?? []).toString('hex');
const LOGS = ['ima-ng-sha1', 'ima-ng-sha256', 'ima-sig', 'ima'] as const;

const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
};

/** The kernel's binary_runtime_measurements record of a parsed entry. */
function binaryRecord(e: ImaEntry): Buffer {
  const name = Buffer.from(e.template);
  const head = [u32(e.pcr), Buffer.from(e.templateHash), u32(name.length), name];
  // The old template has no data length: digest, then the name with its own length, no NUL.
  if (e.template === 'ima') return Buffer.concat([...head, Buffer.from(e.digest), u32(Buffer.byteLength(e.path)), Buffer.from(e.path)]);
  const d = imaTemplateData(e);
  return Buffer.concat([...head, u32(d.length), Buffer.from(d)]);
}

/** The kernel's binary list for the parsed entries. */
async function binaryList(text: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const e of readImaLog(text)) parts.push(binaryRecord(e));
  return Buffer.concat(parts);
}

/** Runs evmctl with our PCR values as the "TPM" values; true when it says they match. */
function evmctlAgrees(bin: Buffer, pcrs: Partial<Record<ImaBank, string>>): boolean {
  const dir = mkdtempSync(join(tmpdir(), 'vmkit-ima-'));
  try {
    writeFileSync(join(dir, 'list.bin'), bin);
    const args = ['-v', 'ima_measurement', '--ignore-violations'];
    // A key file, so that evmctl does not fail for want of /etc/keys/x509_evm.der.
    if (FX) args.push('--key', join(FX.dir, 'keys', 'ima-cert.der'));
    for (const [bank, hex] of Object.entries(pcrs)) {
      const f = join(dir, `pcrs-${bank}`);
      let s = '';
      for (let i = 0; i < 24; i++) s += `PCR-${String(i).padStart(2, '0')}: ${i === 10 ? hex : '00'.repeat(hex!.length / 2)}\n`;
      writeFileSync(f, s);
      args.push('--pcrs', `${bank},${f}`);
    }
    args.push(join(dir, 'list.bin'));
    const r = spawnSync('evmctl', args, { encoding: 'utf8', maxBuffer: 64 << 20 });
    const out = `${r.stdout}${r.stderr}`;
    if (r.status === 0) return /Matched (per TPM bank|SHA1 padded)/.test(out);
    // Without a key file evmctl 1.4 exits non-zero even when the PCRs matched (the Keylime lists).
    return /Matched (per TPM bank|SHA1 padded)/.test(out) && !/Failed to (match|verify)/.test(out);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * `text` against its own PCR 10 (sha256, `pcr10`, given in upper case): a match, no failures;
 * against the PCR 10 of its first 300 lines (a quote taken earlier): no match, matched after 300
 * entries, a pcr_mismatch failure last.
 */
async function quotedPrefix(text: string, pcr10: string): Promise<void> {
  const ok = await verifyImaLog(text, { expectedPcr: { bank: 'sha256', hex: pcr10.toUpperCase() } });
  expect(ok.pcrCheck?.match).toBe(true);
  expect(ok.failureCount).toBe(0);
  const head = text.split('\n').slice(0, 300).join('\n');
  const quoted = (await verifyImaLog(head, { banks: ['sha256'] })).pcrs.sha256!;
  const grown = await verifyImaLog(text, { expectedPcr: { bank: 'sha256', hex: quoted } });
  expect(grown.pcrCheck).toMatchObject({ match: false, matchedAfter: 300 });
  expect(grown.failures.at(-1)?.id).toBe('ima.pcr_mismatch');
}

describe.runIf(FX)('IMA logs made by scripts/ima-fixtures.mjs (real files; evmctl-checked)', () => {
  const fx = FX!;
  for (const name of LOGS) {
    it(`${name}: the same entries, template hashes and PCR 10 (sha1, sha256, sha1-padded) as the kernel-format log`, async () => {
      const m = fx.logs[name];
      const text = fx.ascii(name);
      const r = await verifyImaLog(text, { banks: ['sha1', 'sha256'] });
      expect(r.count).toBe(m.count);
      expect(r.templateHashFailures).toBe(0);
      expect(r.failureCount).toBe(0);
      expect(r.violations).toBe(m.violations);
      expect(r.pcrs).toEqual(m.pcr10);
      const padded = await verifyImaLog(text, { banks: ['sha1', 'sha256'], extend: 'sha1-padded' });
      expect(padded.pcrs).toEqual(m.pcr10Sha1Padded);
      expect(r.entries.length).toBe(m.count);
      r.entries.forEach((e, i) => {
        const want = m.entries[i]!;
        expect(e.template, `line ${i + 1}`).toBe(m.template);
        expect(e.path, `line ${i + 1}`).toBe(want.path);
        expect(`${e.digestAlg}:${hex(e.digest)}`, `line ${i + 1}`).toBe(want.digest);
        expect(hex(e.templateHash), `line ${i + 1}`).toBe(want.templateHash);
        expect(e.violation, `line ${i + 1}`).toBe(want.violation);
        if (name === 'ima-sig') expect(hex(e.signature), `line ${i + 1}`).toBe(want.signature ?? '');
      });
      // Our entries written back in the kernel's binary layout are the binary file, byte for byte.
      expect((await binaryList(text)).equals(fx.binary(name))).toBe(true);
    });
  }

  it('ima-sig: every signature is an RSA PKCS#1 v1.5 signature of the logged SHA-256 digest (node:crypto)', async () => {
    const pub = createPublicKey(readFileSync(join(fx.dir, 'keys', 'ima-cert.pem')));
    let n = 0;
    for await (const e of readImaLog(fx.ascii('ima-sig'))) {
      if (!e.signature?.length) continue;
      const s = Buffer.from(e.signature);
      // security.ima v2: 03 02 hash_algo(4 = sha256) keyid[4] be16(size) signature
      expect([s[0], s[1], s[2]]).toEqual([3, 2, 4]);
      expect(s.subarray(3, 7).toString('hex')).toBe(fx.keyid);
      expect(s.readUInt16BE(7)).toBe(s.length - 9);
      const info = publicDecrypt({ key: pub, padding: constants.RSA_PKCS1_PADDING }, s.subarray(9));
      expect(info.subarray(-32).equals(Buffer.from(e.digest))).toBe(true); // DigestInfo(sha256) ‖ digest
      n++;
    }
    expect(n).toBe(fx.logs['ima-sig'].signed);
    expect(n).toBeGreaterThan(20);
  });

  it('evmctl verifies the signatures against the listed digests and refuses a changed one', () => {
    const run = (bin: string): string => {
      const r = spawnSync('evmctl', ['-v', 'ima_measurement', '--ignore-violations', '--verify-sig', '--key', join(fx.dir, 'keys', 'ima-cert.der'), '--pcrs', `sha256,${join(fx.dir, 'ima-sig.pcrs-sha256')}`, bin], { encoding: 'utf8', maxBuffer: 64 << 20 });
      return `${r.stdout}${r.stderr}`;
    };
    expect(run(join(fx.dir, 'ima-sig.bin')).match(/: verification is OK/g)?.length).toBe(fx.logs['ima-sig'].signed);
    // One signature byte flipped: one fewer good signature.
    const bin = fx.binary('ima-sig');
    const sig = Buffer.from(fx.logs['ima-sig'].entries.find((e) => e.signature)!.signature!, 'hex');
    const at = bin.indexOf(sig);
    expect(at).toBeGreaterThan(0);
    bin[at + 20]! ^= 1;
    const dir = mkdtempSync(join(tmpdir(), 'vmkit-ima-'));
    try {
      writeFileSync(join(dir, 'bad.bin'), bin);
      expect(run(join(dir, 'bad.bin')).match(/: verification is OK/g)?.length ?? 0).toBe(fx.logs['ima-sig'].signed - 1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('rejects the invalid log with CORRUPT and its line number', async () => {
    const err = await verifyImaLog(readFileSync(join(fx.dir, 'invalid.ascii'), 'utf8')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VmkitError);
    expect((err as VmkitError).code).toBe('CORRUPT');
    expect((err as VmkitError).offset).toBe(4);
  });

  it('detects a changed file digest as a template-hash failure (Keylime id)', async () => {
    const lines = fx.ascii('ima-ng-sha1').split('\n');
    lines[5] = lines[5]!.replace(/sha1:([0-9a-f])/, (_m, c: string) => `sha1:${c === '0' ? '1' : '0'}`);
    const r = await verifyImaLog(lines.join('\n'));
    expect(r.templateHashFailures).toBe(1);
    expect(r.failures[0]).toMatchObject({ id: 'ima.validation.ima_hash', line: 6 });
  });

  it('streams from a file stream the same as from a string', async () => {
    const path = join(fx.dir, 'ima-ng-sha1.ascii');
    const a = await verifyImaLog(createReadStream(path, { highWaterMark: 97 }) as AsyncIterable<Buffer>, { collect: false });
    const b = await verifyImaLog(readFileSync(path, 'utf8'));
    expect(a.pcrs).toEqual(b.pcrs);
    expect(a.pcrs.sha1).toBe(fx.logs['ima-ng-sha1'].pcr10.sha1);
    expect(a.count).toBe(b.count);
    expect(a.entries).toEqual([]);
  });

  it('compares with a quoted PCR 10 and finds the prefix a shorter quote covered', async () => {
    await quotedPrefix(fx.ascii('ima-ng-sha1'), fx.logs['ima-ng-sha1'].pcr10.sha256);
  });

  const modes: [ImaExtendMode, ImaBank[]][] = [['per-bank', ['sha1', 'sha256']], ['sha1-padded', ['sha256']]];
  for (const name of LOGS) {
    for (const [mode, banks] of modes) {
      it(`evmctl agrees with our PCR 10 of ${name} (${mode} ${banks.join('+')}) and refuses a wrong one`, async () => {
        const r = await verifyImaLog(fx.ascii(name), { banks, extend: mode });
        const bin = fx.binary(name);
        for (const b of banks) {
          expect(evmctlAgrees(bin, { [b]: r.pcrs[b] }), b).toBe(true);
          expect(evmctlAgrees(bin, { [b]: (r.pcrs[b]!.startsWith('ff') ? '00' : 'ff') + r.pcrs[b]!.slice(2) }), b).toBe(false);
        }
      });
    }
  }
});

describe.runIf(VEC)('IMA logs from Keylime (../shared/vectors/ima, an extra cross-check)', () => {
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
    const path = join(VEC!, 'rust-keylime-agent-sha1.log');
    const a = await verifyImaLog(createReadStream(path, { highWaterMark: 97 }) as AsyncIterable<Buffer>, { collect: false });
    const b = await verifyImaLog(readFileSync(path, 'utf8'));
    expect(a.pcrs).toEqual(b.pcrs);
    expect(a.count).toBe(b.count);
    expect(a.entries).toEqual([]);
  });

  it('compares with a quoted PCR 10 and finds the prefix a shorter quote covered', async () => {
    const text = vec('rust-keylime-agent-sha1.log');
    await quotedPrefix(text, (await verifyImaLog(text, { banks: ['sha256'] })).pcrs.sha256!);
  });
});

describe.runIf(VEC)('Keylime logs: PCR 10 replay agrees with evmctl (ima-evm-utils)', () => {
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
