// The CLI's raw memory images (bindings/cli/commands/_raw_image.ts): the
// windowed GuestMemorySource the page-table commands walk, and the page
// source `checkpoint save` reads. Images are generated here, with bytes that
// differ at every offset so a read from the wrong place shows.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { _imageMemory, _imagePages } from '../bindings/cli/commands/_raw_image.js';
import { gpa } from '../bindings/memory/index.js';

const dir = mkdtempSync(join(tmpdir(), 'vmkit-raw-image-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The reader's window (256 KiB); the specs straddle its boundaries. */
const WINDOW = 256 << 10;

function image(name: string, size: number): { path: string; bytes: Uint8Array } {
  const bytes = new Uint8Array(size);
  // Not periodic in any power of two: a byte read from another window or page differs.
  for (let i = 0; i < size; i++) bytes[i] = (i * 131 + (i >>> 9) * 7 + (i >>> 17)) & 0xff;
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return { path, bytes };
}

describe('_imageMemory (windowed reads for page-table walks)', () => {
  it('a read crossing the end of the image throws ARG_RANGE instead of leaving stale bytes', () => {
    // Ends 100 bytes into a page, inside the second window.
    const { path, bytes } = image('tail.raw', WINDOW + 2 * 4096 + 100);
    const mem = _imageMemory(path);
    try {
      expect(mem.size).toBe(BigInt(bytes.length));
      const end = bytes.length;
      const dst = new Uint8Array(16).fill(0xee);
      // Prime the last window so the read is served from the cache (where the tail went unfilled).
      mem.readSync(gpa(end - 8), dst.subarray(0, 8));
      expect(Array.from(dst.subarray(0, 8))).toEqual(Array.from(bytes.subarray(end - 8)));
      dst.fill(0xee);
      expect(() => mem.readSync(gpa(end - 8), dst)).toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
      expect(() => mem.readSync(gpa(end), new Uint8Array(1))).toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
      expect(() => mem.readSync(gpa(end + 4096), new Uint8Array(8))).toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
      // A whole page where only 100 bytes remain: the case a walker must never send.
      expect(() => mem.readSync(gpa(end - 100), new Uint8Array(4096))).toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
      // Up to the last byte exactly is fine, and an empty read at the end too.
      const last = new Uint8Array(100);
      mem.readSync(gpa(end - 100), last);
      expect(Array.from(last)).toEqual(Array.from(bytes.subarray(end - 100)));
      mem.readSync(gpa(end), new Uint8Array(0));
    } finally {
      mem.close();
    }
  });

  it('a read crossing a window boundary and the end of the image throws ARG_RANGE', () => {
    const { path } = image('edge.raw', WINDOW + 4);
    const mem = _imageMemory(path);
    try {
      expect(() => mem.readSync(gpa(WINDOW - 4), new Uint8Array(16))).toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
    } finally {
      mem.close();
    }
  });

  it('reads across window boundaries, cached or not, return the image bytes', () => {
    const { path, bytes } = image('cross.raw', 3 * WINDOW + 4096);
    const mem = _imageMemory(path);
    try {
      const check = (at: number, len: number): void => {
        const dst = new Uint8Array(len).fill(0xee);
        mem.readSync(gpa(at), dst);
        expect(Array.from(dst), `${len} bytes at ${at}`).toEqual(Array.from(bytes.subarray(at, at + len)));
      };
      check(WINDOW - 3, 8); // neither window cached
      check(0, 8);
      check(WINDOW, 8);
      check(WINDOW - 3, 8); // both cached
      check(2 * WINDOW - 4096, 2 * 4096); // a page on each side
      check(WINDOW - 1, WINDOW + 2); // spans a whole window
      check(3 * WINDOW - 8, 4096 + 8); // into the short last window, up to the end
    } finally {
      mem.close();
    }
  });

  it('random reads, with windows evicted and reused, match the image', () => {
    const { path, bytes } = image('random.raw', 11 * WINDOW + 300);
    const mem = _imageMemory(path);
    let seed = 0x2545f491;
    const rnd = (n: number): number => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return (seed >>> 0) % n;
    };
    try {
      for (let k = 0; k < 2000; k++) {
        const len = [1, 8, 4096, 12000][rnd(4)]!;
        const at = rnd(bytes.length - len + 1);
        const dst = new Uint8Array(len).fill(0xee);
        mem.readSync(gpa(at), dst);
        if (!dst.every((b, i) => b === bytes[at + i])) expect.fail(`${len} bytes at ${at} differ from the image`);
      }
    } finally {
      mem.close();
    }
  });
});

describe('_imagePages (the page source of checkpoint save)', () => {
  it('rejects a partial last page with ARG_RANGE naming the size, reads whole pages', () => {
    const bad = image('partial.raw', 3 * 4096 + 1);
    expect(() => _imagePages(bad.path, 4096)).toThrow(expect.objectContaining({ code: 'ARG_RANGE', message: expect.stringMatching(/positive whole number of 4096-byte pages \(it has 12289 bytes\)/) }));
    expect(() => _imagePages(image('empty.raw', 0).path, 4096)).toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
    expect(() => _imagePages(join(dir, 'missing.raw'), 4096)).toThrow(expect.objectContaining({ code: 'NOT_FOUND' }));
    const good = image('whole.raw', 3 * 4096);
    const src = _imagePages(good.path, 4096);
    try {
      expect([src.size, src.pageSize, src.pageCount]).toEqual([3 * 4096, 4096, 3]);
      const dst = new Uint8Array(2 * 4096);
      src.readPagesIntoSync(1, 2, dst);
      expect(dst).toEqual(good.bytes.subarray(4096));
      expect(() => src.readPagesIntoSync(2, 2, dst)).toThrow(expect.objectContaining({ code: 'ARG_RANGE' }));
    } finally {
      src.close();
    }
  });
});
