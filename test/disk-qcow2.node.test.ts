// qcow2 against QEMU's own tools: images qemu-img/qemu-io write read back
// identically through vmkit; images vmkit writes pass `qemu-img check` and
// `qemu-img compare`; `map` agrees with `qemu-img map --output=json`.
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { needTool } from './_tools.js';
import { openImage, createImage, checkImage } from '../bindings/disk/image.js';
import { mapExtents, toQemuMap, type QemuMapEntry } from '../bindings/disk/device.js';

const hasQemu = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
let dir = '';
const p = (n: string): string => join(dir, n);
const qimg = (...args: string[]): string => execFileSync('qemu-img', args, { encoding: 'utf8' });
const qio = (file: string, ...cmds: string[]): void => {
  execFileSync('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), file], { encoding: 'utf8' });
};
/** Guest contents as QEMU sees them (through the chain). */
async function qemuRaw(file: string): Promise<Uint8Array> {
  const out = p(`q-${Math.random().toString(36).slice(2)}.raw`);
  qimg('convert', '-O', 'raw', file, out);
  const b = new Uint8Array(await readFile(out));
  await rm(out);
  return b;
}
async function vmkitRaw(file: string): Promise<Uint8Array> {
  const dev = await openImage(file, { readOnly: true });
  try {
    return await dev.read(0, dev.size);
  } finally {
    await dev.close();
  }
}
function qemuCheck(file: string): { corruptions?: number; leaks?: number; 'check-errors'?: number } {
  try {
    return JSON.parse(qimg('check', '--output=json', file)) as { corruptions?: number; leaks?: number };
  } catch (e) {
    const out = (e as { stdout?: string }).stdout;
    if (out) return JSON.parse(out) as { corruptions?: number; leaks?: number };
    throw e;
  }
}
/** First differing byte index, or -1 (toEqual on megabytes is far too slow). */
function diff(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  if (Buffer.compare(a, b) === 0) return -1;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}
/** qemu map with data clusters that are file holes folded into data (vmkit cannot see holes). */
function normalize(m: QemuMapEntry[]): Omit<QemuMapEntry, 'offset'>[] {
  const out: (QemuMapEntry & { offset?: number })[] = [];
  for (const x of m) {
    const e = { ...x, zero: x.data ? false : x.zero };
    const prev = out[out.length - 1];
    if (prev && prev.start + prev.length === e.start && prev.depth === e.depth && prev.present === e.present && prev.zero === e.zero && prev.data === e.data && (prev.offset === undefined ? e.offset === undefined : e.offset === prev.offset + prev.length)) prev.length += e.length;
    else out.push(e);
  }
  return out;
}

describe.skipIf(!hasQemu)('qcow2 against qemu-img / qemu-io', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmkit-qcow2-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads a chain QEMU wrote exactly, and map agrees with qemu-img map', async () => {
    qimg('create', '-q', '-f', 'qcow2', p('base.qcow2'), '4M');
    qio(p('base.qcow2'), 'write -P 0xaa 0 64k', 'write -P 0x55 100k 8k', 'write -z 1M 128k', 'write -P 0x33 2M 1M');
    qimg('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', p('mid.qcow2'));
    qio(p('mid.qcow2'), 'write -P 0x11 32k 64k', 'write -z 2M 64k', 'discard 3M 64k');
    qimg('create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', p('top.qcow2'));
    qio(p('top.qcow2'), 'write -P 0x77 512 1k', 'write -P 0x99 3900k 4k');
    expect(diff(await vmkitRaw(p('top.qcow2')), await qemuRaw(p('top.qcow2')))).toBe(-1);
    const dev = await openImage(p('top.qcow2'), { readOnly: true });
    const ours = toQemuMap(await mapExtents(dev));
    await dev.close();
    const theirs = JSON.parse(qimg('map', '--output=json', p('top.qcow2'))) as QemuMapEntry[];
    expect(normalize(ours)).toEqual(normalize(theirs));
  });

  it('writes images that pass qemu-img check and compare equal to a raw reference (property)', async () => {
    const size = 2 << 20;
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            kind: fc.constantFrom('write', 'write', 'zero', 'discard'),
            sector: fc.integer({ min: 0, max: size / 512 - 1 }),
            sectors: fc.integer({ min: 1, max: 300 }),
            byte: fc.integer({ min: 0, max: 255 }),
          }),
          { minLength: 1, maxLength: 12 },
        ),
        fc.boolean(),
        async (ops, overlay) => {
          const n = run++;
          const img = p(`w${n}.qcow2`);
          const ref = new Uint8Array(size);
          if (overlay) {
            qimg('create', '-q', '-f', 'qcow2', p(`b${n}.qcow2`), String(size));
            qio(p(`b${n}.qcow2`), 'write -P 0x5a 0 1M', 'write -P 0xa5 1536k 256k');
            ref.fill(0x5a, 0, 1 << 20);
            ref.fill(0xa5, 1536 << 10, 1792 << 10);
            await createImage(img, { backing: `b${n}.qcow2` });
          } else await createImage(img, { size });
          const before = overlay ? await readFile(p(`b${n}.qcow2`)) : undefined;
          const dev = await openImage(img);
          for (const o of ops) {
            const off = o.sector * 512;
            const len = Math.min(o.sectors * 512, size - off);
            if (o.kind === 'write') {
              const d = new Uint8Array(len).fill(o.byte);
              await dev.write(off, d);
              ref.set(d, off);
            } else {
              await (o.kind === 'zero' ? dev.writeZeroes(off, len) : dev.discard(off, len));
              ref.fill(0, off, off + len);
            }
          }
          expect(diff(await dev.read(0, size), ref)).toBe(-1);
          await dev.close();
          const c = qemuCheck(img);
          expect(c.corruptions ?? 0).toBe(0);
          expect(c.leaks ?? 0).toBe(0);
          const mine = await checkImage(img);
          expect([mine.corruptions, mine.leaks]).toEqual([0, 0]);
          await writeFile(p(`r${n}.raw`), ref);
          execFileSync('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'raw', img, p(`r${n}.raw`)]);
          if (before) expect(Buffer.compare(await readFile(p(`b${n}.qcow2`)), before)).toBe(0);
        },
      ),
      { numRuns: 25 },
    );
  });
});
