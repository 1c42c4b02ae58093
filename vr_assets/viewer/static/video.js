// A video's page: player, timeline (chunks, highlight window, QA time spans), captions, items and reviews.
"use strict";
const key = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");
const player = document.getElementById("player");
let data = null;
let stopAt = null;
let current = -1;  // the item the keyboard acts on (j/k to move)

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}
const fmt = s => { s = Math.max(0, s || 0); const m = Math.floor(s / 60); const r = s - 60 * m; return `${m}:${r < 10 ? "0" : ""}${r.toFixed(r % 1 ? 1 : 0)}`; };
const pct = (t, d) => `${Math.min(100, Math.max(0, 100 * t / (d || 1)))}%`;

function seek(t) { stopAt = null; player.currentTime = t; }
function playSpan(start, end) {
  stopAt = end;
  player.currentTime = start;
  const p = player.play();
  if (p && p.catch) p.catch(() => {});
}
player.addEventListener("timeupdate", () => {
  if (stopAt !== null && player.currentTime >= stopAt) { player.pause(); stopAt = null; }
  const d = data ? data.duration_sec : 0;
  const head = document.getElementById("playhead");
  if (head) head.style.left = pct(player.currentTime, d);
  document.querySelectorAll(".seg, .chunklist li").forEach(n => {
    const s = Number(n.dataset.start), e = Number(n.dataset.end);
    n.classList.toggle("active", player.currentTime >= s && player.currentTime < e);
  });
});

function effective(item) { return item.edited || item; }
function state(item) { return item.review ? item.review.action : null; }

function timeline() {
  const d = data.duration_sec;
  const tl = document.getElementById("timeline");
  tl.replaceChildren();
  const chunks = el("div", { class: "track", id: "chunk-track", title: "chunk captions: click to seek" });
  for (const c of data.chunks) {
    chunks.append(el("div", {
      class: "seg", "data-start": c.timestamp_start, "data-end": c.timestamp_end, title: c.caption,
      style: `left:${pct(c.timestamp_start, d)};width:calc(${pct(c.timestamp_end - c.timestamp_start, d)})`,
      text: `#${c.chunk_index} ${fmt(c.timestamp_start)}`, onclick: () => seek(c.timestamp_start),
    }));
  }
  tl.append(chunks);
  const hl = data.highlight && data.highlight.chunk;
  if (hl) {
    const t = el("div", { class: "track", id: "highlight-track" }, el("span", { class: "lbl", text: "highlight window" }));
    t.append(el("div", { class: "hlband", id: "highlight-band", title: hl.caption,
      style: `left:${pct(hl.timestamp_start, d)};width:${pct(hl.timestamp_end - hl.timestamp_start, d)};cursor:pointer`,
      onclick: () => playSpan(hl.timestamp_start, hl.timestamp_end) }));
    t.append(el("div", { class: "hlmark", title: `anomaly at ${fmt(hl.anomaly_timestamp_sec)}`, style: `left:${pct(hl.anomaly_timestamp_sec, d)}` }));
    tl.append(t);
  }
  for (const item of data.items) {
    const it = effective(item);
    if (it.start_sec === null || it.end_sec === null || it.start_sec === undefined) continue;
    const cls = ["span"];
    if (item.problems.length) cls.push("bad");
    if (state(item) === "reject") cls.push("rejected");
    const t = el("div", { class: "track" });
    t.append(el("div", {
      class: cls.join(" "), "data-item": item.index, "data-start": it.start_sec, "data-end": it.end_sec,
      title: `#${item.index + 1} ${it.question}`,
      style: `left:${pct(it.start_sec, d)};width:${pct(it.end_sec - it.start_sec, d)}`,
      text: `Q${item.index + 1}`,
      onclick: () => playSpan(it.start_sec, it.end_sec),
    }));
    // the span's label beside it, readable however short the span is
    const side = it.end_sec / (d || 1) < 0.7 ? `left:calc(${pct(it.end_sec, d)} + 6px)`
      : `right:calc(100% - ${pct(it.start_sec, d)} + 6px)`;
    t.append(el("span", { class: "spanlbl", style: side,
      text: `Q${item.index + 1} ${item.qa_type} ${fmt(it.start_sec)}–${fmt(it.end_sec)}` }));
    tl.append(t);
  }
  tl.append(el("div", { class: "playhead", id: "playhead" }));
  document.getElementById("axis-end").textContent = fmt(d);
  const list = document.getElementById("chunklist");
  list.replaceChildren();
  for (const c of data.chunks) {
    list.append(el("li", { "data-start": c.timestamp_start, "data-end": c.timestamp_end, onclick: () => seek(c.timestamp_start) },
      el("span", { class: "t", text: `${fmt(c.timestamp_start)}–${fmt(c.timestamp_end)}` }), c.caption));
  }
  if (!data.chunks.length) list.append(el("li", { class: "muted", text: "no chunk captions" }));
}

