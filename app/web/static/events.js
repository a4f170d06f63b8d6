// Vigil preview, the events panel: recent object events (GET /api/events?limit=30, newest first) with
// their snapshot thumbnails, label, camera, zones, start time and duration. Live: re-fetched on every object
// event of the WebSocket stream (at most once a second) and every 5 s besides. A server without the
// events API (404) shows "no events". Clicking an event with a snapshot shows it large.
"use strict";

(() => {
  const v = window.vigil;
  const byId = (id) => document.getElementById(id);
  const list = byId("event-list"), empty = byId("events-empty");
  const viewer = byId("snapshot-view"), large = byId("snapshot-large"), caption = byId("snapshot-caption");
  const LIMIT = 30, POLL_MS = 5000, MIN_GAP_MS = 1000;
  // Read by the browser tests.
  const seen = (v.events = { fetches: 0, rendered: 0, available: null, error: null, thumbsLoaded: 0, opened: null });
  const items = new Map();  // event id -> {li, sig}
  let inflight = false, again = false, lastFetch = -Infinity, soon = null;

  // Local time; with the date for an event of another day.
  function time(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return "–";
    const t = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    return d.toDateString() === new Date().toDateString() ? t : `${d.toLocaleDateString()} ${t}`;
  }

  function duration(e) {
    const t0 = Date.parse(e.start_time);
    if (isNaN(t0)) return "";
    const t1 = e.end_time ? Date.parse(e.end_time) : Date.now();
    const s = Math.max(0, Math.round((t1 - t0) / 1000));
    const text = s < 60 ? `${s} s` : s < 3600 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${(s / 3600).toFixed(1)} h`;
    return e.end_time ? text : `ongoing, ${text}`;
  }

  function span(cls, text) {
    const s = document.createElement("span");
    s.className = cls;
    s.textContent = text;
    return s;
  }

  function entry(e) {
    const li = document.createElement("li");
    li.className = "event";
    li.dataset.id = e.id;
    if (e.snapshot_url) {
      const img = document.createElement("img");
      img.className = "thumb";
      img.alt = `${e.label} on ${e.camera}`;
      img.addEventListener("load", () => { seen.thumbsLoaded++; });
      img.src = v.withToken(e.snapshot_url);
      li.appendChild(img);
      li.classList.add("has-snapshot");
      li.title = "show the snapshot";
      li.addEventListener("click", () => openSnapshot(e));
    } else {
      li.appendChild(span("thumb none", "no snapshot"));
    }
    const text = document.createElement("div");
    text.className = "event-text";
    const head = document.createElement("div");
    head.append(span("label", e.label), span("camera", e.camera));
    if (typeof e.top_score === "number") head.append(span("score", e.top_score.toFixed(2)));
    if (e.stationary) head.append(span("chip", "stationary"));
    text.appendChild(head);
    const zones = (e.current_zones && e.current_zones.length ? e.current_zones : e.entered_zones) || [];
    if (zones.length) {
      const z = document.createElement("div");
      z.className = "zones";
      for (const name of zones) z.appendChild(span("chip zone", name));
      text.appendChild(z);
    }
    const when = document.createElement("div");
    when.className = "time";
    when.textContent = `${time(e.start_time)} · ${duration(e)}`;
    text.appendChild(when);
    li.appendChild(text);
    return li;
  }

  function render(events) {
    const keep = new Set();
    const lis = events.map((e) => {
      keep.add(e.id);
      const sig = JSON.stringify([e.end_time, e.last_event, e.snapshot_url, e.current_zones, e.entered_zones, e.top_score,
                                  e.stationary, e.end_time ? null : Math.floor(Date.now() / 1000)]);
      const old = items.get(e.id);
      if (old && old.sig === sig) return old.li;  // unchanged: keep its loaded thumbnail
      const li = entry(e);
      items.set(e.id, { li, sig });
      return li;
    });
    for (const id of [...items.keys()]) if (!keep.has(id)) items.delete(id);
    list.replaceChildren(...lis);
    empty.hidden = lis.length > 0;
    seen.rendered = lis.length;
  }

  async function load() {
    if (inflight) { again = true; return; }
    inflight = true;
    lastFetch = performance.now();
    try {
      const body = await v.api(`/api/events?limit=${LIMIT}`);
      seen.available = true;
      seen.error = null;
      render(Array.isArray(body.events) ? body.events : []);
    } catch (err) {
      if (err.status === 404) {  // a server without the events API
        seen.available = false;
        seen.error = null;
        render([]);
      } else {
        seen.error = String(err.message || err);
      }
    } finally {
      inflight = false;
      seen.fetches++;
    }
    if (again) { again = false; request(); }
  }

  // An object event happened: re-fetch, at most once per MIN_GAP_MS.
  function request() {
    if (soon !== null) return;
    const wait = Math.max(0, MIN_GAP_MS - (performance.now() - lastFetch));
    soon = setTimeout(() => { soon = null; load(); }, wait);
  }

  async function poll() {
    await load();
    setTimeout(poll, POLL_MS);
  }

  function openSnapshot(e) {
    large.src = v.withToken(e.snapshot_url);
    caption.textContent = `${e.label} on ${e.camera} · ${time(e.start_time)} · ${duration(e)}`;
    viewer.hidden = false;
    seen.opened = e.id;
  }

  function closeSnapshot() {
    viewer.hidden = true;
    seen.opened = null;
  }

  viewer.addEventListener("click", closeSnapshot);
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && !viewer.hidden) { ev.stopImmediatePropagation(); closeSnapshot(); }
  });
  window.addEventListener("vigil:event", request);
  if (list) poll();
})();
