"""The lesion check of evaluate: maps of a trained tiny model against known lesion masks, anchors, figure, file."""

import numpy as np
import pandas as pd
import pytest
import torch

from covidnet.evaluate.saliency import MAPS_FILE, plot_top, set_saliency, write_maps
from covidnet.model.explain import ExplainParams
from covidnet.train.loop import train_model
from support.train import PRE, TINY, tiny_cohort, train_params, train_paths

PATCH = (slice(4, 8), slice(14, 22), slice(2, 10))  # where tiny_cohort plants COVID-19's bright patch
WINDOW = (PRE["hu_min"], PRE["hu_max"])


def _explain(**kw) -> ExplainParams:
    base = dict(method="gradient_x_input", layer="denseblock1", baseline_hu=-850.0, samples=1, noise=0.0, smooth=1,
                seed=0, rim=0, top_k=2, figure_slices=2)
    return ExplainParams(**{**base, **kw})


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A tiny model trained on tiny_cohort, its val predictions, and the patch as each COVID-19 scan's lesion mask."""
    from covidnet.model.card import ModelCard

    tmp = tmp_path_factory.mktemp("saliency")
    index = tiny_cohort(tmp / "pre", n_train=16, n_val=8)
    train_model(index, train_paths(tmp), TINY, train_params(epochs=6, learning_rate=3e-3), PRE, progress=False)
    model, _ = ModelCard.load(tmp / "model")
    val = index[index.split == "val"].reset_index(drop=True)

    def load(scan_id):
        return np.load(tmp / "pre" / "tensors" / f"{scan_id}.npy").astype(np.float32)

    with torch.no_grad():
        scores = torch.sigmoid(model(torch.from_numpy(np.stack([load(s) for s in val.scan_id])))).squeeze(1).numpy()
    preds = pd.DataFrame({"scan_id": val.scan_id, "series_uid": val.series_uid,
                          "label": (val.label == "covid").astype(int), "score": scores})
    lesions = tmp / "lesions"
    lesions.mkdir()
    for r in val.itertuples():
        truth = np.ones(load(r.scan_id).shape[1:], np.uint8)  # every voxel lung ...
        if r.label == "covid":
            truth[PATCH] = 2                                      # ... the planted patch a lesion
        np.save(lesions / f"{r.series_uid}.npy", truth)
    return model, load, preds, lesions, tmp


def test_maps_of_every_scan_and_the_check_on_true_positives(scored):
    model, load, preds, lesions, _ = scored
    tp = preds[(preds.label == 1) & (preds.score >= 0.5)]
    assert len(tp) >= 2, f"the tiny model should find the patch: scores {preds.score.round(2).tolist()}"
    summary, maps = set_saliency(model, load, preds, lesions, _explain(), WINDOW, threshold=0.5, reps=200, seed=0,
                                 level=0.95)
    assert set(maps) == set(preds.scan_id) and all(m.shape == (8, 24, 24) for m in maps.values())
    assert summary["n_true_positives"] == summary["n_checked"] == len(tp)
    chance = 4 * 8 * 8 / (8 * 24 * 24)
    assert summary["chance"]["value"] == pytest.approx(chance)
    e = summary["enrichment"]
    assert e["ci"][0] <= e["value"] <= e["ci"][1]
    assert e["value"] > 1.5, summary  # the patch is what the model learned
    anchors = summary["anchors"]
    assert set(anchors) == {"density", "gradient"} and all("enrichment" in a for a in anchors.values())
    assert anchors["density"]["enrichment"]["value"] > 1.5  # the patch is denser than the rest


def test_no_masks_no_check_and_a_real_cohort_says_so(scored, tmp_path):
    model, load, preds, _, _ = scored
    summary, maps = set_saliency(model, load, preds, None, _explain(method="gradcam"), WINDOW, threshold=0.5,
                                 reps=50, seed=0, level=0.95)
    assert "enrichment" not in summary and "real cohort" in summary["reason"] and len(maps) == len(preds)
    summary, _ = set_saliency(model, load, preds, tmp_path, _explain(), WINDOW, threshold=0.5, reps=50, seed=0,
                              level=0.95)
    assert "no true positive with a lesion mask" in summary["reason"]


def test_maps_file_and_top_k_figure(scored, tmp_path):
    model, load, preds, lesions, _ = scored
    _, maps = set_saliency(model, load, preds, lesions, _explain(), WINDOW, threshold=0.5, reps=50, seed=0, level=0.95)
    path = write_maps(tmp_path / MAPS_FILE, maps)
    with np.load(path) as stored:
        assert set(stored.files) == set(maps)
        first = next(iter(maps))
        assert stored[first].dtype == np.float16 and np.allclose(stored[first], maps[first], atol=1e-3)
    png = plot_top(tmp_path, load, maps, preds, lesions, threshold=0.5, top_k=2, slices=2, synthetic=True)
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_top(tmp_path, load, maps, preds.assign(score=0.0), lesions, threshold=0.5, top_k=2, slices=2,
                    synthetic=True) is None  # no true positive: no figure
