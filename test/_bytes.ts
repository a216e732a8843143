// Reading a file a spec needs, in Node and in Chromium alike: a `file:` URL
// through node:fs (imported only then, so the browser bundle never needs it),
// anything else through fetch (Vite serves the tree).

/** The bytes at `url`. */
export async function bytesOf(url: URL): Promise<ArrayBuffer> {
  if (url.protocol === 'file:') {
    const fs = await import('node:fs/promises');
    const b = await fs.readFile(url);
    return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
  }
  return (await fetch(url)).arrayBuffer();
}
