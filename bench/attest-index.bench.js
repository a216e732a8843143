// Digest index benchmarks (docs/attest-sources.md):
//  1. indexing a full Debian main Packages file: parsePackages + DigestIndex (digests in the wasm
//     core) against parsePackages + a plain JS Map<hex string, package id>, same run, same parser;
//  2. memory held by each, for those packages and for 1 M file-level digests;
//  3. lookups by raw digest bytes: DigestIndex.has / lookupDigest / hasMany (one core call per
//     batch) against Map.get (with the hex conversion a byte lookup needs — toHex is Node's
//     Buffer hex encoder — and with hex strings made beforehand);
//  4. a request appraised as the service does (appraise() over the index; requests of 8, 64 and
//     1000 hex digests, and a 20 000-entry IMA list): DigestIndex.lookupMany (the request's hex
//     decoded and looked up in one core call) against the best plain Map we could write — the
//     same appraise() over a Map<hex, Provenance[]> answering lookupMany with one Map.get per
//     digest on the hex strings as they arrive — with wall and CPU time, interleaved rounds.
//  5. `vmkit attest index` of Debian bookworm main as a whole process (the real InRelease and
//     Packages.xz, fetched once through the configured mirror into .cache/attest-index-bench/, read
//     as a file: mirror like the peer's input, and served from 127.0.0.1 for an HTTP row): streamed through `xz -dc`, hashed and parsed as the bytes arrive,
//     against `xz -dc Packages.xz | grep -c ^Package:` — interleaved rounds, medians, wall, CPU
//     (the whole process tree, GNU time) and peak RSS.
// The Packages file is the machine's own from `apt-get update` (/var/lib/apt/lists, lz4) when
// present, else a synthetic one of the same shape; the table says which.
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { loadCore, measure, median, fmtNs, hasTool } from './_lib.js';
import { ensureImaFixtures } from '../scripts/ima-fixtures.mjs';

/** The headline rows of RESULTS.md's opening table (bench/_summary.js): rows of this suite's own tables. */
export const SUMMARY = [
  { what: "Digest lookups by raw SHA-256 (1000 per op)", section: "Lookups by raw SHA-256 (1000 per op)", vmkit: "DigestIndex.has(bytes)", peer: "Map.get(toHex(bytes))" },
  { what: "lookupMany of 1000 packed raw SHA-256 against Map.get of the Map's own hex keys", section: "Lookups by raw SHA-256 (1000 per op)", vmkit: "DigestIndex.lookupMany(1000 packed raw digests)", peer: "Map.get(hex string)" },
];

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc');

/** The first paragraphs of `text` up to about `max` bytes (--quick: a share of the real file). */
function head(text, max) {
  if (!max || text.length <= max) return text;
  return text.slice(0, text.indexOf('\n\n', max) + 2);
}
/** --quick: about 8 MiB of the Packages file (some 10 000 packages) instead of all of it. */
const QUICK_PACKAGES = 8 << 20;

function realPackages() {
  const dir = '/var/lib/apt/lists';
  if (!existsSync(dir)) return undefined;
  const f = readdirSync(dir).find((n) => /_main_binary-amd64_Packages(\.lz4)?$/.test(n) && n.includes('debian_dists_bookworm_main'));
  if (!f) return undefined;
  const path = `${dir}/${f}`;
  try {
    const text = f.endsWith('.lz4') ? execFileSync('lz4', ['-dc', path], { maxBuffer: 1 << 30 }).toString('utf8') : execFileSync('cat', [path], { maxBuffer: 1 << 30 }).toString('utf8');
    return { text, what: `real: ${f} (apt-get update)` };
  } catch {
    return undefined;
  }
}

function syntheticPackages(n) {
  // Same shape as Debian's: ~20 fields, a long Description, ~750 bytes a paragraph.
  const parts = [];
  for (let i = 0; i < n; i++) {
    const name = `pkg${i.toString(36)}-${(i * 7919) % 1000}`;
    parts.push(
      `Package: ${name}\nSource: src${i % 30000}\nVersion: 1:${i % 10}.${i % 97}-${i % 5}\nInstalled-Size: ${i % 9000}\n` +
        `Maintainer: Debian Maintainer <m${i % 500}@debian.org>\nArchitecture: ${i % 4 ? 'amd64' : 'all'}\n` +
        `Depends: libc6 (>= 2.34), libfoo${i % 300} (>= 1.2)\nDescription: synthetic package ${i}\n` +
        `Homepage: https://example.org/${name}\nDescription-md5: ${randomBytes(16).toString('hex')}\nTag: role::program, use::${i % 40}\n` +
        `Section: utils\nPriority: optional\nFilename: pool/main/${name[0]}/${name}/${name}_1.0_amd64.deb\nSize: ${1000 + (i % 100000)}\n` +
        `MD5sum: ${randomBytes(16).toString('hex')}\nSHA256: ${randomBytes(32).toString('hex')}\n\n`,
    );
  }
  return { text: parts.join(''), what: `synthetic: ${n} paragraphs (no apt lists on this machine)` };
}

// The SHA256 of a parsed record as its own flat string.
const hexOf = (p) => Buffer.from(p.hex.buffer, p.hex.byteOffset + p.sha256At, 64).toString('latin1');
const own = (s) => (s.length < 13 ? s : (s + ' ').slice(0, -1));

function heap() {
  gc();
  gc();
  return process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
}

