// A synthetic QEMU migration stream whose RAM runs past 4 GiB: a 4.5 GiB
// "pc.ram" and a 16 MiB "vga.vram" placed after it (checkpoint page space past
// 2^32 bytes), with non-zero pages at block offsets just past 2^31 and 2^32
// and at the end of both blocks. Written the way `exportQemuMigration` writes
// (one END section, every page in order), so import then export must give the
// same bytes back; the pages read from the checkpoint must be the ones written.
// The stream goes in once as a file and once through a pipe (stdin of the
// CLI), which reads it in one pass and spools its tail.
import { spawn } from 'node:child_process';
import { createReadStream, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { init } from '../bindings/index.js';
import { CheckpointReader } from '../bindings/memory/checkpoint/reader.js';
import { importQemuMigration } from '../bindings/memory/checkpoint/qemu/import.js';
import { exportQemuMigration } from '../bindings/memory/checkpoint/qemu/export.js';
import { readStateMeta } from '../bindings/memory/checkpoint/qemu/state.js';

const CLI = fileURLToPath(new URL('../dist/bin/vmkit.js', import.meta.url));
const PS = 4096;
const GiB = 2 ** 30;
const RAM = 4.5 * GiB;
const blocks = [
  { id: 'pc.ram', length: RAM },
  { id: 'vga.vram', length: 16 << 20 },
];
/** Non-zero pages: [block, byte offset in the block]. */
const marked: [number, number][] = [
  [0, 2 ** 31],
  [0, 2 ** 31 + PS],
  [0, 2 ** 32 - PS],
  [0, 2 ** 32],
  [0, 2 ** 32 + 0x12345000],
  [0, RAM - PS],
  [1, 0],
  [1, (16 << 20) - PS],
];
const pageOf = (b: number, off: number): Uint8Array => {
  const p = new Uint8Array(PS);
  const v = new DataView(p.buffer);
  // The page says where it is (block, offset as two u32), then a pattern.
  v.setUint32(0, b);
  v.setUint32(4, Math.floor(off / 2 ** 32));
  v.setUint32(8, off >>> 0);
  for (let i = 12; i < PS; i++) p[i] = (i * 31 + b * 7 + (off / PS)) & 0xff;
  return p;
};

/** The stream: header, configuration, ram setup, one END section of every page, one device, EOF, vmdesc. */
function synthetic(): Uint8Array {
  const parts: Uint8Array[] = [];
  const te = new TextEncoder();
  const u8 = (...b: number[]) => parts.push(Uint8Array.from(b));
  const be32 = (n: number) => {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, n);
    parts.push(b);
  };
  const be64 = (n: bigint) => {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, n);
    parts.push(b);
  };
  const str8 = (s: string) => {
    u8(s.length);
    parts.push(te.encode(s));
  };
  be32(0x5145564d);
  be32(3);
  u8(0x07);
  be32(13);
  parts.push(te.encode('pc-i440fx-7.2'));
  // ram START (id 2): the block list, EOS, footer.
  u8(0x01);
  be32(2);
  str8('ram');
  be32(0);
  be32(4);
  be64(BigInt(blocks.reduce((n, b) => n + b.length, 0)) | 0x04n);
  for (const b of blocks) {
    str8(b.id);
    be64(BigInt(b.length));
  }
  be64(0x10n);
  u8(0x7e);
  be32(2);
  // ram END: every page, in order, as exportQemuMigration writes them.
  u8(0x03);
  be32(2);
  const marks = new Set(marked.map(([b, o]) => `${b}:${o}`));
  // Zero records are 9 bytes (CONTINUE): batch them in one buffer per block.
  blocks.forEach((b, bi) => {
    const n = b.length / PS;
    const zero = new Uint8Array(9 * n + b.id.length + 1);
    let used = 0;
    const zv = new DataView(zero.buffer);
    const flushZero = () => {
      if (used) parts.push(zero.slice(0, used));
      used = 0;
    };
    for (let p = 0; p < n; p++) {
      const off = p * PS;
      const cont = p > 0 ? 0x20n : 0n;
      if (marks.has(`${bi}:${off}`)) {
        flushZero();
        be64(BigInt(off) | 0x08n | cont);
        if (!cont) str8(b.id);
        parts.push(pageOf(bi, off));
        continue;
      }
      zv.setBigUint64(used, BigInt(off) | 0x02n | cont);
      used += 8;
      if (!cont) {
        zero[used++] = b.id.length;
        zero.set(te.encode(b.id), used);
        used += b.id.length;
      }
      zero[used++] = 0;
    }
    flushZero();
  });
  be64(0x10n);
  u8(0x7e);
  be32(2);
  // One device section (id 3, "timer", 12 bytes), then EOF and the vmdesc.
  u8(0x04);
  be32(3);
  str8('timer');
  be32(0);
  be32(2);
  parts.push(Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]));
  u8(0x7e);
  be32(3);
  u8(0x00);
  const desc = te.encode(
    JSON.stringify({
      page_size: PS,
      devices: [{ name: 'timer', instance_id: 0, vmsd_name: 'timer', version: 2, fields: [{ name: 'ticks', type: 'int64', size: 8 }, { name: 'on', type: 'int32', size: 4 }] }],
    }),
  );
  u8(0x06);
  be32(desc.length);
  parts.push(desc);
  return Buffer.concat(parts);
}

