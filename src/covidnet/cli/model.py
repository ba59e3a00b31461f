"""``covidnet model summary``: parameters and FLOPs of each network builder."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.description = ("`covidnet model summary`: parameters and forward FLOPs per volume of each builder "
                          "(paper: DenseNet-264 at 1x64x384x384; released: the authors' TF variant at 1x64x224x224; "
                          "cpu: the CPU profile), counted on the meta device (nothing is allocated).")
    parser.add_argument("action", choices=("summary",), help="what to show")
    parser.add_argument("--builders", nargs="+", default=None, help="builders to show (default: all)")


def run(args: argparse.Namespace) -> int:
    from covidnet.model.builders import BUILDERS
    from covidnet.model.summary import format_summary, model_summary

    print(format_summary(model_summary(args.builders or BUILDERS)))
    return 0
