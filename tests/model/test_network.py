import json
import re

import pytest
import torch

from covidnet.model.builders import ModelParams, build_model, covidnet_cpu, covidnet_paper, covidnet_released
from covidnet.model.network import COVIDNet
from covidnet.model.summary import count_flops, format_summary, model_summary
from covidnet.params import ParamsError, load_params, section
from support import REPO

# Small overrides so every builder runs in well under a second; the architecture choices
# that tell the builders apart (stem, order, norm, compression, final transition) are kept.
SMALL = dict(block_config=(1, 2), growth_rate=4, init_features=8)


@pytest.mark.parametrize("builder, overrides, shape, features", [
    (covidnet_cpu, {}, (2, 1, 32, 96, 96), 69),
    (covidnet_cpu, SMALL, (2, 1, 8, 24, 24), 6 + 8),
    (covidnet_paper, SMALL, (2, 1, 8, 24, 24), 6 + 8),
    (covidnet_released, SMALL, (2, 1, 8, 24, 24), 8 + 3 * 4),
    (covidnet_released, {**SMALL, "norm": "batch"}, (2, 1, 4, 16, 20), 8 + 3 * 4),
    (covidnet_cpu, {**SMALL, "norm": "group", "groups": 2}, (1, 1, 8, 24, 24), 6 + 8),
])
def test_shapes(builder, overrides, shape, features):
    torch.manual_seed(0)
    model = builder(**overrides).eval()
    x = torch.rand(shape)
    with torch.no_grad():
        y = model(x)
        f = model.forward_features(x)
    assert y.shape == (shape[0], 1)
    assert f.shape == (shape[0], features) == (shape[0], model.num_features)
    assert torch.isfinite(y).all()
    assert torch.allclose(model.classifier(f), y)


def test_full_builders_on_meta_device():
    rows = {r["builder"]: r for r in model_summary()}
    assert rows["paper"]["input_shape"] == [1, 64, 384, 384]
    assert rows["released"]["input_shape"] == [1, 64, 224, 224]
    assert rows["cpu"]["input_shape"] == [1, 32, 96, 96]
    # DESIGN.md §9: about 0.46 TFLOP per paper-size volume
    assert 0.44e12 < rows["paper"]["flops"] < 0.48e12
    # MONAI's DenseNet264 (3D, instance norm without affine) has 39,850,049 parameters
    with torch.device("meta"):
        plain = covidnet_paper(norm_affine=False)
    assert sum(p.numel() for p in plain.parameters()) == 39_850_049
    assert rows["paper"]["num_features"] == 2688 and rows["released"]["num_features"] == 6304
    text = format_summary(list(rows.values()))
    assert "paper" in text and "released" in text and "cpu" in text


def test_released_differs_as_documented():
    with torch.device("meta"):
        m = covidnet_released()
    cfg = m.config
    assert (cfg["norm"], cfg["groups"], cfg["growth_rate"], cfg["bn_size"], cfg["compression"]) == \
        ("group", 4, 48, 1, 1.0)
    assert cfg["final_transition"] and cfg["order"] == "post" and cfg["stem"] == "inplane"
    assert m.features.conv0.stride == (1, 2, 2) and m.features.pool0.stride == (1, 2, 2)
    assert "transition4" in dict(m.features.named_children())
    assert "norm5" not in dict(m.features.named_children())
    layer = m.features.denseblock1.denselayer1
    assert isinstance(layer.norm1, torch.nn.GroupNorm) and layer.norm1.num_channels == 48  # after conv1
    assert layer.conv1.out_channels == 48


def test_config_roundtrip_json():
    model = covidnet_cpu(**SMALL, dropout=0.1)
    cfg = json.loads(json.dumps(model.config))
    assert cfg == model.config
    again = COVIDNet(**cfg)
    assert again.config == model.config
    assert [k for k in again.state_dict()] == [k for k in model.state_dict()]
    assert model.input_shape == (1, 32, 96, 96)


