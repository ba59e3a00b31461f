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

    def varies_every_run(self, output: Path | str) -> bool:
        """Whether a stage output (a path as dvc.lock names it) differs between two identical runs.

        True for the run records: Great Expectations' run times (``validation``), the MLflow run
        id (``train_report/run.json``) and the registry version the model got (``decision``); and
        for each evaluated set's folder under ``evaluation``, whose report names the training run,
        the commit and the time it was written (its figures are all in ``evaluation/metrics.json``,
        which does not vary).
        """
        output = Path(output)
        if output in {self.validation, self.train_report / "run.json", self.decision}:
            return True
        return self.evaluation in output.parents and output != self.evaluation / "metrics.json"
