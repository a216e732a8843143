/**
 * IMA measurement lists: the text of
 * `/sys/kernel/security/ima/ascii_runtime_measurements`, parsed as a stream
 * (lines in, constant memory), each entry's template hash recomputed, PCR 10
 * replayed for a chosen bank and compared with a quoted value, and exclude
 * lists applied (Keylime's semantics). See docs/attest-ima.md.
 *
 * ```
 *  line:  PCR  template-hash  template  fields…
 *         10   91f3…(sha1)    ima-ng    sha256:e3b0…  /usr/bin/ls
 *
 *  template data (what the template hash and every PCR bank hash):
 *   ima      d[20]                          ‖ name ‖ NUL ‖ zeros → 256 bytes
 *   ima-ng   le32(n) "alg" ':' NUL digest    ‖ le32(n) path NUL
 *   ima-sig  ima-ng fields                   ‖ le32(n) signature   (n = 0 when unsigned)
 *   ima-buf  ima-ng fields (name)            ‖ le32(n) buffer
 *
 *  PCR10[bank] := H_bank(PCR10 ‖ H_bank(template data))   from zeros
 *  violation (template hash all zeros): extend with all ones instead
 *  'sha1-padded' (kernels before 5.8): every bank extended with the SHA-1
 *  template hash zero-padded to the bank's length
 * ```
 * @module
 */
import { VmkitError } from '../errors.js';
import { aoneOf } from '../_utils.js';
import { hexInto, toHex } from './index-store.js';
import { GlobSet } from './_glob.js';
import type { Digest, DigestAlgorithm } from './types.js';

/**
 * Templates this parser knows.
 *
 * @example
 * ```ts
 * const e = parseImaLine(line, 1);
 * if (e?.template === 'ima-sig' && e.signature?.length) console.log('signed:', e.path);
 * ```
 */
export type ImaTemplate = 'ima' | 'ima-ng' | 'ima-sig' | 'ima-buf';

/**
 * PCR banks (and template-hash algorithms) IMA uses.
 *
 * @example
 * ```ts
 * const bank: ImaBank = 'sha256';
 * const r = await verifyImaLog(log, { banks: [bank, 'sha1'] }); // r.pcrs.sha256, r.pcrs.sha1
 * ```
 */
export type ImaBank = 'sha1' | 'sha256' | 'sha384' | 'sha512' | 'sm3';

const BANKS: readonly ImaBank[] = ['sha1', 'sha256', 'sha384', 'sha512', 'sm3'];
const BANK_LEN: Record<ImaBank, number> = { sha1: 20, sha256: 32, sha384: 48, sha512: 64, sm3: 32 };
const TEMPLATES: readonly string[] = ['ima', 'ima-ng', 'ima-sig', 'ima-buf'];
/** Digest lengths of the kernel's hash_algo_name entries we can check. */
const ALG_LEN: Record<string, number> = {
  md4: 16, md5: 16, sha1: 20, rmd160: 20, sha224: 28, sha256: 32, sha384: 48, sha512: 64, sm3: 32,
  'sha3-256': 32, 'sha3-384': 48, 'sha3-512': 64, streebog256: 32, streebog512: 64, wp256: 32, wp384: 48, wp512: 64,
};
const KNOWN_DIGEST: readonly DigestAlgorithm[] = ['md5', 'sha1', 'sha256', 'sha384', 'sha512', 'sm3'];
/** The old `ima` template's fixed name field: IMA_EVENT_NAME_LEN_MAX + 1. */
const IMA_NAME_LEN = 256;
/** Digests longer than this are not a hash the kernel produces. */
const MAX_DIGEST = 64;

/**
 * One measurement-list entry.
 *
 * @example
 * ```ts
 * for await (const e of readImaLog(log)) {
 *   if (!e.violation) console.log(e.line, e.template, e.digestAlg, toHex(e.digest), e.path);
 * }
 * ```
 */
export interface ImaEntry {
  /** 1-based line number in the log. */
  line: number;
  /** The PCR the entry was extended into (10 by default). */
  pcr: number;
  /** Template name. */
  template: ImaTemplate;
  /** The template hash as logged (all zeros for a violation). */
  templateHash: Uint8Array;
  /** True for a violation entry (ToMToU, open-writers): template hash all zeros. */
  violation: boolean;
  /** File-digest algorithm (`sha256`, …; for `ima`: `sha1` or `md5` by length). */
  digestAlg: string;
  /** File digest (all zeros in a violation). */
  digest: Uint8Array;
  /** The measured path (for `ima-buf`: the buffer's name, e.g. `kexec-cmdline`). */
  path: string;
  /** `ima-sig`: the file's signature (`security.ima`), empty when unsigned. */
  signature?: Uint8Array;
  /** `ima-buf`: the measured buffer. */
  buffer?: Uint8Array;
}

