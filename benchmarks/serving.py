"""Benchmark: the KServe server on loopback against the same work in-process, time and memory.

Writes one SYNTHETIC 512 x 512 series of 300 slices (``covidnet.synth.write_benchmark_series``)
and zips it as ``covidnet predict`` does (``covidnet.serve_client.zip_folder``). With the model
folder ``--model-dir`` (an untrained network of the params' ``model`` section when the folder
holds none: the timings do not depend on the weights) and ``--params``:

* ``in_process`` (the anchor): :func:`covidnet.serve.load_bundle` once, then per request the
  very path the server runs from the zip's bytes: safe unzip, series selection, preprocessing,
  QC, lesion fractions (:func:`covidnet.serve_input.study_zip`), the forward pass
  (:func:`covidnet.predict.score`) and the answers (:func:`covidnet.serve.results`);
* ``server_binary``: ``covidnet serve`` in a subprocess on a free loopback port (one worker),
  the zip POSTed as the raw body of a V1 request (``Content-Type: application/zip``), as
  ``covidnet predict`` sends it;
* ``server_base64``: the same server, the zip base64 in a V2 JSON request (BYTES input).

Concurrency 1: ``--requests`` rounds, each one request of every kind in turn, so a change of
load on a shared machine hits all three alike. Concurrency ``--concurrency``: ``--requests``
requests from that many threads, in-process and ``server_binary``. Latency p50/p99 (p99 of a
handful is close to the maximum) and throughput (requests/s over the level's wall time).

At concurrency 1 the server's time is split with KServe's own trace log into the model's part
(preprocess + predict + postprocess) and the rest (sending and receiving the body, KServe's
decoding, the event loop), and the paired ratio server / in-process of each round is given.

Memory per request, in MiB and in volumes (the series as int16: 512 x 512 x 300 x 2 bytes):
the peak RSS (``VmHWM``, reset through ``/proc/PID/clear_refs`` before the request) above the
RSS just before it, the most of three requests at concurrency 1 after the timed ones, of the
server process and of this process for the anchor.

Usage: ``python benchmarks/serving.py [--slices 300] [--requests 8] [--concurrency 4] [--out FILE]``.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _stats(latencies: list[float], wall: float | None = None) -> dict:
    a = np.asarray(latencies)
    out = {"n": len(a), "p50_s": round(float(np.percentile(a, 50)), 3), "p99_s": round(float(np.percentile(a, 99)), 3),
           "mean_s": round(float(a.mean()), 3)}
    if wall is not None:
        out["throughput_rps"] = round(len(a) / wall, 3)
    return out


def _timed(call) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def _level(call, requests: int, concurrency: int) -> dict:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        lat = list(pool.map(lambda _: _timed(call), range(requests)))
    return _stats(lat, time.perf_counter() - t0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes, content_type: str) -> dict:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def _peak_above_start_mib(pid: int, call) -> float:
    """Peak RSS during ``call()`` above the RSS before it (MiB), with the high-water mark reset."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = _kib(pid, "VmRSS")
    call()
    return round((_kib(pid, "VmHWM") - before) / 1024, 1)


def _model_times(log: Path) -> list[float]:
    """Seconds inside the model (preprocess + predict + postprocess) of each request, from KServe's trace log."""
    out = []
    for line in log.read_text().splitlines():
        if "preprocess_ms:" in line and "predict_ms:" in line:
            f = dict(part.strip().split(": ") for part in line.split("requestId", 1)[1].split(",")[1:])
            out.append((float(f["preprocess_ms"]) + float(f["predict_ms"]) + float(f["postprocess_ms"])) / 1000)
    return out


