// SigV4 signing of the remote reader's requests (httpSource's `sigv4`), in
// Node and in Chromium: the signer against AWS's documented S3 example (GET
// Object with a Range, from "Signature Calculations for the Authorization
// Header"), and a signed open and restore through a server that refuses
// unsigned requests (with CORS letting the browser send the signing headers).
// test/checkpoint-sigv4.node.test.ts checks real requests' signatures with
// botocore, AWS's own Python SDK.
import { describe, expect, inject, it } from 'vitest';
import { CheckpointReader, CheckpointWriter, httpSource, memorySink, VmkitError } from '../bindings/memory/index.js';
import { _sigv4Signer } from '../bindings/memory/checkpoint/_sigv4.js';

const base = inject('remoteCheckpointServer');

// AWS's example credentials and request (docs: sig-v4-header-based-auth, "Example: GET Object").
const AWS_EXAMPLE = { accessKeyId: 'AKIAIOSFODNN7EXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY', region: 'us-east-1' };
const AWS_EXAMPLE_AUTH =
  'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41';

describe('remote checkpoints: SigV4 signing', () => {
  it("reproduces AWS's documented S3 GET Object signature", async () => {
    const sign = await _sigv4Signer(AWS_EXAMPLE);
    const h = await sign('https://examplebucket.s3.amazonaws.com/test.txt', { Range: 'bytes=0-9' }, '20130524T000000Z');
    // aws4fetch separates the three parts with ", ", the example with "," (AWS accepts both).
    expect(h['authorization']!.replaceAll(', ', ',')).toBe(AWS_EXAMPLE_AUTH);
    expect(h['x-amz-date']).toBe('20130524T000000Z');
    expect(h['x-amz-content-sha256']).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
    // Another byte range, another key, another second: another signature.
    const other = [
      await sign('https://examplebucket.s3.amazonaws.com/test.txt', { Range: 'bytes=0-10' }, '20130524T000000Z'),
      await (await _sigv4Signer({ ...AWS_EXAMPLE, secretAccessKey: 'x' + AWS_EXAMPLE.secretAccessKey.slice(1) }))('https://examplebucket.s3.amazonaws.com/test.txt', { Range: 'bytes=0-9' }, '20130524T000000Z'),
      await sign('https://examplebucket.s3.amazonaws.com/test.txt', { Range: 'bytes=0-9' }, '20130524T000001Z'),
    ];
    for (const o of other) expect(o['authorization']!.replaceAll(', ', ',')).not.toBe(AWS_EXAMPLE_AUTH);
  });

  it('bad credentials are ARG_TYPE, naming the field', async () => {
    for (const [c, field] of [
      [{ secretAccessKey: 's' }, 'accessKeyId'],
      [{ accessKeyId: 'a', secretAccessKey: '' }, 'secretAccessKey'],
      [{ accessKeyId: 'a', secretAccessKey: 's', region: 5 }, 'region'],
    ] as const) {
      const e = await httpSource(`${base}/none.ckpt`, { sigv4: c as never }).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(VmkitError);
      expect((e as VmkitError).code).toBe('ARG_TYPE');
      expect((e as VmkitError).message).toContain(`sigv4.${field}`);
    }
  });

  it('a signed open and restore through a server that refuses unsigned requests', async () => {
    const mem = new Uint8Array(256 * 4096);
    for (let i = 0; i < mem.length; i += 97) mem[i] = i & 0xff;
    const sink = memorySink();
    const w = await CheckpointWriter.create(sink, { guestSize: mem.length });
    await w.writePages(0, mem);
    await w.finish();
    const path = `/s-${Math.random().toString(36).slice(2)}.ckpt`;
    expect((await fetch(`${base}${path}`, { method: 'PUT', body: sink.bytes() as Uint8Array<ArrayBuffer> })).status).toBe(201);
    const url = `${base}${path}?auth=sigv4`;
    const e = await CheckpointReader.open(url).catch((x: unknown) => x);
    expect((e as VmkitError).code).toBe('REFUSED');
    const r = await CheckpointReader.open(url, { http: { sigv4: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' }, suffixBytes: 4096 } });
    const out = new Uint8Array(mem.length);
    await r.restoreTo(out);
    expect(out).toEqual(mem);
    await r.close();
  });
});
