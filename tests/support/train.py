"""Tiny preprocessed cohorts and train settings that train in seconds on a CPU."""

from pathlib import Path

import numpy as np
import pandas as pd

from covidnet.model.builders import ModelParams
from covidnet.train.params import TrainParams, TrainPaths

SHAPE = (1, 8, 24, 24)


PRE = {"depth": 8, "crop": 24, "size": 32, "hu_min": -1024.0, "hu_max": 1024.0}


TINY = ModelParams(builder="cpu", block_config=(1, 1), growth_rate=4, init_features=8, input_shape=SHAPE)


def tiny_cohort(root: Path, n_train=12, n_val=6, seed=0) -> pd.DataFrame:
    """COVID-19 tensors carry a bright lower-posterior patch; others do not."""
    rng = np.random.default_rng(seed)
    rows = []
    (root / "tensors").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            label = "covid" if i % 2 == 0 else "non_covid"
            x = rng.normal(0.3, 0.05, size=SHAPE).astype(np.float32)
            if label == "covid":
                x[0, 4:8, 14:22, 2:10] += 0.4
            sid = f"{split}{i:02d}"
            np.save(root / "tensors" / f"{sid}.npy", x.astype(np.float16))
            rows.append({"scan_id": sid, "patient_id": f"p{sid}", "study_uid": f"1.{i}", "series_uid": f"2.{i}",
                         "hospital": "h", "label": label, "split": split, "scan_date": "2020-03-01",
                         "path": f"tensors/{sid}.npy"})
    index = pd.DataFrame(rows)
    index.to_csv(root / "index.csv", index=False)
    return index


def train_paths(tmp: Path) -> TrainPaths:
    return TrainPaths(preprocessed=tmp / "pre", model=tmp / "model", checkpoints=tmp / "ckpt", report=tmp / "report")


def train_params(**kw) -> TrainParams:
    base = dict(seed=1, epochs=4, batch_size=4, learning_rate=1e-3, patience=10, micro_batch_size=None,
                pos_weight=None, workers=0, precision="fp32", augment=False, device="cpu", schedule="constant",
                lr_floor=0.0, threads=0, shift=0, intensity=0.0, zoom=0.0, weight_decay=0.0)
    return TrainParams(**{**base, **kw})


def qc_csv(index: pd.DataFrame, path: Path) -> pd.DataFrame:
    """preprocess's qc.csv for ``index``: QC values that encode the row number, one failed train scan."""
    rows = []
    for i, r in enumerate(index.itertuples()):
        rows.append({"scan_id": r.scan_id, "study_uid": r.study_uid, "series_uid": r.series_uid,
                     "hospital": r.hospital, "split": r.split, "error": "", "hu_p05": -900.0 + i,
                     "hu_p25": -800.0, "hu_p50": -500.0, "hu_p75": 0.0, "hu_p95": 40.0, "lung_fraction": 0.3,
                     "noise_hu": 10.0 + i, "n_slices": 40, "slice_spacing_mm": 2.5, "manufacturer": "X",
                     "model": "Y", "kernel": "B", "pixel_spacing_mm": 0.7, "slice_thickness_mm": 2.5})
    rows.append({"scan_id": "broken", "study_uid": "9", "series_uid": "9", "hospital": "h", "split": "train",
                 "error": "cannot decode"})
    qc = pd.DataFrame(rows)
    qc.to_csv(path, index=False)
    return qc
