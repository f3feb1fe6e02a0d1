"use strict";
// web/avatar.html: upload a video, follow its avatar task (GET every 500 ms), show the preview.

// The admin token (--admin_token), asked for once, only when the server answers 401, and kept in
// this tab (the admin page keeps it under the same name). Without one the server answers
// loopback callers only.
const TOKEN_KEY = "livetalking-admin-token";
const POLL_MS = 500;
const OPTIONS = {
  portrait: ["size"],
  wav2lip: ["img_size", "pads", "nosmooth"],
  musetalk: ["bbox_shift", "extra_margin", "parsing_mode"],
  ultralight: ["checkpoint"],
};
const $ = (id) => document.getElementById(id);
let taskId = null;
let pollTimer = null;

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function askToken() {
  sessionStorage.removeItem(TOKEN_KEY);  // a refused token is asked for anew
  const given = window.prompt("This server needs its admin token (--admin_token):");
  if (!given || !given.trim()) return false;
  sessionStorage.setItem(TOKEN_KEY, given.trim());
  return true;
}

// fetch with the token; on 401 the token is asked for once and the call made again.
async function call(method, path) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const res = await fetch(path, { method, headers: authHeaders() });
    if (res.status !== 401 || attempt === 1 || !askToken()) return res;
  }
  throw new Error("unreachable");
}

async function envelope(res) {
  const body = await res.json().catch(() => ({ code: -1, msg: `HTTP ${res.status}` }));
  if (!res.ok || body.code !== 0) throw new Error(body.msg || `HTTP ${res.status}`);
  return body.data;
}

function formFields() {
  const form = new FormData();
  const model = $("model").value;
  form.append("avatar_id", $("avatar_id").value.trim());
  if (model) form.append("model", model);
  for (const name of OPTIONS[model] || []) {
    const input = $(name);
    if (input.type === "checkbox") {
      if (input.checked) form.append(name, "true");
    } else if (input.value.trim()) {
      form.append(name, input.value.trim());
    }
  }
  if ($("overwrite").checked) form.append("overwrite", "true");
  if ($("notifyurl").value.trim()) form.append("notifyurl", $("notifyurl").value.trim());
  form.append("video_file", $("video_file").files[0]);  // last: the small fields arrive first
  return form;
}

// XMLHttpRequest rather than fetch: it tells how much of a large upload has gone.
function upload(form) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/avatar/task");
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) show(`uploading ${Math.round((100 * e.loaded) / e.total)}%`);
    };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { body = { code: -1, msg: `HTTP ${xhr.status}` }; }
      resolve({ status: xhr.status, body });
    };
    xhr.onerror = () => reject(new Error("the upload failed (connection closed)"));
    xhr.send(form);
  });
}

function show(text, error = "") {
  $("task-status").textContent = text;
  $("task-error").textContent = error;
}

async function create(event) {
  event.preventDefault();
  stopPolling();
  $("preview").style.display = "none";
  $("bar").value = 0;
  $("create").disabled = true;
  try {
    let reply = await upload(formFields());
    if (reply.status === 401 && askToken()) reply = await upload(formFields());
    if (reply.status !== 200 || reply.body.code !== 0) throw new Error(reply.body.msg || `HTTP ${reply.status}`);
    taskId = reply.body.data.task_id;
    $("cancel").disabled = false;
    show(`task ${taskId}: pending`);
    poll();
  } catch (err) {
    show("not started", String(err.message || err));
    $("create").disabled = false;
  }
}

function stopPolling() {
  if (pollTimer !== null) clearTimeout(pollTimer);
  pollTimer = null;
}

async function poll() {
  try {
    const task = await envelope(await call("GET", `/api/avatar/task/${taskId}`));
    $("bar").value = task.progress;
    show(`task ${task.task_id}: ${task.status} ${task.progress}% (avatar ${task.avatar_id}, model ${task.model})`,
         task.error_msg || "");
    if (["completed", "failed", "cancelled"].includes(task.status)) {
      finished(task);
      return;
    }
  } catch (err) {
    show(`task ${taskId}: cannot read its state`, String(err.message || err));
  }
  pollTimer = setTimeout(poll, POLL_MS);
}

async function finished(task) {
  $("cancel").disabled = true;
  $("create").disabled = false;
  if (task.status !== "completed" || !task.preview) return;
  // Through fetch, so that the token goes with it; an <img src> could not send it.
  const res = await call("GET", task.preview);
  if (!res.ok) return;
  const img = $("preview");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(await res.blob());
  img.style.display = "block";
}

async function cancel() {
  if (!taskId) return;
  $("cancel").disabled = true;
  try {
    await envelope(await call("DELETE", `/api/avatar/task/${taskId}`));
  } catch (err) {
    $("task-error").textContent = String(err.message || err);
  }
}

function showOptions() {
  const model = $("model").value;
  for (const set of document.querySelectorAll("fieldset.options")) {
    set.classList.toggle("shown", set.dataset.model === model);
  }
}

$("avatar-form").addEventListener("submit", create);
$("cancel").addEventListener("click", cancel);
$("model").addEventListener("change", showOptions);
$("forget-token").addEventListener("click", () => sessionStorage.removeItem(TOKEN_KEY));
showOptions();
