// LiveTalking demo client: WebRTC receive-only peer plus the HTTP API.
"use strict";

const $ = (id) => document.getElementById(id);
let pc = null;
let sessionid = null;
let events = null; // EventSource on /sse: speaking, start/end of each piece, errors, closed
let turn = 0; // attached to each /human call; its events carry it back, so pieces find their line
const MAX_LOG = 100;

function setStatus(text) { $("status").textContent = text || ""; }

function setConnected(connected) {
  $("start").disabled = connected;
  $("stop").disabled = !connected;
  for (const id of ["say", "interrupt", "upload", "ask"]) $(id).disabled = !connected;
  $("sessionid").textContent = connected && sessionid !== null ? String(sessionid) : "none";
}

// A server started with --api_token answers 401 without it: the page asks once and keeps the
// token in this tab only (sessionStorage), for every call and the event stream.
const TOKEN_KEY = "livetalking-api-token";
let token = sessionStorage.getItem(TOKEN_KEY) || "";

function authHeaders(headers = {}) {
  return token ? { ...headers, Authorization: `Bearer ${token}` } : headers;
}

async function call(path, init) {
  for (let attempt = 0; ; attempt += 1) {
    const res = await fetch(path, { ...init, headers: authHeaders(init.headers) });
    if (res.status !== 401 || attempt > 0) return res;
    const given = window.prompt("This server needs its API token:");
    if (!given) return res;
    token = given.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
  }
}

async function api(path, body) {
  const init = body instanceof FormData
    ? { method: "POST", body }
    : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const res = await call(path, init);
  const reply = await res.json();
  if (reply.code !== 0) throw new Error(reply.msg || `HTTP ${res.status}`);
  return reply;
}

// --- the peer connection and its ICE servers ------------------------------------------------
// Before each Start the page asks the server which STUN/TURN servers to use (GET /ice_servers:
// what app.py's --stun and --ice_servers give; the API token goes with it when the page has one).
// If that call fails the page connects with no servers (enough on one network) and says so.
//
// Add ?relay=1 to the page's address (http://host:8010/?relay=1) to force relay-only ICE
// (iceTransportPolicy "relay"): media then flows through a TURN server or not at all, which is
// how an operator checks a TURN setup (and how the tests prove media crosses the relay).
const RELAY_ONLY = new URLSearchParams(window.location.search).get("relay") === "1";
const GATHER_TIMEOUT_MS = 10000; // a TURN server that never answers must not stall Start

async function iceServers() {
  try {
    const res = await call("/ice_servers", { method: "GET" });
    if (res.status === 401) return { refused: true }; // no token given: /offer would be refused too
    const reply = await res.json();
    if (!res.ok || reply.code !== 0) throw new Error(reply.msg || `HTTP ${res.status}`);
    return { servers: Array.isArray(reply.data?.iceServers) ? reply.data.iceServers : [], note: "" };
  } catch (err) {
    return { servers: [], note: `no STUN/TURN servers (GET /ice_servers failed: ${err.message})` };
  }
}

function newPeer(servers) {
  const policy = RELAY_ONLY ? "relay" : "all";
  try {
    return { peer: new RTCPeerConnection({ iceServers: servers, iceTransportPolicy: policy }), note: "" };
  } catch (err) { // a server list this browser refuses: connect without it rather than not at all
    return {
      peer: new RTCPeerConnection({ iceServers: [], iceTransportPolicy: policy }),
      note: `no STUN/TURN servers (this browser refused them: ${err.message})`,
    };
  }
}

function waitForIceGathering(peer) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      peer.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => { if (peer.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, GATHER_TIMEOUT_MS); // go on with what was gathered
    peer.addEventListener("icegatheringstatechange", check);
  });
}

async function start() {
  setStatus("");
  $("start").disabled = true;
  const ice = await iceServers();
  if (ice.refused) {
    setStatus("could not start: this server needs its API token");
    stop();
    return;
  }
  const made = newPeer(ice.servers);
  const note = ice.note || made.note;
  if (note) setStatus(`${note}: connecting without them`);
  pc = made.peer;
  window.livetalkingPeer = pc; // for tests and the console: pc.getStats() shows the candidate pair
  const peer = pc;
  const iceErrors = []; // a STUN/TURN server that could not be used, e.g. "turn:host:3478: 401 Unauthorized"
  pc.addEventListener("icecandidateerror", (ev) => {
    const line = `${ev.url || ev.address || "ICE server"}: ${ev.errorCode} ${ev.errorText}`.trim();
    console.warn("ICE candidate error", line);
    if (!iceErrors.includes(line)) iceErrors.push(line);
  });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.addEventListener("track", (ev) => {
    // The server sends both tracks in one stream: one element plays it, so the browser keeps
    // sound and picture in sync (and the voice is not played twice).
    const stream = ev.streams[0];
    if (stream) {
      if ($("video").srcObject !== stream) $("video").srcObject = stream;
      return;
    }
    const target = ev.track.kind === "video" ? $("video") : $("audio");
    target.srcObject = new MediaStream([ev.track]);
  });
  pc.addEventListener("connectionstatechange", () => {
    if (pc !== peer) return; // an earlier Start's peer
    if (peer.connectionState === "failed") {
      const why = iceErrors.length ? ` (${iceErrors.join("; ")})` : "";
      const relay = RELAY_ONLY ? " through the TURN relay (?relay=1)" : "";
      setStatus(`the connection failed: no network path to the server worked${relay}${why}`);
      stop();
    } else if (peer.connectionState === "closed") {
      stop();
    }
  });
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    if (RELAY_ONLY && !/^a=candidate:.* typ relay/m.test(pc.localDescription.sdp)) {
      const why = iceErrors.length ? iceErrors.join("; ")
        : ice.note || made.note || (ice.servers.length ? "no TURN server answered"
          : "the server gives no TURN server (see app.py --ice_servers)");
      throw new Error(`relay-only (?relay=1) but no TURN relay address was gathered: ${why}`);
    }
    const res = await call("/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
    });
    const answer = await res.json();
    if (!res.ok || answer.code === -1) throw new Error(answer.msg || `HTTP ${res.status}`);
    sessionid = answer.sessionid;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    setConnected(true);
    listen(sessionid);
  } catch (err) {
    setStatus(`could not start: ${err.message}`);
    stop();
  }
}

