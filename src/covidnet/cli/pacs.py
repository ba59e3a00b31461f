"""``covidnet pacs watch | listen`` (the PACS loop) and ``covidnet worklist`` (the reading worklist).

Exit status: 0 when every study was processed; 1 when ``watch --once`` left studies whose
results could not be stored (they are tried again on the next run); 2 for an error (bad input,
a PACS that stayed away through every retry, an unreachable prediction log), as the other
``covidnet`` commands.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
from pathlib import Path

from covidnet.params import DEFAULT_PARAMS

DESCRIPTION = """\
watch    follow the PACS (QIDO-RS polling every pacs.poll_s) for CT studies whose series stayed unchanged
         for pacs.stable_age_s; retrieve each (WADO-RS), score it with the endpoint's code (in this process,
         or --endpoint URL), store a DICOM SR and an overlay image (Secondary Capture, NOT FOR DIAGNOSIS)
         into the study (STOW-RS). Each study once (state in the prediction log database); a study that
         changes is analysed again and its new SR supersedes the old. --once: what is pending, then exit.
listen   a DIMSE storage SCP (pacs.listen: AE title, port) a PACS pushes studies to; each complete study
         (quiet for pacs.listen.quiet_s) goes through the same steps; results go to pacs.url by STOW-RS.

Patient and study identifiers never appear in the log or the database: keyed hashes only
($COVIDNET_HASH_KEY, monitor.log.key_env).
"""


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Arguments of ``covidnet pacs`` and ``covidnet worklist``."""
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                        help="params file (default: %(default)s; without one here, the package's own)")
    parser.add_argument("--profile", default=None, help="apply profiles.<NAME> from the params file")
    parser.add_argument("--pacs", default=None, help="the PACS's HTTP base URL (default: pacs.url)")
    if command == "worklist":
        parser.description = ("The reading worklist: studies the PACS loop saw, by COVID-19 probability (highest "
                              "first), then those without one; abnormal lung fraction, QC flags, time waiting. Also "
                              "served beside the model at GET /covidnet/worklist.")
        parser.add_argument("--json", action="store_true", help="print the rows as JSON")
        parser.add_argument("--no-pacs", action="store_true", help="do not ask the PACS for descriptions and links")
        return
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("action", choices=("watch", "listen"), help="what to do (see above)")
    parser.add_argument("--once", action="store_true", help="watch: process what is pending, then exit")
    parser.add_argument("--endpoint", default=None,
                        help="score by calling this running endpoint (http://HOST:PORT) instead of in this process")
    parser.add_argument("--model", default=None, help="--endpoint: the served model's name (default: serve.model_name)")
    parser.add_argument("--model-uri", default=None,
                        help="in-process: models:/NAME@ALIAS, models:/NAME/VERSION or a folder (default: serve.model_uri)")
    parser.add_argument("--model-dir", type=Path, default=None, help="in-process: this model folder")
    parser.add_argument("--port", type=int, default=None, help="listen: the SCP's port (default: pacs.listen.port)")
    parser.add_argument("--ae-title", default=None, help="listen: the SCP's AE title (default: pacs.listen.ae_title)")
    parser.add_argument("--spool", type=Path, default=None, help="listen: the spool folder (default: pacs.listen.spool)")


def _scorer(args, params, pp, key, stop):
    from covidnet.data.series import SeriesParams
    from covidnet.pacs.scorer import EndpointScorer, LocalScorer
    from covidnet.params import section
    from covidnet.preprocess.params import PreprocessParams
    from covidnet.serve.params import ServeParams

    sp = section(params, "serve", ServeParams)
    if args.endpoint:
        return EndpointScorer(args.endpoint, args.model or sp.model_name, pp.timeout_s, pp.retry, key, sp,
                              section(params, "series", SeriesParams),
                              section(params, "preprocess", PreprocessParams).body_hu, stop)
    return LocalScorer.load(params, str(args.model_dir) if args.model_dir else (args.model_uri or sp.model_uri), key)


def _redact_logs(key: bytes) -> None:
    """Pass every log record through :func:`covidnet.pacs.ids.redact` (a UID that slipped into a message)."""
    from covidnet.pacs.ids import RedactingFilter

    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(RedactingFilter(key))


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run(args: argparse.Namespace) -> int:
    """Carry out ``covidnet pacs ACTION`` or ``covidnet worklist``; returns the exit status."""
    import dataclasses

    from covidnet.pacs.params import pacs_params
    from covidnet.pacs.state import StudyState
    from covidnet.params import load_params

    params = load_params(args.params, profile=args.profile)
    pp = pacs_params(params, url=args.pacs)
    state = StudyState.open(params, pp.lease_s)
    _redact_logs(state.key)
    try:
        if args.command == "worklist":
            return _worklist(args, pp, state)
        if args.port or args.ae_title or args.spool:
            pp = dataclasses.replace(pp, listen=dataclasses.replace(
                pp.listen, **{k: v for k, v in (("port", args.port), ("ae_title", args.ae_title),
                                                ("spool", args.spool)) if v is not None}))
        return _loop(args, params, pp, state)
    finally:
        state.close()


def _loop(args, params, pp, state) -> int:
    from covidnet.pacs.dicomweb import PacsClient
    from covidnet.pacs.pipeline import Processor

    stop = _stop_on_signals()
    client = PacsClient(pp, state.key, stop)
    owner = f"{socket.gethostname()}:{os.getpid()}"
    processor = Processor(pp, _scorer(args, params, pp, state.key, stop), client, state, owner, stop)
    if args.action == "listen":
        from covidnet.pacs.listen import Listener

        Listener(pp, processor, state, stop).run()
        return 0
    from covidnet.pacs.watch import Watcher

    total = Watcher(pp, client, state, processor, stop).run(once=args.once)
    done = ", ".join(f"{n} {s}" for s, n in sorted(total.processed.items())) or "nothing new"
    print(f"pacs watch: {total.studies} CT studies in the PACS; processed: {done}; {total.failed} failed, "
          f"{total.deferred} backing off (tried again later), {total.waiting} waiting")
    return 1 if args.once and (total.failed or total.deferred) else 0


def _worklist(args, pp, state) -> int:
    import json

    from covidnet.pacs.worklist import PacsIndex, format_table, worklist_rows

    pacs = None if args.no_pacs else PacsIndex(pp, state.key)
    index = pacs.get() if pacs is not None else None
    rows = worklist_rows(state, index, pp.worklist.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
        if pacs is not None and index is None:
            print(f"(PACS not reachable, so no descriptions or links: {pacs.error})")
    return 0
