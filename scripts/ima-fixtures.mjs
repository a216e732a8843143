#!/usr/bin/env node
/**
 * IMA measurement lists for the attestation specs and benches, made here from
 * real files of this machine, in both forms the kernel exposes:
 *
 *   .cache/ima/<log>.ascii     /sys/kernel/security/ima/ascii_runtime_measurements
 *   .cache/ima/<log>.bin       /sys/kernel/security/ima/binary_runtime_measurements
 *   .cache/ima/<log>.pcrs-<bank>   PCR 0–23 of that bank, "PCR-NN: <hex>" per line
 *                              (the file `evmctl ima_measurement --pcrs` reads)
 *   .cache/ima/keys/           RSA key and X.509 certificate (DER) of the ima-sig signatures
 *   .cache/ima/manifest.json   per log: template, entry count, violations, PCR 10 per bank
 *                              (per-bank and sha1-padded), and every entry's path and digest
 *   .cache/ima/invalid.ascii   a log with a malformed line
 *
 * Logs (boot_aggregate first, one ToMToU violation in each, as a kernel writes them):
 *   ima-ng-sha1     1000 entries, template ima-ng, SHA-1 file digests (ima_hash=sha1)
 *   ima-ng-sha256    200 entries, template ima-ng, SHA-256 file digests
 *   ima-sig           48 entries, template ima-sig, SHA-256; two thirds signed
 *                    (IMA signature v2, RSA-2048: half by `evmctl ima_sign`, half by
 *                    `openssl dgst -sign` behind the v2 header), the rest unsigned
 *   ima              100 entries, the original template (SHA-1 digest, 256-byte name)
 *
 * Every log is checked here by an independent implementation before it is kept:
 * ima-evm-utils' `evmctl ima_measurement` replays the binary list against each
 * bank's PCR 10 (per bank and sha1-padded), re-checks every template hash, and for
 * ima-sig verifies every signature with the certificate (--verify-sig).
 *
 * Cached by this script's hash; a second run is a no-op. Built in a temporary
 * folder and renamed into place, so parallel first runs do not interleave.
 *
 * Usage: node scripts/ima-fixtures.mjs [--force]     Needs: evmctl (ima-evm-utils), openssl.
 * From code: `import { ensureImaFixtures } from './scripts/ima-fixtures.mjs'`.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, createPublicKey } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const SELF = fileURLToPath(import.meta.url);
const ROOT = resolve(dirname(SELF), '..');
/** Where the fixtures live. */
export const IMA_DIR = join(ROOT, '.cache', 'ima');

const SHA1_LEN = 20;
const IMA_NAME_LEN = 256; // the 'ima' template's name field: IMA_EVENT_NAME_LEN_MAX + 1
const BANKS = ['sha1', 'sha256'];
// The kernel's enum hash_algo numbers, as the v2 signature header carries them.
const HASH_ALGO = { sha1: 2, sha256: 4 };

const h = (alg, ...parts) => {
  const x = createHash(alg);
  for (const p of parts) x.update(p);
  return x.digest();
};
const u32 = (v) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
};