const enc = new TextEncoder();

function corrupt(line: number, msg: string): VmkitError {
  return new VmkitError('CORRUPT', `IMA log line ${line}: ${msg}`, { offset: line });
}

function hexBytes(hex: string, line: number, what: string, max: number): Uint8Array {
  if (hex.length > max * 2) throw corrupt(line, `${what} longer than ${max} bytes`);
  const b = new Uint8Array(hex.length >> 1);
  if (!hexInto(hex, b)) throw corrupt(line, `${what} is not hex`);
  return b;
}

/**
 * Parses one line of `ascii_runtime_measurements`. Returns `null` for an empty
 * line; throws VmkitError `CORRUPT` (offset = line number) for a bad one.
 *
 * Paths hold no spaces (the kernel writes them as `_`), but for `ima` and
 * `ima-ng` the rest of the line is taken as the path, as Keylime does.
 *
 * @example
 * ```ts
 * const e = parseImaLine('10 91f3… ima-ng sha256:e3b0… /usr/bin/ls', 1);
 * e?.path; // '/usr/bin/ls'
 * ```
 */
export function parseImaLine(text: string, line: number = 1): ImaEntry | null {
  if (typeof text !== 'string') throw new VmkitError('ARG_TYPE', 'IMA log line must be a string');
  // Only the line terminator and the delimiter of an empty last field are trimmed.
  let s = text;
  if (s.endsWith('\r')) s = s.slice(0, -1);
  if (s.trim() === '') return null;
  const t0 = s.indexOf(' ');
  const t1 = t0 < 0 ? -1 : s.indexOf(' ', t0 + 1);
  const t2 = t1 < 0 ? -1 : s.indexOf(' ', t1 + 1);
  if (t2 < 0) throw corrupt(line, 'expected "PCR template-hash template fields…"');
  const pcrText = s.slice(0, t0);
  if (!/^[0-9]{1,2}$/.test(pcrText) || Number(pcrText) > 23) throw corrupt(line, `bad PCR index ${JSON.stringify(pcrText.slice(0, 8))}`);
  const templateHash = hexBytes(s.slice(t0 + 1, t1), line, 'template hash', MAX_DIGEST);
  if (![20, 32, 48, 64].includes(templateHash.length)) throw corrupt(line, `template hash of ${templateHash.length} bytes`);
  const template = s.slice(t1 + 1, t2);
  if (!TEMPLATES.includes(template)) throw corrupt(line, `unsupported template ${JSON.stringify(template.slice(0, 16))}`);
  const rest = s.slice(t2 + 1);
  const violation = templateHash.every((b) => b === 0);
  const e: ImaEntry = { line, pcr: Number(pcrText), template: template as ImaTemplate, templateHash, violation, digestAlg: '', digest: new Uint8Array(0), path: '' };
  const sp = rest.indexOf(' ');
  if (sp <= 0) throw corrupt(line, `${template} needs a digest and a name`);
  const dtext = rest.slice(0, sp);
  if (template === 'ima') {
    e.digest = hexBytes(dtext, line, 'file digest', MAX_DIGEST);
    if (e.digest.length === 20) e.digestAlg = 'sha1';
    else if (e.digest.length === 16) e.digestAlg = 'md5';
    else throw corrupt(line, `ima template digest of ${e.digest.length} bytes (sha1 or md5 expected)`);
  } else {
    const c = dtext.indexOf(':');
    if (c <= 0) throw corrupt(line, 'file digest must be alg:hex');
    e.digestAlg = dtext.slice(0, c);
    if (!/^[a-z0-9-]{1,16}$/.test(e.digestAlg)) throw corrupt(line, 'bad digest algorithm name');
    e.digest = hexBytes(dtext.slice(c + 1), line, 'file digest', MAX_DIGEST);
    const want = ALG_LEN[e.digestAlg];
    if (want !== undefined && e.digest.length !== want) throw corrupt(line, `${e.digestAlg} digest of ${e.digest.length} bytes`);
    if (e.digest.length === 0) throw corrupt(line, 'empty file digest');
  }
  const fields = rest.slice(sp + 1);
  if (template === 'ima' || template === 'ima-ng') {
    e.path = fields;
  } else {
    // Three fields, the last possibly empty ("… /path " for an unsigned file).
    const sp2 = fields.indexOf(' ');
    e.path = sp2 < 0 ? fields : fields.slice(0, sp2);
    const last = sp2 < 0 ? '' : fields.slice(sp2 + 1).trimEnd();
    if (last.includes(' ')) throw corrupt(line, `${template} has more than three fields`);
    const data = hexBytes(last, line, template === 'ima-sig' ? 'signature' : 'buffer', 1 << 20);
    if (template === 'ima-sig') e.signature = data;
    else e.buffer = data;
  }
  if (e.path === '') throw corrupt(line, 'empty name');
  if (template === 'ima' && enc.encode(e.path).length >= IMA_NAME_LEN) throw corrupt(line, 'ima template name longer than 255 bytes');
  return e;
}

