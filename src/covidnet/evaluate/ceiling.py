"""What the SYNTHETIC phantom itself allows: the AUC of its planted finding patterns on a set.

``synth`` draws each scan's pattern (``findings.csv``: ``covid``, ``covid_consolidation`` and
``none`` come from the COVID-19 generator; ``lobar``, ``peribronchial`` and ``diffuse`` from the
other pneumonias'); with ``synth.difficulty`` = d, a fraction d of the patients of each class
draw from the pooled generators. A reader who knew each scan's pattern exactly and called the
COVID-19 generator's patterns COVID-19 would reach AUC 1 - d/2 in expectation: the ceiling a
model's AUC on that set should be read against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from covidnet.evaluate.metrics import bootstrap, figure, score_stat

#: The patterns the COVID-19 generator draws (:func:`covidnet.synthetic.plan._findings_pattern`).
COVID_PATTERNS = ("covid", "covid_consolidation", "none")


def phantom_ceiling(preds: pd.DataFrame, findings_csv: Path, *, reps: int, seed: int, level: float
                    ) -> dict[str, Any] | None:
    """The AUC (with a bootstrap CI) of the planted patterns as scores on the set ``preds``.

    Args:
        preds: the set's ``series_uid, label`` rows.
        findings_csv: ``synth``'s ``findings.csv``; None or missing: a real cohort (None).
    """
    if findings_csv is None or not Path(findings_csv).is_file():
        return None
    truth = pd.read_csv(findings_csv, dtype={"series_uid": str})
    pattern = preds["series_uid"].map(dict(zip(truth["series_uid"], truth["pattern"])))
    if pattern.isna().any():
        return None
    y = preds["label"].to_numpy(np.int64)
    oracle = pattern.isin(COVID_PATTERNS).to_numpy(np.float64)
    point, samples = bootstrap(len(y), score_stat(y, oracle, 0.5), reps=reps, seed=seed)
    return {"auc": figure(point["auc"], samples["auc"], level, "AUC needs both classes"),
            "what": "AUC of the planted finding patterns themselves (the phantom's ceiling)"}
