// Vigil preview, the large view: WebRTC video of one camera plus a canvas overlay of detections from the
// "detections" DataChannel. The server announces every video frame as {seq, pts}; pts is the RTP
// timestamp minus an origin this page learns, so a decoded frame maps to its capture sequence number
// and is drawn with the boxes of that very frame (or the newest earlier one). Zones, masks and (as an
// option) the detector's regions are drawn under the boxes (overlay.js). The grid (grid.js) opens it.
"use strict";

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
Object.assign(window.vigil, {
  boxesDrawn: 0, framesMatched: 0, detections: 0, state: "idle", lastBoxes: 0,
  largeZonesDrawn: 0, largeRegionsDrawn: 0,
});

function setState(s) {
  window.vigil.state = s;
  const el = $("state");
  el.textContent = s;
  el.className = "state " + s;
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
  if (state.pc !== pc) return;  // the view was closed or switched meanwhile
  try {
    const answer = await window.vigil.api("/api/webrtc/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ type: "offer", sdp: pc.localDescription.sdp, camera: state.camera }),
    });
    if (state.pc !== pc) return;
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    $("message").textContent = "";
  } catch (err) {
    if (state.pc !== pc) return;
    $("message").textContent = String(err.message || err);
    scheduleReconnect();
  }
}

function close() {
  clearTimeout(state.reconnectTimer);
  if (state.pc) { const pc = state.pc; state.pc = null; pc.close(); }
}

function scheduleReconnect() {
  close();
  setState("reconnecting");
  state.reconnectTimer = setTimeout(connect, state.retry);
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
  state.vfc = video.requestVideoFrameCallback(onVideoFrame);
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

function draw(msg) {
  const v = window.vigil;
  const w = video.clientWidth, h = video.clientHeight;
  if (overlay.width !== w || overlay.height !== h) { overlay.width = w; overlay.height = h; }
  ctx.clearRect(0, 0, w, h);
  if (!state.camera) return;
  v.largeZonesDrawn += v.overlay.drawGeometry(ctx, state.camera, w, h).zones;
  const result = msg ? v.resultFor(state.camera, msg.seq) : v.latestResult(state.camera);
  if (v.showRegions) v.largeRegionsDrawn += v.overlay.drawRegions(ctx, result, w, h);
  $("motion").textContent = !result || result.motion == null ? "off" : result.motion ? "yes" : "no";
  if (!msg) return;
  v.overlay.drawBoxes(ctx, msg.boxes, w, h);
  v.boxesDrawn += msg.boxes.length;
  v.lastBoxes = msg.boxes.length;
  $("boxes").textContent = String(msg.boxes.length);
}

// The camera picker's options: `cameras` (names), rebuilt only when the list changed (a live reload).
function setCameras(cameras) {
  const select = $("camera");
  if ([...select.options].map((o) => o.value).join("\n") !== cameras.join("\n")) {
    select.replaceChildren(...cameras.map((c) => new Option(c, c)));
    select.onchange = () => { state.camera = select.value; window.vigil.largeCamera = state.camera; connect(); };
    if (state.camera) select.value = state.camera;
  }
}

// Show one camera large (WebRTC); `cameras` fills the camera picker.
function openLarge(camera, cameras) {
  const select = $("camera");
  setCameras(cameras);
  state.camera = camera;
  window.vigil.largeCamera = camera;
  select.value = camera;
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    if (state.vfc != null) video.cancelVideoFrameCallback(state.vfc);
    state.vfc = video.requestVideoFrameCallback(onVideoFrame);
  }
  state.retry = 1000;
  connect();
}

// Leave the large view: the peer connection goes (the server's viewer slot with it).
function closeLarge() {
  close();
  state.camera = null;
  window.vigil.largeCamera = null;
  video.srcObject = null;
  setState("idle");
}

window.vigil.large = { open: openLarge, close: closeLarge, setCameras };
