"""A real PACS for the tests: Debian's Orthanc (+ its DICOMweb plugin) on loopback, with a throwaway storage folder.

:class:`Orthanc` writes a JSON configuration (HTTP and DICOM ports on 127.0.0.1, the storage and
index folder, the DICOMweb plugin, no remote access, no authentication, ``DicomModalities``
for the storage SCPs a test pushes to), starts ``Orthanc config.json`` as a subprocess and
waits for ``/system``. ``stop()`` and ``start()`` again keep the storage: a PACS restarted mid-run.
:func:`orthanc_missing` says why the tests must skip (``bash scripts/orthanc.sh install``).
The helpers below read the PACS through Orthanc's own REST API, not through the code under test.
"""

from __future__ import annotations

import glob
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

PLUGIN_GLOBS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so*")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if Path(p).is_file()), None)


def dicomweb_plugin() -> str | None:
    return next((p for g in PLUGIN_GLOBS for p in sorted(glob.glob(g))), None)


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here (None when it can)."""
    if orthanc_binary() is None:
        return "Orthanc is not installed (bash scripts/orthanc.sh install: Debian's orthanc, orthanc-dicomweb)"
    if dicomweb_plugin() is None:
        return "Orthanc's DICOMweb plugin is not installed (bash scripts/orthanc.sh install: orthanc-dicomweb)"
    return None


class Orthanc:
    """One Orthanc server on loopback (see the module docstring).

    Args:
        root: a folder for its configuration, storage and log.
        modalities: ``name -> (AE title, port)`` of DICOM peers on 127.0.0.1 it may send to.
    """

    def __init__(self, root: Path, modalities: dict[str, tuple[str, int]] | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.log_path = self.root / "orthanc.log"
        self.proc: subprocess.Popen | None = None
        config = {
            "Name": "covidnet-test", "StorageDirectory": str(self.root / "db"), "IndexDirectory": str(self.root / "db"),
            "HttpPort": self.http_port, "HttpBindAddress": "127.0.0.1", "DicomPort": self.dicom_port,
            "DicomBindAddress": "127.0.0.1", "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": [dicomweb_plugin()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "StableAge": 1,
            "DicomModalities": {name: [aet, "127.0.0.1", port] for name, (aet, port) in (modalities or {}).items()},
        }
        self.config = self.root / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=1))

    def start(self, timeout_s: float = 30.0) -> float:
        """Start it and wait for ``/system``; the seconds that took."""
        t0 = time.perf_counter()
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen([orthanc_binary(), str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        while time.perf_counter() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}):\n{self.log_path.read_text()[-2000:]}")
            try:
                self.get("/system", timeout=1)
                return time.perf_counter() - t0
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        raise RuntimeError(f"Orthanc did not answer /system within {timeout_s} s:\n{self.log_path.read_text()[-2000:]}")

    def stop(self, kill: bool = False) -> None:
        """Stop it (SIGTERM: Orthanc's own shutdown takes about 3 s); ``kill``: at once (SIGKILL, for the end
        of a test, when the storage is thrown away)."""
        if self.proc is not None and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None

    def get(self, path: str, timeout: float = 30.0):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def post(self, path: str, body: bytes | dict, timeout: float = 120.0):
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        req = urllib.request.Request(self.url + path, data=data, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"{}")

    def delete(self, path: str) -> None:
        urllib.request.urlopen(urllib.request.Request(self.url + path, method="DELETE"), timeout=30).read()

    def upload(self, folder: Path) -> int:
        """POST every file under ``folder`` to ``/instances`` (as a modality would store them); the count."""
        files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
        for f in files:
            self.post("/instances", f.read_bytes())
        return len(files)

    def study_id(self, study_uid: str) -> str:
        (found,) = self.post("/tools/lookup", study_uid.encode())
        return found["ID"]

    def series_of(self, study_uid: str) -> list[dict]:
        """Each series of a study: ``uid``, ``modality``, ``description`` and its instances' Orthanc ids."""
        out = []
        for s in self.get(f"/studies/{self.study_id(study_uid)}/series"):
            tags = s["MainDicomTags"]
            out.append({"uid": tags["SeriesInstanceUID"], "modality": tags.get("Modality"),
                        "description": tags.get("SeriesDescription", ""), "instances": s["Instances"]})
        return out

    def instance(self, orthanc_id: str):
        """One stored instance, parsed by pydicom."""
        import io

        import pydicom

        return pydicom.dcmread(io.BytesIO(self.get(f"/instances/{orthanc_id}/file")))

    def results(self, study_uid: str, uid_root: str) -> dict[str, list]:
        """Our SR and Secondary Capture instances in a study (series under ``uid_root``), parsed."""
        out = {"SR": [], "OT": []}
        for s in self.series_of(study_uid):
            if s["uid"].startswith(uid_root):
                out.setdefault(s["modality"], []).extend(self.instance(i) for i in s["instances"])
        return out

    def __enter__(self) -> "Orthanc":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop(kill=True)


