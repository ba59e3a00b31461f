"""The MLflow model registry as promotion uses it: aliases, tags, registration, rollback.

Aliases, not the deprecated stages: ``champion`` (served), ``previous_champion`` (what a
rollback restores), ``challenger`` (registered, not promoted), ``rolled_back``. No version is
ever deleted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from covidnet.errors import CovidnetError
from covidnet.model.card import ModelCard

log = logging.getLogger(__name__)


CHAMPION = "champion"


PREVIOUS = "previous_champion"


CHALLENGER = "challenger"


ROLLED_BACK = "rolled_back"


PREDICTIONS_TAG = "covidnet.predictions"


DECISION_TAG = "covidnet.decision"


THRESHOLD_TAG = "covidnet.threshold"  # the operating point of the test figures; serving decides there


class PromoteError(CovidnetError, ValueError):
    """Promotion cannot proceed: a missing input, a model card without a run, an empty rollback."""


@dataclass(frozen=True)
class Rollback:
    """What :func:`rollback` did: ``champion`` restored, ``demoted`` no longer champion."""

    registered_model: str
    champion: str
    demoted: str
    aliases: dict[str, str]
    time: str

    def summary(self) -> str:
        return (f"rolled back {self.registered_model}: champion is version {self.champion} again (version "
                f"{self.demoted} is now `rolled_back`)")


def alias_version(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    if alias not in client.get_registered_model(name).aliases:
        return None
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def logged_model_id(client, run, model_dir: Path, artifact_name: str = "model") -> str:
    """The id of the model the training run logged as ``artifact_name`` (the last one if several)."""
    outputs = run.outputs.model_outputs if run.outputs is not None else []
    for output in sorted(outputs, key=lambda o: o.step, reverse=True):
        if client.get_logged_model(output.model_id).name == artifact_name:
            return output.model_id
    raise PromoteError(f"{model_dir / ModelCard.FILE}: MLflow run {run.info.run_id} logged no model named "
                       f"{artifact_name!r} (did the training run finish?); nothing to register")


def ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="COVIDNet: chest CT -> P(COVID-19 vs other pneumonia) "
                                                          "(Liu et al., Sci. Rep. 2021)")


def rollback(mlflow_params) -> Rollback:
    """Move ``champion`` back to the version aliased ``previous_champion``.

    The demoted version gets the alias ``rolled_back``; ``previous_champion`` is removed (a
    second rollback needs another promotion first). Both versions get a ``covidnet.rollback``
    tag recording the move, and the registered model a ``covidnet.last_rollback`` tag. No
    version is deleted.

    Raises:
        PromoteError: the registered model does not exist or has no ``previous_champion``.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from covidnet.tracking import configure

    configure(mlflow_params)
    client = MlflowClient()
    name = mlflow_params.registered_model
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException:
        raise PromoteError(f"registered model {name!r} not found: nothing to roll back") from None
    if PREVIOUS not in aliases:
        raise PromoteError(f"registered model {name!r} has no {PREVIOUS!r} alias (aliases: {dict(aliases)}): "
                           "nothing to roll back to")
    previous, current = str(aliases[PREVIOUS]), aliases.get(CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.delete_registered_model_alias(name, PREVIOUS)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record = json.dumps({"time": now, "champion": previous, "demoted": current})
    if current is not None and str(current) != previous:
        client.set_registered_model_alias(name, ROLLED_BACK, str(current))
        client.set_model_version_tag(name, str(current), "covidnet.rollback", record)
    client.set_model_version_tag(name, previous, "covidnet.rollback", record)
    client.set_registered_model_tag(name, "covidnet.last_rollback", record)
    log.info("promote: rolled %s champion back from version %s to %s", name, current, previous)
    return Rollback(registered_model=name, champion=previous, demoted=str(current),
                    aliases={k: str(v) for k, v in client.get_registered_model(name).aliases.items()}, time=now)
