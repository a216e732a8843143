// Remote writing in Node and in Chromium: a checkpoint saved straight to the
// server the test run starts (test/_remote-server.ts: PUT and Range GET, CORS)
// as parts and a manifest (httpPartsSink), then read back through the parts
// (httpPartsSource) page for page, and its joined parts against a checkpoint
// saved to memory.
import { describe, expect, inject, it } from 'vitest';
import { guestImage } from './_guest-image.js';
import { CheckpointReader, CheckpointWriter, httpPartsSink, httpPartsSource, memorySource } from '../bindings/memory/index.js';

const PS = 4096;
const base = inject('remoteCheckpointServer');

describe('a checkpoint written to a server as parts and a manifest', () => {
  it('uploads while saving, publishes the manifest, and reads back exactly through the parts', async () => {
    const mem = guestImage(512, 3);
    const url = `${base}/parts/${Math.random().toString(36).slice(2)}.ckpt`;
    const sink = httpPartsSink(url, { partBytes: 64 << 10 });
    const w = await CheckpointWriter.create(sink, { guestSize: mem.length, blockSize: 64 << 10 });
    await w.writePages(0, mem);
    const st = await w.finish();
    expect(sink.uploaded).toMatchObject({ published: true, parts: Math.ceil(st.fileBytes / (64 << 10)), bytes: st.fileBytes });
    const manifest = await (await fetch(url)).json();
    expect(manifest).toMatchObject({ format: 'vmkit-checkpoint-parts 1', size: st.fileBytes, partBytes: 64 << 10 });
    // The joined parts are a checkpoint the local reader opens.
    const joined = new Uint8Array(st.fileBytes);
    for (const [i, p] of (manifest.parts as { name: string; size: number }[]).entries()) {
      const b = new Uint8Array(await (await fetch(`${url}.parts/${p.name}`)).arrayBuffer());
      expect(b.length).toBe(p.size);
      joined.set(b, i * (64 << 10));
    }
    const local = await CheckpointReader.open(memorySource(joined));
    const remote = await CheckpointReader.open(await httpPartsSource(url));
    expect(remote.info()).toEqual(local.info());
    const got = new Uint8Array(mem.length);
    await remote.readPagesInto(0, 512, got);
    expect(got).toEqual(mem);
    for (const p of [0, 15, 16, 17, 255, 511]) expect(await remote.readPage(p)).toEqual(mem.subarray(p * PS, (p + 1) * PS));
    await remote.close();
    await local.close();
  });
});