export async function run(ctx) {
  await loadCore();
  const { DigestIndex } = await import('../dist/attest/index.js');
  const { toHex } = await import('../dist/attest/index-store.js');
  const { parsePackages } = await import('../dist/attest/sources/deb822.js');
  const { core } = await import('../dist/core.js');
  const { PackagesParser } = await import('../dist/attest/sources/deb822.js');
  const { _CorePackagesParser } = await import('../dist/attest/sources/_packages-scan.js');
  const { _PoolInfo } = await import('../dist/attest/sources/_pool.js');
  const coreBytes = () => core().exports.memory.buffer.byteLength;
  const src = realPackages() ?? syntheticPackages(63000);
  const limit = ctx.quick ? QUICK_PACKAGES : 0;
  const text = head(src.text, limit);
  ctx.log(`Packages: ${src.what}, ${(text.length / 2 ** 20).toFixed(1)} MiB${text.length < src.text.length ? ' (--quick: its first paragraphs)' : ''}`);
  const repo = 'deb http://deb.debian.org/debian bookworm main';

  // 1. Indexing, median of a few full runs each.
  const runs = ctx.quick ? 2 : 5;
  // The streamed path of `attest index` (apt.ts), fed 64 KiB chunks of the bytes as a pipe gives
  // them: the core's Packages scanner, against the JS parser it replaced (CPU time of this process).
  const bytes = new Uint8Array(Buffer.from(text, 'utf8'));
  const chunks = [];
  for (let o = 0; o < bytes.length; o += 65536) chunks.push(bytes.subarray(o, o + 65536));
  const streamJs = () => {
    const ix = new DigestIndex();
    const fn = [];
    const sz = [];
    const p = new PackagesParser((r) => { ix.addPackageSha256(repo, r.package, r.version, r.architecture, r.hex, r.sha256At, true); fn.push(r.filename); sz.push(r.size); });
    for (const c of chunks) p.push(c);
    p.end();
    ix.has('sha256', new Uint8Array(32));
    ix.close();
  };
  const streamCore = () => {
    const ix = new DigestIndex();
    const pool = new _PoolInfo();
    const p = new _CorePackagesParser((r) => { ix.addPackageSha256Raw(repo, r.package, r.version, r.architecture, r.digest, r.digestAt); pool.add(r.text, r.filenameAt, r.filenameLength, r.size); });
    for (const c of chunks) p.push(c);
    p.end();
    ix.has('sha256', new Uint8Array(32));
    ix.close();
  };
  const cpuOf = (fn) => { const c0 = process.cpuUsage(); const t = performance.now(); fn(); const c = process.cpuUsage(c0); return { wall: performance.now() - t, cpu: (c.user + c.system) / 1000 }; };
  const sJs = [];
  const sCore = [];
  for (let r = 0; r < runs + 2; r++) {
    sJs.push(cpuOf(streamJs));
    sCore.push(cpuOf(streamCore));
  }
  const mc = (xs, k) => median(xs.map((x) => x[k]));
  const tIx = [];
  const tMap = [];
  const tParse = [];
  let count = 0;
  for (let r = 0; r < runs; r++) {
    let t = performance.now();
    count = parsePackages(text, () => {});
    tParse.push(performance.now() - t);
    t = performance.now();
    const ix = new DigestIndex();
    parsePackages(text, (p) => ix.addPackageSha256(repo, p.package, p.version, p.architecture, p.hex, p.sha256At));
    ix.has('sha256', new Uint8Array(32)); // flushes the last batch into the core
    tIx.push(performance.now() - t);
    ix.close();
    t = performance.now();
    build('pkg-map', 0, text, undefined, repo, DigestIndex, parsePackages);
    tMap.push(performance.now() - t);
  }
  const idxMs = median(tIx);
  const streamNote = `Streamed index path (the bytes of the Packages file in 64 KiB chunks, as \`attest index\` parses them): the core scanner + addPackageSha256Raw + Filename bytes ${(mc(sJs, 'cpu') / mc(sCore, 'cpu')).toFixed(2)}× less CPU than PackagesParser (JS) + addPackageSha256 + Filename strings (${fmtNs(mc(sCore, 'cpu') * 1e6)} against ${fmtNs(mc(sJs, 'cpu') * 1e6)}, medians of ${runs + 2} interleaved warm runs; a cold run in a fresh process, as the CLI does it, saves more: the JS parser runs in V8's lower tiers at first).`;

  // 2. Memory, each structure built alone in a fresh process (bench/attest-index.bench.js --child).
  const N = ctx.quick ? 200_000 : 1_000_000;
  const child = (kind) => JSON.parse(execFileSync(process.execPath, [fileURLToPath(import.meta.url), '--child', kind, String(N), String(limit)], { maxBuffer: 1 << 20 }).toString());
  const memPkgMap = child('pkg-map');
  const memPkgIx = child('pkg-index');
  const memFileMap = child('files-map');
  const memFileIx = child('files-index');

  const ix = new DigestIndex();
  parsePackages(text, (p) => ix.addPackageSha256(repo, p.package, p.version, p.architecture, p.hex, p.sha256At));
  const map = new Map();
  // Keys as own flat strings (not views into the Packages text): the Map's best case for hashing and comparing.
  parsePackages(text, (p) => map.set(hexOf(p), [{ repository: repo, package: p.package, version: p.version, architecture: p.architecture }]));

  // 3. Lookups: 1000 present digests per op (and a miss mix).
  const B = 1000;
  const probes = [];
  const probeHex = [];
  const entries = [...map.keys()];
  for (let i = 0; i < B; i++) {
    const h = entries[(i * 7919) % entries.length];
    probeHex.push(h);
    probes.push(Uint8Array.from(Buffer.from(h, 'hex')));
  }
  const misses = Array.from({ length: B }, () => new Uint8Array(randomBytes(32)));
  const packed = new Uint8Array(B * 32);
  probes.forEach((p, i) => packed.set(p, i * 32));
  const hits = new Uint8Array(B);
  // The same digests as hex text in bytes (n × 64 ASCII digits, as a request body holds them).
  const hexBytes = new Uint8Array(Buffer.from(probeHex.join(''), 'latin1'));
  const hexBuf = Buffer.from(hexBytes.buffer, hexBytes.byteOffset, hexBytes.length);
  // The strings as a request brings them: fresh from JSON.parse each op (no hash cached yet).
  const probeJson = JSON.stringify(probeHex);
  let sink = 0;
  const { table, results: lk } = await measure(
    [
      { name: 'Map.get(toHex(bytes))', items: B, fn: () => { for (let i = 0; i < B; i++) if (map.get(toHex(probes[i])) !== undefined) sink++; } },
      { name: 'Map.get(hex string)', items: B, fn: () => { for (let i = 0; i < B; i++) if (map.get(probeHex[i]) !== undefined) sink++; } },
      { name: 'DigestIndex.has(bytes)', items: B, fn: () => { for (let i = 0; i < B; i++) if (ix.has('sha256', probes[i])) sink++; } },
      { name: 'DigestIndex.lookupDigest(bytes)', items: B, fn: () => { for (let i = 0; i < B; i++) sink += ix.lookupDigest('sha256', probes[i]).length; } },
      { name: 'DigestIndex.lookupHex(hex string)', items: B, fn: () => { for (let i = 0; i < B; i++) sink += ix.lookupHex('sha256', probeHex[i]).length; } },
      { name: 'DigestIndex.lookupMany(1000 hex strings)', items: B, fn: () => { sink += ix.lookupMany('sha256', probeHex).length; } },
      { name: 'JSON.parse(1000 hex strings) only', items: B, fn: () => { sink += JSON.parse(probeJson).length; } },
      { name: 'JSON.parse + Map.get(each fresh string)', items: B, fn: () => { const h = JSON.parse(probeJson); for (let i = 0; i < B; i++) if (map.get(h[i]) !== undefined) sink++; } },
      { name: 'JSON.parse + DigestIndex.lookupMany(fresh strings)', items: B, fn: () => { sink += ix.lookupMany('sha256', JSON.parse(probeJson)).length; } },
      { name: 'DigestIndex.has(miss)', items: B, fn: () => { for (let i = 0; i < B; i++) if (ix.has('sha256', misses[i])) sink++; } },
      { name: 'DigestIndex.hasMany(1000 packed bytes)', items: B, fn: () => { sink += ix.hasMany('sha256', packed, hits); } },
      { name: 'DigestIndex.lookupMany(1000 packed raw digests)', items: B, fn: () => { sink += ix.lookupMany('sha256', packed).length; } },
      { name: 'DigestIndex.lookupManyHexText(1000 digests as hex bytes)', items: B, fn: () => { sink += ix.lookupManyHexText('sha256', hexBytes).length; } },
      { name: 'Map.get(latin1 string of each 64 hex bytes)', items: B, fn: () => { for (let i = 0; i < B; i++) if (map.get(hexBuf.latin1Slice(i * 64, i * 64 + 64)) !== undefined) sink++; } },
    ],
    { quick: ctx.quick, baseline: 'Map.get(toHex(bytes))' },
  );
  if (sink < 0) console.log(sink);
  const rate = (name) => { const r = lk.find((x) => x.name === name); return r.items / (r.medianNs / 1e9); };
  const nsOf = (name) => lk.find((x) => x.name === name).medianNs;
  const hitRatio = rate('DigestIndex.lookupMany(1000 hex strings)') / rate('Map.get(hex string)');
  const rawRatio = rate('DigestIndex.lookupMany(1000 packed raw digests)') / rate('Map.get(hex string)');
  const textRatio = rate('DigestIndex.lookupManyHexText(1000 digests as hex bytes)') / rate('Map.get(hex string)');
  const textPeerRatio = rate('DigestIndex.lookupManyHexText(1000 digests as hex bytes)') / rate('Map.get(latin1 string of each 64 hex bytes)');
  const freshRatio = (nsOf('JSON.parse + Map.get(each fresh string)') - nsOf('JSON.parse(1000 hex strings) only')) / (nsOf('JSON.parse + DigestIndex.lookupMany(fresh strings)') - nsOf('JSON.parse(1000 hex strings) only'));

  // 4. Requests appraised as the service does.
  const svc = await serviceBench(ctx, ix, map, entries);
  ix.close();

  // 4. File digests of a real .deb (from apt's cache): debFileDigests against dpkg-deb + sha256sum.
  const debSection = await debBench(ctx);

  // 5. The whole `vmkit attest index` of the real bookworm main against xz | grep.
  const stream = await streamBench(ctx);

  const MiB = (b) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  const idxTable = [
    '| task | median (of ' + runs + ') | per package | vs Map build |',
    '|---|---:|---:|---:|',
    `| parsePackages only | ${fmtNs(median(tParse) * 1e6)} | ${fmtNs((median(tParse) * 1e6) / count)} | |`,
    `| parse + Map: hex → Provenance[], name → entries (peer) | ${fmtNs(median(tMap) * 1e6)} | ${fmtNs((median(tMap) * 1e6) / count)} | 1.00× |`,
    `| parse + DigestIndex | ${fmtNs(idxMs * 1e6)} | ${fmtNs((idxMs * 1e6) / count)} | ${(median(tMap) / idxMs).toFixed(2)}× |`,
  ].join('\n');
  const streamTable = [
    `| path (64 KiB chunks, ${runs + 2} interleaved runs) | wall median | CPU median | per package (CPU) | CPU vs JS parser |`,
    '|---|---:|---:|---:|---:|',
    `| PackagesParser (JS) + addPackageSha256 + Filename strings (the path before) | ${fmtNs(mc(sJs, 'wall') * 1e6)} | ${fmtNs(mc(sJs, 'cpu') * 1e6)} | ${fmtNs((mc(sJs, 'cpu') * 1e6) / count)} | 1.00× |`,
    `| core Packages scanner + addPackageSha256Raw + Filename bytes (attest index now) | ${fmtNs(mc(sCore, 'wall') * 1e6)} | ${fmtNs(mc(sCore, 'cpu') * 1e6)} | ${fmtNs((mc(sCore, 'cpu') * 1e6) / count)} | ${(mc(sJs, 'cpu') / mc(sCore, 'cpu')).toFixed(2)}× |`,
  ].join('\n');
  const row = (name, m) => `| ${name} | ${m.entries} | ${MiB(m.heap)} | ${m.core ? MiB(m.core) : '—'} | ${MiB(m.heap + m.core)} | ${((m.heap + m.core) / m.entries).toFixed(0)} B | ${fmtNs(m.ms * 1e6)} |`;
  const memTable = [
    '| structure | entries | JS heap + buffers | core table | total | per entry | build |',
    '|---|---:|---:|---:|---:|---:|---:|',
    row('Map: hex → Provenance[] + name → entries (peer)', memPkgMap),
    row('DigestIndex (Packages file)', memPkgIx),
    row('Map: hex → Provenance[] with path (peer)', memFileMap),
    row('DigestIndex.addFile (file digests)', memFileIx),
  ].join('\n');
  return {
    summary: SUMMARY,
    title: 'attest-index: digest index (wasm core) against a plain Map',
    sections: [
      { heading: `Indexing a Debian main Packages file (${count} packages, ${(text.length / 2 ** 20).toFixed(1)} MiB text)`, markdown: idxTable },
      { heading: 'The streamed index path: Packages bytes in chunks through the core scanner against the JS parser', markdown: streamTable },
      { heading: 'Memory held', markdown: memTable },
      ...(stream.section ? [stream.section] : []),
      { heading: 'Lookups by raw SHA-256 (1000 per op)', markdown: table },
      { heading: 'A request appraised as the service does: DigestIndex.lookupMany against a Map (same appraise())', markdown: svc.markdown },
      ...(debSection ? [debSection] : []),
    ],
    notes: [
      ...stream.notes,
      streamNote,
      `Goal (issue 23) "hex lookups: lookupMany (hits) ≥ 1.0× Map.get": against Map.get of the very strings the Map was built from (hash cached, keys equal by pointer: the Map's best case) ${hitRatio >= 1 ? 'met' : 'NOT met'} (${hitRatio.toFixed(2)}×: ${(rate('DigestIndex.lookupMany(1000 hex strings)') / 1e6).toFixed(1)} M/s against ${(rate('Map.get(hex string)') / 1e6).toFixed(1)} M/s); against Map.get of strings fresh from JSON.parse, as a request brings them (JSON.parse's own time taken off both) ${freshRatio >= 1 ? 'met' : 'NOT met'} (${freshRatio.toFixed(2)}×). lookupMany writes the request's hex into core memory as one text (one join, one latin1 write, ~20 ns a digest) and the core decodes every digest, then looks them all up in a pass of its own (independent cache misses overlap: ~20 ns a digest in a 63 000-entry table); a hit reads one cached slot per entry on the host.`,
      `Goal (issue 23) "hex lookups ≥ 1.0× Map.get", the digests as bytes (the Map's side unchanged: Map.get of its own key strings, hash cached, its best case): raw SHA-256 digests packed in one Uint8Array, \`lookupMany('sha256', packed)\` ${rawRatio >= 1 ? 'met' : 'NOT met'} (${rawRatio.toFixed(2)}×, ${(rate('DigestIndex.lookupMany(1000 packed raw digests)') / 1e6).toFixed(1)} M/s); hex text in bytes (n × 64 ASCII digits back to back), \`lookupManyHexText\` (decoded in the core) ${textRatio >= 1 ? 'met' : 'NOT met'} (${textRatio.toFixed(2)}×; against a Map fed the same bytes, a latin1 string made per digest: ${textPeerRatio.toFixed(2)}×). A lookup in the core costs ~8 ns a digest (a 63 000-entry table, misses overlapped); decoding 64 hex digits another ~9-10 ns (SIMD, validated), which a Map.get of a string whose hash is cached (~17 ns) does not pay.`,
      `Packages file: ${src.what}.`,
      `Goal: index in < 2 s — ${idxMs < 2000 ? 'met' : 'NOT met'} (${(idxMs / 1000).toFixed(2)} s); lookups > 1 M/s — ${rate('DigestIndex.has(bytes)') > 1e6 ? 'met' : 'NOT met'} (has ${(rate('DigestIndex.has(bytes)') / 1e6).toFixed(1)} M/s, hasMany ${(rate('DigestIndex.hasMany(1000 packed bytes)') / 1e6).toFixed(1)} M/s; Map.get of ready hex strings ${(rate('Map.get(hex string)') / 1e6).toFixed(1)} M/s, of bytes ${(rate('Map.get(toHex(bytes))') / 1e6).toFixed(1)} M/s).`,
      `Memory ratio Map / DigestIndex: ${((memPkgMap.heap) / (memPkgIx.heap + memPkgIx.core)).toFixed(2)}× for the Packages file, ${((memFileMap.heap) / (memFileIx.heap + memFileIx.core)).toFixed(2)}× for ${N} file digests.`,
      ...svc.notes,
      svc.verdict(memPkgMap.heap / (memPkgIx.heap + memPkgIx.core), memFileMap.heap / (memFileIx.heap + memFileIx.core)),
      'Memory: each structure is built alone in a fresh Node process; V8 heap plus ArrayBuffers after two forced GCs, minus the same before building (the Packages text is loaded before, so it is not counted; strings sliced from it may share its storage in both); the core table is its exact size in wasm memory (slots 4 B, dense keys and values 36 B an entry). File digests: random SHA-256, hex-decoded from a Buffer in both.',
    ],
  };
}