function which(cmd) {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Real files of this machine, in a stable order: regular, readable, small, with plain names. */
function realFiles(n) {
  const out = [];
  for (const dir of ['/usr/bin', '/usr/sbin', '/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib', '/etc']) {
    let names;
    try {
      names = readdirSync(dir).sort();
    } catch {
      continue;
    }
    for (const name of names) {
      if (out.length >= n) return out;
      if (!/^[A-Za-z0-9._+-]+$/.test(name)) continue; // the text form has no escaping for spaces
      const path = `${dir}/${name}`;
      try {
        const st = statSync(path);
        if (!st.isFile() || st.size > 512 * 1024) continue;
        out.push({ path, bytes: readFileSync(path) });
      } catch {
        // unreadable (permissions): not measurable by us either
      }
    }
  }
  if (out.length < n) throw new Error(`ima-fixtures: only ${out.length} readable files found, ${n} needed`);
  return out;
}

/**
 * One entry's fields as the kernel keeps them. `data` is the template data that the
 * template hash and every PCR bank hash (for 'ima': digest ‖ name padded to 256).
 */
function entry(template, digestAlg, digest, path, sig, violation = false) {
  const p = Buffer.from(path);
  let data;
  if (template === 'ima') {
    data = Buffer.alloc(SHA1_LEN + IMA_NAME_LEN);
    digest.copy(data, 0);
    p.copy(data, SHA1_LEN);
  } else {
    const d = Buffer.concat([Buffer.from(`${digestAlg}:\0`), digest]);
    const parts = [u32(d.length), d, u32(p.length + 1), p, Buffer.from([0])];
    if (template === 'ima-sig') parts.push(u32(sig ? sig.length : 0), sig ?? Buffer.alloc(0));
    data = Buffer.concat(parts);
  }
  // A violation (ToMToU, open-writers) is logged with an all-zero template hash: its data was never hashed.
  const th = violation ? Buffer.alloc(SHA1_LEN) : h('sha1', data);
  return { template, digestAlg, digest, path, sig, violation, data, th };
}

/** ascii_runtime_measurements: "%2d " PCR, template hash hex, " name", then " field" per non-empty field. */
function asciiLine(e) {
  const f = e.template === 'ima' ? [e.digest.toString('hex'), e.path] : [`${e.digestAlg}:${e.digest.toString('hex')}`, e.path];
  let s = `10 ${e.th.toString('hex')} ${e.template}`;
  for (const x of f) s += ` ${x}`;
  if (e.template === 'ima-sig') s += ` ${e.sig ? e.sig.toString('hex') : ''}`; // an empty field still gets its separator
  return s + '\n';
}

/** binary_runtime_measurements (host byte order = little-endian here). */
function binaryRecord(e) {
  const name = Buffer.from(e.template);
  const head = [u32(10), e.th, u32(name.length), name];
  if (e.template === 'ima') {
    // The old template: no data length; digest, then the name with a 32-bit length and no NUL.
    const p = Buffer.from(e.path);
    return Buffer.concat([...head, e.digest, u32(p.length), p]);
  }
  return Buffer.concat([...head, u32(e.data.length), e.data]);
}

/** PCR 10 replayed as the kernel extends it: per bank (kernel ≥ 5.8) and SHA-1 zero-padded (older). */
function replay(entries) {
  const pcr = {};
  const padded = {};
  for (const b of BANKS) {
    const len = h(b, '').length;
    let v = Buffer.alloc(len);
    let w = Buffer.alloc(len);
    for (const e of entries) {
      const ext = e.violation ? Buffer.alloc(len, 0xff) : h(b, e.data);
      const pad = Buffer.alloc(len);
      (e.violation ? Buffer.alloc(SHA1_LEN, 0xff) : e.th).copy(pad);
      v = h(b, v, ext);
      w = h(b, w, pad);
    }
    pcr[b] = v.toString('hex');
    padded[b] = w.toString('hex');
  }
  return { pcr, padded };
}

function pcrsFile(bank, hex) {
  let s = '';
  for (let i = 0; i < 24; i++) s += `PCR-${String(i).padStart(2, '0')}: ${i === 10 ? hex : '00'.repeat(hex.length / 2)}\n`;
  return s;
}

/** Runs evmctl ima_measurement; returns its exit status and output. */
function evmctl(args) {
  const r = spawnSync('evmctl', args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  return { status: r.status ?? -1, out: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}

/** IMA signature v2 (security.ima): 03 02 hash_algo keyid[4] be16(size) RSA PKCS#1 v1.5 signature. */
function opensslSign(dir, file, keyid) {
  const sig = execFileSync('openssl', ['dgst', '-sha256', '-sign', join(dir, 'keys', 'ima-priv.pem'), file]);
  const hdr = Buffer.alloc(9);
  hdr[0] = 0x03; // EVM_IMA_XATTR_DIGSIG
  hdr[1] = 2; // DIGSIG_VERSION_2
  hdr[2] = HASH_ALGO.sha256;
  keyid.copy(hdr, 3);
  hdr.writeUInt16BE(sig.length, 7);
  return Buffer.concat([hdr, sig]);
}

export function build(out) {
  mkdirSync(join(out, 'keys'), { recursive: true });
  mkdirSync(join(out, 'signed'), { recursive: true });
  const key = join(out, 'keys', 'ima-priv.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', join(out, 'keys', 'ima-cert.pem'), '-days', '3650', '-subj', '/CN=vmkit IMA fixture', '-addext', 'subjectKeyIdentifier=hash'], { stdio: 'ignore' });
  execFileSync('openssl', ['x509', '-in', join(out, 'keys', 'ima-cert.pem'), '-outform', 'DER', '-out', join(out, 'keys', 'ima-cert.der')]);
  // evmctl's key id (v2): the last 4 bytes of SHA-1 over the DER RSAPublicKey.
  const pub = createPublicKey(readFileSync(join(out, 'keys', 'ima-cert.pem')));
  const keyid = h('sha1', pub.export({ type: 'pkcs1', format: 'der' })).subarray(16);

  const files = realFiles(1000);
  // boot_aggregate on a machine without a TPM: the bank hash over PCRs 0-7 (sha1) or 0-9, all zero.
  const boot = (alg) => entry('ima-ng', alg, h(alg, Buffer.alloc(h(alg, '').length * (alg === 'sha1' ? 8 : 10))), 'boot_aggregate');
  const logs = {};
  const withViolation = (list, at, template, alg) => {
    const v = entry(template, alg, Buffer.alloc(h(alg, '').length), list[at].path, undefined, true);
    list.splice(at, 0, v);
    return list;
  };

  logs['ima-ng-sha1'] = withViolation([boot('sha1'), ...files.slice(0, 998).map((f) => entry('ima-ng', 'sha1', h('sha1', f.bytes), f.path))], 500, 'ima-ng', 'sha1');
  logs['ima-ng-sha256'] = withViolation([boot('sha256'), ...files.slice(0, 198).map((f) => entry('ima-ng', 'sha256', h('sha256', f.bytes), f.path))], 100, 'ima-ng', 'sha256');
  const sigEntries = [];
  files.slice(0, 46).forEach((f, i) => {
    let sig;
    if (i % 3 !== 2) {
      // Both signers read the file: sign a copy of its bytes as measured.
      const copy = join(out, 'signed', `${i}`);
      writeFileSync(copy, f.bytes);
      if (i % 2 === 0) {
        // evmctl writes <file>.sig.
        execFileSync('evmctl', ['ima_sign', '--sigfile', '--key', key, '-a', 'sha256', copy], { stdio: 'ignore' });
        sig = readFileSync(`${copy}.sig`);
      } else {
        sig = opensslSign(out, copy, keyid);
        writeFileSync(`${copy}.sig`, sig);
      }
      rmSync(copy);
    }
    sigEntries.push(entry('ima-sig', 'sha256', h('sha256', f.bytes), f.path, sig));
  });
  logs['ima-sig'] = withViolation([entry('ima-sig', 'sha256', h('sha256', Buffer.alloc(32 * 10)), 'boot_aggregate'), ...sigEntries], 20, 'ima-sig', 'sha256');
  logs.ima = withViolation([entry('ima', 'sha1', h('sha1', Buffer.alloc(20 * 8)), 'boot_aggregate'), ...files.slice(0, 98).map((f) => entry('ima', 'sha1', h('sha1', f.bytes), f.path))], 50, 'ima', 'sha1');

  const manifest = { generatedBy: 'scripts/ima-fixtures.mjs', evmctl: execFileSync('evmctl', ['--version'], { encoding: 'utf8' }).trim(), keyid: keyid.toString('hex'), logs: {} };
  for (const [name, entries] of Object.entries(logs)) {
    writeFileSync(join(out, `${name}.ascii`), entries.map(asciiLine).join(''));
    writeFileSync(join(out, `${name}.bin`), Buffer.concat(entries.map(binaryRecord)));
    const { pcr, padded } = replay(entries);
    for (const b of BANKS) writeFileSync(join(out, `${name}.pcrs-${b}`), pcrsFile(b, pcr[b]));
    // The independent check: evmctl replays the binary list, bank by bank, and re-checks the template hashes.
    const bin = join(out, `${name}.bin`);
    const sigArgs = ['--key', join(out, 'keys', 'ima-cert.der')];
    for (const b of BANKS) {
      const r = evmctl(['-v', 'ima_measurement', '--ignore-violations', ...sigArgs, '--pcrs', `${b},${join(out, `${name}.pcrs-${b}`)}`, bin]);
      if (r.status !== 0 || !/Matched per TPM bank/.test(r.out)) throw new Error(`ima-fixtures: evmctl does not agree with ${name} ${b} (exit ${r.status}):\n${r.out}`);
    }
    const pf = join(out, `${name}.padded-sha256`);
    writeFileSync(pf, pcrsFile('sha256', padded.sha256));
    const rp = evmctl(['-v', 'ima_measurement', '--ignore-violations', ...sigArgs, '--pcrs', `sha256,${pf}`, bin]);
    if (rp.status !== 0 || !/Matched SHA1 padded TPM digest/.test(rp.out)) throw new Error(`ima-fixtures: evmctl does not agree with ${name} sha1-padded (exit ${rp.status}):\n${rp.out}`);
    rmSync(pf);
    const signed = entries.filter((e) => e.sig).length;
    if (signed) {
      // -v prints each entry and "<path>: verification is OK" per good signature; --verify-sig checks it against the listed digest.
      const r = evmctl(['-v', 'ima_measurement', '--ignore-violations', '--verify-sig', ...sigArgs, '--pcrs', `sha256,${join(out, `${name}.pcrs-sha256`)}`, bin]);
      const ok = (r.out.match(/: verification is OK/g) ?? []).length;
      if (ok !== signed) throw new Error(`ima-fixtures: evmctl verified ${ok} of ${signed} signatures in ${name}:\n${r.out.slice(-2000)}`);
    }
    manifest.logs[name] = {
      template: entries[1].template,
      digestAlg: entries[1].digestAlg,
      count: entries.length,
      violations: entries.filter((e) => e.violation).length,
      signed,
      pcr10: pcr,
      pcr10Sha1Padded: padded,
      entries: entries.map((e) => ({ path: e.path, digest: `${e.digestAlg}:${e.digest.toString('hex')}`, templateHash: e.th.toString('hex'), violation: e.violation, ...(e.sig ? { signature: e.sig.toString('hex') } : {}) })),
    };
  }
  writeFileSync(join(out, 'invalid.ascii'), readFileSync(join(out, 'ima-ng-sha256.ascii'), 'utf8').split('\n').slice(0, 3).join('\n') + '\nthis-is-not-an-ima-line\n');
  writeFileSync(join(out, 'manifest.json'), JSON.stringify(manifest, null, 1));
  rmSync(join(out, 'signed'), { recursive: true, force: true });
}

/** Builds .cache/ima/ unless it is current; returns its path. Throws when evmctl or openssl is missing. */
export function ensureImaFixtures({ force = false } = {}) {
  const want = createHash('sha256').update(readFileSync(SELF)).digest('hex');
  const stamp = join(IMA_DIR, '.stamp');
  if (!force && existsSync(stamp) && readFileSync(stamp, 'utf8') === want) return IMA_DIR;
  for (const t of ['evmctl', 'openssl']) if (!which(t)) throw new Error(`ima-fixtures: missing ${t} (apt-get install ${t === 'evmctl' ? 'ima-evm-utils' : 'openssl'})`);
  const tmp = `${IMA_DIR}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    build(tmp);
    writeFileSync(join(tmp, '.stamp'), want);
    // Another process may have finished first: its copy is as good as ours.
    if (existsSync(stamp) && readFileSync(stamp, 'utf8') === want) return IMA_DIR;
    rmSync(IMA_DIR, { recursive: true, force: true });
    renameSync(tmp, IMA_DIR);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return IMA_DIR;
}

if (process.argv[1] && resolve(process.argv[1]) === SELF) {
  try {
    const dir = ensureImaFixtures({ force: process.argv.includes('--force') });
    console.log(`IMA fixtures in ${dir}`);
  } catch (e) {
    console.error(e.message);
    process.exit(1);
  }
}
