"""Benchmark: one CT series from DICOM files to the model tensor.

Writes one SYNTHETIC 512 x 512 series of 300 slices with ``covidnet.synthetic.synth`` (uncompressed),
then times, best of ``--repeats`` runs each, in the same process:

* ``bytes``     reading every file's bytes (the I/O floor);
* ``headers``   pydicom parsing every header (serially, ``stop_before_pixels``), the floor
                of any reader that orders slices by position;
* ``covidnet``  our path: headers in ``--workers`` processes, series assessment and slice
                order, then :func:`covidnet.preprocess.series.preprocess_series` (QC included);
* ``plain``     a plain pydicom + torch version: ``dcmread`` every file, sort by position,
                decode every slice to HU, clip, scale, ``F.interpolate`` trilinear, crop;
* ``monai``     MONAI's chain: ``LoadImage(reader="PydicomReader")`` ->
                ``ScaleIntensityRange`` -> ``Resize`` -> ``CenterSpatialCrop``.

Also traces the peak memory of ours and the plain version (tracemalloc; numpy and torch
CPU buffers are traced). Prints JSON: seconds per variant, the ratios ``monai / covidnet`` (goal >= 10) and
``covidnet / bytes`` and ``covidnet / headers``, and the largest absolute difference of our
tensor from MONAI's and from the plain version (must be < 1e-3).

Usage: ``python benchmarks/preprocess.py [--slices 300] [--matrix 512] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def _best(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _peak_mib(fn) -> float:
    """Peak memory traced while ``fn`` runs (numpy and torch CPU buffers included), MiB."""
    import tracemalloc

    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return round(peak / 2**20, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matrix", type=int, default=512, help="in-plane size of the series (default: %(default)s)")
    ap.add_argument("--slices", type=int, default=300, help="slices in the series (default: %(default)s)")
    ap.add_argument("--depth", type=int, default=64, help="output slices D (default: the paper's %(default)s)")
    ap.add_argument("--size", type=int, default=512, help="resize R (default: the paper's %(default)s)")
    ap.add_argument("--crop", type=int, default=384, help="central crop C (default: the paper's %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per variant, best kept (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=2, help="header-reading processes (default: %(default)s)")
    ap.add_argument("--skip-monai", action="store_true", help="leave out the MONAI chain")
    args = ap.parse_args()

    import pydicom
    import torch
    import torch.nn.functional as F

    from covidnet.data.dicom import find_files, read_header, read_headers
    from covidnet.data.series import SeriesParams, assess_series, files_frame
    from covidnet.preprocess.array import clip_scale, crop_start
    from covidnet.preprocess.params import PreprocessParams
    from covidnet.preprocess.series import preprocess_series
    from covidnet.synthetic.dicom_writer import write_benchmark_series

    params = PreprocessParams(hu_min=-1024.0, hu_max=1024.0, depth=args.depth, size=args.size, crop=args.crop,
                              dtype="float32", body_hu=-500.0, lung_hu=(-950.0, -400.0), workers=1)
    sparams = SeriesParams(min_slices=8, max_gap_ratio=1.5, duplicate_tol_mm=0.01, orientation_tol=1e-3,
                           axial_tol=0.1, workers=args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        folder = write_benchmark_series(Path(tmp) / "series", matrix=args.matrix, n_slices=args.slices, seed=0)
        t_write = time.perf_counter() - t0
        paths = find_files(folder)

        def read_bytes():
            return sum(len(p.read_bytes()) for p in paths)

        def headers_only():
            return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]

        def ours():
            headers = read_headers(paths, workers=args.workers)
            a = assess_series(headers, sparams)
            assert a.eligible, a.reason
            return preprocess_series(files_frame(a), "/", params, shape=(a.slices[0].rows, a.slices[0].columns))[0]

        def plain():
            datasets = sorted((pydicom.dcmread(p) for p in paths), key=lambda ds: float(ds.ImagePositionPatient[2]))
            vol = np.stack([ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                            for ds in datasets])
            t = torch.from_numpy(clip_scale(vol, params.hu_min, params.hu_max))[None, None]
            r = F.interpolate(t, size=(params.depth, params.size, params.size), mode="trilinear", align_corners=False)
            s = crop_start(params.size, params.crop)
            return r[0, :, :, s : s + params.crop, s : s + params.crop].numpy()

        results = {}
        n_bytes = read_bytes()
        results["bytes"], _ = _best(read_bytes, args.repeats)
        results["headers"], _ = _best(headers_only, args.repeats)
        results["covidnet"], ours_out = _best(ours, args.repeats)
        results["plain"], plain_out = _best(plain, args.repeats)
        diff = {"plain": float(np.abs(ours_out - plain_out).max())}
        peak = {"covidnet": _peak_mib(ours), "plain": _peak_mib(plain)}

        if not args.skip_monai:
            from monai.transforms import CenterSpatialCrop, Compose, LoadImage, Resize, ScaleIntensityRange

            chain = Compose([
                LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True),
                ScaleIntensityRange(a_min=params.hu_min, a_max=params.hu_max, b_min=0.0, b_max=1.0, clip=True),
                Resize(spatial_size=(params.size, params.size, params.depth), mode="trilinear"),
                CenterSpatialCrop(roi_size=(params.crop, params.crop, params.depth)),
            ])
            results["monai"], monai_out = _best(lambda: chain(str(folder)), args.repeats)
            # MONAI: (1, x=col, y=row, slices in InstanceNumber order) -> ours (1, slices by position, row, col)
            m = np.asarray(monai_out).transpose(0, 3, 2, 1)
            by_instance = sorted(paths, key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))
            if read_header(by_instance[0]).position[2] > read_header(by_instance[-1]).position[2]:
                m = m[:, ::-1]
            diff["monai"] = float(np.abs(ours_out - m).max())

    out = {
        "benchmark": "preprocess",
        "data": "SYNTHETIC series written by covidnet.synthetic.synth (uncompressed)",
        "series": {"matrix": args.matrix, "slices": args.slices, "bytes": n_bytes, "write_s": round(t_write, 2)},
        "output_shape": list(ours_out.shape),
        "seconds": {k: round(v, 4) for k, v in results.items()},
        "ratios": {
            "monai_over_covidnet": round(results["monai"] / results["covidnet"], 2) if "monai" in results else None,
            "plain_over_covidnet": round(results["plain"] / results["covidnet"], 2),
            "covidnet_over_bytes": round(results["covidnet"] / results["bytes"], 2),
            "covidnet_over_headers": round(results["covidnet"] / results["headers"], 2),
        },
        "peak_traced_mib": peak,
        "max_abs_diff": diff,
        "agree_within_1e-3": all(v < 1e-3 for v in diff.values()),
        "repeats": args.repeats,
        "workers": args.workers,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
