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

function waitForIceGathering(peer) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (peer.iceGatheringState === "complete") {
        peer.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
    };
    peer.addEventListener("icegatheringstatechange", check);
  });
}

async function start() {
  setStatus("");
  $("start").disabled = true;
  pc = new RTCPeerConnection({ iceServers: [] });
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
    if (pc && (pc.connectionState === "failed" || pc.connectionState === "closed")) stop();
  });
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
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
