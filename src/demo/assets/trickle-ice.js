// ferroturn trickle-ICE page: gathers candidates against the STUN/TURN
// servers in the form and lists them, with icecandidateerror events.
// window.ferroturnTrickle exposes the results (used by the browser tests);
// ?autogather=1 gathers at once, ?credential=… overrides the credential.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  ready: false, // the form holds /ice-servers' values
  running: false,
  done: false,
  candidates: [], // {time, component, type, foundation, protocol, address, port, priority, relayProtocol, url}
  errors: [], // {time, url, address, port, errorCode, errorText}
  elapsed: null,
  gather,
};
window.ferroturnTrickle = state;

let pc = null;
let timer = null;

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  row.append(td);
}

/** "126 | 30 | 255": type preference, local preference, component. */
function formatPriority(p) {
  if (typeof p !== "number") return "";
  return `${p} (${p >>> 24} | ${(p >>> 8) & 0xffff} | ${256 - (p & 0xff)})`;
}

async function loadDefaults() {
  try {
    const resp = await fetch("/ice-servers", { cache: "no-store" });
    const body = await resp.json();
    const urls = body.iceServers.flatMap((s) => [].concat(s.urls));
    const withCreds = body.iceServers.find((s) => s.username);
    $("urls").value = urls.join("\n");
    $("username").value = withCreds ? withCreds.username : "";
    $("credential").value = withCreds ? withCreds.credential : "";
    $("status").textContent = body.warning || `Credentials valid for ${body.ttl} s.`;
  } catch (e) {
    $("status").textContent = `/ice-servers: ${e}`;
  }
  state.ready = true;
}

function stop(reason) {
  if (timer) clearTimeout(timer);
  timer = null;
  if (pc) pc.close();
  pc = null;
  state.running = false;
  state.done = true;
  $("gather").disabled = false;
  $("status").textContent = reason;
}

async function gather() {
  if (state.running) return;
  const urls = $("urls").value.split(/\s+/).filter((u) => u.length > 0);
  const server = { urls };
  if ($("username").value) server.username = $("username").value;
  if ($("credential").value) server.credential = $("credential").value;
  const config = {
    iceServers: urls.length ? [server] : [],
    iceTransportPolicy: $("policy").value,
    iceCandidatePoolSize: Number($("pool").value) || 0,
  };
  for (const body of ["#candidates tbody", "#errors tbody"]) document.querySelector(body).replaceChildren();
  state.candidates = [];
  state.errors = [];
  state.done = false;
  state.running = true;
  $("gather").disabled = true;
  $("status").textContent = "Gathering…";
  try {
    pc = new RTCPeerConnection(config);
  } catch (e) {
    stop(`Invalid configuration: ${e.message}`);
    return;
  }
  const begin = performance.now();
  const ms = () => Math.round(performance.now() - begin);
  pc.onicecandidate = (e) => {
    if (!e.candidate) {
      state.elapsed = ms();
      stop(`Gathering done in ${state.elapsed} ms: ${state.candidates.length} candidates, ${state.errors.length} errors.`);
      return;
    }
    const c = e.candidate;
    if (!c.candidate) return; // end-of-candidates for one m-line
    const row = {
      time: ms(),
      component: c.component,
      type: c.type,
      foundation: c.foundation,
      protocol: c.protocol,
      address: c.address,
      port: c.port,
      priority: c.priority,
      relayProtocol: c.relayProtocol || "",
      url: c.url || "",
    };
    state.candidates.push(row);
    const tr = document.createElement("tr");
    tr.className = row.type;
    [row.time, row.component, row.type, row.foundation, row.protocol, row.address, row.port,
      formatPriority(row.priority), row.relayProtocol, row.url].forEach((v) => cell(tr, v));
    document.querySelector("#candidates tbody").append(tr);
  };
  pc.onicecandidateerror = (e) => {
    const row = {
      time: ms(),
      url: e.url,
      address: e.address,
      port: e.port,
      errorCode: e.errorCode,
      errorText: e.errorText,
    };
    state.errors.push(row);
    const tr = document.createElement("tr");
    [row.time, row.url, row.address, row.port, row.errorCode, row.errorText].forEach((v) => cell(tr, v));
    document.querySelector("#errors tbody").append(tr);
  };
  // Gathering never takes longer than this, whatever the servers do.
  timer = setTimeout(() => stop(`Stopped after 20 s: ${state.candidates.length} candidates.`), 20000);
  pc.createDataChannel("probe");
  await pc.setLocalDescription(await pc.createOffer());
}

async function init() {
  const params = new URLSearchParams(location.search);
  $("gather").onclick = gather;
  $("reset").onclick = loadDefaults;
  await loadDefaults();
  if (params.has("credential")) $("credential").value = params.get("credential");
  if (params.get("autogather") === "1") gather();
}

init();
