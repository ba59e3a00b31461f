"""One DICOM series to the model tensor, reading only the slices, rows and columns it needs.

The fast path used everywhere (training data, evaluation and the KServe ``preprocess`` call
it): the same numbers as the plain reference :func:`covidnet.preprocess.array.resize_crop` of
the whole clipped volume, but linear interpolation to D slices reads at most 2·D source slices,
and the centre crop needs only the source rows and columns under it, so only those are decoded
and converted to float. Compressed slices go through the decoders ``preprocess.decoders``
names per transfer syntax, in ``preprocess.decode_workers`` processes
(:mod:`covidnet.preprocess.decode`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from covidnet.data.pixels import SeriesReadError, check_decoders, read_stored
from covidnet.preprocess.array import _lerp, crop_start, linear_taps
from covidnet.preprocess.decode import BlockSpec, decoded_blocks, parallel_workers
from covidnet.preprocess.params import PreprocessParams
from covidnet.preprocess.qc import measure_qc


def preprocess_series(files: pd.DataFrame, root: Path | str, params: PreprocessParams,
                      shape: tuple[int, int] | None = None, with_qc: bool = True) -> tuple[np.ndarray, dict]:
    """One series from files to the model tensor, reading only what the output needs.

    Args:
        files: the series' rows of the files table (:data:`covidnet.data.series.FILE_COLUMNS`),
            sorted by position along the slice normal.
        root: the folder ``files.path`` is relative to.
        params: preprocessing parameters.
        shape: ``(Rows, Columns)`` of the slices if known (lets native pixel data be read
            row by row); otherwise learnt from the first slice.
        with_qc: also compute the QC values (from a sample of the slices read).

    Returns:
        ``(tensor, qc)``: the ``(1, depth, crop, crop)`` float32 tensor in [0, 1] and the
        :data:`covidnet.preprocess.qc.QC_VALUES` (empty when ``with_qc`` is False;
        ``slice_spacing_mm`` is NaN for a single slice).

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
    check_decoders(params.decoders)
    if shape is None:
        first = rec[int(needed[0])]
        shape = read_stored(root / first["path"], first["pixel_offset"], first["bits_stored"],
                            first["pixel_representation"], decoders=params.decoders).shape
    h, w = shape
    start = crop_start(params.size, params.crop)
    r_lo, r_hi, r_w = linear_taps(h, params.size, start, params.crop)
    c_lo, c_hi, c_w = linear_taps(w, params.size, start, params.crop)
    r0, r1 = int(min(r_lo.min(), r_hi.min())), int(max(r_lo.max(), r_hi.max())) + 1
    c0, c1 = int(min(c_lo.min(), c_hi.min())), int(max(c_lo.max(), c_hi.max())) + 1

    # 1. The needed slices (at most 2 x depth), only the rows and columns under the crop,
    #    to [0, 1]. Native pixel data is read row-wise in place; a QC slice is read whole;
    #    compressed slices are decoded in preprocess.decode_workers processes.
    recs = [rec[int(idx)] for idx in needed]
    position = {int(idx): k for k, idx in enumerate(needed)}
    qc_every = max(1, len(needed) // 8)
    whole = frozenset(range(0, len(needed), qc_every)) if with_qc else frozenset()
    spec = BlockSpec(str(root), (int(h), int(w)), (r0, r1), (c0, c1), params.hu_min, params.hu_max, params.decoders)
    lo = np.array([position[int(i)] for i in d_lo])
    hi = np.array([position[int(i)] for i in d_hi])
    with decoded_blocks(recs, spec, whole, parallel_workers(params.decode_workers, recs, (int(h), int(w)),
                                                                        params.decode_parallel_mpix)) as (blocks, qc_by_k):
        # 2. Along the slices first (fewer planes to resize in-plane afterwards), then rows, columns.
        vol = np.asarray(_lerp(blocks, lo, hi, d_w, axis=0))  # a copy: blocks may be a memory map
    qc_slices = [qc_by_k[k] for k in sorted(qc_by_k)]
    vol = _lerp(vol, r_lo - r0, r_hi - r0, r_w, axis=1)
    vol = _lerp(vol, c_lo - c0, c_hi - c0, c_w, axis=2)
    qc = measure_qc(np.stack(qc_slices), files["position_mm"].to_numpy(np.float64), params) if with_qc else {}
    return np.ascontiguousarray(vol)[None], qc
