"""The named networks: the paper's DenseNet-264, the authors' released variant, a CPU-sized one.

Like torchvision's ``densenet121()``: thin builders that differ only in their configuration,
and the ``model`` section of params.yaml (:class:`ModelParams`: a builder and overrides).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from covidnet.model.network import COVIDNet, validate_config
from covidnet.params import ParamsError

#: The builders' names, as ``model.builder`` takes them.
BUILDERS = ("paper", "released", "cpu")

_CONFIGS: dict[str, dict[str, Any]] = {
    "paper": dict(block_config=(6, 12, 64, 48), growth_rate=32, bn_size=4, compression=0.5, init_features=64,
                  stem="strided", order="pre", final_transition=False, norm="instance", groups=4,
                  norm_affine=True, dropout=0.0, input_shape=(1, 64, 384, 384)),
    "released": dict(block_config=(6, 12, 64, 48), growth_rate=48, bn_size=1, compression=1.0, init_features=64,
                     stem="inplane", order="post", final_transition=True, norm="group", groups=4,
                     norm_affine=True, dropout=0.0, input_shape=(1, 64, 224, 224)),
    "cpu": dict(block_config=(3, 3, 3), growth_rate=12, bn_size=4, compression=0.5, init_features=24,
                stem="strided", order="pre", final_transition=False, norm="instance", groups=4,
                norm_affine=True, dropout=0.0, input_shape=(1, 32, 96, 96)),
}


def _build(name: str, overrides: dict[str, Any]) -> COVIDNet:
    return COVIDNet(**{**_CONFIGS[name], **overrides})


def covidnet_paper(**overrides: Any) -> COVIDNet:
    """The paper's DenseNet-264 (instance norm), native input ``(1, 64, 384, 384)``.

    Args:
        overrides: any :class:`COVIDNet` argument, replacing the paper's value.
    """
    return _build("paper", overrides)


def covidnet_released(**overrides: Any) -> COVIDNet:
    """The authors' released TensorFlow variant (group norm, growth 48, no compression),
    native input ``(1, 64, 224, 224)``.

    Args:
        overrides: any :class:`COVIDNet` argument, replacing the released value.
    """
    return _build("released", overrides)


def covidnet_cpu(**overrides: Any) -> COVIDNet:
    """A narrow DenseNet (blocks ``(3, 3, 3)``, growth 12) for CPU runs, native input
    ``(1, 32, 96, 96)``.

    Args:
        overrides: any :class:`COVIDNet` argument, replacing the CPU value.
    """
    return _build("cpu", overrides)


_BUILDERS: dict[str, Callable[..., COVIDNet]] = {
    "paper": covidnet_paper, "released": covidnet_released, "cpu": covidnet_cpu,
}


@dataclass(frozen=True)
class ModelParams:
    """The ``model`` section of params.yaml: a builder and optional overrides.

    ``None`` keeps the builder's value; any other value replaces it (see :class:`COVIDNet`
    for what each setting means).
    """

    builder: str = "cpu"
    block_config: tuple[int, ...] | None = None
    growth_rate: int | None = None
    bn_size: int | None = None
    compression: float | None = None
    init_features: int | None = None
    stem: str | None = None
    order: str | None = None
    final_transition: bool | None = None
    norm: str | None = None
    groups: int | None = None
    norm_affine: bool | None = None
    dropout: float | None = None
    memory_efficient: bool | None = None
    channels_last: bool | None = None
    input_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.builder not in BUILDERS:
            raise ParamsError(f"model.builder: {self.builder!r} is not one of {', '.join(BUILDERS)}")
        try:
            validate_config({**_CONFIGS[self.builder], **self.overrides()})
        except ValueError as exc:  # ParamsError: section() then names the params file too
            raise ParamsError(str(exc)) from None

    def overrides(self) -> dict[str, Any]:
        """The settings given (not ``None``), as :class:`COVIDNet` keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "builder" and getattr(self, f.name) is not None}


def build(name: str, **overrides: Any) -> COVIDNet:
    """The network of builder ``name`` (one of :data:`BUILDERS`) with ``overrides``."""
    if name not in _BUILDERS:
        raise ValueError(f"builder {name!r} is not one of {', '.join(BUILDERS)}")
    return _BUILDERS[name](**overrides)


def build_model(params: ModelParams) -> COVIDNet:
    """Build the network that ``params`` describes (weights from torch's global generator)."""
    return _BUILDERS[params.builder](**params.overrides())
