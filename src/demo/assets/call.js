// ferroturn call demo: a full mesh. Every member of a room has one
// RTCPeerConnection to every other member, signaled over the WebSocket
// /signal (messages addressed by peer id), with ICE servers from
// /ice-servers. Each connection carries a data channel (chat) and, when
// the camera is on, audio and video; a tile per member shows its states,
// its selected candidate pair from getStats() and its current bitrate.
//
// Both ends of a pair may start negotiating at once (each creates the
// pre-negotiated chat channel as it learns of the other): "perfect
// negotiation" resolves the collision. The member with the higher peer id
// is polite (it rolls its own offer back and answers); the other ignores
// the colliding offer.
//
// Signaling tries a WebSocket to /signal first. Where that fails (a
// corporate proxy that refuses WebSocket, an old browser), it falls back to
// STOMP over SockJS at /ws, whose HTTP transports (streaming, polling) pass
// where WebSocket does not; the page shows which way it got in. Both carry
// the same messages: {type, to|from, ...}.
//
// URL parameters prefill the form: ?room=NAME&relay=1&servers=stun&media=1,
// &signaling=websocket|sockjs (default: WebSocket, then SockJS), and
// &autojoin=1 joins at once. window.ferroturnCall exposes the live state
// (used by the browser tests).
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  signaling: "not connected", // not connected, connecting, waiting for peers, in call (N peers), closed
  via: null, // how signaling got in: "websocket", or "sockjs/TRANSPORT" (STOMP over SockJS)
  attempts: [], // each way tried, in order: {via, ok, detail}
  id: null, // this page's peer id in its room
  room: null,
  peers: {}, // id -> {polite, connectionState, iceConnectionState, channelOpen, pair, bitrate, received}
  received: [], // chat messages received from anyone, in order
  candidates: [], // local candidates gathered, all links: {type, protocol, address, port}
  sent: 0,
  errors: [], // {code, message} from the signaling server, or local errors
  collisions: 0, // offers that crossed one of ours (resolved by perfect negotiation)
  iceServers: null,
  say, // say(text): send a chat message to every member
  sayTo, // sayTo(id, text): send a chat message to one member
  renegotiate, // renegotiate(id): restart ICE with member id (a new offer)
};
// The first member's view, as the two-party page had it.
const first = () => Object.values(state.peers)[0];
Object.defineProperty(state, "channelOpen", { get: () => Object.values(state.peers).some((p) => p.channelOpen) });
Object.defineProperty(state, "pair", { get: () => (first() ? first().pair : null) });
Object.defineProperty(state, "connectionState", { get: () => (first() ? first().connectionState : "new") });
Object.defineProperty(state, "iceConnectionState", { get: () => (first() ? first().iceConnectionState : "new") });
window.ferroturnCall = state;

let channel = null; // the signaling channel in use: {send(msg), close()}
let localStream = null;
let iceServers = [];
let queue = Promise.resolve(); // signaling messages are handled in order
let statsTimer = null;
const links = new Map(); // peer id -> {pc, channel, makingOffer, ignoreOffer, answerPending, tile, last}

function show(id, text) { $(id).textContent = text; }

function log(text, cls) {
  const line = document.createElement("div");
  line.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  if (cls) line.className = cls;
  $("log").append(line);
  $("log").scrollTop = $("log").scrollHeight;
}

function fail(message, code = "local") {
  state.errors.push({ code, message });
  show("error", code === "local" ? message : `${code}: ${message}`);
  log(message, "error");
}

function setSignaling(s) {
  state.signaling = s;
  show("signaling", s);
}

function showMembers() {
  const n = links.size;
  setSignaling(n === 0 ? "waiting for peers" : `in call (${n} peer${n === 1 ? "" : "s"})`);
}

function send(msg) {
  if (channel) channel.send(msg);
}

/** Time a way in gets to open before the next is tried. */
const OPEN_TIMEOUT_MS = 8000;

/** The rooms protocol over a WebSocket to /signal. Resolves with the
 *  channel once open; rejects if it closes or times out first. */
function openWebSocket(room, handlers) {
  return new Promise((resolve, reject) => {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    let opened = false;
    let sock;
    try {
      sock = new WebSocket(`${proto}//${location.host}/signal`);
    } catch (e) {
      reject(e);
      return;
    }
    const timer = setTimeout(() => { if (!opened) { sock.close(); reject(new Error("no answer")); } }, OPEN_TIMEOUT_MS);
    sock.onopen = () => {
      opened = true;
      clearTimeout(timer);
      const ch = {
        via: "websocket",
        send: (msg) => { if (sock.readyState === WebSocket.OPEN) sock.send(JSON.stringify(msg)); },
        close: () => sock.close(),
      };
      ch.send({ type: "join", room });
      resolve(ch);
    };
    sock.onmessage = (ev) => handlers.message(ev.data);
    sock.onclose = (ev) => {
      clearTimeout(timer);
      if (opened) handlers.closed(ev.code);
      else reject(new Error(`closed (${ev.code})`));
    };
  });
}

