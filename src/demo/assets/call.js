// ferroturn call demo: WebSocket signaling to /signal, ICE servers from
// /ice-servers, a data channel chat, optional camera and microphone, and the
// selected candidate pair from getStats().
//
// URL parameters prefill the form: ?room=NAME&relay=1&servers=stun&media=1,
// and &autojoin=1 joins at once. window.ferroturnCall exposes the live state
// (used by the browser tests).
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  signaling: "not connected", // not connected, waiting for peer, in call, peer left, closed
  iceConnectionState: "new",
  connectionState: "new",
  channelOpen: false,
  pair: null, // {local: {...}, remote: {...}} of the selected candidate pair
  candidates: [], // local candidates gathered: {type, protocol, address, port}
  received: [], // chat messages received, in order
  sent: 0,
  errors: [], // {code, message} from the signaling server, or local errors
  iceServers: null,
  say, // say(text): send a chat message
};
window.ferroturnCall = state;

let ws = null;
let pc = null;
let channel = null;
let localStream = null;
let iceServers = [];
let queue = Promise.resolve(); // signaling messages are handled in order
let statsTimer = null;

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

function send(msg) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
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
      $("videos").classList.remove("hidden");
    } catch (e) {
      log(`no camera/microphone (${e.name}): chat only`);
    }
  }
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(`${proto}//${location.host}/signal`);
  ws.onopen = () => send({ type: "join", room });
  ws.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch (e) { fail(`bad message from server: ${e}`); return; }
    queue = queue.then(() => onSignal(msg)).catch((e) => fail(`${msg.type}: ${e}`));
  };
  ws.onclose = (ev) => {
    if (state.signaling !== "closed") setSignaling(`closed (${ev.code})`);
    $("join").disabled = false;
  };
  setSignaling("connecting");
}

async function onSignal(msg) {
  switch (msg.type) {
    case "joined":
      setSignaling(msg.peers > 0 ? "joined, waiting for the offer" : "waiting for peer");
      log(`joined room ${msg.room} (${msg.peers} other peer${msg.peers === 1 ? "" : "s"})`);
      break;
    case "peer-joined":
      // The member already in the room makes the offer.
      log("peer joined: calling");
      newPeerConnection();
      setChannel(pc.createDataChannel("chat"));
      await pc.setLocalDescription(await pc.createOffer());
      send({ type: "offer", sdp: pc.localDescription.sdp });
      setSignaling("in call (offer sent)");
      break;
    case "offer":
      if (!pc) newPeerConnection();
      await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
      await pc.setLocalDescription(await pc.createAnswer());
      send({ type: "answer", sdp: pc.localDescription.sdp });
      setSignaling("in call (answered)");
      break;
    case "answer":
      await pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
      setSignaling("in call");
      break;
    case "candidate":
      if (pc) await pc.addIceCandidate(msg.candidate || undefined);
      break;
    case "bye":
    case "peer-left":
      log(msg.type === "bye" ? "peer hung up" : "peer left");
      closePeerConnection();
      setSignaling("peer left, waiting for peer");
      break;
    case "error":
      fail(msg.message, msg.code);
      if (msg.code === "room-full") {
        ws.close();
        setSignaling("closed");
      }
      break;
    default:
      log(`unexpected message ${msg.type}`);
  }
}

function newPeerConnection() {
  closePeerConnection();
  state.candidates = [];
  const config = { iceServers };
  if ($("relay").checked) config.iceTransportPolicy = "relay";
  pc = new RTCPeerConnection(config);
  const mine = pc;
  pc.onicecandidate = (e) => {
    if (mine !== pc) return;
    const c = e.candidate;
    if (c && c.candidate) {
      state.candidates.push({ type: c.type, protocol: c.protocol, address: c.address, port: c.port });
    }
    send({ type: "candidate", candidate: c ? c.toJSON() : null });
  };
  pc.oniceconnectionstatechange = () => {
    state.iceConnectionState = mine.iceConnectionState;
    show("ice-state", mine.iceConnectionState);
  };
  pc.onconnectionstatechange = () => {
    state.connectionState = mine.connectionState;
    show("conn-state", mine.connectionState);
  };
  pc.ondatachannel = (e) => setChannel(e.channel);
  pc.ontrack = (e) => {
    $("remote").srcObject = e.streams[0];
    $("videos").classList.remove("hidden");
  };
  if (localStream) localStream.getTracks().forEach((t) => pc.addTrack(t, localStream));
  statsTimer = setInterval(updateStats, 500);
}

function closePeerConnection() {
  if (statsTimer) clearInterval(statsTimer);
  statsTimer = null;
  if (pc) pc.close();
  pc = null;
  channel = null;
  state.channelOpen = false;
  state.pair = null;
  state.iceConnectionState = state.connectionState = "closed";
  show("ice-state", "closed");
  show("conn-state", "closed");
  $("message").disabled = $("send").disabled = true;
}

function setChannel(ch) {
  channel = ch;
  ch.onopen = () => {
    state.channelOpen = true;
    $("message").disabled = $("send").disabled = false;
    log("data channel open");
  };
  ch.onclose = () => {
    state.channelOpen = false;
    $("message").disabled = $("send").disabled = true;
  };
  ch.onmessage = (e) => {
    state.received.push(e.data);
    log(`peer: ${e.data}`);
  };
}

/** Send one chat message; false when the channel is not open. */
function say(text) {
  if (!channel || channel.readyState !== "open") return false;
  channel.send(text);
  state.sent += 1;
  log(`me: ${text}`);
  return true;
}

async function updateStats() {
  if (!pc) return;
  const mine = pc;
  const stats = await mine.getStats();
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
  if (!pair || mine !== pc) return;
  const describe = (c) => c && {
    type: c.candidateType,
    protocol: c.protocol,
    address: c.address || c.ip,
    port: c.port,
    relayProtocol: c.relayProtocol || "",
  };
  const local = describe(stats.get(pair.localCandidateId));
  const remote = describe(stats.get(pair.remoteCandidateId));
  if (!local || !remote) return;
  state.pair = { local, remote, state: pair.state, rtt: pair.currentRoundTripTime };
  for (const [id, c] of [["pair-local", local], ["pair-remote", remote]]) {
    const cells = $(id).children;
    [c.type, c.protocol, c.address, c.port, c.relayProtocol].forEach((v, i) => {
      cells[i + 1].textContent = v === undefined ? "" : String(v);
    });
    $(id).className = c.type;
  }
  const relayed = local.type === "relay" || remote.type === "relay";
  show("pair-note", relayed ? "Relayed through a TURN server." : "Direct path (no relay).");
}

function hangup() {
  send({ type: "bye" });
  closePeerConnection();
  if (ws) ws.close();
  ws = null;
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
