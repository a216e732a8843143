/**
 * `vmkit prefetch simulate`: replay a trace of guest-virtual addresses
 * against a guest memory image restored lazily, under one prefetch policy,
 * and report faults, prefetched pages, hits, waste and reads
 * (docs/prefetch.md). The guest's own page tables are walked through an
 * {@link AddressSpace} (the core's walker), as a restore would.
 *
 * Trace formats, detected per line: one hex guest-virtual address (`0x`
 * optional), or valgrind lackey's `--trace-mem=yes` lines
 * (`I  0401ab70,3`, ` L 1fff000778,8`, ` S …`, ` M …`); `==pid==` lines,
 * blank lines and `#` comments are skipped.
 * @module
 */
import { closeSync, openSync, readSync, writeFileSync } from 'node:fs';
import { VmkitError } from '../../errors.js';
import { CheckpointReader } from '../../memory/checkpoint/reader.js';
import { AddressSpace } from '../../memory/paging/address-space.js';
import { PAGING_MODES, type PagingMode } from '../../memory/paging/types.js';
import { PrefetchEngine } from '../../memory/prefetch/engine.js';
import { POLICY_NAMES, createPolicy, type PolicyName } from '../../memory/prefetch/policies.js';
import { simulate } from '../../memory/prefetch/simulate.js';
import type { Gpa, GuestMemorySource } from '../../memory/types.js';
import { emit, parse, parseU64, type CliIO, type Command } from '../_common.js';
import { _imageMemory, _openRead } from './_raw_image.js';
import { _checkpointPaging, _isCheckpoint } from './_guest_source.js';

/** A checkpoint as the walker's memory (pages through the reader's block cache) and its blocks. */
async function checkpointMemory(path: string): Promise<GuestMemorySource & { close(): void; blockOf(page: number): number }> {
  const r = await CheckpointReader.open(path);
  const ps = r.pageSize;
  const page = new Uint8Array(ps);
  return {
    size: BigInt(r.pageCount) * BigInt(ps),
    readSync(at: Gpa, dst: Uint8Array): void {
      // The walker reads 4 KiB table frames; read whole pages and copy the part asked for.
      for (let done = 0; done < dst.length; ) {
        const a = Number(at) + done;
        const p = Math.floor(a / ps);
        const off = a - p * ps;
        const n = Math.min(ps - off, dst.length - done);
        r.readPagesIntoSync(p, 1, page);
        dst.set(page.subarray(off, off + n), done);
        done += n;
      }
    },
    blockOf: (p: number) => r.blockOf(p),
    close: () => void r.close(),
  };
}

async function isCheckpoint(path: string): Promise<boolean> {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return false; // _imageMemory reports why
  }
  try {
    const magic = Buffer.alloc(8);
    return readSync(fd, magic, 0, 8, 0) === 8 && magic.toString('latin1') === 'VMKITCKP';
  } finally {
    closeSync(fd);
  }
}

/**
 * Parses a trace file lazily: guest-virtual addresses, one per line, hex or
 * lackey. A line that is neither throws CORRUPT naming the line.
 */
function* traceOf(path: string): Generator<bigint> {
  const fd = _openRead(path);
  const buf = Buffer.alloc(1 << 20);
  let tail = '';
  let line = 0;
  const one = (s: string): bigint | undefined => {
    line++;
    const t = s.trimEnd();
    if (t === '' || t.startsWith('==') || t.startsWith('#') || t.startsWith('--')) return undefined;
    // lackey: "I  addr,size" or " L addr,size" (S, M too)
    const m = /^(?:I {2}| [LSM] )([0-9a-fA-F]+),\d+$/.exec(t) ?? /^\s*(?:0x)?([0-9a-fA-F]+)$/.exec(t);
    if (!m) throw new VmkitError('CORRUPT', `${path}:${line}: not a hex address or a lackey line: ${JSON.stringify(t.slice(0, 80))}`, { path });
    const v = BigInt('0x' + m[1]!);
    if (v > 0xffff_ffff_ffff_ffffn) throw new VmkitError('CORRUPT', `${path}:${line}: address does not fit in 64 bits`, { path });
    return v;
  };
  try {
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      const text = tail + buf.toString('latin1', 0, n);
      const lines = text.split('\n');
      tail = lines.pop()!;
      for (const l of lines) {
        const v = one(l);
        if (v !== undefined) yield v;
      }
    }
    const v = one(tail);
    if (v !== undefined) yield v;
  } finally {
    closeSync(fd);
  }
}

function readRecord(path: string): number[] {
  const frames: number[] = [];
  let i = 0;
  for (const v of traceOf(path)) {
    i++;
    if (v > 0xffff_ffffn) throw new VmkitError('CORRUPT', `${path}: record entry ${i} is not a frame number: 0x${v.toString(16)}`, { path });
    frames.push(Number(v));
  }
  return frames;
}

function int(v: unknown, name: string, dflt: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (typeof v !== 'string' || !/^\d+$/.test(v) || n > 32767) throw new VmkitError('ARG_RANGE', `${name} must be an integer in [0, 32767], got ${JSON.stringify(v)}`);
  return n;
}

