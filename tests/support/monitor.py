"""A model folder with a reference profile, and prediction-log rows drawn around it."""

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd

from covidnet.monitor.predlog import Prediction, hash_id
from covidnet.preprocess.qc import QC_VALUES

KEY = b"0123456789abcdef0123456789abcdef"


def qc_values(rng, n: int, noise: float = 15.0, spacing: float = 2.5) -> dict[str, np.ndarray]:
    return {"hu_p05": rng.normal(-900, 20, n), "hu_p25": rng.normal(-800, 20, n), "hu_p50": rng.normal(-500, 40, n),
            "hu_p75": rng.normal(0, 20, n), "hu_p95": rng.normal(60, 10, n), "lung_fraction": rng.uniform(0.2, 0.4, n),
            "noise_hu": rng.normal(noise, 2.0, n), "n_slices": np.full(n, 96.0), "slice_spacing_mm": np.full(n, spacing)}


def model_folder(root: Path, seed: int = 0, n: int = 300) -> Path:
    """A model folder as `train` writes it: weights, a card naming reference/qc.csv and reference/val_scores.csv."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "weights.pt").write_bytes(rng.bytes(64))  # the version is the weights' hash; content irrelevant here
    (root / "reference").mkdir()
    pd.DataFrame({"hospital": "h1", "split": "train", **qc_values(rng, n)}).to_csv(root / "reference/qc.csv", index=False)
    pd.DataFrame({"label": rng.integers(0, 2, n), "score": rng.beta(2, 2, n), "hospital": "h1"}).to_csv(
        root / "reference/val_scores.csv", index=False)
    (root / "model.json").write_text(json.dumps({"config": {}, "qc_reference": "reference/qc.csv",
                                                 "score_reference": "reference/val_scores.csv"}))
    return root


def rows(version: str, n: int, start: dt.datetime, seed: int, noise: float = 15.0, hospital: str = "h1",
         run_id: str | None = None) -> list[Prediction]:
    rng = np.random.default_rng(seed)
    qc = qc_values(rng, n, noise=noise)
    scores = rng.beta(2, 2, n)
    return [Prediction(request_id=f"{seed}-{i}", time=start + dt.timedelta(minutes=i), model_name="covidnet",
                       model_version=version, mlflow_run_id=run_id, score=float(scores[i]),
                       probability=float(scores[i]), threshold=0.5,
                       decision="covid19" if scores[i] >= 0.5 else "other_pneumonia", hospital=hospital,
                       patient_hash=hash_id(KEY, "patient", f"{seed}-{i}"), study_hash=None,
                       qc={c: float(qc[c][i]) for c in QC_VALUES}) for i in range(n)]
