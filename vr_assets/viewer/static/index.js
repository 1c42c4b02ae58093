// The index page: filters live in the URL, so a filtered view can be shared and survives a reload.
"use strict";
const FILTERS = ["q", "outcome", "mode", "task", "check", "review", "per_page"];
const LABELS = {
  outcome: "any outcome", mode: "any mode", task: "any task", check: "any or none",
  review: "any review state",
};
const REVIEW_NAMES = { none: "not reviewed", partial: "partly reviewed", done: "fully reviewed",
  rejected: "has rejected items", edited: "has edited items", orphaned: "has orphaned reviews" };
const form = document.getElementById("filters");
let page = 1;
let timer = null;

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}

function state() {
  const p = new URLSearchParams(location.search);
  return p;
}

function fillSelect(name, counts, current) {
  const sel = form.elements[name];
  sel.replaceChildren(el("option", { value: "", text: LABELS[name] }));
  if (name === "check" && !("any" in counts)) counts = { any: 0, ...counts };
  for (const [value, n] of Object.entries(counts)) {
    const label = name === "review" ? (REVIEW_NAMES[value] || value) : (name === "check" && value === "any" ? "any failure" : value);
    sel.append(el("option", { value, text: `${label} (${n})` }));
  }
  if (current && ![...sel.options].some(o => o.value === current)) sel.append(el("option", { value: current, text: `${current} (0)` }));
  sel.value = current || "";
}

function taskSummary(row) {
  const parts = Object.entries(row.items_per_task).map(([t, n]) => `${t} ${n}`);
  return parts.length ? parts.join(" · ") : "—";
}

function render(data, params) {
  for (const name of ["outcome", "mode", "task", "check", "review"]) fillSelect(name, data.facets[name] || {}, params.get(name));
  document.getElementById("summary").textContent =
    `${data.videos} videos · ${data.total} shown by the filters`;
  const body = document.querySelector("#videos tbody");
  body.replaceChildren();
  for (const r of data.rows) {
    const link = el("a", { href: `/video/${encodeURIComponent(r.key)}`, text: r.key });
    const name = el("td", {}, link, el("div", { class: "reason", text: r.rel_path }));
    const outcome = el("td", {}, el("span", { class: `badge b-${r.outcome}`, text: r.outcome }));
    if (r.reason) outcome.append(el("div", { class: "reason", text: r.reason }));
    const mode = el("td", {}, r.mode ? el("span", { class: `badge b-${r.mode}`, text: r.mode }) : "—");
    const checks = el("td");
    const failed = Object.entries(r.check_failures);
    if (!failed.length) checks.append(el("span", { class: "muted", text: r.outcome === "annotated" ? "none" : "—" }));
    for (const [c, n] of failed) checks.append(el("span", { class: "badge b-check", text: `${c} ×${n}` }), " ");
    const review = el("td");
    if (r.reviewed) {
      review.append(el("span", { text: `${r.reviewed}/${r.qa_items}` }));
      if (r.rejected) review.append(" ", el("span", { class: "badge b-reject", text: `${r.rejected} rejected` }));
      if (r.edited) review.append(" ", el("span", { class: "badge b-edit", text: `${r.edited} edited` }));
    } else review.append(el("span", { class: "muted", text: "—" }));
    if (r.orphaned) review.append(" ", el("span", { class: "badge b-check", text: `${r.orphaned} orphaned` }));
    body.append(el("tr", { "data-key": r.key }, name, outcome, mode,
      el("td", { class: "num", text: String(r.qa_items) }), el("td", { class: "tasks", text: taskSummary(r) }),
      checks, review));
  }
  if (!data.rows.length) body.append(el("tr", {}, el("td", { colspan: "7", class: "muted", text: "no video matches these filters" })));
  document.getElementById("pageinfo").textContent = `page ${data.page} of ${data.pages}`;
  document.getElementById("prev").disabled = data.page <= 1;
  document.getElementById("next").disabled = data.page >= data.pages;
}

async function load() {
  const params = state();
  for (const f of FILTERS) if (params.has(f) && form.elements[f]) form.elements[f].value = params.get(f);
  page = Number(params.get("page") || 1);
  const res = await fetch(`/api/videos?${params.toString()}`);
  const data = await res.json();
  if (!res.ok) { document.getElementById("summary").textContent = data.error; return; }
  render(data, params);
}

function update(resetPage = true) {
  const p = new URLSearchParams();
  for (const f of FILTERS) { const v = form.elements[f].value; if (v && !(f === "per_page" && v === "50")) p.set(f, v); }
  if (!resetPage && page > 1) p.set("page", String(page));
  history.replaceState(null, "", p.toString() ? `?${p}` : location.pathname);
  load();
}

form.addEventListener("change", () => update());
form.addEventListener("input", e => { if (e.target.name === "q") { clearTimeout(timer); timer = setTimeout(update, 200); } });
form.addEventListener("submit", e => { e.preventDefault(); update(); });
document.getElementById("prev").onclick = () => { page -= 1; update(false); };
document.getElementById("next").onclick = () => { page += 1; update(false); };
load();
