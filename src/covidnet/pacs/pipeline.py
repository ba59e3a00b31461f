"""One study through the loop: score it, draw the overlay, build the SR, store both into the study, record it.

:class:`Processor` is what ``covidnet pacs watch`` (studies found by QIDO-RS) and ``covidnet
pacs listen`` (studies pushed by C-STORE) share. For a :class:`Job` (the study's files in a
folder, its fingerprint) claimed in the state with analysis number ``generation``:

1. the scorer (:mod:`covidnet.pacs.scorer`) gives the endpoint's answer or a reason;
2. the SR and Secondary Capture UIDs are derived from the study, its fingerprint and
   ``generation`` (:func:`covidnet.pacs.ids.derived_uid`);
3. the overlay image (:mod:`covidnet.pacs.capture`) when the study was analysed, and the SR
   (:mod:`covidnet.pacs.sr`) naming the current earlier report of the study as predecessor;
4. STOW-RS of both in one request; then the state and the prediction log row in one
   transaction (:meth:`covidnet.pacs.state.StudyState.finish`).

A crash between 4's two steps repeats the work with the same UIDs: the PACS keeps one copy.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from covidnet.monitor.predlog import hash_id
from covidnet.pacs.capture import make_source, render, secondary_capture
from covidnet.pacs.dicomweb import PacsClient, current_reports
from covidnet.pacs.ids import derived_uid, redact, short
from covidnet.pacs.params import PacsParams
from covidnet.pacs.retry import PacsError, PacsUnavailable
from covidnet.pacs.sr import build_report, qc_text, reference_header
from covidnet.pacs.state import StudyState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """A study ready for analysis: its files under ``folder`` (any layout), what they are."""

    study_uid: str
    study_hash: str
    fingerprint: str
    folder: Path


def result_columns(answer: dict | None, reason: str | None, key: bytes) -> dict:
    """The state's result columns (:data:`covidnet.pacs.state.RESULT_COLUMNS`) from an answer, or a redacted reason."""
    if answer is None:  # "PACS study: study <uid> has no usable CT series (...)" -> "no usable CT series (...)"
        text = re.sub(r"^(PACS study|zip): (study uid:[0-9a-f]+ (has )?)?", "", redact(reason or "unknown", key))
        return {"reason": text[:1024]}
    lesions = answer.get("lesions") or {}
    return {"probability": answer["covid19_probability"], "score": answer["score"], "threshold": answer["threshold"],
            "decision": answer["decision"], "abnormal_fraction": lesions.get("abnormal_fraction"),
            "ggo_fraction": lesions.get("ggo_fraction"), "consolidation_fraction": lesions.get("consolidation_fraction"),
            "qc_flags": qc_text(answer), "model_name": str(answer["model"]["name"]),
            "model_version": str(answer["model"]["version"])}


