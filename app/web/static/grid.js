// Vigil preview, the grid: every camera at once. A WebRTC stream per camera would need an encoder per
// camera (http.max_viewers, CPU), so each tile shows the camera's newest frame as a JPEG
// (GET /api/cameras/{name}/latest.jpg, every 1/http.grid_fps s) and draws, on a canvas over it, the boxes
// of that frame's result from the WebSocket stream (GET /api/ws), the camera's zones and masks and, as
// an option, the detector's regions and a motion border. A click opens the large (WebRTC) view (app.js).
// A live config reload (the stream's `config_reloaded` system event) or a reconnected stream makes the
// page read the camera list again: tiles come and go, zones and masks are redrawn, no page reload.
"use strict";

(() => {
  const v = window.vigil;
  const byId = (id) => document.getElementById(id);
  const gridEl = byId("grid");
  const tiles = new Map();  // camera -> {root, frame, img, canvas, ctx, badge, status, seq, url, running, dirty}
  // Read by the browser tests: what the grid showed and drew, per camera.
  v.grid = { view: "grid", ws: "idle", results: 0, events: 0, tiles: {}, syncs: 0 };
  let gridFps = 1;

  function tileStats(name) {
    return (v.grid.tiles[name] = v.grid.tiles[name] || {
      loaded: 0, naturalWidth: 0, seq: 0, errors: 0, lastStatus: null,
      zones: 0, masks: 0, boxes: 0, boxesDrawn: 0, regions: 0, regionsDrawn: 0, motion: null, draws: 0,
    });
  }

  function buildTile(cam) {
    const root = document.createElement("figure");
    root.className = "tile";
    root.dataset.camera = cam.name;
    root.tabIndex = 0;
    root.title = `${cam.name}: open the large view`;
    const frame = document.createElement("div");
    frame.className = "tile-frame";
    const img = document.createElement("img");
    img.alt = cam.name;
    const canvas = document.createElement("canvas");
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = "motion";
    badge.hidden = true;
    frame.append(img, canvas, badge);
    const caption = document.createElement("figcaption");
    const name = document.createElement("span");
    name.textContent = cam.name;
    const status = document.createElement("span");
    status.className = "muted";
    status.textContent = "waiting for a frame";
    caption.append(name, status);
    root.append(frame, caption);
    const open = () => showLarge(cam.name);
    root.addEventListener("click", open);
    root.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); open(); } });
    gridEl.appendChild(root);
    const t = { root, frame, img, canvas, ctx: canvas.getContext("2d"), badge, status, seq: 0, url: null, running: false, dirty: false };
    tiles.set(cam.name, t);
    tileStats(cam.name);
    return t;
  }

  // The JPEG width to ask for: the tile's device pixels, in steps of 160 px so pages share the server's cache.
  function wantedWidth(t) {
    const px = (t.frame.clientWidth || 320) * (window.devicePixelRatio || 1);
    return Math.max(64, Math.min(1920, Math.ceil(px / 160) * 160));
  }

  // One tile's JPEG loop; it ends when the tile is gone (its camera removed by a reload) or replaced.
  async function refresh(name, t) {
    if (tiles.get(name) !== t) return;
    if (v.grid.view !== "grid") { t.running = false; return; }
    const st = tileStats(name);
    if (document.hidden) {  // a background tab: no requests, look again later
      setTimeout(() => refresh(name, t), 1000 / gridFps);
      return;
    }
    try {
      const res = await fetch(`/api/cameras/${encodeURIComponent(name)}/latest.jpg?width=${wantedWidth(t)}`,
        { headers: v.headers, cache: "no-store" });
      st.lastStatus = res.status;
      if (res.ok) {
        const seq = Number(res.headers.get("X-Frame-Seq") || 0);
        const url = URL.createObjectURL(await res.blob());
        if (tiles.get(name) !== t) { URL.revokeObjectURL(url); return; }  // removed by a sync meanwhile
        t.img.src = url;
        await t.img.decode().catch(() => {});
        if (t.url) URL.revokeObjectURL(t.url);
        t.url = url;
        t.seq = seq;
        st.loaded++;
        st.seq = seq;
        st.naturalWidth = t.img.naturalWidth;
        t.status.textContent = "";
        drawTile(name);
      } else {
        st.errors++;
        const body = await res.json().catch(() => ({}));
        t.status.textContent = res.status === 503 ? "waiting for a frame" : body.error || `error ${res.status}`;
      }
    } catch (err) {
      st.errors++;
      t.status.textContent = "offline";
    }
    setTimeout(() => refresh(name, t), 1000 / gridFps);
  }

  function startTiles() {
    for (const [name, t] of tiles) {
      if (!t.running) { t.running = true; refresh(name, t); }
    }
  }

  // Follow the configured cameras (GET /api/cameras): new tiles, tiles of removed cameras gone, new zones
  // and masks drawn, in config order. A large view of a removed camera falls back to the grid.
  let syncSeq = 0;
  async function syncCameras() {
    const mine = ++syncSeq;
    let info;
    try {
      info = await v.api("/api/cameras");
    } catch {
      return;  // the stream's next reconnect tries again
    }
    if (mine !== syncSeq) return;  // a newer sync started meanwhile: its answer is the one to apply
    gridFps = info.grid_fps || gridFps;
    const names = info.cameras.map((c) => c.name);
    for (const [name, t] of tiles) {
      if (names.includes(name)) continue;
      t.root.remove();
      if (t.url) URL.revokeObjectURL(t.url);
      tiles.delete(name);
      v.cameras.delete(name);
      delete v.grid.tiles[name];
    }
    for (const cam of info.cameras) {
      v.cameras.set(cam.name, cam);
      gridEl.appendChild((tiles.get(cam.name) || buildTile(cam)).root);  // (re)appended: config order
    }
    gridEl.dataset.count = String(names.length);
    v.grid.syncs++;
    if (v.grid.view === "large" && !tiles.has(v.largeCamera)) {
      showGrid();
    } else {
      v.large.setCameras(gridOrder());
      setView(v.grid.view);
      if (v.grid.view === "grid") startTiles();
    }
    for (const name of tiles.keys()) markDirty(name);
  }

  function drawTile(name) {
    const t = tiles.get(name);
    if (!t || !t.img.naturalWidth) return;
    const st = tileStats(name);
    const w = t.frame.clientWidth, h = t.frame.clientHeight;
    if (t.canvas.width !== w || t.canvas.height !== h) { t.canvas.width = w; t.canvas.height = h; }
    const ctx = t.ctx;
    ctx.clearRect(0, 0, w, h);
    const g = v.overlay.drawGeometry(ctx, name, w, h);
    const result = v.resultFor(name, t.seq);
    st.regions = v.showRegions ? v.overlay.drawRegions(ctx, result, w, h) : 0;
    st.regionsDrawn += st.regions;
    st.boxes = result ? v.overlay.drawBoxes(ctx, result.detections, w, h, w >= 240) : 0;
    st.boxesDrawn += st.boxes;
    st.zones = g.zones;
    st.masks = g.masks;
    st.motion = result ? result.motion : null;
    st.draws++;
    const moving = v.showRegions && result && result.motion === true;
    t.root.classList.toggle("motion", Boolean(moving));
    t.badge.hidden = !moving;
    Object.assign(t.root.dataset, { zones: g.zones, masks: g.masks, boxes: st.boxes, regions: st.regions, seq: t.seq });
  }

  function redrawDirty() {
    for (const [name, t] of tiles) {
      if (t.dirty) { t.dirty = false; drawTile(name); }
    }
  }

  function markDirty(name) {
    const t = tiles.get(name);
    if (!t || t.dirty || v.grid.view !== "grid") return;
    t.dirty = true;
    requestAnimationFrame(redrawDirty);
  }

  // The WebSocket stream: results (boxes, regions, motion) for every tile and the large view; object
  // events wake the events panel ("vigil:event").
  let wsRetry = 1000;
  function connectStream() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}${v.withToken("/api/ws?types=results,events,system")}`);
    v.grid.ws = "connecting";
    ws.onopen = () => {
      // A reload may have come between the page's first read and this open, and a reconnect may follow a
      // service restart with another config: read the cameras (again).
      syncCameras();
      v.grid.ws = "open";
      wsRetry = 1000;
    };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (msg.type === "result" && msg.data) {
        v.grid.results++;
        v.addResult(msg.data);
        markDirty(msg.data.camera);
      } else if (msg.type === "event" && msg.data) {
        v.grid.events++;
        window.dispatchEvent(new CustomEvent("vigil:event", { detail: msg.data }));
      } else if (msg.type === "system" && msg.data && msg.data.event === "config_reloaded") {
        syncCameras();
      }
    };
    ws.onclose = () => {
      v.grid.ws = "closed";
      setTimeout(connectStream, wsRetry);
      wsRetry = Math.min(wsRetry * 2, 15000);
    };
  }

  function setView(view) {
    v.grid.view = view;
    byId("grid").hidden = view !== "grid";
    byId("large").hidden = view !== "large";
    byId("back").hidden = view !== "large" || tiles.size < 2;
    byId("camera-pick").hidden = view !== "large" || tiles.size < 2;
    byId("sync").parentElement.hidden = view !== "large";
  }

  // Camera names in the grid's (config) order.
  const gridOrder = () => [...gridEl.querySelectorAll(".tile")].map((el) => el.dataset.camera);

  function showLarge(name) {
    setView("large");
    v.large.open(name, gridOrder());
  }

  function showGrid() {
    v.large.close();
    setView("grid");
    startTiles();
  }
  v.showGrid = showGrid;
  v.showLarge = showLarge;

  async function main() {
    let info;
    try {
      info = await v.api("/api/cameras");
    } catch (err) {
      byId("message").textContent = String(err.message || err);
      setState("failed");
      return;
    }
    gridFps = info.grid_fps || 1;
    for (const cam of info.cameras) { v.cameras.set(cam.name, cam); buildTile(cam); }
    gridEl.dataset.count = String(info.cameras.length);
    byId("back").addEventListener("click", showGrid);
    byId("show-regions").addEventListener("change", (ev) => {
      v.showRegions = ev.target.checked;
      for (const name of tiles.keys()) drawTile(name);
    });
    v.showRegions = byId("show-regions").checked;
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape" && v.grid.view === "large" && byId("snapshot-view").hidden && tiles.size > 1) showGrid();
    });
    window.addEventListener("resize", () => { for (const name of tiles.keys()) markDirty(name); });
    connectStream();
    const wanted = v.params.get("camera");
    // One camera: a grid of one is just a smaller large view.
    if (wanted && tiles.has(wanted)) showLarge(wanted);
    else if (tiles.size === 1) showLarge(info.cameras[0].name);
    else showGrid();
  }

  main();
})();
