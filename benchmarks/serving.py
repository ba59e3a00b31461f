"""Benchmark: the KServe server on loopback against the same work in-process, time and memory.

Writes one SYNTHETIC 512 x 512 series of 300 slices (``covidnet.synthetic.dicom_writer.write_benchmark_series``)
and zips it as ``covidnet predict`` does (``covidnet.serve.client.zip_folder``). With the model
folder ``--model-dir`` (an untrained network of the params' ``model`` section when the folder
holds none: the timings do not depend on the weights) and ``--params``:

* ``in_process`` (the anchor): :func:`covidnet.serve.bundle.load_bundle` once, then per request the
  very path the server runs from the zip's bytes: safe unzip, series selection, preprocessing,
  QC, lesion fractions (:func:`covidnet.serve.study.study_zip`), the forward pass
  (:func:`covidnet.model.inference.score`) and the answers (:func:`covidnet.serve.answer.results`). It runs in
  a child process started like the server's (this script with ``--anchor``) and times itself,
  so both sides get the same treatment from the scheduler of a shared machine;
* ``server_binary``: ``covidnet serve`` in a subprocess on a free loopback port (one worker),
  the zip POSTed as the raw body of a V1 request (``Content-Type: application/zip``), as
  ``covidnet predict`` sends it; the server also logs each answer to its prediction log (a
  SQLite file in the run's temporary folder), as it does in production;
* ``server_v2_binary``: a second such server (so that none inherits another's heap), the raw zip
  in a V2 request of the Open Inference Protocol's binary tensor extension (the ``study_zip``
  BYTES input, ``Inference-Header-Content-Length``, no Content-Type: what tritonclient sends by
  default), decoded by the adapter's own V2 route;
* ``server_base64``: a third, the zip base64 in a V2 JSON request (``study_zip``).

Concurrency 1: ``--requests`` rounds, each one request of every kind in turn (the order
rotating from round to round, ``--pause`` seconds between requests), so a change of load on a
shared machine hits all four alike. Concurrency ``--concurrency``: ``--requests``
requests from that many threads, in-process and ``server_binary``. Latency p50/p99 (p99 of a
handful is close to the maximum) and throughput (requests/s over the level's wall time).

At concurrency 1 the server's time is split with KServe's own trace log into the model's part
(preprocess + predict + postprocess) and the rest (sending and receiving the body, KServe's
decoding, the event loop), and the paired ratio server / in-process of each round is given,
with the CPU seconds each request used (the server process's, all threads, from
``/proc/PID/stat``; the anchor process's own): on a machine shared with other work the
CPU time moves less with the load than the wall time does.

Memory per request, in MiB and in volumes (the series as int16: 512 x 512 x 300 x 2 bytes):
the peak RSS (``VmHWM``, reset through ``/proc/PID/clear_refs`` before the request) above the
RSS just before it, the most of three requests at concurrency 1 after the timed ones, of the
server process and of the anchor process.

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
import yaml

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


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) another process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _level(call, requests: int, concurrency: int) -> dict:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        lat = list(pool.map(lambda _: _timed(call), range(requests)))
    return _stats(lat, time.perf_counter() - t0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes, content_type: str | None, headers: dict | None = None) -> dict:
    req = urllib.request.Request(url, data=body, headers=dict(headers or {}), method="POST")
    if content_type:
        req.add_header("Content-Type", content_type)
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


def _anchor(model_dir: str, params_path: str, zip_path: str) -> None:
    """The anchor's own process (``--anchor``), started like the server: it loads the bundle once,
    then for each command on stdin runs the in-process path and answers one JSON line on stdout:
    ``run`` (wall and CPU seconds of one request), ``level N C`` (N requests from C threads),
    ``memory`` (peak RSS above the start of one request, MiB), ``answer`` (the probability)."""
    import torch

    from covidnet.model.inference import score
    from covidnet.params import load_params
    from covidnet.serve.answer import results
    from covidnet.serve.bundle import load_bundle
    from covidnet.serve.study import study_zip

    bundle = load_bundle(model_dir, load_params(params_path))
    data = Path(zip_path).read_bytes()

    def in_process():
        studies = study_zip(data, bundle)
        logits, _ = score(bundle.net, [torch.from_numpy(np.stack([s.tensor for s in studies]))], bundle.device)
        return results(logits, bundle, [s.info for s in studies])

    in_process()  # warm-up
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "run":
            c0 = time.process_time()
            out = {"wall_s": _timed(in_process), "cpu_s": time.process_time() - c0}
        elif cmd[0] == "level":
            out = _level(in_process, int(cmd[1]), int(cmd[2]))
        elif cmd[0] == "memory":
            out = {"mib": _peak_above_start_mib(os.getpid(), in_process)}
        else:
            out = {"probability": in_process()[0]["covid19_probability"]}
        print(json.dumps(out), flush=True)


class _AnchorProcess:
    """The parent's handle on :func:`_anchor`."""

    def __init__(self, model_dir: Path, params: str, zip_path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--anchor", str(model_dir), params, str(zip_path)],
                                     cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, *cmd) -> dict:
        self.proc.stdin.write(" ".join(map(str, cmd)) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the anchor process ended")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _model_folder(model_dir: Path, params: dict, tmp: Path) -> tuple[Path, str]:
    """``model_dir`` when it holds a model, else an untrained one of the params' model section."""
    if (model_dir / "weights.pt").is_file():
        return model_dir, "trained"
    import torch

    from covidnet.model.builders import ModelParams, build_model
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
    if len(sys.argv) == 5 and sys.argv[1] == "--anchor":
        _anchor(*sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matrix", type=int, default=512, help="in-plane size of the series (default: %(default)s)")
    ap.add_argument("--slices", type=int, default=300, help="slices in the series (default: %(default)s)")
    ap.add_argument("--requests", type=int, default=8, help="timed requests per level (default: %(default)s)")
    ap.add_argument("--concurrency", type=int, default=4, help="the second concurrency level (default: %(default)s)")
    ap.add_argument("--pause", type=float, default=0.5,
                    help="seconds between requests at concurrency 1, not timed (default: %(default)s)")
    ap.add_argument("--model-dir", default=str(REPO / "models" / "covidnet"), help="model folder")
    ap.add_argument("--params", default=str(REPO / "params.yaml"), help="params file (default profile)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    import torch

    from covidnet.params import load_params
    from covidnet.serve.bundle import load_bundle
    from covidnet.serve.client import answers, v2_zip_request, zip_folder
    from covidnet.synthetic.dicom_writer import write_benchmark_series

    volume_mib = args.slices * args.matrix**2 * 2 / 2**20
    report: dict = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                                "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                "load_avg_before": [round(x, 2) for x in os.getloadavg()]},
                    "series": {"slices": args.slices, "matrix": args.matrix, "synthetic": True,
                               "volume_int16_mib": round(volume_mib, 1)}}
    with tempfile.TemporaryDirectory(prefix="covidnet-bench-serve-") as tmp:
        folder = write_benchmark_series(Path(tmp), matrix=args.matrix, n_slices=args.slices)
        zipped = zip_folder(folder)
        (Path(tmp) / "study.zip").write_bytes(zipped)
        b64_body = json.dumps(v2_zip_request([zipped])).encode()
        # the binary tensor extension: the JSON header, then the BYTES element (4-byte length, the zip)
        head = json.dumps({"inputs": [{"name": "study_zip", "shape": [1], "datatype": "BYTES",
                                       "parameters": {"binary_data_size": len(zipped) + 4}}]}).encode()
        v2_binary_body = head + len(zipped).to_bytes(4, "little") + zipped
        v2_binary_headers = {"Inference-Header-Content-Length": str(len(head))}
        report["series"].update(zip_mb=round(len(zipped) / 2**20, 1), base64_body_mb=round(len(b64_body) / 2**20, 1))

        params = load_params(args.params)
        model_dir, weights = _model_folder(Path(args.model_dir), params, Path(tmp))
        bundle = load_bundle(model_dir, params)
        report["model"] = {"weights": weights, "version": bundle.model["version"], "input": list(bundle.shape)}

        # One server per way of sending, so that neither inherits the other's heap; each logs
        # every answer (the monitor's prediction log) into this run's folder.
        servers, logs, urls, handles = {}, {}, {}, []
        for k, route in (("server_binary", "v1"), ("server_v2_binary", "v2"), ("server_base64", "v2")):
            raw = yaml.safe_load(Path(args.params).read_text())
            raw["paths"]["predlog"] = str(Path(tmp) / f"{k}.db")
            (Path(tmp) / f"{k}.yaml").write_text(yaml.safe_dump(raw))
            port = _free_port()
            logs[k] = Path(tmp) / f"{k}.log"
            handles.append(open(logs[k], "w"))
            servers[k] = subprocess.Popen(
                [sys.executable, "-m", "covidnet.cli.main", "serve", "--port", str(port), "--model-dir", str(model_dir),
                 "--params", str(Path(tmp) / f"{k}.yaml")], cwd=REPO, stdout=handles[-1], stderr=subprocess.STDOUT)
            name = bundle.serve.model_name
            urls[k] = (f"http://127.0.0.1:{port}",
                       f"http://127.0.0.1:{port}/v1/models/{name}:predict" if route == "v1"
                       else f"http://127.0.0.1:{port}/v2/models/{name}/infer")
        anchor = _AnchorProcess(model_dir, args.params, Path(tmp) / "study.zip")
        calls = {"server_binary": lambda: answers(_post(urls["server_binary"][1], zipped, "application/zip")),
                 "server_v2_binary": lambda: answers(_post(urls["server_v2_binary"][1], v2_binary_body, None,
                                                           v2_binary_headers)),
                 "server_base64": lambda: answers(_post(urls["server_base64"][1], b64_body, "application/json"))}
        try:
            for k, proc in servers.items():
                deadline = time.time() + 120
                while True:
                    try:
                        with urllib.request.urlopen(f"{urls[k][0]}/v2/health/ready", timeout=2):
                            break
                    except OSError:
                        if proc.poll() is not None or time.time() > deadline:
                            raise RuntimeError(logs[k].read_text()[-3000:]) from None
                        time.sleep(0.3)
            # warm-up, and the same answer every way
            probs = {"in_process": anchor.ask("answer")["probability"],
                     **{k: call()[0]["covid19_probability"] for k, call in calls.items()}}
            assert max(probs.values()) - min(probs.values()) < 1e-6, probs
            report["server_rss_after_warm_up_mib"] = {k: round(_kib(p.pid, "VmRSS") / 1024, 1) for k, p in servers.items()}
            skip = {k: len(_model_times(logs[k])) for k in servers}
            lat: dict[str, list[float]] = {k: [] for k in ("in_process", *calls)}
            cpu: dict[str, list[float]] = {k: [] for k in lat}
            kinds = list(lat)
            for r in range(args.requests):  # interleaved rounds at concurrency 1, the order rotating
                for k in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
                    time.sleep(args.pause)  # let the previous request's clean-up (either process) finish
                    if k == "in_process":
                        one = anchor.ask("run")
                        lat[k].append(one["wall_s"])
                        cpu[k].append(one["cpu_s"])
                        continue
                    c0 = _cpu_s(servers[k].pid)
                    lat[k].append(_timed(calls[k]))
                    cpu[k].append(_cpu_s(servers[k].pid) - c0)
            report["c1"] = {k: {**_stats(v), "cpu_s_median": round(float(np.median(cpu[k])), 3)} for k, v in lat.items()}
            report["c1_paired_ratio_median"] = {
                k: round(float(np.median(np.asarray(lat[k]) / np.asarray(lat["in_process"]))), 3) for k in calls}
            report["c1_cpu_ratio_median"] = {
                k: round(float(np.median(cpu[k]) / np.median(cpu["in_process"])), 3) for k in calls}
            # Where a server request's time goes: KServe's own trace of preprocess + predict +
            # postprocess (the model's work) and the rest (HTTP, body, decoding, event loop).
            for k in calls:
                inside = np.asarray(_model_times(logs[k])[skip[k]:])
                assert len(inside) == len(lat[k]), (k, len(inside), len(lat[k]))
                report["c1"][k]["model_s_median"] = round(float(np.median(inside)), 3)
                report["c1"][k]["outside_model_s_median"] = round(float(np.median(np.asarray(lat[k]) - inside)), 3)
            c = args.concurrency
            report[f"c{c}"] = {"in_process": anchor.ask("level", args.requests, c),
                               "server_binary": _level(calls["server_binary"], args.requests, c)}
            memory = {"in_process": max(anchor.ask("memory")["mib"] for _ in range(3)),
                      **{k: max(_peak_above_start_mib(servers[k].pid, calls[k]) for _ in range(3)) for k in calls}}
            report["peak_rss_per_request"] = {k: {"mib": v, "volumes": round(v / volume_mib, 2)} for k, v in memory.items()}
            report["server_rss_after_run_mib"] = {k: round(_kib(p.pid, "VmRSS") / 1024, 1) for k, p in servers.items()}
        finally:
            anchor.close()
            for proc in servers.values():
                proc.terminate()
                proc.wait(timeout=30)
            for handle in handles:
                handle.close()

    anchor_p50 = report["c1"]["in_process"]["p50_s"]
    c = args.concurrency
    report["ratios"] = {
        "c1_p50_over_in_process": {k: round(report["c1"][k]["p50_s"] / anchor_p50, 3) for k in calls},
        f"c{c}_throughput_over_in_process": round(
            report[f"c{c}"]["server_binary"]["throughput_rps"] / report[f"c{c}"]["in_process"]["throughput_rps"], 3)}
    report["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
