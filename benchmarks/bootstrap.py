"""Vectorised bootstrap of every evaluate figure vs a plain loop of scikit-learn calls; prints JSON.

Both run in the same process on the same **synthetic** predictions (n = 522 by default,
scores rounded to 3 decimals so AUC has ties). The loop resamples patients and calls
scikit-learn's metrics per replicate; it runs ``--loop-reps`` replicates and its time is
scaled to ``--reps`` (said in the JSON). The CIs of the two must agree within 4 Monte Carlo
standard errors of the loop's percentiles (estimated by subsampling our replicates).

    .venv/bin/python benchmarks/bootstrap.py [--n 522] [--reps 10000] [--loop-reps 300] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import pandas as pd
import sklearn
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from covidnet.evaluate.figures import compute_metrics
from covidnet.evaluate.metrics import bootstrap, score_stat
from covidnet.evaluate.params import EvaluateParams

NAMES = ["accuracy", "auc", *(f"{c}.{f}" for c in ("covid", "non_covid")
                              for f in ("sensitivity", "specificity", "ppv", "npv", "f1"))]


def synthetic_predictions(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.41).astype(int)
    s = np.clip(rng.normal(0.3 + 0.45 * y, 0.2), 0, 1).round(3)
    return pd.DataFrame({"patient_id": [f"P{i}" for i in range(n)], "label": y, "score": s})


def vectorised(y: np.ndarray, s: np.ndarray, reps: int, seed: int) -> dict[str, np.ndarray]:
    return bootstrap(len(y), score_stat(y, s, 0.5), reps=reps, seed=seed)[1]


def plain_loop(y: np.ndarray, s: np.ndarray, reps: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {k: [] for k in NAMES}
    nan = np.nan
    for _ in range(reps):
        i = rng.integers(0, len(y), len(y))
        yb, sb = y[i], s[i]
        pred = (sb >= 0.5).astype(int)
        out["accuracy"].append(accuracy_score(yb, pred))
        out["auc"].append(roc_auc_score(yb, sb) if len(np.unique(yb)) == 2 else nan)
        for cls, pos in (("covid", 1), ("non_covid", 0)):
            out[f"{cls}.sensitivity"].append(recall_score(yb, pred, pos_label=pos, zero_division=nan))
            out[f"{cls}.specificity"].append(recall_score(yb, pred, pos_label=1 - pos, zero_division=nan))
            out[f"{cls}.ppv"].append(precision_score(yb, pred, pos_label=pos, zero_division=nan))
            out[f"{cls}.npv"].append(precision_score(yb, pred, pos_label=1 - pos, zero_division=nan))
            out[f"{cls}.f1"].append(f1_score(yb, pred, pos_label=pos, zero_division=nan))
    return {k: np.array(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=522)
    ap.add_argument("--reps", type=int, default=10000)
    ap.add_argument("--loop-reps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5, help="best of this many timings of the vectorised runs")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    preds = synthetic_predictions(args.n)
    y, s = preds["label"].to_numpy(), preds["score"].to_numpy(np.float64)
    vectorised(y, s, 100, 0)  # warm-up (imports, allocator)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        vec = vectorised(y, s, args.reps, 1)
        times.append(time.perf_counter() - t0)
    stage_times = []
    params = EvaluateParams(bootstrap=args.reps, seed=1)
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        compute_metrics(preds, params)
        stage_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    loop = plain_loop(y, s, args.loop_reps, 2)
    loop_s = time.perf_counter() - t0
    loop_scaled = loop_s * args.reps / args.loop_reps

    sub = np.random.default_rng(3)
    cis, agree = {}, True
    for name in NAMES:
        v = vec[name][np.isfinite(vec[name])]
        ours = np.quantile(v, [0.025, 0.975])
        theirs = np.nanquantile(loop[name], [0.025, 0.975])
        draws = np.array([np.quantile(sub.choice(v, args.loop_reps), [0.025, 0.975]) for _ in range(500)])
        tol = 4 * draws.std(axis=0) + 1e-12
        ok = bool((np.abs(ours - theirs) <= tol).all())
        agree &= ok
        cis[name] = {"vectorised": ours.round(4).tolist(), "loop": theirs.round(4).tolist(),
                     "tolerance_4_mc_se": tol.round(4).tolist(), "agree": ok}
    result = {
        "data": f"synthetic predictions, n={args.n}, {int(y.sum())} COVID-19, scores rounded to 3 decimals (ties)",
        "figures": NAMES,
        "replications": args.reps,
        "vectorised_bootstrap_s": round(min(times), 4),
        "compute_metrics_s": round(min(stage_times), 4),
        "loop": {"replications_run": args.loop_reps, "measured_s": round(loop_s, 3),
                 "scaled_to_replications_s": round(loop_scaled, 2),
                 "note": f"the sklearn loop ran {args.loop_reps} replicates; its time is scaled linearly to "
                         f"{args.reps}"},
        "ratio_loop_over_vectorised": round(loop_scaled / min(times), 1),
        "ratio_loop_over_compute_metrics": round(loop_scaled / min(stage_times), 1),
        "goal": "vectorised <= 0.25 s and >= 250x the loop",
        "cis_agree_within_mc_error": agree,
        "cis": cis,
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "sklearn": sklearn.__version__,
                    "cpus": os.cpu_count(), "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()], "processor": platform.processor() or platform.machine()},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
