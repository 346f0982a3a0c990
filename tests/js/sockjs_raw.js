// The demo's SockJS WebSockets with the `ws` package, for
// tests/demo_sockjs.rs (an echo protocol behind it). Prints one JSON line
// with what came.
//
//   node sockjs_raw.js WS_URL plain   the plain WebSocket (`/ws/websocket`):
//       send two messages, expect them back, then send "close", which the
//       echo answers by closing the session;
//   node sockjs_raw.js WS_URL flood   the framed one
//       (`/ws/S/ID/websocket`): after `o`, N=1000 messages in one frame;
//       count the messages that come back in `a[...]` frames.

'use strict';

const WebSocket = require('ws');

const [url, mode] = process.argv.slice(2);
const FLOOD = 1000;
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
result.echoed = 0;
ws.on('open', () => {
  if (mode === 'plain') {
    ws.send('hello');
    ws.send('["not", "unwrapped"]');
  }
});
ws.on('message', (data) => {
  const text = data.toString();
  if (mode === 'plain') {
    result.received.push(text);
    if (result.received.length === 2) ws.send('close');
    return;
  }
  if (text === 'o') {
    const batch = [];
    for (let i = 0; i < FLOOD; i++) batch.push('m' + i);
    ws.send(JSON.stringify(batch));
  } else if (text[0] === 'a') {
    result.echoed += JSON.parse(text.slice(1)).length;
    if (result.echoed === FLOOD) ws.send(JSON.stringify(['close']));
  } else {
    result.received.push(text);
  }
});
ws.on('close', (code, reason) => finish({ code, reason: reason.toString() }));
ws.on('error', (e) => finish({ error: String(e) }));
