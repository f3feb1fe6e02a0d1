// LiveTalking demo client: WebRTC receive-only peer plus the HTTP API.
"use strict";

const $ = (id) => document.getElementById(id);
let pc = null;
let sessionid = null;
let pollTimer = null;

function setStatus(text) { $("status").textContent = text || ""; }

function setConnected(connected) {
  $("start").disabled = connected;
  $("stop").disabled = !connected;
  for (const id of ["say", "interrupt", "upload"]) $(id).disabled = !connected;
  $("sessionid").textContent = connected && sessionid !== null ? String(sessionid) : "none";
}

async function api(path, body) {
  const init = body instanceof FormData
    ? { method: "POST", body }
    : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const res = await fetch(path, init);
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
    const res = await fetch("/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
    });
    const answer = await res.json();
    if (!res.ok || answer.code === -1) throw new Error(answer.msg || `HTTP ${res.status}`);
    sessionid = answer.sessionid;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    setConnected(true);
    pollTimer = setInterval(pollSpeaking, 250);
  } catch (err) {
    setStatus(`could not start: ${err.message}`);
    stop();
  }
}

function stop() {
  if (pollTimer) clearInterval(pollTimer);
  pollTimer = null;
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

async function pollSpeaking() {
  if (sessionid === null) return;
  try {
    const reply = await api("/is_speaking", { sessionid });
    showSpeaking(reply.data === true);
  } catch (err) {
    setStatus(err.message);
  }
}

async function say(ev) {
  ev.preventDefault();
  const text = $("text").value.trim();
  if (!text || sessionid === null) return;
  try {
    await api("/human", { sessionid, text, type: "echo", interrupt: true });
    $("text").value = "";
    setStatus("");
  } catch (err) {
    setStatus(err.message);
  }
}

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
$("interrupt").addEventListener("click", interrupt);
$("audio-form").addEventListener("submit", upload);
setConnected(false);
