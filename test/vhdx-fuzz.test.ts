// VHDX parsers and device under corrupted input (Node and Chromium): every
// failure is a VmkitError with a stable code, never a RangeError, a hang or
// unbounded work. Header and region-table CRC-32Cs are re-sealed after
// mutating so the fuzzing reaches the metadata and the BAT.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MemoryProvider, MemoryStorage } from '../bindings/disk/backends/memory.js';
import { createImage, openImage, checkImage } from '../bindings/disk/image.js';
import { crc32c, parseHeader, parseMetadata, parseRegionTable, VHDX_HEADER1, VHDX_HEADER2, VHDX_REGION1, VHDX_REGION2 } from '../bindings/disk/formats/vhdx/header.js';
import { VmkitError } from '../bindings/errors.js';
import { damagedImageRound } from './_damaged-image.js';


function reseal(b: Uint8Array): void {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  for (const [at, n] of [[VHDX_HEADER1, 4096], [VHDX_HEADER2, 4096], [VHDX_REGION1, 65536], [VHDX_REGION2, 65536]] as const) {
    dv.setUint32(at + 4, crc32c(b.subarray(at, at + n), 4), true);
  }
}

async function sample(): Promise<{ provider: MemoryProvider; bytes: Uint8Array }> {
  const provider = new MemoryProvider();
  await createImage('d.vhdx', { provider, format: 'vhdx', size: 5 << 20, clusterSize: 1 << 20 });
  const d = await openImage('d.vhdx', { provider });
  await d.write(4096, new Uint8Array(4096).fill(1));
  await d.write(3 << 20, new Uint8Array(40960).fill(3));
  await d.close();
  return { provider, bytes: provider.stores.get('d.vhdx')!.bytes().slice() };
}

describe('vhdx under corrupted input', () => {
  it('the header, region table and metadata parsers accept or refuse with a VmkitError', async () => {
    const { bytes } = await sample();
    expect(parseHeader(bytes.subarray(VHDX_HEADER1, VHDX_HEADER1 + 4096))?.version).toBe(1);
    const regions = parseRegionTable(bytes.subarray(VHDX_REGION1, VHDX_REGION1 + 65536), VHDX_REGION1, 't')!;
    const md = regions[1]!;
    expect(parseMetadata(bytes.subarray(md.offset, md.offset + md.length), md.offset, 't').virtualSize).toBe(5 << 20);
    const mdBytes = bytes.slice(md.offset, md.offset + 128 * 1024);
    fc.assert(
      fc.property(fc.array(fc.record({ at: fc.nat(65536 + 1023), v: fc.nat(255) }), { minLength: 1, maxLength: 8 }), (muts) => {
        const m = mdBytes.slice();
        // The table (first KiB) and the items (from 64 KiB).
        for (const x of muts) m[x.at < 65536 ? x.at % 1024 : x.at] = x.v;
        try {
          parseMetadata(m, md.offset, 't');
        } catch (e) {
          expect(e).toBeInstanceOf(VmkitError);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('opening, reading, mapping, writing and checking corrupted images fail only with VmkitError', async () => {
    const { provider, bytes } = await sample();
    // Where the structures are: headers, region tables, BAT (2 MiB), metadata (3 MiB).
    const hot = [[VHDX_HEADER1, 128], [VHDX_HEADER2, 128], [VHDX_REGION1, 96], [VHDX_REGION2, 96], [2 << 20, 64], [3 << 20, 256], [(3 << 20) + 65536, 64]] as const;
    await fc.assert(
      fc.asyncProperty(fc.array(fc.record({ zone: fc.nat(hot.length - 1), at: fc.nat(255), v: fc.nat(255) }), { minLength: 1, maxLength: 6 }), async (muts) => {
        const b = bytes.slice();
        for (const m of muts) b[hot[m.zone]![0] + (m.at % hot[m.zone]![1])] = m.v;
        reseal(b);
        provider.stores.set('bad.vhdx', new MemoryStorage('bad.vhdx', b));
        await damagedImageRound(provider, 'bad.vhdx', {
          read: 1 << 20,
          map: 8 << 20,
          write: async (dev) => {
            if (dev.size >= (2 << 20) + 512) await dev.write(2 << 20, new Uint8Array(512).fill(6));
          },
        });
      }),
      { numRuns: 200 },
    );
    provider.stores.set('ok.vhdx', new MemoryStorage('ok.vhdx', bytes.slice()));
    expect(await checkImage('ok.vhdx', { provider })).toMatchObject({ corruptions: 0 });
  });
});
