"""Where each stage reads and writes: the ``paths`` section of params.yaml, in one type.

A path is written once, in ``params.yaml``; ``dvc.yaml`` interpolates the same keys, the
CLI's ``--out``-style flags override single fields, and the Kubeflow components map their
artifacts onto fields with :meth:`Paths.from_params`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidnet.params import section


@dataclass(frozen=True)
class Paths:
    """The ``paths`` section of params.yaml."""

    dicom: Path
    manifest: Path
    index: Path
    validation: Path
    cohort: Path
    flow: Path
    split: Path
    preprocessed: Path
    metrics: Path
    model: Path
    checkpoints: Path
    train_report: Path
    calibrator: Path
    evaluation: Path
    headline: Path
    decision: Path
    predlog: Path
    monitor: Path

    @classmethod
    def from_params(cls, params: dict[str, Any], **overrides: Path | str | None) -> "Paths":
        """Paths from params, with any non-None keyword overriding its field."""
        base = section(params, "paths", cls)
        return dataclasses.replace(base, **{k: Path(v) for k, v in overrides.items() if v is not None})

    def run_records(self) -> frozenset[Path]:
        """The outputs that record a run, not its result, so they differ between identical runs:
        Great Expectations' run times (``validation``), the MLflow run id (``train_report/run.json``)
        and the registry version the model got (``decision``)."""
        return frozenset({self.validation, self.train_report / "run.json", self.decision})
