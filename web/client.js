// LiveTalking demo client: a WebRTC peer (the avatar's picture and voice in, the microphone out)
// plus the HTTP API.
"use strict";

const $ = (id) => document.getElementById(id);
let pc = null;
let sessionid = null;
let events = null; // EventSource on /sse: speaking, start/end of each piece, errors, closed
let turn = 0; // attached to each /human and /asr_mode call; its events carry it back, so pieces find their line
let micSender = null; // the audio transceiver's sender: the microphone goes out on it, no renegotiation
let asr = null; // the server's speech input for this session ({engine, mode, barge_in}), or null: none
// Whether the user picked a speech mode: only then does /offer ask for one. Otherwise the server
// picks (chat with an LLM, echo without; it refuses "chat" when it has no LLM) and the select shows it.
let modeChosen = false;
const MAX_LOG = 100;

function setStatus(text) { $("status").textContent = text || ""; }

function setConnected(connected) {
  $("start").disabled = connected;
  $("stop").disabled = !connected;
  for (const id of ["say", "interrupt", "upload", "ask", "set-avatar", "play-action"]) $(id).disabled = !connected;
  $("sessionid").textContent = connected && sessionid !== null ? String(sessionid) : "none";
  setMicControls(connected);
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
  // sendrecv from the start, with no track yet: turning the mic on later is a replaceTrack on
  // this sender (no renegotiation), and nothing asks for the microphone until the user does.
  micSender = pc.addTransceiver("audio", { direction: "sendrecv" }).sender;
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
      body: JSON.stringify(offerBody(pc.localDescription)),
    });
    const answer = await res.json();
    if (!res.ok || answer.code === -1) throw new Error(answer.msg || `HTTP ${res.status}`);
    sessionid = answer.sessionid;
    // An older server's answer has no "asr" at all: like --asr off, no speech input.
    asr = answer.asr && typeof answer.asr === "object" ? answer.asr : null;
    if (asr && (asr.mode === "chat" || asr.mode === "echo")) $("asr-mode").value = asr.mode;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    setConnected(true);
    listen(sessionid);
  } catch (err) {
    setStatus(`could not start: ${err.message}`);
    stop();
  }
}

