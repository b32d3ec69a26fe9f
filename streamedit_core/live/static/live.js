// StreamEdit Live page: camera -> WebRTC -> the server's editor -> the edited track back.
// Plain JS, no build step. URLs are relative to the page, so the same file works at "/" (the
// standalone server) and at "/streamedit/live/" (inside ComfyUI).
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const outputOnly = params.get("view") === "output";
const FILE_OPTION = "__file__";

const live = {  // the page's state; also what tests and the console can read
  info: null, pc: null, channel: null, sessionId: null, stream: null, fileVideo: null,
  state: "idle", lastStats: null, transport: null, error: null, replies: [], nextId: 1, timers: [],
};
window.live = live;

function setStatus(text, cls = "") {
  live.state = text;
  $("status").textContent = text;
  $("status").className = "status " + cls;
}

function showError(message) {
  live.error = message;
  $("error").textContent = message;
  $("error").hidden = !message;
  if (message) setStatus("error", "error");
}

async function getJSON(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = { error: `HTTP ${response.status}` }; }
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// --- set-up --------------------------------------------------------------------------------
async function loadInfo() {
  const info = await getJSON("api/info");
  live.info = info;
  if (!info.configured) {
    showError(info.reason);
    return info;
  }
  $("model").textContent = info.model ? `model: ${info.model}` : "";
  $("size").textContent = `${info.size} × ${info.size}`;
  $("prompt").value = params.get("prompt") || info.prompt;
  $("transition").max = Math.min(info.transition_max, 64);
  $("transition").value = info.transition_frames;
  $("transition-value").textContent = info.transition_frames;
  const steps = $("steps");
  steps.innerHTML = "";
  for (let k = 1; k <= Math.max(info.steps, 6); k++) {
    steps.add(new Option(k === info.steps ? `${k} (model)` : String(k), String(k), false, k === info.steps));
  }
  if (params.get("steps")) steps.value = params.get("steps");
  const examples = $("examples");
  examples.innerHTML = "";
  for (const text of info.examples || []) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.onclick = () => { $("prompt").value = text; applyPrompt(); };
    examples.appendChild(b);
  }
  return info;
}

async function listCameras() {
  const select = $("camera");
  select.innerHTML = "";
  if (live.info && live.info.source) {
    select.add(new Option(`server file: ${live.info.source}`, ""));
    select.disabled = true;
    return;
  }
  let devices = [];
  try { devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput"); }
  catch (e) { /* no media devices (insecure origin): only the file option */ }
  devices.forEach((d, i) => select.add(new Option(d.label || `camera ${i + 1}`, d.deviceId)));
  select.add(new Option("video file as the camera…", FILE_OPTION));
}

$("camera").onchange = () => { if ($("camera").value === FILE_OPTION) $("file").click(); };

// A local video file played in a hidden <video>, its captureStream() sent as the camera.
async function fileStream() {
  const file = $("file").files[0];
  if (!file) throw new Error("choose a video file first");
  const video = document.createElement("video");
  video.src = URL.createObjectURL(file);
  video.loop = true;
  video.muted = true;
  await video.play();
  live.fileVideo = video;
  return video.captureStream();
}

async function cameraStream() {
  const choice = $("camera").value;
  if (choice === FILE_OPTION) return fileStream();
  const video = choice ? { deviceId: { exact: choice } } : true;
  const stream = await navigator.mediaDevices.getUserMedia({ video, audio: false });
  await listCameras();  // labels are only known once a camera was granted
  const track = stream.getVideoTracks()[0];
  const id = track.getSettings().deviceId;
  if (id) $("camera").value = id;
  return stream;
}

function waitForIce(pc, timeoutMs = 3000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs);
  });
}

