"""False-alarm and detection rates of the drift alarm on SYNTHETIC cohorts; prints JSON.

Three synthetic cohorts are written as DICOM by ``covidnet.synthetic.synth`` (the ``tiny`` profile's
phantoms, one scan per patient, no planted exclusions) and read through the pipeline's own
series selection and ``preprocess_series`` (the function training and serving both call),
giving each scan's QC values:

* **reference**: the training cohort (``synth`` hospitals as in params.yaml, seed ``--seed``);
* **undrifted**: an independent cohort from the same hospitals (another seed);
* **drifted**: the same hospitals with one scanner parameter changed (``--drift``:
  ``noise`` adds ``--noise-add`` HU of noise to every hospital, ``thin`` makes every scanner
  reconstruct ``--thin-mm`` slices).

``--windows`` windows of ``--window`` studies (default ``monitor.drift.min_window``) are drawn
at random (without replacement inside a window) from the undrifted and the drifted pools and
judged by :func:`covidnet.monitor.drift.window_verdict` with the ``monitor.drift`` params (score left
out: no network is trained here). The false-alarm rate is the fraction of undrifted windows
that alarm, with a Clopper-Pearson 95% interval; the detection rate the fraction of drifted
windows that do. Windows overlap in the pools, so the intervals are optimistic.

    .venv/bin/python benchmarks/drift_alarm.py                     # defaults below
    .venv/bin/python benchmarks/drift_alarm.py --drift thin --windows 500

The anchor is the undrifted pool itself: detection is only meaningful beside it. ``by_rule``
gives both rates for every ``monitor.drift.rule`` on the same cohorts and windows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def cohort_qc(params: dict, root: Path, n_patients: int, seed: int, drift: str | None = None,
              noise_add: float = 0.0, thin_mm: float = 1.0, workers: int = 2) -> pd.DataFrame:
    """Write a SYNTHETIC cohort under ``root`` and return its per-scan QC table (preprocess's qc.csv).

    Args:
        params: merged params (``synth``, ``series``, ``preprocess`` sections are used).
        root: an empty folder.
        n_patients: patients (one scan each).
        seed: ``synth.seed``.
        drift: None, ``noise`` (every hospital's ``noise_hu`` + ``noise_add``) or ``thin``
            (every hospital's ``slice_thickness_mm`` = ``thin_mm``).
    """
    from covidnet.data.series import SeriesParams, index_tree
    from covidnet.params import section
    from covidnet.preprocess.params import PreprocessParams
    from covidnet.preprocess.stage import preprocess_cohort
    from covidnet.synthetic.params import SynthParams
    from covidnet.synthetic.synth import synthesize

    sp = section(params, "synth", SynthParams)
    hospitals = sp.hospitals
    if drift == "noise":
        hospitals = tuple(dataclasses.replace(h, noise_hu=h.noise_hu + noise_add) for h in hospitals)
    elif drift == "thin":
        hospitals = tuple(dataclasses.replace(h, slice_thickness_mm=thin_mm) for h in hospitals)
    elif drift is not None:
        raise ValueError(f"--drift {drift!r}: expected noise or thin")
    none = dataclasses.replace(sp.exclusion_cases, pcr_gap=0, motion=0, contrast_only=0, broken_series=0)
    sp = dataclasses.replace(sp, n_patients=n_patients, seed=seed, scans_per_patient=(1, 1), contrast_fraction=0.0,
                             exclusion_cases=none, hospitals=hospitals)
    synthesize(sp, root / "dicom", root / "manifest", workers=workers)
    index = index_tree(root / "dicom", dataclasses.replace(section(params, "series", SeriesParams), workers=workers))
    patients = pd.read_csv(root / "manifest" / "patients.csv", dtype=str)
    chosen = index.series[index.series["selected"]].merge(patients[["patient_id", "hospital", "label"]], on="patient_id")
    split = pd.DataFrame({"patient_id": chosen["patient_id"], "study_uid": chosen["study_uid"],
                          "series_uid": chosen["series_uid"], "hospital": chosen["hospital"],
                          "label": chosen["label"], "split": "train", "scan_date": chosen["study_date"]})
    pre = dataclasses.replace(section(params, "preprocess", PreprocessParams), workers=workers)
    preprocess_cohort(split, index.series, index.files, root / "dicom", root / "pre", pre, progress=False)
    qc = pd.read_csv(root / "pre" / "qc.csv")
    return qc[qc["error"].fillna("") == ""].reset_index(drop=True)


def window_rates(reference: pd.DataFrame, pool: pd.DataFrame, drift_params, window: int, windows: int,
                 seed: int) -> dict:
    """Alarm rate over ``windows`` random windows of ``window`` studies from ``pool``, and which series drifted."""
    from covidnet.monitor.drift import window_verdict

    if window > len(pool):
        raise ValueError(f"--window {window} exceeds the pool of {len(pool)} studies")
    ref = {f: reference[f].to_numpy(np.float64) for f in drift_params.features}
    rng = np.random.default_rng(seed)
    alarms, drifted = 0, {f: 0 for f in drift_params.features}
    for _ in range(windows):
        rows = pool.iloc[rng.choice(len(pool), size=window, replace=False)]
        v = window_verdict(ref, {f: rows[f].to_numpy(np.float64) for f in drift_params.features}, drift_params)
        alarms += v.alarm
        for f in v.drifted:
            drifted[f] += 1
    return {"windows": windows, "alarms": int(alarms), "rate": alarms / windows, "ci95": clopper_pearson(alarms, windows),
            "series_drifting": drifted}


def clopper_pearson(k: int, n: int, level: float = 0.95) -> list[float]:
    """Exact binomial interval of ``k`` successes in ``n``."""
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return [float(ci.low), float(ci.high)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--profile", default="tiny", help="params profile of the synthetic phantoms (default: tiny)")
    parser.add_argument("--reference", type=int, default=120, help="patients of the reference (training) cohort")
    parser.add_argument("--pool", type=int, default=120, help="patients of the undrifted and the drifted pools")
    parser.add_argument("--window", type=int, default=None, help="studies per window (default: monitor.drift.min_window)")
    parser.add_argument("--windows", type=int, default=1000, help="random windows per pool")
    parser.add_argument("--drift", choices=("noise", "thin"), default="noise")
    parser.add_argument("--noise-add", type=float, default=20.0, help="HU added to every hospital's noise (--drift noise)")
    parser.add_argument("--thin-mm", type=float, default=1.0, help="slice thickness of every scanner (--drift thin)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    from covidnet.monitor.params import monitor_params
    from covidnet.params import load_params

    params = load_params(args.params, profile=args.profile)
    drift_params = dataclasses.replace(monitor_params(params).drift, score=False)
    window = args.window or drift_params.min_window
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="covidnet-drift-bench-") as tmp:
        tmp = Path(tmp)
        reference = cohort_qc(params, tmp / "reference", args.reference, args.seed)
        undrifted = cohort_qc(params, tmp / "undrifted", args.pool, args.seed + 1)
        drifted = cohort_qc(params, tmp / "drifted", args.pool, args.seed + 2, args.drift, args.noise_add, args.thin_mm)
    built = time.perf_counter() - t0
    result = {
        "benchmark": "drift_alarm", "synthetic": True, "machine": platform.node() or "unknown",
        "python": sys.version.split()[0], "profile": args.profile,
        "drift": {"noise": f"+{args.noise_add:g} HU noise at every hospital",
                  "thin": f"{args.thin_mm:g} mm slices at every hospital"}[args.drift],
        "studies": {"reference": len(reference), "undrifted": len(undrifted), "drifted": len(drifted)},
        "window": window,
        "rule": {k: getattr(drift_params, k) for k in ("rule", "psi_threshold", "ks_alpha", "bins", "min_drifted")}
        | {"features": list(drift_params.features)},
        "undrifted": window_rates(reference, undrifted, drift_params, window, args.windows, args.seed),
        "drifted": window_rates(reference, drifted, drift_params, window, args.windows, args.seed),
        # The other rules on the same cohorts and windows (the params' rule is the one above).
        "by_rule": {rule: {pool: window_rates(reference, table, dataclasses.replace(drift_params, rule=rule), window,
                                              args.windows, args.seed)["rate"]
                           for pool, table in (("false_alarm_rate", undrifted), ("detection_rate", drifted))}
                    for rule in ("psi", "ks", "both", "either")},
        "medians": {name: {f: float(np.median(t[f])) for f in drift_params.features}
                    for name, t in (("reference", reference), ("undrifted", undrifted), ("drifted", drifted))},
        "seconds_to_build_cohorts": round(built, 1),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
