"""Progress bars for the long stages: shown on a terminal, never written into a log file.

Every stage draws its bars through :func:`bar`, so ``--quiet`` and a non-terminal stderr (a
``dvc repro`` log, a CI job, a Kubeflow pod) both turn them off the same way: no carriage-return
frames end up in a log.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def shown(progress: bool = True) -> bool:
    """Whether a bar is drawn: asked for, and stderr is a terminal."""
    return bool(progress) and sys.stderr.isatty()


def bar(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str, unit: str,
        progress: bool = True, leave: bool = True):
    """A ``tqdm`` bar over ``iterable`` (or one to ``update`` by hand), drawn only when :func:`shown`."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=not shown(progress))
