// One ima-ng measurement as the kernel logs it (Node only): the template data (digest with
// its algorithm, path), its SHA-1 template hash, and the ascii line, for specs that write
// their own logs and replay PCR 10 from the entries.
import { createHash } from 'node:crypto';

/** The template data of an ima-ng entry and its ascii line (ending in a newline). */
export function imaNgEntry(alg: 'sha1' | 'sha256', digest: Buffer, path: string): { data: Buffer; line: string } {
  const u32 = (n: number): Buffer => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(n);
    return b;
  };
  const d = Buffer.concat([Buffer.from(`${alg}:\0`), digest]);
  const p = Buffer.from(path + '\0');
  const data = Buffer.concat([u32(d.length), d, u32(p.length), p]);
  return { data, line: `10 ${createHash('sha1').update(data).digest('hex')} ima-ng ${alg}:${digest.toString('hex')} ${path}\n` };
}

/** One sha256 ima-ng line for the digest `hex`, without its newline. */
export function imaNgLine(hex: string, path: string): string {
  return imaNgEntry('sha256', Buffer.from(hex, 'hex'), path).line.slice(0, -1);
}
