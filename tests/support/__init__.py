"""Helpers the test modules share: tiny cohorts, a model server in a subprocess, monitor data."""

from pathlib import Path

#: The repository root (its params.yaml, dvc.yaml, src/).
REPO = Path(__file__).resolve().parents[2]
