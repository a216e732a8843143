/**
 * Mapping walks of an address space and the reverse map built on them: the
 * lazy iterator that asks the core for one chunk of mappings at a time, the
 * decoding of the core's 32-byte records (docs/abi.md, `pagingMappings`),
 * and the gpa → gva index of `AddressSpace.gvasOf`.
 * @module
 * @internal
 */
import type { Core } from '../../core.js';
import { VmkitError } from '../../errors.js';
import { aint } from '../../_utils.js';
import type { Gpa, Gva } from '../types.js';
import type { Mapping } from './types.js';

/** Records per core call of a mapping walk, and entries examined at most per call. */
const MAP_RECORDS = 2048;
/** One record: gva, gpa, leaf (u64 each), flags (u32), level (u8), log2 of the size (u8), 2 zero bytes. */
const MAP_BYTES = 32;
/** Core memory for one chunk of records (allocated once per space). @internal */
export const MAPPING_BUFFER_BYTES: number = MAP_RECORDS * MAP_BYTES;
let mapRecords = MAP_RECORDS;
let mapBudget = 1 << 16;

/** Most mappings the reverse map of `AddressSpace.gvasOf` indexes (8 M: 32 GiB of 4 KiB pages). */
const REVERSE_LIMIT = 1 << 23;
let reverseLimit = REVERSE_LIMIT;

/**
 * Test hook: the reverse map's bound (small values exercise the LIMIT error). Internal.
 * @example
 * _setReverseLimit(1000);
 */
export function _setReverseLimit(n: number = REVERSE_LIMIT): void {
  aint(n, 'n', 1, REVERSE_LIMIT);
  reverseLimit = n;
}

/**
 * Test hook: records and entries per core call of a mapping walk (small values
 * exercise the walk's resumption). Internal.
 * @example
 * _setMappingChunk(3, 16);
 */
export function _setMappingChunk(records: number = MAP_RECORDS, budget: number = 1 << 16): void {
  aint(records, 'records', 1, MAP_RECORDS);
  aint(budget, 'budget', 16, 1 << 30);
  mapRecords = records;
  mapBudget = budget;
}

/**
 * Records and entries per core call of a mapping walk now.
 * @example
 * const { records, budget } = mappingChunk();
 * @internal
 */
export function mappingChunk(): { records: number; budget: number } {
  return { records: mapRecords, budget: mapBudget };
}

/** One core call's worth of a mapping walk. @internal */
export interface _Chunk {
  readonly list: Mapping[];
  readonly done: boolean;
  readonly next: bigint;
  readonly needs: number;
}

/**
 * A lazy mapping walk: one core call per chunk of mappings, as the consumer
 * asks (a plain iterator: cheaper per item than a generator).
 * @example
 * new _MappingIterator(0n, 1n << 64n, (cursor, last, needs) => chunk(cursor, last, needs));
 * @internal
 */
export class _MappingIterator implements IterableIterator<Mapping> {
  #list: Mapping[] = [];
  #i = 0;
  #done: boolean;
  #cursor: bigint;
  #needs = 0;
  readonly #last: bigint;
  readonly #fetch: (cursor: bigint, last: bigint, needs: number) => _Chunk;

  constructor(from: bigint, to: bigint, fetch: (cursor: bigint, last: bigint, needs: number) => _Chunk) {
    this.#cursor = from;
    this.#last = to - 1n;
    this.#done = to <= from;
    this.#fetch = fetch;
  }

  next(): IteratorResult<Mapping> {
    while (this.#i >= this.#list.length) {
      if (this.#done) return { done: true, value: undefined };
      const ch = this.#fetch(this.#cursor, this.#last, this.#needs);
      this.#list = ch.list;
      this.#i = 0;
      this.#done = ch.done;
      this.#cursor = ch.next;
      this.#needs = ch.needs;
    }
    return { done: false, value: this.#list[this.#i++]! };
  }

  return(): IteratorResult<Mapping> {
    this.#done = true;
    this.#list = [];
    return { done: true, value: undefined };
  }

  [Symbol.iterator](): IterableIterator<Mapping> {
    return this;
  }
}

/**
 * The `n` records the core wrote at `at` in its memory, as mappings (decode
 * them before anything else runs in the core: the buffer is reused).
 * @example
 * const list = decodeMappings(c, out, n);
 * @internal
 */
export function decodeMappings(c: Core, at: number, n: number): Mapping[] {
  const buf = c.exports.memory.buffer;
  const recs = new BigUint64Array(buf, at, n * 4);
  const words = new Uint32Array(buf, at, n * 8);
  const list: Mapping[] = new Array<Mapping>(n);
  for (let i = 0; i < n; i++) {
    const meta = words[i * 8 + 7]!;
    list[i] = {
      gva: recs[i * 4]! as Gva,
      gpa: recs[i * 4 + 1]! as Gpa,
      pageSize: 2 ** (meta >>> 8),
      flags: words[i * 8 + 6]!,
      level: meta & 0xff,
      leaf: recs[i * 4 + 2]!,
    };
  }
  return list;
}

/** A gpa → gva index of every mapping of a space. @internal */
export interface ReverseMap {
  /** Per page size: sorted gpa page bases (as numbers: < 2^53) and their gvas. */
  readonly bySize: Map<number, { starts: Float64Array; gvas: bigint[] }>;
}

/**
 * Indexes every mapping of a whole-space walk by page size and gpa; LIMIT past
 * the bound (hostile tables with shared subtrees can map billions of pages).
 * @example
 * const rev = buildReverse(space.mappings());
 * @internal
 */
export function buildReverse(all: Iterable<Mapping>): ReverseMap {
  const groups = new Map<number, { starts: number[]; gvas: bigint[] }>();
  let n = 0;
  for (const m of all) {
    if (++n > reverseLimit) {
      throw new VmkitError('LIMIT', `gvasOf: more than ${reverseLimit} mappings; use mappings() and filter instead`);
    }
    let g = groups.get(m.pageSize);
    if (!g) groups.set(m.pageSize, (g = { starts: [], gvas: [] }));
    g.starts.push(Number(m.gpa));
    g.gvas.push(m.gva);
  }
  const bySize = new Map<number, { starts: Float64Array; gvas: bigint[] }>();
  for (const [size, g] of groups) {
    const order = Array.from(g.starts.keys()).sort((a, b) => g.starts[a]! - g.starts[b]! || (g.gvas[a]! < g.gvas[b]! ? -1 : 1));
    bySize.set(size, { starts: Float64Array.from(order, (i) => g.starts[i]!), gvas: order.map((i) => g.gvas[i]!) });
  }
  return { bySize };
}

/**
 * The guest-virtual addresses that map `pa` in `rev`, ascending.
 * @example
 * const aliases = lookupReverse(rev, 0x1234_5000n);
 * @internal
 */
export function lookupReverse(rev: ReverseMap, pa: bigint): Gva[] {
  const out: bigint[] = [];
  for (const [size, idx] of rev.bySize) {
    const base = Number(pa - (pa % BigInt(size)));
    // First index with start >= base.
    let lo = 0;
    let hi = idx.starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (idx.starts[mid]! < base) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < idx.starts.length && idx.starts[i] === base; i++) out.push(idx.gvas[i]! + (pa - BigInt(base)));
  }
  out.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return out as Gva[];
}
