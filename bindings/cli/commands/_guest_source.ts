/**
 * The guest memory the `pagetable` commands walk: a raw image (`pmemsave`)
 * with `--cr3`/`--mode` given, or a vmkit checkpoint imported from a QEMU VM
 * (`vmkit checkpoint import`), whose metadata gives the paging mode and root
 * (CR3; 4- or 5-level by CR4.LA57, NXE from EFER) and whose pages are read
 * lazily, one page record at a time.
 * @module
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { VmkitError } from '../../errors.js';
import { CheckpointReader } from '../../memory/checkpoint/reader.js';
import { readStateMeta, type MachineStateMeta } from '../../memory/checkpoint/qemu/state.js';
import type { AddressSpaceOptions } from '../../memory/paging/types.js';
import type { GuestMemorySource } from '../../memory/types.js';
import { _imageMemory } from './_raw_image.js';

/** Decoded checkpoint pages kept (page tables cluster). */
const CACHE_PAGES = 256;
/** pc.ram offsets are guest-physical addresses only below the PCI hole (q35: 2 GiB). */
const MAX_LOW_RAM = 0x8000_0000;

export function _isCheckpoint(path: string): boolean {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return false; // the raw-image path reports the error
  }
  try {
    const b = new Uint8Array(8);
    return readSync(fd, b, 0, 8, 0) === 8 && Buffer.from(b).toString('latin1') === 'VMKITCKP';
  } finally {
    closeSync(fd);
  }
}

/**
 * The paging options of vCPU `cpu` (default 0) of an imported VM: long mode
 * required (CR0.PG, EFER.LMA), 5-level when CR4.LA57, root = CR3's frame,
 * NXE from EFER; and the bytes of `pc.ram` that are guest-physical addresses.
 * @example
 * ```ts
 * const { opts } = _pagingOf(await readStateMeta(reader), '0');
 * ```
 */
export function _pagingOf(meta: MachineStateMeta, cpuArg: unknown): { opts: AddressSpaceOptions; ramSize: bigint | undefined } {
  const idx = cpuArg === undefined ? 0 : Number(cpuArg);
  const cpu = meta.cpus.find((c) => c.index === idx);
  if (!cpu || !cpu.cr3) throw new VmkitError('ARG_RANGE', `the checkpoint has no paging registers for vCPU ${String(cpuArg ?? 0)}`);
  const cr0 = BigInt(cpu.cr0);
  const cr4 = BigInt(cpu.cr4);
  const efer = BigInt(cpu.efer);
  // CR0.PG (31) and EFER.LMA (10): long mode; CR4.LA57 (12): 5-level.
  if (!((cr0 >> 31n) & 1n) || !((efer >> 10n) & 1n)) {
    throw new VmkitError('UNSUPPORTED', `vCPU ${idx} is not in long mode (CR0=${cpu.cr0}, EFER=${cpu.efer}): no 4- or 5-level page tables to walk`);
  }
  const opts: AddressSpaceOptions = { mode: (cr4 >> 12n) & 1n ? 'x86-64-5level' : 'x86-64', root: BigInt(cpu.cr3) & 0x000f_ffff_ffff_f000n };
  if (!((efer >> 11n) & 1n)) opts.nxe = false;
  const ram = meta.blocks[0];
  let ramSize: bigint | undefined;
  if (ram && ram.offset === 0) {
    if (ram.length > MAX_LOW_RAM) throw new VmkitError('UNSUPPORTED', `${ram.id} of ${ram.length} bytes reaches above the PCI hole: its offsets are not guest-physical addresses`);
    ramSize = BigInt(ram.length);
  }
  return { opts, ramSize };
}

/**
 * The paging options of an imported VM's checkpoint at `path` (see {@link _pagingOf}).
 * @example
 * ```ts
 * const { opts } = await _checkpointPaging('vm.ckpt', undefined);
 * ```
 */
export async function _checkpointPaging(path: string, cpuArg: unknown): Promise<{ opts: AddressSpaceOptions; ramSize: bigint | undefined }> {
  const r = await CheckpointReader.open(path);
  try {
    return _pagingOf(await readStateMeta(r), cpuArg);
  } finally {
    await r.close();
  }
}

/**
 * Opens `path` as walkable guest memory. For a checkpoint without `--cr3`,
 * the options come from vCPU `cpu` (default 0) of its machine state.
 * @example
 * ```ts
 * const { memory, opts } = await _openGuest('vm.ckpt', values, _options);
 * ```
 */
export async function _openGuest(
  path: string,
  values: Record<string, string | boolean | string[] | undefined>,
  fromFlags: (values: Record<string, string | boolean | string[] | undefined>) => AddressSpaceOptions,
): Promise<{ memory: GuestMemorySource & { close(): void }; opts: AddressSpaceOptions }> {
  if (!_isCheckpoint(path)) return { memory: _imageMemory(path), opts: fromFlags(values) };
  const r = await CheckpointReader.open(path);
  try {
    let opts: AddressSpaceOptions;
    let size = r.guestSize;
    const meta = r.stateSection || r.parent ? await readStateMeta(r).catch(() => undefined) : undefined;
    if (values.cr3 !== undefined || !meta) {
      if (values.cr3 === undefined) throw new VmkitError('ARG_RANGE', `${path} holds no vCPU state (not imported from a VM): give --cr3 and --mode`);
      opts = fromFlags(values);
    } else {
      if (values.mode !== undefined) throw new VmkitError('ARG_RANGE', '--mode comes from the checkpoint (CR4.LA57); give --cr3 too to override it');
      const p = _pagingOf(meta, values.cpu);
      opts = p.opts;
      if (p.ramSize !== undefined) size = p.ramSize;
    }
    const ps = r.pageSize;
    const cache = new Map<number, Uint8Array>();
    const page = (p: number): Uint8Array => {
      let b = cache.get(p);
      if (b) {
        cache.delete(p);
        cache.set(p, b);
        return b;
      }
      b = new Uint8Array(ps);
      r.readPagesIntoSync(p, 1, b);
      if (cache.size >= CACHE_PAGES) cache.delete(cache.keys().next().value!);
      cache.set(p, b);
      return b;
    };
    const memory = {
      size,
      readSync(at: bigint, dst: Uint8Array): void {
        let a = Number(at);
        for (let done = 0; done < dst.length; ) {
          const p = Math.floor(a / ps);
          const o = a - p * ps;
          const k = Math.min(ps - o, dst.length - done);
          dst.set(page(p).subarray(o, o + k), done);
          done += k;
          a += k;
        }
      },
      close(): void {
        void r.close();
      },
    };
    return { memory: memory as GuestMemorySource & { close(): void }, opts };
  } catch (e) {
    await r.close();
    throw e;
  }
}
