"""``covidnet model summary``: parameters and FLOPs of each network builder."""

from __future__ import annotations

import argparse
from pathlib import Path

from covidnet.params import DEFAULT_PARAMS


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.description = ("`covidnet model summary`: parameters and forward FLOPs per volume of each builder "
                          "(paper: DenseNet-264 at 1x64x384x384; released: the authors' TF variant at 1x64x224x224; "
                          "cpu: the CPU profile), counted on the meta device (nothing is allocated).")
    parser.add_argument("action", choices=("summary",), help="what to show")
    parser.add_argument("--builders", nargs="+", default=None, help="builders to show (default: all)")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                        help="also show the model this params file configures (default: %(default)s; skipped when "
                             "the default file is absent)")
    parser.add_argument("--profile", default=None, help="profile of that file (default: the file's `profile` key)")


def run(args: argparse.Namespace) -> int:
    from covidnet.model.builders import BUILDERS
    from covidnet.model.summary import format_summary, model_summary

    from covidnet.model.builders import ModelParams
    from covidnet.params import load_params, params_file, section

    configured = {}
    if args.params != DEFAULT_PARAMS or Path(args.params).is_file():
        params = load_params(params_file(args.params), profile=args.profile)
        configured[f"{Path(args.params).name} ({params['profile']})"] = section(params, "model", ModelParams)
    print(format_summary(model_summary(args.builders or BUILDERS, configured)))
    return 0
