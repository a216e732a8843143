// What the format fuzz specs do with a damaged image: every step (open, read,
// map, check, write) may fail only with a VmkitError of an expected code,
// never with a TypeError, a RangeError, a wasm trap or a hang.
import { mapExtents } from '../bindings/disk/device.js';
import { checkImage, createImage, openImage, type CreateImageOptions } from '../bindings/disk/image.js';
import { MemoryProvider } from '../bindings/disk/backends/memory.js';
import type { ImageDevice } from '../bindings/disk/formats/types.js';
import type { StorageProvider } from '../bindings/disk/backends/storage.js';
import { VmkitError } from '../bindings/errors.js';

/** The codes a damaged image may answer with. */
export const DAMAGE_CODES: ReadonlySet<string> = new Set(['CORRUPT', 'LIMIT', 'UNSUPPORTED', 'NOT_FOUND', 'INVALID_STATE', 'INTEGRITY']);

/** Runs `fn`; a VmkitError with one of `codes` is an answer, anything else is rethrown. */
export async function vmkitOnly(fn: () => Promise<unknown>, codes: ReadonlySet<string> = DAMAGE_CODES): Promise<void> {
  try {
    await fn();
  } catch (e) {
    if (!(e instanceof VmkitError) || !codes.has(e.code)) throw e;
  }
}

/** What a round does with the damaged image. */
export interface DamagedRound {
  /** Bytes read from offset 0 (at most the disk's size). */
  read: number;
  /** Bytes mapped from offset 0 (at most the disk's size). */
  map: number;
  /** Opened writable (`noBacking` as given) for these writes; no writable open without it. */
  write?: (dev: ImageDevice) => Promise<void>;
  noBacking?: boolean;
  codes?: ReadonlySet<string>;
}

/**
 * One round over the image `name` of `provider`: open read-only, read and
 * map the start; check; then, with `write`, open writable and write. Each
 * step on its own may fail only with a VmkitError of `codes`.
 */
export async function damagedImageRound(provider: StorageProvider, name: string, o: DamagedRound): Promise<void> {
  const codes = o.codes ?? DAMAGE_CODES;
  await vmkitOnly(async () => {
    const dev = await openImage(name, { provider, readOnly: true });
    try {
      await dev.read(0, Math.min(dev.size, o.read));
      await mapExtents(dev, 0, Math.min(dev.size, o.map));
    } finally {
      await dev.close();
    }
  }, codes);
  await vmkitOnly(() => checkImage(name, { provider }), codes);
  const write = o.write;
  if (write) {
    await vmkitOnly(async () => {
      const dev = await openImage(name, { provider, ...(o.noBacking ? { noBacking: true } : {}) });
      try {
        await write(dev);
      } finally {
        await dev.close();
      }
    }, codes);
  }
}

/**
 * The fuzz specs' sample chain in memory: `base.<ext>` with 20 KiB of data at
 * 0, and `top.<ext>` over it with data in a few places and a zeroed range
 * (every kind of entry). Returns the provider and a copy of the top's bytes.
 */
export async function sampleChain(ext: string, base: CreateImageOptions, top: CreateImageOptions): Promise<{ provider: MemoryProvider; bytes: Uint8Array }> {
  const provider = new MemoryProvider();
  await createImage(`base.${ext}`, { ...base, provider });
  const b = await openImage(`base.${ext}`, { provider });
  await b.write(0, new Uint8Array(20480).fill(7));
  await b.close();
  await createImage(`top.${ext}`, { ...top, provider, backing: `base.${ext}` });
  const t = await openImage(`top.${ext}`, { provider });
  await t.write(4096, new Uint8Array(4096).fill(1));
  await t.writeZeroes(32768, 16384);
  await t.write(500 << 10, new Uint8Array(40960).fill(3));
  await t.close();
  return { provider, bytes: provider.stores.get(`top.${ext}`)!.bytes().slice() };
}
