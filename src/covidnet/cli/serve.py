"""``covidnet serve`` (the KServe model server) and ``covidnet predict`` (its client)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from covidnet.params import DEFAULT_PARAMS

_SERVE = ("Start the KServe ModelServer with covidnet.serve.kserve_model in this process, serving serve.model_uri "
          "(default: the `champion` of mlflow.registered_model in the local MLflow store) or --model-dir: V1 "
          "/v1/models/NAME:predict (JSON, or a raw study zip) and V2 /v2/models/NAME/infer (DICOM study zips, s3:// "
          "references or preprocessed tensors), health and readiness (/v2/health/ready) and /metrics.")
_PREDICT = ("Zip every file under PATH (one study; any depth) and POST it to the server at URL: as the raw body of a "
            "V1 request (Content-Type: application/zip; default) or base64 in a V2 BYTES input (--encoding base64). "
            "An s3://bucket/key PATH is sent as a reference (V2) and fetched by the server. Prints the per-study "
            "answers (JSON).")


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                        help="params file (default: %(default)s; without one here, the package's own)")
    if command == "serve":
        parser.description = _SERVE
        parser.add_argument("--port", type=int, default=8080, help="HTTP port (default: %(default)s)")
        parser.add_argument("--grpc-port", type=int, default=None, help="also serve gRPC on this port (default: off)")
        parser.add_argument("--model-uri", default=None,
                            help="models:/NAME@ALIAS, models:/NAME/VERSION (MLflow registry of mlflow.tracking_uri or "
                                 "MLFLOW_TRACKING_URI) or a model folder (default: serve.model_uri, the champion)")
        parser.add_argument("--model-dir", type=Path, default=None,
                            help="serve this model folder instead (e.g. models/covidnet)")
        parser.add_argument("--profile", default=None, help="apply profiles.<NAME> from the params file")
        return
    parser.description = _PREDICT
    parser.add_argument("path", help="folder holding the study's DICOM files, or s3://bucket/key")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the server's base URL (default: %(default)s)")
    parser.add_argument("--model", default=None, help="served model name (default: serve.model_name in --params)")
    parser.add_argument("--encoding", choices=("binary", "base64"), default="binary",
                        help="binary: the zip as the request body (V1); base64: V2 JSON (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for the answer (default: %(default)s, the InferenceService timeout)")


def run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        argv = ["--http_port", str(args.port), "--params", str(args.params), "--enable_grpc",
                "false" if args.grpc_port is None else "true", "--grpc_port", str(args.grpc_port or 8081)]
        argv += ["--model_dir", str(args.model_dir)] if args.model_dir else []
        argv += ["--model_uri", args.model_uri] if args.model_uri else []
        argv += ["--profile", args.profile] if args.profile else []
        sys.argv = ["covidnet serve", *argv]  # `import kserve` parses sys.argv
        from covidnet.serve import kserve_model

        kserve_model.main(argv)
        return 0
    from covidnet.params import load_params, section
    from covidnet.serve.client import send_study
    from covidnet.serve.params import ServeParams

    model = args.model or section(load_params(args.params), "serve", ServeParams).model_name
    print(json.dumps(send_study(args.path, args.url, model, args.encoding, args.timeout), indent=2))
    return 0
