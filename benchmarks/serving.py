"""Benchmark: the KServe server on loopback against the same work in-process.

Writes one SYNTHETIC 512 x 512 series of 300 slices (``covidnet.synth.write_benchmark_series``),
zips it as a client would (``covidnet.serve.zip_folder``) and builds one V2 request (a base64
zip in a BYTES input). Then, with the model folder ``--model-dir`` and ``--params``:

* ``in_process``  :func:`covidnet.serve.load_bundle` once, then per request the very path the
                  server runs: base64 decode, unzip, series selection, preprocessing, QC, lesion
                  fractions (:func:`covidnet.serve.study_zip`), the forward pass
                  (:func:`covidnet.predict.score`) and the answer (:func:`covidnet.serve.results`);
* ``server``      ``covidnet serve`` in a subprocess on a free loopback port (one worker), the
                  same body POSTed over HTTP (JSON encode, transfer, parse, answer).

Each at concurrency 1 and ``--concurrency`` (threads, ``--requests`` requests each level,
after one warm-up). Prints JSON: p50/p99 latency (p99 of a handful of requests is close to
the maximum), throughput (requests/s over the wall time of the level), the ratios server /
in-process, and peak RSS (the server's ``VmHWM``; this process's ``ru_maxrss`` for the
in-process run, which also holds the benchmark's own copies of the request).

Usage: ``python benchmarks/serving.py [--slices 300] [--requests 8] [--concurrency 4] [--out FILE]``
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import resource
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


def _stats(latencies: list[float], wall: float) -> dict:
    a = np.asarray(latencies)
    return {"n": len(a), "p50_s": round(float(np.percentile(a, 50)), 3), "p99_s": round(float(np.percentile(a, 99)), 3),
            "mean_s": round(float(a.mean()), 3), "throughput_rps": round(len(a) / wall, 3)}


def _level(call, requests: int, concurrency: int) -> dict:
    def timed(_):
        t0 = time.perf_counter()
        call()
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        lat = list(pool.map(timed, range(requests)))
    return _stats(lat, time.perf_counter() - t0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes) -> dict:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=600) as resp:
        out = json.loads(resp.read())
    assert out["outputs"][0]["name"] == "covid19_probability", out
    return out


def _vmhwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


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
    from covidnet.serve import load_bundle, results, study_zip, v2_zip_request, zip_folder
    from covidnet.synth import write_benchmark_series

    report: dict = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                                "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
                    "series": {"slices": args.slices, "matrix": args.matrix, "synthetic": True}}
    with tempfile.TemporaryDirectory(prefix="covidnet-bench-serve-") as tmp:
        folder = write_benchmark_series(Path(tmp), matrix=args.matrix, n_slices=args.slices)
        zipped = zip_folder(folder)
        body = json.dumps(v2_zip_request([zipped])).encode()
        b64 = base64.b64encode(zipped).decode("ascii")
        report["series"].update(zip_mb=round(len(zipped) / 2**20, 1), body_mb=round(len(body) / 2**20, 1))

        # In-process anchor: the same functions the server calls.
        params = load_params(args.params)
        bundle = load_bundle(args.model_dir, params)
        report["model"] = {k: bundle.model[k] for k in ("version", "synthetic")} | {"input": list(bundle.shape)}

        def in_process():
            studies = study_zip(b64, bundle)
            logits, _ = score(bundle.net, [torch.from_numpy(np.stack([s.tensor for s in studies]))], bundle.device)
            return results(logits, bundle, [s.info for s in studies])

        in_process()  # warm-up
        report["in_process"] = {f"c{c}": _level(in_process, args.requests, c) for c in (1, args.concurrency)}
        report["in_process"]["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

        # The server on loopback.
        port = _free_port()
        log = open(Path(tmp) / "server.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "covidnet.cli", "serve", "--port", str(port), "--model-dir",
                                 args.model_dir, "--params", args.params], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/v2/models/{bundle.serve.model_name}/infer"
        try:
            deadline = time.time() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2):
                        break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError((Path(tmp) / "server.log").read_text()[-3000:]) from None
                    time.sleep(0.3)
            idle = _vmhwm_mib(proc.pid)
            _post(url, body)  # warm-up
            report["server"] = {f"c{c}": _level(lambda: _post(url, body), args.requests, c)
                                for c in (1, args.concurrency)}
            report["server"].update(peak_rss_mib=_vmhwm_mib(proc.pid), rss_after_load_mib=idle)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()

    for c in (1, args.concurrency):
        s, i = report["server"][f"c{c}"], report["in_process"][f"c{c}"]
        report.setdefault("ratios", {})[f"c{c}"] = {
            "p50_server_over_in_process": round(s["p50_s"] / i["p50_s"], 2),
            "throughput_server_over_in_process": round(s["throughput_rps"] / i["throughput_rps"], 2)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
