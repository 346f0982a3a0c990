// Drives sockjs-client 1.6.1 against the demo's SockJS endpoint with one
// transport forced, for tests/demo_sockjs.rs (an echo protocol behind it).
//
//   node sockjs_echo.js URL TRANSPORT MODE [IDLE_MS]
//
// TRANSPORT: websocket, xhr-streaming, xhr-polling or eventsource.
// MODE:
//   echo    send three messages (one with characters the protocol escapes),
//           expect each back, close;
//   idle    stay quiet IDLE_MS, counting heartbeats, then send one and expect
//           it back: the session outlived the quiet time;
//   big     send one message over 64 KiB and report how the session ends;
//   close   send "close", which the echo answers by closing the session.
//
// Prints one JSON line: {"ok": bool, "transport": ..., ...}. Exits on its
// own within its deadline whatever happens.

'use strict';

const SockJS = require('sockjs-client');

const [url, transport, mode, idleArg] = process.argv.slice(2);
const idleMs = Number(idleArg || 0);
const deadline = setTimeout(() => finish({ ok: false, error: 'deadline' }), 30000 + idleMs);

const result = { transport, mode, received: [], heartbeats: 0 };
let done = false;

function finish(extra) {
  if (done) return;
  done = true;
  clearTimeout(deadline);
  Object.assign(result, extra);
  process.stdout.write(JSON.stringify(result) + '\n');
  // Leave the client's timers and sockets behind.
  setTimeout(() => process.exit(0), 50);
}

const sock = new SockJS(url, null, { transports: [transport], timeout: 10000 });
sock.addEventListener('heartbeat', () => { result.heartbeats += 1; });

let expected = [];
let onAllEchoed = null;

function sendAndExpect(messages, then) {
  expected = messages.slice();
  onAllEchoed = then;
  for (const m of messages) sock.send(m);
}

sock.onopen = () => {
  result.opened = true;
  result.used = sock.transport;
  if (mode === 'echo') {
    const tricky = 'a\u2028b\u200dc\ufff0d "quote" \\ \n 日本 😀 %41';
    sendAndExpect(['hello', tricky, 'x'.repeat(10000)], () => sock.close(1000, 'bye'));
  } else if (mode === 'idle') {
    setTimeout(() => {
      sendAndExpect(['still here'], () => sock.close(1000, 'bye'));
    }, idleMs);
  } else if (mode === 'big') {
    sock.send('y'.repeat(70 * 1024));
  } else if (mode === 'close') {
    sock.send('close');
  } else {
    finish({ ok: false, error: 'unknown mode ' + mode });
  }
};

sock.onmessage = (e) => {
  result.received.push(e.data.length > 64 ? e.data.slice(0, 16) + '…(' + e.data.length + ')' : e.data);
  const i = expected.indexOf(e.data);
  if (i === 0) {
    expected.shift();
    if (expected.length === 0 && onAllEchoed) {
      const f = onAllEchoed;
      onAllEchoed = null;
      result.echoed = true;
      f();
    }
  } else {
    result.unexpected = (result.unexpected || 0) + 1;
  }
};

sock.onclose = (e) => {
  result.code = e.code;
  result.reason = e.reason;
  const ok =
    mode === 'echo' || mode === 'idle'
      ? result.echoed === true && !result.unexpected
      : result.opened === true;
  finish({ ok });
};