# --- the PACS loop's test set-up: a hash key, a tiny model, params, studies -------------------------------

#: The hash key the PACS tests run with ($COVIDNET_HASH_KEY).
KEY = "pacs-tests-key-" + "0123456789abcdef" * 2


def pacs_env(**extra: str) -> dict:
    """The environment of a ``covidnet`` subprocess in these tests: the hash key, unbuffered output."""
    import os

    return {**os.environ, "COVIDNET_HASH_KEY": KEY, "PYTHONUNBUFFERED": "1", **extra}


def studies_with_status(db: Path, *statuses: str) -> int:
    """How many studies of the ``pacs_studies`` table in the SQLite file ``db`` have one of ``statuses``
    (0 while the table is not there yet)."""
    import sqlite3

    marks = ", ".join("?" * len(statuses))
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute(f"SELECT COUNT(*) FROM pacs_studies WHERE status IN ({marks})", statuses).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def wait_until(predicate, timeout: float, what: str, step: float = 0.05) -> None:
    """Poll ``predicate`` every ``step`` s; fail naming ``what`` after ``timeout`` s."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"timed out: {what}")


def write_params(tmp: Path, orthanc: "Orthanc", **pacs: object) -> Path:
    """The repository's params (tiny profile) with the PACS at ``orthanc``, a prediction log in ``tmp``,
    fast polling and short back-off; ``pacs`` replaces more keys of the pacs section."""
    import yaml

    from support import REPO

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "tiny"
    params["paths"]["predlog"] = str(tmp / "predlog.db")
    params["paths"]["calibrator"] = str(tmp / "no-calibrator.json")
    params["pacs"].update({"url": orthanc.url, "stable_age_s": 0.0, "poll_s": 0.5, "lease_s": 5.0,
                           "retry": {"count": 8, "backoff_s": 0.2, "factor": 2.0, "max_backoff_s": 2.0}})
    params["pacs"]["listen"].update({"spool": str(tmp / "spool"), "quiet_s": 1.0})
    params["pacs"]["worklist"].update({"refresh_s": 1.0, "pacs_cache_s": 0.0})
    for name, value in pacs.items():
        params["pacs"][name] = value
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def ct_study(root: Path, name: str, patient_id: str, contrast: bool = False, seed: int = 0, slices: int = 12,
             study_uid: str = "", series_number: int = 2) -> Path:
    """A small chest-like CT series (``slices`` x 32 x 32: soft tissue around two aerated lungs, a ground-glass
    patch whose size grows with ``seed`` and a consolidation) of patient ``patient_id``; contrast-enhanced when
    ``contrast``; into an existing study when ``study_uid`` is given."""
    import numpy as np

    from covidnet.synthetic.dicom_writer import SeriesHeader, write_series

    rng = np.random.default_rng(seed)
    vol = np.full((slices, 32, 32), -1000.0)
    vol[:, 2:30, 2:30] = 40.0
    vol[:, 6:26, 5:14] = vol[:, 6:26, 18:27] = -850.0
    vol[:, 8:10 + 2 * (seed % 6), 6:12] = -550.0
    vol[:, 18:22, 20:25] = 20.0
    vol += rng.normal(0, 20, size=vol.shape)
    header = SeriesHeader(patient_id=patient_id, uid_entropy=name, study_uid=study_uid, series_number=series_number,
                          contrast_agent="IODINE" if contrast else "", accession_number=f"ACC{seed:04d}")
    write_series(root / name, vol, (8.0, 10.0, 10.0), header=header)
    return root / name


def study_uid_of(folder: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(next(p for p in sorted(Path(folder).iterdir())), stop_before_pixels=True).StudyInstanceUID)


def identifiers(folder: Path) -> set[str]:
    """PatientID, PatientName, accession number and every UID of the files under ``folder``: none may leak."""
    import pydicom

    out: set[str] = set()
    for f in Path(folder).rglob("*"):
        if f.is_file():
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            out |= {str(ds.PatientID), str(ds.PatientName), str(ds.AccessionNumber), str(ds.StudyInstanceUID),
                    str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
    return {x for x in out if x}
