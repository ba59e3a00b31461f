"""Benchmark: one CT series from DICOM files to the model tensor, uncompressed and compressed.

Writes one SYNTHETIC 512 x 512 series of 300 slices
(``covidnet.synthetic.dicom_writer.write_benchmark_series``, uncompressed) and lossless copies
of it in each compressed transfer syntax hospitals store (``--syntaxes``: RLE, JPEG-LS,
JPEG 2000, JPEG Lossless; ``covidnet.data.transcode``), then times for each, in the same
process, interleaved round by round (``--repeats`` rounds, medians reported):

* ``covidnet``      ours, as params.yaml sets it: headers in ``--workers`` processes, series
                    assessment and slice order, :func:`covidnet.preprocess.series.preprocess_series`
                    (QC included) with ``preprocess.decoders`` and ``preprocess.decode_workers``;
                    the decoding processes are started before the first round (their start,
                    paid once per process, is reported apart as ``first_call_s``);
* ``covidnet_1p``   the same all in one process (headers too, ``decode_workers: 1``);
* ``covidnet_pydicom`` the same with pydicom's own choice of decoder, in one process (the path
                    before ``preprocess.decoders`` existed);
* ``floor``         decoding only the slices the resize needs (at most 2 x depth), whole, one
                    after another in one process, with every installed decoder for the syntax
                    (``decoders``: seconds each): the fastest is the floor the goal names;
                    ``floor_parallel`` is the fastest again over the same number of processes
                    ours uses (a pool started beforehand);
* ``monai``         MONAI's chain: ``LoadImage(reader="PydicomReader")`` ->
                    ``ScaleIntensityRange`` -> ``Resize`` -> ``CenterSpatialCrop`` (it decodes
                    every slice through pydicom's default plugin);
* ``plain``         (uncompressed only, unless ``--plain``) ``dcmread`` every file, sort by
                    position, decode all slices to HU, clip, scale, ``F.interpolate``, crop;
* ``bytes``, ``headers`` (uncompressed only): reading every file's bytes; pydicom parsing every
                    header serially (the floors of any reader that orders slices by position).

Checks: every variant's tensor against the uncompressed series' tensor (must be equal, max abs
difference 0.0) and MONAI's (max abs difference). Ratios per syntax: ``monai / covidnet``
(goal >= 5 compressed, >= 10 uncompressed), ``covidnet / floor`` (goal <= 1.5), ``covidnet /
floor_parallel``, ``covidnet_1p / covidnet`` (what the processes give), the same per round
(``_paired_median``: ours over the floor of the same round), and in CPU seconds of this process
(``cpu_``: the one-process variants only, which a loaded machine moves much less than wall time).
Timings on a shared machine are noisy: compare the ratios of one run.

Usage: ``python benchmarks/preprocess.py [--syntaxes none,rle,jpeg_ls,jpeg2000,jpeg_lossless]
[--repeats 3] [--skip-monai] [--out FILE]``. Prints JSON.
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

SYNTAX_CHOICES = ("none", "rle", "jpeg_ls", "jpeg2000", "jpeg_lossless")


def _time(fn):
    """Wall seconds, CPU seconds of this process (all its threads) and the result of ``fn()``."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def _peak_mib(fn) -> float:
    """Peak memory traced while ``fn`` runs (numpy and torch CPU buffers included), MiB."""
    import tracemalloc

    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return round(peak / 2**20, 1)


def _transcode_many(args: tuple[list[str], str, str]) -> None:
    from covidnet.data.transcode import transcode

    paths, out_dir, syntax = args
    for p in paths:
        transcode(p, Path(out_dir) / Path(p).name, syntax)


def make_copies(plain: list[Path], root: Path, syntaxes: list[str], workers: int) -> dict[str, Path]:
    """Lossless copies of the series' files per syntax, ``root/<syntax>/``; ``none`` is the original folder."""
    out = {"none": plain[0].parent}
    todo = [s for s in syntaxes if s != "none"]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        jobs = []
        for syntax in todo:
            folder = root / syntax
            folder.mkdir(parents=True)
            out[syntax] = folder
            names = [str(p) for p in plain]
            jobs += [(names[i::workers], str(folder), syntax) for i in range(workers)]
        list(pool.map(_transcode_many, jobs))
    return out