function textBlock(title, text) {
  if (text === null || text === undefined) return [el("h3", { text: title }), el("div", { class: "muted", text: "—" })];
  return [el("h3", { text: title }), el("div", { class: "text", text })];
}

function captions() {
  const box = document.getElementById("captions");
  box.replaceChildren(el("h2", { text: "Captions and description" }));
  box.append(...textBlock("Global caption", data.global_caption), ...textBlock("Dense caption", data.dense_caption));
  const hl = data.highlight;
  if (hl && hl.chunk) box.append(...textBlock(`Highlight ${fmt(hl.chunk.timestamp_start)}–${fmt(hl.chunk.timestamp_end)} (anomaly at ${fmt(hl.chunk.anomaly_timestamp_sec)})`, hl.chunk.caption));
  else if (hl) box.append(...textBlock("Highlight", hl.note || "not applicable"));
  const det = el("details", { class: "long" }, el("summary", { text: "Description (step 2)" }), el("div", { class: "text", text: data.description || "—" }));
  if ((data.description || "").length < 600) det.open = true;
  box.append(el("h3", { text: "Description" }), det);
}

function facts() {
  const f = data.filter, v = data.video, r = data.row || {};
  const rows = [["key", data.key], ["file", v.path], ["outcome", `${r.outcome || "?"}${r.reason ? " — " + r.reason : ""}`],
    ["mode", f ? `${f.mode} (from ${f.mode_source})` : (r.mode || "—")], ["duration", fmt(data.duration_sec)]];
  if (f) rows.push(["relevance", f.relevance_reason || "—"], ["size", `${f.probe.width}×${f.probe.height} ${f.probe.video_codec} ${f.probe.fps} fps`]);
  const dl = document.getElementById("facts");
  dl.replaceChildren();
  for (const [k, val] of rows) dl.append(el("dt", { text: k }), el("dd", { text: val }));
}

async function sendReview(item, action, edit = null) {
  const res = await fetch(`/api/video/${encodeURIComponent(key)}/review`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ item_key: item.key, action, edit }),
  });
  const body = await res.json();
  if (!res.ok) { showError(body.error); return; }
  data = body;
  render();
}

function editor(card, item) {
  const it = effective(item);
  const f = el("form", { class: "editor" });
  const q = el("textarea", { name: "question", rows: "2" }); q.value = it.question;
  const a = el("input", { name: "answer" }); a.value = it.answer;
  const r = el("textarea", { name: "reasoning", rows: "3" }); r.value = it.reasoning;
  f.append(el("label", {}, "Question", q));
  let o = null;
  if (it.options && it.options.length) {
    o = el("textarea", { name: "options", rows: String(it.options.length) }); o.value = it.options.join("\n");
    f.append(el("label", {}, "Options (one per line, A first)", o));
  }
  f.append(el("label", {}, "Answer", a), el("label", {}, "Reasoning", r));
  const save = el("button", { type: "submit", class: "primary", text: "Save edit" });
  const cancel = el("button", { type: "button", text: "Cancel", onclick: () => render() });
  f.append(el("div", { class: "actions" }, save, cancel));
  f.addEventListener("submit", e => {
    e.preventDefault();
    const edit = { question: q.value, answer: a.value, reasoning: r.value };
    if (o) edit.options = o.value.split("\n").map(s => s.trim()).filter(Boolean);
    sendReview(item, "edit", edit);
  });
  card.append(f);
  q.focus();
}

