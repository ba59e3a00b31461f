"""The reading worklist: studies ordered by COVID-19 probability, for the terminal and as a page beside the model.

Rows come from the study state (:mod:`covidnet.pacs.state`: hashed ids, result, first seen)
joined, when the PACS answers, with its study list (description, date, a link to the study in
the viewer, ``pacs.viewer_url`` with ``{pacs}``, ``{orthanc_id}`` and ``{study_uid}``). Patient
names and ids are never shown; the link opens the study in the PACS's own viewer.

Order: analysed studies by probability, highest first; then every study without a probability
(waiting, or not analysable, with the reason), longest waiting first. No study leaves the list
because it could not be analysed. ``waiting`` is the time since the loop first saw the study.

``covidnet worklist`` prints :func:`format_table`; the model server serves :data:`WORKLIST_ROUTE`
(:func:`worklist_endpoint`): the HTML page (:mod:`covidnet.pacs.page`), which reloads its rows
from ``?format=json`` every ``pacs.worklist.refresh_s`` and sorts by any column on a click.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from typing import Any

from covidnet.pacs.ids import orthanc_id, short, study_hash
from covidnet.pacs.params import PacsParams
from covidnet.pacs.state import StudyState

#: The HTTP route beside the model server's routes.
WORKLIST_ROUTE = "/covidnet/worklist"


class PacsIndex:
    """The PACS's study list by study hash, asked at most every ``pacs.worklist.pacs_cache_s`` (no retries:
    a PACS that is away leaves the list without descriptions and links, and says so)."""

    def __init__(self, pp: PacsParams, key: bytes) -> None:
        from covidnet.pacs.dicomweb import PacsClient

        self.pp, self.key = pp, key
        self.client = PacsClient(dataclasses.replace(pp, retry=dataclasses.replace(pp.retry, count=0),
                                                     timeout_s=min(pp.timeout_s, 5.0)), key)
        self._lock = threading.Lock()
        self._at, self._index, self.error = -1e18, None, None

    def get(self) -> dict[str, dict[str, str]] | None:
        """``study hash -> {description, study_date, link}``; None while the PACS cannot be reached."""
        from covidnet.pacs.retry import PacsError

        with self._lock:
            if time.monotonic() - self._at < self.pp.worklist.pacs_cache_s:
                return self._index
            try:
                studies = self.client.studies()
            except PacsError as exc:
                self._index, self.error = None, str(exc)
            else:
                self._index, self.error = {study_hash(self.key, s.study_uid): {
                    "description": s.description, "study_date": s.study_date,
                    "link": self.pp.viewer_url.format(pacs=self.pp.url.rstrip("/"), study_uid=s.study_uid,
                                                      orthanc_id=orthanc_id(s.patient_id, s.study_uid))}
                    for s in studies}, None
            self._at = time.monotonic()
            return self._index


def _none(v: Any) -> Any:
    return None if v is None or (isinstance(v, float) and v != v) else v


def worklist_rows(state: StudyState, index: dict[str, dict] | None, limit: int,
                  now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """The worklist's rows in reading order (see the module docstring)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    rows = []
    for r in state.frame(limit).to_dict("records"):
        extra = (index or {}).get(r["study_hash"], {})
        rows.append({
            "study": short(r["study_hash"]), "description": extra.get("description", ""),
            "study_date": extra.get("study_date", ""), "link": extra.get("link"), "status": r["status"],
            "probability": _none(r["probability"]), "decision": _none(r["decision"]),
            "threshold": _none(r["threshold"]), "abnormal_fraction": _none(r["abnormal_fraction"]),
            "ggo_fraction": _none(r["ggo_fraction"]), "consolidation_fraction": _none(r["consolidation_fraction"]),
            "qc_flags": _none(r["qc_flags"]), "reason": _none(r["reason"]), "model_version": _none(r["model_version"]),
            "waiting_s": max(0.0, (now - r["first_seen"].to_pydatetime()).total_seconds()),
            "analyses": int(r["analyses"]), "superseded": int(r["analyses"]) > 1,
        })
    rows.sort(key=lambda x: (x["probability"] is None, -(x["probability"] or 0.0), -x["waiting_s"]))
    for i, x in enumerate(rows, 1):
        x["rank"] = i
    return rows


def waiting_text(seconds: float) -> str:
    """``42 s``, ``17 min``, ``3 h 05 min``, ``2 d 04 h``."""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600:02d} h"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The worklist as a fixed-width text table."""
    head = ("#", "study", "P(COVID)", "decision", "abnormal", "QC flags", "waiting", "status", "description")
    lines = [head]
    for r in rows:
        p = "" if r["probability"] is None else f"{r['probability']:.3f}"
        ab = "" if r["abnormal_fraction"] is None else f"{100 * r['abnormal_fraction']:.1f}%"
        status = r["status"] + (f": {r['reason']}" if r["status"] == "unanalysable" and r["reason"] else "")
        lines.append((str(r["rank"]), r["study"], p, r["decision"] or "", ab, r["qc_flags"] or "",
                      waiting_text(r["waiting_s"]), status[:90], (r["description"] or "")[:30]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def worklist_document(state: StudyState, pacs: PacsIndex | None, pp: PacsParams) -> dict[str, Any]:
    """What ``?format=json`` answers: the rows and whether the PACS could be asked."""
    index = pacs.get() if pacs is not None else None
    note = "ok" if index is not None else f"PACS not reachable: no descriptions or links ({pacs.error if pacs else 'off'})"
    return {"generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "pacs": note,
            "refresh_s": pp.worklist.refresh_s, "rows": worklist_rows(state, index, pp.worklist.limit)}


def worklist_endpoint(params: dict[str, Any], plog):
    """A Starlette endpoint for :data:`WORKLIST_ROUTE` (``app.add_route(..., methods=["GET"])``).

    Args:
        params: merged params (the ``pacs`` section).
        plog: the server's open :class:`covidnet.monitor.predlog.PredictionLog` (its database and key).
    """
    import asyncio

    from starlette.responses import HTMLResponse, JSONResponse

    from covidnet.pacs.page import worklist_page
    from covidnet.pacs.params import pacs_params

    pp = pacs_params(params)
    state = StudyState(plog, pp.lease_s)
    pacs = PacsIndex(pp, plog.key)

    async def worklist(request):
        if request.query_params.get("format") == "json":
            return JSONResponse(await asyncio.to_thread(worklist_document, state, pacs, pp))
        return HTMLResponse(worklist_page(pp.worklist.refresh_s))

    return worklist