// --- a session -------------------------------------------------------------------------------
async function start() {
  if (live.pc) return;
  showError("");
  $("start").disabled = true;
  setStatus("connecting", "warming");
  try {
    const info = live.info && live.info.configured ? live.info : await loadInfo();
    if (!info.configured) throw new Error(info.reason);
    const pc = new RTCPeerConnection({ iceServers: [] });
    live.pc = pc;
    const channel = pc.createDataChannel("control");
    live.channel = channel;
    channel.onmessage = (e) => onMessage(JSON.parse(e.data));
    channel.onclose = () => { if (live.pc === pc) stop("the server closed the session"); };
    let editedIndex = 0;
    if (info.source) {  // the server's file is the camera: receive edited, then source
      pc.addTransceiver("video", { direction: "recvonly" });
      pc.addTransceiver("video", { direction: "recvonly" });
    } else {
      live.stream = await cameraStream();
      if (!outputOnly) $("source").srcObject = live.stream;
      pc.addTransceiver(live.stream.getVideoTracks()[0], { direction: "sendrecv" });
    }
    pc.ontrack = (e) => {
      const index = pc.getTransceivers().indexOf(e.transceiver);
      const target = index === editedIndex ? $("edited") : $("source");
      target.srcObject = new MediaStream([e.track]);
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed") stop("the connection failed");
    };
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIce(pc);
    const body = { sdp: pc.localDescription.sdp, type: "offer", prompt: $("prompt").value, steps: Number($("steps").value) };
    const answer = await getJSON("api/offer", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    live.sessionId = answer.session;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    $("stop").disabled = false;
    $("reset").disabled = false;
    setStatus("warming up", "warming");
    live.timers.push(setInterval(() => send({ type: "ping" }), 1000));
    live.timers.push(setInterval(estimateTransport, 1000));
  } catch (e) {
    await stop();
    showError(e.message || String(e));
  }
}

async function stop(reason) {
  const pc = live.pc;
  live.timers.forEach(clearInterval);
  live.timers = [];
  if (pc) {
    live.pc = null;
    if (live.sessionId) navigator.sendBeacon(`api/sessions/${live.sessionId}/close`);
    pc.close();
  }
  if (live.stream) live.stream.getTracks().forEach((t) => t.stop());
  if (live.fileVideo) { live.fileVideo.pause(); URL.revokeObjectURL(live.fileVideo.src); }
  live.stream = live.fileVideo = live.channel = live.sessionId = null;
  $("start").disabled = false;
  $("stop").disabled = true;
  $("reset").disabled = true;
  if (!live.error) setStatus(reason ? `ended: ${reason}` : "idle");
}

function send(msg) {
  if (live.channel && live.channel.readyState === "open") live.channel.send(JSON.stringify(msg));
}

function command(msg) {
  msg.id = live.nextId++;
  send(msg);
  return msg.id;
}

function applyPrompt() {
  const prompt = $("prompt").value;
  const transition = Number($("transition").value);
  if (!live.pc) return;
  command({ type: "prompt", prompt, transition });
}

// A prompt the model does not know: it still edits, as the nearest edit it knows (the model's
// closed vocabulary); say so next to the prompt box.
function showWarning(text) {
  $("prompt-warning").textContent = text || "";
  $("prompt-warning").hidden = !text;
}

function onMessage(msg) {
  if (msg.type === "stats") return renderStats(msg);
  if (msg.type === "reply") {
    live.replies.push(msg);
    showError("");
    if (msg.read_as !== undefined) $("read-as").textContent = msg.read_as || "(as written)";
    if (msg.warning !== undefined) showWarning(msg.warning);
    return;
  }
  if (msg.type === "error") { live.replies.push(msg); return showError(msg.message); }
  if (msg.type === "ended") { stop(msg.reason); }
}

// --- stats -----------------------------------------------------------------------------------
const PARTS = ["queue", "pipeline", "compute", "pacing", "transport"];
const fmt = (v, unit) => (v === null || v === undefined ? "-" : `${Math.round(v)} ${unit}`);

// Browser-side transport estimate from WebRTC stats: the round trip, the receive jitter
// buffer, and the browser's own encode and decode time per frame.
let lastRtc = null;
async function estimateTransport() {
  if (!live.pc) return;
  const report = await live.pc.getStats();
  const now = { rtt: null, jb: 0, jbCount: 0, enc: 0, encCount: 0, dec: 0, decCount: 0 };
  report.forEach((s) => {
    if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) now.rtt = s.currentRoundTripTime;
    if (s.type === "inbound-rtp" && s.kind === "video") {
      now.jb += s.jitterBufferDelay || 0; now.jbCount += s.jitterBufferEmittedCount || 0;
      now.dec += s.totalDecodeTime || 0; now.decCount += s.framesDecoded || 0;
    }
    if (s.type === "outbound-rtp" && s.kind === "video") { now.enc += s.totalEncodeTime || 0; now.encCount += s.framesEncoded || 0; }
  });
  if (lastRtc) {
    const per = (a, b, n, m) => (n - m > 0 ? (a - b) / (n - m) : 0);
    live.transport = 1000 * ((now.rtt || 0) + per(now.jb, lastRtc.jb, now.jbCount, lastRtc.jbCount)
      + per(now.enc, lastRtc.enc, now.encCount, lastRtc.encCount) + per(now.dec, lastRtc.dec, now.decCount, lastRtc.decCount));
  }
  lastRtc = now;
}