/**
 * The template data the kernel hashes for an entry (the template hash and each
 * PCR bank's extension are digests of these bytes).
 *
 * @example
 * ```ts
 * const data = imaTemplateData(entry);
 * const ok = sha1(data) equals entry.templateHash;
 * ```
 */
export function imaTemplateData(e: ImaEntry): Uint8Array {
  // Hot path (every entry, for the template hash): the path is encoded into a reused scratch
  // buffer and the algorithm name comes from a cache, so the only allocation is the result.
  if (_scratch.length < e.path.length * 3) _scratch = new Uint8Array(e.path.length * 3 + 256);
  const plen = enc.encodeInto(e.path, _scratch).written;
  const path = _scratch.subarray(0, plen);
  if (e.template === 'ima') {
    const out = new Uint8Array(e.digest.length + IMA_NAME_LEN);
    out.set(e.digest, 0);
    out.set(path.subarray(0, IMA_NAME_LEN - 1), e.digest.length);
    return out;
  }
  let alg = _algBytes.get(e.digestAlg);
  if (alg === undefined) {
    alg = enc.encode(e.digestAlg);
    if (_algBytes.size < 64) _algBytes.set(e.digestAlg, alg);
  }
  const extra = e.template === 'ima-sig' ? e.signature ?? new Uint8Array(0) : e.template === 'ima-buf' ? e.buffer ?? new Uint8Array(0) : undefined;
  const dlen = alg.length + 2 + e.digest.length;
  const n = 4 + dlen + 4 + plen + 1 + (extra ? 4 + extra.length : 0);
  const out = new Uint8Array(n);
  let o = 0;
  _u32le(out, o, dlen);
  o += 4;
  out.set(alg, o);
  o += alg.length;
  out[o++] = 0x3a; // ':'
  out[o++] = 0;
  out.set(e.digest, o);
  o += e.digest.length;
  _u32le(out, o, plen + 1);
  o += 4;
  out.set(path, o);
  o += plen + 1; // NUL already there
  if (extra) {
    _u32le(out, o, extra.length);
    out.set(extra, o + 4);
  }
  return out;
}

let _scratch = new Uint8Array(4096);
const _algBytes = new Map<string, Uint8Array>();
function _u32le(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 255;
  b[o + 1] = (v >>> 8) & 255;
  b[o + 2] = (v >>> 16) & 255;
  b[o + 3] = (v >>> 24) & 255;
}

/** The entry's file digest as a {@link Digest}, when its algorithm is one the index knows. @example `imaEntryDigest(e) // { alg: 'sha256', hex: '…' }` */
export function imaEntryDigest(e: ImaEntry): Digest | undefined {
  return (KNOWN_DIGEST as readonly string[]).includes(e.digestAlg) ? { alg: e.digestAlg as DigestAlgorithm, hex: toHex(e.digest) } : undefined;
}

// ---------------------------------------------------------------- hashing

type SyncHash = (alg: string) => { update(d: Uint8Array): { digest(): Uint8Array } };
type OneShotHash = (alg: string, data: Uint8Array, enc: 'buffer') => Uint8Array;
let nodeHash: SyncHash | null | undefined;
// node:crypto's one-shot hash (Node ≥ 20.12): no Hash object per call, which for the two or
// three small hashes per log entry is a large share of the work.
let nodeOneShot: OneShotHash | undefined;

async function loadNodeHash(): Promise<SyncHash | null> {
  if (nodeHash === undefined) {
    nodeHash = null;
    if (typeof process !== 'undefined' && process.versions?.node) {
      try {
        const name = 'node:crypto'; // hidden from bundlers
        const m = (await import(/* @vite-ignore */ name)) as { createHash: SyncHash; hash?: OneShotHash };
        nodeHash = m.createHash;
        if (typeof m.hash === 'function') nodeOneShot = m.hash;
      } catch {
        nodeHash = null;
      }
    }
  }
  return nodeHash;
}

const SUBTLE: Record<string, string> = { sha1: 'SHA-1', sha256: 'SHA-256', sha384: 'SHA-384', sha512: 'SHA-512' };

/**
 * Digest of `data` under an IMA bank algorithm: node:crypto where there is one
 * (synchronous; has SM3 with OpenSSL 3), WebCrypto elsewhere (no SM3 there:
 * UNSUPPORTED).
 * @example `await imaHash('sha256', bytes) // 32 bytes`
 */