// Runs each task in interleaved rounds (so load drift on the shared machine falls on all) and
// returns per task the median wall and CPU time (user + system of this process) per op.
function timeOps(tasks, { rounds, ms }) {
  const wall = tasks.map(() => []);
  const cpu = tasks.map(() => []);
  // Warm-up long enough for every function on the path to reach the optimizing tiers (JS and wasm).
  for (const t of tasks) {
    const t0 = performance.now();
    while (performance.now() - t0 < ms * 2) for (let i = 0; i < t.batch; i++) t.fn();
  }
  for (let r = 0; r < rounds; r++) {
    tasks.forEach((t, k) => {
      let n = 0;
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      let t1 = t0;
      do {
        for (let i = 0; i < t.batch; i++) t.fn();
        n += t.batch;
        t1 = performance.now();
      } while (t1 - t0 < ms);
      const c = process.cpuUsage(c0);
      wall[k].push(((t1 - t0) * 1e6) / n);
      cpu[k].push(((c.user + c.system) * 1e3) / n);
    });
  }
  return tasks.map((t, k) => ({ name: t.name, peer: t.peer, wallNs: median(wall[k]), cpuNs: median(cpu[k]), items: t.items, rounds }));
}

// 4. A request appraised as the service does: parseEvidence (hex checked and lowercased), then
// appraise() over the index; the peer is the same appraise() over a plain Map.
export async function serviceBench(ctx, ix, map, entries) {
  const { appraise, parseEvidence, parseImaLine, DigestIndex } = await import('../dist/attest/index.js');
  const { readFileSync } = await import('node:fs');
  const repo = 'deb http://deb.debian.org/debian bookworm main';
  // The best plain-Map index: keyed by the lowercase hex as it arrives, values ready-made.
  const mapIndex = (m) => ({
    get size() { return m.size; },
    lookupDigest: (alg, d) => (alg === 'sha256' ? m.get(Buffer.from(d.buffer, d.byteOffset, d.length).toString('hex')) ?? [] : []),
    lookupPackage: () => [],
    lookupMany(alg, digests) {
      const out = new Array(typeof digests === 'string' ? 0 : digests.length);
      if (alg !== 'sha256') return out.fill(undefined);
      if (Array.isArray(digests)) {
        for (let i = 0; i < digests.length; i++) out[i] = m.get(digests[i]);
        return out;
      }
      // Raw digests (an IMA list): the Map needs their hex first.
      const b = Buffer.from(digests.buffer, digests.byteOffset, digests.length);
      const n = digests.length / 32;
      out.length = n;
      for (let i = 0; i < n; i++) out[i] = m.get(b.toString('hex', i * 32, i * 32 + 32));
      return out;
    },
  });
  const mix = mapIndex(map);
  const rows = [];
  const results = [];
  const rounds = ctx.quick ? 3 : 9;
  const ms = ctx.quick ? 20 : 60;
  let sink = 0;
  for (const N of [8, 64, 1000]) {
    // 7 of 8 digests are .debs of the repository, 1 of 8 unknown (as bench/attest-service sends).
    const hex = Array.from({ length: N }, (_, i) => (i % 8 === 7 ? randomBytes(32).toString('hex') : entries[(i * 7919 + N) % entries.length]));
    const body = JSON.stringify({ evidence: { digests: hex.map((h) => ({ alg: 'sha256', hex: h })) } });
    const ready = parseEvidence(JSON.parse(body).evidence); // strings as they arrive, parsed once
    const strings = ready.digests.map((d) => d.hex);
    const same = JSON.stringify(appraise(ix, ready)) === JSON.stringify(appraise(mix, ready));
    if (!same) throw new Error(`appraisals differ for N=${N}`);
    const batch = Math.max(1, Math.round(2000 / N));
    const t = timeOps(
      [
        { name: 'Map: one get per digest', items: N, batch, fn: () => { const r = mix.lookupMany('sha256', strings); sink += r.length; } },
        { name: `DigestIndex.lookupMany`, peer: 'Map: one get per digest', items: N, batch, fn: () => { const r = ix.lookupMany('sha256', strings); sink += r.length; } },
        { name: 'Map: appraise()', items: N, batch, fn: () => { sink += appraise(mix, ready).submods['vmkit-software'].summary.items; } },
        { name: `DigestIndex: appraise()`, peer: 'Map: appraise()', items: N, batch, fn: () => { sink += appraise(ix, ready).submods['vmkit-software'].summary.items; } },
        { name: `JSON.parse + parseEvidence only`, items: N, batch, fn: () => { sink += parseEvidence(JSON.parse(body).evidence).digests.length; } },
        { name: 'Map: JSON.parse + parseEvidence + appraise()', items: N, batch, fn: () => { sink += appraise(mix, parseEvidence(JSON.parse(body).evidence)).submods['vmkit-software'].summary.items; } },
        { name: `DigestIndex: JSON.parse + parseEvidence + appraise()`, peer: 'Map: JSON.parse + parseEvidence + appraise()', items: N, batch, fn: () => { sink += appraise(ix, parseEvidence(JSON.parse(body).evidence)).submods['vmkit-software'].summary.items; } },
      ],
      { rounds, ms },
    );
    results.push({ what: `${N} hex digests`, N, t });
  }
  // A 20 000-entry IMA list: the paths of a real one (the 1000-entry log of this machine's files
  // that scripts/ima-fixtures.mjs makes; without evmctl, those files' paths as listed) repeated, each entry a distinct SHA-256 file digest, 7 of 8 of them in both indexes as file
  // digests of one package (the rest unknown). appraise() gets the verified list, as the service
  // passes it after verifyImaLog.
  let paths;
  try {
    const log = readFileSync(join(ensureImaFixtures(), 'ima-ng-sha1.ascii'), 'utf8');
    paths = log.split('\n').filter(Boolean).map((l, i) => parseImaLine(l, i + 1)).filter((e) => e && e.path !== 'boot_aggregate').map((e) => e.path);
  } catch {
    // Only the paths matter here: without evmctl to make the log, the same kind of paths from the disk.
    paths = readdirSync('/usr/bin').sort().map((n) => `/usr/bin/${n}`);
  }
  const M = 20_000;
  const imaEntries = [];
  const fileIx = new DigestIndex({ expected: 70_000 + M });
  for (const h of entries) fileIx.addPackageSha256(repo, 'p', '1', 'amd64', h, 0);
  const fileMap = new Map(map);
  const pid = fileIx.addPackage({ repository: repo, package: 'coreutils', version: '9.1-1', architecture: 'amd64' }, { alg: 'sha256', hex: 'ab'.repeat(32) });
  for (let i = 0; i < M; i++) {
    const d = randomBytes(32);
    const path = paths[i % paths.length] + (i >= paths.length ? `.${Math.floor(i / paths.length)}` : '');
    imaEntries.push({ line: i + 1, pcr: 10, template: 'ima-ng', templateHash: new Uint8Array(20), violation: false, digestAlg: 'sha256', digest: new Uint8Array(d), path });
    if (i % 8 !== 7) {
      const h = d.toString('hex');
      fileIx.addFile(pid, path, { alg: 'sha256', hex: h });
      fileMap.set(own(h), [{ repository: repo, package: 'coreutils', version: '9.1-1', architecture: 'amd64', path }]);
    }
  }
  const ima = { entries: imaEntries, excluded: 0, failures: [], failureCount: 0, pcrs: {}, count: M, violations: 0, templateHashFailures: 0 };
  const fmix = mapIndex(fileMap);
  if (JSON.stringify(appraise(fileIx, { ima })) !== JSON.stringify(appraise(fmix, { ima }))) throw new Error('IMA appraisals differ');
  const packed = new Uint8Array(M * 32);
  imaEntries.forEach((e, i) => packed.set(e.digest, i * 32));
  const ti = timeOps(
    [
      { name: 'Map: one get per digest (hex of each digest first)', items: M, batch: 1, fn: () => { sink += fmix.lookupMany('sha256', packed).length; } },
      { name: `DigestIndex.lookupMany (packed digests)`, peer: 'Map: one get per digest (hex of each digest first)', items: M, batch: 1, fn: () => { sink += fileIx.lookupMany('sha256', packed).length; } },
      { name: 'Map: appraise()', items: M, batch: 1, fn: () => { sink += appraise(fmix, { ima }).submods['vmkit-ima'].summary.items; } },
      { name: `DigestIndex: appraise()`, peer: 'Map: appraise()', items: M, batch: 1, fn: () => { sink += appraise(fileIx, { ima }).submods['vmkit-ima'].summary.items; } },
    ],
    { rounds, ms: ms * 3 },
  );
  results.push({ what: `IMA list, ${M} entries`, N: M, t: ti });
  fileIx.close();
  if (sink < 0) console.log(sink);

  const lines = ['| request | task | wall median/op | CPU/op | per digest (wall) | vs Map (wall) | vs Map (CPU) |', '|---|---|---:|---:|---:|---:|---:|'];
  const ratios = [];
  for (const r of results) {
    for (const x of r.t) {
      const peer = x.peer ? r.t.find((y) => y.name === x.peer) : undefined;
      const vw = peer ? `${(peer.wallNs / x.wallNs).toFixed(2)}×` : '';
      const vc = peer ? `${(peer.cpuNs / x.cpuNs).toFixed(2)}×` : '';
      if (peer) ratios.push({ what: r.what, name: x.name, wall: peer.wallNs / x.wallNs, cpu: peer.cpuNs / x.cpuNs });
      lines.push(`| ${r.what} | ${x.name} | ${fmtNs(x.wallNs)} | ${fmtNs(x.cpuNs)} | ${fmtNs(x.wallNs / x.items)} | ${vw} | ${vc} |`);
    }
  }
  const svcRatios = ratios.filter((r) => r.name.includes('JSON.parse') || (r.what.startsWith('IMA') && r.name.includes('appraise')));
  return {
    markdown: lines.join('\n'),
    notes: [
      `Service path (JSON.parse + parseEvidence + appraise() for digest requests; appraise() of the verified list for IMA), DigestIndex vs Map, wall / CPU: ${svcRatios.map((r) => `${r.what} ${r.wall.toFixed(2)}× / ${r.cpu.toFixed(2)}×`).join('; ')} (above 1 = DigestIndex faster).`,
      `Requests: ${rounds} interleaved rounds of ≥ ${ms} ms per task (IMA ${ms * 3} ms), medians; CPU is user + system time of this process per op. The Map peer answers lookupMany with one Map.get per digest on the strings as parseEvidence leaves them (for the "one get per digest" rows: the same strings every op, hash already cached — the Map's best case; in the JSON rows the strings are fresh each op, as in the service); its values are ready Provenance arrays. Both indexes give the same appraisal (checked before timing). IMA: the Map needs each raw digest as hex (Buffer hex encoder); DigestIndex looks the packed bytes up in one core call.`,
    ],
    verdict: (memPkg, memFile) => {
      // Within ±5% counts as level, not ahead: run-to-run spread on this shared machine is about that.
      const cls = (x) => (x > 1.05 ? 'ahead' : x >= 0.95 ? 'level' : 'behind');
      const per = svcRatios.map((r) => `${r.what}: ${cls(r.cpu)} (${r.cpu.toFixed(2)}× CPU, ${r.wall.toFixed(2)}× wall)`);
      const ahead = svcRatios.every((r) => cls(r.cpu) === 'ahead' && cls(r.wall) !== 'behind');
      const notBehind = svcRatios.every((r) => cls(r.cpu) !== 'behind');
      const mem = memPkg > 1 && memFile > 1;
      const word = mem && ahead ? 'met' : mem && notBehind ? 'met in memory; in lookups ahead or level (not ahead at every request size)' : 'NOT met';
      return `Goal "beat a plain Map in memory and lookups" on the service's real path: ${word} in this run — memory ${memPkg.toFixed(2)}× (Packages) / ${memFile.toFixed(2)}× (file digests) less than the Map; service path per request size (±5% = level): ${per.join('; ')}.`;
    },
  };
}

