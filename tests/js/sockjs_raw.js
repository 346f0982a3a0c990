// The plain WebSocket of the demo's SockJS endpoint (`/ws/websocket`), with
// the `ws` package, for tests/demo_sockjs.rs (an echo protocol behind it):
// send two messages, expect them back, then send "close", which the echo
// answers by closing the session; print one JSON line with what came.
//
//   node sockjs_raw.js WS_URL

'use strict';

const WebSocket = require('ws');

const url = process.argv[2];
const result = { received: [] };
const deadline = setTimeout(() => finish({ error: 'deadline' }), 20000);
let done = false;

function finish(extra) {
  if (done) return;
  done = true;
  clearTimeout(deadline);
  Object.assign(result, extra);
  process.stdout.write(JSON.stringify(result) + '\n');
  setTimeout(() => process.exit(0), 50);
}

const ws = new WebSocket(url);
ws.on('open', () => {
  ws.send('hello');
  ws.send('["not", "unwrapped"]');
});
ws.on('message', (data) => {
  result.received.push(data.toString());
  if (result.received.length === 2) ws.send('close');
});
ws.on('close', (code, reason) => finish({ code, reason: reason.toString() }));
ws.on('error', (e) => finish({ error: String(e) }));
