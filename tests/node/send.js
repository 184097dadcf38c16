// Sends N events to a forward listener with @fluent-org/logger, acknowledgements required
// (requireAckResponse: the `ack` option). Prints {"first_ack_ms": ...} when the first event is
// acknowledged and a final {"ok", "failed", ...} line.
// Usage: node send.js PORT N TAG
const { FluentClient } = require('@fluent-org/logger');
const port = parseInt(process.argv[2], 10);
const n = parseInt(process.argv[3], 10);
const tag = process.argv[4] || 'node';
const client = new FluentClient(tag, {
  socket: { host: '127.0.0.1', port, timeout: 120000 },
  ack: { ackTimeout: 120000 },
  flushInterval: 20,
});
(async () => {
  let first = null;
  const ps = [];
  for (let i = 0; i < n; i++) {
    const p = client.emit('ev', { n: i, src: 'node', text: `node event ${i}` });
    p.then(() => {
      if (first === null) {
        first = Date.now();
        console.log(JSON.stringify({ first_ack_ms: first }));
      }
    }, () => {});
    ps.push(p);
  }
  const results = await Promise.allSettled(ps);
  const bad = results.filter((r) => r.status !== 'fulfilled');
  console.log(JSON.stringify({
    ok: results.length - bad.length,
    failed: bad.length,
    error: bad.length ? String(bad[0].reason) : null,
  }));
  await client.disconnect();
  process.exit(0);
})().catch((e) => { console.log(JSON.stringify({ ok: 0, failed: n, error: String(e) })); process.exit(1); });
