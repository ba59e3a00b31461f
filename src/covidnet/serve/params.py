"""The ``serve`` section of params.yaml: the served model, request limits, QC flags, lesion windows."""

from __future__ import annotations

from dataclasses import dataclass

from covidnet.params import ParamsError


@dataclass(frozen=True)
class ServeParams:
    """The ``serve`` section of params.yaml (every value comes from there)."""

    model_name: str
    model_uri: str                        # models:/<name>@<alias>, models:/<name>/<version> or a model folder
    threshold: float | None               # None: the version's promoted threshold, else evaluate.threshold
    max_body_mb: float                    # request body limit (MiB), checked before the body is read
    max_uncompressed_mb: float            # zip bomb guard, per uploaded zip
    max_members: int                      # zip bomb guard, per uploaded zip
    max_studies: int                      # studies answered in one request
    qc_percentiles: tuple[float, float]   # reference range of each QC value in training
    qc_margin: float                      # widen that range by this fraction of its width on each side
    aerated_lung_hu: tuple[float, float]  # aerated lung incl. ground glass (lung mask seed)
    ggo_hu: tuple[float, float]           # ground-glass opacity
    consolidation_hu: tuple[float, float]
    lung_min_component: float             # keep air regions >= this fraction of the largest one
    lung_closing_px: int                  # 2D closing (px, after subsampling) that takes in lesions at the lung edge
    lesion_max_slices: int                # slices read for the lesion fractions (evenly spaced)
    lesion_max_px: int                    # in-plane size they are subsampled to (at most)
    device: str                           # where the network runs: auto (cuda when available), cpu, cuda
    max_request_members: int = 50000      # files in all of one request's zips and S3 prefixes together
    max_request_uncompressed_mb: float = 4096.0  # their uncompressed bytes together (MiB)

    def __post_init__(self) -> None:
        from covidnet.serve.source import ModelSourceError, parse_model_uri

        if not self.model_uri.strip():
            raise ParamsError(f"serve.model_uri must name a models:/ URI or a folder, got {self.model_uri!r}")
        try:
            parse_model_uri(self.model_uri)
        except ModelSourceError as exc:
            raise ParamsError(f"serve.model_uri: {exc}") from None
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ParamsError(f"serve.threshold must be in [0, 1], got {self.threshold}")
        for name in ("max_body_mb", "max_uncompressed_mb", "max_members", "max_studies", "lesion_max_slices",
                     "lesion_max_px", "max_request_members", "max_request_uncompressed_mb"):
            if getattr(self, name) <= 0:
                raise ParamsError(f"serve.{name} must be > 0, got {getattr(self, name)}")
        for name in ("qc_percentiles", "aerated_lung_hu", "ggo_hu", "consolidation_hu"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ParamsError(f"serve.{name} must be [low, high] with low < high, got {[lo, hi]}")
            object.__setattr__(self, name, (float(lo), float(hi)))
        if self.qc_margin < 0 or self.lung_closing_px < 0 or not 0 < self.lung_min_component <= 1:
            raise ParamsError("serve.qc_margin and serve.lung_closing_px must be >= 0, serve.lung_min_component "
                              f"in (0, 1]; got {self.qc_margin}, {self.lung_closing_px}, {self.lung_min_component}")
