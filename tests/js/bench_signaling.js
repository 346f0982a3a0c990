// Signaling benchmark: how many sessions one `ferroturn demo` holds and what
// each costs in memory, over each way in, side by side in one run:
//
//   ws            the rooms protocol on a plain WebSocket (/signal), ws 8
//   stomp-ws      STOMP 1.2 on a plain WebSocket (/stomp), @stomp/stompjs 7
//   sockjs-KIND   STOMP over SockJS (/ws) with sockjs-client 1.6 forced to
//                 one transport: websocket, xhr-streaming, xhr-polling
//
// For each kind, a fresh server: its RSS before any session; N sessions
// opened in rooms of two (from 127.0.0.x source addresses, at most 32 per
// address, under the demo's per-address caps); RSS once they are all in
// and idle for a few seconds; then every session sends one message a
// second to the other member of its room for a while, and RSS again. The
// report gives bytes per session idle and busy, the messages that arrived,
// and each kind's figures as a ratio of the plain WebSocket's.
//
// Usage: node tests/js/bench_signaling.js [--bin target/release/ferroturn]
//          [--sessions 400] [--busy-seconds 10] [--kinds ws,stomp-ws,...]
// (cd tests/js && npm ci --ignore-scripts first; README "Benchmark").
"use strict";

const { spawn } = require("child_process");
const fs = require("fs");
const http = require("http");
const net = require("net");
const os = require("os");
const path = require("path");

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const BIN = opt("bin", path.join(__dirname, "../../target/release/ferroturn"));
const SESSIONS = Number(opt("sessions", "400"));
const BUSY_SECONDS = Number(opt("busy-seconds", "10"));
const KINDS = opt("kinds", "ws,stomp-ws,sockjs-websocket,sockjs-xhr-streaming,sockjs-xhr-polling").split(",");
const PER_SOURCE = 32;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

function rssBytes(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  const m = status.match(/VmRSS:\s+(\d+) kB/);
  return Number(m[1]) * 1024;
}

/** The source address of session `i`: 127.0.(1+j/250).(1+j%250), j = i/PER_SOURCE. */
function sourceOf(i) {
  const j = Math.floor(i / PER_SOURCE);
  return `127.0.${1 + Math.floor(j / 250)}.${1 + (j % 250)}`;
}

async function startServer(dir) {
  const http_port = await freePort();
  const turn_port = await freePort();
  const metrics_port = await freePort();
  const config = path.join(dir, "ferroturn.toml");
  fs.writeFileSync(
    config,
    `realm = "bench.test"
[[listen]]
address = "127.0.0.1:${turn_port}"
transports = ["udp"]
[relay]
address = "127.0.0.1"
ports = "47000-47099"
[auth]
secrets = ["bench-secret"]
[metrics]
address = "127.0.0.1:${metrics_port}"
[demo]
address = "127.0.0.1:${http_port}"
connections_per_ip = ${PER_SOURCE * 2}
room_size = 2
[log]
level = "warn"
`,
  );
  const child = spawn(BIN, ["demo", "--config", config], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d) => { stderr += d; });
  const deadline = Date.now() + 10000;
  for (;;) {
    const ok = await new Promise((resolve) => {
      http.get({ host: "127.0.0.1", port: http_port, path: "/ice-servers" }, (res) => {
        res.resume();
        resolve(res.statusCode === 200);
      }).on("error", () => resolve(false));
    });
    if (ok) break;
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`ferroturn demo did not start: ${stderr}`);
    await sleep(100);
  }
  return { child, port: http_port, stderr: () => stderr };
}

// ---- the clients, one per kind; each resolves to {send(to, text), close()} ----
// A session joins room `room` and calls onPeer(id) for the other member, and
// onMessage() for each message it gets.

