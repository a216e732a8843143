/**
 * `vmkit attest`: the attestation service against package repositories
 * (`serve`), its client (`request`), token verification (`verify`), an
 * offline check of local files (`check`) and a one-shot index of a source
 * (`index`). See docs/attest-service.md.
 * @module
 */
import { readFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { basename, resolve } from 'node:path';
import { VmkitError } from '../../errors.js';
import { emit, parse, type CliIO, type Command } from '../_common.js';
import type { OpenSourceOptions } from '../../attest/sources/parse-source-line.js';
import type { Digest } from '../../attest/types.js';
import type { Evidence, EvidenceDigest, ImaEvidence } from '../../attest/appraise.js';
import type { SourceSet, SourceSetOptions } from '../../attest/service/refresh.js';
import type { NonceStoreOptions } from '../../attest/service/nonces.js';

// The sources (OpenPGP, XML, decompressors) and the service (JOSE) load when a subcommand runs:
// statically imported, they cost `vmkit --help` (which lists every group) ~0.15 s of start-up.
const serverModule = () => import('../../attest/service/server.js');

const sourceOpts = {
  repo: { type: 'string', multiple: true },
  source: { type: 'string', multiple: true },
  keyring: { type: 'string', multiple: true },
  'apk-key': { type: 'string', multiple: true },
  'allow-unsigned': { type: 'boolean' },
  'allow-expired': { type: 'boolean' },
  'files-of': { type: 'string', multiple: true },
} as const;

type Values = Record<string, string | boolean | string[] | undefined>;

function strings(v: unknown): string[] {
  return Array.isArray(v) ? (v as string[]) : typeof v === 'string' ? [v] : [];
}

/** A file named on the command line; NOT_FOUND names the argument's role and path when it cannot be read. */
async function readArgFile(path: string, what: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (e) {
    throw new VmkitError('NOT_FOUND', `${what} ${path} could not be read`, { cause: e, path });
  }
}

/** Opens the `--repo`/`--source` lines with the keyrings given. */
async function openSources(values: Values, lines: string[] = [...strings(values.repo), ...strings(values.source)], setOptions: SourceSetOptions = {}, lazyKeyring = false): Promise<SourceSet> {
  if (lines.length === 0) throw new VmkitError('ARG_RANGE', 'at least one --repo <source> is required');
  const opts: OpenSourceOptions = {};
  const rings = strings(values.keyring);
  if (rings.length) {
    const bytes = await Promise.all(rings.map(async (p) => new Uint8Array(await readArgFile(p, 'keyring'))));
    if (lazyKeyring) {
      // One source (index): it reads the bytes itself, loading openpgp.js while its prefetch runs.
      opts.keyring = bytes;
    } else {
      const { readKeyring } = await import('../../attest/_openpgp.js');
      opts.keyring = await readKeyring(...bytes);
    }
  }
  const apkKeys = strings(values['apk-key']);
  if (apkKeys.length) {
    // Keyed by file name: an APKINDEX signature names the key file it was made with (.SIGN.RSA.<name>).
    opts.apkKeys = Object.fromEntries(await Promise.all(apkKeys.map(async (p) => [basename(p), (await readArgFile(p, 'apk key')).toString('utf8')] as const)));
  }
  if (values['allow-unsigned']) opts.allowUnsigned = true;
  if (values['allow-expired']) opts.allowExpired = true;
  // serve: the last accepted release dates kept across restarts (rollback protection), the clock skew allowed.
  if (typeof values['state-dir'] === 'string') {
    const { fileReleaseState } = await import('../../attest/sources/release-state.js');
    opts.releaseState = await fileReleaseState(values['state-dir']);
  }
  if (typeof values['max-future-skew'] === 'string') {
    const skew = Number(values['max-future-skew']);
    if (!(skew >= 0) || !Number.isFinite(skew)) throw new VmkitError('ARG_RANGE', '--max-future-skew must be a number of seconds ≥ 0');
    opts.maxFutureSkewMs = skew * 1000;
  }
  const filePackages = strings(values['files-of']);
  // Only deb lines (as `attest index` of a Debian repository): apt.js alone, without the RPM
  // source and the XML parser it loads (saxes, ~30 ms of start-up CPU before the first fetch).
  const onlyDeb = lines.every((l) => l.trim().split(/\s+/, 1)[0] === 'deb');
  const opener = onlyDeb
    ? import('../../attest/sources/apt.js').then(({ AptSource }) => ({ openSource: (l: string, o: OpenSourceOptions) => new AptSource(l, o) }))
    : import('../../attest/sources/parse-source-line.js');
  const [{ openSource }, { SourceSet }] = await Promise.all([opener, import('../../attest/service/refresh.js')]);
  return new SourceSet(lines.map((l) => openSource(l, opts)), filePackages.length ? { ...setOptions, filePackages } : setOptions);
}

/** SHA-256 of a file, streamed. */
function hashFile(path: string): Promise<Digest> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path)
      .on('data', (c) => h.update(c))
      .on('end', () => resolve({ alg: 'sha256', hex: h.digest('hex') }))
      .on('error', (e) => reject(new VmkitError('NOT_FOUND', `${path}: ${e.message}`, { cause: e, path })));
  });
}

