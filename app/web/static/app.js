// Vigil preview: WebRTC video of one camera plus a canvas overlay of detections from the
// "detections" DataChannel. The server announces every video frame as {seq, pts}; pts is the RTP
// timestamp minus an origin this page learns, so a decoded frame maps to its capture sequence number
// and is drawn with the boxes of that very frame (or the newest earlier one).
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token");
const headers = token ? { Authorization: "Bearer " + token } : {};
const $ = (id) => document.getElementById(id);
const video = $("video"), overlay = $("overlay"), ctx = overlay.getContext("2d");

const state = {
  pc: null, channel: null, camera: null, retry: 1000,
  frames: new Map(),        // pts -> frame announcement
  detections: [],           // recent detection messages, ascending seq
  originVotes: new Map(), origin: null,
  shownSeq: null, resultTimes: [], lagMs: [],
};
// Read by the browser tests: proof that video plays and boxes are drawn.
window.vigil = { boxesDrawn: 0, framesMatched: 0, detections: 0, state: "idle", lastBoxes: 0 };

function setState(s) {
  window.vigil.state = s;
  const el = $("state");
  el.textContent = s;
  el.className = "state " + s;
}

async function api(path, init = {}) {
  const res = await fetch(path, { ...init, headers: { ...headers, ...(init.headers || {}) } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

function waitForIce(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ms);  // host candidates arrive at once; do not wait on slow interfaces
  });
}

async function connect() {
  close();
  state.frames.clear(); state.detections = []; state.originVotes.clear(); state.origin = null;
  setState("connecting");
  const pc = new RTCPeerConnection({ iceServers: [] });
  state.pc = pc;
  pc.addTransceiver("video", { direction: "recvonly" });
  const channel = pc.createDataChannel("detections");
  state.channel = channel;
  channel.onmessage = (ev) => onMessage(JSON.parse(ev.data));
  pc.ontrack = (ev) => {
    video.srcObject = new MediaStream([ev.track]);
    state.receiver = ev.receiver;
  };
  pc.onconnectionstatechange = () => {
    setState(pc.connectionState);
    if (pc.connectionState === "connected") state.retry = 1000;
    if (["failed", "disconnected", "closed"].includes(pc.connectionState) && state.pc === pc) scheduleReconnect();
  };
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIce(pc, 2000);
  try {
    const answer = await api("/api/webrtc/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ type: "offer", sdp: pc.localDescription.sdp, camera: state.camera }),
    });
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    $("message").textContent = "";
  } catch (err) {
    $("message").textContent = String(err.message || err);
    scheduleReconnect();
  }
}

function close() {
  if (state.pc) { const pc = state.pc; state.pc = null; pc.close(); }
}

function scheduleReconnect() {
  close();
  setState("reconnecting");
  setTimeout(connect, state.retry);
  state.retry = Math.min(state.retry * 2, 15000);
}

function onMessage(msg) {
  if (msg.type === "frame") {
    state.frames.set(msg.pts, msg);
    if (state.frames.size > 600) state.frames.delete(state.frames.keys().next().value);
  } else if (msg.type === "detections") {
    window.vigil.detections++;
    state.detections.push(msg);
    if (state.detections.length > 300) state.detections.shift();
    const now = performance.now();
    state.resultTimes.push(now);
    while (state.resultTimes.length && now - state.resultTimes[0] > 3000) state.resultTimes.shift();
    $("fps").textContent = (state.resultTimes.length / 3).toFixed(1) + " fps";
    $("inf").textContent = msg.inference_ms.toFixed(0) + " ms";
    $("age").textContent = msg.frame_age_ms.toFixed(0) + " ms";
    if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) draw(msg);
  } else if (msg.type === "system") {
    $("message").textContent = `${msg.event}: ${msg.reason}`;
  }
}

// The RTP timestamp origin is random per connection: vote on rtp - pts over frame announcements.
function learnOrigin(rtp) {
  for (const pts of state.frames.keys()) {
    const o = (rtp - pts) >>> 0;
    const n = (state.originVotes.get(o) || 0) + 1;
    state.originVotes.set(o, n);
    if (n >= 5 && state.origin !== o) state.origin = o;
  }
  if (state.originVotes.size > 20000) state.originVotes.clear();
}

