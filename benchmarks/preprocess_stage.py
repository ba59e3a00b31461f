"""Benchmark: the default ``preprocess`` stage over the default SYNTHETIC cohort, and its scaling with workers.

Builds the cohort the default profile's ``dvc repro`` builds, in a temporary folder, with the
package's own functions (``synth`` -> header index -> exclusions -> split; no Great
Expectations, which does not change the scans), then runs
:func:`covidnet.preprocess.stage.preprocess_cohort` (what ``covidnet preprocess`` runs) into a
fresh folder for each ``--workers`` value (``preprocess.workers``), ``--repeats`` rounds with
the order rotating, medians reported: scans/s, and the speed-up over one worker.

Anchor in the same run: MONAI's chain (``LoadImage(reader="PydicomReader")`` ->
``ScaleIntensityRange`` -> ``Resize`` -> ``CenterSpatialCrop``) over the same series, one after
another (each series' files linked into a folder of their own beforehand, so MONAI reads just
that series). The stage's tensors (float16, as stored) are compared with MONAI's cast to
float16: they must be equal.

Usage: ``python benchmarks/preprocess_stage.py [--workers 1,2] [--repeats 3] [--profile default]
[--skip-monai] [--out FILE]``. Prints JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def build_cohort(params: dict, root: Path) -> tuple:
    """The default profile's cohort in ``root``: ``(split, series, files, dicom_dir, build seconds)``."""
    from covidnet.data.cohort import read_manifest
    from covidnet.data.exclude import ExcludeParams, apply_exclusions
    from covidnet.data.series import SeriesParams, index_tree
    from covidnet.data.split import SplitParams, split_cohort
    from covidnet.params import section
    from covidnet.synthetic.params import SynthParams
    from covidnet.synthetic.synth import synthesize

    t0 = time.perf_counter()
    dicom, manifest = root / "dicom", root / "manifest"
    synthesize(section(params, "synth", SynthParams), dicom, manifest, workers=2)
    index = index_tree(dicom, section(params, "series", SeriesParams))
    cohort = apply_exclusions(read_manifest(manifest), index.series, section(params, "exclude", ExcludeParams)).cohort
    cohort["scan_order"] = cohort["scan_order"].astype(int)
    split = split_cohort(cohort, section(params, "split", SplitParams))
    return split, index.series, index.files, dicom, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    ap.add_argument("--profile", default=None, help="profile (default: the file's own, i.e. default)")
    ap.add_argument("--workers", default="1,2", help="preprocess.workers values to run (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds, medians reported (default: %(default)s)")
    ap.add_argument("--skip-monai", action="store_true", help="leave out the MONAI anchor")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]

    from covidnet.data.pixels import syntax_name
    from covidnet.params import load_params, section
    from covidnet.preprocess.params import PreprocessParams
    from covidnet.preprocess.stage import preprocess_cohort, scan_id

    params = load_params(args.params, profile=args.profile)
    pre = section(params, "preprocess", PreprocessParams)
    out: dict = {"benchmark": "preprocess_stage", "profile": params["profile"],
                 "data": "SYNTHETIC cohort of the profile's synth params (covidnet.synthetic.synth)",
                 "preprocess": {k: getattr(pre, k) for k in ("depth", "size", "crop", "dtype", "workers",
                                                             "decode_workers")},
                 "repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="covidnet-stage-bench-") as tmp:
        root = Path(tmp)
        split, series, files, dicom, build_s = build_cohort(params, root)
        chosen = series.set_index("series_uid").loc[split["series_uid"]]
        by_series = {uid: g.sort_values("slice_index") for uid, g in files.groupby("series_uid", sort=False)}
        out["cohort"] = {
            "build_s": round(build_s, 1), "scans": len(split),
            "slices": int(sum(len(by_series[u]) for u in split["series_uid"])),
            "matrix": sorted({f"{int(r)}x{int(c)}" for r, c in zip(chosen["rows"], chosen["columns"])}),
            "syntaxes": {(syntax_name(s) or "native"): int(n) for s, n in chosen["transfer_syntax"].value_counts().items()},
        }
        times: dict[str, list[float]] = {str(w): [] for w in worker_counts}
        last_dir = None
        for r in range(args.repeats):
            order = worker_counts[r % len(worker_counts):] + worker_counts[: r % len(worker_counts)]
            for w in order:
                dest = root / f"out-{w}-{r}"
                t0 = time.perf_counter()
                summary = preprocess_cohort(split, series, files, dicom, dest, dataclasses.replace(pre, workers=w),
                                            progress=False)
                times[str(w)].append(time.perf_counter() - t0)
                assert summary.n_failed == 0 and summary.n_reused == 0, summary
                last_dir = dest
        med = {w: statistics.median(v) for w, v in times.items()}
        base = med[str(worker_counts[0])]
        out["stage"] = {w: {"seconds_median": round(s, 3), "scans_per_s": round(len(split) / s, 2),
                            "speedup_over_" + str(worker_counts[0]): round(base / s, 2),
                            "seconds_all": [round(x, 3) for x in times[w]]} for w, s in med.items()}

        if not args.skip_monai:
            from monai.transforms import CenterSpatialCrop, Compose, LoadImage, Resize, ScaleIntensityRange

            chain = Compose([
                LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True),
                ScaleIntensityRange(a_min=pre.hu_min, a_max=pre.hu_max, b_min=0.0, b_max=1.0, clip=True),
                Resize(spatial_size=(pre.size, pre.size, pre.depth), mode="trilinear"),
                CenterSpatialCrop(roi_size=(pre.crop, pre.crop, pre.depth)),
            ])
            import pydicom

            links = {}
            for uid in split["series_uid"]:
                folder = root / "monai" / uid
                folder.mkdir(parents=True)
                for p in by_series[uid]["path"]:
                    (folder / Path(p).name).symlink_to(dicom / p)
                links[uid] = folder
            monai_times, worst = [], 0.0
            for r in range(args.repeats):
                t0 = time.perf_counter()
                results = {uid: np.asarray(chain(str(folder))) for uid, folder in links.items()}
                monai_times.append(time.perf_counter() - t0)
            for uid, m in results.items():
                # MONAI: (1, x=col, y=row, slices in InstanceNumber order) -> ours (1, slices by position, row, col)
                m = m.transpose(0, 3, 2, 1)
                g = by_series[uid]
                inst = [int(pydicom.dcmread(dicom / p, stop_before_pixels=True).InstanceNumber) for p in g["path"]]
                if inst[0] > inst[-1]:  # our slice order (ascending position) is MONAI's reversed
                    m = m[:, ::-1]
                ours = np.load(last_dir / "tensors" / f"{scan_id(uid, pre)}.npy")
                worst = max(worst, float(np.abs(ours.astype(np.float32) - m.astype(pre.dtype).astype(np.float32)).max()))
            s = statistics.median(monai_times)
            out["monai"] = {"seconds_median": round(s, 3), "scans_per_s": round(len(split) / s, 2),
                            "seconds_all": [round(x, 3) for x in monai_times],
                            "max_abs_diff_as_stored": worst, "equal_as_stored": worst == 0.0}
            out["ratios"] = {f"monai_over_stage_workers_{w}": round(s / v, 2) for w, v in med.items()}
    out["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                      "load_average": [round(x, 2) for x in os.getloadavg()]}
    text = json.dumps(out, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
