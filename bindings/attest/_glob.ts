/**
 * Many globs compiled into one automaton: every path is read once, one
 * character at a time, whatever the number of patterns (a lazily built DFA
 * over the patterns' NFA, as RE2 does for regular expressions).
 *
 * ```
 * glob  /var/*.log        NFA positions (one run per glob, laid end to end)
 *                          0:'/' 1:'v' 2:'a' 3:'r' 4:'/' 5:STAR 6:'.' 7:'l' 8:'o' 9:'g' 10:ACCEPT
 * DFA state = the set of NFA positions alive after a prefix of the path;
 * state --c--> state' computed on first use, then cached: later paths cost one
 * Map lookup per character.
 * ```
 *
 * Building states is where the work is (a state's set can hold every position
 * of every glob), so it is counted: past `maxWork` units (NFA positions visited
 * while building states) the matcher throws LIMIT. The budget bounds both the
 * time and the memory the cached states hold; reading a path through states
 * already built costs one lookup per character and is not counted (it is
 * bounded by the input's size).
 * @module
 */
import { VmkitError } from '../errors.js';

const LIT = 0; // match one code unit
const ONE = 1; // `?`: one code unit but '/'
const STAR = 2; // `*`: a run without '/'
const ANY = 3; // `**`: any run
const ACCEPT = 4;
const SLASH = 0x2f;

interface DState {
  readonly set: Int32Array;
  readonly accept: boolean;
  /** Transitions on ASCII, by code (most paths are ASCII: an array index, not a hash). */
  readonly ascii: (DState | undefined)[];
  /** Transitions on other code units. */
  readonly next: Map<number, DState>;
}

/** Options of {@link GlobSet}. */
export interface GlobSetOptions {
  /** Work units (NFA positions visited building states) allowed over the matcher's life (default 2^24); past it LIMIT. */
  maxWork?: number;
}

/**
 * A set of globs (`*` any run without `/`, `**` any run, `?` one character
 * but `/`, anything else literal; each matches the whole path) matched in one
 * pass per path.
 *
 * @example
 * ```ts
 * const g = new GlobSet(['/tmp/**', '/var/log/*.log'], { maxWork: 1 << 20 });
 * g.match('/var/log/syslog.log'); // true
 * g.work; // units spent so far
 * ```
 */
export class GlobSet {
  /** Units spent building states. */
  work = 0;
  /** The budget. */
  readonly maxWork: number;
  private readonly kind: Uint8Array;
  private readonly code: Uint16Array;
  private readonly mark: Uint32Array;
  private gen = 0;
  private readonly states = new Map<number, DState[]>();
  private readonly start: DState;
  private readonly scratch: Int32Array;

  constructor(globs: readonly string[], options: GlobSetOptions = {}) {
    this.maxWork = options.maxWork ?? 1 << 24;
    if (!(this.maxWork > 0)) throw new VmkitError('ARG_RANGE', 'options.maxWork must be a positive number');
    const kind: number[] = [];
    const code: number[] = [];
    const starts: number[] = [];
    for (const g of globs) {
      if (typeof g !== 'string') throw new VmkitError('ARG_TYPE', 'globs must be strings');
      starts.push(kind.length);
      for (let i = 0; i < g.length; i++) {
        const c = g.charCodeAt(i);
        if (c === 0x2a) {
          const any = g.charCodeAt(i + 1) === 0x2a;
          if (any) i++;
          // Runs of stars are one star (any if one of them is): `***` is `**`, `*/**`
          // is not a run. Keeps the epsilon closure one step deep.
          const last = kind.length - 1;
          if (last >= starts[starts.length - 1]! && (kind[last] === STAR || kind[last] === ANY)) {
            if (any) kind[last] = ANY;
          } else {
            kind.push(any ? ANY : STAR);
            code.push(0);
          }
        } else {
          kind.push(c === 0x3f ? ONE : LIT);
          code.push(c);
        }
      }
      kind.push(ACCEPT);
      code.push(0);
    }
    this.kind = Uint8Array.from(kind);
    this.code = Uint16Array.from(code);
    this.mark = new Uint32Array(kind.length);
    this.scratch = new Int32Array(kind.length);
    this.gen++;
    let n = 0;
    for (const s of starts) n = this.add(s, n);
    this.start = this.intern(n);
  }

  // Adds position q (and, for a star, the position after it: a star matches nothing too).
  private add(q: number, n: number): number {
    if (this.mark[q] === this.gen) return n;
    this.mark[q] = this.gen;
    this.scratch[n++] = q;
    const k = this.kind[q]!;
    if ((k === STAR || k === ANY) && this.mark[q + 1] !== this.gen) {
      this.mark[q + 1] = this.gen;
      this.scratch[n++] = q + 1;
    }
    return n;
  }

  private spend(units: number): void {
    this.work += units;
    if (this.work > this.maxWork) throw new VmkitError('LIMIT', `exclude patterns: matching needs more than ${this.maxWork} work units (fewer or simpler patterns)`);
  }

  // The canonical state for scratch[0..n): sorted, hashed, looked up, else made.
  private intern(n: number): DState {
    const set = this.scratch.slice(0, n).sort();
    this.spend(n + 128); // the state's positions and its 128 ASCII transition slots
    let h = 0x811c9dc5 ^ n;
    for (let i = 0; i < n; i++) h = Math.imul(h ^ set[i]!, 0x01000193);
    const bucket = this.states.get(h);
    if (bucket) {
      for (const s of bucket) {
        if (s.set.length !== n) continue;
        let same = true;
        for (let i = 0; i < n && same; i++) same = s.set[i] === set[i];
        if (same) return s;
      }
    }
    let accept = false;
    for (let i = 0; i < n && !accept; i++) accept = this.kind[set[i]!] === ACCEPT;
    const s: DState = { set, accept, ascii: new Array<DState | undefined>(128).fill(undefined), next: new Map() };
    if (bucket) bucket.push(s);
    else this.states.set(h, [s]);
    return s;
  }

  private step(s: DState, c: number): DState {
    this.gen = (this.gen + 1) >>> 0 || 1;
    if (this.gen === 1) this.mark.fill(0);
    const { kind, code } = this;
    let n = 0;
    this.spend(s.set.length);
    for (let i = 0; i < s.set.length; i++) {
      const q = s.set[i]!;
      const k = kind[q]!;
      if (k === LIT) {
        if (code[q] === c) n = this.add(q + 1, n);
      } else if (k === ONE) {
        if (c !== SLASH) n = this.add(q + 1, n);
      } else if (k === ANY || (k === STAR && c !== SLASH)) n = this.add(q, n);
    }
    const t = this.intern(n);
    if (c < 128) s.ascii[c] = t;
    else s.next.set(c, t);
    return t;
  }

  /**
   * True when some glob matches all of `path`. Throws LIMIT when the budget is spent.
   * @example `new GlobSet(['/tmp/**']).match('/tmp/a/b') // true`
   */
  match(path: string): boolean {
    let s = this.start;
    for (let i = 0; i < path.length; i++) {
      const c = path.charCodeAt(i);
      s = (c < 128 ? s.ascii[c] : s.next.get(c)) ?? this.step(s, c);
      if (s.set.length === 0) return false;
    }
    return s.accept;
  }
}
