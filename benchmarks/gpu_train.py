"""GPU check of the real training stage in the paper profile (for a lent accelerator).

Runs :func:`covidnet.train.loop.train_model` — the function ``covidnet train`` and the KFP train
component call — with the ``paper`` profile of params.yaml (DenseNet-264, ``(1, 64, 384, 384)``,
global batch 8, bf16 autocast, ``train.device: auto``) on a small **synthetic** tensor set:
random volumes in [0, 1] whose COVID-19 half carries a brighter sphere, so the loss can fall.
No MLflow (tracking off), no DICOM: this checks the training loop on the GPU, not the data.

Sections, each timed, recorded in the JSON even when one fails (e.g. out of memory, which is
retried with half the micro-batch down to 1):

* ``warmup``: one epoch first, so the timed run below does not carry CUDA and cuDNN start-up
  (``cudnn.benchmark`` stays as train.py leaves it: off);
* ``train``: a fresh run of ``--epochs`` epochs; seconds per epoch, volumes/s, peak GPU memory, the loss curve
  and validation AUC per epoch (on random volumes: a smoke figure, not a result);
* ``resume``: the same call again with ``resume="always"`` (what a restarted task does): it must
  load the last checkpoint on the GPU (``resumed_from`` = ``--epochs``) and train no more.

Anchor: ``volumes_per_s`` is set against a bare bf16 training step of the same network in the
same process (no DataLoader, no validation, no checkpointing): ``loop_over_bare`` is the
fraction of the bare speed the real loop reaches. 3D convolutions on CUDA are
non-deterministic, so GPU runs agree only within floating-point noise.

Prints JSON. Usage: ``python benchmarks/gpu_train.py [--n-train 16] [--n-val 8] [--epochs 2]``;
``--dry-run`` uses the ``tiny`` profile on the CPU (a check that the script works).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np


def write_tensors(root: Path, shape: tuple[int, ...], n_train: int, n_val: int, seed: int) -> "Any":
    """Random ``shape`` float16 volumes; COVID-19 ones hold a sphere of +0.3 (synthetic)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    (root / "tensors").mkdir(parents=True)
    _, d, h, w = shape
    zz, yy, xx = np.ogrid[:d, :h, :w]
    rows = []
    for i in range(n_train + n_val):
        label = "covid" if i % 2 else "non_covid"
        x = rng.random(shape, dtype=np.float32) * 0.5
        if label == "covid":
            c = rng.integers([d // 4, h // 4, w // 4], [3 * d // 4, 3 * h // 4, 3 * w // 4])
            x[0][(zz - c[0]) ** 2 + ((yy - c[1]) ** 2 + (xx - c[2]) ** 2) / 4 < (d // 6) ** 2] += 0.3
        path = f"tensors/s{i:03d}.npy"
        np.save(root / path, x.astype(np.float16))
        rows.append({"scan_id": f"s{i:03d}", "patient_id": f"p{i:03d}", "label": label,
                     "split": "train" if i < n_train else "val", "path": path})
    return pd.DataFrame(rows)


def _peak_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def bare_step_rate(model_params, shape: tuple[int, ...], batch: int, iters: int = 3) -> dict[str, Any]:
    """Volumes/s of a bare bf16 Adam step of the same network (the anchor)."""
    import torch

    from covidnet.model.builders import build_model

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    model = build_model(model_params).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, *shape, device=device)
    y = torch.randint(0, 2, (batch, 1), device=device).float()
    times = []
    for i in range(iters + 1):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        if i:  # the first step autotunes
            times.append(time.perf_counter() - t0)
    del model, opt, x
    if cuda:
        torch.cuda.empty_cache()
    return {"median_s": round(float(np.median(times)), 4), "volumes_per_s": round(batch / float(np.median(times)), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    ap.add_argument("--n-train", type=int, default=16, help="training volumes (default: %(default)s)")
    ap.add_argument("--n-val", type=int, default=8, help="validation volumes (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the first run (default: %(default)s)")
    ap.add_argument("--dry-run", action="store_true", help="the tiny profile on the CPU, in seconds")
    args = ap.parse_args()

    import torch

    from covidnet.model.builders import ModelParams
    from covidnet.params import load_params, section
    from covidnet.preprocess.params import PreprocessParams, params_dict
    from covidnet.train.loop import train_model
    from covidnet.train.params import TrainParams, TrainPaths

    params = load_params(args.params, profile="tiny" if args.dry_run else "paper")
    tp = replace(section(params, "train", TrainParams), epochs=args.epochs, patience=args.epochs + 1,
                 workers=0 if args.dry_run else 4)
    mp = section(params, "model", ModelParams)
    pre = params_dict(section(params, "preprocess", PreprocessParams))
    shape = (1, int(pre["depth"]), int(pre["crop"]), int(pre["crop"]))
    out: dict[str, Any] = {
        "synthetic": True, "profile": params["profile"],
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__, "input": [None, *shape], "batch_size": tp.batch_size,
        "precision": tp.precision, "n_train": args.n_train, "n_val": args.n_val, "sections": {},
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="covidnet-gpu-train-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        index = write_tensors(root / "pre", shape, args.n_train, args.n_val, seed=0)
        out["write_tensors_s"] = round(time.perf_counter() - t0, 1)
        paths = TrainPaths(preprocessed=root / "pre", model=root / "model", checkpoints=root / "ckpt",
                           report=root / "report")
        micro = tp.micro_batch_size or tp.batch_size
        t0 = time.perf_counter()
        try:
            train_model(index, replace(paths, checkpoints=root / "ckpt-warmup", model=root / "model-warmup",
                                       report=root / "report-warmup"),
                        mp, replace(tp, epochs=1, micro_batch_size=micro), pre, resume="never", mlflow_params=None,
                        progress=False)
            out["sections"]["warmup"] = {"seconds": round(time.perf_counter() - t0, 1)}
        except Exception as exc:  # noqa: BLE001 - recorded; the timed run below tells the rest
            out["sections"]["warmup"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        result = None
        while result is None:
            tp_try = replace(tp, micro_batch_size=micro)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            try:
                result = train_model(index, paths, mp, tp_try, pre, resume="never", mlflow_params=None,
                                     progress=False)
            except torch.OutOfMemoryError as exc:
                out["sections"].setdefault("oom", []).append({"micro_batch_size": micro, "error": str(exc)[:300]})
                torch.cuda.empty_cache()
                if micro == 1:
                    out["sections"]["train"] = {"error": "out of memory at micro-batch 1"}
                    break
                micro = max(1, micro // 2)
                continue
            except Exception as exc:  # noqa: BLE001 - recorded in the JSON, the point of the script
                out["sections"]["train"] = {"error": f"{type(exc).__name__}: {exc}"[:500],
                                            "where": traceback.format_exc(limit=-3)[-800:]}
                break
            secs = time.perf_counter() - t0
            out["sections"]["train"] = {
                "micro_batch_size": micro, "seconds": round(secs, 1), "epochs_run": result.epochs_run,
                "seconds_per_epoch": round(secs / max(1, result.epochs_run), 1),
                "volumes_per_s": round(args.n_train * result.epochs_run / secs, 2), "peak_gib": _peak_gib(),
                "best_epoch": result.best_epoch,
                "curve": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()}
                          for h in result.history],
            }
        if result is not None:
            t0 = time.perf_counter()
            try:
                again = train_model(index, paths, mp, replace(tp, micro_batch_size=micro), pre, resume="always",
                                    mlflow_params=None, progress=False)
                out["sections"]["resume"] = {"resumed_from": again.resumed_from, "epochs_run": again.epochs_run,
                                             "ok": again.resumed_from == result.epochs_run and
                                             again.best_epoch == result.best_epoch,
                                             "seconds": round(time.perf_counter() - t0, 1)}
            except Exception as exc:  # noqa: BLE001
                out["sections"]["resume"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            try:
                bare = bare_step_rate(mp, shape, micro)
                out["sections"]["bare_step"] = {**bare, "batch": micro}
                loop = out["sections"]["train"]["volumes_per_s"]
                out["loop_over_bare"] = round(loop / bare["volumes_per_s"], 3)
            except Exception as exc:  # noqa: BLE001
                out["sections"]["bare_step"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    out["total_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
