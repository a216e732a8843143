/**
 * Keeps repository sources fresh for the attestation service: refreshes
 * each on a timer (incrementally — the sources send If-None-Match /
 * If-Modified-Since and skip index files whose signed hash did not change),
 * sooner when a release file's `Valid-Until` is near, and records per
 * source what happened for /healthz and /metrics.
 *
 * A source swaps in its new index only after the whole signed chain
 * verified, so a failed refresh (bad signature, hash mismatch, network)
 * leaves the previous index answering; an expired release file is dropped
 * by the source itself. Requests never wait for a refresh: lookups read
 * whatever index is current.
 * @module
 */
import { VmkitError } from '../../errors.js';
import { _manyByOne, _noneFound } from '../index-store.js';
import type { Digest, DigestAlgorithm, PackageEntry, Provenance, ReferenceIndex, RepositorySource } from '../types.js';

/**
 * What is known about one source.
 *
 * @example
 * ```ts
 * for (const s of sources.status()) console.log(s.id, s.packages, s.lastError?.code ?? 'ok');
 * ```
 */
export interface SourceStatus {
  /** The source line. */
  id: string;
  /** Packages in the index in use (0 before the first successful refresh). */
  packages: number;
  /** Digests in the index in use. */
  digests: number;
  /** Last successful refresh (changed or not). */
  lastSuccess?: Date;
  /** Last refresh that changed the index. */
  lastChange?: Date;
  /** The release file's Valid-Until, when it has one. */
  validUntil?: Date;
  /** The last failure, cleared by the next success. */
  lastError?: { code: string; message: string; at: Date };
  /** Refreshes attempted / failed since start. */
  refreshes: number;
  failures: number;
  /** Duration of the last refresh in milliseconds. */
  lastDurationMs?: number;
  /** Packages whose file digests are loaded (see `filePackages`), and failures doing so. */
  filePackages: number;
  fileErrors: number;
}

/**
 * Options of {@link SourceSet}.
 *
 * @example
 * ```ts
 * const set = new SourceSet([openSource('deb http://deb.debian.org/debian bookworm main', { keyring })], { intervalMs: 300_000 });
 * ```
 */
export interface SourceSetOptions {
  /** Time between refreshes of a source, in milliseconds (default 5 minutes). */
  intervalMs?: number;
  /** Refresh this long before a Valid-Until (default 10 minutes, capped at half the time left). */
  validUntilMarginMs?: number;
  /** Retry delay after a failure (default 30 s, doubled per failure up to `intervalMs`). */
  retryMs?: number;
  /**
   * Packages whose file-level digests are loaded after each refresh that
   * changed a source (APT: the .deb is fetched, checked against the signed
   * Packages and its data archive hashed; RPM: from the .rpm header), so IMA
   * entries and file digests of those packages affirm. Names, all versions.
   */
  filePackages?: string[];
  /** Clock (tests). */
  now?: () => number;
}

/**
 * A set of sources answering as one {@link ReferenceIndex}, refreshed on a timer.
 *
 * @example
 * ```ts
 * const set = new SourceSet([openSource('rpm http://host/repo', { keyring })], { intervalMs: 60_000 });
 * await set.refreshAll();   // first load: throws if no source could be loaded
 * set.start();              // then refresh in the background
 * set.lookupDigest('sha256', digest);
 * set.close();
 * ```
 */
export class SourceSet implements ReferenceIndex {
  /** The sources, in the order given. */
  readonly sources: readonly RepositorySource[];
  private readonly state: SourceStatus[];
  private readonly timers: (ReturnType<typeof setTimeout> | undefined)[];
  private readonly running: (Promise<VmkitError | undefined> | undefined)[];
  private readonly opts: Required<Omit<SourceSetOptions, 'now' | 'filePackages'>> & { now: () => number; filePackages: string[] };
  private started = false;
  private closed = false;
  private readonly ac = new AbortController();

  constructor(sources: readonly RepositorySource[], options: SourceSetOptions = {}) {
    if (sources.length === 0) throw new VmkitError('ARG_RANGE', 'at least one repository source is required');
    this.sources = sources;
    this.state = sources.map((s) => ({ id: s.id, packages: 0, digests: 0, refreshes: 0, failures: 0, filePackages: 0, fileErrors: 0 }));
    this.timers = sources.map(() => undefined);
    this.running = sources.map(() => undefined);
    this.opts = {
      intervalMs: options.intervalMs ?? 5 * 60_000,
      validUntilMarginMs: options.validUntilMarginMs ?? 10 * 60_000,
      retryMs: options.retryMs ?? 30_000,
      filePackages: options.filePackages ?? [],
      now: options.now ?? Date.now,
    };
  }

  /** A snapshot of every source's status. @example `set.status()[0].packages` */
  status(): SourceStatus[] {
    return this.state.map((s) => ({ ...s }));
  }

  /** True when every source has a usable index. @example `if (!set.ready) res.statusCode = 503;` */
  get ready(): boolean {
    return this.state.every((s) => s.lastSuccess !== undefined && s.packages > 0);
  }

  /** True when at least one source has a usable index (the service answers then). @example `set.anyReady` */
  get anyReady(): boolean {
    return this.state.some((s) => s.lastSuccess !== undefined && s.packages > 0);
  }

  /** Digests held across sources. */
  get size(): number {
    let n = 0;
    for (const s of this.sources) n += s.size;
    return n;
  }

  /** Every source's entries for the digest. @example `set.lookupDigest('sha256', d)` */
  lookupDigest(alg: DigestAlgorithm, digest: Uint8Array): Provenance[] {
    const out: Provenance[] = [];
    for (const s of this.sources) for (const p of s.lookupDigest(alg, digest)) out.push(p);
    return out;
  }