def test_checkpoint_keys_are_stable():
    """Module names are the checkpoint format: renaming any of these breaks saved models."""
    keys = set(covidnet_cpu().state_dict())
    for key in [
        "features.conv0.weight",
        "features.norm0.weight",
        "features.denseblock1.denselayer1.norm1.weight",
        "features.denseblock1.denselayer1.conv1.weight",
        "features.denseblock1.denselayer1.norm2.bias",
        "features.denseblock1.denselayer1.conv2.weight",
        "features.denseblock3.denselayer3.conv2.weight",
        "features.transition1.norm.weight",
        "features.transition1.conv.weight",
        "features.transition2.conv.weight",
        "features.norm5.weight",
        "classifier.weight",
        "classifier.bias",
    ]:
        assert key in keys, key
    bn = set(covidnet_cpu(norm="batch").state_dict())
    assert "features.denseblock1.denselayer1.norm1.running_mean" in bn


def _monai_to_ours(state: dict) -> dict:
    """MONAI DenseNet keys -> ours: drop the ``layers.`` level inside dense layers, rename the head."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^(features\.denseblock\d+\.denselayer\d+)\.layers\.", r"\1.", key)
        key = re.sub(r"^class_layers\.out\.", "classifier.", key)
        out[key] = value
    return out


@pytest.mark.slow
def test_paper_matches_monai_densenet264():
    from monai.networks.nets import DenseNet264

    torch.manual_seed(0)
    ref = DenseNet264(spatial_dims=3, in_channels=1, out_channels=1, norm="instance").eval()
    ours = covidnet_paper(norm_affine=False).eval()
    mapped = _monai_to_ours(ref.state_dict())
    result = ours.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(mapped) == set(ours.state_dict())
    # 32 x 64 x 64 leaves 1 x 2 x 2 voxels for the last block, so the final instance norm
    # sees more than one value and the logits depend on the input
    x = torch.rand(2, 1, 32, 64, 64)
    with torch.no_grad():
        expected = ref(x)
        got = ours(x)
    assert got.shape == expected.shape == (2, 1)
    assert (expected[0] - expected[1]).abs().item() > 1e-3  # not a constant output
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_memory_efficient_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = covidnet_cpu(**SMALL, norm="batch")
    torch.manual_seed(0)
    efficient = covidnet_cpu(**SMALL, norm="batch", memory_efficient=True)
    efficient.load_state_dict(plain.state_dict())
    x = torch.rand(2, 1, 8, 24, 24)
    outs = []
    for model in (plain, efficient):
        model.train()
        xi = x.clone().requires_grad_(True)
        y = model(xi)
        y.sum().backward()
        outs.append((y.detach(), xi.grad, {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])
    for name, grad in outs[0][2].items():
        torch.testing.assert_close(grad, outs[1][2][name], msg=name)


def test_memory_efficient_checkpoints_only_with_grad(monkeypatch):
    import torch.utils.checkpoint as cp

    calls = []
    real = cp.checkpoint
    monkeypatch.setattr(cp, "checkpoint", lambda *a, **k: calls.append(k) or real(*a, **k))
    model = covidnet_cpu(**SMALL, memory_efficient=True)
    with torch.no_grad():
        model(torch.rand(1, 1, 8, 24, 24))
    assert calls == []
    model(torch.rand(1, 1, 8, 24, 24)).sum().backward()
    assert len(calls) == 3 and all(k == {"use_reentrant": False} for k in calls)


def test_channels_last_same_outputs():
    torch.manual_seed(0)
    a = covidnet_released(**SMALL).eval()
    b = covidnet_released(**SMALL, channels_last=True).eval()
    b.load_state_dict(a.state_dict())
    assert b.features.conv0.weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = torch.rand(2, 1, 8, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-4)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = covidnet_cpu(**SMALL, dropout=0.5)
    x = torch.rand(2, 1, 8, 24, 24)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model.forward_features(x), model.forward_features(x))
        model.eval()
        assert torch.equal(model(x), model(x))


def test_build_model_from_tiny_profile():
    params = section(load_params(REPO / "params.yaml", profile="tiny"), "model", ModelParams)
    torch.manual_seed(0)
    model = build_model(params)
    assert model.config["block_config"] == [1, 1]
    assert model.input_shape == (1, 8, 24, 24)
    y = model(torch.rand(2, *model.input_shape))
    assert y.shape == (2, 1)
    default = section(load_params(REPO / "params.yaml"), "model", ModelParams)
    assert default.builder == "cpu"
    assert default.overrides()["input_shape"] == (1, 24, 48, 48)  # the default profile's sizes (params.yaml comments)
    paper = section(load_params(REPO / "params.yaml", profile="paper"), "model", ModelParams)
    assert paper.builder == "paper"


def test_seeded_builds_are_identical():
    torch.manual_seed(3)
    a = covidnet_cpu(**SMALL)
    torch.manual_seed(3)
    b = covidnet_cpu(**SMALL)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k


@pytest.mark.parametrize("overrides, message", [
    ({"norm": "layer"}, r"model.norm: 'layer' is not one of instance, group, batch"),
    ({"builder": "vgg"}, r"model.builder: 'vgg' is not one of paper, released, cpu"),
    ({"compression": 0.0}, r"model.compression: 0.0 must be in \(0, 1\]"),
    ({"block_config": [3, 0]}, r"model.block_config: \(3, 0\) must be a non-empty list"),
    ({"growth_rate": 0}, r"model.growth_rate: 0 must be an integer >= 1"),
    ({"dropout": 1.0}, r"model.dropout: 1.0 must be in \[0, 1\)"),
    ({"stem": "wide"}, r"model.stem: 'wide' is not one of strided, inplane"),
    ({"order": "mid"}, r"model.order: 'mid' is not one of pre, post"),
    ({"input_shape": [8, 24, 24]}, r"model.input_shape: \(8, 24, 24\) must be \(1, D, H, W\)"),
    ({"growth_rate": "x"}, r"model.growth_rate: expected an integer, got 'x'"),
    ({"norm": "group", "groups": 5}, r"model.groups: 5 does not divide the 32 channels of features.norm0"),
])
def test_bad_params_name_field_and_value(overrides, message):
    params = load_params(REPO / "params.yaml")
    params["model"] = {**params["model"], **overrides}
    with pytest.raises(ParamsError, match=r"params.yaml: " + message):
        section(params, "model", ModelParams)


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"model.norm: 'layer' is not one of instance, group, batch"):
        covidnet_cpu(norm="layer")
    with pytest.raises(ValueError, match=r"model.groups: 5 does not divide the 24 channels of features.norm0"):
        covidnet_cpu(norm="group", groups=5)


def test_count_flops_small_model_on_cpu():
    model = covidnet_cpu(**SMALL)
    flops = count_flops(model, (1, 8, 24, 24))
    # stem conv alone: 2 * 7^3 * 8 output channels * (4 * 12 * 12) voxels
    assert flops > 2 * 343 * 8 * 4 * 12 * 12
    with torch.device("meta"):
        meta = covidnet_cpu(**SMALL)
    assert count_flops(meta, (1, 8, 24, 24)) == flops


def test_group_norm_channel_plan_matches_built_model():
    from covidnet.model.network import _normed_channels

    for builder in (covidnet_released, covidnet_paper):
        model = builder(**SMALL, norm="group", groups=2)
        built = [(n, m.num_channels) for n, m in model.named_modules() if isinstance(m, torch.nn.GroupNorm)]
        assert _normed_channels(model.config) == built


@pytest.mark.parametrize("channels_last", [False, True])
def test_instance_norm_fast_path_equals_torch_instance_norm(channels_last, monkeypatch):
    """Without autograd the affine instance norm runs as a group norm of C groups: same numbers,
    same state-dict keys as torch.nn.InstanceNorm3d; with autograd on, torch's own path."""
    from covidnet.model.network import _InstanceNorm3d

    torch.manual_seed(0)
    ours = _InstanceNorm3d(6, affine=True)
    torch.nn.init.normal_(ours.weight)
    torch.nn.init.normal_(ours.bias)
    ref = torch.nn.InstanceNorm3d(6, affine=True)
    ref.load_state_dict(ours.state_dict())
    assert set(ours.state_dict()) == set(ref.state_dict()) == {"weight", "bias"}
    x = torch.randn(3, 6, 4, 5, 7) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    calls = []
    group_norm = torch.nn.functional.group_norm
    monkeypatch.setattr(torch.nn.functional, "group_norm", lambda *a, **k: calls.append(1) or group_norm(*a, **k))
    with torch.no_grad():
        fast = ours(x)
    assert calls == [1]
    torch.testing.assert_close(fast, ref(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fast, torch.nn.functional.instance_norm(x), atol=1e-3)  # affine applied
    y = ours(x.clone().requires_grad_())
    assert calls == [1]  # autograd on: torch's instance norm
    torch.testing.assert_close(y.detach(), fast, rtol=1e-5, atol=1e-5)