function itemCard(item) {
  const it = effective(item);
  const act = state(item);
  const card = el("div", { class: `item${act === "reject" ? " rejected" : ""}${act === "edit" ? " edited" : ""}${item.index === current ? " current" : ""}`, "data-index": item.index, "data-key": item.key });
  card.addEventListener("click", () => select(item.index, false));
  const head = el("div", { class: "head" }, el("span", { class: "badge b-normal", text: item.qa_type }), el("span", { class: "muted", text: `#${item.index + 1}` }));
  if (act) head.append(el("span", { class: `badge b-${act}`, text: { accept: "accepted", reject: "rejected", edit: "edited" }[act] }));
  const problems = item.edited ? item.edited_problems : item.problems;
  if (problems.length) head.append(el("span", { class: "badge b-check", text: `${problems.length} failed check${problems.length > 1 ? "s" : ""}` }));
  if (it.start_sec !== null && it.start_sec !== undefined && it.end_sec !== null) {
    head.append(el("button", { type: "button", class: "play", text: `▶ play ${fmt(it.start_sec)}–${fmt(it.end_sec)}`, onclick: () => playSpan(it.start_sec, it.end_sec) }));
  }
  card.append(head, el("div", { class: "q text", text: it.question }));
  if (it.options && it.options.length) {
    const letter = (it.answer || "").trim().replace(/^\W*/, "").charAt(0).toUpperCase();
    const ol = el("ol", { class: "opts" });
    it.options.forEach((o, i) => ol.append(el("li", { class: String.fromCharCode(65 + i) === letter ? "correct" : "", text: o })));
    card.append(ol);
  }
  card.append(el("div", { class: "ans" }, el("b", { text: "Answer: " }), it.answer));
  card.append(el("div", { class: "why text" }, el("b", { text: "Reasoning: " }), it.reasoning || "—"));
  if (item.edited) {
    const was = [];
    for (const fld of ["question", "options", "answer", "reasoning"]) {
      if (JSON.stringify(item[fld]) !== JSON.stringify(item.edited[fld])) was.push(`${fld}: ${Array.isArray(item[fld]) ? item[fld].join(" | ") : item[fld]}`);
    }
    if (was.length) card.append(el("div", { class: "was text", text: "was — " + was.join("\n") }));
  }
  if (problems.length) {
    const ul = el("ul", { class: "problems" });
    for (const p of problems) ul.append(el("li", { text: p }));
    card.append(ul);
  }
  // warn-level rules: the item stays in the dataset, but a reviewer may want to look
  const warnings = (item.edited ? item.edited_warnings : item.warnings) || [];
  if (warnings.length) {
    const ul = el("ul", { class: "problems warnings" });
    for (const w of warnings) ul.append(el("li", { text: `warning: ${w}` }));
    card.append(ul);
  }
  const on = a => (act === a ? " on" : "");
  card.append(el("div", { class: "actions" },
    el("button", { type: "button", class: `acc${on("accept")}`, text: "Accept", onclick: () => sendReview(item, act === "accept" ? null : "accept") }),
    el("button", { type: "button", class: `rej${on("reject")}`, text: "Reject", onclick: () => sendReview(item, act === "reject" ? null : "reject") }),
    el("button", { type: "button", class: `edt${on("edit")}`, text: "Edit", onclick: ev => { ev.target.disabled = true; editor(card, item); } }),
    act ? el("button", { type: "button", class: "clear", text: "Clear review", onclick: () => sendReview(item, null) }) : null,
    item.review ? el("span", { class: "muted", style: "font-size:12px", text: `reviewed ${item.review.at}` }) : null,
  ));
  return card;
}

