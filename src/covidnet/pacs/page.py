"""The worklist's HTML page: one static document whose script loads ``?format=json``, sorts and refreshes.

No external resources (no CDN: hospital networks and the tests have no internet). Sorting: a
click on a column header sorts by it (again: the other way); the default is the reading order
the server sends (probability, highest first, then studies without one). The rows reload every
``refresh_s`` seconds; the table keeps the chosen sort. Elements carry ids and ``data-``
attributes the browser test reads (``#worklist``, ``tr[data-study]``, ``#updated``).
"""

from __future__ import annotations

import html

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>COVIDNet worklist</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%}th,td{padding:.35em .6em;border-bottom:1px solid #ddd;text-align:left}
th{cursor:pointer;background:#f3f3f3;user-select:none}th.sorted-asc::after{content:" \\25B2"}th.sorted-desc::after{content:" \\25BC"}
tr.unanalysable td{background:#fff4e5}tr.waiting td,tr.retrying td{color:#777}.warn{color:#a40}
.banner{background:#222;color:#fff;padding:.5em 1em;margin-bottom:1em}
</style></head><body>
<div class="banner"><b>NOT FOR DIAGNOSIS</b> &mdash; COVIDNet triage worklist: every study stays in the reading
queue; the order is a suggestion (probability of COVID-19, highest first; studies without a result after them).</div>
<p>Updated <span id="updated">never</span> &middot; <span id="count">0</span> studies &middot; <span id="pacs"></span></p>
<table id="worklist"><thead><tr>
<th data-key="rank">#</th><th data-key="study">study</th><th data-key="description">description</th>
<th data-key="study_date">date</th><th data-key="probability">P(COVID-19)</th><th data-key="decision">decision</th>
<th data-key="abnormal_fraction">abnormal lung</th><th data-key="qc_flags">QC flags</th>
<th data-key="waiting_s">waiting</th><th data-key="status">status</th><th>viewer</th>
</tr></thead><tbody></tbody></table>
<script>
const REFRESH_MS = __REFRESH_MS__;
let rows = [], sortKey = "rank", sortDir = 1;
function pct(v) { return v === null || v === undefined ? "" : (100 * v).toFixed(1) + "%"; }
function waiting(s) {
  s = Math.floor(s); if (s < 60) return s + " s"; if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return Math.floor(s / 3600) + " h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + " min";
  return Math.floor(s / 86400) + " d " + String(Math.floor(s % 86400 / 3600)).padStart(2, "0") + " h";
}
function cell(tr, text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.appendChild(td); return td; }
function compare(a, b) {
  const x = a[sortKey], y = b[sortKey];
  if (x === y) return a.rank - b.rank;
  if (x === null || x === undefined) return 1;
  if (y === null || y === undefined) return -1;
  return (x < y ? -1 : 1) * sortDir;
}
function render() {
  const body = document.querySelector("#worklist tbody");
  body.replaceChildren();
  for (const r of [...rows].sort(compare)) {
    const tr = document.createElement("tr");
    tr.dataset.study = r.study; tr.dataset.probability = r.probability === null ? "" : r.probability;
    tr.className = r.status;
    cell(tr, r.rank); cell(tr, r.study); cell(tr, r.description || ""); cell(tr, r.study_date || "");
    cell(tr, r.probability === null ? "" : r.probability.toFixed(3)); cell(tr, r.decision || "");
    cell(tr, pct(r.abnormal_fraction)); cell(tr, r.qc_flags || "", r.qc_flags && r.qc_flags !== "none" ? "warn" : "");
    cell(tr, waiting(r.waiting_s));
    cell(tr, r.status + (r.reason ? ": " + r.reason : "") + (r.superseded ? " (re-analysed)" : ""));
    const td = cell(tr, "");
    if (r.link) { const a = document.createElement("a"); a.href = r.link; a.textContent = "open"; a.target = "_blank"; td.appendChild(a); }
    body.appendChild(tr);
  }
  for (const th of document.querySelectorAll("th[data-key]")) {
    th.className = th.dataset.key === sortKey ? (sortDir > 0 ? "sorted-asc" : "sorted-desc") : "";
  }
}
async function load() {
  try {
    const doc = await (await fetch(location.pathname + "?format=json", {cache: "no-store"})).json();
    rows = doc.rows; document.getElementById("count").textContent = rows.length;
    document.getElementById("pacs").textContent = doc.pacs === "ok" ? "" : doc.pacs;
    document.getElementById("updated").textContent = doc.generated_at;
    render();
  } catch (e) { document.getElementById("pacs").textContent = "worklist not reachable: " + e; }
}
for (const th of document.querySelectorAll("th[data-key]")) {
  th.addEventListener("click", () => {
    const key = th.dataset.key;
    sortDir = key === sortKey ? -sortDir : (["probability", "abnormal_fraction", "waiting_s"].includes(key) ? -1 : 1);
    sortKey = key; render();
  });
}
load(); setInterval(load, REFRESH_MS);
</script></body></html>
"""


def worklist_page(refresh_s: float) -> str:
    """The page, reloading its rows every ``refresh_s`` seconds."""
    return _PAGE.replace("__REFRESH_MS__", html.escape(str(int(refresh_s * 1000))))
