/**
 * The Packages scanner of the core (assembly/packages_scan.ts) behind the
 * interface of {@link PackagesParser}: chunks of a Packages file in, one
 * record per paragraph out, but the lines are parsed in the core and only the
 * values the index keeps become strings (Package, Version; Architecture once
 * per distinct value); the SHA256 arrives decoded and the Filename as bytes.
 *
 * ```
 *  chunk ──copy──► core input buffer [partial line | chunk]
 *                    pkgsScan: every complete line; partial line kept
 *                  records (48 B each)  digests (32 B each)  text (kept values)
 *  onRecord(r) ◄── r.package, r.version (strings), r.architecture (interned),
 *                  r.digest[r.digestAt..+32], r.text[r.filenameAt..+filenameLength], r.size
 * ```
 * The rules are PackagesParser's (test/attest-packages-scan.node.test.ts
 * checks both agree); this one adds two limits: a line longer than the input
 * buffer (256 KiB) and a kept value longer than 1024 bytes are LIMIT.
 * @module
 */
import { core, coreFailure, type Core } from '../../core.js';
import { check } from '../../_status.js';
import { VmkitError } from '../../errors.js';

/** Input buffer of the core's scanner: the longest line it takes. */
const INPUT = 256 << 10;
/** Records per core call. */
const RECORDS = 1024;
const REC = 48;

/**
 * One paragraph as the core scanner gives it (the object and its views are
 * reused: copy what you keep, during the callback).
 * @internal
 */
export interface PackagesScanRecord {
  package: string;
  version: string;
  architecture: string | undefined;
  size: number;
  /** Core memory: the SHA256, 32 bytes at `digestAt`. */
  digest: Uint8Array;
  digestAt: number;
  /** Core memory: the Filename's UTF-8 bytes at `filenameAt`. */
  text: Uint8Array;
  filenameAt: number;
  filenameLength: number;
}

type _Buf = { utf8Slice(a: number, b: number): string };
const _B = (globalThis as unknown as { Buffer?: { from(b: ArrayBufferLike): _Buf } }).Buffer;
const _utf8 = new TextDecoder();

const NAMES: Record<number, string> = { 1: 'Package', 2: 'Version', 4: 'Architecture', 8: 'Filename', 16: 'Size', 32: 'SHA256' };

const registry = new FinalizationRegistry<{ h: number; gen: number }>((t) => {
  try {
    const c = core();
    if (c.generation === t.gen) c.exports.pkgsDestroy(t.h);
  } catch {
    /* the core is gone */
  }
});

/**
 * {@link PackagesParser} in the core: `push(chunk)` as the bytes arrive,
 * `end()` for the record count; `close()` (or `end()`) frees the scanner.
 * @internal
 * @example
 * ```ts
 * const p = new _CorePackagesParser((r) => ix.addPackageSha256Raw(repo, r.package, r.version, r.architecture, r.digest, r.digestAt));
 * for await (const chunk of chunks) p.push(chunk);
 * const count = p.end();
 * ```
 */
export class _CorePackagesParser {
  private h: number;
  private readonly gen: number;
  private readonly token = {};
  private closed = false;
  private count = 0;
  private ended = false;
  private readonly r: PackagesScanRecord = { package: '', version: '', architecture: undefined, size: 0, digest: new Uint8Array(0), digestAt: 0, text: new Uint8Array(0), filenameAt: 0, filenameLength: 0 };
  private u8: Uint8Array = new Uint8Array(0);
  private f64: Float64Array = new Float64Array(0);
  private u32: Uint32Array = new Uint32Array(0);
  private buf: _Buf | undefined;
  private readonly recP: number;
  private readonly digP: number;
  private readonly textP: number;
  // The architecture strings seen (at most 8 kept) and their bytes.
  private archs: { bytes: Uint8Array; s: string }[] = [];

  private readonly onRecord: (r: PackagesScanRecord) => void;
  private readonly what: string;

  constructor(onRecord: (r: PackagesScanRecord) => void, what: string = 'Packages') {
    this.onRecord = onRecord;
    this.what = what;
    const c = core();
    this.gen = c.generation;
    const ex = c.exports;
    this.h = check(ex.pkgsCreate(INPUT, RECORDS), 'Packages scanner create');
    registry.register(this, { h: this.h, gen: this.gen }, this.token);
    this.recP = ex.pkgsRecords(this.h);
    this.digP = ex.pkgsDigests(this.h);
    this.textP = ex.pkgsText(this.h);
  }

  private live(): Core {
    const c = core();
    if (this.closed || this.ended) throw new VmkitError('INVALID_STATE', `${this.what}: push after end`);
    if (c.generation !== this.gen) throw new VmkitError('STALE_HANDLE', `${this.what}: the core was reset`);
    return c;
  }