function render() {
  const r = data.row || {};
  document.title = `vr-assets · ${data.key}`;
  document.getElementById("title").textContent = `${data.key} · ${r.outcome || ""}${r.mode ? " · " + r.mode : ""}`;
  if (data.media.url && player.getAttribute("src") !== data.media.url) player.src = data.media.url;
  document.getElementById("media-kind").textContent = `playing: ${data.media.kind}${data.media.file ? " — " + data.media.file : ""}`;
  timeline();
  captions();
  facts();
  const checks = document.getElementById("checks");
  checks.replaceChildren();
  for (const [name, fails] of Object.entries(data.checks)) {
    checks.append(el("div", { class: "problems error" }, el("span", { class: "badge b-check", text: name }), " ", fails.join("; ")));
  }
  const n = data.items.length, reviewed = data.items.filter(i => i.review).length;
  document.getElementById("items-title").textContent = `QA items (${n}, ${reviewed} reviewed)`;
  document.getElementById("keys").hidden = !n;
  const items = document.getElementById("items");
  items.replaceChildren(...data.items.map(itemCard));
  for (const [k, why] of Object.entries(data.parse_failures || {})) items.append(el("div", { class: "problems" }, `${k}: not parsed: ${why}`));
  if (!n) items.append(el("div", { class: "muted", text: r.reason ? `no items: ${r.reason}` : "no QA items" }));
  const orph = document.getElementById("orphans");
  orph.hidden = !data.orphaned_reviews.length;
  document.getElementById("orphan-list").replaceChildren(...data.orphaned_reviews.map(o =>
    el("li", { text: `${o.action} (${o.at}) ${o.qa_type}: ${o.question} → ${o.answer}` })));
}

function select(n, scroll = true) {
  if (!data || !data.items.length) return;
  current = Math.max(0, Math.min(data.items.length - 1, n));
  document.querySelectorAll(".item").forEach(c => c.classList.toggle("current", Number(c.dataset.index) === current));
  const card = document.querySelector(`.item[data-index="${current}"]`);
  if (scroll && card) card.scrollIntoView({ block: "nearest" });
}

// keys for going through a video's items quickly: j/k next/previous, a accept, r reject, e edit,
// p play the item's time span, space play/pause
document.addEventListener("keydown", e => {
  if (!data || e.ctrlKey || e.metaKey || e.altKey || ["INPUT", "TEXTAREA", "SELECT"].includes(e.target.tagName)) return;
  const item = data.items[current];
  const act = item ? state(item) : null;
  if (e.key === "j") select(current + 1);
  else if (e.key === "k") select(current - 1);
  else if (e.key === "a" && item) sendReview(item, act === "accept" ? null : "accept");
  else if (e.key === "r" && item) sendReview(item, act === "reject" ? null : "reject");
  else if (e.key === "e" && item) { const card = document.querySelector(`.item[data-index="${current}"]`); if (card && !card.querySelector("form")) editor(card, item); }
  else if (e.key === "p" && item) { const it = effective(item); if (it.start_sec !== null && it.end_sec !== null) playSpan(it.start_sec, it.end_sec); }
  else if (e.key === " " && e.target === document.body) { player.paused ? player.play() : player.pause(); }
  else return;
  e.preventDefault();
});

function showError(msg) { const e = document.getElementById("error"); e.hidden = false; e.textContent = msg; }

async function load() {
  const res = await fetch(`/api/video/${encodeURIComponent(key)}`);
  const body = await res.json();
  if (!res.ok) { showError(body.error); document.getElementById("title").textContent = key; return; }
  data = body;
  render();
  document.body.dataset.ready = "1";
}
load();
