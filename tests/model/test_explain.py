"""Saliency maps: shapes and mass, the lesion share against chance, and a moved lesion moving the map."""

import numpy as np
import pytest
import torch

from covidnet.model.builders import ModelParams, build_model
from covidnet.model.explain import (
    ExplainParams,
    anchor_maps,
    baseline_intensity,
    gradcam,
    gradient_x_input,
    lesion_share,
    saliency,
)
from covidnet.params import ParamsError

SHAPE = (1, 8, 24, 24)
WINDOW = (-1024.0, 1024.0)  # the tensors' HU window (the paper's)
NET = ModelParams(builder="cpu", block_config=(2, 2), growth_rate=8, init_features=8, norm="batch", input_shape=SHAPE)


def _params(**kw) -> ExplainParams:
    base = dict(method="gradcam", layer="denseblock1", baseline_hu=-850.0, samples=4, noise=0.05, smooth=3, seed=0,
                rim=0, top_k=2, figure_slices=3)
    return ExplainParams(**{**base, **kw})


def _phantom(rng, centre=None) -> np.ndarray:
    """A dark lung-like volume; with ``centre``, a bright 4 x 6 x 6 lesion there."""
    x = rng.normal(0.2, 0.03, size=SHAPE).astype(np.float32)
    if centre is not None:
        z, y, w = centre
        x[0, z - 2 : z + 2, y - 3 : y + 3, w - 3 : w + 3] += 0.45
    return x


@pytest.fixture(scope="module")
def detector():
    """The CPU network trained until it tells volumes with a lesion anywhere from volumes without."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_model(NET)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(120):
        centres = [(int(rng.integers(2, 6)), int(rng.integers(3, 21)), int(rng.integers(3, 21))) for _ in range(8)]
        xs = np.stack([_phantom(rng, c if i % 2 == 0 else None) for i, c in enumerate(centres)])
        y = torch.tensor([1.0 if i % 2 == 0 else 0.0 for i in range(8)])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(torch.from_numpy(xs)).squeeze(1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


@pytest.mark.parametrize("method", ["gradcam", "gradient_x_input"])
def test_maps_are_in_the_input_grid_non_negative_and_sum_to_one(detector, method):
    x = torch.from_numpy(np.stack([_phantom(np.random.default_rng(i), (4, 12, 12)) for i in range(3)]))
    maps = saliency(detector, x, _params(method=method), WINDOW)
    assert maps.shape == (3, *SHAPE[1:]) and maps.dtype == np.float32
    assert (maps >= 0).all() and np.allclose(maps.reshape(3, -1).sum(axis=1), 1.0, atol=1e-4)
    assert all(p.grad is None for p in detector.parameters()), "explaining must not touch the weights' gradients"


def test_a_moved_lesion_moves_the_map(detector):
    """The same phantom with its lesion on the left, then on the right: the default method's map goes with it.

    Grad-CAM and the gradient alone do not pass this on this detector (their maps stay near the
    middle): the same weakness the demo model's lesion check measures (README, "Explanations").
    """
    method = "gradient_x_input"
    rng = np.random.default_rng(7)
    left, right = (4, 12, 5), (4, 12, 18)
    base = _phantom(rng)
    volumes = []
    for c in (left, right):
        v = base.copy()
        v[0, c[0] - 2 : c[0] + 2, c[1] - 3 : c[1] + 3, c[2] - 3 : c[2] + 3] += 0.45
        volumes.append(v)
    assert torch.sigmoid(detector(torch.from_numpy(np.stack(volumes)))).min() > 0.5, "the detector sees both lesions"
    maps = saliency(detector, torch.from_numpy(np.stack(volumes)), _params(method=method, samples=1, smooth=1), WINDOW)
    w = np.arange(SHAPE[3])
    centre_w = [(m.sum(axis=(0, 1)) * w).sum() for m in maps]
    assert centre_w[1] - centre_w[0] > 2, f"map centres {centre_w} do not follow the lesion"

    def box(m, c):  # the map's mass in a lesion's box
        return m[c[0] - 2 : c[0] + 2, c[1] - 3 : c[1] + 3, c[2] - 3 : c[2] + 3].sum()

    assert box(maps[0], left) > 2 * box(maps[1], left) and box(maps[1], right) > 2 * box(maps[0], right)


def test_lesion_share_against_chance_by_hand():
    labels = np.zeros((1, 2, 2, 4), np.uint8)
    labels[0, :, :, :2] = 1          # 8 lung voxels ...
    labels[0, 0, 0, 0] = 2           # ... one of them a lesion: chance 1/8
    maps = np.zeros((1, 2, 2, 4), np.float32)
    maps[0, 0, 0, 0] = 0.3           # 0.3 in the lesion, 0.3 elsewhere in the lung, 0.4 outside
    maps[0, 1, 1, 1] = 0.3
    maps[0, 1, 1, 3] = 0.4
    share, chance = lesion_share(maps, labels)
    assert share[0] == pytest.approx(0.5) and chance[0] == pytest.approx(1 / 8)
    share, chance = lesion_share(np.zeros_like(maps), np.zeros_like(labels))
    assert np.isnan(share[0]) and np.isnan(chance[0])


def test_the_rim_leaves_the_lung_edge_out_of_both_shares():
    labels = np.zeros((1, 1, 5, 5), np.uint8)
    labels[0, 0, :, :] = 1                    # a 5 x 5 lung: its edge ring is 16 voxels, its core 3 x 3
    labels[0, 0, 0, 0] = labels[0, 0, 2, 2] = 2   # one lesion voxel on the edge, one in the core
    maps = np.zeros_like(labels, dtype=np.float32)
    maps[0, 0, 0, 1] = 0.5                    # half the map on the edge (next to the edge lesion)
    maps[0, 0, 2, 2] = 0.25                   # a quarter on the core lesion, a quarter elsewhere in the core
    maps[0, 0, 1, 1] = 0.25
    share, chance = lesion_share(maps, labels)
    assert share[0] == pytest.approx(0.25) and chance[0] == pytest.approx(2 / 25)
    share, chance = lesion_share(maps, labels, rim=1)
    assert share[0] == pytest.approx(0.5) and chance[0] == pytest.approx(1 / 9)


def test_anchor_maps_and_the_baseline():
    assert baseline_intensity(_params(baseline_hu=-850.0), WINDOW) == pytest.approx(174 / 2048)
    assert baseline_intensity(_params(baseline_hu=-2000.0), WINDOW) == 0.0
    x = torch.from_numpy(np.stack([_phantom(np.random.default_rng(3), (4, 12, 12))]))
    untrained = build_model(NET).eval()
    density = anchor_maps(untrained, x, 0.3)["density"]
    assert density[0][x[0, 0].numpy() <= 0.3].sum() == 0  # only what is denser than the baseline
    assert np.allclose(density, anchor_maps(build_model(NET).eval(), x, 0.3)["density"])  # no model in it


def test_params_and_layer_are_checked(detector):
    with pytest.raises(ParamsError, match="explain.method"):
        _params(method="lime")
    with pytest.raises(ParamsError, match="explain.layer: 'denseblock9'"):
        gradcam(detector, torch.zeros((1, *SHAPE)), "denseblock9")
    with pytest.raises(ParamsError, match="explain.samples"):
        _params(samples=0)
    assert gradient_x_input(detector, torch.zeros((1, *SHAPE)), baseline=0.0, samples=1, noise=0.0, smooth=1,
                            seed=0).sum() == 0  # an input at the baseline explains nothing
    with pytest.raises(ParamsError, match="explain.rim must be >= 0, got -1"):
        _params(rim=-1)
