/**
 * Joining byte arrays and reading a stream whole under a byte limit, shared by
 * every module that collects a body or builds a message from parts (HTTP
 * answers of the attestation client, etcd and repositories; NBD replies).
 * @module
 */

/**
 * The bytes of `parts` in one new array; `total` is their summed length when
 * the caller counted it already.
 * @example `concatBytes([Uint8Array.of(1), Uint8Array.of(2, 3)]) // Uint8Array [1, 2, 3]`
 */
export function concatBytes(parts: readonly Uint8Array[], total?: number): Uint8Array {
  let n = total ?? 0;
  if (total === undefined) for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/**
 * Reads `stream` to its end, at most `max` bytes: past that it cancels the
 * stream and throws what `tooLong()` gives (a LIMIT in the caller's words),
 * so an endless or huge body never fills memory. A body that came in one
 * chunk is returned as it is, not copied.
 * @example
 * ```ts
 * const body = await readCapped(res.body!, 1 << 20, () => new VmkitError('LIMIT', 'answer over 1 MiB'));
 * ```
 */
export async function readCapped(stream: ReadableStream<Uint8Array>, max: number, tooLong: () => Error): Promise<Uint8Array> {
  const reader = stream.getReader();
  const parts: Uint8Array[] = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.length;
    if (n > max) {
      await reader.cancel().catch(() => {});
      throw tooLong();
    }
    parts.push(value);
  }
  return parts.length === 1 ? parts[0]! : concatBytes(parts, n);
}