  // Views of core memory, re-made when it grew (a grown memory detaches the old buffer).
  private views(c: Core): void {
    if (this.u8.length !== 0) return;
    const u8 = c.u8();
    this.u8 = u8;
    this.f64 = new Float64Array(u8.buffer);
    this.u32 = new Uint32Array(u8.buffer);
    this.buf = _B ? _B.from(u8.buffer) : undefined;
    this.r.digest = u8;
    this.r.text = u8;
  }

  private str(a: number, n: number): string {
    return this.buf ? this.buf.utf8Slice(a, a + n) : _utf8.decode(this.u8.subarray(a, a + n));
  }

  /** Parses the complete lines that `chunk` ends (the rest is kept for the next chunk). */
  push(chunk: Uint8Array): void {
    const c = this.live();
    const ex = c.exports;
    try {
      for (let o = 0; o < chunk.length; ) {
        const room = ex.pkgsInputRoom(this.h);
        const k = Math.min(room, chunk.length - o);
        this.views(c);
        this.u8.set(k === chunk.length ? chunk : chunk.subarray(o, o + k), ex.pkgsInputAt(this.h));
        o += k;
        for (let n = ex.pkgsScan(this.h, k); n !== 0; n = ex.pkgsScan(this.h, 0)) this.deliver(c, n);
      }
    } catch (e) {
      this.close();
      throw coreFailure(e);
    }
  }

  /** Parses what is left and returns the number of records. */
  end(): number {
    if (this.ended) return this.count;
    const c = this.live();
    const ex = c.exports;
    try {
      for (let n = ex.pkgsFinish(this.h); n !== 0; n = ex.pkgsFinish(this.h)) this.deliver(c, n);
    } catch (e) {
      this.close();
      throw coreFailure(e);
    }
    this.close();
    this.ended = true;
    return this.count;
  }

  /** Frees the scanner (end() does too). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    registry.unregister(this.token);
    const c = core();
    if (c.generation === this.gen) c.exports.pkgsDestroy(this.h);
  }

  // Hands n records to onRecord, or throws the scanner's error (n < 0).
  private deliver(c: Core, n: number): void {
    if (n < 0) this.fail(c, n);
    const r = this.r;
    for (let k = 0; k < n; k++) {
      this.views(c);
      const w = (this.recP + k * REC) >>> 2;
      const u32 = this.u32;
      const t = this.textP;
      r.package = this.str(t + u32[w]!, u32[w + 1]!);
      r.version = this.str(t + u32[w + 2]!, u32[w + 3]!);
      const ao = u32[w + 4]!;
      r.architecture = ao === 0xffffffff ? undefined : this.arch(t + ao, u32[w + 5]!);
      r.filenameAt = t + u32[w + 6]!;
      r.filenameLength = u32[w + 7]!;
      r.size = this.f64[w / 2 + 4]!;
      r.digestAt = this.digP + k * 32;
      this.onRecord(r);
      this.count++;
    }
  }

  // Architectures are a handful of short words ("amd64", "all"): the last ones seen are
  // compared by their bytes, so a record makes no string for its architecture.
  private arch(a: number, n: number): string {
    const u8 = this.u8;
    const known = this.archs;
    for (let k = 0; k < known.length; k++) {
      const b = known[k]!.bytes;
      if (b.length !== n) continue;
      let i = 0;
      while (i < n && b[i] === u8[a + i]) i++;
      if (i === n) return known[k]!.s;
    }
    const s = this.str(a, n);
    if (known.length < 8) known.push({ bytes: u8.slice(a, a + n), s });
    return s;
  }

  private fail(c: Core, status: number): never {
    const info = c.alloc(16);
    let kind = 0;
    let detail = 0;
    let at = 0;
    try {
      c.exports.pkgsErrorInfo(this.h, info);
      const u8 = c.u8();
      const dv = new DataView(u8.buffer, info, 16);
      kind = dv.getUint32(0, true);
      detail = dv.getUint32(4, true);
      at = dv.getFloat64(8, true);
    } finally {
      c.free(info);
    }
    const field = JSON.stringify(NAMES[detail] ?? '?');
    const msg =
      kind === 1 ? 'continuation line outside a paragraph'
      : kind === 2 ? 'line is not "Field: value"'
      : kind === 3 ? `field ${field} repeated in one paragraph`
      : kind === 4 ? `field ${field} is empty`
      : kind === 5 ? 'Size is not a number'
      : kind === 6 ? 'SHA256 is not 64 hex digits'
      : kind === 7 ? `paragraph lacks ${[1, 2, 8, 16, 32].filter((f) => detail & f).map((f) => NAMES[f]).join(', ')}`
      : kind === 8 ? `field ${field} is longer than 1024 bytes`
      : kind === 9 ? `a line is longer than ${INPUT} bytes`
      : `core status ${status}`;
    const code = status === -7 ? 'LIMIT' : 'CORRUPT';
    throw new VmkitError(code, `${this.what}: ${msg}`, { offset: at });
  }
}
