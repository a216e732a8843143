// NodeChainOps.remove frees a large file a slice at a time before unlinking it
// (so the journal is not held for one long unlink while a guest fsyncs). A
// file that still has another name must keep every byte: only its last
// name's removal frees the blocks.
import { describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { link, mkdtemp, open, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NodeChainOps } from '../bindings/disk/backup/node.js';

const MiB = 1 << 20;

async function sparse(path: string, size: number, tail: Uint8Array): Promise<void> {
  const fh = await open(path, 'w');
  await fh.truncate(size);
  await fh.write(tail, 0, tail.length, size - tail.length);
  await fh.close();
}

describe('NodeChainOps.remove of large files', () => {
  it('removes a 200 MiB file, and leaves a hard-linked one whole under its other name', async () => {
    const d = await mkdtemp(join(tmpdir(), 'vmkit-remove-'));
    const ops = new NodeChainOps();
    const tail = new Uint8Array(4096).fill(0x5a);
    await sparse(join(d, 'a.img'), 200 * MiB, tail);
    await ops.remove(join(d, 'a.img'));
    expect(existsSync(join(d, 'a.img'))).toBe(false);

    await sparse(join(d, 'b.img'), 200 * MiB, tail);
    await link(join(d, 'b.img'), join(d, 'b.img.vmkit-old'));
    await ops.remove(join(d, 'b.img'));
    expect(existsSync(join(d, 'b.img'))).toBe(false);
    expect((await stat(join(d, 'b.img.vmkit-old'))).size).toBe(200 * MiB);
    const buf = await readFile(join(d, 'b.img.vmkit-old'));
    expect(buf.subarray(200 * MiB - 4096).every((x) => x === 0x5a)).toBe(true);
    await ops.remove(join(d, 'b.img.vmkit-old'));
    expect(existsSync(join(d, 'b.img.vmkit-old'))).toBe(false);
    await ops.remove(join(d, 'absent.img')); // no error when absent
    await rm(d, { recursive: true, force: true });
  });
});