// 5. `vmkit attest index` of the real bookworm main, whole process, against xz -dc | grep -c.
const KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';
const MIRROR = 'http://deb.debian.org/debian/dists/bookworm/';

// The real InRelease and Packages.xz (the mirror's, cached; the .xz checked against the
// InRelease's SHA256 line — vmkit itself checks the signature in every run).
async function realRepo(log) {
  const dir = fileURLToPath(new URL('../.cache/attest-index-bench/', import.meta.url));
  const rel = join(dir, 'InRelease');
  const xz = join(dir, 'Packages.xz');
  const { mkdirSync, writeFileSync } = await import('node:fs');
  const { createHash } = await import('node:crypto');
  const listed = (text) => /^ ([0-9a-f]{64}) +(\d+) main\/binary-amd64\/Packages\.xz$/m.exec(text);
  const ok = () => {
    if (!existsSync(rel) || !existsSync(xz)) return false;
    const m = listed(readFileSync(rel, 'utf8'));
    return !!m && createHash('sha256').update(readFileSync(xz)).digest('hex') === m[1];
  };
  if (ok()) return { dir, rel, xz };
  log(`fetching the real InRelease and Packages.xz from ${MIRROR} into ${dir}…`);
  try {
    mkdirSync(dir, { recursive: true });
    for (const [url, to] of [[MIRROR + 'InRelease', rel], [MIRROR + 'main/binary-amd64/Packages.xz', xz]]) {
      const r = await fetch(url);
      if (r.status !== 200) throw new Error(`GET ${url}: ${r.status}`);
      writeFileSync(to, new Uint8Array(await r.arrayBuffer()));
    }
  } catch (e) {
    log(`SKIPPED the whole-process index: ${e.message}`);
    return undefined;
  }
  return ok() ? { dir, rel, xz } : undefined;
}