async function simulateCmd(argv: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(argv, {
    cr3: { type: 'string' },
    mode: { type: 'string' },
    trace: { type: 'string' },
    policy: { type: 'string' },
    back: { type: 'string' },
    ahead: { type: 'string' },
    record: { type: 'string' },
    translate: { type: 'string' },
    json: { type: 'boolean' },
  });
  const [image, ...extra] = positionals;
  if (!image || extra.length > 0) throw new VmkitError('ARG_RANGE', `prefetch simulate takes one <memory-image>; see vmkit prefetch --help`);
  // A checkpoint imported from a VM gives CR3 and the mode itself (vCPU 0).
  const fromVm = values.cr3 === undefined && values.mode === undefined && _isCheckpoint(image) ? await _checkpointPaging(image, undefined) : undefined;
  const cr3 = fromVm ? fromVm.opts.root : parseU64(values.cr3 as string | undefined, '--cr3');
  const mode = fromVm ? fromVm.opts.mode : ((values.mode as string | undefined) ?? 'x86-64');
  if (!PAGING_MODES.includes(mode as PagingMode)) throw new VmkitError('ARG_RANGE', `--mode must be one of ${PAGING_MODES.join(', ')}, got ${JSON.stringify(mode)}`);
  const tracePath = values.trace as string | undefined;
  if (!tracePath) throw new VmkitError('ARG_RANGE', '--trace is required');
  const policyName = values.policy as string | undefined;
  if (!policyName || !(POLICY_NAMES as readonly string[]).includes(policyName)) throw new VmkitError('ARG_RANGE', `--policy must be one of ${POLICY_NAMES.join(', ')}, got ${JSON.stringify(policyName)}`);
  const back = int(values.back, '--back', 8);
  const ahead = int(values.ahead, '--ahead', 8);
  const translate = (values.translate as string | undefined) ?? 'walk';
  if (translate !== 'walk' && translate !== 'table') throw new VmkitError('ARG_RANGE', `--translate must be walk or table, got ${JSON.stringify(translate)}`);
  const recordPath = values.record as string | undefined;
  const replay = policyName.startsWith('replay');
  if (replay && !recordPath) throw new VmkitError('ARG_RANGE', `--policy ${policyName} needs --record <file> (the recorded working set)`);
  const record = replay ? readRecord(recordPath!) : undefined;

  const ckpt = await isCheckpoint(image);
  const mem: GuestMemorySource & { close(): void; blockOf?: (page: number) => number } = ckpt ? await checkpointMemory(image) : _imageMemory(image);
  let space: AddressSpace | undefined;
  let engine: PrefetchEngine | undefined;
  try {
    const pages = Number(mem.size / 4096n);
    if (pages === 0) throw new VmkitError('ARG_RANGE', `${image}: the image holds no whole page`);
    space = AddressSpace.create({ memory: mem, mode: mode as PagingMode, root: cr3 });
    if (translate === 'table') {
      // One walk of every mapping (4 KiB granules; large pages expanded) into the core's table.
      const pairs: [bigint, number][] = [];
      for (const m of space.mappings()) {
        for (let off = 0n; off < BigInt(m.pageSize); off += 4096n) {
          const f = (m.gpa + off) >> 12n;
          if (f < BigInt(pages)) pairs.push([(m.gva + off) >> 12n, Number(f)]);
        }
      }
      engine = new PrefetchEngine(pages, { mapCapacity: Math.max(1, pairs.length), ...(mem.blockOf ? { blockOf: mem.blockOf } : {}) });
      engine.map(pairs);
    } else {
      engine = new PrefetchEngine(pages, { translator: space, ...(mem.blockOf ? { blockOf: mem.blockOf } : {}) });
    }
    const policy = createPolicy(policyName as PolicyName, { back, ahead, ...(record ? { record } : {}) });
    const r = simulate(engine, policy, traceOf(tracePath));
    const st = space.stats();
    const ptReads = translate === 'walk' ? st.framesRead : r.pageTableReads;
    if (recordPath && !replay) writeFileSync(recordPath, r.workingSet.map((f) => f.toString(16)).join('\n') + '\n');
    const out = {
      policy: policyName,
      back,
      ahead,
      accesses: r.accesses,
      faults: r.faults,
      prefetched: r.prefetched,
      prefetchHits: r.prefetchHits,
      wasted: r.wasted,
      reads: r.reads,
      bytesRead: r.bytesRead,
      ptReads,
      unmapped: r.unmapped,
      loaded: r.loaded,
      translations: r.translations,
      workingSet: r.workingSet.length,
    };
    emit(io, values.json as boolean | undefined, out, () =>
      [
        `policy ${policyName}${policyName === 'none' || policyName === 'replay' ? '' : ` (back ${back}, ahead ${ahead})`}`,
        `accesses      ${out.accesses} (${out.unmapped} unmapped)`,
        `faults        ${out.faults}`,
        `prefetched    ${out.prefetched} (${out.prefetchHits} used, ${out.wasted} wasted)`,
        `reads         ${out.reads} (${out.bytesRead} bytes, ${out.loaded} pages)`,
        `page tables   ${out.ptReads} table pages read, ${out.translations} neighbour translations`,
        `working set   ${out.workingSet} pages${recordPath && !replay ? ` (written to ${recordPath})` : ''}`,
      ].join('\n'),
    );
    return 0;
  } finally {
    engine?.close();
    space?.dispose();
    mem.close();
  }
}

/**
 * The `vmkit prefetch` command group (help: help/prefetch.ts).
 * @example
 * await command.run.simulate!(['mem.raw', '--cr3', '0x1000', '--trace', 't.txt', '--policy', 'virtual'], process);
 */
export const command: Command = { run: { simulate: simulateCmd } };
