// VMDK inputs that used to fail with `IO` (node:fs refusing a NaN or unsafe position or length),
// an ARG_RANGE from the block-device API, or a rejection nobody handled (which ends a Node
// process): found with targeted corruptions of images qemu-img made (issue 18). Each is now
// refused at open with LIMIT, read as the format says, or reported once as CORRUPT.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { needTool } from './_tools.js';
import { codeOf } from './_codes.js';
import { qimg, qemuIo } from './_qemu-img.js';
import { openImage } from '../bindings/disk/image.js';
import { mapExtents } from '../bindings/disk/device.js';
import { VmkitError } from '../bindings/errors.js';
import { main } from '../bindings/cli/main.js';

const hasQemu = needTool('qemu-img', 'qemu-utils') && needTool('qemu-io', 'qemu-utils');
let dir = '';
const p = (n: string): string => join(dir, n);

/** `vmkit disk <args>` in this process: exit code and the error code it printed. */
async function cli(...args: string[]): Promise<{ rc: number; code: string | undefined }> {
  let err = '';
  const sink = new Writable({ write: (_c, _e, cb) => cb() });
  const stderr = new Writable({
    write: (c, _e, cb) => {
      err += String(c);
      cb();
    },
  });
  const rc = await main(['disk', ...args], { stdout: sink, stderr });
  return { rc, code: /vmkit: ([A-Z_]+):/.exec(err)?.[1] };
}