async function evidenceOf(values: Values, files: string[]): Promise<Evidence> {
  const { parseDigestArg, parsePackageArg } = await serverModule();
  const digests: EvidenceDigest[] = strings(values.digest).map(parseDigestArg);
  for (const f of files) digests.push({ ...(await hashFile(f)), path: resolve(f) });
  const packages = strings(values.package).map(parsePackageArg);
  const evidence: Evidence = {};
  if (digests.length) evidence.digests = digests;
  if (packages.length) evidence.packages = packages;
  if (typeof values.ima === 'string') {
    const log = (await readArgFile(values.ima, 'IMA log')).toString('utf8');
    const ima: ImaEvidence = { log };
    if (typeof values.pcr10 === 'string') {
      const d = parseDigestArg(values.pcr10);
      if (d.alg === 'md5') throw new VmkitError('ARG_RANGE', '--pcr10 bank must be sha1, sha256, sha384, sha512 or sm3');
      ima.pcr10 = { bank: d.alg, hex: d.hex };
    }
    const ex = strings(values.exclude);
    if (ex.length) ima.excludes = ex;
    evidence.ima = ima;
  } else if (values.pcr10 !== undefined || values.exclude !== undefined) {
    throw new VmkitError('ARG_RANGE', '--pcr10 and --exclude go with --ima <log>');
  }
  if (!evidence.digests && !evidence.packages && !evidence.ima) {
    throw new VmkitError('ARG_RANGE', 'nothing to attest: give files, --digest, --package or --ima');
  }
  return evidence;
}

function listenAddr(values: Values): { host: string; port: number } {
  let host = '127.0.0.1';
  let port = 8080;
  if (typeof values.listen === 'string') {
    const m = /^(?:\[?([^\]]*)\]?:)?(\d+)$/.exec(values.listen);
    if (!m) throw new VmkitError('ARG_RANGE', `--listen must be host:port or port, got ${JSON.stringify(values.listen)}`);
    if (m[1]) host = m[1];
    port = Number(m[2]);
  }
  if (typeof values.port === 'string') port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new VmkitError('ARG_RANGE', '--port must be 0..65535');
  return { host, port };
}

