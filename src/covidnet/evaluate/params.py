"""The ``evaluate`` section of params.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field

from covidnet.evaluate.metrics import CALIBRATORS
from covidnet.params import ParamsError


@dataclass(frozen=True)
class EvaluateParams:
    """The ``evaluate`` section of params.yaml."""

    threshold: float = 0.5                 # score >= threshold calls COVID-19
    bootstrap: int = 10000                 # percentile-bootstrap replications over patients (0: no CIs)
    seed: int = 2021
    ci: float = 0.95
    calibration_bins: int = 10             # equal-width bins of the reliability curve and ECE
    calibrator: str = "none"               # none | temperature | isotonic (fitted on validation only)
    reader_groups: dict[str, str] = field(default_factory=dict)  # reader name -> group name
    tsne_perplexity: float = 30.0          # lowered to (n - 1) / 3 for small sets

    def __post_init__(self) -> None:
        checks = [
            ("threshold", 0.0 <= self.threshold <= 1.0, "must be in [0, 1]"),
            ("bootstrap", self.bootstrap >= 0, "must be >= 0"),
            ("ci", 0.0 < self.ci < 1.0, "must be in (0, 1), e.g. 0.95"),
            ("calibration_bins", self.calibration_bins >= 1, "must be >= 1"),
            ("calibrator", self.calibrator in CALIBRATORS, f"must be one of {list(CALIBRATORS)}"),
            ("tsne_perplexity", self.tsne_perplexity > 0, "must be > 0"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ParamsError(f"evaluate.{name} {rule}, got {getattr(self, name)!r}")
        for reader, group in self.reader_groups.items():
            if not str(reader).strip() or not isinstance(group, str) or not group.strip():
                raise ParamsError(f"evaluate.reader_groups: reader {reader!r} -> group {group!r}: names must be "
                                  "non-empty strings")
