// Scenarios run against ferroturn demo's /stomp by the STOMP client
// adapters (stomp_v7.js: @stomp/stompjs 7, stomp_v2.js: stompjs 2.3).
// An adapter's connect(url, heartbeatMs) resolves to
//   { version, id, subscribe(dest, cb), send(dest, headers, body),
//     isOpen(), close() }
// where cb gets { headers, body }. Each scenario prints one JSON line with
// what it saw and exits 0, or prints the error and exits 1. tests/demo_stomp.rs
// checks the figures.
'use strict';

const wait = (ms) => new Promise((r) => setTimeout(r, ms));

// The next message a subscription gets, within `ms`.
function inbox(client, dest) {
  const got = [];
  const waiters = [];
  client.subscribe(dest, (m) => {
    const w = waiters.shift();
    if (w) w(m);
    else got.push(m);
  });
  return {
    next(ms = 5000) {
      if (got.length) return Promise.resolve(got.shift());
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`nothing on ${dest} within ${ms} ms`)), ms);
        waiters.push((m) => { clearTimeout(t); resolve(m); });
      });
    },
    pending: () => got.length,
  };
}

async function pubsub(connect, url) {
  const c = await connect(url, 0);
  const topic = `/topic/pubsub-${process.pid}`;
  const box = inbox(c, topic);
  // Larger than stompjs 2.3's 16 KiB WebSocket message: it splits the frame.
  const big = 'x'.repeat(20000);
  await wait(100);
  c.send(topic, { 'content-type': 'text/plain' }, 'hello');
  c.send(topic, {}, big);
  const a = await box.next();
  const b = await box.next();
  c.close();
  return {
    version: c.version,
    id: c.id,
    first: a.body,
    destination: a.headers.destination,
    contentType: a.headers['content-type'],
    secondLength: b.body.length,
  };
}

async function member(connect, url, room) {
  const c = await connect(url, 0);
  const events = inbox(c, `/topic/room/${room}`);
  const signals = inbox(c, '/user/queue/signal');
  const errors = inbox(c, '/user/queue/errors');
  c.send(`/app/room/${room}/join`, {}, '');
  const joined = JSON.parse((await events.next()).body);
  if (joined.type !== 'joined') throw new Error(`expected joined, got ${JSON.stringify(joined)}`);
  return { c, events, signals, errors, id: joined.id, peers: joined.peers };
}

async function room(connect, url) {
  const name = `r${process.pid}`;
  const a = await member(connect, url, name);
  const b = await member(connect, url, name);
  const seenByA = JSON.parse((await a.events.next()).body);
  const c = await member(connect, url, name);
  await a.events.next();
  await b.events.next();
  // a signals b by peer id.
  const offer = { type: 'offer', sdp: 'v=0\r\ns=stomp\r\n' };
  a.c.send(`/app/room/${name}/signal`, { to: String(b.id), 'content-type': 'application/json' }, JSON.stringify(offer));
  const got = await b.signals.next();
  // An id outside the room: an error to a alone.
  a.c.send(`/app/room/${name}/signal`, { to: '999999' }, JSON.stringify(offer));
  const error = JSON.parse((await a.errors.next()).body);
  await wait(500);
  const strays = a.signals.pending() + c.signals.pending() + b.errors.pending() + c.errors.pending();
  for (const m of [a, b, c]) m.c.close();
  return {
    ids: [a.id, b.id, c.id],
    bPeers: b.peers,
    seenByA,
    signal: JSON.parse(got.body),
    from: got.headers.from,
    error: error.code,
    strays,
  };
}

async function idle(connect, url, heartbeat, idleMs) {
  const c = await connect(url, heartbeat);
  const topic = `/topic/idle-${process.pid}`;
  const box = inbox(c, topic);
  await wait(idleMs);
  const open = c.isOpen();
  c.send(topic, {}, 'still here');
  const m = await box.next();
  c.close();
  return { version: c.version, open, body: m.body };
}

// The socket a client adapter hands its STOMP library: a WebSocket (the
// ws package) for ws:// URLs, or a SockJS client forced to one transport
// for `sockjs+TRANSPORT:http://HOST/ws` (websocket, xhr-streaming,
// xhr-polling, eventsource).
function socketFor(url, protocols) {
  const m = url.match(/^sockjs\+([a-z-]+):(.*)$/);
  if (m) {
    const SockJS = require('sockjs-client');
    return new SockJS(m[2], null, { transports: [m[1]] });
  }
  const WebSocket = require('ws');
  return new WebSocket(url, protocols);
}

function run(connect) {
  const [url, scenario, ...rest] = process.argv.slice(2);
  const scenarios = { pubsub, room, idle };
  const f = scenarios[scenario];
  if (!f) {
    console.error(`unknown scenario ${scenario}`);
    process.exit(2);
  }
  f(connect, url, ...rest.map(Number))
    .then((r) => { console.log(JSON.stringify(r)); process.exit(0); })
    .catch((e) => { console.error(`error: ${e && e.stack ? e.stack : e}`); process.exit(1); });
}

module.exports = { run, socketFor };
