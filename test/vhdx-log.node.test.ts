// VHDX log replay against QEMU: qemu-io's block allocations leave their BAT
// updates as log entries (each under its own log GUID). A header naming an
// entry's GUID, with the BAT sector it rewrites zeroed in place, is a dirty
// image: vmkit opened read-only reads it as QEMU does after its own replay
// (`qemu-img check -r all`) and leaves the file as it was; opened writable it
// replays into the file, which QEMU then opens read-only (it refuses a dirty
// log there) and reads equal. A truncated file is CORRUPT at the entry's
// flushed-file-offset field; a damaged log fails only with a VmkitError.
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { needTool } from './_tools.js';
import { diff, qemuCheck, qemuIo, qemuRaw, qimg, vmkitRaw } from './_qemu-img.js';
import { damagedImageRound } from './_damaged-image.js';
import { checkImage, openImage } from '../bindings/disk/image.js';
import { crc32c, encodeHeader, parseHeader, VHDX_HEADER1, VHDX_HEADER2 } from '../bindings/disk/formats/vhdx/header.js';
import { MemoryProvider, MemoryStorage } from '../bindings/disk/backends/memory.js';

const hasQemu = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
let dir = '';
const p = (n: string): string => join(dir, n);
const MiB = 2 ** 20;

/** The log entries in `b` (log at 1 MiB, 1 MiB long, as qemu-img creates it): position, sequence, GUID, first descriptor's file offset. */
function entries(b: Uint8Array): { pos: number; seq: bigint; guid: Uint8Array; target: number }[] {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out = [];
  for (let o = MiB; o < 2 * MiB; o += 4096) {
    if (dv.getUint32(o, true) !== 0x65676f6c) continue;
    out.push({ pos: o, seq: dv.getBigUint64(o + 16, true), guid: b.slice(o + 32, o + 48), target: Number(dv.getBigUint64(o + 64 + 16, true)) });
  }
  return out;
}

/** `clean` with both headers naming `guid` as the log GUID and the sector at `target` zeroed. */
function dirtied(clean: Uint8Array, guid: Uint8Array, target: number): Uint8Array {
  const b = clean.slice();
  for (const at of [VHDX_HEADER1, VHDX_HEADER2]) b.set(encodeHeader({ ...parseHeader(b.subarray(at, at + 4096))!, logGuid: guid }), at);
  b.fill(0, target, target + 4096);
  return b;
}

describe.skipIf(!hasQemu)('VHDX log replay', () => {
  let clean: Uint8Array;
  let log: ReturnType<typeof entries>;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmkit-vhdxlog-'));
    qimg('create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', p('c.vhdx'), '64M');
    qemuIo('vhdx', p('c.vhdx'), 'write -P 0x5a 0 1M', 'write -P 0x6b 40M 64k', 'write -P 0x7c 20M 8k');
    clean = new Uint8Array(await readFile(p('c.vhdx')));
    log = entries(clean);
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('replays the active entry as QEMU does: in memory read-only, into the file writable', async () => {
    expect(log.length).toBeGreaterThanOrEqual(3);
    const ref = await qemuRaw(p('c.vhdx'), 'vhdx');
    for (const e of [log[log.length - 1]!, log[log.length - 2]!]) {
      const dirty = dirtied(clean, e.guid, e.target);
      await writeFile(p('d.vhdx'), dirty);
      await copyFile(p('d.vhdx'), p('q.vhdx'));
      // QEMU refuses the dirty image read-only and replays it read-write.
      expect(() => qimg('info', p('q.vhdx'))).toThrow(/replay|log/i);
      qimg('check', '-r', 'all', p('q.vhdx'));
      const q = await qemuRaw(p('q.vhdx'), 'vhdx');
      if (e === log[log.length - 1]) expect(diff(q, ref)).toBe(-1); // the last entry holds the BAT as it ended
      else expect(diff(q, ref)).not.toBe(-1); // an older one: the later block is not mapped
      // Read-only: the replay in memory, the file untouched.
      expect(diff(await vmkitRaw(p('d.vhdx')), q)).toBe(-1);
      expect(diff(new Uint8Array(await readFile(p('d.vhdx'))), dirty)).toBe(-1);
      // Writable: replayed into the file and the log cleared; QEMU opens it read-only now.
      const dev = await openImage(p('d.vhdx'));
      await dev.close();
      qimg('info', p('d.vhdx'));
      expect(diff(await qemuRaw(p('d.vhdx'), 'vhdx'), q)).toBe(-1);
      expect(qemuCheck(p('d.vhdx'))).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
      expect((await checkImage(p('d.vhdx'))).corruptions).toBe(0);
    }
  });

  it('a truncated file (flushed offset past its end) is CORRUPT at that field', async () => {
    const e = log[log.length - 1]!;
    const dirty = dirtied(clean, e.guid, e.target);
    const dv = new DataView(dirty.buffer);
    dv.setBigUint64(e.pos + 48, BigInt(dirty.length + MiB), true);
    const len = dv.getUint32(e.pos + 8, true);
    dv.setUint32(e.pos + 4, crc32c(dirty.subarray(e.pos, e.pos + len), 4), true);
    await writeFile(p('t.vhdx'), dirty);
    await expect(openImage(p('t.vhdx'), { readOnly: true })).rejects.toMatchObject({ code: 'CORRUPT', offset: e.pos + 48 });
  });

  it('a damaged log or header fails only with a VmkitError', async () => {
    const e = log[log.length - 1]!;
    const dirty = dirtied(clean, e.guid, e.target);
    const provider = new MemoryProvider();
    await fc.assert(
      fc.asyncProperty(fc.array(fc.record({ at: fc.nat(MiB + 24575), v: fc.nat(255) }), { minLength: 1, maxLength: 6 }), async (muts) => {
        const b = dirty.slice();
        // The headers (64-192 KiB) and the first entries of the log (1 MiB on).
        for (const m of muts) b[m.at < MiB ? 65536 + (m.at % 131072) : m.at] = m.v;
        provider.stores.set('bad.vhdx', new MemoryStorage('bad.vhdx', b));
        await damagedImageRound(provider, 'bad.vhdx', { read: 4 * MiB, map: 64 * MiB, write: (dev) => dev.write(0, new Uint8Array(4096).fill(1)) });
      }),
      { numRuns: 200 },
    );
  });
});
