// QEMU migration streams ↔ vmkit checkpoints on a real stream: a QEMU that
// has not started its guest (-S, BIOS only: seconds under TCG) migrates to a
// file. Import keeps every non-RAM byte and every page; export gives a stream
// QEMU loads; re-importing the export gives the same pages and state; bad
// streams (truncated, bit flips, XBZRLE, unknown sections, newer versions)
// are refused with a VmkitError naming the section and byte offset, and
// leave no file behind.
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { init } from '../bindings/index.js';
import { VmkitError } from '../bindings/errors.js';
import { CheckpointReader } from '../bindings/memory/checkpoint/reader.js';
import { CheckpointWriter } from '../bindings/memory/checkpoint/writer.js';
import { importQemuMigration } from '../bindings/memory/checkpoint/qemu/import.js';
import { exportQemuMigration } from '../bindings/memory/checkpoint/qemu/export.js';
import { CHUNK_STREAM, walkState } from '../bindings/memory/checkpoint/qemu/_state.js';
import { readStateMeta } from '../bindings/memory/checkpoint/qemu/state.js';
import { _autoExportThreads } from '../bindings/cli/commands/_checkpoint_qemu.js';
import { needTool } from './_tools.js';
import { monitor } from '../scripts/_guest.mjs';

const run = promisify(execFile);
const ok = needTool('qemu-system-x86_64', 'qemu-system-x86');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, ms: number, probe: () => Promise<boolean>): Promise<void> {
  const t0 = Date.now();
  while (!(await probe())) {
    if (Date.now() - t0 > ms) throw new Error(`timed out: ${what}`);
    await sleep(200);
  }
}

/** Runs a QEMU (-S or -incoming) with a monitor; `body` talks to it; then quits it. */
async function withQemu(dir: string, extra: string[], body: (cmd: (l: string) => Promise<string>) => Promise<void>): Promise<void> {
  const sock = join(dir, `mon-${Math.random().toString(36).slice(2)}.sock`);
  const q = spawn('qemu-system-x86_64', ['-machine', 'pc,accel=tcg', '-m', '64', '-display', 'none', '-nodefaults', '-serial', 'none', '-monitor', `unix:${sock},server=on,wait=off`, ...extra], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  q.stderr!.on('data', (d) => (err += d));
  const exited = new Promise((r) => q.once('exit', r));
  try {
    await until('monitor socket', 20_000, async () => {
      if (q.exitCode !== null) throw new Error(`qemu exited: ${err}`);
      return existsSync(sock);
    });
    // The socket file appears at bind(), before listen(): retry a refused connect.
    let mon: { cmd(l: string): Promise<string>; close(): void } | undefined;
    for (let i = 0; !mon; i++) {
      try {
        mon = await monitor(sock);
      } catch (e) {
        if (i > 50 || q.exitCode !== null) throw new Error(`qemu monitor: ${String(e)} ${err}`);
        await sleep(100);
      }
    }
    try {
      await body((l) => mon.cmd(l));
      await mon.cmd('quit').catch(() => {});
    } catch (e) {
      // QEMU exits on a failed incoming load: report its own error.
      await Promise.race([exited, sleep(3000)]);
      if (q.exitCode !== null) throw new Error(`qemu exited: ${err}`);
      throw e;
    } finally {
      mon.close();
    }
  } finally {
    if (q.exitCode === null) setTimeout(() => q.kill('SIGKILL'), 5000).unref();
    await exited;
  }
}

async function migrateTo(cmd: (l: string) => Promise<string>, path: string): Promise<void> {
  await cmd(`migrate "exec:cat > ${path}"`);
  await until('migration', 60_000, async () => /Migration status: completed/.test(await cmd('info migrate')));
}

/** QEMU's verdict on an incoming stream: its `info migrate`, or its error when it exits on a failed load. */
async function incomingOk(dir: string, stream: string): Promise<string> {
  let status = '';
  try {
    await withQemu(dir, ['-incoming', `exec:cat ${stream}`], async (cmd) => {
      await until('incoming migration', 60_000, async () => {
        status = await cmd('info migrate');
        return /Migration status: (completed|failed)/.test(status);
      });
    });
  } catch (e) {
    const m = /load of migration failed.*/.exec(String(e));
    if (!m) throw e;
    return `Migration status: failed (${m[0]})`;
  }
  return status;
}

async function exportToBytes(ckpt: string): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  await exportQemuMigration(ckpt, async (b) => void parts.push(b.slice()));
  return Buffer.concat(parts);
}

async function stateStream(ckpt: string): Promise<Uint8Array> {
  const r = await CheckpointReader.open(ckpt);
  const parts: Uint8Array[] = [];
  await walkState(r, (kind, p) => void (kind === CHUNK_STREAM && parts.push(p.slice())));
  await r.close();
  return Buffer.concat(parts);
}

