"""Benchmark: the default ``preprocess`` stage over the default SYNTHETIC cohort, and its scaling with workers.

Builds the cohort the default profile's ``dvc repro`` builds, in a temporary folder, with the
package's own functions (``synth`` -> header index -> exclusions -> split; no Great
Expectations, which does not change the scans), then runs
:func:`covidnet.preprocess.stage.preprocess_cohort` (what ``covidnet preprocess`` runs) into a
fresh folder for each ``--workers`` value (``preprocess.workers``, optionally with
``:decode_workers``: with one stage worker the scans run in this process, which then decodes a
compressed series' slices in ``preprocess.decode_workers`` processes; inside the stage's worker
processes decoding stays in each), ``--repeats`` rounds with the order rotating, medians
reported: scans/s, and the speed-up over the first value (default ``1:1``, all in one process).

Anchor in the same run: MONAI's chain (``LoadImage(reader="PydicomReader")`` ->
``ScaleIntensityRange`` -> ``Resize`` -> ``CenterSpatialCrop``) over the same series, one after
another (each series' files linked into a folder of their own beforehand, so MONAI reads just
that series). Ours are compared with MONAI's in float32 (``preprocess_series`` again: equal up
to float32 rounding, as the tests require) and as stored (the stage's float16 against MONAI's
cast to float16: a value at a rounding boundary may land one float16 step apart). Besides wall time, CPU seconds (this process and the stage's
worker processes once they ended; a decoding pool kept alive is not counted) give a ratio that a
loaded machine moves much less.

Usage: ``python benchmarks/preprocess_stage.py [--workers 1,2] [--repeats 3] [--profile default]
[--skip-monai] [--out FILE]``. Prints JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _cpu_s() -> float:
    """CPU seconds of this process and of its children that have ended (the stage's worker pool)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


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
    ap.add_argument("--workers", default="1:1,1,2",
                    help="preprocess.workers values to run, each optionally :decode_workers (default: %(default)s; "
                         "without one, the params' preprocess.decode_workers)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds, medians reported (default: %(default)s)")
    ap.add_argument("--skip-monai", action="store_true", help="leave out the MONAI anchor")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    specs = args.workers.split(",")

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
        def variant(spec: str) -> PreprocessParams:
            w, _, d = spec.partition(":")
            return dataclasses.replace(pre, workers=int(w), decode_workers=int(d) if d else pre.decode_workers)

        times: dict[str, list[float]] = {s: [] for s in specs}
        cpu: dict[str, list[float]] = {s: [] for s in specs}
        last_dir = None
        for r in range(args.repeats):
            for spec in specs[r % len(specs):] + specs[: r % len(specs)]:  # rotating: load changes hit all alike
                dest = root / f"out-{spec.replace(':', '-')}-{r}"
                t0, c0 = time.perf_counter(), _cpu_s()
                summary = preprocess_cohort(split, series, files, dicom, dest, variant(spec), progress=False)
                times[spec].append(time.perf_counter() - t0)
                cpu[spec].append(_cpu_s() - c0)
                assert summary.n_failed == 0 and summary.n_reused == 0, summary
                last_dir = dest
        med = {s: statistics.median(v) for s, v in times.items()}
        base = med[specs[0]]
        out["stage"] = {s: {"workers": variant(s).workers, "decode_workers": variant(s).decode_workers,
                            "seconds_median": round(t, 3), "scans_per_s": round(len(split) / t, 2),
                            f"speedup_over_{specs[0]}": round(base / t, 2),
                            "seconds_all": [round(x, 3) for x in times[s]],
                            "cpu_s_median": round(statistics.median(cpu[s]), 3)} for s, t in med.items()}

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
            monai_times, monai_cpu, worst = [], [], 0.0
            for r in range(args.repeats):
                t0, c0 = time.perf_counter(), _cpu_s()
                results = {uid: np.asarray(chain(str(folder))) for uid, folder in links.items()}
                monai_times.append(time.perf_counter() - t0)
                monai_cpu.append(_cpu_s() - c0)
            from covidnet.preprocess.series import preprocess_series

            shapes = {r.series_uid: (int(r.rows), int(r.columns)) for r in series.itertuples()}
            worst32 = 0.0
            for uid, m in results.items():
                # MONAI: (1, x=col, y=row, slices in InstanceNumber order) -> ours (1, slices by position, row, col)
                m = m.transpose(0, 3, 2, 1)
                g = by_series[uid]
                inst = [int(pydicom.dcmread(dicom / p, stop_before_pixels=True).InstanceNumber) for p in g["path"]]
                if inst[0] > inst[-1]:  # our slice order (ascending position) is MONAI's reversed
                    m = m[:, ::-1]
                ours = np.load(last_dir / "tensors" / f"{scan_id(uid, pre)}.npy")
                worst = max(worst, float(np.abs(ours.astype(np.float32) - m.astype(pre.dtype).astype(np.float32)).max()))
                ours32, _ = preprocess_series(g, dicom, pre, shape=shapes[uid], with_qc=False)
                worst32 = max(worst32, float(np.abs(ours32 - m).max()))
            s = statistics.median(monai_times)
            out["monai"] = {"seconds_median": round(s, 3), "scans_per_s": round(len(split) / s, 2),
                            "seconds_all": [round(x, 3) for x in monai_times],
                            "cpu_s_median": round(statistics.median(monai_cpu), 3),
                            "max_abs_diff_float32": worst32, "max_abs_diff_as_stored": worst,
                            "equal_as_stored": worst == 0.0}
            out["ratios"] = {f"monai_over_stage_{w}": round(s / v, 2) for w, v in med.items()}
            # in CPU seconds (a loaded machine moves them much less): all-in-one-process work against MONAI's
            out["ratios"][f"cpu_monai_over_stage_{specs[0]}"] = round(statistics.median(monai_cpu)
                                                                      / statistics.median(cpu[specs[0]]), 2)
    out["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                      "load_average": [round(x, 2) for x in os.getloadavg()]}
    text = json.dumps(out, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
