// A TCP proxy adding a round trip of latency (half each way), run as its own
// process by bench/checkpoint-remote.bench.js: in the bench's process its
// timers would wait behind the client's decoding, charging the client for
// CPU it did not spend on the network (and curl, another process, would not be).
// Latency, not queueing: every chunk is delivered `rtt/2` after it arrived
// (one timer per chunk, all of one delay, so they fire in arrival order), the
// way a long wire delays propagation — a 2 MiB response costs one RTT plus
// its transfer, not one delay per chunk in sequence. No bandwidth cap: curl
// and vmkit go through the same proxy. Nagle is off both ways (nginx sets
// TCP_NODELAY on its keep-alive connections, undici on its sockets).
// Usage: node bench/_delay-proxy.js TARGET_PORT RTT_MS  → prints the port it listens on.
import { createServer, connect } from 'node:net';

const [target, rtt] = process.argv.slice(2).map(Number);
const half = rtt / 2;
const pipe = (from, to) => {
  from.on('data', (d) => setTimeout(() => to.write(d), half));
  from.on('end', () => setTimeout(() => to.end(), half));
  from.on('error', () => to.destroy());
};
const server = createServer((c) => {
  const u = connect(target, '127.0.0.1');
  c.setNoDelay(true);
  u.setNoDelay(true);
  pipe(c, u);
  pipe(u, c);
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`${server.address().port}\n`));
process.on('SIGTERM', () => process.exit(0));