  /**
   * A request's digests in one call per source (see DigestIndex.lookupMany);
   * per digest every source's entries, in source order.
   * @example `set.lookupMany('sha256', hexes)`
   */
  lookupMany(alg: DigestAlgorithm, digests: readonly string[] | Uint8Array): (Provenance[] | undefined)[] {
    let out: (Provenance[] | undefined)[] | undefined;
    for (const s of this.sources) {
      const r = s.lookupMany ? s.lookupMany(alg, digests) : _manyByOne(s, alg, digests);
      if (out === undefined) out = r;
      else for (let i = 0; i < r.length; i++) if (r[i]) out[i] = out[i] ? [...out[i]!, ...r[i]!] : r[i];
    }
    return out ?? _noneFound(alg, digests);
  }

  /** Every source's versions of the package. @example `set.lookupPackage('hello', '2.10-3')` */
  lookupPackage(name: string, version?: string): PackageEntry[] {
    const out: PackageEntry[] = [];
    for (const s of this.sources) for (const e of s.lookupPackage(name, version)) out.push(e);
    return out;
  }

  /**
   * File-level digests of one package from the source that holds it
   * (APT: fetched and hashed once, then cached); undefined when its
   * ecosystem has none.
   * @example `const files = await set.fileDigests(set.lookupPackage('hello')[0]);`
   */
  async fileDigests(entry: PackageEntry, signal?: AbortSignal): Promise<Map<string, Digest> | undefined> {
    const src = this.sources.find((s) => s.id === entry.provenance.repository);
    return src?.fileDigests ? src.fileDigests(entry, signal) : undefined;
  }

  /**
   * Refreshes source `i` now (joins a refresh already running). Never
   * throws: the outcome is in {@link SourceSet.status}; resolves to the error
   * when it failed.
   * @example `const err = await set.refreshOne(0);`
   */
  async refreshOne(i: number): Promise<VmkitError | undefined> {
    const src = this.sources[i];
    const st = this.state[i];
    if (!src || !st) throw new VmkitError('ARG_RANGE', `no source ${i}`);
    const run = this.running[i] ?? (this.running[i] = (async () => {
      let err: VmkitError | undefined;
      await Promise.resolve(); // the slot is set before any outcome clears it
      const t0 = this.opts.now();
      st.refreshes++;
      try {
        const r = await src.refresh(this.ac.signal);
        const now = new Date(this.opts.now());
        st.lastSuccess = now;
        if (r.changed) st.lastChange = now;
        st.packages = r.packages;
        if (r.validUntil) st.validUntil = r.validUntil;
        else delete st.validUntil;
        delete st.lastError;
        if (r.changed) await this.loadFiles(src, st);
      } catch (e) {
        err = e instanceof VmkitError ? e : new VmkitError('IO', (e as Error)?.message ?? String(e), { cause: e });
        st.failures++;
        st.lastError = { code: err.code, message: err.message, at: new Date(this.opts.now()) };
      } finally {
        st.digests = src.size;
        if (st.digests === 0) st.packages = 0; // an expired release file drops the index
        st.lastDurationMs = this.opts.now() - t0;
        this.running[i] = undefined;
      }
      return err;
    })());
    return run;
  }

  /** Loads the file digests of `filePackages` (sequentially: one .deb at a time). */
  private async loadFiles(src: RepositorySource, st: SourceStatus): Promise<void> {
    if (!src.fileDigests || this.opts.filePackages.length === 0) return;
    let ok = 0;
    let bad = 0;
    for (const name of this.opts.filePackages) {
      for (const e of src.lookupPackage(name)) {
        try {
          if (await src.fileDigests(e, this.ac.signal)) ok++;
        } catch {
          bad++; // a package that fails its check is not trusted; the rest still load
        }
      }
    }
    st.filePackages = ok;
    st.fileErrors = bad;
  }

  /**
   * Refreshes every source at once. With `requireAll` (the first load of a
   * service) throws the first failure; otherwise failures are only recorded.
   * @example `await set.refreshAll({ requireAll: true });`
   */
  async refreshAll(options: { requireAll?: boolean } = {}): Promise<SourceStatus[]> {
    const errs = await Promise.all(this.sources.map((_, i) => this.refreshOne(i)));
    const first = errs.find((e) => e !== undefined);
    if (first && options.requireAll) throw first;
    return this.status();
  }

  /** When source `i` should be refreshed next, in ms from now. */
  private delay(i: number): number {
    const st = this.state[i]!;
    const { intervalMs, retryMs, validUntilMarginMs } = this.opts;
    let d = intervalMs;
    if (st.lastError && st.lastError.at.getTime() >= (st.lastSuccess?.getTime() ?? 0)) {
      d = Math.min(intervalMs, retryMs * 2 ** Math.min(10, Math.max(0, st.failures - 1)));
    }
    if (st.validUntil) {
      const left = st.validUntil.getTime() - this.opts.now();
      d = Math.min(d, Math.max(1000, left - Math.min(validUntilMarginMs, left / 2)));
    }
    return Math.max(100, d);
  }

  private schedule(i: number): void {
    if (this.closed) return;
    const t = setTimeout(() => {
      this.timers[i] = undefined;
      void this.refreshOne(i).then(() => this.schedule(i));
    }, this.delay(i));
    t.unref?.();
    this.timers[i] = t;
  }

  /** Starts refreshing every source in the background. @example `set.start();` */
  start(): void {
    if (this.started || this.closed) return;
    this.started = true;
    for (let i = 0; i < this.sources.length; i++) this.schedule(i);
  }

  /** Stops the timers, cancels running refreshes and closes the sources. @example `set.close();` */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.timers) if (t) clearTimeout(t);
    this.ac.abort();
    for (const s of this.sources) (s as { close?: () => void }).close?.();
  }
}