describe.skipIf(!ok)('QEMU migration stream import/export (real QEMU stream)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vmkit-qmig-'));
  const mig = join(dir, 'vm.mig');
  let stream: Uint8Array;
  beforeAll(async () => {
    await init();
    await withQemu(dir, ['-S'], (cmd) => migrateTo(cmd, mig));
    stream = new Uint8Array(readFileSync(mig));
  }, 120_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('imports every page and keeps the non-RAM bytes verbatim; QEMU loads the export; re-import is a fixed point', { timeout: 120_000 }, async () => {
    const ckpt = join(dir, 'a.ckpt');
    const s = await importQemuMigration(mig, ckpt);
    expect(s.machine).toMatch(/^pc-i440fx-/);
    expect(s.blocks[0]!.id).toBe('pc.ram');
    expect(s.blocks.map((b) => b.id)).toContain('pc.bios');
    expect(s.cpus).toHaveLength(1);
    // A reset x86 CPU: CR0 = ET | NW | CD, paging off.
    expect(s.cpus[0]!.cr0).toBe('0x60000010');
    // The stream's first bytes (header, configuration, ram setup) and its tail (devices, EOF, vmdesc) are kept.
    const kept = await stateStream(ckpt);
    expect(Buffer.from(kept.subarray(0, 4)).toString('latin1')).toBe('QEVM');
    const tail = stream.subarray(stream.length - (kept.length - 64), stream.length);
    expect(Buffer.compare(Buffer.from(kept.subarray(kept.length - 4096)), Buffer.from(tail.subarray(tail.length - 4096)))).toBe(0);
    // pc.bios holds SeaBIOS: its last page is non-zero and equals the stream's own copy.
    const r = await CheckpointReader.open(ckpt);
    const meta = await readStateMeta(r);
    const bios = meta.blocks.find((b) => b.id === 'pc.bios')!;
    const last = await r.readPage((bios.offset + bios.length) / 4096 - 1);
    expect(last.some((x) => x !== 0)).toBe(true);
    expect(Buffer.from(stream).indexOf(Buffer.from(last))).toBeGreaterThan(0);
    await r.close();

    const out = await exportToBytes(ckpt);
    const mig2 = join(dir, 'b.mig');
    writeFileSync(mig2, out);
    expect(await incomingOk(dir, mig2)).toMatch(/Migration status: completed/);
    // Truncate the export: QEMU itself refuses it (the check above can fail).
    const cut = join(dir, 'cut.mig');
    writeFileSync(cut, out.subarray(0, out.length >> 1));
    expect(await incomingOk(dir, cut)).toMatch(/Migration status: failed/);

    const ckpt2 = join(dir, 'b.ckpt');
    await importQemuMigration(mig2, ckpt2);
    const [ra, rb] = [await CheckpointReader.open(ckpt), await CheckpointReader.open(ckpt2)];
    expect(rb.pageCount).toBe(ra.pageCount);
    const pa = new Uint8Array(ra.pageCount * 4096);
    const pb = new Uint8Array(rb.pageCount * 4096);
    await ra.readPagesInto(0, ra.pageCount, pa);
    await rb.readPagesInto(0, rb.pageCount, pb);
    expect(Buffer.compare(Buffer.from(pa), Buffer.from(pb))).toBe(0);
    await ra.close();
    await rb.close();
    expect(Buffer.compare(Buffer.from(await exportToBytes(ckpt2)), Buffer.from(out))).toBe(0);
  });

  it('exports to stdout through the CLI for -incoming "exec:vmkit checkpoint export … -"', { timeout: 120_000 }, async () => {
    const ckpt = join(dir, 'c.ckpt');
    const cli = join(process.cwd(), 'dist/bin/vmkit.js');
    await run('node', [cli, 'checkpoint', 'import', mig, ckpt]);
    let status = '';
    await withQemu(dir, ['-incoming', `exec:node ${cli} checkpoint export ${ckpt} -`], async (cmd) => {
      await until('incoming migration', 60_000, async () => {
        status = await cmd('info migrate');
        return /Migration status: (completed|failed)/.test(status);
      });
    });
    expect(status).toMatch(/Migration status: completed/);
  });

  it('export --threads auto (the default) picks 2 threads only with more than one free core; every choice writes the same stream', { timeout: 120_000 }, async () => {
    expect(_autoExportThreads(2, 0.2)).toBe(2);
    expect(_autoExportThreads(8, 6.5)).toBe(2);
    expect(_autoExportThreads(2, 1)).toBe(1); // exactly one core free: QEMU needs it
    expect(_autoExportThreads(2, 3.6)).toBe(1);
    expect(_autoExportThreads(1, 0)).toBe(1);
    const ckpt = join(dir, 't.ckpt');
    const cli = join(process.cwd(), 'dist/bin/vmkit.js');
    await run('node', [cli, 'checkpoint', 'import', mig, ckpt]);
    const outs: Buffer[] = [];
    for (const t of [[], ['--threads', 'auto'], ['--threads', '1'], ['--threads', '2']]) {
      const o = join(dir, `t${outs.length}.mig`);
      await run('node', [cli, 'checkpoint', 'export', ckpt, o, ...t]);
      outs.push(readFileSync(o));
    }
    for (const o of outs.slice(1)) expect(Buffer.compare(o, outs[0]!)).toBe(0);
    await expect(run('node', [cli, 'checkpoint', 'export', ckpt, join(dir, 'x.mig'), '--threads', 'many'])).rejects.toThrow(/--threads must be 1\.\.16 or auto/);
  });

  it('exports a diff checkpoint (no machine state of its own) as its full view', { timeout: 60_000 }, async () => {
    const base = join(dir, 'base.ckpt');
    await importQemuMigration(mig, base);
    const rb = await CheckpointReader.open(base);
    const w = await CheckpointWriter.create(join(dir, 'diff.ckpt'), { guestSize: rb.guestSize, parent: { path: 'base.ckpt', id: rb.header.id } });
    const page = new Uint8Array(4096).fill(0xab);
    await w.writePages(5, page);
    await w.finish();
    await rb.close();
    const mig3 = join(dir, 'diff.mig');
    writeFileSync(mig3, await exportToBytes(join(dir, 'diff.ckpt')));
    const back = join(dir, 'diff-back.ckpt');
    await importQemuMigration(mig3, back);
    const [a, b] = [await CheckpointReader.open(base), await CheckpointReader.open(back)];
    expect(Buffer.from(await b.readPage(5))).toEqual(Buffer.from(page));
    expect(Buffer.from(await b.readPage(6))).toEqual(Buffer.from(await a.readPage(6)));
    expect(Buffer.compare(Buffer.from(await stateStream(back)), Buffer.from(await stateStream(base)))).toBe(0);
    await a.close();
    await b.close();
  });

  it('imports from stdin as QEMU migrates into it (migrate "exec:vmkit checkpoint import - …"): the same checkpoint as from the file', { timeout: 180_000 }, async () => {
    const cli = join(process.cwd(), 'dist/bin/vmkit.js');
    const teed = join(dir, 'teed.mig');
    const piped = join(dir, 'piped.ckpt');
    await withQemu(dir, ['-S'], async (cmd) => {
      await cmd(`migrate "exec:tee ${teed} | node ${cli} checkpoint import - ${piped}"`);
      await until('migration', 60_000, async () => /Migration status: completed/.test(await cmd('info migrate')));
    });
    // QEMU reports completion when it has written the stream; the checkpoint appears (renamed) when the import ends.
    await until('the piped checkpoint', 60_000, async () => existsSync(piped));
    const fromFile = join(dir, 'teed.ckpt');
    await importQemuMigration(teed, fromFile);
    const [a, b] = [await CheckpointReader.open(fromFile), await CheckpointReader.open(piped)];
    expect(b.pageCount).toBe(a.pageCount);
    const pa = new Uint8Array(a.pageCount * 4096);
    const pb = new Uint8Array(b.pageCount * 4096);
    await a.readPagesInto(0, a.pageCount, pa);
    await b.readPagesInto(0, b.pageCount, pb);
    expect(Buffer.compare(Buffer.from(pa), Buffer.from(pb))).toBe(0);
    expect((await readStateMeta(b)).cpus).toEqual((await readStateMeta(a)).cpus);
    await a.close();
    await b.close();
    expect(Buffer.compare(Buffer.from(await stateStream(piped)), Buffer.from(await stateStream(fromFile)))).toBe(0);
    expect(readdirSync(dir).filter((n) => n.includes('.spool-') || n.includes('.tmp-'))).toEqual([]);
    // A stream cut short on stdin: refused by offset, nothing left behind.
    const cut = join(dir, 'cut-pipe.ckpt');
    const r = await run('sh', ['-c', `head -c ${stream.length - 3000} ${mig} | node ${cli} checkpoint import - ${cut}`]).then(
      () => undefined,
      (e: { code: number; stderr: string }) => e,
    );
    expect(r?.code).toBe(1);
    expect(r?.stderr).toMatch(/CORRUPT|UNSUPPORTED/);
    expect(r?.stderr).toMatch(/byte offset \d+/);
    expect(readdirSync(dir).filter((n) => n.startsWith('cut-pipe.ckpt'))).toEqual([]);
  });

  it('imports with --parent as a diff: only the pages that differ are stored; the export is the full stream', { timeout: 120_000 }, async () => {
    const base = join(dir, 'pbase.ckpt');
    await importQemuMigration(mig, base);
    // The same VM with one page changed: a byte of SeaBIOS's last page.
    const rb = await CheckpointReader.open(base);
    const bios = (await readStateMeta(rb)).blocks.find((b) => b.id === 'pc.bios')!;
    const last = await rb.readPage((bios.offset + bios.length) / 4096 - 1);
    await rb.close();
    const at = Buffer.from(stream).indexOf(Buffer.from(last));
    const changed = stream.slice();
    changed[at + 100] = changed[at + 100]! ^ 0xff;
    const mig2 = join(dir, 'changed.mig');
    writeFileSync(mig2, changed);
    const diff = join(dir, 'pdiff.ckpt');
    const s = await importQemuMigration(mig2, diff, { parent: base });
    expect(s.checkpoint.pagesWritten).toBe(1);
    expect(s.checkpoint.lz4Pages + s.checkpoint.rawPages).toBe(1);
    expect(s.checkpoint.absentPages).toBe(s.checkpoint.pages - 1);
    const full = join(dir, 'pfull.ckpt');
    await importQemuMigration(mig2, full);
    expect(Buffer.compare(Buffer.from(await exportToBytes(diff)), Buffer.from(await exportToBytes(full)))).toBe(0);
    // A parent of another size is refused.
    const other = join(dir, 'other.ckpt');
    const w = await CheckpointWriter.create(other, { guestSize: 1 << 20 });
    await w.finish();
    await expect(importQemuMigration(mig2, join(dir, 'bad-parent.ckpt'), { parent: other })).rejects.toMatchObject({ code: 'ARG_RANGE' });
    expect(readdirSync(dir).filter((n) => n.startsWith('bad-parent.ckpt'))).toEqual([]);
  });

  const expectRefused = async (bytes: Uint8Array, code: string | RegExp, msg?: RegExp): Promise<VmkitError> => {
    const bad = join(dir, 'bad.mig');
    const out = join(dir, 'bad.ckpt');
    writeFileSync(bad, bytes);
    const err = await importQemuMigration(bad, out).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(VmkitError);
    const e = err as VmkitError;
    expect(e.code).toMatch(code);
    if (msg) expect(e.message).toMatch(msg);
    expect(readdirSync(dir).filter((n) => n.startsWith('bad.ckpt'))).toEqual([]);
    return e;
  };

  it('refuses XBZRLE, unknown sections, newer stream versions, naming the section and offset', async () => {
    // The first page record: after the ram START section's footer (0x7e, be32 id), a PART header (5 bytes).
    const v = new DataView(stream.buffer, stream.byteOffset);
    // magic, version, 0x07, be32 length + machine type: then the START type byte and be32 section id.
    const start = 8 + 1 + 4 + v.getUint32(9);
    expect(stream[start]).toBe(0x01);
    const ramId = v.getUint32(start + 1);
    const footer = Buffer.from(stream).indexOf(Buffer.from([0x7e, 0, 0, 0, ramId]));
    expect(stream[footer + 5]).toBe(0x02);
    const rec = footer + 10;
    const x = stream.slice();
    x[rec + 7] = (x[rec + 7]! | 0x40) & ~0x08 & 0xff;
    const e = await expectRefused(x, 'UNSUPPORTED', /XBZRLE.*section ram \(id \d+\) part.*byte offset \d+/);
    expect(e.offset).toBe(rec);
    const y = stream.slice();
    y[footer + 5] = 0x09;
    await expectRefused(y, 'CORRUPT', /unknown section type 0x9.*byte offset/);
    const z = stream.slice();
    z[7] = 4;
    await expectRefused(z, 'UNSUPPORTED', /stream version 4/);
  });

  it('refuses truncated and bit-flipped streams cleanly (fuzz)', { timeout: 120_000 }, async () => {
    let seed = 12345;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
    for (let i = 0; i < 30; i++) {
      const cut = 1 + rnd(stream.length - 1);
      await expectRefused(stream.subarray(0, cut), /CORRUPT|UNSUPPORTED/, /byte offset \d+/);
    }
    // Flip bytes in the structure (outside page payloads a flip must be caught or harmless).
    let refused = 0;
    for (let i = 0; i < 60; i++) {
      const y = stream.slice();
      const at = rnd(y.length);
      y[at] = y[at]! ^ (1 << rnd(8));
      const out = join(dir, 'flip.ckpt');
      writeFileSync(join(dir, 'flip.mig'), y);
      try {
        await importQemuMigration(join(dir, 'flip.mig'), out);
        rmSync(out);
      } catch (e) {
        expect(e).toBeInstanceOf(VmkitError);
        expect(['CORRUPT', 'UNSUPPORTED', 'LIMIT']).toContain((e as VmkitError).code);
        refused++;
      }
      expect(readdirSync(dir).filter((n) => n.startsWith('flip.ckpt.tmp'))).toEqual([]);
    }
    expect(refused).toBeGreaterThan(0);
  });
});
