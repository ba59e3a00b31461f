"""Helpers the test modules share: tiny cohorts, a model server in a subprocess, monitor data."""

from pathlib import Path

#: The repository root (its params.yaml, dvc.yaml, src/).
REPO = Path(__file__).resolve().parents[2]


def params_with(tmp: Path, edit) -> Path:
    """The repository's params.yaml changed in place by ``edit(raw_dict)``, written as ``tmp/params.yaml``."""
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(raw)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