async function serve(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, {
    ...sourceOpts,
    key: { type: 'string' },
    listen: { type: 'string' },
    port: { type: 'string' },
    'verifier-id': { type: 'string' },
    refresh: { type: 'string' },
    'state-dir': { type: 'string' },
    'max-future-skew': { type: 'string' },
    'nonce-secret-file': { type: 'string' },
    'nonce-etcd': { type: 'string', multiple: true },
    'cache-dir': { type: 'string' },
    'max-downloads': { type: 'string' },
    unowned: { type: 'string' },
    ignore: { type: 'string', multiple: true },
  });
  if (positionals.length) throw new VmkitError('ARG_RANGE', `unexpected argument ${JSON.stringify(positionals[0])}`);
  const { host, port } = listenAddr(values);
  const refreshS = values.refresh === undefined ? 300 : Number(values.refresh);
  if (!(refreshS > 0)) throw new VmkitError('ARG_RANGE', '--refresh must be a positive number of seconds');
  const { createVerifier } = await import('../../attest/service/verifier.js');
  const verifier = await createVerifier({
    ...(typeof values.key === 'string' ? { keyFile: values.key } : {}),
    ...(typeof values['verifier-id'] === 'string' ? { verifierId: values['verifier-id'] } : {}),
  });
  const lines = [...strings(values.repo), ...strings(values.source)];
  const sources = await openSources(values, lines, { intervalMs: refreshS * 1000 });
  const t0 = performance.now();
  try {
    await sources.refreshAll({ requireAll: true });
  } catch (e) {
    sources.close();
    throw e;
  }
  const loadMs = performance.now() - t0;
  const { AttestService } = await serverModule();
  // Replicas: one nonce secret for all, and the used nonces in etcd (else this process's table).
  const nonces: NonceStoreOptions = {};
  if (typeof values['nonce-secret-file'] === 'string') {
    nonces.secret = new Uint8Array(await readArgFile(values['nonce-secret-file'], 'nonce secret'));
    if (nonces.secret.length < 32) throw new VmkitError('ARG_RANGE', '--nonce-secret-file must hold at least 32 bytes (e.g. head -c 32 /dev/urandom)');
  }
  const etcd = strings(values['nonce-etcd']).flatMap((e) => e.split(','));
  if (etcd.length) {
    if (!nonces.secret) throw new VmkitError('ARG_RANGE', '--nonce-etcd needs --nonce-secret-file (the replicas must share the secret)');
    nonces.replay = (await import('../../attest/service/replay.js')).etcdReplaySet({ endpoints: etcd });
  }
  // Whole-machine requests (POST /attest/installed): file digests fetched on demand, cached on disk.
  const installed: NonNullable<import('../../attest/service/server.js').AttestServiceOptions['installed']> = {};
  if (typeof values['cache-dir'] === 'string') installed.cacheDir = values['cache-dir'];
  if (values['max-downloads'] !== undefined) installed.maxDownloads = Number(values['max-downloads']);
  if (values.unowned !== undefined) {
    if (values.unowned !== 'warning' && values.unowned !== 'ignore') throw new VmkitError('ARG_RANGE', '--unowned must be warning or ignore');
    installed.unowned = values.unowned;
  }
  if (values.ignore !== undefined) installed.ignore = strings(values.ignore);
  const svc = new AttestService({ sources, verifier, nonces, installed });
  sources.start();
  const url = await svc.listen(port, host);
  const st = sources.status();
  emit(io, values.json, { listening: url, loadMs: Math.round(loadMs), kid: verifier.kid, sources: st }, () =>
    [`vmkit attest: listening on ${url} (index loaded in ${Math.round(loadMs)} ms)`, ...st.map((s) => `  ${s.id}: ${s.packages} packages, ${s.digests} digests`)].join('\n'),
  );
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      void svc.close().then(resolve);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  return 0;
}

async function request(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, {
    server: { type: 'string' },
    digest: { type: 'string', multiple: true },
    package: { type: 'string', multiple: true },
    ima: { type: 'string' },
    pcr10: { type: 'string' },
    exclude: { type: 'string', multiple: true },
    jwks: { type: 'string' },
    installed: { type: 'boolean' },
    root: { type: 'string' },
    'unowned-under': { type: 'string', multiple: true },
    'digest-cache': { type: 'string' },
    'part-bytes': { type: 'string' },
  });
  let server = values.server as string | undefined;
  let files = positionals;
  if (server === undefined && positionals[0] && /^https?:\/\//.test(positionals[0])) [server, ...files] = positionals;
  if (!server) throw new VmkitError('ARG_RANGE', 'vmkit attest request needs --server <url>');
  if (values.installed) {
    if (files.length) throw new VmkitError('ARG_RANGE', '--installed attests the whole machine: give no files');
    return (await import('./_attest-installed.js')).requestInstalled(server, values, io);
  }
  if (values.root !== undefined || values['unowned-under'] !== undefined || values['digest-cache'] !== undefined) throw new VmkitError('ARG_RANGE', '--root, --unowned-under and --digest-cache go with --installed');
  const evidence = await evidenceOf(values, files);
  const { requestAttestation } = await import('../../attest/service/verifier.js');
  const r = await requestAttestation(server, evidence, typeof values.jwks === 'string' ? { jwks: values.jwks } : {});
  emit(io, values.json, r, () => {
    const lines = [`status: ${r.status}`];
    for (const it of r.items) lines.push(`  ${it.status.padEnd(15)} ${it.subject}${it.where ? '  ← ' + it.where : ''}${it.reason ? '  (' + it.reason + ')' : ''}`);
    lines.push(`token: ${r.token}`);
    return lines.join('\n');
  });
  return r.status === 'affirming' ? 0 : 1;
}