function stop() {
  if (events) events.close();
  events = null;
  if (pc) pc.close();
  pc = null;
  window.livetalkingPeer = null;
  // Tell the server at once (a peer that never connected would otherwise hold its session
  // until the 10 s connect timeout); a failure here changes nothing for the page.
  if (sessionid !== null) call(`/session/${sessionid}`, { method: "DELETE" }).catch(() => {});
  sessionid = null;
  setConnected(false);
  showSpeaking(false);
}

function showSpeaking(speaking) {
  $("speaking").dataset.speaking = String(speaking);
  $("speaking").textContent = speaking ? "speaking" : "idle";
}

// --- session events -------------------------------------------------------------------------
function listen(id) {
  const auth = token ? `&token=${encodeURIComponent(token)}` : "";
  events = new EventSource(`/sse?sessionid=${id}${auth}`);
  events.onmessage = (msg) => onEvent(JSON.parse(msg.data));
  // The browser reconnects by itself; once the session is gone the server answers 404 and it stops.
  events.onerror = () => { if (events && events.readyState === EventSource.CLOSED) logEvent({ status: "disconnected" }); };
}

function onEvent(ev) {
  logEvent(ev);
  if (ev.status === "speaking") showSpeaking(ev.speaking === true);
  else if (ev.status === "start") pieceOf(ev, true);
  else if (ev.status === "end") pieceOf(ev, false);
  else if (ev.status === "error") setStatus(ev.msg);
  else if (ev.status === "closed" && events) { events.close(); events = null; }
}

function logEvent(ev) {
  const li = document.createElement("li");
  const { status, ...rest } = ev;
  li.textContent = `${new Date().toLocaleTimeString()} ${status} ${JSON.stringify(rest)}`;
  li.title = li.textContent; // the whole event, when the line is cut
  if (status === "error") li.className = "error";
  const log = $("event-log");
  log.appendChild(li);
  while (log.children.length > MAX_LOG) log.removeChild(log.firstChild);
  log.scrollTop = log.scrollHeight;
}

// The avatar's line for a turn, made on the fly for speech this page did not ask for.
function answerLine(t) {
  let line = t === undefined ? null : document.querySelector(`#transcript li.avatar[data-turn="${t}"]`);
  if (!line) line = addLine("avatar", "", t);
  return line;
}

function addLine(kind, text, t) {
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = text;
  if (t !== undefined) li.dataset.turn = String(t);
  $("transcript").appendChild(li);
  $("transcript").scrollTop = $("transcript").scrollHeight;
  return li;
}

// A piece is highlighted from the moment its audio leaves the server until its end event.
function pieceOf(ev, starting) {
  if (!ev.text) return; // an uploaded file has no words
  const line = answerLine(ev.turn);
  if (starting) {
    const span = document.createElement("span");
    span.className = "piece now";
    span.textContent = ev.text + " ";
    line.appendChild(span);
  } else {
    const span = [...line.querySelectorAll(".piece.now")].find((s) => s.textContent.trim() === ev.text);
    if (span) span.className = "piece said";
  }
}

// --- requests -----------------------------------------------------------------------------------
async function send(kind, input) {
  const text = input.value.trim();
  if (!text || sessionid === null) return;
  turn += 1;
  const lines = [];
  if (kind === "chat") lines.push(addLine("user", `You: ${text}`, turn));
  lines.push(addLine("avatar", "", turn));
  try {
    await api("/human", { sessionid, text, type: kind, interrupt: true, turn });
    input.value = "";
    setStatus("");
  } catch (err) {
    for (const line of lines) line.remove();
    setStatus(err.message);
  }
}

function say(ev) { ev.preventDefault(); return send("echo", $("text")); }
function ask(ev) { ev.preventDefault(); return send("chat", $("question")); }

async function interrupt() {
  try { await api("/interrupt_talk", { sessionid }); } catch (err) { setStatus(err.message); }
}

async function upload(ev) {
  ev.preventDefault();
  const file = $("audio-file").files[0];
  if (!file || sessionid === null) return;
  const form = new FormData();
  form.append("file", file);
  form.append("sessionid", String(sessionid));
  try { await api("/humanaudio", form); setStatus(""); } catch (err) { setStatus(err.message); }
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
$("echo-form").addEventListener("submit", say);
$("chat-form").addEventListener("submit", ask);
$("interrupt").addEventListener("click", interrupt);
$("audio-form").addEventListener("submit", upload);
setConnected(false);