function wsSession(port, i, room, handlers) {
  const WebSocket = require("ws");
  return new Promise((resolve, reject) => {
    const sock = new WebSocket(`ws://127.0.0.1:${port}/signal`, { localAddress: sourceOf(i), origin: `http://127.0.0.1:${port}` });
    sock.on("open", () => sock.send(JSON.stringify({ type: "join", room })));
    sock.on("error", reject);
    sock.on("close", (code) => handlers.onClose(String(code)));
    sock.on("message", (data) => {
      const msg = JSON.parse(data);
      if (msg.type === "joined") {
        resolve({
          send: (to, text) => sock.send(JSON.stringify({ type: "candidate", to, candidate: { candidate: text, sdpMid: "0" } })),
          close: () => sock.terminate(),
        });
        msg.peers.forEach(handlers.onPeer);
      } else if (msg.type === "peer-joined") handlers.onPeer(msg.from);
      else if (msg.type === "candidate") handlers.onMessage();
    });
  });
}

// `within(f)` runs f where connections take the session's source address.
function stompSession(factory, i, room, handlers, within = (f) => f()) {
  const { Client } = require("@stomp/stompjs");
  return new Promise((resolve, reject) => {
    const client = new Client({
      webSocketFactory: factory,
      reconnectDelay: 0,
      heartbeatIncoming: 10000,
      heartbeatOutgoing: 10000,
    });
    const timer = setTimeout(() => reject(new Error(`session ${i}: no CONNECTED in 20 s`)), 20000);
    const onSignal = (frame) => {
      const msg = JSON.parse(frame.body);
      if (msg.type === "joined") {
        clearTimeout(timer);
        resolve({
          send: (to, text) => within(() => client.connected && client.publish({
            destination: `/app/room/${room}/signal`,
            headers: { to: String(to) },
            body: JSON.stringify({ type: "candidate", to, candidate: { candidate: text, sdpMid: "0" } }),
          })),
          close: () => client.deactivate(),
        });
        (msg.peers || []).forEach(handlers.onPeer);
      } else if (msg.type === "peer-joined") handlers.onPeer(msg.from);
      else if (msg.type === "candidate") handlers.onMessage();
    };
    client.onConnect = () => {
      client.subscribe("/user/queue/signal", onSignal);
      client.subscribe(`/topic/room/${room}`, onSignal);
      client.publish({ destination: `/app/room/${room}/join`, body: "" });
    };
    client.onStompError = (f) => reject(new Error(`session ${i}: ${f.headers.message}`));
    client.onWebSocketClose = (ev) => handlers.onClose(`${ev.code} ${ev.reason || ""}`.trim());
    client.onWebSocketError = () => reject(new Error(`session ${i}: transport error`));
    client.activate();
  });
}

function stompWsSession(port, i, room, handlers) {
  const WebSocket = require("ws");
  const factory = () => new WebSocket(`ws://127.0.0.1:${port}/stomp`, ["v12.stomp", "v11.stomp", "v10.stomp"], {
    localAddress: sourceOf(i),
    origin: `http://127.0.0.1:${port}`,
  });
  return stompSession(factory, i, room, handlers);
}

// sockjs-client under Node opens its HTTP requests and its WebSocket with
// Node's net module, with no say in the source address: each SockJS
// session is made inside an AsyncLocalStorage context naming its source
// address, which every connection made on its behalf (now or from a later
// callback) takes. Keep-alive is off so that no connection serves two
// sessions.
const { AsyncLocalStorage } = require("async_hooks");
const sourceContext = new AsyncLocalStorage();
{
  const connect = net.Socket.prototype.connect;
  net.Socket.prototype.connect = function (...a) {
    const src = sourceContext.getStore();
    // net.connect passes its arguments on normalized: [options, callback].
    const options = Array.isArray(a[0]) ? a[0][0] : a[0];
    if (src && options && typeof options === "object" && !options.path) options.localAddress = src;
    return connect.apply(this, a);
  };
  http.globalAgent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
}
function sockjsSession(transport) {
  return (port, i, room, handlers) => {
    const SockJS = require("sockjs-client");
    const factory = () => sourceContext.run(sourceOf(i), () => new SockJS(`http://127.0.0.1:${port}/ws`, null, { transports: [transport] }));
    const within = (f) => sourceContext.run(sourceOf(i), f);
    return within(() => stompSession(factory, i, room, handlers, within));
  };
}