function offerBody(offer) {
  const body = { sdp: offer.sdp, type: offer.type };
  if (modeChosen) body.asr_mode = $("asr-mode").value;
  const avatar = $("avatar").value.trim();
  if (avatar) body.avatar = avatar;
  return body;
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
  releaseMic();
  micSender = null;
  asr = null;
  setConnected(false);
  showSpeaking(false);
  showListening(false);
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
  else if (ev.status === "listening") showListening(true);
  else if (ev.status === "transcript") heard(ev);
  else if (ev.status === "barge_in") flash($("speaking"));
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

// The avatar's line for a turn: the turn's last line when it is the avatar's, else a new one.
// New ones are made on the fly for speech this page did not ask for (no turn: it continues the
// bottom line while that is such a line) and for each spoken question (all questions of one
// mic opening share its turn, or have none: each answer goes under its own question).
function answerLine(t) {
  const lines = t === undefined ? $("transcript").children
    : document.querySelectorAll(`#transcript li[data-turn="${t}"]`);
  const last = lines[lines.length - 1];
  const fits = last && last.classList.contains("avatar") && (t !== undefined || last.dataset.turn === undefined);
  return fits ? last : addLine("avatar", "", t);
}

// The highlighted span of a piece that has just been said, wherever its line is.
function pieceSpan(ev) {
  const lines = ev.turn === undefined ? "#transcript li.avatar:not([data-turn])"
    : `#transcript li.avatar[data-turn="${ev.turn}"]`;
  return [...document.querySelectorAll(`${lines} .piece.now`)].find((s) => s.textContent.trim() === ev.text);
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
  if (starting) {
    const span = document.createElement("span");
    span.className = "piece now";
    span.textContent = ev.text + " ";
    answerLine(ev.turn).appendChild(span);
  } else {
    const span = pieceSpan(ev);
    if (span) span.className = "piece said";
  }
}

// --- the microphone -------------------------------------------------------------------------------
// One getUserMedia per session, at the first Mic click: off is track.enabled = false (the browser
// sends silence, the server hears nobody), so on again is instant and asks nothing. Stop, or the
// device going away, releases the track; the next Mic click asks again.
const MIC_CONSTRAINTS = {
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
};
// The meter shows the RMS scaled up: speech at a normal distance is an RMS of 0.02-0.2, which
// would barely move a 0..1 bar.
const METER_GAIN = 4;
const mic = {
  track: null, context: null, analyser: null, frame: 0,
  opening: null, // the getUserMedia in flight: a second click waits for it, never asks twice
  on: false,
  oneUtterance: false, // push-to-talk: off again after the next final transcript
};

function setMicControls(connected) {
  const usable = connected && asr !== null;
  const why = !connected ? "Start a session first"
    : asr === null ? "this server has no speech input (app.py --asr off)" : "";
  const interrupts = asr && asr.barge_in ? "; talk over the avatar to interrupt it" : "";
  const titles = {
    mic: `Talk to the avatar (${asr?.engine || "speech input"}): on for one question${interrupts}`,
    "hands-free": "Keep the mic on, question after question, until unticked",
    "asr-mode": "chat: the LLM answers what you say; echo: the avatar repeats it",
  };
  for (const [id, title] of Object.entries(titles)) {
    $(id).disabled = !usable;
    $(id).title = why || title;
  }
}

function showMic(on) {
  mic.on = on;
  $("mic").dataset.on = String(on);
  $("mic").setAttribute("aria-pressed", String(on));
  if (mic.track) mic.track.enabled = on;
  if (!on) $("hands-free").checked = false;
}

async function micOn(oneUtterance) {
  mic.oneUtterance = oneUtterance;
  if (mic.on) return;
  if (!mic.track && !(await openMic())) return;
  showMic(true);
  // A fresh turn for what is said from now on: its transcript and answer events carry it back.
  turn += 1;
  setAsrMode($("asr-mode").value, { turn });
}

function micOff() {
  showMic(false);
  $("mic-level").value = 0;
}

// getUserMedia, the track onto the peer's sender and a level meter on it: false when the browser
// gives no microphone (permission denied, no device), said in #status; the session streams on.
async function openMic() {
  const peer = pc;
  if (!mic.opening) mic.opening = navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
  let stream;
  try {
    stream = await mic.opening;
  } catch (err) {
    setStatus(`microphone unavailable: ${err.name}${err.message ? ` (${err.message})` : ""}`);
    micOff();
    return false;
  } finally {
    mic.opening = null;
  }
  const track = stream.getAudioTracks()[0];
  if (pc !== peer || !micSender || !track || mic.track) { // Stop while the browser asked, or a second click
    if (track !== mic.track) stream.getTracks().forEach((t) => t.stop());
    return Boolean(mic.track) && pc === peer;
  }
  mic.track = track;
  track.enabled = false; // until showMic(true): the caller decides
  track.onended = () => { // unplugged, or the browser took it back
    if (mic.track !== track) return;
    releaseMic();
    setStatus("the microphone stopped (unplugged?): click Mic to use it again");
  };
  try {
    await micSender.replaceTrack(track);
  } catch (err) {
    releaseMic();
    setStatus(`microphone unavailable: could not send it (${err.message})`);
    return false;
  }
  startMeter(stream);
  setStatus("");
  return true;
}

function releaseMic() {
  micOff();
  const track = mic.track;
  mic.track = null;
  if (track) {
    track.onended = null;
    track.stop();
  }
  if (micSender) micSender.replaceTrack(null).catch(() => {}); // a closed peer refuses: nothing to undo
  cancelAnimationFrame(mic.frame);
  if (mic.context) mic.context.close().catch(() => {});
  mic.context = null;
  mic.analyser = null;
}

// The level meter: the RMS of the mic's last samples, once a frame; 0 while the mic is off.
function startMeter(stream) {
  try {
    mic.context = new AudioContext();
    mic.analyser = mic.context.createAnalyser();
    mic.analyser.fftSize = 1024;
    mic.context.createMediaStreamSource(stream).connect(mic.analyser);
  } catch (err) { // no WebAudio: the mic works without its meter
    console.warn("no microphone level meter", err);
    mic.context = null;
    mic.analyser = null;
    return;
  }
  const samples = new Float32Array(mic.analyser.fftSize);
  const tick = () => {
    if (!mic.analyser) return;
    let level = 0;
    if (mic.on) {
      mic.analyser.getFloatTimeDomainData(samples);
      let sum = 0;
      for (const x of samples) sum += x * x;
      level = Math.min(1, METER_GAIN * Math.sqrt(sum / samples.length));
    }
    $("mic-level").value = level;
    mic.frame = requestAnimationFrame(tick);
  };
  mic.frame = requestAnimationFrame(tick);
}

function clickMic() {
  if (mic.on) {
    micOff(); // and hands-free with it: the user said stop
  } else {
    micOn(!$("hands-free").checked);
  }
}

function toggleHandsFree() {
  if ($("hands-free").checked) micOn(false);
  else micOff();
}

// Also how the spoken turn gets its fields echoed back (like /human's turn).
async function setAsrMode(mode, fields = {}) {
  if (sessionid === null || asr === null) return;
  const session = asr;
  try {
    const reply = await api("/asr_mode", { sessionid, mode, ...fields });
    session.mode = reply.data && reply.data.mode ? reply.data.mode : mode;
  } catch (err) { // e.g. chat on a server without an LLM: the select shows what is still in force
    setStatus(`could not set the speech mode: ${err.message}`);
    if (session === asr) $("asr-mode").value = session.mode;
  }
}

function chooseAsrMode() {
  modeChosen = true; // and the next Start asks for it
  setAsrMode($("asr-mode").value);
}

function showListening(listening) {
  $("listening").dataset.listening = String(listening);
}

function flash(el) {
  el.classList.add("flash");
  setTimeout(() => el.classList.remove("flash"), 800);
}

// What the server heard: a partial updates the user's line in place; the final one settles it
// (or removes it when nothing was understood), ends listening and, push-to-talk, the mic.
function heard(ev) {
  const text = typeof ev.text === "string" ? ev.text.trim() : "";
  let line = document.querySelector("#transcript li.user.partial");
  if (!ev.final) {
    showListening(true); // a partial means the user is still talking, even if "listening" was missed
    if (!line) line = addLine("user partial", "", ev.turn);
    line.textContent = `You: ${text}`;
    return;
  }
  showListening(false);
  if (mic.on && mic.oneUtterance) micOff();
  if (!text) {
    if (line) line.remove();
    return;
  }
  if (!line) line = addLine("user", "", ev.turn);
  line.className = "user";
  line.textContent = `You: ${text}`;
  // To the bottom: whatever the avatar still said while the user talked stays above the question,
  // and the answer gets a new line under it.
  $("transcript").appendChild(line);
  $("transcript").scrollTop = $("transcript").scrollHeight;
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

// --- avatars and actions: /set_avatar switches the face, /set_audiotype plays a clip ---------
async function setAvatar(ev) {
  ev.preventDefault();
  const avatar = $("avatar").value.trim();
  if (!avatar || sessionid === null) return;
  try { await api("/set_avatar", { sessionid, avatar }); setStatus(`avatar: ${avatar}`); }
  catch (err) { setStatus(err.message); }
}

async function playAction() {
  const audiotype = Number($("audiotype").value);
  if (!Number.isInteger(audiotype) || audiotype < 1 || sessionid === null) return;
  try { await api("/set_audiotype", { sessionid, audiotype }); setStatus(""); }
  catch (err) { setStatus(err.message); }
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
$("look-form").addEventListener("submit", setAvatar);
$("play-action").addEventListener("click", playAction);
// ?avatar=NAME in the page's address picks the avatar (as upstream V2's pages do).
$("avatar").value = new URLSearchParams(window.location.search).get("avatar") || "";
$("mic").addEventListener("click", clickMic);
$("hands-free").addEventListener("change", toggleHandsFree);
$("asr-mode").addEventListener("change", chooseAsrMode);
setConnected(false);
