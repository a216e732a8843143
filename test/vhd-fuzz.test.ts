// VHD parsers and device under corrupted input (Node and Chromium): every
// failure is a VmkitError with a stable code, never a RangeError, a hang or
// unbounded work; checksums are re-sealed after mutating so the fuzzing
// reaches past them into the BAT, the bitmaps and the parent locators.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MemoryProvider, MemoryStorage } from '../bindings/disk/backends/memory.js';
import { createImage, openImage, checkImage } from '../bindings/disk/image.js';
import { parseDynHeader, parseFooter, vhdChecksum } from '../bindings/disk/formats/vhd/header.js';
import { VmkitError } from '../bindings/errors.js';
import { damagedImageRound, sampleChain } from './_damaged-image.js';


/** Re-seals the footer at 0 and the end and the dynamic header at 512 (when they still have their cookies). */
function reseal(b: Uint8Array): void {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  for (const at of [0, b.length - 512]) if (at >= 0) dv.setUint32(at + 64, vhdChecksum(b.subarray(at, at + 512), 64));
  if (b.length >= 1536) dv.setUint32(512 + 36, vhdChecksum(b.subarray(512, 1536), 36));
}

/** A parent, and a differencing child over it with data in a few sectors and a zeroed range. */
function sample(): Promise<{ provider: MemoryProvider; bytes: Uint8Array }> {
  return sampleChain('vhd', { format: 'vhd', size: 6 << 20 }, { format: 'vhd', clusterSize: 65536 });
}

describe('vhd under corrupted input', () => {
  it('the footer and dynamic header parsers accept or refuse with a VmkitError', async () => {
    const { bytes } = await sample();
    const f = parseFooter(bytes.subarray(0, 512), 0, 't');
    const d = parseDynHeader(bytes.subarray(512, 1536), 512, 't');
    expect([f.type, d.blockSize, d.parentName, d.locators[0]?.platform]).toEqual([4, 65536, 'base.vhd', 'W2ru']);
    fc.assert(
      fc.property(fc.array(fc.record({ at: fc.nat(1535), v: fc.nat(255) }), { minLength: 1, maxLength: 8 }), fc.boolean(), (muts, seal) => {
        const b = bytes.slice(0, 1536);
        for (const m of muts) b[m.at] = m.v;
        if (seal) reseal(b);
        for (const fn of [() => parseFooter(b, 0, 't'), () => parseDynHeader(b.subarray(512), 512, 't')]) {
          try {
            fn();
          } catch (e) {
            expect(e).toBeInstanceOf(VmkitError);
          }
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('opening, reading, mapping, writing and checking corrupted images fail only with VmkitError', async () => {
    const { provider, bytes } = await sample();
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ at: fc.nat(bytes.length - 1), v: fc.nat(255) }), { minLength: 1, maxLength: 6 }),
        fc.boolean(),
        async (muts, metadataOnly) => {
          const b = bytes.slice();
          // Bias towards metadata: footer, header, BAT, locator and the first bitmaps are in the first 8 KiB.
          for (const m of muts) b[metadataOnly ? m.at % 8192 : m.at] = m.v;
          reseal(b);
          provider.stores.set('bad.vhd', new MemoryStorage('bad.vhd', b));
          await damagedImageRound(provider, 'bad.vhd', {
            read: 1 << 20,
            map: 1 << 20,
            noBacking: true,
            write: async (dev) => {
              if (dev.size >= 16384) await dev.write(0, new Uint8Array(16384).fill(5));
              if (dev.size >= (600 << 10) + 512) await dev.write(600 << 10, new Uint8Array(512).fill(6));
            },
          });
        },
      ),
      { numRuns: 200 },
    );
    provider.stores.set('top2.vhd', new MemoryStorage('top2.vhd', bytes.slice()));
    expect(await checkImage('top2.vhd', { provider })).toMatchObject({ corruptions: 0 });
  });

  it('names the offending offset: a BAT entry past the end of the file', async () => {
    const { provider, bytes } = await sample();
    const dv = new DataView(bytes.buffer);
    const bat = 1536 + 3 * 4; // the fourth entry
    dv.setUint32(bat, bytes.length / 512 + 100);
    provider.stores.set('eof.vhd', new MemoryStorage('eof.vhd', bytes));
    const err = await openImage('eof.vhd', { provider, readOnly: true }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'CORRUPT', offset: bat });
  });
});
