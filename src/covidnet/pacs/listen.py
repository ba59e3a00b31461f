"""``covidnet pacs listen``: a DIMSE storage SCP (pynetdicom) that a PACS pushes studies to by C-STORE.

Each received instance is written, atomically, into the spool (``pacs.listen.spool``) under
``<study hash>/<instance hash>.dcm``: the folder and file names are keyed hashes, so the spool
names no study, and a study sent twice overwrites its own files. A study is complete when no
file arrived for it for ``pacs.listen.quiet_s``; its fingerprint is taken from the files'
headers (the same :func:`covidnet.pacs.ids.fingerprint` the watcher takes from QIDO-RS counts,
so a study the watcher analysed is not analysed again here, nor the reverse), and it goes
through the same :class:`covidnet.pacs.pipeline.Processor`: the SR and the overlay are stored
into the PACS by STOW-RS (``pacs.url``). The spooled files stay ``pacs.listen.keep_h`` after the
study's last file, so a series pushed later joins the rest and the study is analysed again.

Every storage SOP class is accepted, in any transfer syntax pydicom can hold; Verification
(C-ECHO) answers too. pynetdicom's own log is raised to WARNING (it names the peers' AE titles
and, at debug level, datasets).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from covidnet.monitor.predlog import hash_id
from covidnet.pacs.ids import fingerprint, study_hash
from covidnet.pacs.params import PacsParams
from covidnet.pacs.pipeline import Job, Processor
from covidnet.pacs.retry import PacsUnavailable
from covidnet.pacs.state import StudyState, now_utc

log = logging.getLogger(__name__)

#: C-STORE statuses: success, and "out of resources" when the file cannot be written.
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700


class Listener:
    """The storage SCP and the loop that analyses complete pushed studies (see the module docstring).

    Args:
        pp: the ``pacs`` params (``listen`` for the SCP).
        processor: what analyses, stores and records one study.
        state: the study state.
        stop: set to stop the loop (the SCP stops with it).
    """

    def __init__(self, pp: PacsParams, processor: Processor, state: StudyState,
                 stop: threading.Event | None = None) -> None:
        self.pp, self.lp, self.processor, self.state = pp, pp.listen, processor, state
        self.stop = stop or threading.Event()
        self.key = state.key
        self.spool = Path(self.lp.spool)
        self._seen: dict[Path, tuple] = {}  # study folder -> ((files, newest mtime), fingerprint, study uid)
        self.server = None

    def start(self) -> tuple[str, int]:
        """Start the SCP in background threads; the address it listens on."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLogger("pynetdicom").getEffectiveLevel()))
        self.spool.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.lp.ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.maximum_pdu_size = 0
        self.server = ae.start_server((self.lp.host, self.lp.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        address = self.server.server_address[:2]
        log.info("storage SCP %s listening on %s:%d; spool %s", self.lp.ae_title, address[0], address[1], self.spool)
        return address

    def _on_store(self, event) -> int:
        """Write one received instance into the spool (atomically); the C-STORE status."""
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            folder = self.spool / study_hash(self.key, ds.StudyInstanceUID)
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{hash_id(self.key, 'instance', ds.SOPInstanceUID)[:40]}.dcm"
            fd, tmp = tempfile.mkstemp(prefix=".incoming-", dir=folder)
            with os.fdopen(fd, "wb") as out:
                ds.save_as(out, enforce_file_format=True)
            os.replace(tmp, target)
        except (OSError, AttributeError, ValueError) as exc:
            log.error("C-STORE: cannot spool an instance (%s)", type(exc).__name__)
            return OUT_OF_RESOURCES
        return SUCCESS

    def pending(self) -> list[Path]:
        """Spooled study folders quiet for ``quiet_s``; folders past ``keep_h`` are removed."""
        now, out = time.time(), []
        for folder in sorted(p for p in self.spool.iterdir() if p.is_dir()) if self.spool.is_dir() else []:
            files = [f for f in folder.iterdir() if f.suffix == ".dcm"]
            newest = max((f.stat().st_mtime for f in files), default=folder.stat().st_mtime)
            if now - newest > self.lp.keep_h * 3600:
                shutil.rmtree(folder, ignore_errors=True)
                self._seen.pop(folder, None)
            elif files and now - newest >= self.lp.quiet_s:
                out.append(folder)
        return out

    def _describe(self, folder: Path) -> tuple[str, str]:
        """``(study uid, fingerprint)`` of a spooled study, from its headers (cached while unchanged)."""
        import pydicom

        files = sorted(folder.glob("*.dcm"))
        stamp = (len(files), max(f.stat().st_mtime for f in files))
        cached = self._seen.get(folder)
        if cached is not None and cached[0] == stamp:
            return cached[2], cached[1]
        counts: dict[str, int] = {}
        study_uid = ""
        for f in files:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesInstanceUID"])
            study_uid = str(ds.StudyInstanceUID)
            counts[str(ds.SeriesInstanceUID)] = counts.get(str(ds.SeriesInstanceUID), 0) + 1
        fp = fingerprint(self.key, counts.items(), self.pp.uid_root)
        self._seen[folder] = (stamp, fp, study_uid)
        return study_uid, fp

    def process_pending(self) -> dict[str, int]:
        """Analyse every complete spooled study without a result for its content; counts by status."""
        done: dict[str, int] = {}
        for folder in self.pending():
            if self.stop.is_set():
                break
            study_uid, fp = self._describe(folder)
            h = folder.name
            row = self.state.observe(h, "listen", None, fp, now_utc())
            if fp == row["done_fingerprint"]:
                continue
            generation = self.state.claim(h, fp, self.processor.owner)
            if generation is None:
                continue
            status = self.processor.run(Job(study_uid, h, fp, folder), generation)
            done[str(status)] = done.get(str(status), 0) + 1
        return done

    def run(self) -> None:
        """Serve and process until ``stop`` is set; then shut the SCP down."""
        if self.server is None:
            self.start()
        try:
            while not self.stop.is_set():
                try:
                    done = self.process_pending()
                    if done:
                        log.info("pushed studies processed: %s", done)
                except PacsUnavailable as exc:
                    log.warning("PACS unavailable: %s; trying again in %.0f s", exc, self.pp.poll_s)
                    self.stop.wait(self.pp.poll_s)
                self.stop.wait(min(1.0, max(self.lp.quiet_s / 2, 0.2)))
        finally:
            self.server.shutdown()
            log.info("storage SCP stopped (studies in the spool wait for the next start)")

