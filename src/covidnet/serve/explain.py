"""Explanations on request: ``parameters.explain`` adds each study's saliency map to its answer.

``"explain": true`` (or ``"map"``) adds ``saliency``: the ``(D, H, W)`` map in the model's input
grid (:mod:`covidnet.model.explain`, the method of the ``explain`` params) as a compact array,
quantized to uint8 of its maximum, zlib-compressed and base64-encoded::

    {"method": "gradcam", "shape": [24, 48, 48], "dtype": "uint8", "max": 1.7e-4,
     "encoding": "zlib+base64", "data": "eJz..."}

(``numpy.frombuffer(zlib.decompress(base64.b64decode(data)), uint8).reshape(shape) / 255 * max``
gives it back). ``"explain": "png"`` also adds ``saliency_png``: a base64 PNG montage of the
slices that hold most of the map, the map over the tensor, labelled NOT FOR DIAGNOSIS.
"""

from __future__ import annotations

import base64
import io
import zlib
from typing import Any

import numpy as np

from covidnet.serve.study import ServeInputError

MODES = ("map", "png")


def request_explain(payload: Any) -> str | None:
    """The ``explain`` request parameter (V2 ``parameters.explain``, V1 ``{"parameters": {...}}``):
    ``"map"``, ``"png"`` or None.

    Raises:
        ServeInputError: a value other than true/false, ``"map"`` or ``"png"``.
    """
    params = getattr(payload, "parameters", None) if not isinstance(payload, dict) else payload.get("parameters")
    if not isinstance(params, dict) or params.get("explain") in (None, False, "false"):
        return None
    value = params["explain"]  # gRPC parameters arrive as plain values (covidnet.serve.oip.from_infer_request)
    if value is True or value == "true":
        return "map"
    if value in MODES:
        return str(value)
    if value in (False, "false", None):
        return None
    raise ServeInputError(f"parameters.explain: {value!r} is not true, false, 'map' or 'png'", rule="request.explain")


def encode_map(saliency: np.ndarray, method: str) -> dict[str, Any]:
    """A ``(D, H, W)`` map as the compact array of the module docstring."""
    top = float(saliency.max()) if saliency.size else 0.0
    q = np.zeros(saliency.shape, np.uint8) if top <= 0 else np.rint(saliency / top * 255).astype(np.uint8)
    return {"method": method, "shape": list(saliency.shape), "dtype": "uint8", "max": top, "encoding": "zlib+base64",
            "data": base64.b64encode(zlib.compress(q.tobytes(), 6)).decode("ascii")}


def decode_map(encoded: dict[str, Any]) -> np.ndarray:
    """:func:`encode_map`'s array back, float32 ``(D, H, W)`` (to 1/255 of its maximum)."""
    q = np.frombuffer(zlib.decompress(base64.b64decode(encoded["data"])), np.uint8).reshape(encoded["shape"])
    return q.astype(np.float32) / 255.0 * float(encoded["max"])


def montage_png(tensor: np.ndarray, saliency: np.ndarray, slices: int) -> str:
    """``slices`` axial slices (those of most map mass) of ``tensor (1, D, H, W)`` with the map over them,
    as a base64 PNG labelled NOT FOR DIAGNOSIS."""
    from matplotlib.figure import Figure

    order = np.sort(np.argsort(saliency.reshape(len(saliency), -1).sum(axis=1))[::-1][:slices])
    fig = Figure(figsize=(2.0 * len(order), 2.3))
    for j, k in enumerate(order):
        ax = fig.add_subplot(1, len(order), j + 1)
        ax.imshow(tensor[0, k], cmap="gray", vmin=0.0, vmax=0.6)
        ax.imshow(np.ma.masked_less_equal(saliency[k], 0), cmap="inferno", alpha=0.55)
        ax.set_title(f"slice {k}", fontsize=7)
        ax.set_axis_off()
    fig.suptitle("COVIDNet saliency - NOT FOR DIAGNOSIS", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")
