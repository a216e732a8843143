/**
 * The receive side of one NBD connection: the bytes a socket delivered, taken
 * in exact-length pieces (`take(n)`), with backpressure: the socket is paused
 * while more than the high-water mark waits unread, so a client that sends
 * faster than the disk can write holds a bounded amount of memory here.
 * @module
 * @internal
 */

/** The part of a Node stream the inbox uses. */
export interface _Readable {
  on(ev: 'data', f: (b: Uint8Array) => void): unknown;
  on(ev: 'end' | 'close', f: () => void): unknown;
  on(ev: 'error', f: (e: Error) => void): unknown;
  removeListener(ev: string, f: (...a: never[]) => void): unknown;
  pause(): unknown;
  resume(): unknown;
}

/** Thrown by `take` when the peer closed before sending the bytes asked for. */
export class _Closed extends Error {
  constructor(why: string) {
    super(why);
    this.name = '_Closed';
  }
}

/** Bytes from a stream, taken in exact pieces. */
export class _Inbox {
  private chunks: Uint8Array[] = [];
  private head = 0;
  private avail = 0;
  private want = 0;
  private wake: (() => void) | undefined;
  private ended: Error | undefined;
  private paused = false;
  private src: _Readable | undefined;
  private readonly onData = (b: Uint8Array): void => this.push(b);
  private readonly onEnd = (): void => this.end(new _Closed('the client closed the connection'));
  private readonly onError = (e: Error): void => this.end(new _Closed(`connection error: ${e.message}`));

  /** @param highWater bytes buffered before the source is paused (a pending `take` larger than it still fills). */
  private readonly highWater: number;
  constructor(highWater: number) {
    this.highWater = highWater;
  }

  /** Starts taking bytes from `s` (after `detach` from a previous source, as STARTTLS does). */
  attach(s: _Readable): void {
    this.src = s;
    s.on('data', this.onData);
    s.on('end', this.onEnd);
    s.on('close', this.onEnd);
    s.on('error', this.onError);
    if (this.paused) s.pause();
    else s.resume();
  }

  /** Stops listening to the current source (its unread bytes stay in the inbox). */
  detach(): void {
    const s = this.src;
    if (!s) return;
    s.pause();
    s.removeListener('data', this.onData);
    s.removeListener('end', this.onEnd);
    s.removeListener('close', this.onEnd);
    s.removeListener('error', this.onError);
    this.src = undefined;
  }

  /** Bytes received and not yet taken. */
  get buffered(): number {
    return this.avail;
  }

  private push(b: Uint8Array): void {
    if (b.length === 0 || this.ended) return;
    this.chunks.push(b);
    this.avail += b.length;
    if (this.avail >= this.want && this.wake) {
      const w = this.wake;
      this.wake = undefined;
      w();
    }
    if (this.avail > this.highWater && this.avail >= this.want && !this.paused) {
      this.paused = true;
      this.src?.pause();
    }
  }

  /** Ends the inbox: pending and later takes beyond what is buffered fail with `why`. */
  end(why: Error): void {
    if (this.ended) return;
    this.ended = why;
    if (this.wake) {
      const w = this.wake;
      this.wake = undefined;
      w();
    }
  }

  /** Exactly `n` bytes: a view into the received chunk when it holds them all, else a copy. */
  async take(n: number): Promise<Uint8Array> {
    while (this.avail < n) {
      if (this.ended) throw this.ended;
      this.want = n;
      if (this.paused) {
        this.paused = false;
        this.src?.resume();
      }
      await new Promise<void>((r) => (this.wake = r));
    }
    this.want = 0;
    return this.takeNow(n);
  }

  /** Drops `n` bytes without keeping them (an option too large to hold). */
  async skip(n: number): Promise<void> {
    while (n > 0) {
      const step = Math.min(n, this.highWater);
      await this.take(step);
      n -= step;
    }
  }

  private takeNow(n: number): Uint8Array {
    let out: Uint8Array;
    const first = this.chunks[0];
    if (n === 0) out = new Uint8Array(0);
    else if (first && first.length - this.head >= n) {
      out = first.subarray(this.head, this.head + n);
      this.head += n;
      if (this.head === first.length) {
        this.chunks.shift();
        this.head = 0;
      }
    } else {
      out = new Uint8Array(n);
      let o = 0;
      while (o < n) {
        const c = this.chunks[0]!;
        const k = Math.min(c.length - this.head, n - o);
        out.set(c.subarray(this.head, this.head + k), o);
        o += k;
        this.head += k;
        if (this.head === c.length) {
          this.chunks.shift();
          this.head = 0;
        }
      }
    }
    this.avail -= n;
    if (this.paused && this.avail <= this.highWater / 2) {
      this.paused = false;
      this.src?.resume();
    }
    return out;
  }
}
