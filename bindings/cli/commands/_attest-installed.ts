/**
 * `vmkit attest request --installed`: a whole Debian-family (or RPM-based) machine's
 * installed packages and the SHA-256 of their files (installed.ts), attested
 * in bounded parts (`POST /attest/installed`, docs/attest-service.md
 * "Whole machine"), with a summary per category and every non-affirmed file.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { emit, type CliIO } from '../_common.js';
import type { InstalledResult } from '../../attest/client.js';
import type { ImaEvidence } from '../../attest/evidence.js';

type Values = Record<string, string | boolean | string[] | undefined>;

const ORDER = ['affirmed', 'digest-mismatch', 'modified-conffile', 'not-in-package', 'missing', 'version-not-in-sources', 'not-fetched', 'unowned', 'unowned-ignored'];

const IMA_ORDER = ['affirmed', 'digest-mismatch', 'modified-conffile', 'not-in-package', 'digest-unverifiable', 'version-not-in-sources', 'not-fetched', 'unowned', 'unowned-ignored', 'not-a-file'];
const KERNEL_IMA = '/sys/kernel/security/ima/ascii_runtime_measurements';

// The IMA log sent beside the evidence: --ima <log>, else the running kernel's when the
// machine attested is this one (root /) and the log is readable; --pcr10 is its quoted value.
async function imaOf(values: Values, root: string): Promise<ImaEvidence | undefined> {
  const { readFile } = await import('node:fs/promises');
  let log: string | undefined;
  if (typeof values.ima === 'string') {
    try {
      log = await readFile(values.ima, 'utf8');
    } catch (e) {
      throw new VmkitError('NOT_FOUND', `--ima ${values.ima}: ${(e as Error).message}`, { path: values.ima, cause: e });
    }
  } else if (root === '/') {
    log = await readFile(KERNEL_IMA, 'utf8').catch(() => undefined);
  }
  if (log === undefined) {
    if (values.pcr10 !== undefined) throw new VmkitError('ARG_RANGE', `--pcr10 needs an IMA log (--ima <log>, or ${KERNEL_IMA} readable)`);
    return undefined;
  }
  const ima: ImaEvidence = { log };
  if (typeof values.pcr10 === 'string') {
    const m = /^(sha1|sha256|sha384|sha512|sm3):([0-9a-fA-F]+)$/.exec(values.pcr10);
    if (!m) throw new VmkitError('ARG_RANGE', '--pcr10 must be bank:hex (bank sha1, sha256, sha384, sha512 or sm3)');
    ima.pcr10 = { bank: m[1] as NonNullable<ImaEvidence['pcr10']>['bank'], hex: m[2]!.toLowerCase() };
  }
  const ex = values.exclude;
  if (ex !== undefined) ima.excludes = Array.isArray(ex) ? ex : [String(ex)];
  return ima;
}

/**
 * Collects, sends and prints; exit 0 only when the machine is affirmed.
 * @example `return await requestInstalled(server, values, io);`
 */
export async function requestInstalled(server: string, values: Values, io: CliIO): Promise<number> {
  const root = typeof values.root === 'string' ? values.root : '/';
  const under = values['unowned-under'];
  const unownedUnder = Array.isArray(under) ? under : typeof under === 'string' ? [under] : [];
  const [{ collectInstalled }, { attestInstalled }, { loadJwks }] = await Promise.all([import('../../attest/installed.js'), import('../../attest/client.js'), import('../../attest/service/verifier.js')]);
  const tty = Boolean((process.stderr as { isTTY?: boolean }).isTTY) && !values.json;
  const t0 = performance.now();
  const installed = await collectInstalled({
    root,
    unownedUnder,
    ...(typeof values['digest-cache'] === 'string' ? { digestCache: values['digest-cache'] } : {}),
    ...(tty ? { onProgress: (d: number, t: number) => process.stderr.write(`\rhashing files: ${d}/${t} (${Math.floor((100 * d) / Math.max(t, 1))}%)`) } : {}),
  });
  if (tty) process.stderr.write('\n');
  const collectMs = performance.now() - t0;
  if (installed.packages.length === 0) throw new VmkitError('NOT_FOUND', `${root}: no installed packages in its package database (dpkg or rpm)`);
  const ima = await imaOf(values, root);
  const partBytes = values['part-bytes'] === undefined ? undefined : Number(values['part-bytes']);
  const r: InstalledResult = await attestInstalled({
    serviceUrl: server,
    installed,
    ...(typeof values.jwks === 'string' ? { jwks: (await loadJwks(values.jwks)) as never } : {}),
    ...(partBytes === undefined ? {} : { partBytes }),
    ...(ima ? { ima } : {}),
    ...(tty ? { onPart: (d: number, n: number) => process.stderr.write(`\rattesting: part ${d}/${n}`) } : {}),
  });
  if (tty) process.stderr.write('\n');
  const files = installed.packages.reduce((n, p) => n + p.files.length, 0);
  const notAffirmed = r.items.filter((i) => i.status !== 'affirming');
  emit(io, values.json === true, { status: r.status, packages: installed.packages.length, files, unowned: installed.unowned.length, collectMs: Math.round(collectMs), categories: r.categories, summary: r.summary, items: notAffirmed, ...(r.ima ? { ima: { ...r.ima, items: r.ima.items.filter((i) => i.status !== 'affirming') } } : {}), tokens: r.tokens }, () => {
    const lines = [`status: ${r.status}  (${installed.packages.length} packages, ${files} files, ${installed.unowned.length} unowned; hashed in ${Math.round(collectMs)} ms; ${r.tokens.length} part(s))`];
    for (const c of ORDER) if (r.categories[c]) lines.push(`  ${c.padEnd(24)} ${r.categories[c]}`);
    const unknown = notAffirmed.filter((i) => i.reason === 'version-not-in-sources');
    if (unknown.length) lines.push(`packages whose installed version no configured source has (${unknown.length}): ${unknown.slice(0, 20).map((i) => `${i.name} ${i.version}`).join(', ')}${unknown.length > 20 ? ', …' : ''}`);
    for (const i of notAffirmed.filter((x) => x.kind === 'file' && x.status === 'contraindicated').slice(0, 50)) lines.push(`  contraindicated ${i.path}  (${i.reason}, ${i.name} ${i.version})`);
    for (const i of notAffirmed.filter((x) => x.kind === 'file' && x.status === 'warning').slice(0, 50)) lines.push(`  warning         ${i.path}  (${i.reason}${i.name ? `, ${i.name} ${i.version}` : ''})`);
    if (r.ima) {
      lines.push(`IMA log: ${r.ima.status}${r.ima.pcr10 ? `  (PCR 10 ${r.ima.pcr10.match ? 'matches' : 'does NOT match'} the ${r.ima.pcr10.bank} quote)` : ''}`);
      for (const c of IMA_ORDER) if (r.ima.categories?.[c]) lines.push(`  ${c.padEnd(24)} ${r.ima.categories[c]}`);
      for (const f of r.ima.failures ?? []) lines.push(`  failure ${f.id} line ${f.line}: ${f.message}`);
      for (const i of r.ima.items.filter((x) => x.status === 'contraindicated').slice(0, 50)) lines.push(`  contraindicated ${i.path}  (IMA line ${i.line}: ${i.reason}${i.name ? `, ${i.name} ${i.version}` : ''})`);
    }
    if (notAffirmed.length > 100) lines.push(`  … (--json lists every non-affirmed file)`);
    return lines.join('\n');
  });
  return r.status === 'affirming' ? 0 : 1;
}
