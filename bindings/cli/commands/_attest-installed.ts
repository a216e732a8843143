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

type Values = Record<string, string | boolean | string[] | undefined>;

const ORDER = ['affirmed', 'digest-mismatch', 'modified-conffile', 'not-in-package', 'missing', 'version-not-in-sources', 'not-fetched', 'unowned', 'unowned-ignored'];

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
  const partBytes = values['part-bytes'] === undefined ? undefined : Number(values['part-bytes']);
  const r: InstalledResult = await attestInstalled({
    serviceUrl: server,
    installed,
    ...(typeof values.jwks === 'string' ? { jwks: (await loadJwks(values.jwks)) as never } : {}),
    ...(partBytes === undefined ? {} : { partBytes }),
    ...(tty ? { onPart: (d: number, n: number) => process.stderr.write(`\rattesting: part ${d}/${n}`) } : {}),
  });
  if (tty) process.stderr.write('\n');
  const files = installed.packages.reduce((n, p) => n + p.files.length, 0);
  const notAffirmed = r.items.filter((i) => i.status !== 'affirming');
  emit(io, values.json === true, { status: r.status, packages: installed.packages.length, files, unowned: installed.unowned.length, collectMs: Math.round(collectMs), categories: r.categories, summary: r.summary, items: notAffirmed, tokens: r.tokens }, () => {
    const lines = [`status: ${r.status}  (${installed.packages.length} packages, ${files} files, ${installed.unowned.length} unowned; hashed in ${Math.round(collectMs)} ms; ${r.tokens.length} part(s))`];
    for (const c of ORDER) if (r.categories[c]) lines.push(`  ${c.padEnd(24)} ${r.categories[c]}`);
    const unknown = notAffirmed.filter((i) => i.reason === 'version-not-in-sources');
    if (unknown.length) lines.push(`packages whose installed version no configured source has (${unknown.length}): ${unknown.slice(0, 20).map((i) => `${i.name} ${i.version}`).join(', ')}${unknown.length > 20 ? ', …' : ''}`);
    for (const i of notAffirmed.filter((x) => x.kind === 'file' && x.status === 'contraindicated').slice(0, 50)) lines.push(`  contraindicated ${i.path}  (${i.reason}, ${i.name} ${i.version})`);
    for (const i of notAffirmed.filter((x) => x.kind === 'file' && x.status === 'warning').slice(0, 50)) lines.push(`  warning         ${i.path}  (${i.reason}${i.name ? `, ${i.name} ${i.version}` : ''})`);
    if (notAffirmed.length > 100) lines.push(`  … (--json lists every non-affirmed file)`);
    return lines.join('\n');
  });
  return r.status === 'affirming' ? 0 : 1;
}
