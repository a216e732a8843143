/**
 * `importQemuMigration`: a QEMU migration stream file (`migrate
 * "exec:cat > vm.mig"`) to a vmkit checkpoint. RAM pages go through the
 * checkpoint writer's staging buffer (zero pages in the index only); every
 * other byte of the stream is kept verbatim in the checkpoint's machine-state
 * section, so `exportQemuMigration` gives QEMU back a stream it accepts.
 * Stream format: QEMU's migration/savevm.c, migration/ram.c, vmstate.c
 * (docs/checkpoint-format.md, "QEMU migration stream").
 * @module
 */
import { VmkitError } from '../../../errors.js';
import { nodeFs } from '../io.js';
import { CheckpointWriter, type CheckpointStats } from '../writer.js';
import { WINDOW, _StreamInput } from './_input.js';
import { devicesByKey, fieldOffsets, readVmdesc, vmsdBytes } from './_vmdesc.js';
import {
  CHUNK_END,
  CHUNK_RAM,
  CHUNK_STREAM,
  MAX_CHUNK,
  encodeChunk,
  encodeMeta,
  encodeStateHeader,
  type CpuPaging,
  type MachineStateMeta,
  type RamBlockLayout,
} from './_state.js';
import { RAM, SEC, STREAM_MAGIC, STREAM_VERSION } from './_wire.js';

/**
 * Options of {@link importQemuMigration}.
 * @example
 * ```ts
 * await importQemuMigration('vm.mig', 'vm.ckpt', { blockSize: 1 << 20 });
 * ```
 */
export interface QemuImportOptions {
  /** Storage block size of the checkpoint (default 1 MiB). */
  blockSize?: number;
  /** 'lz4' (default) or 'none'. */
  codec?: 'lz4' | 'none';
  /** Fixed checkpoint id (32 hex digits). */
  id?: string;
}

/**
 * What an import did.
 * @example
 * ```ts
 * const { checkpoint, blocks, cpus, streamBytes } = await importQemuMigration('vm.mig', 'vm.ckpt');
 * ```
 */
export interface QemuImportStats {
  checkpoint: CheckpointStats;
  blocks: RamBlockLayout[];
  cpus: CpuPaging[];
  machine: string;
  /** Bytes of the QEMU stream. */
  streamBytes: number;
  /** Page records in the stream (a page sent twice counts twice). */
  pageRecords: number;
  /** Bytes kept verbatim (non-RAM). */
  stateBytes: number;
}

/** Largest stream prefix (header, configuration, RAM setup) kept. */
const MAX_PREFIX = 1 << 20;
/** Bytes of a CPU section read for its paging registers. */
const MAX_CPU_SECTION = 1 << 20;
const PAGE_WINDOW = 256;
const CPU_FIELDS = ['env.cr[0]', 'env.cr[3]', 'env.cr[4]', 'env.efer'] as const;

const hex = (v: bigint): string => `0x${v.toString(16)}`;

/**
 * Imports QEMU migration stream `streamPath` as checkpoint `outPath`
 * (written to a temporary name and renamed when complete). Memory: fixed
 * windows (1 MiB of stream, 256 pages, the vmdesc).
 * @example
 * ```ts
 * const s = await importQemuMigration('/tmp/vm.mig', '/tmp/vm.ckpt');
 * console.log(s.cpus[0].cr3, s.checkpoint.zeroPages);
 * ```
 */
