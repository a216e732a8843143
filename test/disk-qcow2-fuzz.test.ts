// qcow2 parsers and device under corrupted input (Node and Chromium): every
// failure is a VmkitError with a stable code, never a RangeError, a trap or a hang.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MemoryProvider, MemoryStorage } from '../bindings/disk/backends/memory.js';
import { createImage, openImage, checkImage } from '../bindings/disk/image.js';
import { parseQcow2Header, encodeQcow2Header } from '../bindings/disk/formats/qcow2/header.js';
import { decodeL2, encodeL2, readEntry, writeEntry, Refcounts } from '../bindings/disk/formats/qcow2/metadata.js';
import { VmkitError } from '../bindings/errors.js';
import { damagedImageRound, sampleChain } from './_damaged-image.js';

/** The codes a damaged qcow2 answers with (no INTEGRITY: qcow2 has no checksums). */
const CODES = new Set(['CORRUPT', 'LIMIT', 'UNSUPPORTED', 'NOT_FOUND', 'INVALID_STATE']);

/** A small image with every kind of entry: data, zero, a backing file, extended L2 optional. */
function sample(ext: boolean): Promise<{ provider: MemoryProvider; bytes: Uint8Array }> {
  return sampleChain('qcow2', { size: 1 << 20, clusterSize: 16384 }, { clusterSize: 16384, extendedL2: ext });
}