function renderStats(s) {
  live.lastStats = s;
  if (s.read_as !== undefined && s.read_as !== null) $("read-as").textContent = s.read_as;
  if (s.warning !== undefined) showWarning(s.warning);
  if (s.size) $("size").textContent = `${s.size} × ${s.size}`;
  $("s-input").textContent = `${s.input_fps.toFixed(1)} fps`;
  $("s-output").textContent = `${s.output_fps.toFixed(1)} fps`;
  $("s-latency").textContent = `${fmt(s.latency_ms.p50, "")}/ ${fmt(s.latency_ms.p95, "ms")} + transport ≈ ${fmt(live.transport, "ms")}`;
  $("s-dropped").textContent = `${s.frames_dropped} of ${s.frames_in} (${(100 * s.dropped_share).toFixed(1)} %)`;
  $("s-model").textContent = `${fmt(s.model_ms_per_step, "ms")} (${s.steps} steps in flight)`;
  $("s-state").textContent = s.state;
  if (s.state === "running") setStatus("running", "running");
  const parts = { ...s.split_ms, transport: live.transport };
  const total = PARTS.reduce((a, k) => a + (parts[k] || 0), 0);
  const bar = $("split");
  bar.innerHTML = "";
  if (total > 0) {
    let dominant = PARTS[0];
    for (const k of PARTS) {
      if ((parts[k] || 0) > (parts[dominant] || 0)) dominant = k;
      const d = document.createElement("div");
      d.className = `part-${k}`;
      d.style.width = `${(100 * (parts[k] || 0)) / total}%`;
      d.title = `${k}: ${fmt(parts[k], "ms")}`;
      bar.appendChild(d);
    }
    live.dominant = dominant;
    $("split-legend").textContent = PARTS.map((k) => `${k} ${fmt(parts[k], "ms")}`).join(" · ")
      + ` — most of the delay: ${dominant}` + (dominant === "pipeline" ? " (fewer steps shorten it)" : "");
  }
}

// --- wiring ----------------------------------------------------------------------------------
$("start").onclick = start;
$("stop").onclick = () => { send({ type: "stop" }); stop(); };
$("reset").onclick = () => command({ type: "reset" });
$("prompt-form").onsubmit = (e) => { e.preventDefault(); applyPrompt(); };
$("transition").oninput = () => { $("transition-value").textContent = $("transition").value; };
$("steps").onchange = () => command({ type: "steps", steps: Number($("steps").value) });
window.addEventListener("pagehide", () => {
  if (live.sessionId) navigator.sendBeacon(`api/sessions/${live.sessionId}/close`);
});

(async () => {
  if (outputOnly) document.body.classList.add("output-only");
  try {
    await loadInfo();
    await listCameras();
  } catch (e) { showError(e.message); }
  if (outputOnly && live.info && live.info.configured) start();
})();