async function verify(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, { jwks: { type: 'string' }, nonce: { type: 'string' } });
  const token = positionals[0];
  if (!token || positionals.length !== 1) throw new VmkitError('ARG_RANGE', 'usage: vmkit attest verify <token> --jwks <url|file> [--nonce n]');
  if (typeof values.jwks !== 'string') throw new VmkitError('ARG_RANGE', '--jwks <url|file> is required');
  const { verifyToken } = await import('../../attest/service/verifier.js');
  const ear = await verifyToken(token, values.jwks, typeof values.nonce === 'string' ? values.nonce : undefined);
  emit(io, values.json, { status: ear.status, kid: ear.kid, nonceChecked: ear.nonceChecked, claims: ear.claims }, () =>
    `signature valid (kid ${ear.kid ?? '?'}), not expired${ear.nonceChecked ? ', nonce matches' : ' (nonce NOT checked: give --nonce)'}; status: ${ear.status}`,
  );
  return ear.status === 'affirming' ? 0 : 1;
}

async function check(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, { ...sourceOpts, digest: { type: 'string', multiple: true }, package: { type: 'string', multiple: true }, ima: { type: 'string' }, pcr10: { type: 'string' }, exclude: { type: 'string', multiple: true } });
  const evidence = await evidenceOf(values, positionals);
  const sources = await openSources(values);
  try {
    await sources.refreshAll({ requireAll: true });
    const { appraiseSummary } = await import('../../attest/service/verifier.js');
    const r = await appraiseSummary(evidence, sources);
    emit(io, values.json, r, () => {
      const lines = [`status: ${r.status}`];
      for (const it of r.items) lines.push(`  ${it.status.padEnd(15)} ${it.subject}${it.where ? '  ← ' + it.where : ''}${it.reason ? '  (' + it.reason + ')' : ''}`);
      return lines.join('\n');
    });
    return r.status === 'affirming' ? 0 : 1;
  } finally {
    sources.close();
  }
}

async function index(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, sourceOpts);
  if (positionals.length !== 1) throw new VmkitError('ARG_RANGE', "usage: vmkit attest index '<source>' [--keyring <file>]");
  const sources = await openSources(values, positionals, {}, true);
  try {
    const t0 = performance.now();
    await sources.refreshAll({ requireAll: true });
    const ms = performance.now() - t0;
    const [s] = sources.status();
    emit(io, values.json, { ...s, ms: Math.round(ms) }, () =>
      `${s!.id}: ${s!.packages} packages, ${s!.digests} digests in ${Math.round(ms)} ms${s!.validUntil ? `, valid until ${s!.validUntil.toISOString()}` : ''}`,
    );
    return 0;
  } finally {
    sources.close();
  }
}

/**
 * The `attest` command group (help: help/attest.ts).
 * @example
 * ```ts
 * process.exitCode = await command.run.index!(["rpm http://127.0.0.1:8000/repo", '--allow-unsigned'], process);
 * ```
 */
export const command: Command = {
  run: {
    async keygen(argv: string[], io: CliIO): Promise<number> {
      return (await import('./_attest_keygen.js')).keygen(argv, io);
    },
    serve,
    request,
    verify,
    check,
    index,
  },
};