/** Load one of the embedded scripts (sockjs-client, stompjs) on demand. */
function loadScript(src) {
  return new Promise((resolve, reject) => {
    const el = document.createElement("script");
    el.src = src;
    el.onload = resolve;
    el.onerror = () => reject(new Error(`${src} did not load`));
    document.head.append(el);
  });
}

/** The same rooms protocol as STOMP over SockJS at /ws: join with a SEND
 *  to /app/room/NAME/join, messages to one member as SENDs to
 *  /app/room/NAME/signal with a `to` header, messages for this page on
 *  /user/queue/signal, errors about its own frames on /user/queue/errors,
 *  and room events on /topic/room/NAME. */
async function openStomp(room, handlers) {
  if (!window.SockJS) await loadScript("/vendor/sockjs.min.js");
  if (!window.StompJs) await loadScript("/vendor/stomp.umd.min.js");
  return new Promise((resolve, reject) => {
    let opened = false;
    let sock = null;
    const client = new window.StompJs.Client({
      webSocketFactory: () => (sock = new window.SockJS("/ws")),
      reconnectDelay: 0,
      heartbeatIncoming: 10000,
      heartbeatOutgoing: 10000,
      connectionTimeout: OPEN_TIMEOUT_MS,
    });
    const timer = setTimeout(() => { if (!opened) { client.deactivate(); reject(new Error("no answer")); } }, OPEN_TIMEOUT_MS + 2000);
    const deliver = (frame) => handlers.message(frame.body);
    client.onConnect = () => {
      opened = true;
      clearTimeout(timer);
      client.subscribe("/user/queue/signal", deliver);
      client.subscribe("/user/queue/errors", deliver);
      client.subscribe(`/topic/room/${room}`, deliver);
      const ch = {
        via: `sockjs/${(sock && sock.transport) || "?"}`,
        send: (msg) => {
          if (!client.connected) return;
          if (msg.type === "join") return;
          if (msg.type === "bye") {
            client.publish({ destination: `/app/room/${room}/leave`, body: "" });
            return;
          }
          const headers = msg.to != null ? { to: String(msg.to) } : {};
          client.publish({ destination: `/app/room/${room}/signal`, headers, body: JSON.stringify(msg) });
        },
        close: () => client.deactivate(),
      };
      client.publish({ destination: `/app/room/${room}/join`, body: "" });
      resolve(ch);
    };
    client.onStompError = (frame) => {
      const text = frame.headers.message || frame.body || "STOMP error";
      if (opened) fail(text, "stomp");
      else { clearTimeout(timer); client.deactivate(); reject(new Error(text)); }
    };
    client.onWebSocketClose = (ev) => {
      if (opened) handlers.closed(ev.code);
      else { clearTimeout(timer); client.deactivate(); reject(new Error(`closed (${ev.code})`)); }
    };
    client.activate();
  });
}

/** Open signaling: the ways the page may use, in order, until one opens. */
async function openSignaling(room, handlers) {
  const forced = new URLSearchParams(location.search).get("signaling");
  const ways = forced === "websocket" ? ["websocket"] : forced === "sockjs" ? ["sockjs"] : ["websocket", "sockjs"];
  for (const way of ways) {
    setSignaling(`connecting (${way === "websocket" ? "WebSocket" : "SockJS/STOMP"})`);
    try {
      const ch = way === "websocket" ? await openWebSocket(room, handlers) : await openStomp(room, handlers);
      state.attempts.push({ via: ch.via, ok: true, detail: "" });
      log(`signaling via ${ch.via === "websocket" ? "WebSocket /signal" : `STOMP over SockJS /ws (${ch.via.slice(7)})`}`);
      return ch;
    } catch (e) {
      state.attempts.push({ via: way, ok: false, detail: String(e.message || e) });
      log(`signaling via ${way}: ${e.message || e}`, "error");
    }
  }
  throw new Error(`no way in: ${state.attempts.map((a) => `${a.via} ${a.detail}`).join("; ")}`);
}