// One run under GNU time: wall (ms, measured here), CPU (ms, the process and its waited-for
// children: node + xz, sh + xz + grep) and peak RSS of the largest single process (MiB).
function timed(argv, onStart) {
  return new Promise((resolve, reject) => {
    const t = performance.now();
    onStart?.(t);
    execFile('/usr/bin/time', ['-f', 'RUSAGE %U %S %M', ...argv], { maxBuffer: 1 << 24 }, (err, stdout, stderr) => {
      const wall = performance.now() - t;
      const m = /RUSAGE ([\d.]+) ([\d.]+) (\d+)/.exec(stderr);
      if (err || !m) return reject(new Error(`${argv.join(' ')}: ${err?.message ?? 'no rusage'}\n${stderr}`));
      resolve({ wall, cpu: (Number(m[1]) + Number(m[2])) * 1000, rss: Number(m[3]) / 1024, out: stdout });
    });
  });
}

export async function streamBench(ctx) {
  const title = 'Whole-process `vmkit attest index` of Debian bookworm main (streamed) against `xz -dc | grep -c`';
  if (!existsSync(KEYRING) || !hasTool('xz') || !existsSync('/usr/bin/time')) {
    ctx.log('SKIPPED the whole-process index: needs the Debian keyring, xz and /usr/bin/time');
    return { notes: ['Whole-process index: SKIPPED (needs /usr/share/keyrings/debian-archive-keyring.gpg, xz, /usr/bin/time).'] };
  }
  const repo = await realRepo(ctx.log);
  if (!repo) return { notes: ['Whole-process index: SKIPPED (the real InRelease/Packages.xz could not be fetched through the mirror).'] };
  const { createServer } = await import('node:http');
  const files = new Map([
    ['/debian/dists/bookworm/InRelease', readFileSync(repo.rel)],
    ['/debian/dists/bookworm/main/binary-amd64/Packages.xz', readFileSync(repo.xz)],
  ]);
  // When vmkit asks for Packages.xz: what start-up and module loading cost before the first byte
  // can flow (a serial prefix the peer does not have; the InRelease's check runs beside the stream).
  let asked = 0;
  const srv = createServer((q, r) => {
    if ((q.url ?? '').endsWith('Packages.xz')) asked = performance.now();
    const b = files.get(q.url ?? '');
    if (!b) return r.writeHead(404).end();
    r.writeHead(200, { 'content-length': b.length }).end(b);
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const port = srv.address().port;
  const cli = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
  // The same two files as a local mirror (APT's file: method): read from disk like the peer's input.
  const { mkdirSync, symlinkSync, rmSync } = await import('node:fs');
  const mirror = join(repo.dir, 'mirror');
  const binDir = join(mirror, 'debian/dists/bookworm/main/binary-amd64');
  rmSync(mirror, { recursive: true, force: true });
  mkdirSync(binDir, { recursive: true });
  symlinkSync(repo.rel, join(mirror, 'debian/dists/bookworm/InRelease'));
  symlinkSync(repo.xz, join(binDir, 'Packages.xz'));
  const vmkitArgv = [process.execPath, cli, 'attest', 'index', `deb file://${mirror}/debian bookworm main`, '--keyring', KEYRING, '--json'];
  const httpArgv = [process.execPath, cli, 'attest', 'index', `deb http://127.0.0.1:${port}/debian bookworm main`, '--keyring', KEYRING, '--json'];
  const peerArgv = ['sh', '-c', `xz -dc '${repo.xz}' | grep -c ^Package:`];
  const rounds = ctx.quick ? 3 : 7;
  const v = [];
  const h = [];
  const p = [];
  const prefix = [];
  let packages = 0;
  let count = 0;
  try {
    for (let i = 0; i < rounds; i++) {
      // Interleaved, the order rotating, so drifting load hits all alike.
      const runs = [['v', vmkitArgv], ['p', peerArgv], ['h', httpArgv]];
      for (let j = 0; j < runs.length; j++) {
        const [k, argv] = runs[(i + j) % runs.length];
        let t0 = 0;
        const r = await timed(argv, (t) => (t0 = t));
        if (k === 'p') {
          count = Number(r.out.trim());
          p.push(r);
        } else {
          const n = JSON.parse(r.out).packages;
          if (k === 'v') packages = n;
          else if (n !== packages && packages) throw new Error(`vmkit over HTTP indexed ${n} packages, from the file: mirror ${packages}`);
          (k === 'v' ? v : h).push(r);
          if (k === 'h') prefix.push(asked - t0);
        }
      }
    }
  } finally {
    srv.close();
  }
  if (packages !== count) throw new Error(`vmkit indexed ${packages} packages, grep counts ${count}`);
  const med = (xs, k) => median(xs.map((x) => x[k]));
  // Ratios per round (each pair ran back to back), then their median: steadier than a ratio of medians under drifting load.
  const ratioOf = (xs, k) => median(xs.map((x, i) => x[k] / p[i][k]));
  const ratio = (k) => ratioOf(v, k);
  const ms = (x) => `${(x / 1000).toFixed(2)} s`;
  const markdown = [
    `| process (${rounds} interleaved rounds) | wall median | CPU median (user + sys, with children) | peak RSS median | wall vs peer | CPU vs peer |`,
    '|---|---:|---:|---:|---:|---:|',
    `| \`xz -dc Packages.xz \| grep -c ^Package:\` (peer) | ${ms(med(p, 'wall'))} | ${ms(med(p, 'cpu'))} | ${med(p, 'rss').toFixed(0)} MiB | 1.00× | 1.00× |`,
    `| \`vmkit attest index 'deb file:///…/debian bookworm main' --keyring …\` (a local mirror, as the peer reads) | ${ms(med(v, 'wall'))} | ${ms(med(v, 'cpu'))} | ${med(v, 'rss').toFixed(0)} MiB | ${ratio('wall').toFixed(2)}× | ${ratio('cpu').toFixed(2)}× |`,
    `| \`vmkit attest index 'deb http://127.0.0.1/debian bookworm main' --keyring …\` (the same files over HTTP) | ${ms(med(h, 'wall'))} | ${ms(med(h, 'cpu'))} | ${med(h, 'rss').toFixed(0)} MiB | ${ratioOf(h, 'wall').toFixed(2)}× | ${ratioOf(h, 'cpu').toFixed(2)}× |`,
  ].join('\n');
  const w = ratio('wall');
  const pre = median(prefix);
  const rss = med(v, 'rss');
  return {
    section: { heading: title + ` (${packages} packages, ${(files.get('/debian/dists/bookworm/main/binary-amd64/Packages.xz').length / 2 ** 20).toFixed(1)} MiB .xz)`, markdown },
    notes: [
      `Goal (issue 23) "attest index ≤ 1.3× xz -dc | grep -c wall, peak RSS ≤ 150 MiB": wall ${w <= 1.3 ? 'met' : 'NOT met'} (${w.toFixed(2)}×, median of per-round ratios; CPU ${ratio('cpu').toFixed(2)}×), RSS ${rss <= 150 ? 'met' : 'NOT met'} (${rss.toFixed(0)} MiB). vmkit's run is the whole CLI: Node start-up, module loading, the InRelease's OpenPGP signature, then Packages.xz read from the local mirror (a file: source, node:fs, no fetch/undici to load; the HTTP row serves the same files from 127.0.0.1) through \`xz -dc\` (a child, on the other core), SHA-256 over the compressed bytes as they arrive, parsed chunk by chunk into the core's table (the 50 MB text is never held); the peer only decompresses and counts. Of vmkit's wall time over HTTP, ${ms(pre)} (median) pass before it asks for Packages.xz (process start, loading the CLI and the source modules; the InRelease is fetched and its signature verified beside the stream since the prefetch, docs/attest-sources.md); the rest, ${ms(med(h, 'wall') - pre)}, is the streamed index against the peer's ${ms(med(p, 'wall'))}.`,
    ],
  };
}

async function debBench(ctx) {
  const dir = '/var/cache/apt/archives';
  if (!existsSync(dir)) return undefined;
  const names = readdirSync(dir).filter((f) => /^(perl-base|systemd|python3\.11-minimal)_.*\.deb$/.test(f));
  if (!names.length) return undefined;
  const { debFileDigests } = await import('../dist/attest/_deb.js');
  const { readFileSync, mkdtempSync, rmSync, statSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const rows = ['| package | .deb size | files | vmkit debFileDigests | dpkg-deb -x + sha256sum (peer) | speed vs peer |', '|---|---:|---:|---:|---:|---:|'];
  for (const f of names) {
    const path = `${dir}/${f}`;
    const bytes = readFileSync(path);
    const tv = [];
    const tp = [];
    let files = 0;
    for (let r = 0; r < (ctx.quick ? 1 : 3); r++) {
      let t = performance.now();
      files = (await debFileDigests(bytes)).size;
      tv.push(performance.now() - t);
      const tmp = mkdtempSync(`${tmpdir()}/vmkit-deb-bench-`);
      t = performance.now();
      execFileSync('sh', ['-c', `dpkg-deb -x '${path}' '${tmp}' && find '${tmp}' -type f -print0 | xargs -0 sha256sum >/dev/null`]);
      tp.push(performance.now() - t);
      rmSync(tmp, { recursive: true, force: true });
    }
    const v = median(tv);
    const p = median(tp);
    rows.push(`| ${f} | ${(statSync(path).size / 2 ** 20).toFixed(1)} MiB | ${files} | ${fmtNs(v * 1e6)} | ${fmtNs(p * 1e6)} | ${(p / v).toFixed(2)}× |`);
  }
  return { heading: 'File digests of real .deb packages (apt cache)', markdown: rows.join('\n') };
}

// Child mode: build one structure in a fresh process and print what it holds.
async function childMain(kind, n, limit) {
  const repo = 'deb http://deb.debian.org/debian bookworm main';
  await loadCore();
  const { DigestIndex } = await import('../dist/attest/index.js');
  const { parsePackages } = await import('../dist/attest/sources/deb822.js');
  let raw = kind.startsWith('pkg') ? undefined : randomBytes(n * 32);
  const warm = (realPackages() ?? syntheticPackages(3000)).text;
  // Warm up: build a small one first and drop it, so code and lazy state are not counted.
  build(kind, 2000, warm.slice(0, warm.indexOf('\n\n', 200_000) + 2), raw, repo, DigestIndex, parsePackages);
  // The baseline is taken before the Packages text is read and the text is dropped after the
  // build: a structure that keeps substrings of it pins all of it, and that is counted.
  const before = heap();
  // Read, build and drop the text in a frame of its own: an interpreter register of this frame
  // could otherwise keep the text alive and charge it to whichever structure is measured.
  const { keep, entries, core, ms } = (() => {
    const text = kind.startsWith('pkg') ? head((realPackages() ?? syntheticPackages(63000)).text, limit) : '';
    const t = performance.now();
    const r = build(kind, n, text, raw, repo, DigestIndex, parsePackages);
    return { ...r, ms: performance.now() - t };
  })();
  const after = heap();
  process.stdout.write(JSON.stringify({ kind, entries, heap: after - before, core, ms, keep: keep ? 1 : 0 }));
}

function build(kind, n, text, raw, repo, DigestIndex, parsePackages) {
  let keep;
  let entries = 0;
  let core = 0;
  if (kind === 'pkg-map') {
    const byDigest = new Map();
    const byName = new Map();
    parsePackages(text, (p) => {
      // Own copies (see ownString in bindings/attest/index-store.ts), as DigestIndex makes.
      const prov = { repository: repo, package: own(p.package), version: own(p.version), architecture: p.architecture };
      const hex = hexOf(p);
      byDigest.set(hex, [prov]);
      const e = { provenance: prov, digests: [{ alg: 'sha256', hex }] };
      const l = byName.get(prov.package);
      if (l) l.push(e);
      else byName.set(prov.package, [e]);
      entries++;
    });
    keep = [byDigest, byName];
  } else if (kind === 'pkg-index') {
    const ix = new DigestIndex();
    parsePackages(text, (p) => { ix.addPackageSha256(repo, p.package, p.version, p.architecture, p.hex, p.sha256At); entries++; });
    core = ix.memory().core;
    keep = ix;
  } else if (kind === 'files-map') {
    const m = new Map();
    const paths = Array.from({ length: 1000 }, (_, i) => `/usr/lib/x86_64-linux-gnu/pkg${i}/file.so`);
    for (let i = 0; i < n; i++) m.set(raw.toString('hex', i * 32, i * 32 + 32), [{ repository: repo, package: 'bulk', version: '1', path: paths[i % 1000] }]);
    entries = n;
    keep = m;
  } else {
    const ix = new DigestIndex();
    const p0 = ix.addPackage({ repository: repo, package: 'bulk', version: '1' }, { alg: 'sha256', hex: '00'.repeat(32) });
    const paths = Array.from({ length: 1000 }, (_, i) => `/usr/lib/x86_64-linux-gnu/pkg${i}/file.so`);
    for (let i = 0; i < n; i++) ix.addFile(p0, paths[i % 1000], { alg: 'sha256', hex: raw.toString('hex', i * 32, i * 32 + 32) });
    core = ix.memory().core;
    entries = n;
    keep = ix;
  }
  return { keep, entries, core };
}
if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv[2] === '--child') {
  await childMain(process.argv[3], Number(process.argv[4]), Number(process.argv[5] ?? 0));
}
