// IMA measurement lists and EAR tokens (docs/attest-ima.md, docs/attest-service.md):
//  1. verifyImaLog over a ~20 k-entry ima-ng log (the 1000-entry log of real files that
//     scripts/ima-fixtures.mjs makes, repeated):
//     parse + template-hash check + PCR 10 replay, one bank and two; peers in the same run:
//     the hashing floor (node:crypto over template data prepared beforehand: the same hashes, no
//     parsing) and ima-evm-utils' `evmctl ima_measurement` on the equivalent binary list (C,
//     including its process start), when installed;
//  2. EAR: signEar / verifyEar (jose, WebCrypto Ed25519) against bare node:crypto Ed25519
//     sign / verify of the same signing input.
import { execFileSync } from 'node:child_process';
import * as nodeCrypto from 'node:crypto';
import { createHash, createPrivateKey, createPublicKey, sign, verify } from 'node:crypto';

const hash = typeof nodeCrypto.hash === 'function' ? nodeCrypto.hash : undefined;
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadCore, measure } from './_lib.js';
import { ensureImaFixtures } from '../scripts/ima-fixtures.mjs';

/** The headline rows of RESULTS.md's opening table (bench/_summary.js): rows of this suite's own tables. */
export const SUMMARY = [
  { what: "Verify a 20,650-entry IMA log (sha1) vs hashing alone", section: "IMA: verify a 20650-entry ima-ng log (parse, template hashes, PCR 10 replay)", vmkit: "verifyImaLog sha1", peer: "hashing floor (node:crypto, sha1 bank)" },
];

