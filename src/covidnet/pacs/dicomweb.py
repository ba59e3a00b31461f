"""The PACS over DICOMweb (``dicomweb-client``): QIDO-RS to find studies, WADO-RS to fetch them, STOW-RS to store results.

:class:`PacsClient` wraps :class:`dicomweb_client.api.DICOMwebClient` with the loop's retry
policy (:func:`covidnet.pacs.retry.with_retries`; dicomweb-client's own retrying is turned
off so that ``pacs.retry`` alone decides), a per-request timeout (``pacs.timeout_s``) and
error messages without identifiers. dicomweb-client logs StudyInstanceUIDs at INFO, so its
logger is raised to WARNING.

Checked against Orthanc 1.10 with its DICOMweb plugin 1.7 (Debian ``orthanc``,
``orthanc-dicomweb``): ``ModalitiesInStudy=CT`` matches studies holding CT among other
modalities; ``NumberOfStudyRelatedSeries`` / ``...Instances`` count every series, ours too;
storing an instance whose SOP Instance UID the PACS already holds succeeds and keeps one copy.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidnet.pacs.ids import is_own, redact
from covidnet.pacs.params import PacsParams
from covidnet.pacs.retry import PacsError, http_status, with_retries

log = logging.getLogger(__name__)

#: Retrieve instances in the transfer syntax they are stored in (no transcoding by the PACS).
AS_STORED = (("application/dicom", "*"),)

_TAGS = {"study": "0020000D", "series": "0020000E", "sop": "00080018", "patient": "00100020", "modality": "00080060",
         "modalities": "00080061", "n_series": "00201206", "n_study_instances": "00201208",
         "n_series_instances": "00201209", "date": "00080020", "time": "00080030", "description": "00081030",
         "series_description": "0008103E"}


def _value(item: dict, name: str, default: Any = None) -> Any:
    values = item.get(_TAGS[name], {}).get("Value") or []
    return values[0] if values else default


@dataclass(frozen=True)
class StudyRef:
    """One study as QIDO-RS lists it (identifiers stay in memory: never logged or stored)."""

    study_uid: str
    patient_id: str
    n_series: int                # every series, ours included
    n_instances: int
    study_date: str = ""
    description: str = ""

    @property
    def counts(self) -> str:
        """``series/instances``: when it is unchanged since the last poll, so is the study."""
        return f"{self.n_series}/{self.n_instances}"


@dataclass(frozen=True)
class SeriesRef:
    """One series of a study as QIDO-RS lists it."""

    series_uid: str
    modality: str
    n_instances: int


class PacsClient:
    """The PACS's DICOMweb services with retries (see the module docstring).

    Args:
        pp: the ``pacs`` params (``dicomweb_url``, ``timeout_s``, ``retry``, ``page_size``, ``uid_root``).
        key: the hash key (error messages are redacted with it).
        stop: set to make waits for a retry end at once.
    """

    def __init__(self, pp: PacsParams, key: bytes, stop: threading.Event | None = None) -> None:
        from dicomweb_client.api import DICOMwebClient

        for name in ("dicomweb_client", "retrying", "highdicom"):
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).getEffectiveLevel()))
        self.pp, self.key, self.stop = pp, key, stop
        self.web = DICOMwebClient(pp.dicomweb_url, timeout=pp.timeout_s)
        self.web.set_http_retry_params(retry=False)

    def _call(self, what: str, fn):
        import requests

        try:
            return with_retries(fn, self.pp.retry, what, self.key, self.stop)
        except requests.HTTPError as exc:  # not transient (4xx): say so without the URL's UIDs
            raise PacsError(f"{what}: the PACS answered HTTP {http_status(exc)} "
                            f"({redact(str(exc), self.key)[:300]})") from None

    def studies(self) -> list[StudyRef]:
        """Every study holding CT (``ModalitiesInStudy=CT``), asked ``pacs.page_size`` at a time."""
        out, offset = [], 0
        fields = ["NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "StudyDescription"]
        while True:
            page = self._call("QIDO-RS studies", lambda o=offset: self.web.search_for_studies(
                search_filters={"ModalitiesInStudy": "CT"}, fields=fields, limit=self.pp.page_size, offset=o))
            out += [StudyRef(str(_value(s, "study")), str(_value(s, "patient", "")), int(_value(s, "n_series", 0)),
                             int(_value(s, "n_study_instances", 0)), str(_value(s, "date", "")),
                             str(_value(s, "description", ""))) for s in page]
            if len(page) < self.pp.page_size:
                return out
            offset += len(page)

    def series(self, study_uid: str) -> list[SeriesRef]:
        """The series of one study with their instance counts."""
        items = self._call("QIDO-RS series", lambda: self.web.search_for_series(
            study_uid, fields=["NumberOfSeriesRelatedInstances"], get_remaining=True))
        return [SeriesRef(str(_value(s, "series")), str(_value(s, "modality", "")),
                          int(_value(s, "n_series_instances", 0))) for s in items]

    def retrieve_series(self, study_uid: str, series_uid: str, folder: Path) -> int:
        """Write every instance of a series (as stored: no transcoding) into ``folder``; the number written."""
        import pydicom

        folder.mkdir(parents=True, exist_ok=True)
        prefix = f"{len(list(folder.iterdir())):06d}"
        written: list[Path] = []

        def fetch() -> int:  # streamed to disk one instance at a time; a retry starts the series again
            for path in written:
                path.unlink(missing_ok=True)
            written.clear()
            for ds in self.web.iter_series(study_uid, series_uid, media_types=AS_STORED):
                written.append(folder / f"{prefix}_{len(written):06d}.dcm")
                pydicom.dcmwrite(written[-1], ds, enforce_file_format=True)
            return len(written)

        return self._call("WADO-RS series", fetch)

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str):
        """One instance as a pydicom Dataset."""
        return self._call("WADO-RS instance", lambda: self.web.retrieve_instance(
            study_uid, series_uid, sop_uid, media_types=AS_STORED))

    def store(self, datasets: list) -> None:
        """STOW-RS ``datasets`` into their study; storing again what the PACS holds keeps one copy.

        Raises:
            PacsError: the PACS refused an instance (its failure reason is kept).
        """
        study_uid = datasets[0].StudyInstanceUID
        response = self._call("STOW-RS", lambda: self.web.store_instances(datasets, study_uid))
        failed = getattr(response, "FailedSOPSequence", None) or []
        if failed:
            reasons = sorted({str(getattr(f, "FailureReason", "?")) for f in failed})
            raise PacsError(f"STOW-RS: the PACS refused {len(failed)} of {len(datasets)} instance(s) "
                            f"(failure reason {', '.join(reasons)})")

    def own_reports(self, study_uid: str) -> list:
        """Our SR instances in a study (series under ``pacs.uid_root``), as pydicom Datasets."""
        out = []
        for s in self.series(study_uid):
            if s.modality != "SR" or not is_own(s.series_uid, self.pp.uid_root):
                continue
            instances = self._call("QIDO-RS instances", lambda s=s: self.web.search_for_instances(
                study_uid, s.series_uid, get_remaining=True))
            out += [self.retrieve_instance(study_uid, s.series_uid, str(_value(i, "sop"))) for i in instances]
        return out


def current_reports(reports: list) -> list:
    """The reports no other report names as its predecessor (``PredecessorDocumentsSequence``)."""
    superseded = set()
    for ds in reports:
        for study in getattr(ds, "PredecessorDocumentsSequence", []) or []:
            for series in study.ReferencedSeriesSequence:
                superseded |= {str(r.ReferencedSOPInstanceUID) for r in series.ReferencedSOPSequence}
    return [ds for ds in reports if str(ds.SOPInstanceUID) not in superseded]
