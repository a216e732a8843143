// What the format fuzz specs do with a damaged image: every step (open, read,
// map, check, write) may fail only with a VmkitError of an expected code,
// never with a TypeError, a RangeError, a wasm trap or a hang.
import { mapExtents } from '../bindings/disk/device.js';
import { checkImage, openImage } from '../bindings/disk/image.js';
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
