"""The Secondary Capture beside the SR: slices of the analysed series with a coloured overlay, "NOT FOR DIAGNOSIS".

The overlay comes from an *image source* (``pacs.capture.source``, :data:`SOURCES`), so a
saliency map can replace the default later: a source turns the analysed series into an
:class:`Overlay` (HU slices plus weighted colour layers). The default, :class:`MaskSource`,
shows the ground-glass (yellow) and consolidation (red) voxels of the lung, by the HU windows
and lung mask steps that :func:`covidnet.serve.lesions.lung_abnormality` measures its fractions
with (:func:`lesion_masks`), on ``pacs.capture.tiles`` evenly spaced slices read and subsampled
as :func:`covidnet.serve.lesions.lesion_sample` does. Only the slices shown are read and
masked (the mask's 3D size filter then sees those slices alone): the fractions in the SR are
the endpoint's, measured on up to ``serve.lesion_max_slices``.

:func:`render` lays the slices out in a square grid under a banner that says "NOT FOR DIAGNOSIS"; :func:`secondary_capture` wraps it as an RGB Secondary
Capture image (highdicom) in the analysed study, with ``BurnedInAnnotation`` YES and the
disclaimer in ``ImageComments`` and ``SeriesDescription``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from covidnet.pacs.params import CaptureParams

if TYPE_CHECKING:
    import pandas as pd

    from covidnet.serve.params import ServeParams

DISCLAIMER = "NOT FOR DIAGNOSIS"


@dataclass(frozen=True)
class Layer:
    """One colour over the slices: ``weight`` ``(S, H, W)`` in [0, 1], ``rgb`` 0-255."""

    name: str
    weight: np.ndarray
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Overlay:
    """What a source shows: ``hu`` ``(S, H, W)`` float32 (HU) and the layers drawn over it."""

    hu: np.ndarray
    layers: tuple[Layer, ...]
    legend: str


class ImageSource(Protocol):
    """Turns the analysed series (its files table, slice order) into an :class:`Overlay` of at most ``n`` slices."""

    def overlay(self, files: pd.DataFrame, root: Path, shape: tuple[int, int], n: int) -> Overlay: ...


def lesion_masks(hu: np.ndarray, body_hu: float, params: ServeParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lung, ground-glass and consolidation masks ``(D, H, W)`` bool: the masks whose voxel counts
    :func:`covidnet.serve.lesions.lung_abnormality` reports as fractions (same steps, same params;
    tests/pacs/test_capture.py checks that the counts agree)."""
    from scipy import ndimage

    plane = np.zeros((3, 3, 3), bool)
    plane[1] = ndimage.generate_binary_structure(2, 1)
    body = ndimage.binary_fill_holes(hu > body_hu, structure=plane)
    aerated = body & (hu >= params.aerated_lung_hu[0]) & (hu <= params.aerated_lung_hu[1])
    labels, n = ndimage.label(aerated)
    empty = np.zeros(hu.shape, bool)
    if n == 0:
        return empty, empty, empty
    sizes = np.bincount(labels.ravel())[1:]
    lung = np.isin(labels, np.flatnonzero(sizes >= params.lung_min_component * sizes.max()) + 1)
    r = params.lung_closing_px
    if r:
        yy, xx = np.ogrid[-r:r + 1, -r:r + 1]
        disk = (yy ** 2 + xx ** 2 <= r ** 2)[None]
        lung = ndimage.binary_closing(np.pad(lung, ((0, 0), (r, r), (r, r))), structure=disk)[:, r:-r, r:-r]
    lung = ndimage.binary_fill_holes(lung, structure=plane) & body
    lung &= (hu >= params.aerated_lung_hu[0]) & (hu <= params.consolidation_hu[1])
    ggo = lung & (hu >= params.ggo_hu[0]) & (hu <= params.ggo_hu[1])
    cons = lung & (hu >= params.consolidation_hu[0]) & (hu <= params.consolidation_hu[1])
    return lung, ggo, cons