async function exportBytes(ckpt: string, threads = 1): Promise<Uint8Array> {
  const out: Uint8Array[] = [];
  if (threads > 1) {
    // Workers load dist/ (a worker cannot run the .ts sources): the built modules, end to end.
    const dist = (p: string) => new URL(`../dist/${p}`, import.meta.url).href;
    const { init: initDist } = (await import(/* @vite-ignore */ dist('index.js'))) as typeof import('../bindings/index.js');
    const m = (await import(/* @vite-ignore */ dist('memory/index.js'))) as typeof import('../bindings/memory/index.js');
    await initDist();
    await m.exportQemuMigration(ckpt, async (b) => void out.push(b.slice()), { threads });
    return Buffer.concat(out);
  }
  await exportQemuMigration(ckpt, async (b) => void out.push(b.slice()));
  return Buffer.concat(out);
}

async function checkPages(ckpt: string): Promise<void> {
  const r = await CheckpointReader.open(ckpt);
  const meta = await readStateMeta(r);
  expect(meta.blocks).toEqual([
    { id: 'pc.ram', length: RAM, offset: 0 },
    { id: 'vga.vram', length: 16 << 20, offset: RAM },
  ]);
  expect(r.guestSize).toBe(BigInt(RAM + (16 << 20)));
  for (const [b, off] of marked) {
    const page = (meta.blocks[b]!.offset + off) / PS;
    expect(Buffer.from(await r.readPage(page))).toEqual(Buffer.from(pageOf(b, off)));
  }
  // Neighbours of marked pages are zero (no page landed at a wrapped 32-bit offset).
  for (const off of [2 ** 31 - PS, 2 ** 32 + PS, 0]) expect((await r.readPage(off / PS)).every((x) => x === 0)).toBe(true);
  const info = r.info();
  expect(info.zeroPages).toBe(r.pageCount - marked.length);
  await r.close();
}

describe('QEMU migration stream with RAM past 4 GiB (synthetic)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vmkit-qbig-'));
  const mig = join(dir, 'big.mig');
  let stream: Uint8Array;
  beforeAll(async () => {
    await init();
    stream = synthetic();
    writeFileSync(mig, stream);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('imports from a file: pages past 2^31 and 2^32 where they belong; export gives the same stream back', { timeout: 300_000 }, async () => {
    const ckpt = join(dir, 'big.ckpt');
    const s = await importQemuMigration(mig, ckpt);
    expect(s.pageRecords).toBe((RAM + (16 << 20)) / PS);
    await checkPages(ckpt);
    const back = await exportBytes(ckpt);
    expect(back.length).toBe(stream.length);
    expect(Buffer.compare(Buffer.from(back), Buffer.from(stream))).toBe(0);
  });

  it('imports from a pipe (vmkit checkpoint import - …): the same checkpoint, no spool left', { timeout: 300_000 }, async () => {
    const ckpt = join(dir, 'pipe.ckpt');
    const p = spawn('node', [CLI, 'checkpoint', 'import', '-', ckpt, '--json'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    createReadStream(mig).pipe(p.stdin);
    const code = await new Promise((r) => p.once('exit', r));
    expect(err).toBe('');
    expect(code).toBe(0);
    expect(JSON.parse(out).cpus).toEqual([]);
    await checkPages(ckpt);
    // On 3 threads (windows decompressed by two workers and this one): the same bytes.
    expect(Buffer.compare(Buffer.from(await exportBytes(ckpt, 3)), Buffer.from(stream))).toBe(0);
    expect(readdirSync(dir).filter((n) => n.includes('.spool-') || n.includes('.tmp-'))).toEqual([]);
  });
});
