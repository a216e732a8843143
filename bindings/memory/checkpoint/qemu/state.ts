/**
 * The machine state of a checkpoint imported from a VM: what
 * `importQemuMigration` learnt from QEMU's stream (RAM block layout, machine
 * type, each vCPU's paging registers), read from the checkpoint's
 * machine-state section (docs/checkpoint-format.md, "Machine state").
 * @module
 */
import { VmkitError } from '../../../errors.js';
import { CheckpointReader } from '../reader.js';
import { CHUNK_META, encodeChunk, stateOwner, walkState } from './_state.js';

/**
 * One RAM block of the stream and where its pages lie in the checkpoint.
 * @example
 * ```ts
 * const b: RamBlockLayout = { id: 'pc.ram', length: 256 << 20, offset: 0 };
 * ```
 */
export interface RamBlockLayout {
  /** QEMU's RAMBlock idstr ("pc.ram", "vga.vram", "/rom@etc/acpi/tables"…). */
  id: string;
  /** used_length in bytes. */
  length: number;
  /** Byte offset of the block's first page in the checkpoint's page space. */
  offset: number;
}

/**
 * A vCPU's paging registers (x86), as hex strings ("0x…").
 * @example
 * ```ts
 * const c: CpuPaging = { index: 0, cr0: '0x80050033', cr3: '0x1a0a000', cr4: '0x3606f0', efer: '0xd01' };
 * ```
 */
export interface CpuPaging {
  index: number;
  cr0: string;
  cr3: string;
  cr4: string;
  efer: string;
}

/**
 * The metadata chunk: what `import` learnt from the stream.
 * @example
 * ```ts
 * const m: MachineStateMeta = await readStateMeta(reader);
 * ```
 */
export interface MachineStateMeta {
  source: 'qemu-migration';
  /** The configuration section's machine type ("pc-i440fx-7.2"), '' when none. */
  machine: string;
  /** QEMU's target page size (vmdesc page_size). */
  pageSize: number;
  ramSectionId: number;
  blocks: RamBlockLayout[];
  cpus: CpuPaging[];
}

/**
 * The machine state of a checkpoint imported from a VM (`vmkit checkpoint
 * import`), from its own machine-state section or, for a diff checkpoint
 * without one, its nearest parent's. `checkpoint` is a path (opened and
 * closed here) or an open reader.
 * @example
 * ```ts
 * const { cpus, blocks } = await readStateMeta('vm.ckpt');
 * console.log(cpus[0]?.cr3, blocks.map((b) => b.id));
 * ```
 * @throws {VmkitError} NOT_FOUND: a checkpoint not imported from a VM; CORRUPT / INTEGRITY: a damaged section.
 */
export async function readStateMeta(checkpoint: CheckpointReader | string): Promise<MachineStateMeta> {
  if (typeof checkpoint === 'string') {
    const r = await CheckpointReader.open(checkpoint);
    try {
      return await readStateMeta(r);
    } finally {
      await r.close();
    }
  }
  if (!(checkpoint instanceof CheckpointReader)) throw new VmkitError('ARG_TYPE', 'checkpoint must be a path or a CheckpointReader');
  const owner = stateOwner(checkpoint);
  if (!owner) throw new VmkitError('NOT_FOUND', 'checkpoint has no machine-state section (not imported from a VM)');
  let meta: MachineStateMeta | undefined;
  await walkState(owner, (kind, payload) => {
    if (kind !== CHUNK_META) return;
    try {
      meta = JSON.parse(new TextDecoder().decode(payload)) as MachineStateMeta;
    } catch (e) {
      throw new VmkitError('CORRUPT', 'checkpoint machine-state metadata is not JSON', { cause: e });
    }
  });
  if (!meta || !Array.isArray(meta.blocks) || !Array.isArray(meta.cpus) || typeof meta.pageSize !== 'number') {
    throw new VmkitError('CORRUPT', 'checkpoint machine-state section has no metadata');
  }
  for (const b of meta.blocks) {
    if (!b || typeof b.id !== 'string' || !Number.isSafeInteger(b.length) || !Number.isSafeInteger(b.offset) || b.length <= 0 || b.offset < 0) {
      throw new VmkitError('CORRUPT', 'checkpoint machine-state metadata: a ram block without id/length/offset');
    }
  }
  return meta;
}

/**
 * The metadata chunk's bytes (the section's JSON), for the importer.
 * @example
 * ```ts
 * await writer.appendState(_encodeMeta(meta));
 * ```
 */
export function _encodeMeta(meta: MachineStateMeta): Uint8Array {
  return encodeChunk(CHUNK_META, new TextEncoder().encode(JSON.stringify(meta)));
}