function detectionFor(seq) {
  let best = null;
  for (const d of state.detections) { if (d.seq <= seq) best = d; else break; }
  return best || state.detections[state.detections.length - 1] || null;
}

function onVideoFrame(now, meta) {
  if (meta.rtpTimestamp !== undefined) {
    if (state.origin === null) learnOrigin(meta.rtpTimestamp);
    const frame = state.origin !== null ? state.frames.get((meta.rtpTimestamp - state.origin) >>> 0) : null;
    if (frame) {
      window.vigil.framesMatched++;
      state.shownSeq = frame.seq;
      const latest = state.detections[state.detections.length - 1];
      if (latest) syncDelay(latest.captured_at - frame.captured_at);
      draw(detectionFor(frame.seq));
    } else {
      draw(state.detections[state.detections.length - 1] || null);
    }
  } else {
    draw(state.detections[state.detections.length - 1] || null);
  }
  $("vid").textContent = `${video.videoWidth}×${video.videoHeight}`;
  video.requestVideoFrameCallback(onVideoFrame);
}

// Results trail the video by the detector's latency; holding the video back by that much
// (jitterBufferTarget, Chromium) shows each frame with its own boxes.
function syncDelay(aheadMs) {
  const r = state.receiver;
  if (!r || !("jitterBufferTarget" in r)) return;
  state.lagMs.push(-aheadMs);
  if (state.lagMs.length < 30) return;
  const sorted = state.lagMs.slice().sort((a, b) => a - b);
  state.lagMs = [];
  const want = $("sync").checked ? Math.max(0, Math.min(4000, sorted[sorted.length >> 1] + 40)) : 0;
  if (Math.abs((r.jitterBufferTarget || 0) - want) > 40) r.jitterBufferTarget = want;
}

// The same colours as app/colors.py: hues a golden angle apart by class id, whatever the labels are.
function classColor(classId) {
  const hue = (classId * 0.618033988749895) % 1;
  const [s, v] = [0.75, 0.95];
  const f = (n) => {
    const k = (n + hue * 6) % 6;
    return Math.round(255 * (v - v * s * Math.max(0, Math.min(k, 4 - k, 1))));
  };
  return `rgb(${f(5)}, ${f(3)}, ${f(1)})`;
}

function draw(msg) {
  const w = video.clientWidth, h = video.clientHeight;
  if (overlay.width !== w || overlay.height !== h) { overlay.width = w; overlay.height = h; }
  ctx.clearRect(0, 0, w, h);
  if (!msg) return;
  ctx.lineWidth = 2;
  ctx.font = "12px system-ui, sans-serif";
  for (const b of msg.boxes) {
    const [x1, y1, x2, y2] = b.box_norm;
    const color = classColor(b.class_id ?? 0);
    ctx.strokeStyle = color;
    ctx.strokeRect(x1 * w, y1 * h, (x2 - x1) * w, (y2 - y1) * h);
    const text = `${b.label} ${b.confidence.toFixed(2)}`;
    ctx.fillStyle = color;
    ctx.fillRect(x1 * w, Math.max(0, y1 * h - 15), ctx.measureText(text).width + 6, 15);
    ctx.fillStyle = "#000";
    ctx.fillText(text, x1 * w + 3, Math.max(11, y1 * h - 3));
  }
  window.vigil.boxesDrawn += msg.boxes.length;
  window.vigil.lastBoxes = msg.boxes.length;
  $("boxes").textContent = String(msg.boxes.length);
}

async function main() {
  try {
    const info = await api("/api/cameras");
    const select = $("camera");
    for (const c of info.cameras) select.add(new Option(c.name, c.name));
    state.camera = params.get("camera") || info.cameras[0].name;
    select.value = state.camera;
    select.onchange = () => { state.camera = select.value; connect(); };
  } catch (err) {
    $("message").textContent = String(err.message || err);
    setState("failed");
    return;
  }
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) video.requestVideoFrameCallback(onVideoFrame);
  connect();
}

main();
