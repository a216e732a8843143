// A core whose memory is full (Node only: grows the core's memory to its 4 GiB
// maximum, reserved but never touched). The entries that allocate inside the
// core from a caller's size (an engine's bitmaps, a digest table, the paging
// frame cache as it grows, an address space's tables) must answer CORE_NO_MEMORY, or in the frame cache's
// case stop growing and recycle, where the allocator used to trap and reset
// the core under every live handle.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { coreInfo } from '../bindings/index.js';
import { core } from '../bindings/core.js';
import { AddressSpace, LazyGuestMemory, PrefetchEngine, bufferPages } from '../bindings/memory/index.js';
import { DigestIndex } from '../bindings/attest/index-store.js';

const held: number[] = [];
let mem: LazyGuestMemory;
let space: AddressSpace;
let engine: PrefetchEngine;
let resets: number;

beforeAll(() => {
  // 1 MiB of guest memory, all zero: every page-table root in it is a distinct
  // frame whose entries are all not-present.
  mem = LazyGuestMemory.openSync(bufferPages(new Uint8Array(1 << 20)));
  space = AddressSpace.create({ memory: mem, mode: 'x86-64', root: 0n, cacheFrames: 1024 });
  space.translate(0n); // the cache's first 64 frames, allocated while there is room
  engine = new PrefetchEngine(64);
  engine.setResident(9, 1, true);
  resets = coreInfo().resets;
  // Fill the core: big blocks first, then smaller, until even 64 KiB is refused.
  for (let size = 512 << 20; size >= 64 << 10; ) {
    try {
      held.push(core().alloc(size));
    } catch (e) {
      expect(e).toMatchObject({ code: 'CORE_NO_MEMORY' });
      size /= 2;
    }
  }
}, 120_000);

afterAll(() => {
  for (const p of held) core().free(p);
  space.dispose();
  mem.close();
  engine.close();
});

describe('a full core', () => {
  it('is full: near its 4 GiB maximum, and no reset happened filling it', () => {
    expect(coreInfo().memoryBytes).toBeGreaterThan(3.9 * 2 ** 30);
    expect(coreInfo().resets).toBe(resets);
  });

  it('a prefetch engine whose bitmaps do not fit is CORE_NO_MEMORY; the live engine still answers', () => {
    expect(() => new PrefetchEngine(0xffff_ffff)).toThrow(expect.objectContaining({ code: 'CORE_NO_MEMORY' }));
    expect(engine.isResident(9)).toBe(true);
    expect(coreInfo().resets).toBe(resets);
  });

  it('a digest index that does not fit is CORE_NO_MEMORY', () => {
    expect(() => new DigestIndex({ expected: 1 << 24 })).toThrow(expect.objectContaining({ code: 'CORE_NO_MEMORY' }));
    expect(coreInfo().resets).toBe(resets);
  });

  it('an address space whose tables do not fit is CORE_NO_MEMORY', () => {
    expect(() => AddressSpace.create({ memory: mem, mode: 'x86-64', root: 0n, cacheFrames: 1 << 20 })).toThrow(expect.objectContaining({ code: 'CORE_NO_MEMORY' }));
    expect(coreInfo().resets).toBe(resets);
    expect(space.translate(0n).ok).toBe(false);
  });

  it('the paging frame cache stops growing and recycles its frames', () => {
    // 200 distinct root frames: past the 64 the cache holds, each new one needs a new chunk
    // (no room) or a recycled slot.
    for (let r = 1; r <= 200; r++) {
      space.setRoot(BigInt(r) << 12n);
      const t = space.translate(0x40_0000n);
      expect(t.ok).toBe(false);
    }
    // And the first root again: it was recycled, so it is read again, with the same answer.
    space.setRoot(0n);
    expect(space.translate(0n)).toMatchObject({ ok: false, reason: 'not-present', level: 4 });
    expect(space.stats().framesRead).toBeGreaterThan(200);
    expect(coreInfo().resets).toBe(resets);
    expect(engine.isResident(9)).toBe(true);
  });
});
