// Vigil preview: the latency budget per camera (GET /api/budget, polled). A stacked bar of the layers' p99
// against the total target (the marker; red when the camera is over budget), and a time chart of frame age
// p50/p99 (ms, left scale) and processed fps (right scale) from the server's history of the last minutes.
"use strict";

(() => {
  const LAYERS = ["capture", "queue", "preprocess", "inference", "postprocess", "ipc", "publish"];
  const COLORS = ["#7aa2f7", "#9ece6a", "#e0af68", "#bb9af7", "#7dcfff", "#f7768e", "#c0caf5"];
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const root = document.getElementById("budget");
  // Read by the browser tests: what was drawn.
  const seen = { bars: 0, segments: 0, chartPoints: 0, exceeded: [], state: {}, error: null };
  window.vigil = window.vigil || {};
  window.vigil.budget = seen;

  function el(tag, attrs = {}, ns = null) {
    const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  }

  function fmt(ms) { return ms == null ? "–" : ms < 10 ? ms.toFixed(1) : ms.toFixed(0); }

  // One camera's stacked bar (SVG): segments are the layers' p99, the marker the total target.
  function bar(b) {
    const SVG = "http://www.w3.org/2000/svg";
    const W = 360, H = 22;
    const total = b.total || {};
    const parts = LAYERS.map((l) => (b.layers && b.layers[l] && b.layers[l].p99) || 0);
    const sum = parts.reduce((a, v) => a + v, 0);
    const target = total.target_ms || 0;
    const scale = W / Math.max(sum, target * (b.alert_factor || 2), 1);
    const svg = el("svg", { width: W, height: H + 14, class: "budget-bar" }, SVG);
    let x = 0;
    parts.forEach((v, i) => {
      if (v <= 0) return;
      const r = el("rect", { x, y: 0, width: Math.max(1, v * scale), height: H, fill: COLORS[i] }, SVG);
      const layer = b.layers[LAYERS[i]];
      const t = el("title", {}, SVG);
      t.textContent = `${LAYERS[i]} p99 ${fmt(v)} ms (target ${fmt(layer.target_ms)} ms, ${layer.state})`;
      r.appendChild(t);
      if (layer.state === "exceeded") r.setAttribute("stroke", "#ff5a5a");
      svg.appendChild(r);
      seen.segments++;
      x += v * scale;
    });
    if (target) {
      const over = b.state === "exceeded";
      const mx = target * scale;
      svg.appendChild(el("line", { x1: mx, x2: mx, y1: 0, y2: H + 4, class: "budget-marker" + (over ? " over" : ""),
                                   stroke: over ? "#ff5a5a" : "#e8e8e8", "stroke-width": 2 }, SVG));
      const label = el("text", { x: Math.min(mx + 3, W - 90), y: H + 13, fill: over ? "#ff5a5a" : "#9aa0a6",
                                 "font-size": 11 }, SVG);
      label.textContent = `total ${fmt(total.p99)} / ${fmt(target)} ms`;
      svg.appendChild(label);
    }
    seen.bars++;
    return svg;
  }

  // Frame age p50/p99 (ms) and processed fps over the history, on a canvas.
  function chart(points) {
    const W = 360, H = 110, P = 4;
    const c = el("canvas", { width: W, height: H, class: "budget-chart" });
    const g = c.getContext("2d");
    g.fillStyle = "#181818"; g.fillRect(0, 0, W, H);
    const pts = points.filter((p) => p.frame_age_p99 != null || p.fps != null);
    if (pts.length === 0) return c;
    const t0 = pts[0].t, t1 = Math.max(pts[pts.length - 1].t, t0 + 1);
    const maxAge = Math.max(1, ...pts.map((p) => p.frame_age_p99 || 0));
    const maxFps = Math.max(1, ...pts.map((p) => p.fps || 0));
    const X = (t) => P + (W - 2 * P) * (t - t0) / (t1 - t0);
    const line = (key, max, color) => {
      g.strokeStyle = color; g.lineWidth = 1.5; g.beginPath();
      let started = false;
      for (const p of pts) {
        if (p[key] == null) continue;
        const y = H - P - (H - 2 * P) * p[key] / max;
        if (started) g.lineTo(X(p.t), y); else { g.moveTo(X(p.t), y); started = true; }
        if (pts.length === 1) g.lineTo(X(p.t) + 2, y);
      }
      g.stroke();
    };
    line("frame_age_p50", maxAge, "#9ece6a");
    line("frame_age_p99", maxAge, "#f7768e");
    line("fps", maxFps, "#7aa2f7");
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = "#f7768e"; g.fillText(`age p99 ${fmt(pts[pts.length - 1].frame_age_p99)} ms (max ${fmt(maxAge)})`, 6, 13);
    g.fillStyle = "#9ece6a"; g.fillText(`p50 ${fmt(pts[pts.length - 1].frame_age_p50)} ms`, 6, 26);
    g.fillStyle = "#7aa2f7"; g.fillText(`${(pts[pts.length - 1].fps || 0).toFixed(1)} fps`, W - 60, 13);
    seen.chartPoints = Math.max(seen.chartPoints, pts.length);
    return c;
  }

  function render(doc) {
    root.replaceChildren();
    seen.exceeded = [];
    const h = el("h2");
    h.textContent = "Latency budget (p99)";
    root.appendChild(h);
    for (const [cam, b] of Object.entries(doc.cameras || {})) {
      seen.state[cam] = b.state;
      const box = el("div", { class: "budget-camera" + (b.state === "exceeded" ? " exceeded" : "") });
      const title = el("div", { class: "budget-title" });
      const over = (b.exceeded || []).join(", ");
      const err = b.error_rate ? ` · errors ${(100 * b.error_rate.rate).toFixed(2)} %` : "";
      title.textContent = `${cam}: ${b.state}${over ? " (" + over + ")" : ""}${err}`;
      box.appendChild(title);
      if (b.state === "exceeded") seen.exceeded.push(cam);
      if (b.layers) box.appendChild(bar(b));
      box.appendChild(chart((doc.history || {})[cam] || []));
      root.appendChild(box);
    }
  }

  async function poll() {
    try {
      const res = await fetch("/api/budget", { headers });
      if (!res.ok) throw new Error(`/api/budget: ${res.status}`);
      render(await res.json());
      seen.error = null;
    } catch (err) {
      seen.error = String(err.message || err);
    }
    setTimeout(poll, 2000);
  }

  if (root) poll();
})();
