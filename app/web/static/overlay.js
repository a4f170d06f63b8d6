// Vigil preview: what the grid, the large view and the events panel share. The API helpers (token as
// a Bearer header, or ?token= where a URL is all a browser sends: images, the WebSocket), the camera list
// with its geometry (GET /api/cameras: zones, object and motion masks, 0..1 of the frame), the newest
// results per camera (from the WebSocket stream) and the drawing of zones, masks, regions and boxes.
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const vigil = (window.vigil = window.vigil || {});
  vigil.params = params;
  vigil.headers = token ? { Authorization: "Bearer " + token } : {};
  vigil.cameras = new Map();     // name -> /api/cameras entry
  vigil.results = new Map();     // name -> recent result payloads of the WebSocket stream, ascending seq
  vigil.showRegions = false;     // the "regions & motion" checkbox

  // A same-origin URL with the token in the query: for <img src>, WebSocket URLs.
  vigil.withToken = (path) => {
    if (!token) return path;
    return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
  };

  // fetch + JSON; a non-2xx answer throws an Error carrying the status and the server's reason.
  vigil.api = async (path, init = {}) => {
    const res = await fetch(path, { ...init, headers: { ...vigil.headers, ...(init.headers || {}) } });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) {
      const err = new Error(body.error || res.statusText || String(res.status));
      err.status = res.status;
      throw err;
    }
    return body;
  };

  // Keep a few recent results per camera (the grid matches a tile's image to the result of its frame).
  vigil.addResult = (data) => {
    let list = vigil.results.get(data.camera);
    if (!list) vigil.results.set(data.camera, (list = []));
    list.push(data);
    if (list.length > 60) list.shift();
  };
  vigil.latestResult = (camera) => {
    const list = vigil.results.get(camera);
    return list && list.length ? list[list.length - 1] : null;
  };
  // The newest result at or before `seq` (the frame shown), else the newest one.
  vigil.resultFor = (camera, seq) => {
    const list = vigil.results.get(camera) || [];
    let best = null;
    for (const r of list) { if (r.seq <= seq) best = r; else break; }
    return best || (list.length ? list[list.length - 1] : null);
  };

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

  const ZONE_COLORS = ["#00d1ff", "#ffd400", "#ff6bd6", "#7cff6b", "#ff8c42", "#b58cff"];
  const patterns = new WeakMap();  // ctx -> {object, motion} hatch patterns

  function hatch(ctx, color) {
    const c = document.createElement("canvas");
    c.width = c.height = 8;
    const g = c.getContext("2d");
    g.fillStyle = "rgba(0, 0, 0, 0.35)";
    g.fillRect(0, 0, 8, 8);
    g.strokeStyle = color;
    g.lineWidth = 1.5;
    g.beginPath(); g.moveTo(0, 8); g.lineTo(8, 0); g.moveTo(-2, 2); g.lineTo(2, -2); g.moveTo(6, 10); g.lineTo(10, 6);
    g.stroke();
    return ctx.createPattern(c, "repeat");
  }

  function polygonPath(ctx, polygon, w, h) {
    ctx.beginPath();
    polygon.forEach(([x, y], i) => (i ? ctx.lineTo(x * w, y * h) : ctx.moveTo(x * w, y * h)));
    ctx.closePath();
  }

  // Zones (outlined, lightly filled, named), object masks and motion masks (hatched) of one camera, on a
  // w x h canvas showing the whole frame. Returns what was drawn: {zones, masks}.
  function drawGeometry(ctx, camera, w, h) {
    const cam = vigil.cameras.get(camera);
    if (!cam) return { zones: 0, masks: 0 };
    let p = patterns.get(ctx);
    if (!p) patterns.set(ctx, (p = { object: hatch(ctx, "rgba(255, 90, 90, 0.8)"), motion: hatch(ctx, "rgba(160, 160, 160, 0.8)") }));
    let masks = 0;
    for (const [kind, polygons] of [["object", cam.object_mask || []], ["motion", cam.motion_mask || []]]) {
      for (const poly of polygons) {
        polygonPath(ctx, poly, w, h);
        ctx.fillStyle = p[kind];
        ctx.fill();
        masks++;
      }
    }
    ctx.font = "12px system-ui, sans-serif";
    (cam.zones || []).forEach((z, i) => {
      const color = ZONE_COLORS[i % ZONE_COLORS.length];
      polygonPath(ctx, z.polygon, w, h);
      ctx.globalAlpha = 0.18;
      ctx.fillStyle = color;
      ctx.fill();
      ctx.globalAlpha = 1;
      ctx.lineWidth = 2;
      ctx.strokeStyle = color;
      ctx.stroke();
      const [x, y] = z.polygon[0];
      ctx.fillStyle = color;
      ctx.fillText(z.name, Math.min(x * w + 3, w - ctx.measureText(z.name).width - 2), Math.max(12, y * h + 13));
    });
    return { zones: (cam.zones || []).length, masks };
  }

  // Where the detector looked: `regions` (pixel boxes of a width x height frame), dashed. Returns the count.
  function drawRegions(ctx, result, w, h) {
    if (!result || !result.regions || !result.width || !result.height) return 0;
    const sx = w / result.width, sy = h / result.height;
    ctx.save();
    ctx.setLineDash([6, 4]);
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = result.motion ? "#ffb020" : "#8ab4f8";
    for (const [x1, y1, x2, y2] of result.regions) ctx.strokeRect(x1 * sx + 1, y1 * sy + 1, (x2 - x1) * sx - 2, (y2 - y1) * sy - 2);
    ctx.restore();
    return result.regions.length;
  }

  // Boxes with labels; each `{box_norm | box_normalized: [x1, y1, x2, y2] 0..1, label, confidence, class_id}`.
  function drawBoxes(ctx, boxes, w, h, labels = true) {
    ctx.lineWidth = 2;
    ctx.font = "12px system-ui, sans-serif";
    for (const b of boxes || []) {
      const [x1, y1, x2, y2] = b.box_norm || b.box_normalized;
      const color = classColor(b.class_id ?? 0);
      ctx.strokeStyle = color;
      ctx.strokeRect(x1 * w, y1 * h, (x2 - x1) * w, (y2 - y1) * h);
      if (!labels) continue;
      const text = `${b.label} ${Number(b.confidence).toFixed(2)}`;
      ctx.fillStyle = color;
      ctx.fillRect(x1 * w, Math.max(0, y1 * h - 15), ctx.measureText(text).width + 6, 15);
      ctx.fillStyle = "#000";
      ctx.fillText(text, x1 * w + 3, Math.max(11, y1 * h - 3));
    }
    return (boxes || []).length;
  }

  vigil.overlay = { classColor, drawGeometry, drawRegions, drawBoxes };
})();
