"""The reference profile ``train`` writes into the model folder (src/covidnet/monitor/reference.py).

Tiny tensors as in tests/test_train.py, plus a ``qc.csv`` as ``preprocess`` writes it (with a
failed scan, a validation scan and identifier columns that must not reach the reference).
"""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from covidnet.model.card import ModelCard
from covidnet.model.inference import score, sigmoid
from covidnet.model.reference import ReferenceProfileError, load_reference, reference_tables
from covidnet.params import load_params, section
from covidnet.preprocess.qc import QC_VALUES
from covidnet.serve.answer import load_qc_reference, qc_reference
from covidnet.serve.params import ServeParams
from covidnet.train.loop import train_model
from support import REPO
from support.train import PRE, TINY, qc_csv, tiny_cohort, train_params, train_paths


def test_train_writes_the_reference_profile(tmp_path):
    index = tiny_cohort(tmp_path / "pre")
    qc_csv(index, tmp_path / "pre" / "qc.csv")
    paths = train_paths(tmp_path)
    r = train_model(index, paths, TINY, train_params(epochs=3), PRE, progress=False)
    card = json.loads((paths.model / "model.json").read_text())
    assert card["qc_reference"] == "reference/qc.csv" and card["score_reference"] == "reference/val_scores.csv"

    ref_qc = pd.read_csv(paths.model / card["qc_reference"])
    train = index[index.split == "train"]
    assert len(ref_qc) == len(train) and set(ref_qc["split"]) == {"train"}  # no val scan, no failed scan
    assert set(QC_VALUES) <= set(ref_qc.columns)
    assert not {"scan_id", "study_uid", "series_uid", "error"} & set(ref_qc.columns)  # no identifiers
    assert sorted(ref_qc["noise_hu"]) == [10.0 + i for i in range(len(train))]  # train rows come first in index

    # The scores are the best model's raw scores on the validation split, in index order.
    val = index[index.split == "val"]
    scores = pd.read_csv(paths.model / card["score_reference"])
    net, _ = ModelCard.load(paths.model)
    x = torch.stack([torch.from_numpy(np.load(tmp_path / "pre" / p).astype(np.float32)) for p in val.path])
    logits, _ = score(net, [x])
    np.testing.assert_allclose(scores["score"], sigmoid(logits), rtol=1e-5, atol=1e-7)
    assert list(scores["label"]) == [1 if lab == "covid" else 0 for lab in val.label]
    assert r.best_epoch >= 1

    ref = load_reference(paths.model)
    assert len(ref.qc) == len(train) and len(ref.scores) == len(val)
    # Serving's QC flags read the same file through the card (min..max: percentiles 0 and 100).
    sp = dataclasses.replace(section(load_params(REPO / "params.yaml"), "serve", ServeParams),
                             qc_percentiles=(0.0, 100.0), qc_margin=0.0)
    got = load_qc_reference(paths.model, ModelCard.from_dict(card), sp, tmp_path / "nowhere" / "qc.csv")
    assert got["source"].startswith(str(paths.model / "reference" / "qc.csv"))
    assert got["ranges"]["noise_hu"] == [10.0, 10.0 + len(train) - 1]


def test_without_qc_csv_the_card_says_so(tmp_path, caplog):
    index = tiny_cohort(tmp_path / "pre")
    paths = train_paths(tmp_path)
    train_model(index, paths, TINY, train_params(epochs=1), PRE, progress=False)
    card = json.loads((paths.model / "model.json").read_text())
    assert card["qc_reference"] is None and card["score_reference"] == "reference/val_scores.csv"
    assert "qc.csv not found" in caplog.text
    with pytest.raises(ReferenceProfileError, match="names no qc_reference"):
        load_reference(paths.model)


def test_reference_tables_rules():
    qc = pd.DataFrame({"scan_id": ["a", "b"], "hu_p05": [1.0, 2.0]})
    with pytest.raises(ReferenceProfileError, match=r"missing column\(s\) \['hu_p25'"):
        reference_tables(qc, ["a"], pd.DataFrame(), None)
    val = pd.DataFrame({"label": ["covid", "non_covid"], "hospital": ["h", "h"]})
    with pytest.raises(ReferenceProfileError, match="3 values for 2 validation scans"):
        reference_tables(None, [], val, np.array([0.1, 0.2, 0.3]))
    _, scores = reference_tables(None, [], val, np.array([0.9, 0.2]))
    assert list(scores["label"]) == [1, 0] and list(scores["score"]) == [0.9, 0.2]
    assert qc_reference(pd.DataFrame({"hu_p05": [1.0, 3.0]}), (0.0, 100.0))["ranges"]["hu_p05"] == [1.0, 3.0]
