/**
 * The QEMU migration stream parser (QEMU 7.2: migration/savevm.c,
 * migration/ram.c, vmstate.c; docs/checkpoint-format.md, "QEMU migration
 * stream"), in two phases so a pipe can be parsed in one pass:
 * 1. sequentially, from the header to the first device section: the
 *    configuration, the ram section's setup (block list) and its page
 *    records, handed to a page sink in runs;
 * 2. over the stream's tail (device sections, QEMU_VM_EOF, the vmdesc),
 *    read by position once the vmdesc at its very end is known: device
 *    sections are not self-delimiting, the vmdesc gives their sizes, and the
 *    "cpu" sections give each vCPU's paging registers.
 * @module
 */
import type { _StreamInput } from './_input.js';
import { devicesByKey, fieldOffsets, vmsdBytes, type Vmdesc } from './_vmdesc.js';
import type { CpuPaging, RamBlockLayout } from './state.js';
import { RAM, SEC, STREAM_MAGIC, STREAM_VERSION } from './_wire.js';

/** Largest stream prefix (header, configuration, RAM setup) kept: it must stay in the first window. */
export const MAX_PREFIX: number = 512 << 10;
/** Bytes of a CPU section read for its paging registers. */
const MAX_CPU_SECTION = 1 << 20;
/** Pages gathered before the sink is called. */
const PAGE_WINDOW = 256;
const CPU_FIELDS = ['env.cr[0]', 'env.cr[3]', 'env.cr[4]', 'env.efer'] as const;

const hex = (v: bigint): string => `0x${v.toString(16)}`;

/**
 * Where phase 1 ended and what it found.
 * @example
 * ```ts
 * const head = await p.ram(sink); // then p.tail(…, head.suffixStart, …)
 * ```
 */
export interface _RamPhase {
  machine: string;
  ramId: number;
  blocks: RamBlockLayout[];
  /** Bytes of the stream up to the end of the ram setup (kept verbatim). */
  prefix: Uint8Array;
  /** Stream offset of the first device section (or of QEMU_VM_EOF). */
  suffixStart: number;
  pageRecords: number;
}

/**
 * Receives the ram section's pages: `open` once the block list is known
 * (guest bytes, page size), then `pages` with runs of consecutive pages.
 * @example
 * ```ts
 * const sink: _PageSink = { open: async (n, ps) => {}, pages: async (first, data) => {} };
 * ```
 */
export interface _PageSink {
  open(guestSize: bigint, pageSize: number): Promise<void>;
  pages(first: number, data: Uint8Array): Promise<void>;
}

/**
 * The two-phase parser.
 * @example
 * ```ts
 * const p = new _Parser(4096, Infinity, 64n << 30n);
 * const head = await p.ram(new _StreamInput(readAt, Infinity), sink);
 * const cpus = p.tail(new _StreamInput(readTail, size, head.suffixStart), desc);
 * ```
 */
export class _Parser {
  private machine = '';
  private ramId = -1;
  private blocks: RamBlockLayout[] = [];
  private byId = new Map<string, RamBlockLayout>();
  private pageRecords = 0;
  private sink: _PageSink | undefined;
  private opened = false;
  private readonly pend: Uint8Array;
  private pendFirst = 0;
  private pendCount = 0;
  private lastBlock: RamBlockLayout | undefined;

  private readonly pageSize: number;
  /** Stream bytes (Infinity for a pipe): bounds the RAM a block list may declare. */
  private readonly size: number;
  private readonly maxGuest: bigint;

  constructor(pageSize: number, size: number, maxGuestBytes: bigint) {
    this.pageSize = pageSize;
    this.size = size;
    this.maxGuest = maxGuestBytes;
    this.pend = new Uint8Array(PAGE_WINDOW * pageSize);
  }

