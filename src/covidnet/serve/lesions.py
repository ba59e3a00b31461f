"""Ground-glass and consolidation fractions of the lung volume, by HU thresholds.

The paper says COVIDNet quantifies the proportion of abnormalities; this is the descriptive
figure the server reports beside the probability. Method and limits: serving/README.md
("Lesion fractions"). Validated on synthetic phantoms only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from covidnet.serve.params import ServeParams


def lesion_sample(files: pd.DataFrame, root: Path | str, shape: tuple[int, int], params: ServeParams) -> np.ndarray:
    """The slices the lesion fractions are measured on, in HU.

    Up to ``params.lesion_max_slices`` evenly spaced slices of the series (rows of the files
    table, in slice order), each subsampled in-plane by the smallest integer step that brings it
    to at most ``params.lesion_max_px``. Slices are read one at a time and subsampled at once, so
    a request never holds more than one full-resolution slice for this.

    Args:
        files: the selected series' rows of the files table (slice order).
        root: the folder the table's paths are relative to.
        shape: ``(rows, columns)`` of the series.
        params: the ``serve`` params.

    Returns:
        ``(S, H', W')`` float32 in HU, ``S <= lesion_max_slices``.
    """
    from covidnet.data.pixels import read_volume_hu

    take = np.unique(np.linspace(0, len(files) - 1, min(len(files), params.lesion_max_slices)).round().astype(int))
    step = max(1, -(-max(shape) // params.lesion_max_px))
    out = np.empty((len(take), -(-shape[0] // step), -(-shape[1] // step)), np.float32)
    for j, i in enumerate(take):  # a strided view would keep its whole slice alive: copy into out
        out[j] = read_volume_hu(files.iloc[[i]], root, shape)[0, ::step, ::step]
    return out


def lung_abnormality(hu: np.ndarray, body_hu: float, params: ServeParams) -> dict[str, float | int | None]:
    """Ground-glass and consolidation fractions of the lung volume, by HU thresholds.

    The lung mask: body = HU > ``body_hu`` with holes filled slice by slice; aerated lung =
    body voxels in ``params.aerated_lung_hu`` (air below its low end, i.e. trachea and outside air, is
    left out); its 3D connected regions of at least ``lung_min_component`` of the largest one;
    then, slice by slice, a closing of ``lung_closing_px`` and hole filling, so that lesions
    surrounded by lung (or in a small dent of its edge) join it; finally only voxels from the low
    end of ``aerated_lung_hu`` to the top of ``consolidation_hu`` are kept. Vessels inside the lung are
    counted (as consolidation); lesions broadly touching the chest wall are partly missed; no
    lobar split. Validated on synthetic phantoms only.

    Args:
        hu: ``(D, H, W)`` volume in HU (slices may be a sample; fractions are volume ratios).
        body_hu: HU above which a voxel is body.
        params: the HU ranges and mask settings.

    Returns:
        ``lung_voxels``, ``ggo_fraction``, ``consolidation_fraction``, ``abnormal_fraction``
        (fractions of the lung mask; None when no lung is found).
    """
    from scipy import ndimage

    plane = np.zeros((3, 3, 3), bool)
    plane[1] = ndimage.generate_binary_structure(2, 1)
    body = ndimage.binary_fill_holes(hu > body_hu, structure=plane)
    aerated = body & (hu >= params.aerated_lung_hu[0]) & (hu <= params.aerated_lung_hu[1])
    labels, n = ndimage.label(aerated)
    if n == 0:
        return {"lung_voxels": 0, "ggo_fraction": None, "consolidation_fraction": None, "abnormal_fraction": None}
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= params.lung_min_component * sizes.max()) + 1
    lung = np.isin(labels, keep)
    if params.lung_closing_px:
        disk = np.zeros((1, 2 * params.lung_closing_px + 1, 2 * params.lung_closing_px + 1), bool)
        yy, xx = np.ogrid[-params.lung_closing_px:params.lung_closing_px + 1, -params.lung_closing_px:params.lung_closing_px + 1]
        disk[0] = yy ** 2 + xx ** 2 <= params.lung_closing_px ** 2
        pad = params.lung_closing_px
        lung = ndimage.binary_closing(np.pad(lung, ((0, 0), (pad, pad), (pad, pad))), structure=disk)[:, pad:-pad, pad:-pad]
    lung = ndimage.binary_fill_holes(lung, structure=plane) & body
    lung &= (hu >= params.aerated_lung_hu[0]) & (hu <= params.consolidation_hu[1])
    total = int(lung.sum())
    ggo = int((lung & (hu >= params.ggo_hu[0]) & (hu <= params.ggo_hu[1])).sum())
    cons = int((lung & (hu >= params.consolidation_hu[0]) & (hu <= params.consolidation_hu[1])).sum())
    if total == 0:
        return {"lung_voxels": 0, "ggo_fraction": None, "consolidation_fraction": None, "abnormal_fraction": None}
    return {"lung_voxels": total, "ggo_fraction": ggo / total, "consolidation_fraction": cons / total,
            "abnormal_fraction": (ggo + cons) / total}

