"""Benchmark: studies per minute through the PACS loop against the bare endpoint on the same studies.

Writes ``--studies`` SYNTHETIC chest series (``covidnet.synthetic.dicom_writer.write_benchmark_series``,
``--matrix`` x ``--matrix`` x ``--slices``, one study each) and, with the model folder
``--model-dir`` (default ``models/covidnet``, what ``dvc repro`` trains) and the repository's
params (default profile):

* ``endpoint_bare`` (the anchor): ``covidnet serve`` on a free loopback port; each study zipped
  and POSTed as ``covidnet predict`` does (:func:`covidnet.serve.client.send_study`), one at a
  time, after one warm-up request;
* ``loop_in_process``: the studies stored into a fresh Orthanc (its upload timed apart), then
  :meth:`covidnet.pacs.watch.Watcher.run` ``(once=True)`` in this process with the in-process
  scorer (model loaded and warmed up before the clock starts): QIDO-RS, WADO-RS retrieval to a
  temporary folder, series selection, preprocessing, lesion fractions and the forward pass (the
  endpoint's code), the overlay (a second read of the lesion sample) and the SR, STOW-RS, the
  state and prediction-log commit;
* ``loop_via_endpoint``: the same with a second fresh Orthanc and ``--endpoint`` (the zip POSTed
  to the server above, which logs the prediction itself).

Per loop variant, the seconds spent in each step (wrappers around the client, the scorer and the
state; ``other`` is the overlay, the SR and the series index for the overlay). Orthanc starts from
``tests/support/orthanc.py`` (Debian's ``orthanc`` + ``orthanc-dicomweb``: ``bash scripts/orthanc.sh install``).

Usage: ``python benchmarks/pacs.py [--studies 10] [--matrix 256] [--slices 64] [--out FILE]``. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
KEY = "pacs-benchmark-key-" + "0123456789abcdef" * 2


def _params(tmp: Path, orthanc_url: str, name: str) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["paths"]["predlog"] = str(tmp / f"predlog-{name}.db")
    params["paths"]["calibrator"] = str(tmp / "no-calibrator.json")
    params["pacs"].update({"url": orthanc_url, "stable_age_s": 0.0, "poll_s": 0.5})
    path = tmp / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _timed_steps(watcher) -> dict[str, float]:
    """Wrap the watcher's client, scorer and state so that each step's seconds add up in the returned dict."""
    spent: dict[str, float] = {}

    def wrap(obj, attr, step):
        inner = getattr(obj, attr)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[step] = spent.get(step, 0.0) + time.perf_counter() - t0

        setattr(obj, attr, timed)

    for attr, step in (("studies", "qido"), ("series", "qido"), ("retrieve_series", "wado_retrieve"),
                       ("own_reports", "qido_wado_own_reports"), ("store", "stow")):
        wrap(watcher.client, attr, step)
    wrap(watcher.processor.scorer, "analyse", "score")
    for attr in ("observe", "claim", "finish", "get"):
        wrap(watcher.state, attr, "state")
    return spent


def _loop(tmp: Path, folders: list[Path], model_dir: Path, name: str, endpoint: str | None) -> dict:
    from covidnet.monitor.predlog import PredictionLog
    from covidnet.pacs.dicomweb import PacsClient
    from covidnet.pacs.params import pacs_params
    from covidnet.pacs.pipeline import Processor
    from covidnet.pacs.scorer import EndpointScorer, LocalScorer
    from covidnet.pacs.state import StudyState
    from covidnet.pacs.watch import Watcher
    from covidnet.params import load_params
    from support.orthanc import Orthanc

    with Orthanc(tmp / f"orthanc-{name}") as orthanc:
        t0 = time.perf_counter()
        instances = sum(orthanc.upload(f) for f in folders)
        upload_s = time.perf_counter() - t0
        params = load_params(_params(tmp, orthanc.url, name))
        pp = pacs_params(params)
        state = StudyState(PredictionLog.from_params(params), pp.lease_s)
        client = PacsClient(pp, state.key)
        if endpoint is None:
            scorer = LocalScorer.load(params, str(model_dir), state.key)
            scorer.analyse(folders[0], "warm-up")
        else:
            local = LocalScorer.load(params, str(model_dir), state.key)  # only for its serve / series params
            scorer = EndpointScorer(endpoint, "covidnet", pp.timeout_s, pp.retry, state.key, local.serve,
                                    local.series, local.body_hu)
        watcher = Watcher(pp, client, state, Processor(pp, scorer, client, state, "benchmark"))
        spent = _timed_steps(watcher)
        t0 = time.perf_counter()
        total = watcher.run(once=True)
        wall = time.perf_counter() - t0
        state.close()
    assert total.processed == {"done": len(folders)}, total
    spent["other"] = wall - sum(spent.values())
    return {"studies": len(folders), "wall_s": round(wall, 2), "studies_per_min": round(60 * len(folders) / wall, 1),
            "seconds_per_study": {k: round(v / len(folders), 3) for k, v in sorted(spent.items())},
            "upload": {"instances": instances, "seconds": round(upload_s, 2)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=10, help="studies (default: %(default)s)")
    ap.add_argument("--matrix", type=int, default=256, help="in-plane size of each series (default: %(default)s)")
    ap.add_argument("--slices", type=int, default=64, help="slices of each series (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds of bare endpoint, in-process loop, loop via endpoint, alternating (default: %(default)s)")
    ap.add_argument("--model-dir", type=Path, default=REPO / "models" / "covidnet", help="model folder")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    if not (args.model_dir / "weights.pt").is_file():
        sys.exit(f"{args.model_dir}: no model folder (`dvc repro` trains one; or --model-dir)")
    os.environ["COVIDNET_HASH_KEY"] = KEY
    from covidnet.serve.client import send_study
    from covidnet.synthetic.dicom_writer import write_benchmark_series
    from support.orthanc import orthanc_missing
    from support.server import running_server

    if orthanc_missing():
        sys.exit(f"benchmarks/pacs.py: {orthanc_missing()}")
    with tempfile.TemporaryDirectory(prefix="covidnet-bench-pacs-") as name:
        tmp = Path(name)
        folders = [write_benchmark_series(tmp / f"study{i}", matrix=args.matrix, n_slices=args.slices, seed=i)
                   for i in range(args.studies)]
        mb = sum(f.stat().st_size for d in folders for f in d.iterdir()) / 2**20
        serve_params = _params(tmp, "http://127.0.0.1:9", "server")
        with running_server(["--model-dir", str(args.model_dir), "--params", str(serve_params)], tmp,
                            {**os.environ, "PYTHONUNBUFFERED": "1"}, tmp / "server.log") as base:
            send_study(folders[0], base, "covidnet")  # warm-up
            rounds = []
            for r in range(args.rounds):  # alternating, so that a change of load on a shared machine hits all alike
                t0 = time.perf_counter()
                for folder in folders:
                    send_study(folder, base, "covidnet")
                bare = time.perf_counter() - t0
                rounds.append({"endpoint_bare": {"wall_s": round(bare, 2),
                                                 "studies_per_min": round(60 * args.studies / bare, 1)},
                               "loop_in_process": _loop(tmp, folders, args.model_dir, f"in-process-{r}", None),
                               "loop_via_endpoint": _loop(tmp, folders, args.model_dir, f"endpoint-{r}", base)})
    median = {k: float(np.median([x[k]["studies_per_min"] for x in rounds])) for k in rounds[0]}
    out = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "studies": {"n": args.studies, "series": f"{args.slices} x {args.matrix} x {args.matrix}",
                    "mib_each": round(mb / args.studies, 1), "synthetic": True},
        "rounds": rounds, "studies_per_min_median": median,
        "ratio_to_bare": {k: round(median[k] / median["endpoint_bare"], 3) for k in ("loop_in_process",
                                                                                     "loop_via_endpoint")},
    }
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