  /** Phase 1: the header to the first device section (not consumed); `limit`: where the vmdesc starts, when known. */
  async ram(inp: _StreamInput, sink: _PageSink, limit: number = Infinity): Promise<_RamPhase> {
    this.sink = sink;
    inp.where = 'header';
    if (inp.be32() !== STREAM_MAGIC) inp.fail('CORRUPT', 'not a QEMU migration stream (bad magic)', 0);
    const version = inp.be32();
    if (version !== STREAM_VERSION) inp.fail('UNSUPPORTED', `stream version ${version} (only ${STREAM_VERSION})`, 4);
    let sections = 0;
    let prefix: Uint8Array | undefined;
    for (;;) {
      const at = inp.offset;
      if (at >= limit) inp.fail('CORRUPT', 'the stream reaches its vmdesc without QEMU_VM_EOF');
      inp.where = `section type at ${at}`;
      const type = inp.peek8();
      if (type < 0) inp.fail('CORRUPT', 'truncated: the stream ends before QEMU_VM_EOF');
      if (type === SEC.FULL || type === SEC.EOF) {
        if (this.ramId < 0) inp.fail('CORRUPT', type === SEC.EOF ? 'the stream has no RAM section' : 'device section before the ram section', at);
        await this.flush();
        return { machine: this.machine, ramId: this.ramId, blocks: this.blocks, prefix: prefix!, suffixStart: at, pageRecords: this.pageRecords };
      }
      inp.u8();
      if (type === SEC.CONFIGURATION) {
        if (sections > 0) inp.fail('CORRUPT', 'configuration section after other sections', at);
        this.configuration(inp);
        sections++;
        continue;
      }
      sections++;
      if (type === SEC.START) {
        const id = inp.be32();
        const name = inp.str8();
        const instance = inp.be32();
        const ver = inp.be32();
        inp.where = `section ${name} (id ${id}, instance ${instance}) at ${at}`;
        if (name !== 'ram') inp.fail('UNSUPPORTED', `iterable section ${name} (block migration, dirty bitmaps…)`, at);
        if (this.ramId >= 0) inp.fail('CORRUPT', 'a second ram section', at);
        if (ver !== 4) inp.fail('UNSUPPORTED', `ram section version ${ver} (only 4)`, at);
        this.ramId = id;
        await this.ramPages(inp, true);
        footer(inp, id);
        if (inp.offset > MAX_PREFIX) inp.fail('LIMIT', `stream prefix over ${MAX_PREFIX} bytes`);
        prefix = inp.head(inp.offset).slice();
        continue;
      }
      if (type === SEC.PART || type === SEC.END) {
        const id = inp.be32();
        inp.where = `section ram (id ${id}) ${type === SEC.PART ? 'part' : 'end'} at ${at}`;
        if (id !== this.ramId) inp.fail('UNSUPPORTED', `part of unknown iterable section ${id}`, at);
        await this.ramPages(inp, false);
        footer(inp, id);
        continue;
      }
      if (type === SEC.COMMAND) inp.fail('UNSUPPORTED', 'QEMU_VM_COMMAND (postcopy, colo, switchover-ack)', at);
      inp.fail('CORRUPT', `unknown section type 0x${type.toString(16)}`, at);
    }
  }

