/**
 * A machine's IMA log appraised against the same on-demand file digests as
 * its installed packages (machine.ts): each measured file is compared with
 * the digest its package's signed `.deb`/`.rpm` gives for that path.
 *
 * ```
 * request: { installed: { packages: [{ name, version, architecture, files: [measured paths only] }] },
 *            ima: { log, pcr10?, excludes? } }
 *   log ──verifyImaLog──► template hashes checked, PCR 10 replayed (vs pcr10 when given), excludes
 *    │ per entry (path, digest):
 *    ▼
 *   violation → none (tomtou)        ima-buf, boot_aggregate → none
 *   path owned by no package of the request → unowned (warning; `ignore` rules → unowned-ignored)
 *   owner's version in no source → version-not-in-sources      map not had → not-fetched
 *   path not in the package → not-in-package     digest of another algorithm → digest-unverifiable
 *   same digest → affirmed   differs, conffile → modified-conffile (warning)   differs → digest-mismatch
 *   a template hash or PCR 10 failure → contraindicated (executables: CRYPTO_FAILED)
 * ```
 * The client says which package owns a path; a wrong claim can only make a
 * file compared with another package's signed digest, never affirm a digest
 * no signed package gives for that path.
 * @module
 */
import { VmkitError } from '../errors.js';
import { Ar4si, worst, type ArStatus, type ItemVerdict, type SubmodAppraisal } from './appraise.js';
import { compileExcludes, imaEntryDigest, type ImaExcludes, type ImaLogResult } from './ima.js';
import type { InstalledEvidence, InstalledFile, InstalledPackage } from './installed.js';
import { _packageMaps, type AppraiseInstalledOptions, type MachineIndex, type OnDemandFiles } from './machine.js';

const CATEGORIES = ['affirmed', 'modified-conffile', 'digest-mismatch', 'not-in-package', 'digest-unverifiable', 'version-not-in-sources', 'not-fetched', 'unowned', 'unowned-ignored', 'not-a-file'] as const;

/**
 * Why a measured file is (not) affirmed, in the `vmkit-machine-ima` EAR's `categories`.
 * @example `const c: MachineImaCategory = 'digest-mismatch';`
 */
export type MachineImaCategory = (typeof CATEGORIES)[number];

const STATUS: Record<MachineImaCategory, ArStatus> = {
  affirmed: 'affirming',
  'modified-conffile': 'warning',
  'digest-mismatch': 'contraindicated',
  'not-in-package': 'warning',
  'digest-unverifiable': 'warning',
  'version-not-in-sources': 'warning',
  'not-fetched': 'warning',
  unowned: 'warning',
  'unowned-ignored': 'none',
  'not-a-file': 'none',
};

/**
 * Appraises a verified IMA log (`verifyImaLog`'s result, entries collected)
 * against the file digests of the packages the request names: one
 * `vmkit-machine-ima` submodule (see the module diagram).
 * @example `const sub = await appraiseMachineIma(sourceSet, files, { packages, unowned: [] }, await verifyImaLog(log, { expectedPcr }));`
 */
export async function appraiseMachineIma(index: MachineIndex, files: OnDemandFiles, ev: InstalledEvidence, ima: ImaLogResult & { excludes?: string[] }, options: AppraiseInstalledOptions = {}): Promise<SubmodAppraisal> {
  if (!Array.isArray(ima?.entries)) throw new VmkitError('ARG_TYPE', 'ima must be a verifyImaLog result with its entries');
  const maxListed = options.maxListed ?? 20_000;
  const ignore: ImaExcludes | undefined = options.ignore?.length ? compileExcludes(options.ignore) : undefined;
  // Who owns each path as the machine has it (a diverted file is where dpkg moved it).
  const owner = new Map<string, { p: number; f: InstalledFile }>();
  ev.packages.forEach((p, i) => {
    for (const f of p.files) owner.set(f.at ?? f.path, { p: i, f });
  });
  const measured = new Set<InstalledPackage>();
  for (const e of ima.entries) {
    const o = owner.get(e.path);
    if (o) measured.add(ev.packages[o.p]!);
  }
  const { plans, maps } = await _packageMaps(index, files, ev.packages, options, (p) => measured.has(p));
  const categories = Object.fromEntries(CATEGORIES.map((c) => [c, 0])) as Record<MachineImaCategory, number>;
  const summary = { items: 0, affirming: 0, warning: 0, contraindicated: 0, none: 0, excluded: ima.excluded, omitted: 0 };
  const items: ItemVerdict[] = [];
  let status = 'none' as ArStatus;
  const add = (cat: MachineImaCategory, item: ItemVerdict): void => {
    categories[cat]++;
    summary.items++;
    const s = STATUS[cat];
    if (cat === 'unowned-ignored') summary.excluded++;
    else summary[s]++;
    if (s !== 'none') status = worst(status, s);
    if (cat === 'affirmed') return;
    if (items.length < maxListed) items.push(item);
    else summary.omitted++;
  };
  for (const e of ima.entries) {
    const item: ItemVerdict = { kind: 'ima', status: 'none', path: e.path, line: e.line, matches: [] };
    if (e.violation || e.template === 'ima-buf' || e.path === 'boot_aggregate') {
      item.reason = e.violation ? 'ima.validation.tomtou' : e.template === 'ima-buf' ? 'ima-buf' : 'boot_aggregate';
      add('not-a-file', item);
      continue;
    }
    const d = imaEntryDigest(e);
    if (d) {
      item.alg = d.alg;
      item.hex = d.hex;
    }
    const o = owner.get(e.path);
    const verdict = (cat: MachineImaCategory): void => {
      item.status = STATUS[cat];
      item.reason = cat;
      add(cat, item);
    };
    if (!o) {
      verdict(options.unowned === 'ignore' || (ignore !== undefined && ignore(e.path)) ? 'unowned-ignored' : 'unowned');
      continue;
    }
    const { p, entry } = plans[o.p]!;
    Object.assign(item, { name: p.name, version: p.version, architecture: p.architecture });
    const m = maps[o.p];
    if (!entry) verdict('version-not-in-sources');
    else if (!(m instanceof Map)) verdict('not-fetched');
    else {
      const want = m.get(o.f.path);
      if (!want) verdict('not-in-package');
      else {
        item.matches.push({ ...entry.provenance, path: o.f.path });
        if (!d || d.alg !== want.alg) verdict('digest-unverifiable');
        else if (d.hex === want.hex) verdict('affirmed');
        else verdict(o.f.conffile ? 'modified-conffile' : 'digest-mismatch');
      }
    }
  }
  // The log itself must hold together: template hashes, PCR 10 (when quoted).
  const integrity = ima.failureCount === 0;
  if (!integrity) status = 'contraindicated';
  const ex = status === 'contraindicated' ? Ar4si.CONTRAINDICATED_RUNTIME : status === 'warning' ? Ar4si.UNRECOGNIZED_RUNTIME : status === 'affirming' ? Ar4si.APPROVED_RUNTIME : Ar4si.NO_CLAIM;
  const sub: SubmodAppraisal = { status, trustVector: { executables: integrity ? ex : Ar4si.CRYPTO_FAILED }, policyId: options.policyId ?? 'vmkit:installed-packages-ima/1', summary, items, categories, pcrs: ima.pcrs };
  if (ima.pcrCheck) sub.pcr10 = ima.pcrCheck;
  if (ima.failures.length) sub.failures = ima.failures;
  if (ima.excludes?.length) sub.excludes = ima.excludes;
  return sub;
}