class Processor:
    """Analyse, store and record studies (see the module docstring).

    Args:
        pp: the ``pacs`` params.
        scorer: a :class:`covidnet.pacs.scorer.LocalScorer` or :class:`~covidnet.pacs.scorer.EndpointScorer`.
        client: the PACS results are stored into.
        state: the study state.
        owner: this worker's lease name.
        stop: set when the worker is asked to stop.
    """

    def __init__(self, pp: PacsParams, scorer, client: PacsClient, state: StudyState, owner: str,
                 stop: threading.Event | None = None) -> None:
        self.pp, self.scorer, self.client, self.state, self.owner = pp, scorer, client, state, owner
        self.stop = stop or threading.Event()
        self.source = make_source(pp.capture.source, scorer.serve, scorer.body_hu)
        self.key = state.key

    def uids(self, job: Job, generation: int) -> dict[str, str]:
        """The derived UIDs of this analysis's SR and Secondary Capture (series and instance)."""
        return {kind: derived_uid(self.key, self.pp.uid_root, job.study_uid, job.fingerprint, generation, kind)
                for kind in ("sr_series", "sr_sop", "sc_series", "sc_sop")}

    def run(self, job: Job, generation: int) -> str | None:
        """Process a claimed study; its new status (``done``, ``unanalysable``), or None when it failed
        and was released for a later try (the reason is logged, redacted).

        Raises:
            PacsUnavailable: the PACS stayed away (the claim is released; the caller stops this round).
        """
        tag = short(job.study_hash)
        try:
            status = self._process(job, generation)
        except PacsUnavailable as exc:
            self.state.fail(job.study_hash, self.owner, redact(str(exc), self.key), self.pp.poll_s)
            raise
        except PacsError as exc:
            why = redact(str(exc), self.key)
            log.error("study %s: not stored (%s); tried again in %.0f s", tag, why, self.pp.retry.max_backoff_s)
            self.state.fail(job.study_hash, self.owner, why, self.pp.retry.max_backoff_s)
            return None
        except BaseException:
            self.state.release(job.study_hash, self.owner)
            raise
        return status

    def _process(self, job: Job, generation: int) -> str:
        uids = self.uids(job, generation)
        request_id = "pacs-" + hash_id(self.key, "request", uids["sr_sop"])[:32]
        outcome = self.scorer.analyse(job.folder, request_id)
        answer, overlay = outcome.answer, None
        if answer is not None:
            files, shape = self._series_files(job.folder, answer["series_uid"])
            ref = reference_header(job.folder / files["path"].iloc[0])
            model = answer["model"]
            synthetic = " - SYNTHETIC training data" if str(model.get("synthetic")).lower() == "true" else ""
            title = f"P(COVID-19) {answer['covid19_probability']:.3f} ({answer['decision']}){synthetic}"
            pixels = render(self.source.overlay(files, job.folder, shape, self.pp.capture.tiles), self.pp.capture,
                            title)
            what = f"COVIDNet overlay of the analysed series; {title}; model {model['name']} {model['version']}"
            overlay = secondary_capture(ref, pixels, uids["sc_series"], uids["sc_sop"], self.pp.sc_series_number,
                                        self.pp.manufacturer, what)
        else:
            ref = reference_header(next(p for p in sorted(job.folder.rglob("*")) if p.is_file()))
        earlier = [r for r in self.client.own_reports(job.study_uid) if str(r.SOPInstanceUID) != uids["sr_sop"]]
        report = build_report(ref, answer, outcome.reason, uids, self.pp.sr_series_number, self.pp.manufacturer,
                              overlay, current_reports(earlier))
        self.client.store([d for d in (overlay, report) if d is not None])
        status = "done" if answer is not None else "unanalysable"
        recorded = self.state.finish(job.study_hash, job.fingerprint, self.owner, status,
                                     result_columns(answer, outcome.reason, self.key), outcome.predictions)
        tag = short(job.study_hash)
        if not recorded:
            log.warning("study %s: stored, but another worker took the lease meanwhile (it records the result)", tag)
        elif answer is not None:
            log.info("study %s: probability %.3f (%s), abnormal %s; SR and overlay stored%s", tag,
                     answer["covid19_probability"], answer["decision"],
                     _percent((answer.get("lesions") or {}).get("abnormal_fraction")),
                     f", superseding {len(earlier)} earlier" if earlier else "")
        else:
            log.info("study %s: not analysable (%s); SR with the reason stored", tag,
                     redact(outcome.reason or "", self.key)[:200])
        return status

    def _series_files(self, folder: Path, series_uid: str):
        """The files table (slice order) and ``(rows, columns)`` of the analysed series."""
        import dataclasses

        from covidnet.data.series import index_tree

        index = index_tree(folder, dataclasses.replace(self.scorer.series, workers=1))
        row = index.series[index.series["series_uid"] == series_uid].iloc[0]
        files = index.files[index.files["series_uid"] == series_uid].reset_index(drop=True)
        return files, (int(row["rows"]), int(row["columns"]))


def _percent(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"