class MaskSource:
    """The default source: ground-glass (yellow) and consolidation (red) inside the lung mask."""

    def __init__(self, serve: ServeParams, body_hu: float) -> None:
        self.serve, self.body_hu = serve, body_hu

    def overlay(self, files: pd.DataFrame, root: Path, shape: tuple[int, int], n: int) -> Overlay:
        from covidnet.serve.lesions import lesion_sample

        take = np.unique(np.linspace(0, len(files) - 1, min(n, len(files))).round().astype(int))
        hu = lesion_sample(files.iloc[take].reset_index(drop=True), root, shape, self.serve)
        _, ggo, cons = lesion_masks(hu, self.body_hu, self.serve)
        return Overlay(hu, (Layer("ground glass", ggo.astype(np.float32), (255, 210, 0)),
                            Layer("consolidation", cons.astype(np.float32), (230, 30, 30))),
                       "abnormality mask: ground glass yellow, consolidation red (HU thresholds)")


#: ``pacs.capture.source`` -> the source's class (built with the serve params and body_hu).
SOURCES = {"mask": MaskSource}


def make_source(name: str, serve: ServeParams, body_hu: float) -> ImageSource:
    """The image source ``pacs.capture.source`` names."""
    from covidnet.params import ParamsError

    if name not in SOURCES:
        raise ParamsError(f"pacs.capture.source {name!r} is not one of {sorted(SOURCES)}")
    return SOURCES[name](serve, body_hu)


def render(overlay: Overlay, params: CaptureParams, title: str) -> np.ndarray:
    """A montage ``(H, W, 3)`` uint8: the overlay's slices (at most ``params.tiles``, evenly spaced) with
    the layers blended in, under a banner with :data:`DISCLAIMER`, ``title`` and the legend."""
    from PIL import Image, ImageDraw, ImageFont

    n_slices = overlay.hu.shape[0]
    take = np.unique(np.linspace(0, n_slices - 1, min(params.tiles, n_slices)).round().astype(int))
    cols = int(np.ceil(np.sqrt(len(take))))
    rows = int(np.ceil(len(take) / cols))
    banner, px = 44, params.tile_px
    canvas = Image.new("RGB", (cols * px, rows * px + banner))
    lo, hi = params.window_hu
    for k, i in enumerate(take):
        grey = np.clip((overlay.hu[i] - lo) / (hi - lo), 0.0, 1.0)[..., None] * np.ones(3)
        rgb = grey * 255.0
        for layer in overlay.layers:
            w = params.alpha * np.clip(layer.weight[i], 0.0, 1.0)[..., None]
            rgb = rgb * (1.0 - w) + np.asarray(layer.rgb, float) * w
        tile = Image.fromarray(rgb.round().astype(np.uint8)).resize((px, px), Image.NEAREST)
        canvas.paste(tile, ((k % cols) * px, banner + (k // cols) * px))
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    draw.text((6, 4), f"{DISCLAIMER} - {title}", fill=(255, 255, 255), font=font)
    draw.text((6, 24), overlay.legend, fill=(255, 210, 0), font=font)
    return np.asarray(canvas)


def secondary_capture(ref, pixels: np.ndarray, series_uid: str, sop_uid: str, series_number: int,
                      manufacturer: str, description: str):
    """An RGB Secondary Capture image in the study of ``ref`` (highdicom), labelled not for diagnosis.

    Args:
        ref: a header of the analysed series (patient and study attributes are copied from it).
        pixels: ``(H, W, 3)`` uint8 (:func:`render`).
        series_uid, sop_uid: derived UIDs (:func:`covidnet.pacs.ids.derived_uid`).
        series_number: ``pacs.sc_series_number``.
        manufacturer: ``pacs.manufacturer``.
        description: what the image shows (goes after the disclaimer in ``ImageComments``).
    """
    import highdicom as hd

    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=sop_uid, instance_number=1, manufacturer=manufacturer, patient_orientation=("L", "P"),
        transfer_syntax_uid="1.2.840.10008.1.2.1")
    sc.SeriesDescription = f"COVIDNet overlay - {DISCLAIMER}"
    sc.ImageComments = f"{DISCLAIMER}. {description}"[:10240]
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = description[:1024]
    return sc