const CLIENTS = {
  ws: wsSession,
  "stomp-ws": stompWsSession,
  "sockjs-websocket": sockjsSession("websocket"),
  "sockjs-xhr-streaming": sockjsSession("xhr-streaming"),
  "sockjs-xhr-polling": sockjsSession("xhr-polling"),
};

async function run(kind) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ferroturn-bench-signal-"));
  const server = await startServer(dir);
  try {
    await sleep(500);
    const base = rssBytes(server.child.pid);
    const sessions = [];
    const peers = new Array(SESSIONS).fill(null);
    let received = 0;
    const closed = new Map(); // why -> sessions the server closed before the end
    const started = Date.now();
    // Open in batches, so that a slow handshake does not time others out.
    for (let i = 0; i < SESSIONS; i += 20) {
      const batch = [];
      for (let k = i; k < Math.min(SESSIONS, i + 20); k++) {
        const room = `r${Math.floor(k / 2)}`;
        batch.push(CLIENTS[kind](server.port, k, room, {
          onPeer: (id) => { peers[k] = id; },
          onMessage: () => { received += 1; },
          onClose: (why) => { closed.set(why, (closed.get(why) || 0) + 1); },
        }));
      }
      sessions.push(...(await Promise.all(batch)));
    }
    const openSeconds = (Date.now() - started) / 1000;
    const paired = await waitFor(() => peers.every((p) => p !== null), 20000);
    await sleep(3000);
    const idle = rssBytes(server.child.pid);
    // One message a second from every session to its room's other member.
    let sent = 0;
    for (let s = 0; s < BUSY_SECONDS; s++) {
      const tick = Date.now();
      sessions.forEach((sess, k) => {
        if (peers[k] !== null) {
          sess.send(peers[k], `m${s}`);
          sent += 1;
        }
      });
      await sleep(Math.max(0, 1000 - (Date.now() - tick)));
    }
    await waitFor(() => received >= sent, 5000);
    const busy = rssBytes(server.child.pid);
    const early = [...closed.entries()];
    sessions.forEach((s) => s.close());
    return { kind, base, idle, busy, openSeconds, paired, sent, received, early };
  } finally {
    server.child.kill("SIGKILL");
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function waitFor(pred, ms) {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) return false;
    await sleep(50);
  }
  return true;
}

(async () => {
  const results = [];
  for (const kind of KINDS) {
    if (!CLIENTS[kind]) throw new Error(`unknown kind ${kind}`);
    process.stderr.write(`${kind}: ${SESSIONS} sessions...\n`);
    results.push(await run(kind));
  }
  const ws = results.find((r) => r.kind === "ws");
  const kib = (b) => (b / 1024).toFixed(1);
  console.log(`sessions per kind: ${SESSIONS}; busy: 1 message/s per session for ${BUSY_SECONDS} s`);
  console.log("kind                   | base RSS MiB | idle KiB/session | busy KiB/session | open s | sent  | received | idle vs ws | busy vs ws");
  for (const r of results) {
    const idle = (r.idle - r.base) / SESSIONS;
    const busy = (r.busy - r.base) / SESSIONS;
    const ratio = (x, y) => (ws && y > 0 ? (x / y).toFixed(2) : "-");
    const wsIdle = ws ? (ws.idle - ws.base) / SESSIONS : 0;
    const wsBusy = ws ? (ws.busy - ws.base) / SESSIONS : 0;
    console.log(
      `${r.kind.padEnd(22)} | ${(r.base / 1048576).toFixed(1).padStart(12)} | ${kib(idle).padStart(16)} | ${kib(busy).padStart(16)} | ${r.openSeconds.toFixed(1).padStart(6)} | ${String(r.sent).padStart(5)} | ${String(r.received).padStart(8)} | ${ratio(idle, wsIdle).padStart(10)} | ${ratio(busy, wsBusy).padStart(10)}`,
    );
    if (r.early.length) console.log(`  ${r.kind}: sessions closed early: ${r.early.map(([w, n]) => `${n} × ${w}`).join(", ")}`);
    if (!r.paired || r.received < r.sent) console.log(`  ${r.kind}: ${r.paired ? "" : "not every session was paired; "}${r.sent - r.received} messages lost`);
  }
  process.exit(0);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
