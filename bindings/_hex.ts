/**
 * Hex of bytes and bytes of hex, shared by every module that prints or parses
 * digests and ids (the digest index, checkpoint build ids, owner-store
 * revision ids). Node's Buffer encoder when present; plain code in browsers.
 * @module
 */

/** Value of an ASCII hex digit by char code (either case), -1 for anything else. */
export const HEX: Int8Array = new Int8Array(128).fill(-1);
for (let i = 0; i < 16; i++) {
  HEX['0123456789abcdef'.charCodeAt(i)] = i;
  HEX['0123456789ABCDEF'.charCodeAt(i)] = i;
}

/**
 * Decodes hex into `dst` at `off` (`hex.length / 2` bytes). Returns false on a
 * non-hex character or an odd length.
 * @example `hexInto('ab01', new Uint8Array(2)) // true`
 */
export function hexInto(hex: string, dst: Uint8Array, off: number = 0): boolean {
  const n = hex.length;
  if (n & 1 || off + (n >> 1) > dst.length) return false;
  for (let i = 0, j = off; i < n; i += 2, j++) {
    const a = hex.charCodeAt(i);
    const b = hex.charCodeAt(i + 1);
    const hi = a < 128 ? HEX[a]! : -1;
    const lo = b < 128 ? HEX[b]! : -1;
    if ((hi | lo) < 0) return false;
    dst[j] = (hi << 4) | lo;
  }
  return true;
}

// Node's Buffer hex encoder when present (one flat string, no per-byte concatenation).
const _NodeBuffer = (globalThis as { Buffer?: { from(b: ArrayBufferLike, off: number, len: number): { toString(enc: 'hex'): string } } }).Buffer;
const _HEXCHARS = new TextEncoder().encode('0123456789abcdef');
const _latin1 = new TextDecoder('latin1');

/** Lowercase hex of bytes. @example `toHex(new Uint8Array([1, 255])) // '01ff'` */
export function toHex(b: Uint8Array): string {
  if (_NodeBuffer) return _NodeBuffer.from(b.buffer, b.byteOffset, b.length).toString('hex');
  // Browsers: the ASCII of the hex, decoded once.
  const chars = new Uint8Array(b.length * 2);
  for (let i = 0; i < b.length; i++) {
    chars[2 * i] = _HEXCHARS[b[i]! >> 4]!;
    chars[2 * i + 1] = _HEXCHARS[b[i]! & 15]!;
  }
  return _latin1.decode(chars);
}
