// The qcow2 L2 entry is decoded on both sides of the wasm boundary: per entry
// in TypeScript (formats/qcow2/metadata.ts decodeL2, on every device lookup)
// and per table in the core (assembly/backup_plan.ts backupPlanL2, a whole
// table into copy ops for a consolidation). Both are kept on purpose (see the
// comments at both), so this spec holds them to one meaning: random tables,
// standard and extended, decoded both ways, must classify every guest cluster
// alike (host offset, zero, read through the chain, or left to the backing).
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { planFromL2, type L2Layer } from '../bindings/disk/backup/_plan.js';
import { decodeL2, encodeCompressedL2, encodeL2 } from '../bindings/disk/formats/qcow2/metadata.js';

type Entry =
  | { t: 'none' }
  | { t: 'data'; cluster: number; copied: boolean }
  | { t: 'zero'; cluster: number }
  | { t: 'compressed'; at: number; len: number }
  | { t: 'ext'; cluster: number; alloc: number; zeroes: number };

const bitmap = fc.oneof(fc.constant(0), fc.constant(0xffff_ffff), fc.nat(0xffff_ffff));
const entryArb = (ext: boolean): fc.Arbitrary<Entry> =>
  ext
    ? fc.oneof(
        fc.constant<Entry>({ t: 'none' }),
        fc.record({ t: fc.constant('ext' as const), cluster: fc.nat(4096), alloc: bitmap, zeroes: bitmap }).map((e): Entry => {
          // A valid entry: no subcluster both allocated and zero; allocated ones need a host cluster.
          const zeroes = (e.zeroes & ~e.alloc) >>> 0;
          return { ...e, zeroes, cluster: e.alloc !== 0 && e.cluster === 0 ? 1 : e.cluster };
        }),
        fc.record({ t: fc.constant('compressed' as const), at: fc.nat(2 ** 30), len: fc.integer({ min: 1, max: 65536 }) }),
      )
    : fc.oneof(
        fc.constant<Entry>({ t: 'none' }),
        fc.record({ t: fc.constant('data' as const), cluster: fc.integer({ min: 1, max: 4096 }), copied: fc.boolean() }),
        fc.record({ t: fc.constant('zero' as const), cluster: fc.oneof(fc.constant(0), fc.nat(4096)) }),
        fc.record({ t: fc.constant('compressed' as const), at: fc.nat(2 ** 30), len: fc.integer({ min: 1, max: 65536 }) }),
      );

function table(entries: Entry[], ext: boolean, clusterBits: number): Uint8Array {
  const es = ext ? 16 : 8;
  const b = new Uint8Array(entries.length * es);
  const dv = new DataView(b.buffer);
  const cs = 2 ** clusterBits;
  entries.forEach((e, i) => {
    if (e.t === 'data') encodeL2(dv, i, ext, e.cluster * cs, e.copied, false);
    else if (e.t === 'zero') encodeL2(dv, i, ext, e.cluster * cs, false, true);
    else if (e.t === 'ext') encodeL2(dv, i, true, e.cluster * cs, true, false, e.alloc, e.zeroes);
    else if (e.t === 'compressed') {
      // At most a cluster of compressed data (the sector count field is clusterBits - 8 bits wide).
      const len = 1 + (e.len % cs);
      if (ext) {
        const t = new DataView(new ArrayBuffer(8));
        encodeCompressedL2(t, 0, clusterBits, e.at, len);
        dv.setBigUint64(i * es, t.getBigUint64(0));
      } else encodeCompressedL2(dv, i, clusterBits, e.at, len);
    }
  });
  return b;
}

/** Per guest cluster, what the TypeScript decoder says a copy must do: host offset, 'z'ero, 'c'hain, or nothing. */
function fromTs(t: Uint8Array, n: number, ext: boolean, clusterBits: number): Map<number, string> {
  const cs = 2 ** clusterBits;
  const dv = new DataView(t.buffer, t.byteOffset, t.byteLength);
  const m = new Map<number, string>();
  for (let i = 0; i < n; i++) {
    const e = decodeL2(dv, i, ext, clusterBits);
    const g = i * cs;
    if (e.kind === 'compressed') m.set(g, 'c');
    else if (ext) {
      if (e.alloc === 0 && e.zeroes === 0) continue;
      m.set(g, e.alloc === 0xffff_ffff && e.host !== 0 ? String(e.host) : e.zeroes === 0xffff_ffff ? 'z' : 'c');
    } else if (e.kind === 'zero') m.set(g, 'z');
    else if (e.kind === 'normal') m.set(g, String(e.host));
  }
  return m;
}

async function fromCore(t: Uint8Array, n: number, ext: boolean, clusterBits: number, chunk: number): Promise<Map<number, string>> {
  const cs = 2 ** clusterBits;
  const layer: L2Layer = {
    format: 'qcow2',
    size: n * cs,
    header: { clusterBits, extendedL2: ext },
    storage: { size: async () => 2 ** 50, readInto: async () => {} },
    forEachL2Table: async (fn) => fn(0, t),
  };
  const m = new Map<number, string>();
  for (const op of await planFromL2(layer, chunk)) {
    expect(Math.floor(op.offset / chunk)).toBe(Math.floor((op.offset + op.length - 1) / chunk));
    for (let o = op.offset; o < op.offset + op.length; o += cs) m.set(o, op.zero ? 'z' : op.host === undefined ? 'c' : String(op.host + (o - op.offset)));
  }
  return m;
}

describe('qcow2 L2 entries: the TypeScript and core decoders agree', () => {
  for (const ext of [false, true]) {
    it(`${ext ? 'extended' : 'standard'} L2 tables classify every cluster alike`, async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.constantFrom(...(ext ? [14, 16, 21] : [9, 12, 16, 21])),
          fc.array(entryArb(ext), { minLength: 1, maxLength: 64 }),
          fc.constantFrom(1, 4, 64),
          async (clusterBits, entries, chunkClusters) => {
            // The table holds every entry of a real one (cs / es), the random ones first.
            const n = 2 ** clusterBits / (ext ? 16 : 8);
            const t = new Uint8Array(n * (ext ? 16 : 8));
            t.set(table(entries, ext, clusterBits));
            const want = fromTs(t, n, ext, clusterBits);
            const got = await fromCore(t, n, ext, clusterBits, Math.max(512, chunkClusters * 2 ** clusterBits));
            expect([...got].sort((a, b) => a[0] - b[0])).toEqual([...want].sort((a, b) => a[0] - b[0]));
          },
        ),
        { numRuns: 60 },
      );
    });
  }

  it('a compressed entry round-trips: offset kept, length covers the data', () => {
    fc.assert(
      fc.property(fc.constantFrom(9, 12, 16, 21), fc.nat(2 ** 40), fc.integer({ min: 1, max: 2 ** 21 }), (clusterBits, at, l) => {
        const host = at % 2 ** Math.min(40, 70 - clusterBits); // the offset field is 70 - clusterBits bits wide
        const len = 1 + (l % 2 ** clusterBits);
        const dv = new DataView(new ArrayBuffer(8));
        encodeCompressedL2(dv, 0, clusterBits, host, len);
        const e = decodeL2(dv, 0, false, clusterBits);
        expect(e.kind).toBe('compressed');
        expect(e.host).toBe(host);
        expect(e.csize).toBeGreaterThanOrEqual(len);
        expect(e.csize - len).toBeLessThan(512);
      }),
    );
  });
});
