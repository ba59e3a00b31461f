"""The training dataset: item and batch shapes, labels, and flips that depend on (seed, epoch, sample) alone."""

import numpy as np
import pandas as pd
import pytest
import torch

from covidnet.train.data import TensorSet, collate
from covidnet.train.params import TrainDataError


def _tensors(root, shape, labels=("covid", "non_covid", "covid")) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    (root / "tensors").mkdir(parents=True)
    rows = []
    for i, label in enumerate(labels):
        np.save(root / "tensors" / f"s{i}.npy", rng.normal(size=shape).astype(np.float16))
        rows.append({"scan_id": f"s{i}", "label": label, "path": f"tensors/s{i}.npy"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("shape", [(1, 8, 24, 24), (1, 4, 16, 16), (1, 1, 8, 8)])
def test_items_and_batches_are_channel_first(tmp_path, shape):
    data = TensorSet(_tensors(tmp_path, shape), tmp_path, shape)
    x, y, i = data[1]
    assert x.shape == shape and x.dtype == torch.float32 and y.shape == () and float(y) == 0.0 and i == 1
    xb, yb, idx = collate([data[2], data[0]])
    assert xb.shape == (2, *shape) and yb.tolist() == [1.0, 1.0] and idx == [2, 0]


def test_unknown_label_is_named(tmp_path):
    with pytest.raises(TrainDataError, match=r"unknown label\(s\) \['maybe'\]"):
        TensorSet(_tensors(tmp_path, (1, 2, 4, 4), labels=("covid", "maybe")), tmp_path, (1, 2, 4, 4))


def test_flips_depend_on_seed_epoch_and_sample_only(tmp_path):
    shape = (1, 2, 4, 4)
    index = _tensors(tmp_path, shape, labels=("covid",) * 3)
    plain = TensorSet(index, tmp_path, shape)
    a, b = TensorSet(index, tmp_path, shape, augment=True, seed=5), TensorSet(index, tmp_path, shape, augment=True, seed=5)
    flipped = 0
    for epoch in range(1, 9):
        a.epoch = b.epoch = epoch
        for i in range(len(index)):
            xa, xp = a[i][0], plain[i][0]
            assert torch.equal(xa, b[i][0])
            assert torch.equal(xa, xp) or torch.equal(xa, xp.flip(-1))
            flipped += not torch.equal(xa, xp)
    assert 0 < flipped < 24
