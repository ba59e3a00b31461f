"""Preprocessing exactly as the paper: clip HU, scale to [0, 1], resize linearly, crop.

Liu et al. (2021): clip to [-1024, 1024] HU, scale linearly to [0, 1], resize the volume to
64 axial slices of 512 x 512 by linear interpolation, crop the central 384 x 384 of each
slice; model input ``(1, 64, 384, 384)``. Here D (``depth``), R (``size``) and C (``crop``)
come from params.

Two layers (as MONAI's array and dictionary transforms):

* array functions on one volume — :func:`clip_scale`, :func:`linear_taps`,
  :func:`resize_crop` (the plain reference) and :func:`preprocess_series` (the fast path
  used everywhere: training, evaluation and serving call it);
* :func:`preprocess_cohort`, the stage: every scan of the split, in parallel, with a
  progress bar, skipping scans already done with the same parameters.

The fast path computes the same numbers as the reference (trilinear resize of the whole
clipped volume, ``align_corners=False``, then a centre crop) but touches only what the output
needs: linear interpolation to D slices reads at most 2·D source slices, and the crop needs
only the source rows and columns under it, so only those are decoded and converted to float.
The centre crop starts at ``R // 2 - C // 2`` (MONAI's ``CenterSpatialCrop`` convention).
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from covidnet.atomic import atomic_path, write_csv
from covidnet.data.pixels import SeriesReadError, read_stored, to_hu
from covidnet.errors import InputError

log = logging.getLogger(__name__)

INDEX_COLUMNS = ("scan_id", "patient_id", "study_uid", "series_uid", "hospital", "label", "split",
                 "scan_date", "path")


#: QC values measured on the pixels of a series (:func:`_qc`): HU percentiles inside the body,
#: the lung fraction and the noise in HU.
PIXEL_QC = ("hu_p05", "hu_p25", "hu_p50", "hu_p75", "hu_p95", "lung_fraction", "noise_hu")
#: Every per-scan QC value :func:`preprocess_series` returns: the pixel ones and the series'
#: slice count and median slice spacing (mm). The drift reference and the prediction log use these.
QC_VALUES = (*PIXEL_QC, "n_slices", "slice_spacing_mm")


@dataclass(frozen=True)
class PreprocessParams:
    """The ``preprocess`` section of params.yaml."""

    hu_min: float
    hu_max: float
    depth: int
    size: int
    crop: int
    dtype: str
    body_hu: float
    lung_hu: tuple[float, float]
    workers: int

    def __post_init__(self) -> None:
        if not self.hu_max > self.hu_min:
            raise ValueError(f"preprocess.hu_max {self.hu_max} must exceed preprocess.hu_min {self.hu_min}")
        for name in ("depth", "size", "crop"):
            if getattr(self, name) < 1:
                raise ValueError(f"preprocess.{name} must be >= 1, got {getattr(self, name)}")
        if self.crop > self.size:
            raise ValueError(f"preprocess.crop {self.crop} must not exceed preprocess.size {self.size}")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"preprocess.dtype {self.dtype!r} is not one of float16, float32")

    @property
    def key(self) -> str:
        """A short hash of the parameters that change a tensor (not ``workers``, not QC)."""
        fields = {k: getattr(self, k) for k in ("hu_min", "hu_max", "depth", "size", "crop", "dtype")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def clip_scale(hu: np.ndarray, hu_min: float, hu_max: float) -> np.ndarray:
    """Clip HU to ``[hu_min, hu_max]`` and scale linearly to ``[0, 1]``.

    Args:
        hu: any shape, HU.

    Returns:
        float32 array of the same shape in [0, 1].
    """
    out = np.clip(np.asarray(hu, dtype=np.float32), hu_min, hu_max)
    out -= np.float32(hu_min)
    out *= np.float32(1.0 / (hu_max - hu_min))
    return out


def linear_taps(n_in: int, n_out: int, start: int = 0, count: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of 1-D linear resizing, ``align_corners=False``.

    Output sample ``i`` sits at source coordinate ``(i + 0.5) * n_in / n_out - 0.5``,
    clamped at 0 (as ``torch.nn.functional.interpolate``); its value is
    ``(1 - w) * x[lo] + w * x[hi]``.

    Args:
        n_in: source length.
        n_out: resized length.
        start: first output sample wanted (e.g. a crop offset).
        count: number of output samples wanted (default: to the end).

    Returns:
        ``(lo, hi, w)``, each of length ``count``: int64, int64, float32.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"linear_taps: lengths must be >= 1, got n_in={n_in}, n_out={n_out}")
    count = n_out - start if count is None else count
    i = np.arange(start, start + count, dtype=np.float64)
    src = np.maximum((i + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (src - lo).astype(np.float32)
    return lo, hi, w


def crop_start(size: int, crop: int) -> int:
    """First index of the centre crop of length ``crop`` in ``size`` (MONAI's convention)."""
    return size // 2 - crop // 2


def resize_crop(volume: np.ndarray, depth: int, size: int, crop: int) -> np.ndarray:
    """Reference: trilinear resize of a whole volume to ``(depth, size, size)``, centre crop.

    Slow and memory hungry on purpose (it is the plain definition); tests compare the fast
    path :func:`preprocess_series` against it.

    Args:
        volume: ``(D_in, H, W)`` float32, already clipped and scaled.

    Returns:
        ``(depth, crop, crop)`` float32.
    """
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    resized = F.interpolate(t, size=(depth, size, size), mode="trilinear", align_corners=False)[0, 0]
    s = crop_start(size, crop)
    return resized[:, s : s + crop, s : s + crop].numpy()


def _to_unit(stored: np.ndarray, intercept: float, slope: float, params: PreprocessParams) -> np.ndarray:
    """Stored values -> HU -> clipped and scaled to [0, 1], fused into one float32 pass.

    Equals ``clip_scale(stored * slope + intercept, hu_min, hu_max)`` up to float32 rounding.
    """
    span = params.hu_max - params.hu_min
    out = stored.astype(np.float32)
    out *= np.float32(slope / span)
    out += np.float32((intercept - params.hu_min) / span)
    return np.clip(out, 0.0, 1.0, out=out)


def _lerp(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation along ``axis`` with taps from :func:`linear_taps`; a pure crop when
    every weight is 0 (same size in and out), so no arithmetic is done then."""
    if not w.any():
        return np.take(x, lo, axis=axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    a = np.take(x, lo, axis=axis)
    a *= 1.0 - w
    a += np.take(x, hi, axis=axis) * w
    return a


def preprocess_series(files: pd.DataFrame, root: Path | str, params: PreprocessParams,
                      shape: tuple[int, int] | None = None, with_qc: bool = True) -> tuple[np.ndarray, dict]:
    """One series from files to the model tensor, reading only what the output needs.

    Args:
        files: the series' rows of the files table (:data:`covidnet.data.dicom.FILE_COLUMNS`),
            sorted by position along the slice normal.
        root: the folder ``files.path`` is relative to.
        params: preprocessing parameters.
        shape: ``(Rows, Columns)`` of the slices if known (lets native pixel data be read
            row by row); otherwise learnt from the first slice.
        with_qc: also compute the QC values (from a sample of the slices read).

    Returns:
        ``(tensor, qc)``: the ``(1, depth, crop, crop)`` float32 tensor in [0, 1] and the
        :data:`QC_VALUES` (empty when ``with_qc`` is False; ``slice_spacing_mm`` is NaN for a
        single slice).

    Raises:
        SeriesReadError: a slice cannot be read, or has another size than the first.
    """
    root = Path(root)
    n = len(files)
    if n == 0:
        raise SeriesReadError("preprocess_series: the series has no files")
    rec = files.to_dict("records")
    d_lo, d_hi, d_w = linear_taps(n, params.depth)
    needed = np.unique(np.concatenate([d_lo, d_hi]))
    if shape is None:
        first = rec[int(needed[0])]
        shape = read_stored(root / first["path"], first["pixel_offset"], first["bits_stored"],
                            first["pixel_representation"]).shape
    h, w = shape
    start = crop_start(params.size, params.crop)
    r_lo, r_hi, r_w = linear_taps(h, params.size, start, params.crop)
    c_lo, c_hi, c_w = linear_taps(w, params.size, start, params.crop)
    r0, r1 = int(min(r_lo.min(), r_hi.min())), int(max(r_lo.max(), r_hi.max())) + 1
    c0, c1 = int(min(c_lo.min(), c_hi.min())), int(max(c_lo.max(), c_hi.max())) + 1

    # 1. The needed slices (at most 2 x depth), only the rows and columns under the crop,
    #    to [0, 1]. Native pixel data is read row-wise in place; a QC slice is read whole.
    blocks = np.empty((len(needed), r1 - r0, c1 - c0), dtype=np.float32)
    position = {int(idx): k for k, idx in enumerate(needed)}
    qc_slices: list[np.ndarray] = []
    qc_every = max(1, len(needed) // 8)
    for k, idx in enumerate(needed):
        r = rec[int(idx)]
        qc_slice = with_qc and k % qc_every == 0
        stored = read_stored(root / r["path"], r["pixel_offset"], r["bits_stored"], r["pixel_representation"], shape,
                             rows=None if qc_slice else (r0, r1))
        if qc_slice:
            qc_slices.append(to_hu(stored[::2, ::2], r["rescale_intercept"], r["rescale_slope"]))
            stored = stored[r0:r1]
        blocks[k] = _to_unit(stored[:, c0:c1], r["rescale_intercept"], r["rescale_slope"], params)
    # 2. Along the slices first (fewer planes to resize in-plane afterwards), then rows, columns.
    lo = np.array([position[int(i)] for i in d_lo])
    hi = np.array([position[int(i)] for i in d_hi])
    vol = _lerp(blocks, lo, hi, d_w, axis=0)
    vol = _lerp(vol, r_lo - r0, r_hi - r0, r_w, axis=1)
    vol = _lerp(vol, c_lo - c0, c_hi - c0, c_w, axis=2)
    qc = {}
    if with_qc:
        positions = files["position_mm"].to_numpy(np.float64)
        qc = {**_qc(np.stack(qc_slices), params), "n_slices": n,
              "slice_spacing_mm": float(np.median(np.diff(positions))) if n > 1 else float("nan")}
    return np.ascontiguousarray(vol)[None], qc


def _qc(sample_hu: np.ndarray, params: PreprocessParams) -> dict:
    """QC values from a sample of slices ``(k, h, w)`` in HU (every 2nd pixel)."""
    body = sample_hu > params.body_hu
    # Lungs sit inside the body outline: count lung-window voxels between the first and the
    # last body voxel of each row, as a fraction of that span.
    any_row = body.any(axis=2)
    first = np.where(any_row, body.argmax(axis=2), 0)
    last = np.where(any_row, body.shape[2] - 1 - body[:, :, ::-1].argmax(axis=2), -1)
    cols = np.arange(body.shape[2])[None, None, :]
    inside = (cols >= first[..., None]) & (cols <= last[..., None])
    lung = inside & (sample_hu >= params.lung_hu[0]) & (sample_hu <= params.lung_hu[1])
    body_vals = sample_hu[body]
    pct = np.percentile(body_vals, [5, 25, 50, 75, 95]) if body_vals.size else [np.nan] * 5
    # Noise: robust spread of horizontal neighbour differences in soft tissue (0..100 HU).
    diff = np.diff(sample_hu, axis=2)
    soft = (sample_hu[:, :, 1:] > 0) & (sample_hu[:, :, 1:] < 100) & (sample_hu[:, :, :-1] > 0) & (sample_hu[:, :, :-1] < 100)
    d = diff[soft]
    noise = float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2)) if d.size > 100 else float("nan")
    return {
        "hu_p05": float(pct[0]), "hu_p25": float(pct[1]), "hu_p50": float(pct[2]),
        "hu_p75": float(pct[3]), "hu_p95": float(pct[4]),
        "lung_fraction": float(lung.sum() / max(inside.sum(), 1)),
        "noise_hu": noise,
    }


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
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, total=len(jobs), desc="preprocess", unit="scan")
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


def params_dict(params: PreprocessParams) -> dict:
    """The parameters as a plain dict (logged with models, so serving preprocesses alike)."""
    return asdict(params)


def run_preprocess(params: dict[str, Any], paths, progress: bool = True) -> PreprocessSummary:
    """The ``preprocess`` stage: every scan of ``paths.split`` into ``paths.preprocessed``."""
    from covidnet.data.index import load_index
    from covidnet.params import section

    split = pd.read_csv(paths.split, dtype=str, keep_default_na=False)
    series, files = load_index(paths.index)
    return preprocess_cohort(split, series, files, paths.dicom, paths.preprocessed,
                             section(params, "preprocess", PreprocessParams), progress=progress)