async function join() {
  const room = $("room").value.trim();
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(room)) {
    fail("room: 1 to 64 of A-Z a-z 0-9 _ - .");
    return;
  }
  $("join").disabled = true;
  $("hangup").disabled = false;
  try {
    const resp = await fetch("/ice-servers", { cache: "no-store" });
    const body = await resp.json();
    if (body.warning) log(body.warning, "error");
    iceServers = body.iceServers;
    if ($("servers").value === "stun") {
      iceServers = iceServers
        .map((s) => ({ urls: [].concat(s.urls).filter((u) => u.startsWith("stun:")) }))
        .filter((s) => s.urls.length > 0);
    }
    state.iceServers = iceServers;
    show("ice-servers", iceServers.flatMap((s) => [].concat(s.urls)).join(" ") || "(none)");
  } catch (e) {
    fail(`/ice-servers: ${e}`);
    $("join").disabled = false;
    return;
  }
  if ($("media").checked && !localStream) {
    try {
      localStream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
      $("local").srcObject = localStream;
      $("local").classList.remove("hidden");
    } catch (e) {
      log(`no camera/microphone (${e.name}): chat only`);
    }
  }
  const handlers = {
    message: (text) => {
      let msg;
      try { msg = JSON.parse(text); } catch (e) { fail(`bad message from server: ${e}`); return; }
      queue = queue.then(() => onSignal(msg)).catch((e) => fail(`${msg.type}: ${e}`));
    },
    closed: (code) => {
      if (state.signaling !== "closed") setSignaling(`closed (${code})`);
      $("join").disabled = false;
    },
  };
  try {
    channel = await openSignaling(room, handlers);
  } catch (e) {
    fail(`signaling: ${e.message || e}`);
    setSignaling("failed");
    $("join").disabled = false;
    return;
  }
  state.via = channel.via;
  show("via", channel.via === "websocket" ? "WebSocket /signal" : `STOMP over SockJS /ws (${channel.via.slice(7)})`);
  statsTimer = setInterval(updateStats, 1000);
}

async function onSignal(msg) {
  switch (msg.type) {
    case "joined":
      state.id = msg.id;
      state.room = msg.room;
      show("my-id", String(msg.id));
      log(`joined room ${msg.room} as peer ${msg.id} (${msg.peers.length} other peer${msg.peers.length === 1 ? "" : "s"})`);
      msg.peers.forEach(connectTo);
      showMembers();
      break;
    case "peer-joined":
      log(`peer ${msg.from} joined`);
      connectTo(msg.from);
      showMembers();
      break;
    case "offer":
    case "answer":
      await onDescription(msg);
      break;
    case "candidate": {
      const link = links.get(msg.from);
      if (!link) return;
      state.peers[msg.from].candidatesIn += 1;
      try {
        await link.pc.addIceCandidate(msg.candidate || undefined);
      } catch (e) {
        // Candidates of an offer this end ignored are expected to fail.
        if (!link.ignoreOffer) throw e;
      }
      break;
    }
    case "bye":
    case "peer-left":
      log(`peer ${msg.from} ${msg.type === "bye" ? "hung up" : "left"}`);
      disconnectFrom(msg.from);
      showMembers();
      if (links.size === 0) setSignaling("peer left, waiting for peers");
      break;
    case "error":
      fail(msg.message, msg.code);
      if (msg.code === "room-full") {
        if (channel) channel.close();
        channel = null;
        setSignaling("closed");
      }
      break;
    default:
      log(`unexpected message ${msg.type || JSON.stringify(msg).slice(0, 80)}`);
  }
}

/** Perfect negotiation's receiving half (one link). */
async function onDescription(msg) {
  const link = links.get(msg.from) || connectTo(msg.from);
  const description = { type: msg.type, sdp: msg.sdp };
  const ready = !link.makingOffer && (link.pc.signalingState === "stable" || link.answerPending);
  const collision = description.type === "offer" && !ready;
  if (collision) state.collisions += 1;
  link.ignoreOffer = !state.peers[msg.from].polite && collision;
  if (link.ignoreOffer) {
    log(`offer from ${msg.from} collided with ours: ignored (impolite)`);
    return;
  }
  if (collision && !link.pc.remoteDescription) {
    // Nothing negotiated yet, so nothing to keep: answer on a fresh
    // connection rather than rolling the first offer back (Chromium may
    // then never gather candidates for the answer, seen with "relay only").
    log(`offer from ${msg.from} collided with our first offer: answering on a fresh connection (polite)`);
    openPeerConnection(msg.from, link);
  } else if (collision) {
    log(`offer from ${msg.from} collided with ours: rolled back (polite)`);
  }
  const pc = link.pc;
  link.answerPending = description.type === "answer";
  await pc.setRemoteDescription(description); // rolls a pending offer back
  link.answerPending = false;
  if (description.type === "offer") {
    await pc.setLocalDescription();
    send({ type: "answer", to: msg.from, sdp: pc.localDescription.sdp });
  }
}

