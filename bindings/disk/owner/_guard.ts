/**
 * The handoff's write guards: the device handed to the caller (in-flight
 * accounting, refusal once the holder stops holding) and the storage wrapper
 * that checks the guard before each storage write and flush of the image, so
 * no write reaches the file after its holder was fenced (docs/ownership.md).
 * @module
 * @internal
 */
import type { WriteGuard } from '../_guard.js';
import type { BlockDevice, BlockExtent, ByteLength, ByteOffset } from '../device.js';
import type { Storage, StorageProvider } from '../backends/storage.js';
import type { _Holder } from './_holder.js';

/**
 * The device handed to the caller: the image with in-flight accounting, so a
 * release can drain writes before it flushes, and refuses writes once the
 * holder is releasing, released or fenced.
 * @internal
 */
export class _OwnedDevice implements BlockDevice {
  private readonly h: Pick<_Holder, 'mutate' | 'release'>;
  private readonly d: BlockDevice;
  constructor(h: Pick<_Holder, 'mutate' | 'release'>, d: BlockDevice) {
    this.h = h;
    this.d = d;
  }
  get size(): number {
    return this.d.size;
  }
  get alignment(): number {
    return this.d.alignment;
  }
  get readOnly(): boolean {
    return this.d.readOnly;
  }
  get format(): string {
    return this.d.format;
  }
  get backing(): BlockDevice | undefined {
    return this.d.backing;
  }
  read(offset: ByteOffset, length: ByteLength): Promise<Uint8Array> {
    return this.d.read(offset, length);
  }
  readInto(offset: ByteOffset, dst: Uint8Array): Promise<void> {
    return this.d.readInto(offset, dst);
  }
  write(offset: ByteOffset, data: Uint8Array): Promise<void> {
    return this.h.mutate('write', () => this.d.write(offset, data));
  }
  writeZeroes(offset: ByteOffset, length: ByteLength): Promise<void> {
    return this.h.mutate('write', () => this.d.writeZeroes(offset, length));
  }
  discard(offset: ByteOffset, length: ByteLength): Promise<void> {
    return this.h.mutate('discard', () => this.d.discard(offset, length));
  }
  flush(): Promise<void> {
    return this.h.mutate('flush', () => this.d.flush());
  }
  blockStatus(offset: ByteOffset, length: ByteLength): Promise<BlockExtent> {
    return this.d.blockStatus(offset, length);
  }
  close(): Promise<void> {
    return this.h.release();
  }
}

/**
 * The image's own writes go through the guard too, one by one: a qcow2 or VMDK
 * write is several storage writes (data, L2 table, refcounts) across awaits,
 * and a holder stalled between them must not finish the rest after it was
 * fenced. Checking before each storage write and flush keeps every write to
 * the file within one event-loop turn of a passed check (docs/ownership.md).
 * @internal
 */
function _guardedStorage(s: Storage, guard: WriteGuard): Storage {
  return {
    get name() {
      return s.name;
    },
    get readOnly() {
      return s.readOnly;
    },
    size: () => s.size(),
    readInto: (offset, dst) => s.readInto(offset, dst),
    write: async (offset, data) => {
      await guard.check('write');
      return s.write(offset, data);
    },
    truncate: async (size) => {
      await guard.check('write');
      return s.truncate(size);
    },
    flush: async () => {
      // The device checked 'flush' against the store just before; the lease check suffices here.
      await guard.check('write');
      return s.flush();
    },
    close: () => s.close(),
  };
}

/**
 * A provider whose writable storages go through {@link _guardedStorage}.
 * @internal
 */
export function _guardedProvider(base: StorageProvider, guard: WriteGuard): StorageProvider {
  return {
    open: async (name, o) => {
      const st = await base.open(name, o);
      return o.readOnly ? st : _guardedStorage(st, guard);
    },
    // Images a live disk's jobs create (overlays, targets) are written under the guard too.
    create: async (name) => {
      await guard.check('write');
      return _guardedStorage(await base.create(name), guard);
    },
    resolve: (from, rel) => base.resolve(from, rel),
    relative: (from, target) => base.relative(from, target),
  };
}