describe.skipIf(!hasQemu)('malformed VMDKs (issue 18: IO instead of CORRUPT or LIMIT)', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmkit-vmdk-bad-'));
    // 32 MiB of 64 KiB grains: exactly one grain table of 512 entries.
    qimg('create', '-q', '-f', 'vmdk', p('sparse.vmdk'), '32M');
    qemuIo('vmdk', p('sparse.vmdk'), 'write -P 0x5a 0 1M', 'write -P 0xa5 31M 1M');
    qimg('convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', p('sparse.vmdk'), p('stream.vmdk'));
    qimg('create', '-q', '-f', 'vmdk', p('empty.vmdk'), '0');
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('a zero-length read at the very end reads nothing (the directory has no entry there)', async () => {
    for (const name of ['sparse.vmdk', 'stream.vmdk', 'empty.vmdk']) {
      const dev = await openImage(p(name), { readOnly: true });
      try {
        // Was IO: the grain directory entry past its end was undefined, its table at NaN.
        expect(await dev.read(dev.size, 0), name).toEqual(new Uint8Array(0));
        if (dev.size > 0) expect((await dev.read(dev.size - 512, 512))[0], name).toBe(0xa5);
      } finally {
        await dev.close();
      }
    }
  });

  it('a capacity of 2^44 sectors (2^53 bytes, not a safe integer) is LIMIT at open, not IO on convert', async () => {
    const b = Buffer.from(await readFile(p('sparse.vmdk')));
    b.writeBigUInt64LE(2n ** 44n, 12); // capacity
    b.writeBigUInt64LE(65536n, 20); // grains of 32 MiB: the directory still fits the file
    await writeFile(p('huge.vmdk'), b);
    const e = await openImage(p('huge.vmdk'), { readOnly: true }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(VmkitError);
    expect(e).toMatchObject({ code: 'LIMIT', offset: 12 });
    // One sector less is the largest capacity vmkit opens: its size is a safe integer.
    b.writeBigUInt64LE(2n ** 44n - 1n, 12);
    const gt0 = b.readUInt32LE(Number(b.readBigUInt64LE(56)) * 512) * 512;
    b.fill(0, gt0, gt0 + 2048); // its first grain table maps nothing
    await writeFile(p('largest.vmdk'), b);
    const dev = await openImage(p('largest.vmdk'), { readOnly: true });
    try {
      expect(dev.size).toBe((2 ** 44 - 1) * 512);
      expect(Number.isSafeInteger(dev.size)).toBe(true);
      // Its first grain table (512 grains of 32 MiB) maps nothing: one unallocated extent.
      expect(await mapExtents(dev, 0, 2 ** 34)).toMatchObject([{ offset: 0, length: 2 ** 34, kind: 'unallocated' }]);
    } finally {
      await dev.close();
    }
    // The CLI said IO (node:fs refused to size the output); now the header's LIMIT.
    expect(await cli('convert', p('huge.vmdk'), p('out.raw'), '-O', 'raw')).toEqual({ rc: 1, code: 'LIMIT' });
    expect(await cli('map', p('huge.vmdk'))).toEqual({ rc: 1, code: 'LIMIT' });
  });

  it('a descriptor whose extents add up past 2^53 bytes is LIMIT at open', async () => {
    await mkdir(p('zero'));
    const text = ['# Disk DescriptorFile', 'version=1', 'CID=fffffffe', 'parentCID=ffffffff', 'createType="monolithicFlat"', '', `RW ${2 ** 50} ZERO`, ''].join('\n');
    await writeFile(p('zero/d.vmdk'), text);
    expect(await codeOf(openImage(p('zero/d.vmdk'), { readOnly: true }))).toBe('LIMIT');
    expect(await cli('convert', p('zero/d.vmdk'), p('out.raw'), '-O', 'raw')).toEqual({ rc: 1, code: 'LIMIT' });
    // A large one that stays below is read as zeroes.
    await writeFile(p('zero/d.vmdk'), text.replace(String(2 ** 50), String(2 ** 40)));
    const dev = await openImage(p('zero/d.vmdk'), { readOnly: true });
    try {
      expect(dev.size).toBe(2 ** 49);
      expect((await dev.read(dev.size - 4096, 4096)).every((x) => x === 0)).toBe(true);
    } finally {
      await dev.close();
    }
  });

  it('a read across many bad grains of a stream (one-entry grain tables) rejects once with CORRUPT, nothing left unhandled', async () => {
    const b = Buffer.from(await readFile(p('stream.vmdk')));
    b.writeUInt32LE(1, 44); // numGTEsPerGT: the directory's tables now map grains they do not hold
    await writeFile(p('gt1.vmdk'), b);
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown): void => void unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    try {
      const dev = await openImage(p('gt1.vmdk'), { readOnly: true });
      try {
        expect(await codeOf(dev.read(0, dev.size))).toBe('CORRUPT');
      } finally {
        await dev.close();
      }
      await new Promise((r) => setTimeout(r, 50));
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
    // Was: each further grain's CORRUPT surfaced as an unhandled rejection (a CLI or an NBD
    // server reading such a disk exited).
    expect(unhandled).toEqual([]);
  });

  it('sparse and stream refuse alike a grain table inside the header and descriptor', async () => {
    for (const name of ['sparse.vmdk', 'stream.vmdk']) {
      const b = Buffer.from(await readFile(p(name)));
      const gd = Number(b.readBigUInt64LE(56)) * 512; // gdOffset, sectors (qemu-img writes it in the header)
      b.writeUInt32LE(1, gd); // the first table at sector 1: the embedded descriptor
      await writeFile(p(`gt-in-descriptor-${name}`), b);
      const dev = await openImage(p(`gt-in-descriptor-${name}`), { readOnly: true });
      try {
        const e = await dev.read(0, 4096).then(() => undefined, (x: unknown) => x);
        expect(e, name).toBeInstanceOf(VmkitError);
        expect((e as VmkitError).code, name).toBe('CORRUPT');
        // Was, for a stream: the descriptor's text read as a table (only the first 512 bytes were refused).
        expect((e as VmkitError).message, name).toMatch(/grain table at 512 is outside the file or overlaps the header/);
        expect((e as VmkitError).offset, name).toBe(gd);
      } finally {
        await dev.close();
      }
    }
  });
});
