"""The ``preprocess`` stage: every scan of the split to a tensor, plus the index and QC tables.

The dictionary layer over :func:`covidnet.preprocess.series.preprocess_series` (MONAI's array
vs dictionary transforms): :func:`preprocess_cohort` runs it for every scan of the split, in
parallel, with a progress bar, skipping scans already done with the same parameters
(:attr:`covidnet.preprocess.params.PreprocessParams.key` is part of each tensor's name), and
writes ``tensors/<scan_id>.npy``, ``index.csv`` and ``qc.csv``; :func:`run_preprocess` is the
DVC stage around it.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from covidnet.atomic import atomic_path, write_csv
from covidnet.data.pixels import SeriesReadError
from covidnet.errors import InputError
from covidnet.preprocess.params import PreprocessParams
from covidnet.preprocess.series import preprocess_series
from covidnet.progress import bar

log = logging.getLogger(__name__)

INDEX_COLUMNS = ("scan_id", "patient_id", "study_uid", "series_uid", "hospital", "label", "split",
                 "scan_date", "path")


def scan_id(series_uid: str, params: PreprocessParams) -> str:
    """File stem of a scan's tensor: the series UID and the parameter key."""
    return f"{series_uid}-{params.key}"


def _one_scan(args: tuple[dict, pd.DataFrame, tuple[int, int], str, str, PreprocessParams]) -> dict:
    row, files, shape, root, tensor_dir, params = args
    sid = scan_id(row["series_uid"], params)
    tensor_path = Path(tensor_dir) / f"{sid}.npy"
    qc_path = Path(tensor_dir) / f"{sid}.qc.json"
    if tensor_path.is_file() and qc_path.is_file():
        return {**json.loads(qc_path.read_text()), "reused": True}
    tensor, qc = preprocess_series(files, root, params, shape=shape)
    qc = {"scan_id": sid, **qc}
    with atomic_path(qc_path) as tmp:
        tmp.write_text(json.dumps(qc))
    with atomic_path(tensor_path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, tensor.astype(params.dtype))
    return {**qc, "reused": False}


@dataclass(frozen=True)
class PreprocessSummary:
    """What :func:`preprocess_cohort` did."""

    n_scans: int
    n_reused: int
    n_failed: int
    tensor_shape: tuple[int, ...]
    out_dir: str

    def summary(self) -> str:
        return (f"{self.n_scans} tensor(s) of shape {self.tensor_shape} ({self.n_reused} reused, "
                f"{self.n_failed} failed)")


def preprocess_cohort(split: pd.DataFrame, series: pd.DataFrame, files: pd.DataFrame, dicom_root: Path | str,
                      out_dir: Path | str, params: PreprocessParams, progress: bool = True) -> PreprocessSummary:
    """The preprocess stage: every scan of the split to a tensor, plus index and QC tables.

    Args:
        split: one row per scan kept (``patient_id, study_uid, series_uid, hospital, label,
            split, scan_date``) from the split stage.
        series: the header table (for spacing and scanner columns of the QC table).
        files: the files table (slice order, rescale values) from the DICOM index.
        dicom_root: the folder ``files.path`` is relative to.
        out_dir: receives ``tensors/<scan_id>.npy`` (``(1, depth, crop, crop)``, ``dtype``),
            ``index.csv`` and ``qc.csv``. Tensors from earlier runs with the same parameters
            are reused; tensors no longer in the split are removed.
        params: preprocessing parameters.
        progress: show a progress bar on stderr.

    A scan whose pixels cannot be decoded is listed in ``qc.csv`` with ``error`` set and left
    out of ``index.csv``; the stage fails only when every scan fails.
    """
    out_dir = Path(out_dir)
    tensor_dir = out_dir / "tensors"
    tensor_dir.mkdir(parents=True, exist_ok=True)
    by_series = {uid: g.sort_values("slice_index") for uid, g in files.groupby("series_uid", sort=False)}
    shapes = {r.series_uid: (int(r.rows), int(r.columns)) for r in series.itertuples()}
    jobs, rows = [], []
    for row in split.to_dict("records"):
        uid = row["series_uid"]
        if uid not in by_series:
            raise InputError(f"series {uid} of study {row['study_uid']} is in the split but not in the files index "
                             "(re-run validate, then split)")
        rows.append(row)
        jobs.append((row, by_series[uid], shapes[uid], str(dicom_root), str(tensor_dir), params))

    results: list[dict] = []
    workers = max(1, min(params.workers, len(jobs)))
    if workers > 1:
        pool = ProcessPoolExecutor(max_workers=workers)
        futures = [pool.submit(_one_scan, job) for job in jobs]
        iterator = (f for f in futures)
    else:
        pool, futures = None, None
        iterator = iter(jobs)
    try:
        iterator = bar(iterator, total=len(jobs), desc="preprocess", unit="scan", progress=progress)
        for job, item in zip(jobs, iterator):
            try:
                results.append(item.result() if pool else _one_scan(item))
            except SeriesReadError as exc:
                log.warning("scan %s left out: %s", job[0]["study_uid"], exc)
                results.append({"scan_id": scan_id(job[0]["series_uid"], params), "error": str(exc), "reused": False})
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)

    qc = pd.DataFrame(results)
    if "error" not in qc:
        qc["error"] = ""
    qc["error"] = qc["error"].fillna("")
    meta = pd.DataFrame(rows)
    qc.insert(1, "study_uid", meta["study_uid"].to_numpy())
    qc.insert(2, "series_uid", meta["series_uid"].to_numpy())
    qc.insert(3, "hospital", meta["hospital"].to_numpy())
    qc.insert(4, "split", meta["split"].to_numpy())
    scanner = series.set_index("series_uid")[["manufacturer", "model", "kernel", "pixel_spacing_mm", "slice_thickness_mm"]]
    qc = qc.join(scanner, on="series_uid")
    ok = qc["error"] == ""
    if not ok.any() and len(qc):
        raise SeriesReadError(f"no scan could be preprocessed; first error: {qc['error'].iloc[0]}")
    index = meta.loc[ok.to_numpy()].copy()
    index.insert(0, "scan_id", qc.loc[ok, "scan_id"].to_numpy())
    index["path"] = [f"tensors/{s}.npy" for s in index["scan_id"]]
    index = index[list(INDEX_COLUMNS)]
    write_csv(out_dir / "qc.csv", qc.drop(columns=["reused"]))
    write_csv(out_dir / "index.csv", index)
    keep = {f"{s}.npy" for s in qc["scan_id"]} | {f"{s}.qc.json" for s in qc["scan_id"]}
    for stale in tensor_dir.iterdir():
        if stale.name not in keep:
            stale.unlink()
    return PreprocessSummary(
        n_scans=int(ok.sum()), n_reused=int(qc["reused"].sum()), n_failed=int((~ok).sum()),
        tensor_shape=(1, params.depth, params.crop, params.crop), out_dir=str(out_dir),
    )


def run_preprocess(params: dict[str, Any], paths, progress: bool = True) -> PreprocessSummary:
    """The ``preprocess`` stage: every scan of ``paths.split`` into ``paths.preprocessed``."""
    from covidnet.data.index import load_index
    from covidnet.params import section

    split = pd.read_csv(paths.split, dtype=str, keep_default_na=False)
    series, files = load_index(paths.index)
    return preprocess_cohort(split, series, files, paths.dicom, paths.preprocessed,
                             section(params, "preprocess", PreprocessParams), progress=progress)
