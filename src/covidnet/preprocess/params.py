"""The ``preprocess`` section of ``params.yaml``: the tensor's window, size and type, and the QC windows."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PreprocessParams:
    """The ``preprocess`` section of params.yaml.

    Attributes:
        hu_min: lower end of the HU window; it maps to 0.
        hu_max: upper end of the HU window; it maps to 1.
        depth: D, the number of axial slices of the tensor.
        size: R, the in-plane size each slice is resized to before the crop.
        crop: C, the in-plane size of the centre crop (at most ``size``).
        dtype: ``float16`` or ``float32``, the type of the tensors written.
        body_hu: HU above which a pixel counts as body (QC only).
        lung_hu: ``(low, high)``, the HU window counted as aerated lung inside the body (QC only).
        workers: processes the cohort stage runs in.
        decode_workers: processes that decode one series' compressed slices, this one
            included (1: all in this process). Used where one series is preprocessed at a time
            (serving, the benchmarks); inside the cohort stage's worker processes a series is
            decoded in its own process, since the stage already spreads scans over the cores.
        decode_parallel_mpix: the compressed megapixels (slices x rows x columns / 1e6) a
            series' needed slices must hold for their decoding to be spread over processes;
            below it the hand-over costs more than it saves (a few milliseconds per series).
        decoders: per compressed transfer syntax (``rle``, ``jpeg_ls``, ``jpeg2000``,
            ``jpeg_lossless``), the decoders to use in order of preference
            (:data:`covidnet.data.pixels.DECODERS`): the first installed one is used, the next
            when it cannot decode a file. None, or a syntax left out: pydicom's own choice.
            Every decoder gives the same stored values; they differ in speed. The names are
            checked where pixels are read (:func:`covidnet.data.pixels.check_decoders`), which
            keeps this module free of the decoders' imports.

    ``decode_workers``, ``decode_parallel_mpix`` and ``decoders`` default to the behaviour
    before they existed (one process, pydicom's choice), so the cards of models trained before
    still load; params.yaml sets them.
    """

    hu_min: float
    hu_max: float
    depth: int
    size: int
    crop: int
    dtype: str
    body_hu: float
    lung_hu: tuple[float, float]
    workers: int
    decode_workers: int = 1
    decode_parallel_mpix: float = 0.0
    decoders: dict[str, tuple[str, ...]] | None = None

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
        if self.decode_workers < 1:
            raise ValueError(f"preprocess.decode_workers must be >= 1, got {self.decode_workers}")
        if self.decode_parallel_mpix < 0:
            raise ValueError(f"preprocess.decode_parallel_mpix must be >= 0, got {self.decode_parallel_mpix}")

    @property
    def key(self) -> str:
        """A short hash of the parameters that change a tensor (not ``workers``, not QC)."""
        fields = {k: getattr(self, k) for k in ("hu_min", "hu_max", "depth", "size", "crop", "dtype")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def params_dict(params: PreprocessParams) -> dict:
    """The parameters as a plain dict (logged with models, so serving preprocesses alike)."""
    return asdict(params)
