"""``covidnet pacs watch``: follow the PACS by QIDO-RS polling and analyse each new stable CT study once.

Why polling rather than Orthanc's changes feed: QIDO-RS is the DICOMweb standard, so the same
watcher follows any DICOMweb PACS, and the state it needs (per study: counts, fingerprint,
when it last changed) lives in the prediction log database rather than in a feed position.

Each poll (every ``pacs.poll_s``):

1. QIDO-RS lists the studies holding CT, with their series and instance counts;
2. a study whose counts did not change since its result was stored is skipped without
   another request; otherwise its series are listed and its fingerprint taken (our own SR and
   overlay series are left out: :func:`covidnet.pacs.ids.fingerprint`);
3. a study whose fingerprint stayed the same for ``pacs.stable_age_s`` and that has no result
   for that content is claimed (:meth:`covidnet.pacs.state.StudyState.claim`), its CT series
   retrieved by WADO-RS into a temporary folder (checked against the counts: a study that grew
   meanwhile waits for the next poll) and processed (:class:`covidnet.pacs.pipeline.Processor`).

A study that changes after its analysis (a new series) gets a new fingerprint and is analysed
again; its new SR supersedes the old one. ``--once`` polls until nothing is waiting to become
stable (a study backing off after a failure does not hold it up), then exits; without it the watcher follows until stopped (SIGTERM, SIGINT). A PACS that
is away is retried with back-off (``pacs.retry``); in follow mode the poll after that tries again.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from covidnet.pacs.dicomweb import PacsClient
from covidnet.pacs.ids import fingerprint, is_own, short, study_hash
from covidnet.pacs.params import PacsParams
from covidnet.pacs.pipeline import Job, Processor
from covidnet.pacs.retry import PacsUnavailable
from covidnet.pacs.state import StudyState, now_utc

log = logging.getLogger(__name__)


@dataclass
class Round:
    """What one poll did."""

    studies: int = 0
    processed: dict[str, int] = field(default_factory=dict)  # status -> count
    waiting: int = 0          # seen, not yet stable, or another worker's, or changed while retrieved
    failed: int = 0           # released after a failure, tried again later
    deferred: int = 0         # backing off after an earlier failure (``next_try_at`` not reached)

    def add(self, status: str | None) -> None:
        if status is None:
            self.failed += 1
        else:
            self.processed[status] = self.processed.get(status, 0) + 1


class Watcher:
    """The polling loop (see the module docstring).

    Args:
        pp: the ``pacs`` params.
        client: the PACS.
        state: the study state.
        processor: what analyses, stores and records one study.
        stop: set to stop after the current study.
    """

    def __init__(self, pp: PacsParams, client: PacsClient, state: StudyState, processor: Processor,
                 stop: threading.Event | None = None) -> None:
        self.pp, self.client, self.state, self.processor = pp, client, state, processor
        self.stop = stop or threading.Event()
        self.key = state.key

    def poll(self) -> Round:
        """One poll of the PACS (raises :class:`PacsUnavailable` when it stays away)."""
        r = Round()
        studies = self.client.studies()
        r.studies = len(studies)
        for ref in studies:
            if self.stop.is_set():
                break
            h = study_hash(self.key, ref.study_uid)
            row = self.state.get(h)
            if (row is not None and row["counts"] == ref.counts and row["done_fingerprint"] is not None
                    and row["fingerprint"] == row["done_fingerprint"]):
                continue  # unchanged since its result was stored
            series = [s for s in self.client.series(ref.study_uid) if not is_own(s.series_uid, self.pp.uid_root)]
            fp = fingerprint(self.key, [(s.series_uid, s.n_instances) for s in series], self.pp.uid_root)
            now = now_utc()
            row = self.state.observe(h, "watch", ref.counts, fp, now)
            if fp == row["done_fingerprint"]:
                continue
            if (now - row["stable_since"]).total_seconds() < self.pp.stable_age_s:
                r.waiting += 1
                continue
            generation = self.state.claim(h, fp, self.processor.owner, now)
            if generation is None:
                backing_off = row["next_try_at"] is not None and row["next_try_at"] > now
                r.deferred += backing_off
                r.waiting += not backing_off
                continue
            status = self._analyse(ref.study_uid, h, fp, [s for s in series if s.modality == "CT"], generation)
            if status == "changed":
                r.waiting += 1
            else:
                r.add(status)
        return r

    def _analyse(self, study_uid: str, h: str, fp: str, ct_series, generation: int) -> str | None:
        """Retrieve the CT series and process them; the status, None (failed) or ``changed``."""
        with tempfile.TemporaryDirectory(prefix="covidnet-pacs-") as tmp:
            folder = Path(tmp)
            for s in ct_series:
                got = self.client.retrieve_series(study_uid, s.series_uid, folder / f"s{len(list(folder.iterdir()))}")
                if got != s.n_instances:
                    log.info("study %s: changed while retrieved; waits for the next poll", short(h))
                    self.state.release(h, self.processor.owner)
                    return "changed"
            return self.processor.run(Job(study_uid, h, fp, folder), generation)

    def run(self, once: bool = False) -> Round:
        """Poll until stopped (or, with ``once``, until nothing waits); the totals.

        Raises:
            PacsUnavailable: ``once`` and the PACS stayed away through every retry.
        """
        total = Round()
        while not self.stop.is_set():
            try:
                r = self.poll()
            except PacsUnavailable as exc:
                if once:
                    raise
                log.warning("PACS unavailable: %s; polling again in %.0f s", exc, self.pp.poll_s)
                self.stop.wait(self.pp.poll_s)
                continue
            total.studies = r.studies
            total.waiting, total.deferred, total.failed = r.waiting, r.deferred, total.failed + r.failed
            for status, n in r.processed.items():
                total.processed[status] = total.processed.get(status, 0) + n
            if r.processed or r.failed:
                log.info("poll: %d studies, processed %s, %d waiting, %d failed", r.studies, r.processed, r.waiting,
                         r.failed)
            if once and r.waiting == 0:
                break
            self.stop.wait(min(self.pp.poll_s, max(self.pp.stable_age_s, 0.2)) if once else self.pp.poll_s)
        return total