  /**
   * Phase 2: the device sections from `inp` (positioned at the first one)
   * to QEMU_VM_EOF, which must end right where the vmdesc starts. Returns the
   * vCPUs' paging registers.
   */
  tail(inp: _StreamInput, desc: Vmdesc): CpuPaging[] {
    if (desc.pageSize !== this.pageSize) inp.fail('UNSUPPORTED', `vmdesc page_size ${desc.pageSize}, the stream was parsed with ${this.pageSize}`, desc.offset);
    const devices = devicesByKey(desc);
    const cpus: CpuPaging[] = [];
    for (;;) {
      const at = inp.offset;
      if (at >= desc.offset) inp.fail('CORRUPT', 'the stream reaches its vmdesc without QEMU_VM_EOF');
      inp.where = `section type at ${at}`;
      const type = inp.u8();
      if (type === SEC.EOF) {
        if (inp.offset !== desc.offset) inp.fail('CORRUPT', `${desc.offset - inp.offset} bytes between QEMU_VM_EOF and the vmdesc`);
        return cpus;
      }
      if (type === SEC.FULL) {
        const id = inp.be32();
        const name = inp.str8();
        const instance = inp.be32();
        const ver = inp.be32();
        inp.where = `section ${name} (id ${id}, instance ${instance}) at ${at}`;
        const dev = devices.get(`${name}\0${instance}`);
        if (!dev) inp.fail('CORRUPT', 'section not in the vmdesc', at);
        if (dev.version !== ver) inp.fail('CORRUPT', `version ${ver}, the vmdesc says ${dev.version}`, at);
        const len = vmsdBytes(dev);
        if (inp.offset + len > desc.offset) inp.fail('CORRUPT', `section data of ${len} bytes runs past the stream`);
        if (name === 'cpu' && dev.vmsd_name === 'cpu') cpus.push(cpu(inp, dev, instance, len));
        else inp.take(len, () => {});
        footer(inp, id);
        continue;
      }
      if (type === SEC.START) inp.fail('UNSUPPORTED', 'an iterable section after device state', at);
      if (type === SEC.PART || type === SEC.END) {
        const id = inp.be32();
        inp.where = `section ram (id ${id}) ${type === SEC.PART ? 'part' : 'end'} at ${at}`;
        inp.fail('UNSUPPORTED', id === this.ramId ? 'RAM pages after device state (postcopy?)' : `part of unknown iterable section ${id}`, at);
      }
      if (type === SEC.CONFIGURATION) inp.fail('CORRUPT', 'configuration section after other sections', at);
      if (type === SEC.COMMAND) inp.fail('UNSUPPORTED', 'QEMU_VM_COMMAND (postcopy, colo, switchover-ack)', at);
      inp.fail('CORRUPT', `unknown section type 0x${type.toString(16)}`, at);
    }
  }

  private roundUp(n: number): number {
    return Math.ceil(n / this.pageSize) * this.pageSize;
  }

  /** QEMU_VM_CONFIGURATION: vmstate "configuration" (machine type, optional subsections). */
  private configuration(inp: _StreamInput): void {
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

  /** Page records of the ram section until RAM_SAVE_FLAG_EOS (setup: the block list first). */
  private async ramPages(inp: _StreamInput, setup: boolean): Promise<void> {
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
        await this.blockList(inp, addr, at);
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
      if (!this.opened) inp.fail('CORRUPT', 'page before the ram setup', at);
      // Offsets are byte counts in doubles (exact to 2^53): blocks past 4 GiB need no special case.
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

  /** RAM_SAVE_FLAG_MEM_SIZE: `total` bytes of blocks, each a counted id and a be64 length. */
  private async blockList(inp: _StreamInput, total: bigint, at: number): Promise<void> {
    const ps = this.pageSize;
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
    // A pipe's size is unknown: its bound is the caller's maxGuestBytes.
    const maxPages = Math.max(this.size / 8, 1 << 18);
    if (offset / ps > maxPages) inp.fail('CORRUPT', `ram blocks of ${offset} bytes in a ${this.size}-byte stream`, at);
    if (BigInt(offset) > this.maxGuest) inp.fail('LIMIT', `ram blocks of ${offset} bytes, over the ${this.maxGuest}-byte limit (maxGuestBytes)`, at);
    await this.sink!.open(BigInt(offset), ps);
    this.opened = true;
  }

  private async flush(): Promise<void> {
    if (this.pendCount === 0 || !this.sink) return;
    const n = this.pendCount;
    this.pendCount = 0;
    await this.sink.pages(this.pendFirst, this.pend.subarray(0, n * this.pageSize));
  }
}

function footer(inp: _StreamInput, id: number): void {
  const at = inp.offset;
  if (inp.u8() !== SEC.FOOTER) inp.fail('CORRUPT', 'no section footer where the section should end (or a stream without section footers)', at);
  const fid = inp.be32();
  if (fid !== id) inp.fail('CORRUPT', `section footer names section ${fid}`, at);
}

/** The vCPU's paging registers from its "cpu" section, at the vmdesc's field offsets. */
function cpu(inp: _StreamInput, dev: Parameters<typeof vmsdBytes>[0], instance: number, len: number): CpuPaging {
  const keep = new Uint8Array(Math.min(len, MAX_CPU_SECTION));
  let got = 0;
  inp.take(len, (piece) => {
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
  return { index: instance, cr0: reg('env.cr[0]'), cr3: reg('env.cr[3]'), cr4: reg('env.cr[4]'), efer: reg('env.efer') };
}