/** The link to member `id`, made if new. */
function connectTo(id) {
  if (links.has(id)) return links.get(id);
  const view = {
    polite: state.id > id,
    connectionState: "new",
    iceConnectionState: "new",
    signalingState: "stable",
    channelOpen: false,
    pair: null,
    bitrate: null, // {send, receive} in kbit/s over the last second
    received: [],
    candidatesOut: 0,
    candidatesIn: 0,
  };
  state.peers[id] = view;
  const link = { pc: null, channel: null, makingOffer: false, ignoreOffer: false, answerPending: false, tile: makeTile(id), last: null };
  links.set(id, link);
  openPeerConnection(id, link);
  paintTile(id);
  return link;
}

/** A new RTCPeerConnection (and chat channel) for `link`, replacing any
 *  it had. Events of a replaced connection are ignored. */
function openPeerConnection(id, link) {
  if (link.pc) link.pc.close();
  const view = state.peers[id];
  const config = { iceServers };
  if ($("relay").checked) config.iceTransportPolicy = "relay";
  const pc = new RTCPeerConnection(config);
  const current = () => link.pc === pc;
  Object.assign(link, { pc, makingOffer: false, ignoreOffer: false, answerPending: false, last: null });
  pc.onnegotiationneeded = async () => {
    try {
      link.makingOffer = true;
      await pc.setLocalDescription();
      if (current()) send({ type: pc.localDescription.type, to: id, sdp: pc.localDescription.sdp });
    } catch (e) {
      if (current()) fail(`offer to ${id}: ${e}`);
    } finally {
      if (current()) link.makingOffer = false;
    }
  };
  pc.onsignalingstatechange = () => {
    if (current()) view.signalingState = pc.signalingState;
  };
  pc.onicecandidate = (e) => {
    if (!current()) return;
    view.candidatesOut += 1;
    const c = e.candidate;
    if (c && c.candidate) {
      state.candidates.push({ type: c.type, protocol: c.protocol, address: c.address, port: c.port });
    }
    send({ type: "candidate", to: id, candidate: c ? c.toJSON() : null });
  };
  pc.oniceconnectionstatechange = () => {
    if (!current()) return;
    view.iceConnectionState = pc.iceConnectionState;
    paintTile(id);
  };
  pc.onconnectionstatechange = () => {
    if (!current()) return;
    view.connectionState = pc.connectionState;
    paintTile(id);
  };
  pc.ontrack = (e) => {
    if (!current()) return;
    const video = link.tile.querySelector("video");
    video.srcObject = e.streams[0];
    video.classList.remove("hidden");
  };
  // Both ends create the same pre-negotiated channel: no one waits for the
  // other's, and both start negotiating (the collision the polite end
  // resolves).
  const channel = pc.createDataChannel("chat", { negotiated: true, id: 0 });
  link.channel = channel;
  channel.onopen = () => {
    if (!current()) return;
    view.channelOpen = true;
    $("message").disabled = $("send").disabled = false;
    log(`data channel to ${id} open`);
    paintTile(id);
  };
  channel.onclose = () => {
    if (!current()) return;
    view.channelOpen = false;
    paintTile(id);
  };
  channel.onmessage = (e) => {
    view.received.push(e.data);
    state.received.push(e.data);
    log(`${id}: ${e.data}`);
    paintTile(id);
  };
  if (localStream) localStream.getTracks().forEach((t) => pc.addTrack(t, localStream));
}

function disconnectFrom(id) {
  const link = links.get(id);
  if (!link) return;
  link.pc.close();
  link.tile.remove();
  links.delete(id);
  delete state.peers[id];
  if (!state.channelOpen) $("message").disabled = $("send").disabled = true;
}

function makeTile(id) {
  const tile = document.createElement("div");
  tile.className = "tile";
  tile.id = `tile-${id}`;
  tile.innerHTML = '<h3></h3><video autoplay playsinline class="hidden"></video><table>' +
    '<tr><td>connection</td><td class="state"></td></tr>' +
    '<tr><td>path</td><td class="path"></td></tr>' +
    '<tr><td>local</td><td class="local"></td></tr>' +
    '<tr><td>remote</td><td class="remote"></td></tr>' +
    '<tr><td>bitrate</td><td class="bitrate"></td></tr>' +
    '<tr><td>messages</td><td class="count"></td></tr></table>';
  tile.querySelector("h3").textContent = `peer ${id}`;
  $("tiles").append(tile);
  return tile;
}