export async function imaHash(alg: ImaBank, data: Uint8Array): Promise<Uint8Array> {
  const h = await loadNodeHash();
  if (h) {
    try {
      return new Uint8Array(h(alg).update(data).digest());
    } catch (cause) {
      throw new VmkitError('UNSUPPORTED', `hash ${alg} is not available in this runtime`, { cause });
    }
  }
  const s = SUBTLE[alg];
  if (!s) throw new VmkitError('UNSUPPORTED', `hash ${alg} is not available in this runtime`);
  return new Uint8Array(await globalThis.crypto.subtle.digest(s, data as Uint8Array<ArrayBuffer>));
}

/** Synchronous where node:crypto is loaded (the hot path of a long log), else a promise. */
function hashNow(alg: ImaBank, data: Uint8Array): Uint8Array | Promise<Uint8Array> {
  if (nodeHash) {
    try {
      const d = nodeOneShot ? nodeOneShot(alg, data, 'buffer') : nodeHash(alg).update(data).digest();
      return new Uint8Array(d); // a copy: small Buffers may share a pooled ArrayBuffer
    } catch {
      // fall through: imaHash reports UNSUPPORTED
    }
  }
  return imaHash(alg, data);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

// ---------------------------------------------------------------- PCR replay

/**
 * How non-SHA-1 banks were extended.
 *
 * @example
 * ```ts
 * const r = new PcrReplay('sha256', 'sha1-padded'); // kernels before 5.8 padded SHA-1 into other banks
 * ```
 */
export type ImaExtendMode = 'per-bank' | 'sha1-padded';

/**
 * Replays one PCR of one bank over entries as the kernel extended it.
 * `per-bank` (kernel ≥ 5.8, and what Keylime checks): each bank is extended with
 * the bank's own digest of the template data. `sha1-padded` (older kernels):
 * every bank is extended with the SHA-1 template hash, zero-padded.
 *
 * @example
 * ```ts
 * const r = new PcrReplay('sha256');
 * for (const e of entries) await r.extend(e);
 * r.hex(); // the PCR 10 value a TPM quote should show
 * ```
 */
export class PcrReplay {
  /** The bank replayed. */
  readonly bank: ImaBank;
  /** The extension mode. */
  readonly mode: ImaExtendMode;
  /** Entries extended so far. */
  count = 0;
  private pcr: Uint8Array;
  private readonly ones: Uint8Array;

  constructor(bank: ImaBank, mode: ImaExtendMode = 'per-bank') {
    this.bank = aoneOf(bank, 'bank', BANKS);
    this.mode = aoneOf(mode, 'mode', ['per-bank', 'sha1-padded'] as const);
    const n = BANK_LEN[this.bank];
    this.pcr = new Uint8Array(n);
    this.ones = new Uint8Array(n).fill(0xff);
    if (mode === 'sha1-padded') this.ones.fill(0, 20);
  }

  /** The value this entry extends the bank with. @example `await r.extensionOf(e)` */
  async extensionOf(e: ImaEntry, data?: Uint8Array): Promise<Uint8Array> {
    return this.ext(e, data);
  }

  private ext(e: ImaEntry, data?: Uint8Array): Uint8Array | Promise<Uint8Array> {
    if (e.violation) return this.ones;
    if (this.mode === 'per-bank') return hashNow(this.bank, data ?? imaTemplateData(e));
    const pad = (sha1: Uint8Array): Uint8Array => {
      const v = new Uint8Array(BANK_LEN[this.bank]);
      v.set(sha1.subarray(0, Math.min(20, v.length)));
      return v;
    };
    if (e.templateHash.length === 20) return pad(e.templateHash);
    const h = hashNow('sha1', data ?? imaTemplateData(e));
    return h instanceof Uint8Array ? pad(h) : h.then(pad);
  }

  /**
   * Extends the PCR with `e`. Pass the template data when already computed, and
   * the extension value when known (the bank's digest of the data).
   * @example `await r.extend(e)`
   */
  async extend(e: ImaEntry, data?: Uint8Array, extension?: Uint8Array): Promise<void> {
    let ext = extension ?? this.ext(e, data);
    if (!(ext instanceof Uint8Array)) ext = await ext;
    const buf = new Uint8Array(this.pcr.length * 2);
    buf.set(this.pcr);
    buf.set(ext, this.pcr.length);
    let v = hashNow(this.bank, buf);
    if (!(v instanceof Uint8Array)) v = await v;
    this.pcr = v;
    this.count++;
  }

  /** True when the current value equals `bytes`. @example `r.equalsBytes(quoted)` */
  equalsBytes(bytes: Uint8Array): boolean {
    return sameBytes(this.pcr, bytes);
  }

  /** The current value (a copy). @example `r.value()` */
  value(): Uint8Array {
    return this.pcr.slice();
  }

  /** The current value in lowercase hex. @example `r.hex()` */
  hex(): string {
    return toHex(this.pcr);
  }

  /** True when the current value equals `expected` (hex, either case). @example `r.equals('ab…')` */
  equals(expected: string): boolean {
    return toHex(this.pcr) === expected.toLowerCase();
  }
}

// ---------------------------------------------------------------- excludes

/**
 * A compiled exclude list.
 *
 * @example
 * ```ts
 * const ex: ImaExcludes = compileExcludes(['glob:/tmp/**']);
 * ex('/tmp/x'); // true
 * ex.patterns; // ['glob:/tmp/**']
 * ```
 */
export interface ImaExcludes {
  /** True when `path` is excluded. */
  (path: string): boolean;
  /** The patterns it was compiled from. */
  readonly patterns: readonly string[];
}

/**
 * Options of {@link compileExcludes}.
 *
 * @example
 * ```ts
 * const ex = compileExcludes(patternsFromTenant, { regex: false, maxPatterns: 64 }); // glob: patterns only
 * ```
 */
export interface ExcludeOptions {
  /**
   * Allow regular expressions (default true). Turn off for patterns from
   * untrusted parties: then only `glob:` patterns are accepted, whose matcher
   * runs in time linear in the path (one automaton for all globs, bounded by `maxWork`).
   */
  regex?: boolean;
  /** Most patterns (default 1024). */
  maxPatterns?: number;
  /** Longest pattern (default 512). */
  maxLength?: number;
  /**
   * Work allowed for building the globs' automaton over the list's life
   * (default 2^24 units: NFA positions visited making its states, see
   * GlobSet; reading paths through built states is linear and not counted);
   * past it the matcher throws LIMIT. One list per request bounds a
   * request's work.
   */
  maxWork?: number;
}

/**
 * Compiles an exclude list with Keylime's semantics: each pattern is a regular
 * expression matched at the start of the path (Python's `re.match`: anchored at
 * the start, not the end); a pattern starting with `glob:` is a whole-path glob.
 * Blank patterns and ones starting with `#` are ignored. A bad regex throws
 * ARG_RANGE.
 *
 * @example
 * ```ts
 * const ex = compileExcludes(['/tmp/', 'glob:/var/log/**', '.*\\.pyc$']);
 * ex('/tmp/x'); // true
 * ex('/usr/bin/ls'); // false
 * ```
 */
export function compileExcludes(patterns: readonly string[], options: ExcludeOptions = {}): ImaExcludes {
  if (!Array.isArray(patterns)) throw new VmkitError('ARG_TYPE', 'excludes must be an array of strings');
  const { regex = true, maxPatterns = 1024, maxLength = 512, maxWork } = options;
  if (patterns.length > maxPatterns) throw new VmkitError('LIMIT', `more than ${maxPatterns} exclude patterns`);
  const res: RegExp[] = [];
  const globs: string[] = [];
  for (const p of patterns) {
    if (typeof p !== 'string') throw new VmkitError('ARG_TYPE', 'exclude patterns must be strings');
    if (p.length > maxLength) throw new VmkitError('LIMIT', `exclude pattern longer than ${maxLength}`);
    const t = p.trim();
    if (t === '' || t.startsWith('#')) continue;
    if (t.startsWith('glob:')) {
      globs.push(t.slice(5));
      continue;
    }
    if (!regex) throw new VmkitError('ARG_RANGE', `exclude pattern ${JSON.stringify(t.slice(0, 40))} is a regular expression, only glob: patterns are allowed here`);
    try {
      res.push(new RegExp(`^(?:${t})`, 'u'));
    } catch (cause) {
      throw new VmkitError('ARG_RANGE', `exclude pattern ${JSON.stringify(t.slice(0, 40))} is not a valid regular expression`, { cause });
    }
  }
  // All globs in one automaton: a path is read once whatever their number (the
  // per-glob matcher was O(patterns × pattern × path): 100 patterns of 512 characters
  // over 2,000 entries held the service for minutes).
  const set = globs.length ? new GlobSet(globs, maxWork === undefined ? {} : { maxWork }) : undefined;
  const fn = ((path: string) => {
    for (const r of res) if (r.test(path)) return true;
    return set !== undefined && set.match(path);
  }) as ImaExcludes;
  Object.defineProperty(fn, 'patterns', { value: Object.freeze([...patterns]) });
  return fn;
}

// ---------------------------------------------------------------- streaming

/**
 * A measurement list as text: a whole string or bytes; a sync iterable of
 * **lines**; or an async iterable / ReadableStream of **chunks** (text or
 * bytes, split anywhere, e.g. `fs.createReadStream(path)`).
 *
 * @example
 * ```ts
 * await verifyImaLog(fs.createReadStream('/sys/kernel/security/ima/ascii_runtime_measurements')); // chunks
 * await verifyImaLog(text);                                                                 // a string
 * await verifyImaLog(['10 91f3… ima-ng sha256:e3b0… /usr/bin/ls']);                          // lines
 * ```
 */
export type ImaLogSource = string | Uint8Array | Iterable<string> | AsyncIterable<string | Uint8Array> | ReadableStream<Uint8Array>;

/**
 * Lines of a log source, one at a time (constant memory: at most one line and
 * one chunk held). A line longer than `maxLine` characters throws LIMIT.
 *
 * @example
 * ```ts
 * for await (const line of imaLines(fs.createReadStream(p))) …
 * ```
 */
export async function* imaLines(src: ImaLogSource, maxLine: number = 1 << 22): AsyncGenerator<string> {
  if (typeof src === 'string') {
    let i = 0;
    while (i < src.length) {
      let j = src.indexOf('\n', i);
      if (j < 0) j = src.length;
      if (j - i > maxLine) throw new VmkitError('LIMIT', `IMA log line longer than ${maxLine} characters`);
      yield src.slice(i, j);
      i = j + 1;
    }
    return;
  }
  if (src instanceof Uint8Array) {
    yield* imaLines(new TextDecoder().decode(src), maxLine);
    return;
  }
  if (typeof (src as Iterable<string>)[Symbol.iterator] === 'function') {
    for (const l of src as Iterable<string>) {
      if (typeof l !== 'string') throw new VmkitError('ARG_TYPE', 'a sync IMA log source must yield lines (strings)');
      if (l.length > maxLine) throw new VmkitError('LIMIT', `IMA log line longer than ${maxLine} characters`);
      yield l.endsWith('\n') ? l.slice(0, -1) : l;
    }
    return;
  }
  let it: AsyncIterable<string | Uint8Array>;
  if (typeof (src as AsyncIterable<string>)[Symbol.asyncIterator] === 'function') it = src as AsyncIterable<string | Uint8Array>;
  else if (typeof (src as ReadableStream<Uint8Array>).getReader === 'function') it = streamIter(src as ReadableStream<Uint8Array>);
  else throw new VmkitError('ARG_TYPE', 'IMA log must be a string, bytes, lines or a stream');
  const dec = new TextDecoder();
  let carry = '';
  for await (const chunk of it) {
    const text = typeof chunk === 'string' ? chunk : chunk instanceof Uint8Array ? dec.decode(chunk, { stream: true }) : null;
    if (text === null) throw new VmkitError('ARG_TYPE', 'IMA log chunks must be strings or bytes');
    let buf = carry + text;
    let i = 0;
    for (;;) {
      const j = buf.indexOf('\n', i);
      if (j < 0) break;
      if (j - i > maxLine) throw new VmkitError('LIMIT', `IMA log line longer than ${maxLine} characters`);
      yield buf.slice(i, j);
      i = j + 1;
    }
    carry = buf.slice(i);
    buf = '';
    if (carry.length > maxLine) throw new VmkitError('LIMIT', `IMA log line longer than ${maxLine} characters`);
  }
  carry += dec.decode();
  if (carry.length > 0) yield carry;
}

async function* streamIter(s: ReadableStream<Uint8Array>): AsyncGenerator<Uint8Array> {
  const r = s.getReader();
  try {
    for (;;) {
      const { done, value } = await r.read();
      if (done) return;
      yield value;
    }
  } finally {
    r.releaseLock();
  }
}

/**
 * Entries of a log, parsed as they stream in; blank lines are skipped, a bad
 * line throws CORRUPT with its line number.
 *
 * @example
 * ```ts
 * for await (const e of readImaLog(text)) console.log(e.path);
 * ```
 */
export async function* readImaLog(src: ImaLogSource, maxLine?: number): AsyncGenerator<ImaEntry> {
  let n = 0;
  for await (const l of imaLines(src, maxLine)) {
    n++;
    const e = parseImaLine(l, n);
    if (e) yield e;
  }
}

// ---------------------------------------------------------------- verification

/**
 * A failure found in a log; `id` follows Keylime's failure ids where one fits.
 *
 * @example
 * ```ts
 * const r = await verifyImaLog(log);
 * for (const f of r.failures) console.error(`${f.id} at line ${f.line}: ${f.message}`);
 * ```
 */
export interface ImaFailure {
  /** `ima.validation.ima_hash` (template hash), `ima.validation.ima_pcr` (not PCR 10), `ima.pcr_mismatch`. */
  id: string;
  /** Line number (0 for the whole log). */
  line: number;
  /** Human-readable detail. */
  message: string;
  /** The entry's path, when the failure concerns one. */
  path?: string;
}

/**
 * Options of {@link verifyImaLog}.
 *
 * @example
 * ```ts
 * const r = await verifyImaLog(log, {
 *   expectedPcr: { bank: 'sha256', hex: quotedPcr10 },
 *   excludes: ['/tmp/'],
 *   collect: false,
 *   onEntry: (e, excluded) => { if (!excluded) check(e); },
 * });
 * ```
 */
export interface ImaVerifyOptions {
  /** Banks to replay (default: the bank of `expectedPcr`, else `sha1`). */
  banks?: ImaBank[];
  /** The quoted PCR value to compare with. */
  expectedPcr?: { bank: ImaBank; hex: string };
  /** PCR IMA extends (default 10); entries for other PCRs are reported, not replayed. */
  pcr?: number;
  /** How non-SHA-1 banks were extended (default `per-bank`). */
  extend?: ImaExtendMode;
  /** Algorithm of the logged template hashes (default: by length; 32 bytes → sha256). */
  templateHashAlg?: ImaBank;
  /** Recompute each template hash (default true). */
  checkTemplateHashes?: boolean;
  /** Paths to leave out of `entries` / mark excluded (still replayed). */
  excludes?: ImaExcludes | readonly string[];
  /** Called for every entry, in order (for constant-memory appraisal). */
  onEntry?: (e: ImaEntry, excluded: boolean) => void | Promise<void>;
  /** Keep the non-excluded entries in the result (default true; false for constant memory). */
  collect?: boolean;
  /** Most entries accepted (default 4 000 000) → LIMIT. */
  maxEntries?: number;
  /** Longest line (default 4 Mi characters) → LIMIT. */
  maxLine?: number;
  /** Most failures recorded (default 100; `failureCount` still counts all). */
  maxFailures?: number;
  /**
   * Give the event loop a turn after this many milliseconds of work (default:
   * never). A server sets it so that one large log does not keep every other
   * client waiting: the log is verified in slices of about this length.
   */
  yieldMs?: number;
}

/**
 * What {@link verifyImaLog} found.
 *
 * @example
 * ```ts
 * const { count, failureCount, pcrCheck }: ImaLogResult = await verifyImaLog(log, { expectedPcr });
 * if (failureCount > 0 || !pcrCheck?.match) console.error('log does not match the quote');
 * ```
 */
export interface ImaLogResult {
  /** Entries parsed. */
  count: number;
  /** Violation entries (template hash zeros). */
  violations: number;
  /** Entries matched by the exclude list. */
  excluded: number;
  /** Entries whose template hash did not match their data. */
  templateHashFailures: number;
  /** All failures counted (template hashes, wrong PCR, PCR mismatch). */
  failureCount: number;
  /** The first `maxFailures` failures. */
  failures: ImaFailure[];
  /** Replayed PCR value per bank (hex). */
  pcrs: Partial<Record<ImaBank, string>>;
  /** The comparison with `expectedPcr`, when given. */
  pcrCheck?: {
    bank: ImaBank;
    expected: string;
    replayed: string;
    /** The replay of the whole log equals the expected value. */
    match: boolean;
    /**
     * Number of entries after which the replay equalled the expected value
     * (the log grew after the quote), when it did at some point.
     */
    matchedAfter?: number;
  };
  /** Non-excluded entries (when `collect`). */
  entries: ImaEntry[];
}

/**
 * Resolves after pending I/O had its turn (a macrotask: setImmediate in Node,
 * a zero timeout elsewhere); awaiting a promise alone would not let it in.
 */
export function _macrotask(): Promise<void> {
  const si = (globalThis as { setImmediate?: (f: () => void) => unknown }).setImmediate;
  return new Promise((r) => (si ? si(r) : setTimeout(r, 0)));
}

function templateAlg(e: ImaEntry, forced: ImaBank | undefined): ImaBank {
  if (forced) return forced;
  switch (e.templateHash.length) {
    case 20:
      return 'sha1';
    case 48:
      return 'sha384';
    case 64:
      return 'sha512';
    default:
      return 'sha256';
  }
}

/**
 * Streams a measurement list: parses every line, checks every template hash,
 * replays PCR 10 for the chosen banks, compares with the quoted value and
 * applies the exclude list. Throws CORRUPT (with the line number) on a bad
 * line; integrity findings are returned, not thrown.
 *
 * @example
 * ```ts
 * const r = await verifyImaLog(fs.createReadStream('/sys/kernel/security/ima/ascii_runtime_measurements'), {
 *   expectedPcr: { bank: 'sha256', hex: quotedPcr10 }, excludes: ['/tmp/'],
 * });
 * if (r.failureCount === 0 && r.pcrCheck?.match) appraise(r.entries);
 * ```
 */
export async function verifyImaLog(src: ImaLogSource, options: ImaVerifyOptions = {}): Promise<ImaLogResult> {
  const { expectedPcr, pcr = 10, extend = 'per-bank', templateHashAlg, checkTemplateHashes = true, onEntry, collect = true, maxEntries = 4_000_000, maxFailures = 100 } = options;
  if (templateHashAlg !== undefined) aoneOf(templateHashAlg, 'templateHashAlg', BANKS);
  let expectedHex: string | undefined;
  if (expectedPcr) {
    aoneOf(expectedPcr.bank, 'expectedPcr.bank', BANKS);
    expectedHex = String(expectedPcr.hex).toLowerCase();
    if (!/^[0-9a-f]*$/.test(expectedHex) || expectedHex.length !== BANK_LEN[expectedPcr.bank] * 2) {
      throw new VmkitError('ARG_RANGE', `expectedPcr.hex must be ${BANK_LEN[expectedPcr.bank] * 2} hex digits for ${expectedPcr.bank}`);
    }
  }
  const banks = [...new Set(options.banks ?? (expectedPcr ? [expectedPcr.bank] : ['sha1' as ImaBank]))];
  if (expectedPcr && !banks.includes(expectedPcr.bank)) banks.push(expectedPcr.bank);
  const replays = banks.map((b) => new PcrReplay(b, extend));
  const exclude = options.excludes === undefined ? undefined : typeof options.excludes === 'function' ? options.excludes : compileExcludes(options.excludes);
  const res: ImaLogResult = { count: 0, violations: 0, excluded: 0, templateHashFailures: 0, failureCount: 0, failures: [], pcrs: {}, entries: [] };
  const fail = (f: ImaFailure): void => {
    res.failureCount++;
    if (res.failures.length < maxFailures) res.failures.push(f);
  };
  const target = expectedPcr ? replays[banks.indexOf(expectedPcr.bank)]! : undefined;
  const expectedBytes = expectedHex === undefined ? undefined : new Uint8Array(expectedHex.length / 2);
  if (expectedBytes) hexInto(expectedHex!, expectedBytes);
  await loadNodeHash();
  let matchedAfter: number | undefined;
  const yieldMs = options.yieldMs;
  let sliceStart = yieldMs === undefined ? 0 : performance.now();
  for await (const e of readImaLog(src, options.maxLine)) {
    if (++res.count > maxEntries) throw new VmkitError('LIMIT', `IMA log has more than ${maxEntries} entries`);
    if (yieldMs !== undefined && (res.count & 7) === 0 && performance.now() - sliceStart >= yieldMs) {
      await _macrotask();
      sliceStart = performance.now();
    }
    const data = imaTemplateData(e);
    let computed: Uint8Array | undefined;
    let calg: ImaBank | undefined;
    if (e.violation) res.violations++;
    else if (checkTemplateHashes) {
      calg = templateAlg(e, templateHashAlg);
      let h = hashNow(calg, data);
      if (!(h instanceof Uint8Array)) h = await h;
      computed = h;
      if (!sameBytes(h, e.templateHash)) {
        res.templateHashFailures++;
        fail({ id: 'ima.validation.ima_hash', line: e.line, path: e.path, message: `template hash ${toHex(e.templateHash)} does not match the ${e.template} template data (${toHex(h)})` });
      }
    }
    if (e.pcr === pcr) {
      // The bank's extension is the template hash just computed when the algorithms agree.
      for (const r of replays) await r.extend(e, data, r.mode === 'per-bank' && r.bank === calg ? computed : undefined);
      if (target && expectedBytes && target.equalsBytes(expectedBytes)) matchedAfter = res.count;
    } else {
      fail({ id: 'ima.validation.ima_pcr', line: e.line, path: e.path, message: `entry extends PCR ${e.pcr}, not ${pcr}` });
    }
    const ex = exclude ? exclude(e.path) : false;
    if (ex) res.excluded++;
    else if (collect) res.entries.push(e);
    if (onEntry) await onEntry(e, ex);
  }
  for (const r of replays) res.pcrs[r.bank] = r.hex();
  if (expectedPcr && target) {
    const replayed = target.hex();
    res.pcrCheck = { bank: expectedPcr.bank, expected: expectedHex!, replayed, match: replayed === expectedHex };
    if (matchedAfter !== undefined) res.pcrCheck.matchedAfter = matchedAfter;
    if (!res.pcrCheck.match) {
      fail({ id: 'ima.pcr_mismatch', line: 0, message: `PCR ${pcr} (${expectedPcr.bank}) replayed ${replayed}, quoted ${expectedHex}` + (matchedAfter !== undefined ? `; the first ${matchedAfter} entries match it` : '') });
    }
  }
  return res;
}