def _model_folder(model_dir: Path, params: dict, tmp: Path) -> tuple[Path, str]:
    """``model_dir`` when it holds a model, else an untrained one of the params' model section."""
    if (model_dir / "weights.pt").is_file():
        return model_dir, "trained"
    import torch

    from covidnet.model import ModelParams, build_model
    from covidnet.params import section

    torch.manual_seed(0)
    net = build_model(section(params, "model", ModelParams))
    out = tmp / "model"
    out.mkdir()
    torch.save(net.state_dict(), out / "weights.pt")
    card = {"config": {"model": net.config, "preprocess": params["preprocess"], "train": params["train"]}}
    (out / "model.json").write_text(json.dumps(card, default=str))
    return out, "untrained (random init; timing and memory only)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matrix", type=int, default=512, help="in-plane size of the series (default: %(default)s)")
    ap.add_argument("--slices", type=int, default=300, help="slices in the series (default: %(default)s)")
    ap.add_argument("--requests", type=int, default=8, help="timed requests per level (default: %(default)s)")
    ap.add_argument("--concurrency", type=int, default=4, help="the second concurrency level (default: %(default)s)")
    ap.add_argument("--model-dir", default=str(REPO / "models" / "covidnet"), help="model folder")
    ap.add_argument("--params", default=str(REPO / "params.yaml"), help="params file (default profile)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    import torch

    from covidnet.params import load_params
    from covidnet.predict import score
    from covidnet.serve import load_bundle, results
    from covidnet.serve_client import answers, v2_zip_request, zip_folder
    from covidnet.serve_input import study_zip
    from covidnet.synth import write_benchmark_series

    volume_mib = args.slices * args.matrix**2 * 2 / 2**20
    report: dict = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                                "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                "load_avg_before": [round(x, 2) for x in os.getloadavg()]},
                    "series": {"slices": args.slices, "matrix": args.matrix, "synthetic": True,
                               "volume_int16_mib": round(volume_mib, 1)}}
    with tempfile.TemporaryDirectory(prefix="covidnet-bench-serve-") as tmp:
        folder = write_benchmark_series(Path(tmp), matrix=args.matrix, n_slices=args.slices)
        zipped = zip_folder(folder)
        b64_body = json.dumps(v2_zip_request([zipped])).encode()
        report["series"].update(zip_mb=round(len(zipped) / 2**20, 1), base64_body_mb=round(len(b64_body) / 2**20, 1))

        params = load_params(args.params)
        model_dir, weights = _model_folder(Path(args.model_dir), params, Path(tmp))
        bundle = load_bundle(model_dir, params)
        report["model"] = {"weights": weights, "version": bundle.model["version"], "input": list(bundle.shape)}

        def in_process():
            studies = study_zip(zipped, bundle)
            logits, _ = score(bundle.net, [torch.from_numpy(np.stack([s.tensor for s in studies]))], bundle.device)
            return results(logits, bundle, [s.info for s in studies])

        port = _free_port()
        log = open(Path(tmp) / "server.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "covidnet.cli", "serve", "--port", str(port), "--model-dir",
                                 str(model_dir), "--params", args.params], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        v1, v2 = f"{base}/v1/models/{bundle.serve.model_name}:predict", f"{base}/v2/models/{bundle.serve.model_name}/infer"
        calls = {"in_process": in_process,
                 "server_binary": lambda: answers(_post(v1, zipped, "application/zip")),
                 "server_base64": lambda: answers(_post(v2, b64_body, "application/json"))}
        try:
            deadline = time.time() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2):
                        break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError((Path(tmp) / "server.log").read_text()[-3000:]) from None
                    time.sleep(0.3)
            probs = {k: call()[0]["covid19_probability"] for k, call in calls.items()}  # warm-up, and the same answer
            assert max(probs.values()) - min(probs.values()) < 1e-6, probs
            report["server_rss_after_load_mib"] = round(_kib(proc.pid, "VmRSS") / 1024, 1)

            log.flush()
            skip = len(_model_times(Path(tmp) / "server.log"))
            lat: dict[str, list[float]] = {k: [] for k in calls}
            for _ in range(args.requests):  # interleaved rounds at concurrency 1
                for k, call in calls.items():
                    lat[k].append(_timed(call))
            report["c1"] = {k: _stats(v) for k, v in lat.items()}
            report["c1_paired_ratio_median"] = {
                k: round(float(np.median(np.asarray(lat[k]) / np.asarray(lat["in_process"]))), 3)
                for k in ("server_binary", "server_base64")}
            # Where a server request's time goes: KServe's own trace of preprocess + predict +
            # postprocess (the model's work) and the rest (HTTP, body, decoding, event loop).
            model_s = _model_times(Path(tmp) / "server.log")[skip:]
            for i, k in enumerate(("server_binary", "server_base64")):
                inside = np.asarray(model_s[i::2][: args.requests])
                report["c1"][k]["model_s_median"] = round(float(np.median(inside)), 3)
                report["c1"][k]["outside_model_s_median"] = round(float(np.median(np.asarray(lat[k]) - inside)), 3)
            report[f"c{args.concurrency}"] = {k: _level(calls[k], args.requests, args.concurrency)
                                              for k in ("in_process", "server_binary")}
            pids = {"in_process": os.getpid(), "server_binary": proc.pid, "server_base64": proc.pid}
            memory = {k: max(_peak_above_start_mib(pid, calls[k]) for _ in range(3)) for k, pid in pids.items()}
            report["peak_rss_per_request"] = {k: {"mib": v, "volumes": round(v / volume_mib, 2)} for k, v in memory.items()}
            report["server_rss_after_run_mib"] = round(_kib(proc.pid, "VmRSS") / 1024, 1)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()

    anchor = report["c1"]["in_process"]["p50_s"]
    report["ratios"] = {
        "c1_p50_over_in_process": {k: round(report["c1"][k]["p50_s"] / anchor, 3)
                                   for k in ("server_binary", "server_base64")},
        f"c{args.concurrency}_throughput_over_in_process": round(
            report[f"c{args.concurrency}"]["server_binary"]["throughput_rps"]
            / report[f"c{args.concurrency}"]["in_process"]["throughput_rps"], 3)}
    report["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