describe('qcow2 under corrupted input', () => {
  it('the header parser accepts or refuses with a VmkitError', () => {
    const good = encodeQcow2Header({
      version: 3, backingFileOffset: 0, backingFileSize: 0, clusterBits: 16, size: 1 << 30, cryptMethod: 0, l1Size: 2,
      l1TableOffset: 196608, refcountTableOffset: 65536, refcountTableClusters: 1, nbSnapshots: 0, snapshotsOffset: 0,
      incompatible: 0n, compatible: 0n, autoclear: 0n, refcountOrder: 4, headerLength: 112, compressionType: 0,
      backingFile: 'b.qcow2', backingFormat: 'qcow2', otherExtensions: [], extendedL2: false,
    });
    const h = parseQcow2Header(good, 1 << 20);
    expect([h.size, h.backingFile, h.backingFormat, h.l1Size]).toEqual([1 << 30, 'b.qcow2', 'qcow2', 2]);
    fc.assert(
      fc.property(fc.array(fc.record({ at: fc.nat(good.length - 1), v: fc.nat(255) }), { minLength: 1, maxLength: 8 }), fc.nat(1 << 21), (muts, fileSize) => {
        const b = good.slice();
        for (const m of muts) b[m.at] = m.v;
        try {
          parseQcow2Header(b, fileSize);
        } catch (e) {
          expect(e).toBeInstanceOf(VmkitError);
        }
      }),
      { numRuns: 2000 },
    );
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), fc.nat(1 << 30), (b, fileSize) => {
        try {
          parseQcow2Header(b, fileSize);
        } catch (e) {
          expect(e).toBeInstanceOf(VmkitError);
        }
      }),
      { numRuns: 1000 },
    );
  });

  it('opening, reading, mapping, writing and checking corrupted images fail only with VmkitError', async () => {
    for (const ext of [false, true]) {
      const { provider, bytes } = await sample(ext);
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.record({ at: fc.nat(bytes.length - 1), v: fc.nat(255) }), { minLength: 1, maxLength: 6 }),
          fc.boolean(),
          async (muts, metadataOnly) => {
            const b = bytes.slice();
            // Bias towards metadata: header, refcount table/block, L1 and L2 tables live in the first clusters.
            for (const m of muts) b[metadataOnly ? m.at % Math.min(b.length, 7 * 16384) : m.at] = m.v;
            provider.stores.set('bad.qcow2', new MemoryStorage('bad.qcow2', b));
            await damagedImageRound(provider, 'bad.qcow2', {
              read: 1 << 20,
              map: 1 << 20,
              noBacking: true,
              codes: CODES,
              write: async (dev) => {
                // A mutated magic makes it a raw file of another size: stay inside whatever opened.
                if (dev.size >= 16384) await dev.write(0, new Uint8Array(16384).fill(5));
                if (dev.size >= (600 << 10) + 512) await dev.write(600 << 10, new Uint8Array(512).fill(6));
                if (dev.size >= 49152) await dev.discard(32768, 16384);
              },
            });
          },
        ),
        { numRuns: 150 },
      );
      // The pristine image is untouched by the mutations and still checks clean.
      provider.stores.set('top2.qcow2', new MemoryStorage('top2.qcow2', bytes.slice()));
      expect(await checkImage('top2.qcow2', { provider })).toMatchObject({ corruptions: 0, leaks: 0 });
    }
  });

  it('names the offending offset: an L1 entry past the end of the file', async () => {
    const { provider, bytes } = await sample(false);
    const dv = new DataView(bytes.buffer);
    const l1 = Number(dv.getBigUint64(40));
    dv.setBigUint64(l1, (1n << 63n) | BigInt(bytes.length + (1 << 20)));
    provider.stores.set('eof.qcow2', new MemoryStorage('eof.qcow2', bytes));
    const dev = await openImage('eof.qcow2', { provider, readOnly: true });
    const err = await dev.read(0, 512).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VmkitError);
    expect(err).toMatchObject({ code: 'CORRUPT', offset: l1 });
    await dev.close();
    expect((await checkImage('eof.qcow2', { provider })).corruptions).toBeGreaterThan(0);
  });

  it('refuses absurd sizes and refcount overflow', async () => {
    const { bytes } = await sample(false);
    const b = bytes.slice();
    new DataView(b.buffer).setBigUint64(24, 1n << 60n);
    expect(() => parseQcow2Header(b, b.length)).toThrow(expect.objectContaining({ code: 'LIMIT', offset: 24 }));
    const s = new MemoryStorage('r', bytes.slice());
    const r = await Refcounts.load(s, 16384, 4, 16384, 1, bytes.length, bytes.length);
    await expect(r.set(0, 65536)).rejects.toMatchObject({ code: 'LIMIT' });
    await expect(r.add(0, -5)).rejects.toMatchObject({ code: 'CORRUPT' });
  });

  it('L2 entries and refcount entries round-trip', () => {
    fc.assert(
      fc.property(fc.nat(2 ** 40 - 1), fc.boolean(), fc.boolean(), fc.nat(0xffffffff), fc.nat(0xffffffff), (c, copied, ext, alloc, zeroes) => {
        const host = c * 65536;
        const t = new DataView(new ArrayBuffer(32));
        encodeL2(t, 1, ext, host, copied, false, alloc, zeroes);
        const e = decodeL2(t, 1, ext, 16);
        expect([e.host, e.copied]).toEqual([host, copied]);
        if (ext) expect([e.alloc, e.zeroes]).toEqual([alloc, zeroes]);
      }),
    );
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 6 }), fc.nat(63), fc.double({ min: 0, max: 1, noNaN: true }), (order, e, f) => {
        const bits = 2 ** order;
        const max = bits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** bits - 1;
        const v = Math.floor(f * max);
        const b = new Uint8Array(512).fill(0xa5);
        const before = readEntry(b, e + 1, bits);
        writeEntry(b, e, bits, v);
        expect(readEntry(b, e, bits)).toBe(v);
        expect(readEntry(b, e + 1, bits)).toBe(before);
      }),
    );
  });
  it('a dirty image (lazy refcounts) opens read-only only', async () => {
    const { provider, bytes } = await sample(false);
    const b = bytes.slice();
    b[79]! |= 1; // incompatible bit 0
    provider.stores.set('dirty.qcow2', new MemoryStorage('dirty.qcow2', b));
    await expect(openImage('dirty.qcow2', { provider })).rejects.toMatchObject({ code: 'INVALID_STATE', offset: 72 });
    const ro = await openImage('dirty.qcow2', { provider, readOnly: true });
    expect((await ro.read(4096, 512))[0]).toBe(1);
    await ro.close();
  });
});
