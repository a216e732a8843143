// A synthetic guest memory image for the checkpoint specs, the same bytes for a seed in Node
// and in Chromium: runs of zero pages, text-like pages (small counters, compressible), random
// pages (incompressible) and sparse pages (one byte set).

const PS = 4096;

/** `pages` pages of guest memory made from `seed`. */
export function guestImage(pages: number, seed: number): Uint8Array {
  const b = new Uint8Array(pages * PS);
  const dv = new DataView(b.buffer);
  let x = seed;
  for (let p = 0; p < pages; p++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    const kind = x >>> 30;
    if (kind === 1) for (let i = 0; i < PS; i += 4) dv.setUint32(p * PS + i, (x = (Math.imul(x, 1664525) + 1013904223) >>> 0), true);
    else if (kind === 2) for (let i = 0; i < PS; i += 8) dv.setUint32(p * PS + i, (p * 31 + (i >> 6)) >>> 0, true);
    else if (kind === 3) b[p * PS + (x % PS)] = 7;
  }
  return b;
}