export async function importQemuMigration(streamPath: string, outPath: string, options: QemuImportOptions = {}): Promise<QemuImportStats> {
  if (typeof streamPath !== 'string' || streamPath === '') throw new VmkitError('ARG_TYPE', 'streamPath must be a file path');
  if (typeof outPath !== 'string' || outPath === '') throw new VmkitError('ARG_TYPE', 'outPath must be a file path');
  const fs = await nodeFs();
  let fd: number;
  try {
    fd = fs.openSync(streamPath, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'NOT_FOUND' : 'IO';
    throw new VmkitError(code, `${streamPath}: ${(e as Error).message}`, { cause: e, path: streamPath });
  }
  const tmp = `${outPath}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  let w: CheckpointWriter | undefined;
  try {
    const size = fs.fstatSync(fd).size;
    const readAt = (dst: Uint8Array, pos: number): number => fs.readSync(fd, dst, 0, dst.length, pos);
    const p = new _Parser(new _StreamInput(readAt, size), size, readAt);
    const vm = await p.run(async (guestSize, pageSize) => {
      w = await CheckpointWriter.create(tmp, { guestSize, pageSize, blockSize: options.blockSize, codec: options.codec, id: options.id });
      return w;
    });
    const writer = w!;
    // The machine-state section: header, the stream up to the RAM pages, the marker, the rest, metadata.
    await writer.appendState(encodeStateHeader());
    let stateBytes = 0;
    const copy = async (from: number, to: number): Promise<void> => {
      const buf = new Uint8Array(Math.min(MAX_CHUNK, WINDOW));
      for (let at = from; at < to; ) {
        const n = Math.min(buf.length, to - at);
        for (let got = 0; got < n; ) {
          const k = readAt(buf.subarray(got, n), at + got);
          if (k <= 0) throw new VmkitError('IO', `${streamPath}: short read at ${at + got}`);
          got += k;
        }
        await writer.appendState(encodeChunk(CHUNK_STREAM, buf.subarray(0, n)));
        stateBytes += n;
        at += n;
      }
    };
    await copy(0, vm.prefixEnd);
    await writer.appendState(encodeChunk(CHUNK_RAM, new Uint8Array(0)));
    await copy(vm.suffixStart, size);
    const meta: MachineStateMeta = {
      source: 'qemu-migration',
      machine: vm.machine,
      pageSize: vm.pageSize,
      ramSectionId: vm.ramId,
      blocks: vm.blocks,
      cpus: vm.cpus,
    };
    await writer.appendState(encodeMeta(meta));
    await writer.appendState(encodeChunk(CHUNK_END, new Uint8Array(0)));
    const checkpoint = await writer.finish();
    fs.renameSync(tmp, outPath);
    return { checkpoint, blocks: vm.blocks, cpus: vm.cpus, machine: vm.machine, streamBytes: size, pageRecords: vm.pageRecords, stateBytes };
  } catch (e) {
    await w?.abort().catch(() => {});
    try {
      fs.unlinkSync(tmp);
    } catch {
      // Nothing was created.
    }
    throw e;
  } finally {
    fs.closeSync(fd);
  }
}

interface Parsed {
  machine: string;
  pageSize: number;
  ramId: number;
  blocks: RamBlockLayout[];
  cpus: CpuPaging[];
  prefixEnd: number;
  suffixStart: number;
  pageRecords: number;
}

/** The stream parser: one pass, sections in order. */
class _Parser {
  private machine = '';
  private ramId = -1;
  private blocks: RamBlockLayout[] = [];
  private byId = new Map<string, RamBlockLayout>();
  private cpus: CpuPaging[] = [];
  private prefixEnd = -1;
  private suffixStart = -1;
  private pageRecords = 0;
  private writer: CheckpointWriter | undefined;
  private pageSize = 4096;
  private pend = new Uint8Array(0);
  private pendFirst = 0;
  private pendCount = 0;
  private lastBlock: RamBlockLayout | undefined;

  private readonly inp: _StreamInput;
  private readonly size: number;
  private readonly readAt: (dst: Uint8Array, pos: number) => number;

  constructor(inp: _StreamInput, size: number, readAt: (dst: Uint8Array, pos: number) => number) {
    this.inp = inp;
    this.size = size;
    this.readAt = readAt;
  }

  async run(open: (guestSize: bigint, pageSize: number) => Promise<CheckpointWriter>): Promise<Parsed> {
    const inp: _StreamInput = this.inp;
    const desc = readVmdesc(this.readAt, this.size);
    const devices = devicesByKey(desc);
    this.pageSize = desc.pageSize;
    if (!Number.isInteger(this.pageSize) || this.pageSize < 512 || this.pageSize > 65536 || (this.pageSize & (this.pageSize - 1)) !== 0) {
      inp.fail('UNSUPPORTED', `vmdesc page_size ${this.pageSize}`, desc.offset);
    }
    this.pend = new Uint8Array(PAGE_WINDOW * this.pageSize);
    inp.where = 'header';
    if (inp.be32() !== STREAM_MAGIC) inp.fail('CORRUPT', 'not a QEMU migration stream (bad magic)', 0);
    const version = inp.be32();
    if (version !== STREAM_VERSION) inp.fail('UNSUPPORTED', `stream version ${version} (only ${STREAM_VERSION})`, 4);
    let sections = 0;
    for (;;) {
      const at = inp.offset;
      if (at >= desc.offset) inp.fail('CORRUPT', 'the stream reaches its vmdesc without QEMU_VM_EOF');
      inp.where = `section type at ${at}`;
      const type = inp.u8();
      if (type === SEC.EOF) {
        if (this.ramId < 0) inp.fail('CORRUPT', 'the stream has no RAM section', at);
        await this.flush();
        if (this.suffixStart < 0) this.suffixStart = at;
        if (inp.offset !== desc.offset) inp.fail('CORRUPT', `${desc.offset - inp.offset} bytes between QEMU_VM_EOF and the vmdesc`);
        break;
      }
      if (type === SEC.CONFIGURATION) {
        if (sections > 0) inp.fail('CORRUPT', 'configuration section after other sections', at);
        this.configuration();
        sections++;
        continue;
      }
      sections++;
      if (type === SEC.START || type === SEC.FULL) {
        const id = inp.be32();
        const name = inp.str8();
        const instance = inp.be32();
        const ver = inp.be32();
        inp.where = `section ${name} (id ${id}, instance ${instance}) at ${at}`;
        if (type === SEC.START) {
          if (name !== 'ram') inp.fail('UNSUPPORTED', `iterable section ${name} (block migration, dirty bitmaps…)`, at);
          if (this.ramId >= 0) inp.fail('CORRUPT', 'a second ram section', at);
          if (ver !== 4) inp.fail('UNSUPPORTED', `ram section version ${ver} (only 4)`, at);
          this.ramId = id;
          await this.ramPages(true);
          this.footer(id);
          this.prefixEnd = inp.offset;
          if (this.prefixEnd > MAX_PREFIX) inp.fail('LIMIT', `stream prefix over ${MAX_PREFIX} bytes`);
          const guestSize = this.blocks.reduce((n, b) => n + this.roundUp(b.length), 0);
          this.writer = await open(BigInt(guestSize), this.pageSize);
          continue;
        }
        if (this.ramId < 0) inp.fail('CORRUPT', 'device section before the ram section', at);
        await this.flush();
        if (this.suffixStart < 0) this.suffixStart = at;
        const dev = devices.get(`${name}\0${instance}`);
        if (!dev) inp.fail('CORRUPT', 'section not in the vmdesc', at);
        if (dev.version !== ver) inp.fail('CORRUPT', `version ${ver}, the vmdesc says ${dev.version}`, at);
        const len = vmsdBytes(dev);
        if (inp.offset + len > desc.offset) inp.fail('CORRUPT', `section data of ${len} bytes runs past the stream`);
        if (name === 'cpu' && dev.vmsd_name === 'cpu') this.cpu(dev, instance, len);
        else inp.take(len, () => {});
        this.footer(id);
        continue;
      }
      if (type === SEC.PART || type === SEC.END) {
        const id = inp.be32();
        inp.where = `section ram (id ${id}) ${type === SEC.PART ? 'part' : 'end'} at ${at}`;
        if (id !== this.ramId) inp.fail('UNSUPPORTED', `part of unknown iterable section ${id}`, at);
        if (this.suffixStart >= 0) inp.fail('UNSUPPORTED', 'RAM pages after device state (postcopy?)', at);
        await this.ramPages(false);
        this.footer(id);
        continue;
      }
      if (type === SEC.COMMAND) inp.fail('UNSUPPORTED', 'QEMU_VM_COMMAND (postcopy, colo, switchover-ack)', at);
      inp.fail('CORRUPT', `unknown section type 0x${type.toString(16)}`, at);
    }
    return {
      machine: this.machine,
      pageSize: this.pageSize,
      ramId: this.ramId,
      blocks: this.blocks,
      cpus: this.cpus,
      prefixEnd: this.prefixEnd,
      suffixStart: this.suffixStart,
      pageRecords: this.pageRecords,
    };
  }

  private roundUp(n: number): number {
    return Math.ceil(n / this.pageSize) * this.pageSize;
  }

  /** QEMU_VM_CONFIGURATION: vmstate "configuration" (machine type, optional subsections). */
  private configuration(): void {
    const inp: _StreamInput = this.inp;
    inp.where = `configuration section at ${inp.offset - 1}`;
    const n = inp.be32();
    if (n > 256) inp.fail('CORRUPT', `machine type name of ${n} bytes`);
    this.machine = String.fromCharCode(...inp.bytes(n));
    while (inp.peek8() === SEC.SUBSECTION) {
      const at = inp.offset;
      inp.u8();
      const name = inp.str8();
      inp.be32();
      if (name === 'configuration/capabilities') {
        const count = inp.be32();
        if (count > 64) inp.fail('CORRUPT', `${count} capabilities`, at);
        for (let i = 0; i < count; i++) {
          const cap = inp.str8();
          if (cap === 'x-ignore-shared' || cap === 'postcopy-ram') inp.fail('UNSUPPORTED', `migration capability ${cap}`, at);
        }
      } else if (name === 'configuration/uuid') inp.bytes(16);
      else inp.fail('UNSUPPORTED', `configuration subsection ${name}`, at);
    }
  }

  private footer(id: number): void {
    const at = this.inp.offset;
    if (this.inp.u8() !== SEC.FOOTER) this.inp.fail('CORRUPT', 'no section footer where the section should end (or a stream without section footers)', at);
    const fid = this.inp.be32();
    if (fid !== id) this.inp.fail('CORRUPT', `section footer names section ${fid}`, at);
  }

  /** The vCPU's paging registers from its "cpu" section, at the vmdesc's field offsets. */
  private cpu(dev: Parameters<typeof vmsdBytes>[0], instance: number, len: number): void {
    const keep = new Uint8Array(Math.min(len, MAX_CPU_SECTION));
    let got = 0;
    this.inp.take(len, (piece) => {
      const k = Math.min(piece.length, keep.length - got);
      keep.set(piece.subarray(0, k), got);
      got += k;
    });
    const offs = fieldOffsets(dev, CPU_FIELDS);
    const v = new DataView(keep.buffer);
    const reg = (name: string): string => {
      const f = offs.get(name);
      if (!f || f.size !== 8 || f.offset + 8 > keep.length) return '';
      return hex(v.getBigUint64(f.offset));
    };
    this.cpus.push({ index: instance, cr0: reg('env.cr[0]'), cr3: reg('env.cr[3]'), cr4: reg('env.cr[4]'), efer: reg('env.efer') });
  }

  /** Page records of the ram section until RAM_SAVE_FLAG_EOS (setup: the block list first). */
  private async ramPages(setup: boolean): Promise<void> {
    const inp: _StreamInput = this.inp;
    const ps = this.pageSize;
    const mask = BigInt(ps - 1);
    for (;;) {
      const at = inp.offset;
      const word = inp.be64();
      const flags = Number(word & mask);
      const addr = word & ~mask;
      if (flags & RAM.UNSUPPORTED) {
        const what = flags & RAM.XBZRLE ? 'XBZRLE' : flags & RAM.COMPRESS_PAGE ? 'compressed page' : flags & RAM.HOOK ? 'RDMA hook' : 'multifd flush';
        inp.fail('UNSUPPORTED', `ram ${what} record (flags 0x${flags.toString(16)})`, at);
      }
      if (flags & ~RAM.KNOWN) inp.fail('CORRUPT', `unknown ram flags 0x${flags.toString(16)}`, at);
      if (flags === RAM.EOS) return;
      if (flags & RAM.MEM_SIZE) {
        if (!setup || this.blocks.length > 0 || flags !== RAM.MEM_SIZE) inp.fail('CORRUPT', 'ram block list out of place', at);
        let total = addr;
        let offset = 0;
        while (total > 0n) {
          const bat = inp.offset;
          const id = inp.str8();
          const len = inp.be64();
          if (len > total || len === 0n || this.byId.has(id)) inp.fail('CORRUPT', `ram block ${id} of ${len} bytes`, bat);
          total -= len;
          const b: RamBlockLayout = { id, length: Number(len), offset };
          offset += this.roundUp(b.length);
          if (offset / ps > 2 ** 31) inp.fail('LIMIT', 'ram blocks over 2^31 pages', bat);
          this.blocks.push(b);
          this.byId.set(id, b);
        }
        if (this.blocks.length === 0) inp.fail('CORRUPT', 'empty ram block list', at);
        // Precopy sends every page at least once (a zero page is a 9-byte record): a block list
        // declaring far more RAM than the stream could hold is corrupt, and would cost index memory.
        const maxPages = Math.max(this.size / 8, 1 << 18);
        if (offset / ps > maxPages) inp.fail('CORRUPT', `ram blocks of ${offset} bytes in a ${this.size}-byte stream`, at);
        continue;
      }
      if ((flags & (RAM.ZERO | RAM.PAGE)) === 0 || (flags & RAM.ZERO && flags & RAM.PAGE)) inp.fail('CORRUPT', `ram record with flags 0x${flags.toString(16)}`, at);
      let block: RamBlockLayout | undefined;
      if (flags & RAM.CONTINUE) {
        block = this.lastBlock;
        if (!block) inp.fail('CORRUPT', 'RAM_SAVE_FLAG_CONTINUE with no block before', at);
      } else {
        const id = inp.str8();
        block = this.byId.get(id);
        if (!block) inp.fail('CORRUPT', `page of unknown ram block ${JSON.stringify(id)}`, at);
        this.lastBlock = block;
      }
      if (addr >= BigInt(block.length)) inp.fail('CORRUPT', `page at 0x${addr.toString(16)} past ram block ${block.id}`, at);
      if (!this.writer) inp.fail('CORRUPT', 'page before the ram setup', at);
      const page = (block.offset + Number(addr)) / ps;
      if (this.pendCount === PAGE_WINDOW || (this.pendCount > 0 && page !== this.pendFirst + this.pendCount)) await this.flush();
      if (this.pendCount === 0) this.pendFirst = page;
      const dst = this.pend.subarray(this.pendCount * ps, (this.pendCount + 1) * ps);
      if (flags & RAM.ZERO) dst.fill(inp.u8());
      else dst.set(inp.bytes(ps));
      this.pendCount++;
      this.pageRecords++;
    }
  }

  private async flush(): Promise<void> {
    if (this.pendCount === 0 || !this.writer) return;
    const n = this.pendCount;
    this.pendCount = 0;
    await this.writer.writePages(this.pendFirst, this.pend.subarray(0, n * this.pageSize));
  }
}