def _decode_chunk(args) -> None:
    from covidnet.data.pixels import read_stored

    paths, offsets, bits, rep, shape, decoders = args
    for p, off in zip(paths, offsets):
        read_stored(p, off, bits, rep, shape, decoders=decoders)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matrix", type=int, default=512, help="in-plane size of the series (default: %(default)s)")
    ap.add_argument("--slices", type=int, default=300, help="slices in the series (default: %(default)s)")
    ap.add_argument("--depth", type=int, default=64, help="output slices D (default: the paper's %(default)s)")
    ap.add_argument("--size", type=int, default=512, help="resize R (default: the paper's %(default)s)")
    ap.add_argument("--crop", type=int, default=384, help="central crop C (default: the paper's %(default)s)")
    ap.add_argument("--syntaxes", default=",".join(SYNTAX_CHOICES),
                    help="comma-separated transfer syntaxes to measure (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds, medians reported (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=2, help="header-reading processes (default: %(default)s)")
    ap.add_argument("--params", default="params.yaml", help="decoders and decode_workers from here (default: %(default)s)")
    ap.add_argument("--skip-monai", action="store_true", help="leave out the MONAI chain")
    ap.add_argument("--plain", action="store_true", help="time the plain version for compressed syntaxes too")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    syntaxes = args.syntaxes.split(",")
    bad = sorted(set(syntaxes) - set(SYNTAX_CHOICES))
    if bad:
        ap.error(f"--syntaxes: unknown {bad}; choose from {', '.join(SYNTAX_CHOICES)}")

    import pydicom
    import torch
    import torch.nn.functional as F

    from covidnet.data.dicom import find_files, read_header, read_headers
    from covidnet.data.pixels import DECODERS, decoder_available, read_stored
    from covidnet.data.series import SeriesParams, assess_series, files_frame
    from covidnet.params import load_params, section
    from covidnet.preprocess.array import clip_scale, crop_start, linear_taps
    from covidnet.preprocess.decode import _pool
    from covidnet.preprocess.params import PreprocessParams
    from covidnet.preprocess.series import preprocess_series
    from covidnet.synthetic.dicom_writer import write_benchmark_series

    configured = section(load_params(args.params), "preprocess", PreprocessParams)
    params = PreprocessParams(hu_min=-1024.0, hu_max=1024.0, depth=args.depth, size=args.size, crop=args.crop,
                              dtype="float32", body_hu=-500.0, lung_hu=(-950.0, -400.0), workers=1,
                              decode_workers=configured.decode_workers, decoders=configured.decoders,
                              decode_parallel_mpix=configured.decode_parallel_mpix)
    one_process = dataclasses.replace(params, decode_workers=1)
    pydicom_only = dataclasses.replace(params, decode_workers=1, decoders=None)
    sparams = SeriesParams(min_slices=8, max_gap_ratio=1.5, duplicate_tol_mm=0.01, orientation_tol=1e-3,
                           axial_tol=0.1, workers=args.workers)
    report: dict = {"benchmark": "preprocess",
                    "data": "SYNTHETIC series (covidnet.synthetic.dicom_writer.write_benchmark_series) and lossless "
                            "copies per transfer syntax (covidnet.data.transcode)",
                    "decode_workers": params.decode_workers, "decoders_configured": params.decoders,
                    "output_shape": [1, args.depth, args.crop, args.crop], "repeats": args.repeats, "syntaxes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        folder = write_benchmark_series(Path(tmp) / "series", matrix=args.matrix, n_slices=args.slices, seed=0)
        plain_paths = find_files(folder)
        folders = make_copies(plain_paths, Path(tmp) / "copies", syntaxes, args.workers)
        report["series"] = {"matrix": args.matrix, "slices": args.slices, "write_s": round(time.perf_counter() - t0, 1),
                            "bytes": {s: sum(p.stat().st_size for p in find_files(f)) for s, f in folders.items()}}
        ref_headers = read_headers(plain_paths, workers=1)
        ref_a = assess_series(ref_headers, sparams)
        reference = preprocess_series(files_frame(ref_a), "/", pydicom_only, shape=(ref_a.slices[0].rows,
                                                                                    ref_a.slices[0].columns))[0]
        if params.decode_workers > 1:  # started once per process, as in a server: not part of any round
            t0 = time.perf_counter()
            _pool(params.decode_workers - 1).submit(int, 0).result()
            report["decode_pool_start_s"] = round(time.perf_counter() - t0, 3)
        floor_pool = ProcessPoolExecutor(max_workers=params.decode_workers) if params.decode_workers > 1 else None
        if floor_pool:
            list(floor_pool.map(int, range(params.decode_workers)))

        for syntax in syntaxes:
            paths = find_files(folders[syntax])

            def ours(p=params, paths=paths, header_workers=args.workers):
                headers = read_headers(paths, workers=header_workers)
                a = assess_series(headers, sparams)
                assert a.eligible, a.reason
                return preprocess_series(files_frame(a), "/", p, shape=(a.slices[0].rows, a.slices[0].columns))[0]

            headers = [read_header(p) for p in paths]
            a = assess_series(headers, sparams)
            ordered = a.slices
            d_lo, d_hi, _ = linear_taps(len(ordered), args.depth)
            needed = [ordered[int(i)] for i in np.unique(np.concatenate([d_lo, d_hi]))]
            h0 = needed[0]
            shape = (h0.rows, h0.columns)
            names = ["native"] if syntax == "none" else [n for n in DECODERS if decoder_available(n, syntax)]

            def floor(name, needed=needed, syntax=syntax, shape=shape):
                for h in needed:
                    read_stored(h.path, h.pixel_offset if name == "native" else -1, h.bits_stored,
                                h.pixel_representation, shape, decoders=None if name == "native" else {syntax: [name]})

            def floor_parallel(name, needed=needed, syntax=syntax, shape=shape):
                n = params.decode_workers
                dec = None if name == "native" else {syntax: [name]}
                jobs = [([h.path for h in needed[i::n]], [h.pixel_offset if name == "native" else -1 for h in needed[i::n]],
                         h0.bits_stored, h0.pixel_representation, shape, dec) for i in range(n)]
                list(floor_pool.map(_decode_chunk, jobs))

            def plain(paths=paths):
                datasets = sorted((pydicom.dcmread(p) for p in paths), key=lambda ds: float(ds.ImagePositionPatient[2]))
                vol = np.stack([ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                                for ds in datasets])
                t = torch.from_numpy(clip_scale(vol, params.hu_min, params.hu_max))[None, None]
                r = F.interpolate(t, size=(params.depth, params.size, params.size), mode="trilinear",
                                  align_corners=False)
                s = crop_start(params.size, params.crop)
                return r[0, :, :, s : s + params.crop, s : s + params.crop].numpy()

            variants = {"covidnet": ours, "covidnet_1p": lambda: ours(one_process, header_workers=1),
                        "covidnet_pydicom": lambda: ours(pydicom_only, header_workers=1)}
            for name in names:
                variants[f"floor:{name}"] = lambda name=name: floor(name)
            if floor_pool:
                variants["floor_parallel"] = None  # filled after the serial floors pick the fastest decoder
            if syntax == "none":
                variants["bytes"] = lambda: sum(len(p.read_bytes()) for p in paths)
                variants["headers"] = lambda: [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
            if syntax == "none" or args.plain:
                variants["plain"] = plain
            if not args.skip_monai:
                from monai.transforms import CenterSpatialCrop, Compose, LoadImage, Resize, ScaleIntensityRange

                chain = Compose([
                    LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True),
                    ScaleIntensityRange(a_min=params.hu_min, a_max=params.hu_max, b_min=0.0, b_max=1.0, clip=True),
                    Resize(spatial_size=(params.size, params.size, params.depth), mode="trilinear"),
                    CenterSpatialCrop(roi_size=(params.crop, params.crop, params.depth)),
                ])
                variants["monai"] = lambda folder=folders[syntax]: chain(str(folder))

            times: dict[str, list[float]] = {k: [] for k in variants}
            cpu: dict[str, list[float]] = {k: [] for k in variants}
            outputs: dict[str, np.ndarray] = {}
            t0 = time.perf_counter()
            first, _, _ = _time(ours)
            for r in range(args.repeats):
                order = list(variants)
                order = order[r % len(order):] + order[: r % len(order)]  # rotate: load changes hit all alike
                for k in order:
                    fn = variants[k]
                    if k == "floor_parallel":
                        fastest = min(names, key=lambda n: statistics.median(times[f"floor:{n}"] or [1e9]))
                        fn = lambda n=fastest: floor_parallel(n)  # noqa: E731
                    dt, dc, out = _time(fn)
                    times[k].append(dt)
                    cpu[k].append(dc)
                    if isinstance(out, np.ndarray) or type(out).__name__ == "MetaTensor":
                        outputs[k] = np.asarray(out)
            med = {k: round(statistics.median(v), 4) for k, v in times.items()}
            med_cpu = {k: round(statistics.median(v), 4) for k, v in cpu.items()}
            decoders = {k.split(":", 1)[1]: v for k, v in med.items() if k.startswith("floor:")}
            fastest = min(decoders, key=decoders.get)
            # per round, ours over the fastest decoder's floor of the same round (load hits both alike)
            paired = [a_ / b_ for a_, b_ in zip(times["covidnet"], times[f"floor:{fastest}"])]
            paired_1p = [a_ / b_ for a_, b_ in zip(times["covidnet_1p"], times[f"floor:{fastest}"])]
            res: dict = {"files": len(paths), "needed_slices": len(needed), "first_call_s": round(first, 3),
                         "seconds_median": {k: v for k, v in med.items() if not k.startswith("floor:")},
                         "seconds_all": {k: [round(x, 4) for x in v] for k, v in times.items()},
                         "cpu_seconds_median": med_cpu,
                         "floor_decoders_s": decoders, "fastest_decoder": fastest, "floor_s": decoders[fastest],
                         "used_decoder": None if syntax == "none" else next(
                             (n for n in (params.decoders or {}).get(syntax, ()) if decoder_available(n, syntax)),
                             "pydicom"),
                         "wall_s": round(time.perf_counter() - t0, 1)}
            ours_out = outputs["covidnet"]
            diffs = {k: float(np.abs(v - reference).max()) for k, v in outputs.items() if k.startswith(("covidnet", "plain"))}
            if "monai" in outputs:
                # MONAI: (1, x=col, y=row, slices in InstanceNumber order) -> ours (1, slices by position, row, col)
                m = outputs["monai"].transpose(0, 3, 2, 1)
                by_instance = sorted(paths, key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))
                if read_header(by_instance[0]).position[2] > read_header(by_instance[-1]).position[2]:
                    m = m[:, ::-1]
                diffs["monai"] = float(np.abs(ours_out - m).max())
            res["max_abs_diff_from_uncompressed_tensor"] = {k: v for k, v in diffs.items() if k != "monai"}
            res["max_abs_diff_from_monai"] = diffs.get("monai")
            res["equal_to_uncompressed_tensor"] = all(v == 0.0 for k, v in diffs.items() if k != "monai")

            def ratio(a_, b_):
                return round(med[a_] / b_, 2) if a_ in med and b_ else None

            res["ratios"] = {
                "monai_over_covidnet": ratio("monai", med["covidnet"]),
                "covidnet_over_floor": ratio("covidnet", decoders[fastest]),
                "covidnet_over_floor_paired_median": round(statistics.median(paired), 2),
                "covidnet_1p_over_floor_paired_median": round(statistics.median(paired_1p), 2),
                "cpu_covidnet_1p_over_floor": round(med_cpu["covidnet_1p"] / med_cpu[f"floor:{fastest}"], 2),
                "cpu_monai_over_covidnet_1p": (round(med_cpu["monai"] / med_cpu["covidnet_1p"], 2)
                                               if "monai" in med_cpu else None),
                "covidnet_over_floor_parallel": ratio("covidnet", med.get("floor_parallel")),
                "covidnet_1p_over_covidnet": ratio("covidnet_1p", med["covidnet"]),
                "covidnet_pydicom_over_covidnet": ratio("covidnet_pydicom", med["covidnet"]),
                "plain_over_covidnet": ratio("plain", med["covidnet"]),
                "covidnet_over_bytes": ratio("covidnet", med.get("bytes")),
                "covidnet_over_headers": ratio("covidnet", med.get("headers")),
            }
            if syntax == "none":
                res["peak_traced_mib"] = {"covidnet": _peak_mib(ours), "plain": _peak_mib(plain)}
            if syntax in syntaxes:
                report["syntaxes"][syntax] = res
            if args.out:
                Path(args.out).write_text(json.dumps(report, indent=2))
        if floor_pool:
            floor_pool.shutdown()

    report["goals"] = {
        s: {"monai_over_covidnet": r["ratios"]["monai_over_covidnet"], "goal_monai": ">= 10" if s == "none" else ">= 5",
            **({} if s == "none" else {  # the floor goal is the compressed syntaxes'
                "covidnet_over_floor": r["ratios"]["covidnet_over_floor"],
                "covidnet_over_floor_paired_median": r["ratios"]["covidnet_over_floor_paired_median"],
                "goal_floor": "<= 1.5"}),
            "cpu_monai_over_covidnet_1p": r["ratios"]["cpu_monai_over_covidnet_1p"],
            "equal": r["equal_to_uncompressed_tensor"], "max_abs_diff_from_monai": r["max_abs_diff_from_monai"]}
        for s, r in report["syntaxes"].items()}
    report["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                         "load_average": [round(x, 2) for x in os.getloadavg()]}
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