function hasEvmctl() {
  try {
    execFileSync('sh', ['-c', 'command -v evmctl'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export async function run(ctx) {
  await loadCore();
  const ima = await import('../dist/attest/ima.js');
  const ear = await import('../dist/attest/ear.js');
  const { appraise } = await import('../dist/attest/appraise.js');
  const { DigestIndex } = await import('../dist/attest/index-store.js');

  const evm = hasEvmctl();
  let one;
  try {
    one = readFileSync(join(ensureImaFixtures(), 'ima-ng-sha1.ascii'), 'utf8');
  } catch (e) {
    // The log is made with evmctl and openssl; without them only the EAR part runs.
    ctx.log(`SKIPPING the IMA part: ${e.message}`);
  }
  // About 20 k entries: each op well under a second, so tinybench's minimum of 64 samples per task stays short.
  const reps = ctx.quick ? 2 : 20;
  const text = one ? one.repeat(reps) : '';
  // Parsed entries live only in this frame: tens of thousands of small objects and typed arrays
  // kept alive through the run would slow every task's garbage collection (verifyImaLog's
  // 2x, measured), charging the bench's own bookkeeping to the code under test. What the
  // tasks need is packed into one buffer.
  const { n, packed, offs, list } = await (async () => {
    const entries = [];
    for await (const e of ima.readImaLog(text)) entries.push(e);
    const data = entries.map((e) => ima.imaTemplateData(e));
    const offs = new Uint32Array(entries.length + 1);
    for (let i = 0; i < data.length; i++) offs[i + 1] = offs[i] + data[i].length;
    const packed = Buffer.concat(data);
    let list;
    if (evm) {
      // Binary list for evmctl (kernel layout).
      const parts = [];
      const u32 = (v) => { const b = Buffer.alloc(4); b.writeUInt32LE(v); return b; };
      for (let i = 0; i < entries.length; i++) {
        const e = entries[i];
        const name = Buffer.from(e.template);
        parts.push(u32(e.pcr), Buffer.from(e.templateHash), u32(name.length), name, u32(data[i].length), Buffer.from(data[i]));
      }
      list = Buffer.concat(parts);
    }
    return { n: entries.length, packed, offs, list };
  })();
  ctx.log(`IMA log: ${n} entries, ${(text.length / 1e6).toFixed(1)} MB`);

  // Binary list for evmctl (kernel layout), and the PCR file it compares with.
  const dir = mkdtempSync(join(tmpdir(), 'vmkit-bench-ima-'));
  const tasks = [
    { name: 'hashing floor (node:crypto, sha1 bank)', items: n, fn: () => {
      // The one-shot crypto.hash where Node has it (what ima.ts uses), else createHash.
      const h1 = hash ? (x) => hash('sha1', x, 'buffer') : (x) => createHash('sha1').update(x).digest();
      let pcr = Buffer.alloc(20);
      for (let i = 0; i < n; i++) pcr = h1(Buffer.concat([pcr, h1(packed.subarray(offs[i], offs[i + 1]))]));
      return pcr;
    } },
    { name: 'verifyImaLog sha1', items: n, fn: () => ima.verifyImaLog(text, { banks: ['sha1'], collect: false }) },
    { name: 'verifyImaLog sha1+sha256', items: n, fn: () => ima.verifyImaLog(text, { banks: ['sha1', 'sha256'], collect: false }) },
  ];
  let evmNote = 'evmctl not installed: no C peer in this run';
  try {
    if (evm && one) {
      writeFileSync(join(dir, 'list.bin'), list);
      const pcr = (await ima.verifyImaLog(text, { banks: ['sha1'], collect: false })).pcrs.sha1;
      let s = '';
      for (let i = 0; i < 24; i++) s += `PCR-${String(i).padStart(2, '0')}: ${i === 10 ? pcr : '00'.repeat(20)}\n`;
      writeFileSync(join(dir, 'pcrs'), s);
      tasks.push({ name: 'evmctl ima_measurement (C, sha1)', items: n, fn: () => {
        try {
          execFileSync('evmctl', ['ima_measurement', '--ignore-violations', '--pcrs', `sha1,${join(dir, 'pcrs')}`, join(dir, 'list.bin')], { stdio: 'pipe' });
        } catch (e) {
          // It exits non-zero for want of a signing-key file even when the PCR matched.
          if (!/Matched/i.test(String(e.stdout) + String(e.stderr))) throw e;
        }
      } });
      evmNote = 'evmctl: ima-evm-utils ' + String(execFileSync('sh', ['-c', 'dpkg-query -W -f "\\${Version}" ima-evm-utils 2>/dev/null || true'])) + ', run as a process per op (start-up included)';
    }
    const imaRes = one && await measure(tasks, { quick: ctx.quick, baseline: 'hashing floor (node:crypto, sha1 bank)', time: 1500 });

    // EAR sign / verify.
    const key = await ear.generateEarKey();
    const ix = new DigestIndex();
    const p = ix.addPackage({ repository: 'deb http://h/debian bookworm main', package: 'hello', version: '2.10-3', architecture: 'amd64' }, { alg: 'sha256', hex: '11'.repeat(32) });
    const digests = [];
    for (let i = 0; i < 20; i++) {
      const hex = createHash('sha256').update(String(i)).digest('hex');
      ix.addFile(p, `/usr/share/hello/f${i}`, { alg: 'sha256', hex });
      digests.push({ alg: 'sha256', hex, path: `/usr/share/hello/f${i}` });
    }
    const appraisal = appraise(ix, { digests });
    ix.close();
    const token = await ear.signEar(appraisal, key, { nonce: 'bench' });
    const [h, pl, sg] = token.split('.');
    const input = Buffer.from(`${h}.${pl}`);
    const sig = Buffer.from(sg, 'base64url');
    const jwk = await ear.exportEarKey(key);
    const priv = createPrivateKey({ key: jwk, format: 'jwk' });
    const pub = createPublicKey({ key: key.publicJwk, format: 'jwk' });
    const earRes = await measure(
      [
        { name: 'node:crypto Ed25519 sign', fn: () => sign(null, input, priv) },
        { name: 'signEar (claims + jose)', fn: () => ear.signEar(appraisal, key, { nonce: 'bench' }) },
        { name: 'node:crypto Ed25519 verify', fn: () => verify(null, input, pub, sig) },
        { name: 'verifyEar (jose + checks)', fn: () => ear.verifyEar(token, key.publicJwk, { nonce: 'bench' }) },
      ],
      { quick: ctx.quick, baseline: 'node:crypto Ed25519 sign' },
    );
    return {
      summary: SUMMARY,
      title: 'IMA logs and EAR tokens',
      sections: [
        ...(imaRes ? [{ heading: `IMA: verify a ${n}-entry ima-ng log (parse, template hashes, PCR 10 replay)`, markdown: imaRes.table }] : []),
        { heading: `EAR: sign and verify a ${token.length}-byte token (20 matched files)`, markdown: earRes.table },
      ],
      notes: [one ? `IMA log: the 1000-entry ima-ng log of this machine's files that scripts/ima-fixtures.mjs makes, ×${reps} (${(text.length / 1e6).toFixed(1)} MB); ${evmNote}.` : 'IMA part skipped: scripts/ima-fixtures.mjs needs evmctl (ima-evm-utils) and openssl.', 'The hashing floor does the same SHA-1 work (template hash = the sha1 bank extension, then the extend) on template data prepared beforehand: no parsing, no checks.'],
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