function paintTile(id) {
  const link = links.get(id);
  const view = state.peers[id];
  if (!link || !view) return;
  const cell = (cls, text) => { link.tile.querySelector(`.${cls}`).textContent = text; };
  cell("state", `${view.connectionState} (ICE ${view.iceConnectionState})${view.channelOpen ? ", chat open" : ""}`);
  const p = view.pair;
  const relayed = p && (p.local.type === "relay" || p.remote.type === "relay");
  cell("path", p ? (relayed ? "relay" : "direct") : "-");
  const side = (c) => `${c.type} ${c.protocol} ${c.address}:${c.port}${c.relayProtocol ? ` (relay over ${c.relayProtocol})` : ""}`;
  cell("local", p ? side(p.local) : "-");
  cell("remote", p ? side(p.remote) : "-");
  cell("bitrate", view.bitrate ? `${view.bitrate.send} kbit/s out, ${view.bitrate.receive} kbit/s in` : "-");
  cell("count", String(view.received.length));
  link.tile.className = `tile ${p ? (relayed ? "relay" : "direct") : ""}`;
}

/** Send one chat message to every member whose channel is open; false
 *  when none is. */
function say(text) {
  let sent = false;
  for (const id of links.keys()) sent = sayTo(id, text) || sent;
  if (sent) log(`me: ${text}`);
  return sent;
}

/** Send one chat message to member `id`; false when its channel is not
 *  open. */
function sayTo(id, text) {
  const link = links.get(Number(id));
  if (!link || !link.channel || link.channel.readyState !== "open") return false;
  link.channel.send(text);
  state.sent += 1;
  return true;
}

/** Restart ICE with member `id`: a new offer from this end, which may
 *  cross one from the other (both ends may do it at once). */
function renegotiate(id) {
  const link = links.get(Number(id));
  if (!link) return false;
  link.pc.restartIce();
  return true;
}

async function updateStats() {
  for (const [id, link] of links) {
    const stats = await link.pc.getStats();
    const view = state.peers[id];
    if (!view || links.get(id) !== link) continue;
    let pairId = null;
    stats.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
    });
    if (!pairId) {
      stats.forEach((s) => {
        if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pairId = s.id;
      });
    }
    const pair = pairId && stats.get(pairId);
    if (!pair) continue;
    const describe = (c) => c && {
      type: c.candidateType,
      protocol: c.protocol,
      address: c.address || c.ip,
      port: c.port,
      relayProtocol: c.relayProtocol || "",
    };
    const local = describe(stats.get(pair.localCandidateId));
    const remote = describe(stats.get(pair.remoteCandidateId));
    if (!local || !remote) continue;
    view.pair = { local, remote, state: pair.state, rtt: pair.currentRoundTripTime };
    const now = { pairId, t: pair.timestamp, sent: pair.bytesSent || 0, received: pair.bytesReceived || 0 };
    // Counted on one pair only: a newly selected pair starts from zero.
    if (link.last && link.last.pairId === pairId && now.t > link.last.t) {
      const kbps = (bytes) => Math.round((bytes * 8) / (now.t - link.last.t)); // bits per ms = kbit/s
      view.bitrate = { send: kbps(now.sent - link.last.sent), receive: kbps(now.received - link.last.received) };
    }
    link.last = now;
    paintTile(id);
  }
}

function hangup() {
  send({ type: "bye" });
  for (const id of [...links.keys()]) disconnectFrom(id);
  if (statsTimer) clearInterval(statsTimer);
  statsTimer = null;
  if (channel) channel.close();
  channel = null;
  state.id = null;
  setSignaling("closed");
  $("join").disabled = false;
  $("hangup").disabled = true;
}

function init() {
  const params = new URLSearchParams(location.search);
  $("room").value = params.get("room") || `room-${Math.random().toString(36).slice(2, 8)}`;
  $("relay").checked = params.get("relay") === "1";
  $("servers").value = params.get("servers") === "stun" ? "stun" : "all";
  $("media").checked = params.get("media") === "1";
  $("join").onclick = join;
  $("hangup").onclick = hangup;
  $("chat").onsubmit = (e) => {
    e.preventDefault();
    if (say($("message").value)) $("message").value = "";
  };
  if (params.get("autojoin") === "1") join();
}

init();
